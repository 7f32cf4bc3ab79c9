"""The server stays above the torch line and talks to the engine through a typed interface."""

from __future__ import annotations

import inspect
import subprocess
import sys
import typing

from ziggurat_server.serving_engine import ServingEngine


def test_importing_the_whole_server_never_imports_torch() -> None:
    code = (
        "import sys, pkgutil, importlib\n"
        "import ziggurat_server, ziggurat_server.routes\n"
        "for package in (ziggurat_server, ziggurat_server.routes):\n"
        "    for module in pkgutil.iter_modules(package.__path__, package.__name__ + '.'):\n"
        "        importlib.import_module(module.name)\n"
        "from ziggurat_server.app import create_app\n"
        "from ziggurat_server.settings import ServerSettings\n"
        "create_app(ServerSettings(model='unused.gguf'), engine_factory=lambda: None)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def test_serving_engine_members_are_fully_typed() -> None:
    """No `Any` in what the server may ask of the engine: every result has a concrete type."""
    members = {name: member for name, member in vars(ServingEngine).items()
               if not name.startswith("_") and (callable(member) or isinstance(member, property))}
    assert {"encode", "decode", "apply_chat_template", "generate", "stats", "device_info",
            "resolved_settings", "model_config", "errored"} <= set(members)
    assert "tokenizer" not in members
    for name, member in members.items():
        function = member.fget if isinstance(member, property) else member
        hints = typing.get_type_hints(function)
        assert "return" in hints, name
        for param in inspect.signature(function).parameters.values():
            assert param.name == "self" or param.name in hints, f"{name}({param.name})"
        assert all("Any" not in repr(hint) for hint in hints.values()), (name, hints)
