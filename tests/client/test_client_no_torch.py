"""The client never pulls torch: statically (declared dependencies) and for real (a fresh venv)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = {"torch", "triton", "xformers"}


def dependency_closure(root: str) -> set[str]:
    """Canonical names of every distribution `root` requires, recursively, honouring extras."""
    seen: set[str] = set()
    pending: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    while pending:
        name, extras = pending.pop()
        try:
            requirements = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed here, so nothing below it to inspect
        for line in requirements:
            requirement = Requirement(line)
            if requirement.marker is not None and not any(
                requirement.marker.evaluate({"extra": extra}) for extra in extras | {""}
            ):
                continue
            dependency = canonicalize_name(requirement.name)
            key = f"{dependency}[{','.join(sorted(requirement.extras))}]"
            if key not in seen:
                seen.add(key)
                pending.append((dependency, frozenset(requirement.extras)))
    return {key.split("[")[0] for key in seen}


def test_declared_dependencies_never_include_torch() -> None:
    closure = dependency_closure("ziggurat")
    assert {"ziggurat-core", "httpx", "pydantic", "tenacity", "anyio"} <= closure
    assert not closure & FORBIDDEN
    assert not any(name.startswith("nvidia-") for name in closure)


def test_the_closure_walk_would_see_torch_through_an_extra() -> None:
    # Guards the walk itself: the server pulls core[engine], whose extra brings torch.
    assert "torch" in dependency_closure("ziggurat-server")


@pytest.mark.venv
@pytest.mark.timeout(900)
def test_fresh_venv_with_only_the_client_has_no_torch(tmp_path: Path) -> None:
    # Install from copies so the build leaves nothing behind in the checkout. One setuptools in
    # the venv builds both packages, which is faster than an isolated build env for each.
    sources = tmp_path / "src"
    for package in ("core", "client"):
        shutil.copytree(
            REPO / "packages" / package,
            sources / package,
            ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "build"),
        )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    builder = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "setuptools>=70.1"],
        capture_output=True, text=True, env=environment,
    )  # fmt: skip
    assert builder.returncode == 0, builder.stderr[-4000:]
    install = subprocess.run(
        [
            str(python), "-m", "pip", "install", "--quiet", "--no-build-isolation",
            "-c", str(REPO / "constraints.txt"),
            str(sources / "core"), str(sources / "client"),
        ],
        capture_output=True, text=True, env=environment,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-4000:]

    listing = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json"],
        capture_output=True, text=True, check=True, env=environment,
    )  # fmt: skip
    installed = {canonicalize_name(item["name"]) for item in json.loads(listing.stdout)}
    assert {"ziggurat", "ziggurat-core", "httpx", "pydantic", "tenacity"} <= installed
    assert not installed & FORBIDDEN
    assert "ziggurat-server" not in installed

    probe = (
        "import sys, ziggurat\n"
        "client = ziggurat.Client(base_url='http://127.0.0.1:9')\n"
        "assert client.base_url == 'http://127.0.0.1:9/v1'\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(ziggurat.__file__)\n"
    )
    run = subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, env=environment, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    # The import came from the fresh venv, not from the development checkout.
    assert run.stdout.strip().startswith(str(venv))
