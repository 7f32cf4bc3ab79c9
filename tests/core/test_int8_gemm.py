"""The C int8 kernels behind `Int8Weight` (cpu_kernels/int8_gemm.py, cpu_kernels/int8_rows.py):
the few-row AVX-512 VNNI GEMM from a `VnniWeight`, the per-row quantiser (signed and the
unsigned form the GEMM reads) and the int32 -> float epilogue, then how `Int8Weight` picks
between the VNNI kernel and `torch._int_mm`.

References are plain torch: integer products in int64, scaled results in float64. The kernel
accumulates exactly in int32, so with unit scales and no bias its output is the exact integer
product converted to float32 (bitwise), and with scales and bias it is within a few float32
roundings of the float64 value: |error| <= ~4 * 2^-24 * (|product * scales| + |bias|), checked
at 1e-6 of that.

Activations and weights cover the whole int8 range here, -128 included, although the quantisers
never produce it: the kernel's correction 128 * sum_k W[n, k] is exact for any uint8 input
(int8 -128 is uint8 0) and any int8 weight, so the contract holds for all 256 values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from ziggurat_core.engine.cpu_kernels import (
    Int8Gemm,
    Int8RowKernels,
    KernelError,
    VnniWeight,
    load_int8_gemm,
    load_int8_row_kernels,
)
from ziggurat_core.engine.layers.packed import VNNI_MAX_ROWS, Int8Weight

# ----------------------------------------------------------------------------- fixtures, helpers


@pytest.fixture(scope="module")
def gemm() -> Int8Gemm:
    kernel = load_int8_gemm()
    if kernel is None:
        pytest.skip(
            "int8 GEMM unavailable: no AVX-512 VNNI on this CPU or the C kernels did not build"
        )
    return kernel


@pytest.fixture(scope="module")
def row_kernels() -> Int8RowKernels:
    kernels = load_int8_row_kernels()
    if kernels is None:
        pytest.skip(
            "C row kernels unavailable: no C compiler, failed build or ZIGGURAT_CPU_KERNELS=0"
        )
    return kernels


@pytest.fixture
def restore_num_threads() -> Iterator[None]:
    saved = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_int8(*shape: int, seed: int, low: int = -127) -> torch.Tensor:
    """Uniform int8 in [low, 127]."""
    return torch.randint(low, 128, shape, generator=generator(seed), dtype=torch.int8)


def shifted(x: torch.Tensor) -> torch.Tensor:
    """int8 -> uint8 x + 128, the GEMM's activation format, computed without the C kernels."""
    return (x.to(torch.int16) + 128).to(torch.uint8)


def exact_product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [M, K] int8 @ weight [N, K] int8 ^T in int64: [M, N]."""
    return x.to(torch.int64) @ weight.to(torch.int64).t()


def assert_within_float32_epilogue(
    got: torch.Tensor,
    product: torch.Tensor,
    row_scale: torch.Tensor,
    col_scale: torch.Tensor,
    bias: torch.Tensor | None,
) -> None:
    """got ~= product * row_scale * col_scale (+ bias) to 1e-6 of |scaled| + |bias| (float64)."""
    scaled = product.double() * row_scale.double().reshape(-1, 1) * col_scale.double()[None, :]
    expected = scaled if bias is None else scaled + bias.double()[None, :]
    magnitude = scaled.abs() if bias is None else scaled.abs() + bias.double().abs()[None, :]
    error = (got.double() - expected).abs()
    worst = float((error / magnitude.clamp(min=1e-30)).max())
    assert bool((error <= 1e-6 * magnitude).all()), f"relative error {worst:.3g}"


def scales_and_bias(m: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """row_scale [m, 1], col_scale [n] (two decades each) and bias [n] of the outputs' size."""
    gen = generator(seed)
    row_scale = 10 ** (torch.rand(m, 1, generator=gen) * 2 - 4)
    col_scale = 10 ** (torch.rand(n, generator=gen) * 2 - 4)
    bias = torch.randn(n, generator=gen) * 1e-3
    return row_scale, col_scale, bias


# ----------------------------------------------------------------------------- VnniWeight


def test_vnni_weight_layout_and_offset() -> None:
    n, k = 48, 40
    weight = random_int8(n, k, seed=1, low=-128)
    packed = VnniWeight(weight)
    assert (packed.out_features, packed.in_features) == (n, k)
    assert packed.packed.shape == (n // 16, k // 4, 16, 4) and packed.packed.is_contiguous()
    for nb, kb, i, j in [(0, 0, 0, 0), (2, 9, 15, 3), (1, 4, 7, 2), (2, 0, 3, 1)]:
        assert int(packed.packed[nb, kb, i, j]) == int(weight[16 * nb + i, 4 * kb + j])
    assert packed.offset.dtype == torch.int32 and packed.offset.is_contiguous()
    assert packed.offset.tolist() == [128 * sum(row) for row in weight.tolist()]


@pytest.mark.parametrize("n, k", [(24, 32), (8, 32), (16, 30), (16, 2), (40, 6)])
def test_vnni_weight_rejects_shapes_the_kernel_cannot_tile(n: int, k: int) -> None:
    with pytest.raises(KernelError, match="N % 16 == 0 and K % 4 == 0"):
        VnniWeight(random_int8(n, k, seed=2))


# ----------------------------------------------------------------------------- GEMM exactness

SHAPES = [(576, 960), (1536, 576), (64, 16), (8, 48)]  # (K, N); N = 48: 3 tiles, odd last one
ROWS = [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 64, 100]


@pytest.mark.parametrize("k, n", SHAPES, ids=[f"K{k}-N{n}" for k, n in SHAPES])
@pytest.mark.parametrize("m", ROWS)
def test_gemm_is_the_exact_integer_product_then_the_epilogue(
    gemm: Int8Gemm, m: int, k: int, n: int
) -> None:
    seed = 1000 * m + k + n
    x = random_int8(m, k, seed=seed)
    weight = random_int8(n, k, seed=seed + 1)
    # Extremes: a row of +127 against output rows of +127 and -127 gives +-127^2 K (> 2^24
    # for K = 1536, so float32 rounds it), and the last row of -127 flips the signs.
    x[0] = 127
    weight[0], weight[-1] = 127, -127
    if m > 1:
        x[-1] = -127
    packed = VnniWeight(weight)
    product = exact_product(x, weight)
    ones_m, ones_n = torch.ones(m), torch.ones(n)

    out = gemm(shifted(x), ones_m, packed, ones_n, None)

    assert out.shape == (m, n) and out.dtype == torch.float32
    # int32 accumulation is exact: the output is the exact product rounded once to float32.
    assert torch.equal(out, product.to(torch.float32))
    small = product.abs() < 2**24
    assert torch.equal(out.double()[small], product.double()[small])
    assert int(product[0, 0]) == 127 * 127 * k and int(product[0, -1]) == -127 * 127 * k

    row_scale, col_scale, bias = scales_and_bias(m, n, seed=seed + 2)
    with_bias = gemm(shifted(x), row_scale, packed, col_scale, bias)
    assert_within_float32_epilogue(with_bias, product, row_scale, col_scale, bias)
    without_bias = gemm(shifted(x), row_scale, packed, col_scale, None)
    assert_within_float32_epilogue(without_bias, product, row_scale, col_scale, None)
    # row_scale as [M] (not [M, 1]) reads the same values.
    assert torch.equal(gemm(shifted(x), row_scale.reshape(m), packed, col_scale, bias), with_bias)


@pytest.mark.parametrize("k, n", [(1536, 576), (8, 48)])
def test_gemm_is_exact_over_the_full_int8_range_including_minus_128(
    gemm: Int8Gemm, k: int, n: int
) -> None:
    # -128 in activations is uint8 0 after the shift; -128 in weights enters the 128 * row sum
    # correction. Neither is produced by the quantisers, but the arithmetic is exact for both.
    m = 9
    x = random_int8(m, k, seed=20, low=-128)
    weight = random_int8(n, k, seed=21, low=-128)
    x[0], x[1] = -128, 127
    weight[0], weight[1], weight[2] = -128, 127, -127
    product = exact_product(x, weight)
    assert int(product[0, 0]) == 128 * 128 * k  # the largest magnitude int8 allows

    out = gemm(shifted(x), torch.ones(m), VnniWeight(weight), torch.ones(n), None)

    assert torch.equal(out, product.to(torch.float32))
    assert bool((x == -128).any()) and bool((weight == -128).any())


def test_gemm_of_an_empty_batch_is_empty(gemm: Int8Gemm) -> None:
    packed = VnniWeight(random_int8(32, 16, seed=30))
    out = gemm(torch.empty(0, 16, dtype=torch.uint8), torch.empty(0), packed, torch.ones(32), None)
    assert out.shape == (0, 32) and out.dtype == torch.float32


# ----------------------------------------------------------------------------- batch and threads


def test_each_row_is_independent_of_its_batch_and_of_the_thread_count(
    gemm: Int8Gemm, restore_num_threads: None
) -> None:
    m, k, n = 64, 576, 976  # 61 tiles: the last tile pair is a single tile
    x = shifted(random_int8(m, k, seed=40))
    packed = VnniWeight(random_int8(n, k, seed=41))
    row_scale, col_scale, bias = scales_and_bias(m, n, seed=42)
    batch = gemm(x, row_scale, packed, col_scale, bias)

    for i in range(m):
        alone = gemm(x[i : i + 1], row_scale[i : i + 1], packed, col_scale, bias)
        assert torch.equal(alone[0], batch[i]), f"row {i}"
    # Sub-batches tiled differently (4-row, 8-row and mixed register tiles).
    for start, rows in [(3, 2), (10, 3), (20, 5), (30, 9), (40, 17)]:
        part = gemm(
            x[start : start + rows], row_scale[start : start + rows], packed, col_scale, bias
        )
        assert torch.equal(part, batch[start : start + rows]), f"rows {start}..{start + rows}"

    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        assert torch.equal(gemm(x, row_scale, packed, col_scale, bias), batch), f"{threads} threads"
        assert torch.equal(gemm(x[5:6], row_scale[5:6], packed, col_scale, bias)[0], batch[5])


# ----------------------------------------------------------------------------- GEMM validation

_M, _K, _N = 3, 32, 48
Inputs = dict[str, torch.Tensor | VnniWeight | None]


def _valid_inputs() -> Inputs:
    row_scale, col_scale, bias = scales_and_bias(_M, _N, seed=50)
    return {
        "qx": shifted(random_int8(_M, _K, seed=51)),
        "row_scale": row_scale,
        "weight": VnniWeight(random_int8(_N, _K, seed=52)),
        "col_scale": col_scale,
        "bias": bias,
    }


_INVALID: dict[str, Callable[[Inputs], Inputs]] = {
    "x-int8": lambda a: a | {"qx": shifted_back(a["qx"])},
    "x-float": lambda a: a | {"qx": as_tensor(a["qx"]).float()},
    "x-wrong-k": lambda a: a | {"qx": as_tensor(a["qx"])[:, : _K - 4].contiguous()},
    "x-longer-k": lambda a: a | {"qx": torch.zeros(_M, _K + 4, dtype=torch.uint8)},
    "x-row-stride": lambda a: a | {"qx": torch.zeros(_M, _K + 4, dtype=torch.uint8)[:, :_K]},
    "x-transposed": lambda a: a | {"qx": torch.zeros(_K, _M, dtype=torch.uint8).t()},
    "row_scale-size": lambda a: a | {"row_scale": as_tensor(a["row_scale"])[:-1]},
    "row_scale-dtype": lambda a: a | {"row_scale": as_tensor(a["row_scale"]).double()},
    "row_scale-strided": lambda a: a | {"row_scale": torch.ones(_M, 2)[:, 0]},
    "col_scale-size": lambda a: a | {"col_scale": torch.ones(_N - 16)},
    "col_scale-dtype": lambda a: a | {"col_scale": as_tensor(a["col_scale"]).half()},
    "col_scale-strided": lambda a: a | {"col_scale": torch.ones(2 * _N)[::2]},
    "bias-size": lambda a: a | {"bias": torch.zeros(_N + 1)},
    "bias-dtype": lambda a: a | {"bias": as_tensor(a["bias"]).double()},
}


def as_tensor(value: torch.Tensor | VnniWeight | None) -> torch.Tensor:
    assert isinstance(value, torch.Tensor)
    return value


def shifted_back(qx: torch.Tensor | VnniWeight | None) -> torch.Tensor:
    """The same activations as int8 (what `quantize(unsigned=False)` returns)."""
    return (as_tensor(qx).to(torch.int16) - 128).to(torch.int8)


def _call(gemm: Int8Gemm, inputs: Inputs) -> torch.Tensor:
    weight = inputs["weight"]
    assert isinstance(weight, VnniWeight)
    bias = inputs["bias"]
    assert bias is None or isinstance(bias, torch.Tensor)
    return gemm(
        as_tensor(inputs["qx"]),
        as_tensor(inputs["row_scale"]),
        weight,
        as_tensor(inputs["col_scale"]),
        bias,
    )


def test_gemm_accepts_the_valid_inputs(gemm: Int8Gemm) -> None:
    # The baseline the invalid cases below each change one thing of.
    assert _call(gemm, _valid_inputs()).shape == (_M, _N)


@pytest.mark.parametrize("case", list(_INVALID))
def test_gemm_rejects_invalid_inputs(gemm: Int8Gemm, case: str) -> None:
    with pytest.raises(KernelError, match="int8 GEMM"):
        _call(gemm, _INVALID[case](_valid_inputs()))


# ----------------------------------------------------------------------------- row kernels


@pytest.mark.parametrize("rows", [37, 700])  # 700 x 96 is above the kernel's threading threshold
@pytest.mark.parametrize("smoothed", [False, True])
@pytest.mark.parametrize("strided", [False, True])
def test_unsigned_quantize_is_signed_plus_128(
    row_kernels: Int8RowKernels, rows: int, smoothed: bool, strided: bool
) -> None:
    cols = 96
    gen = generator(60 + rows)
    base = torch.randn(rows, 3 * cols, generator=gen) * (10 ** torch.linspace(-3, 3, rows))[:, None]
    base[rows // 2] = 0.0  # an all-zero row: quantises to zeros, not NaN
    # A column slice: stride(1) == 1 but stride(0) == 3 * cols.
    x = base[:, cols : 2 * cols] if strided else base[:, cols : 2 * cols].contiguous()
    assert x.stride() == ((3 * cols, 1) if strided else (cols, 1))
    inv_smoothing = 1.0 / (torch.rand(cols, generator=gen) * 4 + 0.25) if smoothed else None

    signed, signed_scale = row_kernels.quantize(x, inv_smoothing)
    unsigned, unsigned_scale = row_kernels.quantize(x, inv_smoothing, unsigned=True)

    assert signed.dtype == torch.int8 and unsigned.dtype == torch.uint8
    assert signed.shape == unsigned.shape == (rows, cols)
    assert signed_scale.shape == unsigned_scale.shape == (rows, 1)
    assert torch.equal(unsigned_scale, signed_scale)
    assert torch.equal(unsigned.to(torch.int16), signed.to(torch.int16) + 128)
    # A strided view quantises like its contiguous copy (the row stride is honoured).
    contiguous, contiguous_scale = row_kernels.quantize(
        x.contiguous(), inv_smoothing, unsigned=True
    )
    assert torch.equal(contiguous, unsigned) and torch.equal(contiguous_scale, unsigned_scale)

    # Against float64: y = x * inv_smoothing rounds to multiples of max|y_row| / 127.
    y = x.double() if inv_smoothing is None else x.double() * inv_smoothing.double()
    absmax = y.abs().amax(dim=1, keepdim=True)
    nonzero = absmax[:, 0] > 0
    torch.testing.assert_close(
        signed_scale.double()[nonzero], absmax[nonzero] / 127, rtol=1e-6, atol=0
    )
    assert float(signed_scale[rows // 2]) > 0 and bool((signed[rows // 2] == 0).all())
    assert int(signed.min()) >= -127 and int(signed.max()) <= 127
    error = (signed.double() * signed_scale.double() - y).abs()
    assert bool((error <= signed_scale.double() * (0.5 + 1e-5)).all())
    peak = y.abs().argmax(dim=1, keepdim=True)
    expected_peak = (127 * y.gather(1, peak).sign()).to(torch.int64)
    assert torch.equal(signed.gather(1, peak).to(torch.int64)[nonzero], expected_peak[nonzero])


def test_quantize_feeds_the_gemm_the_same_product_as_signed_int8(
    row_kernels: Int8RowKernels, gemm: Int8Gemm
) -> None:
    k, n = 64, 32
    x = torch.randn(5, k, generator=generator(70))
    weight = random_int8(n, k, seed=71)
    signed, row_scale = row_kernels.quantize(x, None)
    unsigned, _ = row_kernels.quantize(x, None, unsigned=True)
    out = gemm(unsigned, torch.ones(5), VnniWeight(weight), torch.ones(n), None)
    assert torch.equal(out, exact_product(signed, weight).to(torch.float32))


@pytest.mark.parametrize("with_bias", [False, True])
def test_dequantize_scales_int32_in_place(row_kernels: Int8RowKernels, with_bias: bool) -> None:
    rows, cols = 300, 256  # above the threading threshold
    gen = generator(80)
    acc = torch.randint(-(2**20), 2**20, (rows, cols), generator=gen, dtype=torch.int32)
    acc[0, :4] = torch.tensor([2**31 - 1, -(2**31), 2**24 + 1, -(2**24) - 3], dtype=torch.int32)
    product = acc.to(torch.int64)
    row_scale, col_scale, bias = scales_and_bias(rows, cols, seed=81)

    out = row_kernels.dequantize_(acc, row_scale, col_scale, bias if with_bias else None)

    assert out.dtype == torch.float32 and out.shape == (rows, cols)
    assert out.data_ptr() == acc.data_ptr()  # written over the accumulator
    assert_within_float32_epilogue(out, product, row_scale, col_scale, bias if with_bias else None)
    with pytest.raises(KernelError, match="dequantize"):
        row_kernels.dequantize_(product, row_scale, col_scale, None)
    with pytest.raises(KernelError, match="col_scale"):
        row_kernels.dequantize_(
            torch.zeros(rows, cols, dtype=torch.int32), row_scale, col_scale[:-1], None
        )


# ----------------------------------------------------------------------------- Int8Weight dispatch


def _int8_weight_reference(
    row_kernels: Int8RowKernels, layer: Int8Weight, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(exact int64 product [M, N], row scales) of x quantised by the C quantiser."""
    qx, row_scale = row_kernels.quantize(x, layer.inv_smoothing)
    return qx.to(torch.int64) @ layer.qweight.to(torch.int64), row_scale


def test_int8_weight_switches_from_the_vnni_kernel_to_int_mm_above_vnni_max_rows(
    gemm: Int8Gemm, row_kernels: Int8RowKernels, monkeypatch: pytest.MonkeyPatch
) -> None:
    n, k = 64, 32
    gen = generator(90)
    weight, bias = torch.randn(n, k, generator=gen) / k**0.5, torch.randn(n, generator=gen)
    layer = Int8Weight(weight, bias)
    assert layer.vnni is not None
    x = (
        torch.randn(VNNI_MAX_ROWS + 1, k, generator=gen)
        * (10 ** torch.linspace(-2, 2, VNNI_MAX_ROWS + 1))[:, None]
    )

    calls = {"vnni": 0, "int_mm": 0}
    real_gemm_call, real_int_mm = Int8Gemm.__call__, torch._int_mm

    def counting_gemm(self: Int8Gemm, *args: object) -> torch.Tensor:
        calls["vnni"] += 1
        return real_gemm_call(self, *args)  # type: ignore[arg-type]

    def counting_int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls["int_mm"] += 1
        return real_int_mm(a, b)

    monkeypatch.setattr(Int8Gemm, "__call__", counting_gemm)
    monkeypatch.setattr(torch, "_int_mm", counting_int_mm)

    kernel_out = layer(x[:VNNI_MAX_ROWS])
    assert calls == {"vnni": 1, "int_mm": 0}
    int_mm_out = layer(x)
    assert calls == {"vnni": 1, "int_mm": 1}

    product, row_scale = _int8_weight_reference(row_kernels, layer, x)
    assert_within_float32_epilogue(int_mm_out, product, row_scale, layer.scale, layer.bias)
    assert_within_float32_epilogue(
        kernel_out, product[:VNNI_MAX_ROWS], row_scale[:VNNI_MAX_ROWS], layer.scale, layer.bias
    )
    # The same integer products on both paths; only the float epilogue may round differently.
    # (Observed bitwise equal: both compute ((float)acc * row_scale) * col_scale + bias.)
    shared = int_mm_out[:VNNI_MAX_ROWS]
    magnitude = (
        product[:VNNI_MAX_ROWS].double() * row_scale[:VNNI_MAX_ROWS].double() * layer.scale.double()
    ).abs()
    assert bool(
        (
            (kernel_out.double() - shared.double()).abs()
            <= 1e-6 * (magnitude + bias.double().abs())
        ).all()
    )


@pytest.mark.parametrize("n, k", [(40, 32), (32, 30)], ids=["N40", "K30"])
@pytest.mark.parametrize("m", [1, 5])
def test_int8_weight_without_a_vnni_layout_still_computes_the_int8_product(
    row_kernels: Int8RowKernels, n: int, k: int, m: int
) -> None:
    gen = generator(100 + n + k)
    weight, bias = torch.randn(n, k, generator=gen), torch.randn(n, generator=gen)
    layer = Int8Weight(weight, bias)
    assert layer.vnni is None  # N % 16 or K % 4 is not 0: the kernel cannot tile it
    x = torch.randn(m, k, generator=gen)

    out = layer(x)

    assert out.shape == (m, n) and out.dtype == torch.float32
    product, row_scale = _int8_weight_reference(row_kernels, layer, x)
    assert_within_float32_epilogue(out, product, row_scale, layer.scale, layer.bias)
