"""Temperature sampling (softmax, min_p, inverse CDF), with or without top-k / top-p, and greedy
argmax of float32 CPU logit rows, each in one call (`csrc/sampling.c`)."""

from __future__ import annotations

import ctypes

import torch

from .build import KernelError, check_float_vectors, library_wrapper


def fits(logits: torch.Tensor) -> bool:
    """Whether the kernel takes `logits` (after `.contiguous()`): 2-D float32 on the CPU."""
    return logits.dtype == torch.float32 and logits.dim() == 2 and logits.device.type == "cpu"


def _logit_rows(op: str, logits: torch.Tensor) -> tuple[int, int]:
    """(rows, vocab) of `logits`, which the kernels read as contiguous 2-D float32 on the CPU."""
    if not fits(logits) or not logits.is_contiguous():
        raise KernelError(f"{op}: logits must be a contiguous 2-D float32 CPU tensor")
    rows, vocab = logits.shape
    return rows, vocab


def _check_row_values(op: str, rows: int, *values: tuple[str, torch.Tensor, torch.dtype]) -> None:
    """Each named tensor holds one contiguous value of its dtype per row."""
    for name, tensor, dtype in values:
        if tensor.dtype != dtype or tensor.numel() != rows or not tensor.is_contiguous():
            raise KernelError(f"{op}: {name} must be {rows} contiguous {dtype} values")


def _threads(num_threads: int | None) -> int:
    return max(1, torch.get_num_threads() if num_threads is None else num_threads)


class SamplingKernel:
    def __init__(self, library: ctypes.CDLL) -> None:
        p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        self._sample = library.sample_rows_f32
        self._sample.argtypes = [p, i64, i64, p, p, p, p, p, i32]
        self._sample.restype = None
        self._sample_truncated = library.sample_truncated_rows_f32
        self._sample_truncated.argtypes = [p, i64, i64, p, p, p, p, p, p, p, i32]
        self._sample_truncated.restype = None
        scratch_bytes = library.sample_truncated_scratch_bytes
        scratch_bytes.argtypes = [i64]
        scratch_bytes.restype = i64
        self._truncated_scratch_bytes = scratch_bytes
        self._argmax = library.argmax_rows_f32
        self._argmax.argtypes = [p, i64, i64, p, i32]
        self._argmax.restype = None
        block_size = library.sample_block_size
        block_size.restype = i64
        self._block_size = int(block_size())

    def sample(
        self,
        logits: torch.Tensor,
        temperature: torch.Tensor,
        min_p: torch.Tensor | None,
        uniforms: torch.Tensor,
        num_threads: int | None = None,
    ) -> torch.Tensor:
        """The token of each row of `logits` [R, V] (contiguous float32, CPU) drawn by inverse
        CDF from softmax(row / temperature) with the uniform `uniforms[r]` (float64 in [0, 1)):
        [R] int64. `temperature` (> 0) and `min_p` (None: none) hold one float32 per row (any
        shape, e.g. [R, 1]); a token whose weight relative to the row's largest is below min_p
        is not drawn. Rows are split over `num_threads` threads (default: torch's count); the
        tokens do not depend on it."""
        rows, vocab = _logit_rows("sample", logits)
        check_float_vectors(
            "sample", (("temperature", temperature, rows), ("min_p", min_p, rows))
        )
        _check_row_values("sample", rows, ("uniforms", uniforms, torch.float64))
        out = torch.empty(rows, dtype=torch.int64)
        if rows == 0:
            return out
        if vocab == 0:
            raise KernelError("sample: logits have no columns")
        blocks = -(-vocab // self._block_size)
        scratch = torch.empty(rows * blocks, dtype=torch.float64)
        self._sample(
            logits.data_ptr(),
            rows,
            vocab,
            temperature.data_ptr(),
            None if min_p is None else min_p.data_ptr(),
            uniforms.data_ptr(),
            scratch.data_ptr(),
            out.data_ptr(),
            _threads(num_threads),
        )
        return out

    def sample_truncated(
        self,
        logits: torch.Tensor,
        temperature: torch.Tensor,
        min_p: torch.Tensor | None,
        top_k: torch.Tensor,
        top_p: torch.Tensor,
        uniforms: torch.Tensor,
        num_threads: int | None = None,
    ) -> torch.Tensor:
        """`sample` with top-k and top-p, as the sampler's torch path applies them: per row,
        the tokens sorted by probability (equal ones by lower id first), the first `top_k[r]`
        (int64; the vocabulary size or more: off; below 1 taken as 1), then those while the
        mass before them is below top_p[r] (float64; 1 or more: off) of what top-k kept, at
        least one; the token is drawn from what is left with `uniforms[r]`. [R] int64. The
        values are not checked here (SamplingParams validates them; reading them would make
        the device path's sampler wait on the host), only what the kernel cannot read."""
        rows, vocab = _logit_rows("sample_truncated", logits)
        check_float_vectors(
            "sample_truncated", (("temperature", temperature, rows), ("min_p", min_p, rows))
        )
        _check_row_values(
            "sample_truncated",
            rows,
            ("top_k", top_k, torch.int64),
            ("top_p", top_p, torch.float64),
            ("uniforms", uniforms, torch.float64),
        )
        out = torch.empty(rows, dtype=torch.int64)
        if rows == 0:
            return out
        if vocab == 0 or vocab >= 2**31:
            raise KernelError(f"sample_truncated: logits have {vocab} columns (1 to 2^31 - 1)")
        threads = _threads(num_threads)
        # One row's scratch per thread, not per row: a batch's worth would be a fresh mapping
        # of tens of MB, faulted in page by page on every call.
        scratch = torch.empty(threads * self._truncated_scratch_bytes(vocab) + 64, dtype=torch.uint8)
        aligned = scratch.data_ptr() + (-scratch.data_ptr()) % 64
        self._sample_truncated(
            logits.data_ptr(),
            rows,
            vocab,
            temperature.data_ptr(),
            None if min_p is None else min_p.data_ptr(),
            top_k.data_ptr(),
            top_p.data_ptr(),
            uniforms.data_ptr(),
            aligned,
            out.data_ptr(),
            threads,
        )
        return out

    def argmax(self, logits: torch.Tensor, num_threads: int | None = None) -> torch.Tensor:
        """The index of each row's largest value, the first of equal ones, as torch.argmax
        gives it: [R] int64 for `logits` [R, V] (contiguous float32, CPU, V >= 1)."""
        rows, vocab = _logit_rows("argmax", logits)
        out = torch.empty(rows, dtype=torch.int64)
        if rows == 0:
            return out
        if vocab == 0:
            raise KernelError("argmax: logits have no columns")
        self._argmax(
            logits.data_ptr(),
            rows,
            vocab,
            out.data_ptr(),
            _threads(num_threads),
        )
        return out


def load_sampling_kernel() -> SamplingKernel | None:
    """The kernel, or None where the CPU kernels cannot be built (see `build.py`)."""
    return library_wrapper(SamplingKernel)
