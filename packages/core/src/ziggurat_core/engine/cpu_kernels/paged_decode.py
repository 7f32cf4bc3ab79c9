"""Decode attention straight from the paged float32 KV cache (`csrc/paged_decode.c`)."""

from __future__ import annotations

import ctypes

import torch

from .build import KernelError, load_cpu_library


class PagedDecodeKernel:
    """Decode attention straight from the paged float32 cache (see the C file for layouts)."""

    def __init__(self, library: ctypes.CDLL) -> None:
        fn = library.paged_decode_attention_f32
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p] * 7 + [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_int]
        self._fn = fn

    def __call__(
        self,
        query: torch.Tensor,  # [num_tokens, H, d] float32
        kv_cache: torch.Tensor,  # [2, num_blocks, block_size, kvh, d] float32
        block_tables: torch.Tensor,  # [num_seqs, max_blocks] int64
        context_lens: torch.Tensor,  # [num_seqs] int64
        token_rows: torch.Tensor,  # [num_seqs] int64
        out: torch.Tensor,  # [num_tokens, H, d] float32, decode rows written
        scale: float,
    ) -> None:
        for name, t in (("query", query), ("kv_cache", kv_cache), ("out", out)):
            if t.dtype != torch.float32 or not t.is_contiguous() or t.device.type != "cpu":
                raise KernelError(f"{name} must be a contiguous float32 CPU tensor")
        for name, t in (
            ("block_tables", block_tables),
            ("context_lens", context_lens),
            ("token_rows", token_rows),
        ):
            if t.dtype != torch.int64 or not t.is_contiguous():
                raise KernelError(f"{name} must be a contiguous int64 tensor")
        _, num_heads, head_dim = query.shape
        _, _, block_size, num_kv_heads, _ = kv_cache.shape
        num_seqs, max_blocks = block_tables.shape
        status = self._fn(
            query.data_ptr(),
            kv_cache[0].data_ptr(),
            kv_cache[1].data_ptr(),
            block_tables.data_ptr(),
            context_lens.data_ptr(),
            token_rows.data_ptr(),
            out.data_ptr(),
            num_seqs,
            max_blocks,
            num_heads,
            num_kv_heads,
            head_dim,
            block_size,
            scale,
            torch.get_num_threads(),
        )
        if status != 0:
            raise MemoryError("paged decode kernel: out of memory for attention scores")


_wrappers: dict[ctypes.CDLL, PagedDecodeKernel] = {}


def load_paged_decode_kernel() -> PagedDecodeKernel | None:
    """The kernel, or None where the CPU kernels cannot be built (see `build.py`)."""
    library = load_cpu_library()
    if library is None:
        return None
    if library not in _wrappers:  # one wrapper per loaded library (argtypes set once)
        _wrappers[library] = PagedDecodeKernel(library)
    return _wrappers[library]
