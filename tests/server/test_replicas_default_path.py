"""One replica without a Ray address is today's in-process engine: Ray is never imported. And the
replica options reach the engine, checked where they enter."""

from __future__ import annotations

import subprocess
import sys

import pytest
from fixtures_models import TinyModel
from ziggurat_core.engine.config import EngineConfig
from ziggurat_server.settings import (
    ServerSettings,
    SettingsError,
    build_serve_parser,
    new_parser,
    resolve_settings,
)


def test_the_default_path_never_imports_ray(tiny_model: TinyModel) -> None:
    code = (
        "import sys, pkgutil, importlib\n"
        "import ziggurat_server, ziggurat_server.routes, ziggurat_core.engine.replicas\n"
        "for package in (ziggurat_server, ziggurat_server.routes):\n"
        "    for module in pkgutil.iter_modules(package.__path__, package.__name__ + '.'):\n"
        "        importlib.import_module(module.name)\n"
        "from ziggurat_server.serving_engine import load_async_engine\n"
        "from ziggurat_server.settings import ServerSettings\n"
        f"settings = ServerSettings(model={str(tiny_model.gguf_path)!r}, num_kv_blocks=16)\n"
        "engine = load_async_engine(settings.engine_config())\n"
        "assert engine.replicas() == []\n"
        "engine.shutdown()\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
        "print('in-process engine, no ray')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "in-process engine, no ray" in result.stdout


def test_replica_flags_reach_the_engine_config() -> None:
    parser = build_serve_parser(new_parser("test", "test"))
    args = parser.parse_args(["--model", "m.gguf", "--num-replicas", "3", "--replica-cpus", "0.5",
                              "--replica-gpus", "1", "--ray-address", "ray://head:10001"])
    config = resolve_settings(args).engine_config()
    assert (config.num_replicas, config.replica_cpus, config.replica_gpus, config.ray_address) == (
        3, 0.5, 1.0, "ray://head:10001")
    assert config.uses_ray


def test_bad_replica_options_are_refused() -> None:
    parser = build_serve_parser(new_parser("test", "test"))
    with pytest.raises(SettingsError, match="--num-replicas"):
        resolve_settings(parser.parse_args(["--num-replicas", "0"]))
    with pytest.raises(SettingsError, match="--replica-cpus"):
        resolve_settings(parser.parse_args(["--replica-cpus", "-1"]))
    with pytest.raises(ValueError, match="num_replicas"):
        EngineConfig(num_replicas=0).validate()
    assert not ServerSettings(model="m.gguf").engine_config().uses_ray
    assert EngineConfig(ray_address="auto").uses_ray  # one replica on a cluster goes through Ray


def test_replicas_the_cluster_cannot_hold_fail_at_once() -> None:
    """A local Ray instance has this host's CPUs: asking for more fails with the numbers, instead
    of replicas pending forever."""
    code = (
        "from ziggurat_core.engine.config import EngineConfig\n"
        "from ziggurat_core.engine.replicas.replica_set import ReplicaSet\n"
        "try:\n"
        "    ReplicaSet.start(EngineConfig(model='unused.gguf', num_replicas=2,"
        " replica_cpus=100000))\n"
        "except ValueError as exc:\n"
        "    print('refused:', exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "refused: 2 replicas need 200000 CPUs in the Ray cluster" in result.stdout
