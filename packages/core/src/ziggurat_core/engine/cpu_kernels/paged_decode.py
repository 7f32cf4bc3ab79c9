"""Attention straight from the paged KV cache (`csrc/paged_decode.c`) for every new token, decode
or prefill (a prefill token at position p is computed as the decode at p would be): float32 or
float16 cache, float32 query and output.

One call covers a step. Consecutive rows that read the same block table (a prefill chunk's
tokens) are attended in blocks of rows per kv head (`csrc/paged_prefill.c`): each cached key and
value is read and widened once per block of rows, scores come out a vector of keys at a time, and
the work is spread over (row block, kv head) so that one long prompt uses every thread. Every row's
result is bitwise what the one-row kernel computes for it (the same lane sums in the same order,
the same softmax), so grouping changes only the speed; `rows_alone=True` turns it off."""

from __future__ import annotations

import ctypes
from typing import Any

import torch

from .build import KernelError, library_wrapper

_ARGTYPES = [ctypes.c_void_p] * 7 + [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_int]


class PagedAttentionKernel:
    """Attention of new tokens, decode or prefill, straight from the paged cache (see the C
    file for layouts).

    The cache may be float32, or float16 where `supports_float16` (the library was built with
    half-precision support: F16C or the compiler's _Float16); query and out are float32 and all
    arithmetic is float32.
    """

    def __init__(self, library: ctypes.CDLL) -> None:
        self._fns: dict[torch.dtype, Any] = {}  # cache dtype -> bound C function
        self._fns[torch.float32] = self._bind(library.paged_decode_attention_f32)
        rows_alone = library.paged_attention_rows_alone
        rows_alone.restype = ctypes.c_int
        rows_alone.argtypes = [ctypes.c_void_p] * 7 + [ctypes.c_int] * 6 + [ctypes.c_float] + [ctypes.c_int] * 2
        self._rows_alone = rows_alone
        has_f16 = getattr(library, "paged_decode_has_f16", None)
        if has_f16 is not None:
            has_f16.restype = ctypes.c_int
            has_f16.argtypes = []
            if has_f16():
                self._fns[torch.float16] = self._bind(library.paged_decode_attention_f16)
        write = library.write_kv_cache
        write.restype = ctypes.c_int
        write.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
        ]
        self._write = write

    @staticmethod
    def _bind(fn: Any) -> Any:
        fn.restype = ctypes.c_int
        fn.argtypes = _ARGTYPES
        return fn

    @property
    def supports_float16(self) -> bool:
        """Whether a float16 cache is accepted (else only float32)."""
        return torch.float16 in self._fns

    @property
    def cache_dtypes(self) -> tuple[torch.dtype, ...]:
        """The cache dtypes this build reads."""
        return tuple(self._fns)

    def __call__(
        self,
        query: torch.Tensor,  # [num_tokens, H, d] float32
        kv_cache: torch.Tensor,  # [2, num_blocks, block_size, kvh, d] float32 or float16
        block_tables: torch.Tensor,  # [num_seqs, max_blocks] int64
        context_lens: torch.Tensor,  # [num_seqs] int64
        token_rows: torch.Tensor,  # [num_seqs] int64
        out: torch.Tensor,  # [num_tokens, H, d] float32, decode rows written
        scale: float,
        rows_alone: bool = False,
    ) -> None:
        """Attend each row `token_rows[i]` of `query` to the first `context_lens[i]` positions
        of the sequence whose blocks are `block_tables[i]`; `rows_alone` attends every row by
        itself instead of grouping a prefill chunk's rows (the same bits, slower)."""
        for name, t in (("query", query), ("out", out)):
            if t.dtype != torch.float32 or not t.is_contiguous() or t.device.type != "cpu":
                raise KernelError(f"{name} must be a contiguous float32 CPU tensor")
        fn = self._fns.get(kv_cache.dtype)
        if fn is None or not kv_cache.is_contiguous() or kv_cache.device.type != "cpu":
            accepted = " or ".join(str(d).removeprefix("torch.") for d in self._fns)
            raise KernelError(
                f"kv_cache must be a contiguous {accepted} CPU tensor, got {kv_cache.dtype}"
                f"{'' if kv_cache.is_contiguous() else ' (not contiguous)'} on {kv_cache.device}"
            )
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
        half = [] if not rows_alone else [int(kv_cache.dtype == torch.float16)]
        status = (self._rows_alone if rows_alone else fn)(
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
            *half,
            torch.get_num_threads(),
        )
        if status != 0:
            raise MemoryError("paged attention kernel: out of memory for its scratch buffers")

    def write_kv(
        self,
        key: torch.Tensor,  # [num_tokens, kvh, d] float32, each token's heads contiguous
        value: torch.Tensor,  # same shape; token rows may be strided (views of a fused QKV)
        slot_mapping: torch.Tensor,  # [num_tokens] int64
        kv_cache: torch.Tensor,  # [2, num_blocks, block_size, kvh, d] float32 or float16
    ) -> None:
        """Store the step's new keys and values in their cache slots (converted to the cache
        dtype, rounded to nearest as torch's .to() does)."""
        if (
            kv_cache.dtype not in self._fns
            or not kv_cache.is_contiguous()
            or kv_cache.device.type != "cpu"
        ):
            raise KernelError(f"kv_cache must be a contiguous CPU tensor of {self.cache_dtypes}")
        num_tokens, num_kv_heads, head_dim = key.shape
        floats = num_kv_heads * head_dim
        if kv_cache.shape[3] * kv_cache.shape[4] != floats:
            raise KernelError(
                f"kv_cache holds {tuple(kv_cache.shape[3:])} per token, the keys {(num_kv_heads, head_dim)}"
            )
        for name, t in (("key", key), ("value", value)):
            if (
                t.dtype != torch.float32
                or t.device.type != "cpu"
                or t.shape != key.shape
                or t.stride(2) != 1
                or t.stride(1) != head_dim
            ):
                raise KernelError(
                    f"{name} must be float32 [tokens, kv heads, head_dim] with contiguous tokens"
                )
        if (
            slot_mapping.dtype != torch.int64
            or not slot_mapping.is_contiguous()
            or slot_mapping.numel() != num_tokens
        ):
            raise KernelError(f"slot_mapping must be {num_tokens} contiguous int64 values")
        status = self._write(
            key.data_ptr(),
            key.stride(0),
            value.data_ptr(),
            value.stride(0),
            slot_mapping.data_ptr(),
            num_tokens,
            floats,
            kv_cache[0].data_ptr(),
            kv_cache[1].data_ptr(),
            int(kv_cache.dtype == torch.float16),
        )
        if status != 0:
            raise KernelError("this build of the kernels has no float16 support")


def load_paged_attention_kernel() -> PagedAttentionKernel | None:
    """The kernel, or None where the CPU kernels cannot be built (see `build.py`)."""
    return library_wrapper(PagedAttentionKernel)
