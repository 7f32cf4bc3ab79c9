"""The engine and the CPU kernel variant: quantization="auto" picks int8 only where the loaded
kernels have an int8 GEMM, the load log and device info name the variant, and a
ZIGGURAT_CPU_ISA this CPU cannot run stops the engine at start with a typed error."""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable

import pytest
import torch
from fixtures_models import TinyModel
from ziggurat_core.engine import InferenceEngine
from ziggurat_core.engine.async_engine import AsyncEngine
from ziggurat_core.engine.config import EngineConfig
from ziggurat_core.engine.cpu_kernels import ISAS, CpuIsaError
from ziggurat_core.engine.errors import EngineError
from ziggurat_core.engine.loader import load_checkpoint
from ziggurat_core.engine.model_runner import resolve_quantization

TinyFactory = Callable[..., TinyModel]

# The decision, written out: int8 only for a variant with its own int8 GEMM.
AUTO_CHOICE = {"avx512vnni": "int8", "avx2": "int8", "neon": "int8", "scalar": "none", None: "none"}


def test_every_variant_has_a_pinned_choice() -> None:
    assert set(AUTO_CHOICE) == {*ISAS, None}


@pytest.mark.parametrize("isa", [*ISAS, None], ids=[*ISAS, "no-kernels"])
def test_auto_quantization_for_each_kernel_variant(
    tiny_model_factory: TinyFactory, caplog: pytest.LogCaptureFixture, isa: str | None
) -> None:
    quantised = load_checkpoint(tiny_model_factory("llama", "Q8_0").gguf_path)
    cpu = torch.device("cpu")
    with caplog.at_level(logging.INFO, logger="ziggurat.engine"):
        choice = resolve_quantization("auto", quantised, cpu, isa)
    assert choice == AUTO_CHOICE[isa]
    explained = [r.getMessage() for r in caplog.records if "quantization=auto" in r.getMessage()]
    if choice == "int8":
        assert explained == []
    else:  # one line saying why
        [line] = explained
        assert "float32" in line
        assert ("not loaded" in line) if isa is None else (f"the {isa} kernel variant" in line)
    # An explicit setting is what was asked for, whatever the variant.
    assert resolve_quantization("int8", quantised, cpu, isa) == "int8"
    assert resolve_quantization("none", quantised, cpu, isa) == "none"


def test_without_the_kernels_auto_runs_float32(
    tiny_model_factory: TinyFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # torch._int_mm would run the int8 layers here, which is fast only with oneDNN's VNNI path.
    monkeypatch.setenv("ZIGGURAT_CPU_KERNELS", "0")
    tiny = tiny_model_factory("llama", "Q8_0")
    with caplog.at_level(logging.INFO, logger="ziggurat.engine"):
        engine = InferenceEngine(EngineConfig(model=str(tiny.gguf_path), num_kv_blocks=16))
    assert engine.runner.cpu_isa is None
    assert engine.runner.quantization == "none"
    assert "C kernels are not loaded" in caplog.text
    assert "cpu kernels: none, torch ops" in caplog.text


def test_the_load_log_and_device_info_name_the_forced_variant(
    cpu_kernels: None,
    tiny_model_factory: TinyFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # scalar runs on every CPU, and is never the variant picked by default on an x86-64 or Arm
    # machine with a vector unit, so this is the forced one.
    monkeypatch.setenv("ZIGGURAT_CPU_ISA", "scalar")
    tiny = tiny_model_factory("llama", "Q8_0")
    config = EngineConfig(model=str(tiny.gguf_path), num_kv_blocks=16)
    with caplog.at_level(logging.INFO, logger="ziggurat.engine"):
        engine = AsyncEngine.from_config(config)
    try:
        resolved = engine.resolved_settings
    finally:
        engine.shutdown()
    assert resolved.cpu_isa == "scalar"
    assert resolved.quantization == "none"  # the scalar variant has no fast int8 GEMM
    [loaded] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("model loaded")]
    assert "cpu kernels: scalar" in loaded


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("bogus", "is not one of auto, avx512vnni, avx2, neon, scalar"),
        # A real variant this CPU cannot run.
        ("neon" if platform.machine().lower() in ("x86_64", "amd64") else "avx2", "lacks"),
    ],
)
def test_an_unrunnable_cpu_isa_stops_the_engine_at_start(
    cpu_kernels: None,
    tiny_model_factory: TinyFactory, monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("ZIGGURAT_CPU_ISA", value)
    tiny = tiny_model_factory("llama")
    with pytest.raises(CpuIsaError, match=message) as raised:
        InferenceEngine(EngineConfig(model=str(tiny.gguf_path), num_kv_blocks=16))
    assert isinstance(raised.value, EngineError)  # the server reports it without a traceback
