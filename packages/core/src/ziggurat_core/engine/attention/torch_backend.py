"""The portable attention backend ("torch"): every device and dtype; the backend used on CPU.

On CPU with the C kernels built (`cpu_kernels/`), a float32 model over a float32 or float16
cache takes the fast path: the step's new keys/values are written to the cache in one call, and
every new token, decode or prefill, attends to its context straight from the paged cache in one
more (a prefill token at position p is computed exactly as the decode at p would be). Otherwise
(no kernels, CUDA, other dtypes) a step is split in two parts: decodes, batched over their
gathered contexts (`gathered_decode.py`), and prefill chunks, one sequence at a time
(`torch_prefill.py`). Index tensors are built once per step: in `prepare`, except the decode chunks, whose size depends
on the cache's bytes per token and which the first layer builds for the others. Masks are made
per dtype on first use.

The cache may hold a narrower dtype than the model runs in (a float16 cache for float32 compute,
see EngineConfig.kv_cache_dtype): new keys/values are rounded to the cache dtype as they are
stored, and every path attends over the stored values, widened back to the query dtype (the C
decode kernel reads a float16 cache directly).

This file holds the step preparation, the cache write and the choice between the C kernel and
the torch paths; `reference_mask` (the semantics every backend implements) lives in
reference_mask.py and is re-exported here.
"""

from __future__ import annotations

import torch

from ..cpu_kernels import (
    DecodeFusedKernels,
    PagedAttentionKernel,
    load_decode_fused_kernels,
    load_paged_attention_kernel,
)
from ..device import host_to_device
from .base import AttentionBackend, AttentionLayoutError, KernelStepInputs, StepLayout
from .gathered_decode import GatheredDecode
from .reference_mask import reference_mask
from .step_indices import step_indices
from .torch_metadata import (
    DecodeBatch,
    DecodeChunk,
    PortableAttentionMetadata,
    PrefillChunk,
    prepare_prefill,
    static_decode_metadata,
)
from .torch_prefill import TorchPrefill

# Gathered K+V per decode attention call on CPU, per intra-op thread: each thread's share of a
# chunk stays in its core's L2, so attention reads it from there (the sweep that chose the size
# is in docs/benchmarks.md).
DECODE_CHUNK_BYTES_PER_THREAD = 3 * 2**19
# Query rows per block of the CPU prefill matmuls (chosen by a sweep, see docs/benchmarks.md).
DEFAULT_PREFILL_BLOCK_ROWS = 64

__all__ = [
    "DECODE_CHUNK_BYTES_PER_THREAD",
    "DEFAULT_PREFILL_BLOCK_ROWS",
    "AttentionLayoutError",
    "DecodeBatch",
    "DecodeChunk",
    "PrefillChunk",
    "PortableAttentionBackend",
    "PortableAttentionMetadata",
    "reference_mask",
]


class PortableAttentionBackend(AttentionBackend):
    """Paged attention on every device and dtype: the C kernel (`PagedAttentionKernel`) on CPU
    where it is built, torch ops otherwise (the user setting keeps its name, "torch").

    On CPU: `decode_chunk_bytes` bounds the K+V bytes (padding included) gathered per decode
    attention call (None: DECODE_CHUNK_BYTES_PER_THREAD per torch thread); `prefill_block_rows`
    is the query rows per block of the matmul prefill (None: SDPA instead). Other devices always
    use one decode call and SDPA.

    Holds a gather workspace reused by every call: one instance per model runner, not shared
    between threads.
    """

    name = "torch"

    def __init__(
        self,
        decode_chunk_bytes: int | None = None,
        prefill_block_rows: int | None = DEFAULT_PREFILL_BLOCK_ROWS,
        decode_kernel: bool = True,
    ) -> None:
        if decode_chunk_bytes is not None and decode_chunk_bytes < 1:
            raise ValueError(f"decode_chunk_bytes must be >= 1 or None, got {decode_chunk_bytes}")
        if prefill_block_rows is not None and prefill_block_rows < 1:
            raise ValueError(f"prefill_block_rows must be >= 1 or None, got {prefill_block_rows}")
        self.decode_chunk_bytes = decode_chunk_bytes
        self.prefill_block_rows = prefill_block_rows
        # The torch paths, each with the buffers it reuses across layers and steps.
        self._decode = GatheredDecode()
        self._prefill = TorchPrefill()
        # The C kernel for float32 CPU decodes (float32 or float16 cache), loaded (built) on the
        # first CPU decode.
        self.use_decode_kernel = decode_kernel
        self._kernel: PagedAttentionKernel | None = None
        # RoPE + cache write in one call (`forward_fused_qkv`), loaded with the kernel.
        self._fused: DecodeFusedKernels | None = None
        self._kernel_loaded = False

    # ---- per step ----

    def prepare(self, layout: StepLayout, device: torch.device) -> PortableAttentionMetadata:
        # On CPU, host memory is the device: a loop over the step's new tokens costs less than
        # the tensor ops, and no context-long list is built either way.
        return self.prepare_indexed(layout, device, host_indices=device.type == "cpu")

    def prepare_indexed(
        self, layout: StepLayout, device: torch.device, host_indices: bool
    ) -> PortableAttentionMetadata:
        """`prepare`, with the slot mapping from a Python loop (`host_indices`) or from tensor
        ops on the device (attention/step_indices.py); the result is the same."""
        layout.validate()
        bs = layout.block_size
        on_cpu = device.type == "cpu"
        block_tables: torch.Tensor | None = None
        if host_indices:
            slot_mapping = torch.tensor(layout.slot_mapping(), dtype=torch.int64)
        else:
            indices = step_indices(layout, device)
            slot_mapping, block_tables = indices.slot_mapping, indices.block_tables
        block_rows = self.prefill_block_rows if on_cpu else None
        decode_rows: list[int] = []
        decode_seqs: list[int] = []
        prefills: list[PrefillChunk] = []
        start = 0
        for seq, (q_len, ctx_len, table) in enumerate(
            zip(layout.query_lens, layout.context_lens, layout.block_tables, strict=True)
        ):
            if q_len == 1:
                decode_rows.append(start)
                decode_seqs.append(seq)
            else:
                row = torch.tensor(table, dtype=torch.int64) if block_tables is None else block_tables[seq]
                prefills.append(prepare_prefill(start, q_len, ctx_len, row, bs, block_rows is None))
            start += q_len

        decode = None
        if decode_seqs:
            # Longest contexts first: each chunk then pads only up to its first sequence.
            order = sorted(range(len(decode_seqs)), key=lambda i: -layout.context_lens[decode_seqs[i]])
            decode = DecodeBatch(
                token_index=host_to_device([decode_rows[i] for i in order], torch.int64, device),
                context_lens=[layout.context_lens[decode_seqs[i]] for i in order],
                block_tables=[layout.block_tables[decode_seqs[i]] for i in order],
                block_size=bs,
                chunk_bytes=self._decode_chunk_bytes() if on_cpu else None,
                device=device,
            )
        return PortableAttentionMetadata(layout, bs, slot_mapping, decode, prefills, block_rows)

    def prepare_decode(
        self,
        block_tables: torch.Tensor,
        context_lens: torch.Tensor,
        positions: torch.Tensor,
        block_size: int,
    ) -> PortableAttentionMetadata:
        # One chunk over every sequence's whole table row: a fixed shape, masked per sequence.
        return static_decode_metadata(block_tables, context_lens, positions, block_size, None)

    def _decode_chunk_bytes(self) -> int:
        if self.decode_chunk_bytes is not None:
            return self.decode_chunk_bytes
        return DECODE_CHUNK_BYTES_PER_THREAD * torch.get_num_threads()

    # ---- per layer ----

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: PortableAttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        num_tokens, num_heads, head_dim = query.shape
        num_kv_heads = key.shape[1]
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
        if num_tokens != metadata.num_tokens:
            raise ValueError(f"query has {num_tokens} tokens, the step layout {metadata.num_tokens}")
        expected_cache = (2, kv_cache.shape[1], metadata.block_size, num_kv_heads, head_dim)
        if tuple(kv_cache.shape) != expected_cache:
            raise ValueError(f"kv_cache shape {tuple(kv_cache.shape)}, expected {expected_cache}")

        slots = kv_cache.view(2, -1, num_kv_heads, head_dim)  # [2, num_slots, kvh, d]
        kernel = self._decode_kernel(query, kv_cache)
        if kernel is not None and _token_rows_contiguous(key) and _token_rows_contiguous(value):
            kernel.write_kv(key, value, metadata.slot_mapping, kv_cache)
        else:
            slots[0].index_copy_(0, metadata.slot_mapping, key.to(kv_cache.dtype))
            slots[1].index_copy_(0, metadata.slot_mapping, value.to(kv_cache.dtype))

        out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
        if kernel is not None:
            # Every new token, decode or prefill, attends straight from the cache it was just
            # written to: one call for the step.
            tables, lens, rows = metadata.kernel_rows()
            kernel(query.contiguous(), kv_cache, tables, lens, rows, out, scale)
            return out
        if metadata.decode is not None:
            decoded = self._decode(query, kv_cache, metadata.decode, scale)
            out.index_copy_(0, metadata.decode.token_index, decoded)
        self._prefill(query, key, value, kv_cache, metadata, scale, out)
        return out

    def forward_fused_qkv(
        self,
        qkv: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        num_heads: int,
        kv_cache: torch.Tensor,
        metadata: PortableAttentionMetadata,
        scale: float,
    ) -> torch.Tensor | None:
        """On the C kernel path: RoPE of the query and key heads and the cache write in one
        call, then the paged attention call (a step's Python per layer is a large share of a
        single-stream decode step)."""
        kernel = self._decode_kernel(qkv, kv_cache)
        fused = self._fused
        if (
            kernel is None
            or fused is None
            or qkv.dim() != 2
            or qkv.stride(1) != 1
            or cos.dtype != torch.float32
            or sin.dtype != torch.float32
            or not cos.is_contiguous()
            or not sin.is_contiguous()
        ):
            return None
        num_kv_heads = kv_cache.shape[3]
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
        if qkv.shape[0] != metadata.num_tokens:
            raise ValueError(f"qkv has {qkv.shape[0]} tokens, the step layout {metadata.num_tokens}")
        if kv_cache.shape[2] != metadata.block_size:
            raise ValueError(f"kv_cache blocks of {kv_cache.shape[2]}, the step layout {metadata.block_size}")
        query = fused.rope_write_kv(qkv, num_heads, cos, sin, metadata.slot_mapping, kv_cache)
        out = torch.empty_like(query)
        tables, lens, rows = metadata.kernel_rows()
        kernel(query, kv_cache, tables, lens, rows, out, scale)
        return out

    def kernel_step_inputs(
        self, kv_caches: list[torch.Tensor], metadata: PortableAttentionMetadata
    ) -> KernelStepInputs | None:
        # The runner allocates every layer's cache alike: the first one stands for all (the
        # caller checks each cache once when it binds them).
        first = kv_caches[0] if kv_caches else None
        if first is None or self._cache_kernel(first) is None or self._fused is None:
            return None
        if first.dim() != 5 or first.shape[2] != metadata.block_size:
            return None
        tables, lens, rows = metadata.kernel_rows()
        return KernelStepInputs(metadata.slot_mapping, tables, lens, rows, metadata.block_size)

    def _decode_kernel(self, query: torch.Tensor, kv_cache: torch.Tensor) -> PagedAttentionKernel | None:
        """The C kernel for a float32 query over a float32 or (where the build has it) float16
        CPU cache; None for the torch path."""
        if query.device.type != "cpu" or query.dtype != torch.float32:
            return None
        return self._cache_kernel(kv_cache)

    def _cache_kernel(self, kv_cache: torch.Tensor) -> PagedAttentionKernel | None:
        """The C kernel where it reads `kv_cache` (for a float32 query), else None."""
        if not self.use_decode_kernel or kv_cache.device.type != "cpu":
            return None
        if kv_cache.dtype not in (torch.float32, torch.float16) or not kv_cache.is_contiguous():
            return None
        if not self._kernel_loaded:
            self._kernel = load_paged_attention_kernel()
            self._fused = load_decode_fused_kernels()
            self._kernel_loaded = True
        if self._kernel is None or kv_cache.dtype not in self._kernel.cache_dtypes:
            return None
        return self._kernel


def _token_rows_contiguous(x: torch.Tensor) -> bool:
    """[tokens, heads, d] float32 whose heads of one token lie back to back (any token stride)."""
    return x.dtype == torch.float32 and x.stride(2) == 1 and x.stride(1) == x.shape[2]
