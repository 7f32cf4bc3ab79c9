"""The ARM NEON kernels, tested on this (x86) machine: cross-compiled with aarch64-linux-gnu-gcc
and run under qemu-aarch64 (user-mode emulation of an AArch64 CPU with the dot-product
extension).

- The whole kernel library (every csrc/*.c, as build.py compiles it) builds for AArch64 with and
  without the dot-product extension and for the forced scalar variant, links with no undefined
  symbol, and has the NEON GEMM exactly in the NEON builds.
- tests/core/arm/neon_driver.c runs int8_gemm_neon against the scalar reference on random data
  (dot products for every K tail, M from 1 to 130, N and K tails, the largest products, two
  thread counts): every output bitwise equal, once through sdot (armv8.2-a+dotprod) and once
  through the plain NEON path (armv8-a); the driver prints which path it was compiled with.
- The float16 KV-cache conversions (paged_decode.c) against torch: every half to float32, and
  float32 -> half round-to-nearest-even on all halves, the ties between them, their neighbours,
  the overflow and subnormal edges and random bit patterns; through the NEON conversion and
  through the compiler's _Float16 (the forced scalar build). Then the paged attention's blocked
  prefill rows (paged_prefill.c) bitwise against the same rows attended alone.

The cross toolchain comes from Debian's gcc-aarch64-linux-gnu and qemu-user, installed with
apt-get when missing; the tests skip only where that is impossible (no apt-get, not root).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from arm_qemu import CC, CSRC, NM, TARGETS, library_flags, run_command, run_driver

DRIVER = Path(__file__).parent / "arm" / "neon_driver.c"


@pytest.fixture(scope="session")
def drivers(arm_toolchain: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The test driver built for each target with the library's flags, as an executable."""
    root = tmp_path_factory.mktemp("neon_driver")
    flags = [flag for flag in library_flags() if flag != "-shared"]
    built = {}
    for target, target_flags in TARGETS.items():
        executable = root / f"neon_driver_{target}"
        sources = [
            DRIVER, CSRC / "int8_gemm_neon.c", CSRC / "int8_gemm_reference.c", CSRC / "paged_prefill.c"
        ]
        result = run_command(
            [CC, *flags, *target_flags, f"-I{CSRC}", *map(str, sources), "-o", str(executable)]
            + ["-lm"]
        )
        assert result.returncode == 0, result.stderr[-3000:]
        built[target] = executable
    return built


@pytest.mark.parametrize("target", list(TARGETS))
def test_whole_library_builds_for_aarch64(
    arm_toolchain: None, tmp_path: Path, target: str
) -> None:
    library = tmp_path / "libziggurat_cpu.so"
    sources = sorted(str(path) for path in CSRC.glob("*.c"))
    # --no-undefined: a shared library links even with unresolved calls; this one must not.
    result = run_command(
        [CC, *library_flags(), *TARGETS[target], *sources, "-o", str(library), "-lm"]
        + ["-Wl,--no-undefined"]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    symbols = run_command([NM, "-D", "--defined-only", str(library)]).stdout.split()
    for symbol in ("ziggurat_cpu_isa", "int8_gemm_reference", "paged_decode_attention_f16"):
        assert symbol in symbols
    assert ("int8_gemm_neon" in symbols) == (target != "scalar")


@pytest.mark.parametrize("target", ["sdot", "neon"])
@pytest.mark.parametrize("seed", [1, 2])
def test_neon_gemm_bitwise_equals_reference(
    drivers: dict[str, Path], target: str, seed: int
) -> None:
    result = run_driver(drivers[target], "gemm", str(seed))
    lines = result.stdout.splitlines()
    assert lines[0] == f"path={target}", result.stdout[:200]
    cases = [line for line in lines if line.startswith("gemm ")]
    different = [line for line in cases if not line.endswith(": equal")]
    assert not different, "\n".join(different) + "\n" + result.stderr[-3000:]
    # Every case ran: 80 dot products, 6 row counts x 5 shapes, 2 thread counts, 2 projection
    # shapes, 4 extremes.
    assert len(cases) == 80 + 30 + 2 + 2 + 4
    assert lines[-1] == "ok" and result.returncode == 0, result.stdout[-2000:]


def conversion_inputs(seed: int) -> np.ndarray:
    """float32 values around every float16 rounding decision, plus random bit patterns."""
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    finite = np.unique(halves[np.isfinite(halves)].astype(np.float64))  # ascending, -0 == 0
    midpoints = ((finite[1:] + finite[:-1]) / 2).astype(np.float32)  # exact in float32: ties
    edges = np.array(
        [65504, 65519.996, 65520, 65536, 1e10, 2.0**-24, 2.0**-25, 3 * 2.0**-26, 2.0**-26, 1e-30]
        + [1e-45, 0.0, np.inf, np.nan],
        dtype=np.float32,
    )
    random_bits = np.random.default_rng(seed).integers(0, 1 << 32, 200_000, dtype=np.uint64)
    values = np.concatenate(
        [
            finite.astype(np.float32),
            midpoints,
            np.nextafter(midpoints, np.float32(np.inf)),
            np.nextafter(midpoints, np.float32(-np.inf)),
            edges,
            -edges,
            random_bits.astype(np.uint32).view(np.float32),
        ]
    )
    # A count that is not a multiple of the vector width, so the tail path runs too.
    return values if len(values) % 8 else values[:-1]


@pytest.mark.parametrize("target", ["neon", "scalar"])
def test_float16_cache_conversion_matches_torch(
    drivers: dict[str, Path], tmp_path: Path, target: str
) -> None:
    floats = conversion_inputs(seed=3)
    # Every half, then a few again so that the count leaves a tail after 8-wide vectors.
    halves = np.arange(1 << 16, dtype=np.uint16)
    halves = np.concatenate([halves, halves[[0x0001, 0x83FF, 0x3C00, 0x7BFF, 0xFC00]]])
    paths = {name: tmp_path / name for name in ("floats", "halves", "to_half", "to_float")}
    floats.tofile(paths["floats"])
    halves.tofile(paths["halves"])
    result = run_driver(drivers[target], "f16", *(str(path) for path in paths.values()))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    # Which conversion the build used: NEON's fcvtl/fcvtn, or the compiler's _Float16.
    assert result.stdout.splitlines()[0] == ("f16=neon" if target == "neon" else "f16=float16")
    assert "attention half cache vs float32 cache: equal" in result.stdout
    prefill = [line for line in result.stdout.splitlines() if line.startswith("attention prefill")]
    assert len(prefill) == 4 and all(line.endswith(": equal") for line in prefill), prefill

    # float32 -> half: torch's .to(float16), bit for bit (any NaN for a NaN).
    got = np.fromfile(paths["to_half"], dtype=np.uint16)
    want = torch.from_numpy(floats).to(torch.float16).view(torch.int16).numpy().view(np.uint16)
    nan = np.isnan(floats)
    assert np.isnan(got.view(np.float16)[nan]).all()
    mismatched = np.flatnonzero(got[~nan] != want[~nan])
    assert mismatched.size == 0, [
        (float(floats[~nan][i]), hex(got[~nan][i]), hex(want[~nan][i])) for i in mismatched[:5]
    ]

    # half -> float32, every one of the 65536: exact.
    got_f = np.fromfile(paths["to_float"], dtype=np.float32)
    want_f = torch.from_numpy(halves.view(np.float16)).to(torch.float32).numpy()
    nan = np.isnan(want_f)
    assert np.isnan(got_f[nan]).all()
    assert np.array_equal(got_f[~nan].view(np.uint32), want_f[~nan].view(np.uint32))
