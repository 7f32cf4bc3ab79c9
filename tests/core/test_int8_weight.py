"""The int8 linear layer around the GEMM (layers/packed.py `Int8Weight`, cpu_kernels/int8_rows.py):
the per-row quantiser (signed, and the unsigned form the VNNI GEMM reads), the int32 -> float
epilogue beside `torch._int_mm`, and which path a layer takes for each instruction-set variant:
the C kernel for every row count, except on AVX-512 VNNI from `INT_MM_MIN_ROWS` rows on, where
`_int_mm` takes over with the same bits.
"""

from __future__ import annotations

import pytest
import torch
from int8_helpers import (
    assert_within_float32_epilogue,
    exact_product,
    gemm_input,
    generator,
    load_gemm,
    random_int8,
    runnable_isas,
    scales_and_bias,
)
from ziggurat_core.engine.cpu_kernels import (
    BoundInt8Linear,
    Int8Gemm,
    Int8RowKernels,
    KernelError,
    PackedInt8Weight,
    load_int8_row_kernels,
)
from ziggurat_core.engine.layers.packed import INT_MM_MIN_ROWS, Int8Weight, int_mm_bucketed


@pytest.fixture(scope="module")
def row_kernels() -> Int8RowKernels:
    kernels = load_int8_row_kernels()
    if kernels is None:
        pytest.skip("the CPU kernels are unavailable: no compiler, failed build or turned off")
    return kernels


@pytest.fixture(scope="module", params=runnable_isas())
def gemm(request: pytest.FixtureRequest) -> Int8Gemm:
    return load_gemm(request.param)


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


def test_quantize_feeds_the_gemm_the_product_of_the_signed_int8(
    row_kernels: Int8RowKernels, gemm: Int8Gemm
) -> None:
    k, n = 64, 32
    x = torch.randn(5, k, generator=generator(70))
    weight = random_int8(n, k, seed=71)
    signed, _ = row_kernels.quantize(x, None)
    qx, _ = row_kernels.quantize(x, None, unsigned=gemm.input_offset != 0)
    assert torch.equal(qx, gemm_input(gemm, signed))
    out = gemm(qx, torch.ones(5), PackedInt8Weight(weight), torch.ones(n), None)
    assert torch.equal(out, exact_product(signed, weight).to(torch.float32))


@pytest.mark.parametrize("with_bias", [False, True])
def test_dequantize_scales_int32_in_place_with_the_gemm_epilogue(
    row_kernels: Int8RowKernels, with_bias: bool
) -> None:
    rows, cols, k = 300, 256, 40  # above the threading threshold
    x, weight = random_int8(rows, k, seed=80), random_int8(cols, k, seed=81, low=-128)
    product = exact_product(x, weight)
    row_scale, col_scale, bias = scales_and_bias(rows, cols, seed=82)
    b = bias if with_bias else None
    acc = product.to(torch.int32)

    out = row_kernels.dequantize_(acc, row_scale, col_scale, b)

    assert out.dtype == torch.float32 and out.shape == (rows, cols)
    assert out.data_ptr() == acc.data_ptr()  # written over the accumulator
    assert_within_float32_epilogue(out, product, row_scale, col_scale, b)
    # The _int_mm path of a layer rounds exactly as the GEMM does.
    reference = load_gemm("scalar").reference(x, row_scale, PackedInt8Weight(weight), col_scale, b)
    assert torch.equal(out, reference)
    with pytest.raises(KernelError, match="dequantize"):
        row_kernels.dequantize_(product, row_scale, col_scale, None)
    with pytest.raises(KernelError, match="col_scale"):
        row_kernels.dequantize_(
            torch.zeros(rows, cols, dtype=torch.int32), row_scale, col_scale[:-1], None
        )


# ----------------------------------------------------------------------------- Int8Weight paths


def _count_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = {"kernel": 0, "int_mm": 0}
    real_gemm, real_int_mm = Int8Gemm.__call__, torch._int_mm
    real_linear = BoundInt8Linear.__call__

    def counting_gemm(self: Int8Gemm, *args: object) -> torch.Tensor:
        calls["kernel"] += 1
        return real_gemm(self, *args)  # type: ignore[arg-type]

    def counting_linear(self: BoundInt8Linear, x: torch.Tensor) -> torch.Tensor:
        calls["kernel"] += 1  # quantize + the same GEMM in one C call
        return real_linear(self, x)

    def counting_int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls["int_mm"] += 1
        return real_int_mm(a, b)

    monkeypatch.setattr(Int8Gemm, "__call__", counting_gemm)
    monkeypatch.setattr(BoundInt8Linear, "__call__", counting_linear)
    monkeypatch.setattr(torch, "_int_mm", counting_int_mm)
    return calls


def _reference(
    row_kernels: Int8RowKernels, layer: Int8Weight, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(exact int64 product [M, N], row scales) of x quantised by the C quantiser."""
    qx, row_scale = row_kernels.quantize(x, layer.inv_smoothing)
    return exact_product(qx, layer.int8_rows()), row_scale


@pytest.mark.parametrize("n, k", [(64, 32), (40, 30)], ids=["N64-K32", "N40-K30"])
def test_int8_weight_runs_the_kernel_of_its_variant_and_int_mm_only_above_the_vnni_threshold(
    gemm: Int8Gemm,
    row_kernels: Int8RowKernels,
    monkeypatch: pytest.MonkeyPatch,
    n: int,
    k: int,
) -> None:
    monkeypatch.setenv("ZIGGURAT_CPU_ISA", gemm.isa)  # the variant the layer packs for
    gen = generator(90 + n + k)
    weight, bias = torch.randn(n, k, generator=gen) / k**0.5, torch.randn(n, generator=gen)
    smoothing = torch.rand(k, generator=gen) + 0.5
    layer = Int8Weight(weight, bias, smoothing)
    threshold = INT_MM_MIN_ROWS.get(gemm.isa)
    assert layer.packed_weight is not None
    assert layer.fused is not None and layer.fused.isa == gemm.isa
    # Only the layout that runs is held.
    assert (layer.qweight is None) == (threshold is None)
    x = torch.randn(300, k, generator=gen) * (10 ** torch.linspace(-2, 2, 300))[:, None]
    calls = _count_calls(monkeypatch)

    batch = layer(x)
    for m in [1, 2, 5, 17, 64, 127, 128, 129]:
        rows = layer(x[:m])
        # A row's result does not depend on its batch, whichever path the batch took.
        assert torch.equal(rows, batch[:m]), f"{m} rows"

    # 9 calls: 300 rows, then the prefixes; _int_mm only for row counts at the threshold and up.
    big = 0 if threshold is None else sum(m >= threshold for m in [300, 1, 2, 5, 17, 64, 127, 128, 129])
    assert calls == {"kernel": 9 - big, "int_mm": big}
    product, row_scale = _reference(row_kernels, layer, x)
    assert_within_float32_epilogue(batch, product, row_scale, layer.scale, layer.bias)
    # Inputs of another dtype or layout take the same path, converted.
    assert torch.equal(layer(x.t().contiguous().t()[:5]), batch[:5])
    assert torch.equal(layer(x[:5].double()), batch[:5].double())
    assert calls["int_mm"] == big


def test_int8_weight_dequantize_reads_either_layout(
    gemm: Int8Gemm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZIGGURAT_CPU_ISA", gemm.isa)  # the variant the layer packs for
    weight = torch.randn(40, 30, generator=generator(95))
    layer = Int8Weight(weight, None)
    assert torch.equal(layer.int8_rows(), torch.round(weight / layer.scale[:, None]).to(torch.int8))
    assert float((layer.dequantize() - weight).abs().max()) <= float(layer.scale.max()) / 2 + 1e-6


def test_int8_weight_without_the_c_kernels_runs_int_mm(
    monkeypatch: pytest.MonkeyPatch, row_kernels: Int8RowKernels
) -> None:
    monkeypatch.setenv("ZIGGURAT_CPU_KERNELS", "0")
    gen = generator(100)
    weight, bias = torch.randn(40, 32, generator=gen), torch.randn(40, generator=gen)
    layer = Int8Weight(weight, bias)
    assert layer.packed_weight is None and layer.qweight is not None
    x = torch.randn(20, 32, generator=gen)
    calls = _count_calls(monkeypatch)

    out = layer(x)

    assert calls == {"kernel": 0, "int_mm": 1}
    product, row_scale = _reference(row_kernels, layer, x)
    assert_within_float32_epilogue(out, product, row_scale, layer.scale, layer.bias)


def test_int_mm_runs_at_row_buckets_with_the_exact_product(monkeypatch: pytest.MonkeyPatch) -> None:
    """oneDNN caches its int8 GEMM per shape: prefill steps of every size would each add one, so
    `_int_mm` sees only the row buckets, and the rows kept are the exact product."""
    weight = random_int8(48, 64, seed=95, low=-128)
    seen: set[int] = set()
    real_int_mm = torch._int_mm

    def spy(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        seen.add(a.size(0))
        return real_int_mm(a, b)

    monkeypatch.setattr(torch, "_int_mm", spy)
    for rows in range(120, 300, 7):
        x = random_int8(rows, 64, seed=rows)
        out = int_mm_bucketed(x, weight.t())
        assert out.dtype == torch.int32 and out.shape == (rows, 48)
        assert torch.equal(out.long(), exact_product(x, weight))
    assert seen == {128, 192, 256, 320}
