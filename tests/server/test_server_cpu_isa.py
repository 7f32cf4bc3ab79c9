"""The CPU kernel variant through the real server process: /v1/info reports the one in use, and
a ZIGGURAT_CPU_ISA the engine cannot run ends `serve` with one readable line."""

from __future__ import annotations

import httpx
import pytest
from fixtures_models import TinyModel
from server_process import ServerProcess, clean_environment


def test_info_reports_the_kernel_variant_in_use(
    tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # scalar runs on every CPU and is never the default where a vector unit exists.
    server = ServerProcess(tmp_path_factory.mktemp("scalar-logs"),
                           "--model", str(tiny_model.gguf_path), "--num-kv-blocks", "16",
                           env=clean_environment(ZIGGURAT_CPU_ISA="scalar"))
    try:
        server.wait_ready()
        info = httpx.get(f"{server.base_url}/v1/info", timeout=30).json()
    finally:
        server.stop()
    assert info["engine"]["resolved"]["cpu_isa"] == "scalar"
    assert "cpu kernels: scalar" in server.stderr_path.read_text()


@pytest.mark.parametrize("value", ["bogus", "AVX2-please"])
def test_an_unknown_cpu_isa_exits_with_one_readable_line(
    tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory, value: str
) -> None:
    server = ServerProcess(tmp_path_factory.mktemp("bad-isa-logs"),
                           "--model", str(tiny_model.gguf_path), "--num-kv-blocks", "16",
                           env=clean_environment(ZIGGURAT_CPU_ISA=value))
    try:
        code = server.process.wait(120)
    finally:
        server.stop()
    assert code == 1
    stderr = server.stderr_path.read_text()
    assert "Traceback" not in stderr, stderr
    [line] = [line for line in stderr.splitlines() if line.startswith("ziggurat-server: error:")]
    assert "the model failed to load" in line
    assert f"ZIGGURAT_CPU_ISA={value.lower()!r} is not one of auto, avx512vnni, avx2" in line
