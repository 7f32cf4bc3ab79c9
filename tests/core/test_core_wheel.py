"""The core wheel carries the C kernel sources, and a non-editable install builds and loads them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CSRC = REPO / "packages" / "core" / "src" / "ziggurat_core" / "engine" / "cpu_kernels" / "csrc"

_PROBE = """
import sys
import ziggurat_core
from ziggurat_core.engine.cpu_kernels import build, cpu_isa, load_cpu_library
print(ziggurat_core.__file__)
for source in (*build._SOURCES, *build._HEADERS):
    print(source)
assert load_cpu_library() is not None, "the kernels did not build from the installed sources"
print("isa", cpu_isa())
"""


@pytest.mark.timeout(900)
def test_installed_wheel_builds_and_loads_the_kernels(tmp_path: Path) -> None:
    if not (os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler: the kernels cannot be built here")
    # Build from a copy so the build leaves nothing behind in the checkout.
    source = tmp_path / "core"
    shutil.copytree(
        REPO / "packages" / "core",
        source,
        ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "build"),
    )
    wheel_build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", str(source), "-w", str(tmp_path / "dist")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert wheel_build.returncode == 0, wheel_build.stderr[-4000:]
    [wheel] = (tmp_path / "dist").glob("ziggurat_core-*.whl")

    expected = {
        f"ziggurat_core/engine/cpu_kernels/csrc/{path.relative_to(CSRC).as_posix()}"
        for path in CSRC.rglob("*")
        if path.suffix in (".c", ".h")
    }
    assert any(name.endswith(".c") for name in expected)
    with zipfile.ZipFile(wheel) as archive:
        assert expected <= set(archive.namelist())

    # A plain (non-editable) install into a directory placed first on the path; torch and the
    # other dependencies still come from this environment.
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
         "--target", str(site), str(wheel)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-4000:]

    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZIGGURAT_")}
    env.update(PYTHONPATH=str(site), ZIGGURAT_CACHE_DIR=str(cache))
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, cwd=tmp_path,
        timeout=600,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr[-4000:]
    package, *sources, isa = probe.stdout.splitlines()
    assert Path(package).is_relative_to(site), package
    assert len(sources) == len(expected)
    assert all(Path(path).is_relative_to(site) for path in sources), sources
    assert isa.removeprefix("isa ") in ("avx512vnni", "avx2", "neon", "scalar")
    assert len(list((cache / "kernels").glob("ziggurat_cpu-*.so"))) == 1
