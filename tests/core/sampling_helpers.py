"""Shared by the sampling kernel tests (test_sampling_kernel.py, test_truncated_sampling_kernel.py):
the kernel of the native build or of one variant, float64 reference weights, the seeded batches
every build must agree on, and the same kernels cross-built for AArch64 and run under qemu."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from arm_qemu import CC, CSRC, TARGETS, library_flags, run_command, run_driver
from int8_helpers import generator
from ziggurat_core.engine.cpu_kernels import SamplingKernel, load_sampling_kernel

VOCAB_SIZES = [1, 7, 63, 1000, 49152]
# The kernel's weights are within ~1e-5 (relative) of float64's, its prefix sums within ~1e-5 of
# the total: a token is only asked for where half its interval is far wider than that.
MIN_PROBABILITY = 1e-4
LAST_UNIFORM = float(np.nextafter(1.0, 0.0))
DRIVER = Path(__file__).parent / "arm" / "sampling_driver.c"


def loaded_kernel() -> SamplingKernel:
    """The kernel of the native build, or of the variant ZIGGURAT_CPU_ISA forces."""
    kernel = load_sampling_kernel()
    assert kernel is not None, "the CPU kernels failed to load"
    return kernel


def kernel_for(isa: str) -> SamplingKernel:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZIGGURAT_CPU_ISA", isa)
        return loaded_kernel()


def reference_weights(row: torch.Tensor, temperature: float, min_p: float) -> np.ndarray:
    """Unnormalised float64 probabilities of one row (its maximum's is 1), min_p applied."""
    x = row.double().numpy()
    with np.errstate(invalid="ignore"):
        weights = np.exp((x - x.max()) / np.float64(np.float32(temperature)))
    weights[np.isneginf(x)] = 0.0
    weights[weights < np.float64(np.float32(min_p))] = 0.0
    return weights


def random_logits(rows: int, vocab: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=generator(seed)) * scale


def clear_of_threshold(logits: torch.Tensor, temperature: float, min_p: float) -> torch.Tensor:
    """`logits` with the tokens whose weight lies within 1e-3 of min_p masked (-inf): rounding
    may put those on either side of the threshold, and they would move every interval after
    them."""
    out = logits.clone()
    for r in range(out.shape[0]):
        weights = reference_weights(out[r], temperature, 0.0)
        near = np.abs(weights / np.float32(min_p) - 1.0) < 1e-3
        out[r, torch.from_numpy(near)] = float("-inf")
    return out


def masked_row(vocab: int, finite: dict[int, float]) -> torch.Tensor:
    row = torch.full((vocab,), float("-inf"))
    for token, logit in finite.items():
        row[token] = logit
    return row


def wide_batch() -> tuple[torch.Tensor, list[float], list[float], list[float]]:
    """Rows of 49,152 and random uniforms (not kept away from interval edges): logits,
    temperatures, uniforms and min_p."""
    rows = 48
    gen = generator(5)
    logits = torch.randn(rows, 49152, generator=gen) * torch.rand(rows, 1, generator=gen) * 6
    logits[::7, 100:40000] = float("-inf")
    temperature = [(0.3, 1.0, 1.7)[r % 3] for r in range(rows)]
    min_p = [(0.0, 0.0, 0.01, 0.1)[r % 4] for r in range(rows)]
    uniforms = torch.rand(rows, dtype=torch.float64, generator=gen).tolist()
    return logits, temperature, uniforms, min_p


def aarch64_tokens(tmp_path: Path, mode: str, logits: torch.Tensor,
                   per_row: list[np.ndarray]) -> list[int]:
    """The tokens of `mode` (sample, truncated or argmax: arm/sampling_driver.c) for `logits`
    and the per-row inputs in the driver's order, from the kernels cross-compiled with the
    library's flags for a baseline ARMv8 CPU and run under qemu on two threads. Every AArch64
    CPU has NEON and fused multiply-adds, so its scalar variant compiles sampling.c the same
    way."""
    driver = tmp_path / "sampling_driver"
    flags = [flag for flag in library_flags() if flag != "-shared"]
    sources = [str(DRIVER), str(CSRC / "sampling.c")]
    built = run_command([CC, *flags, *TARGETS["neon"], f"-I{CSRC}", *sources, "-o", str(driver),
                         "-lm"])
    assert built.returncode == 0, built.stderr[-3000:]
    paths = []
    for index, values in enumerate([logits.contiguous().numpy(), *per_row]):
        path = tmp_path / f"input{index}"
        values.tofile(path)
        paths.append(str(path))
    out = tmp_path / "tokens"
    rows, vocab = logits.shape
    ran = run_driver(driver, mode, str(rows), str(vocab), *paths, str(out))
    assert ran.returncode == 0, ran.stderr[-3000:]
    return np.fromfile(out, dtype=np.int64).tolist()
