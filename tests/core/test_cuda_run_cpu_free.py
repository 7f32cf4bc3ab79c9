"""A run off the CPU never builds or calls the CPU kernels, and reads only its own GPUs.

No GPU here: the model runs on `meta`, a device that is not the CPU as CUDA is not, and the
CUDA queries are replaced by recorders.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch
from ziggurat_core.engine import device as device_module
from ziggurat_core.engine.attention import torch_backend
from ziggurat_core.engine.attention.base import StepLayout
from ziggurat_core.engine.attention.torch_backend import PortableAttentionBackend
from ziggurat_core.engine.config import ModelConfig
from ziggurat_core.engine.cpu_kernels import build
from ziggurat_core.engine.layers import activation, rmsnorm
from ziggurat_core.engine.models import llama
from ziggurat_core.engine.models.llama import LlamaForCausalLM

CONFIG = ModelConfig(
    architecture="llama", vocab_size=100, hidden_size=64, intermediate_size=96,
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
    max_position_embeddings=64,
)


class KernelLoaderCalled(AssertionError):
    pass


def _refuse(name: str) -> Callable[..., None]:
    def refuse(*args: object, **kwargs: object) -> None:
        raise KernelLoaderCalled(name)

    return refuse


@pytest.fixture()
def no_kernel_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every way a forward pass reaches the C kernels raises instead."""
    for module, name in [
        (rmsnorm, "load_elementwise_kernels"),
        (activation, "load_elementwise_kernels"),
        (llama, "load_elementwise_kernels"),  # the attention layer's, for RoPE
        (llama, "decoder_layers_kernel_for"),
        (torch_backend, "load_paged_attention_kernel"),
        (torch_backend, "load_decode_fused_kernels"),
        (build, "load_cpu_library"),
    ]:
        monkeypatch.setattr(module, name, _refuse(f"{module.__name__}.{name}"))


def _prefill_then_decode(device: torch.device) -> torch.Tensor:
    with torch.device(device):
        model = LlamaForCausalLM(CONFIG)
    if device.type != "meta":
        for param in model.parameters():
            torch.nn.init.normal_(param, std=0.02)
    attention = PortableAttentionBackend()
    caches = [torch.zeros(2, 4, 16, 2, 16, device=device) for _ in range(CONFIG.num_hidden_layers)]
    with torch.inference_mode():
        # One sequence prefilling 5 tokens beside one decoding its third.
        layout = StepLayout([5, 1], [5, 3], [[0], [1]], 16)
        metadata = attention.prepare(layout, device)
        ids = torch.zeros(6, dtype=torch.long, device=device)
        positions = torch.tensor([0, 1, 2, 3, 4, 2], device=device)
        hidden = model(ids, positions, caches, attention, metadata)
        return model.compute_logits(hidden)


def test_a_forward_pass_off_the_cpu_never_reaches_the_kernel_loader(no_kernel_loading: None) -> None:
    logits = _prefill_then_decode(torch.device("meta"))
    assert logits.shape == (6, CONFIG.vocab_size)


def test_the_same_pass_on_the_cpu_does_reach_it(no_kernel_loading: None) -> None:
    """The patches above are the paths a float32 CPU step takes (the first test can fail)."""
    with pytest.raises(KernelLoaderCalled):
        _prefill_then_decode(torch.device("cpu"))


@pytest.fixture()
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Three GPUs that record which ones were queried."""
    queried: list[int] = []

    def properties(index: int) -> SimpleNamespace:
        queried.append(index)
        return SimpleNamespace(name=f"GPU {index}", major=9, minor=0)

    def memory(index: int) -> tuple[int, int]:
        queried.append(index)
        return (1 << 30, 2 << 30)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    monkeypatch.setattr(torch.cuda, "mem_get_info", memory)
    return queried


def test_device_info_reads_only_the_engine_gpu(fake_cuda: list[int]) -> None:
    info = device_module.device_info([torch.device("cuda", 1)])
    assert [d.id for d in info.devices] == [1]
    assert info.devices[0].name == "GPU 1"
    assert set(fake_cuda) == {1}


def test_a_bare_cuda_device_is_the_current_one(fake_cuda: list[int]) -> None:
    info = device_module.device_info([torch.device("cuda")])
    assert [d.id for d in info.devices] == [2]
    assert set(fake_cuda) == {2}


def test_a_cpu_engine_touches_no_gpu(fake_cuda: list[int]) -> None:
    info = device_module.device_info([torch.device("cpu")])
    assert info.devices == []
    assert fake_cuda == []
    assert info.cpu.total_memory > 0
