"""The C int8 GEMM (cpu_kernels/int8_gemm.py, csrc/int8_gemm*.c): the packed layout, then every
instruction-set variant this machine can run (each built on its own with ZIGGURAT_CPU_ISA)
against the portable scalar reference and against exact integer products in torch.

The accumulation is exact int32 arithmetic and every variant applies the same float epilogue
(`int8_gemm_epilogue`), so variants agree bitwise with the reference, with each other, across
batch compositions and thread counts. With unit scales and no bias the output is the exact
integer product rounded once to float32; with scales and bias it is within a few float32
roundings of the float64 value. Activations are in [-127, 127] (what the quantisers produce),
weights cover all of int8, -128 included.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from int8_helpers import (
    assert_within_float32_epilogue,
    exact_product,
    gemm_input,
    load_gemm,
    random_int8,
    runnable_isas,
    scales_and_bias,
)
from ziggurat_core.engine.cpu_kernels import Int8Gemm, KernelError, PackedInt8Weight


@pytest.fixture(scope="module", params=runnable_isas())
def gemm(request: pytest.FixtureRequest) -> Int8Gemm:
    return load_gemm(request.param)


@pytest.fixture(scope="module")
def scalar_gemm() -> Int8Gemm:
    return load_gemm("scalar")


@pytest.fixture
def restore_num_threads() -> Iterator[None]:
    saved = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def run(
    gemm: Int8Gemm,
    x: torch.Tensor,
    weight: PackedInt8Weight,
    row_scale: torch.Tensor | None = None,
    col_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """gemm on signed activations x (shifted where the variant wants them so)."""
    m, n = x.shape[0], weight.out_features
    return gemm(
        gemm_input(gemm, x),
        torch.ones(m) if row_scale is None else row_scale,
        weight,
        torch.ones(n) if col_scale is None else col_scale,
        bias,
    )


# ----------------------------------------------------------------------------- PackedInt8Weight


@pytest.mark.parametrize("n, k", [(48, 40), (37, 13), (16, 4), (5, 3), (1, 1), (200, 577)])
def test_packed_layout_pads_any_shape_with_zeros(n: int, k: int) -> None:
    weight = random_int8(n, k, seed=n + k, low=-128)
    packed = PackedInt8Weight(weight)
    tiles, groups = -(-n // 16), -(-k // 4)
    assert (packed.out_features, packed.in_features) == (n, k)
    assert packed.packed.shape == (tiles, groups, 16, 4) and packed.packed.is_contiguous()
    expected = torch.zeros(tiles * 16, groups * 4, dtype=torch.int8)
    expected[:n, :k] = weight
    for nb, kb, i, j in [(0, 0, 0, 0), (tiles - 1, groups - 1, 15, 3), (tiles // 2, groups // 2, 7, 2)]:
        assert int(packed.packed[nb, kb, i, j]) == int(expected[16 * nb + i, 4 * kb + j])
    assert torch.equal(packed.packed.permute(0, 2, 1, 3).reshape(tiles * 16, groups * 4), expected)
    assert torch.equal(packed.unpack(), weight)
    assert packed.offset.dtype == torch.int32 and packed.offset.is_contiguous()
    assert packed.offset.shape == (2, n)
    rows = weight.tolist()
    assert packed.offset[0].tolist() == [128 * sum(row) for row in rows]
    assert packed.offset[1].tolist() == [sum(-w for w in row if w < 0) for row in rows]


@pytest.mark.parametrize(
    "weight",
    [torch.zeros(0, 8, dtype=torch.int8), torch.zeros(8, dtype=torch.int8), torch.zeros(4, 4)],
    ids=["empty", "1-D", "float"],
)
def test_packing_rejects_what_is_not_a_2d_int8_weight(weight: torch.Tensor) -> None:
    with pytest.raises(KernelError, match="int8 packing"):
        PackedInt8Weight(weight)


# ----------------------------------------------------------------------------- exactness

# (M, K, N): the model's projections at decode and prefill row counts, then tails of K (not a
# multiple of 4, 32 or 64) and of N (not a multiple of 16, 32 or 64) at every register-tile and
# row-block edge, and products too small for one full tile.
_MODEL_SHAPES = [(576, 960), (1536, 576)]
# N = 29: a last 16-output tile whose second 8-output half is partial (N = 37: absent).
_TAIL_SHAPES = [(64, 16), (8, 48), (13, 37), (3, 5), (577, 50), (130, 70), (21, 29)]
# From 12 rows the AVX2 variant takes 12-row tiles over 32-group chunks of K, in 120-row blocks:
# 12, 24, 28 (whole 12-row tiles, alone and with a 4-row remainder), 129/130/513 (a second or
# last block shorter than one tile or with a remainder); K = 577 and 130 end in a partial chunk
# and a partial group, K = 3 has no whole group.
_ROWS = [1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 17, 24, 28, 64, 65, 100, 130, 513]
CASES = [(m, k, n) for k, n in _MODEL_SHAPES for m in (1, 5, 8, 17, 65, 129)] + [
    (m, k, n) for k, n in _TAIL_SHAPES for m in _ROWS
]


@pytest.mark.parametrize("m, k, n", CASES, ids=[f"M{m}-K{k}-N{n}" for m, k, n in CASES])
def test_gemm_is_the_exact_integer_product_then_the_reference_epilogue(
    gemm: Int8Gemm, m: int, k: int, n: int
) -> None:
    seed = 1000 * m + k + n
    x = random_int8(m, k, seed=seed)
    weight = random_int8(n, k, seed=seed + 1, low=-128)
    # Extremes: a row of +127 against output rows of +127 and -128 gives 127^2 K and
    # -127 * 128 K (> 2^24 for K = 1536, so float32 rounds it); the last row of -127 flips them.
    x[0] = 127
    weight[0], weight[-1] = 127, -128
    if m > 1:
        x[-1] = -127
    packed = PackedInt8Weight(weight)
    product = exact_product(x, weight)

    out = run(gemm, x, packed)

    assert out.shape == (m, n) and out.dtype == torch.float32
    # int32 accumulation is exact: the output is the exact product rounded once to float32.
    assert torch.equal(out, product.to(torch.float32))
    if n > 1:
        assert int(product[0, 0]) == 127 * 127 * k and int(product[0, -1]) == -127 * 128 * k

    row_scale, col_scale, bias = scales_and_bias(m, n, seed=seed + 2)
    for b in (bias, None):
        scaled = run(gemm, x, packed, row_scale, col_scale, b)
        assert_within_float32_epilogue(scaled, product, row_scale, col_scale, b)
        # The same float epilogue as the scalar reference, bit for bit.
        assert torch.equal(scaled, gemm.reference(x, row_scale, packed, col_scale, b))
    # row_scale as [M] (not [M, 1]) reads the same values.
    assert torch.equal(run(gemm, x, packed, row_scale.reshape(m), col_scale, None), scaled)


@pytest.mark.parametrize("k, n", [(576, 3072), (13, 37)])
def test_every_variant_returns_the_bits_of_the_scalar_build(
    gemm: Int8Gemm, scalar_gemm: Int8Gemm, k: int, n: int
) -> None:
    m = 67
    x, weight = random_int8(m, k, seed=10), random_int8(n, k, seed=11, low=-128)
    packed = PackedInt8Weight(weight)
    row_scale, col_scale, bias = scales_and_bias(m, n, seed=12)
    for b in (bias, None):
        assert torch.equal(
            run(gemm, x, packed, row_scale, col_scale, b),
            run(scalar_gemm, x, packed, row_scale, col_scale, b),
        )


def test_gemm_of_an_empty_batch_is_empty(gemm: Int8Gemm) -> None:
    packed = PackedInt8Weight(random_int8(32, 16, seed=30))
    out = run(gemm, torch.empty(0, 16, dtype=torch.int8), packed)
    assert out.shape == (0, 32) and out.dtype == torch.float32


# ----------------------------------------------------------------------------- batch and threads


def test_each_row_is_independent_of_its_batch_and_of_the_thread_count(
    gemm: Int8Gemm, restore_num_threads: None
) -> None:
    m, k, n = 200, 578, 976  # 61 tiles: the last tile pair is a single tile; K % 4 == 2
    x = random_int8(m, k, seed=40)
    packed = PackedInt8Weight(random_int8(n, k, seed=41, low=-128))
    row_scale, col_scale, bias = scales_and_bias(m, n, seed=42)
    batch = run(gemm, x, packed, row_scale, col_scale, bias)

    for i in [0, 1, 7, 63, 64, 65, 130, 199]:
        alone = run(gemm, x[i : i + 1], packed, row_scale[i : i + 1], col_scale, bias)
        assert torch.equal(alone[0], batch[i]), f"row {i}"
    # Sub-batches tiled differently (register tiles of 1 to 8 rows, row blocks cut elsewhere).
    for start, rows in [(3, 2), (10, 3), (20, 5), (30, 9), (40, 17), (61, 70), (5, 195)]:
        part = run(
            gemm, x[start : start + rows], packed, row_scale[start : start + rows], col_scale, bias
        )
        assert torch.equal(part, batch[start : start + rows]), f"rows {start}..{start + rows}"

    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        assert torch.equal(run(gemm, x, packed, row_scale, col_scale, bias), batch), threads
        assert torch.equal(run(gemm, x[5:6], packed, row_scale[5:6], col_scale, bias)[0], batch[5])


# ----------------------------------------------------------------------------- validation

_M, _K, _N = 3, 32, 48


def _invalid_cases(gemm: Int8Gemm) -> dict[str, dict[str, object]]:
    """One change each to a valid call's arguments."""
    wrong = torch.uint8 if gemm.input_dtype == torch.int8 else torch.int8
    return {
        "x-other-signedness": {"qx": torch.zeros(_M, _K, dtype=wrong)},
        "x-float": {"qx": torch.zeros(_M, _K)},
        "x-wrong-k": {"qx": torch.zeros(_M, _K - 4, dtype=gemm.input_dtype)},
        "x-row-stride": {"qx": torch.zeros(_M, _K + 4, dtype=gemm.input_dtype)[:, :_K]},
        "x-transposed": {"qx": torch.zeros(_K, _M, dtype=gemm.input_dtype).t()},
        "x-3d": {"qx": torch.zeros(1, _M, _K, dtype=gemm.input_dtype)},
        "row_scale-size": {"row_scale": torch.ones(_M - 1)},
        "row_scale-dtype": {"row_scale": torch.ones(_M, dtype=torch.float64)},
        "row_scale-strided": {"row_scale": torch.ones(_M, 2)[:, 0]},
        "col_scale-size": {"col_scale": torch.ones(_N - 16)},
        "col_scale-dtype": {"col_scale": torch.ones(_N, dtype=torch.float16)},
        "col_scale-strided": {"col_scale": torch.ones(2 * _N)[::2]},
        "bias-size": {"bias": torch.zeros(_N + 1)},
        "bias-dtype": {"bias": torch.zeros(_N, dtype=torch.float64)},
    }


def _call(gemm: Int8Gemm, change: dict[str, object]) -> torch.Tensor:
    args: dict[str, object] = {
        "qx": torch.zeros(_M, _K, dtype=gemm.input_dtype),
        "row_scale": torch.ones(_M),
        "weight": PackedInt8Weight(random_int8(_N, _K, seed=52)),
        "col_scale": torch.ones(_N),
        "bias": torch.zeros(_N),
    } | change
    return gemm(**args)  # type: ignore[arg-type]


def test_gemm_checks_every_input(gemm: Int8Gemm) -> None:
    assert _call(gemm, {}).shape == (_M, _N)  # the baseline each case changes one thing of
    for case, change in _invalid_cases(gemm).items():
        with pytest.raises(KernelError, match="int8 GEMM"):
            _call(gemm, change)
            pytest.fail(f"{case} was accepted")
