"""The float kernels compute the same bits in every SIMD build this machine runs (AVX-512 VNNI,
AVX2), and the exp approximation they share is accurate to 1.5 ulp (csrc/lane_sum.h,
csrc/exp_approx.h).

Greedy decoding may not depend on the CPU's vector width, so each kernel's output is compared
bit for bit between the variants' libraries (built with ZIGGURAT_CPU_ISA), on random data whose
sizes are not multiples of any vector width.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable
from typing import TypeVar

import pytest
import torch
from int8_helpers import generator, runnable_isas
from ziggurat_core.engine.cpu_kernels import (
    ElementwiseKernels,
    PagedAttentionKernel,
    load_cpu_library,
    load_elementwise_kernels,
    load_paged_attention_kernel,
)

_SIMD_ISAS = [isa for isa in runnable_isas() if isa != "scalar"]
_Loaded = TypeVar("_Loaded")


def _with_isa(isa: str, loader: Callable[[], _Loaded | None]) -> _Loaded:
    """What `loader` gives for the library built for `isa`; skips where the kernels are off."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZIGGURAT_CPU_ISA", isa)
        patch.delenv("ZIGGURAT_CPU_KERNELS", raising=False)
        loaded = loader()
    if loaded is None:
        pytest.skip("the CPU kernels are unavailable: no compiler, failed build or turned off")
    return loaded


@pytest.fixture(scope="module")
def elementwise() -> dict[str, ElementwiseKernels]:
    if len(_SIMD_ISAS) < 2:
        pytest.skip(f"this machine runs one SIMD variant only ({_SIMD_ISAS})")
    return {isa: _with_isa(isa, load_elementwise_kernels) for isa in _SIMD_ISAS}


@pytest.fixture(scope="module")
def attention() -> dict[str, PagedAttentionKernel]:
    if len(_SIMD_ISAS) < 2:
        pytest.skip(f"this machine runs one SIMD variant only ({_SIMD_ISAS})")
    return {isa: _with_isa(isa, load_paged_attention_kernel) for isa in _SIMD_ISAS}


def _assert_same_bits(results: dict[str, torch.Tensor]) -> None:
    (first, expected), *others = results.items()
    for isa, got in others:
        differ = int((got.view(torch.int32) != expected.view(torch.int32)).sum())
        assert differ == 0, f"{isa} and {first} differ in {differ} of {got.numel()} values"


# Widths: the model's 576, below one 16-lane block, and odd ones with every kind of tail.
WIDTHS = [576, 5, 17, 100, 1000, 1031]


@pytest.mark.parametrize("cols", WIDTHS)
def test_rmsnorm_and_add_rmsnorm_same_bits(
    elementwise: dict[str, ElementwiseKernels], cols: int
) -> None:
    gen = generator(cols)
    x = torch.randn(7, cols, generator=gen) * 3
    residual = torch.randn(7, cols, generator=gen)
    weight = torch.randn(cols, generator=gen)
    _assert_same_bits({isa: k.rmsnorm(x, weight, 1e-5) for isa, k in elementwise.items()})
    summed, normed = {}, {}
    for isa, k in elementwise.items():
        xs = x.clone()
        normed[isa] = k.add_rmsnorm_(xs, residual, weight, 1e-6)
        summed[isa] = xs
    _assert_same_bits(summed)
    _assert_same_bits(normed)


@pytest.mark.parametrize("cols", [1536, 3, 19, 1001])
def test_silu_mul_same_bits(elementwise: dict[str, ElementwiseKernels], cols: int) -> None:
    gate_up = torch.randn(5, 2 * cols, generator=generator(cols)) * 6
    gate_up[0, :3] = torch.tensor([-1000.0, 1000.0, -90.0])
    _assert_same_bits({isa: k.silu_mul(gate_up) for isa, k in elementwise.items()})


@pytest.mark.parametrize("head_dim", [64, 128, 80, 6])
def test_rotary_same_bits(elementwise: dict[str, ElementwiseKernels], head_dim: int) -> None:
    gen = generator(head_dim)
    x = torch.randn(11, 5, head_dim, generator=gen)
    angles = torch.rand(11, head_dim // 2, generator=gen) * 100
    cos, sin = angles.cos().contiguous(), angles.sin().contiguous()
    _assert_same_bits({isa: k.rotary(x, cos, sin) for isa, k in elementwise.items()})


def test_exp_same_bits(elementwise: dict[str, ElementwiseKernels]) -> None:
    x = torch.linspace(-100.0, 100.0, 100_003)
    _assert_same_bits({isa: _exp(isa, x) for isa in elementwise})


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("head_dim", [64, 128, 72])
def test_paged_attention_same_bits(
    attention: dict[str, PagedAttentionKernel], head_dim: int, cache_dtype: torch.dtype
) -> None:
    gen = generator(head_dim)
    block_size, num_kv_heads, num_heads = 16, 3, 9
    context_lens = torch.tensor([1, 15, 16, 17, 300, 1001, 33], dtype=torch.int64)
    blocks_per_seq = [-(-int(n) // block_size) for n in context_lens]
    num_blocks = sum(blocks_per_seq) + 5
    order = torch.randperm(num_blocks, generator=gen)
    tables = torch.zeros(len(blocks_per_seq), max(blocks_per_seq), dtype=torch.int64)
    start = 0
    for s, count in enumerate(blocks_per_seq):
        tables[s, :count] = order[start : start + count]
        start += count
    # Scores spread widely enough that the softmax meets large negative exponents.
    kv_cache = (
        torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=gen) * 4
    ).to(cache_dtype)
    query = torch.randn(len(blocks_per_seq) + 2, num_heads, head_dim, generator=gen) * 4
    token_rows = torch.tensor([0, 2, 3, 4, 5, 6, 8], dtype=torch.int64)
    results = {}
    for isa, kernel in attention.items():
        if cache_dtype not in kernel.cache_dtypes:
            pytest.skip(f"the {isa} build reads no {cache_dtype} cache")
        out = torch.zeros_like(query)
        kernel(query, kv_cache, tables, context_lens, token_rows, out, 1 / math.sqrt(head_dim))
        results[isa] = out
    _assert_same_bits(results)


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("head_dim", [64, 128, 72])
def test_paged_attention_prefill_rows_same_bits(
    attention: dict[str, PagedAttentionKernel], head_dim: int, cache_dtype: torch.dtype
) -> None:
    """Rows of prefill chunks (the blocked path, csrc/paged_prefill.c: scores a vector of keys
    at a time, whose width differs between the variants) next to a decode row."""
    gen = generator(head_dim + 1)
    block_size, num_kv_heads, num_heads = 16, 3, 9
    num_blocks = 40
    # Chunk of 45 rows ending at 301 (a cached prefix), a decode at 30, a first chunk of 19.
    tables = torch.randperm(num_blocks, generator=gen)[:38].view(2, 19)
    seq_of_row = [0] * 45 + [1] + [1] * 19
    context_lens = torch.tensor([*range(257, 302), 30, *range(1, 20)], dtype=torch.int64)
    kv_cache = (
        torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=gen) * 4
    ).to(cache_dtype)
    query = torch.randn(len(seq_of_row), num_heads, head_dim, generator=gen) * 4
    row_tables = tables[seq_of_row].contiguous()
    token_rows = torch.arange(len(seq_of_row), dtype=torch.int64)
    results = {}
    for isa, kernel in attention.items():
        if cache_dtype not in kernel.cache_dtypes:
            pytest.skip(f"the {isa} build reads no {cache_dtype} cache")
        out = torch.zeros_like(query)
        kernel(query, kv_cache, row_tables, context_lens, token_rows, out, 1 / math.sqrt(head_dim))
        results[isa] = out
    _assert_same_bits(results)


# ---- the exp approximation itself ----


def _exp(isa: str, x: torch.Tensor) -> torch.Tensor:
    library = _with_isa(isa, load_cpu_library)
    fn = library.exp_f32
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
    fn.restype = None
    x = x.contiguous()
    out = torch.empty_like(x)
    fn(x.data_ptr(), x.numel(), out.data_ptr())
    return out


def _best_isa() -> str:
    if not _SIMD_ISAS:
        pytest.skip("no SIMD variant of the CPU kernels on this machine")
    return _SIMD_ISAS[0]


def test_exp_within_one_and_a_half_ulp_of_float64_over_its_range() -> None:
    # A dense sweep of the whole range where exp is a normal float, a finer one around 0, and
    # random points. (Rounding r and the polynomial's last steps add up to just over 1 ulp.)
    x = torch.cat(
        [
            torch.linspace(-87.33, 88.72, 4_000_037),
            torch.linspace(-1e-3, 1e-3, 100_003),
            torch.empty(500_000).uniform_(-87.33, 88.72, generator=generator(7)),
        ]
    )
    got = _exp(_best_isa(), x).double()
    exact = torch.exp(x.double())
    ulp = torch.ldexp(torch.ones_like(exact), torch.frexp(exact).exponent - 24)
    ulps = (got - exact).abs() / ulp
    assert float(ulps.max()) <= 1.5, f"{float(ulps.max()):.3f} ulp at x = {float(x[ulps.argmax()])}"


def test_exp_edges() -> None:
    x = torch.tensor(
        [float("-inf"), -1e30, -104.0, -87.4, 0.0, 1.0, -1.0, 88.7, 89.0, 1000.0, 1e30]
    )
    got = _exp(_best_isa(), x)
    # Below ln(FLT_MIN): 0, not a subnormal; -inf included.
    assert got[:4].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert got[4] == 1.0
    torch.testing.assert_close(got[5:8].double(), torch.exp(x[5:8].double()), rtol=2e-7, atol=0)
    # Above ln(FLT_MAX) it saturates, finite, at about FLT_MAX.
    assert torch.isfinite(got[8:]).all()
    assert bool((got[8:] >= 3.3e38).all())
