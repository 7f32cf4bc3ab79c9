"""The portable attention backend ("torch"): every device and dtype; the backend used on CPU.

On CPU with the C kernels built (`cpu_kernels/`), a float32 model over a float32 or float16
cache takes the fast path: the step's new keys/values are written to the cache in one call, and
every new token, decode or prefill, attends to its context straight from the paged cache in one
more (a prefill token at position p is computed exactly as the decode at p would be). Otherwise
(no kernels, CUDA, other dtypes) a step is split in two parts:
- decodes (one new token per sequence) are batched. Their KV blocks are gathered from the paged
  cache, whole blocks at a time (one large copy per block rather than one small one per token),
  into a reused workspace, and one scaled_dot_product_attention call covers a chunk of
  sequences, with the query heads that share a kv head folded into the query-length axis (GQA
  without copying kv heads). On CPU a chunk is kept small (`decode_chunk_bytes`) so the gathered
  copy is still in the core's cache when attention reads it; sequences are sorted by context
  length first so a chunk pads little. On other devices one chunk holds every decode.
- prefill chunks are attended one sequence at a time, over the new keys/values as they are when
  nothing is cached before them, else over the whole context gathered from the cache (the causal
  mask shifted by the prefix length). On CPU this is explicit batched matmuls over blocks of
  `prefill_block_rows` query rows, each against only the keys up to its last row (faster than
  CPU scaled_dot_product_attention on long prompts, which computes the masked half too);
  elsewhere it is SDPA.
Index tensors are built once per step: in `prepare`, except the decode chunks, whose size depends
on the cache's bytes per token and which the first layer builds for the others. Masks are made
per dtype on first use.

The cache may hold a narrower dtype than the model runs in (a float16 cache for float32 compute,
see EngineConfig.kv_cache_dtype): new keys/values are rounded to the cache dtype as they are
stored, and every path attends over the stored values, widened back to the query dtype (the C
decode kernel reads a float16 cache directly). A prefill with nothing cached before it attends
over its new keys/values rounded the same way, so a sequence sees the same values whichever way
its prompt is split into chunks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..cpu_kernels import (
    DecodeFusedKernels,
    PagedAttentionKernel,
    load_decode_fused_kernels,
    load_paged_attention_kernel,
)
from ..device import host_to_device
from .base import AttentionBackend, AttentionLayoutError, KernelStepInputs, StepLayout
from .step_indices import step_indices
from .torch_metadata import (
    DecodeBatch,
    DecodeChunk,
    PortableAttentionMetadata,
    PrefillChunk,
    prepare_prefill,
    static_decode_metadata,
)

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


def reference_mask(layout: StepLayout) -> torch.Tensor:
    """Dense float32 mask [num_tokens, sum(context_lens)] (0 = attend, -inf = masked).

    Keys are laid out sequence after sequence, each sequence's context in position order. A new
    token at absolute position p of sequence i attends to positions <= p of sequence i only.
    This is the semantics every backend implements; tests compare against it.
    """
    layout.validate()
    mask = torch.full((layout.num_tokens, sum(layout.context_lens)), float("-inf"))
    row = 0
    col = 0
    for q_len, ctx_len in zip(layout.query_lens, layout.context_lens, strict=True):
        prefix_len = ctx_len - q_len
        for i in range(q_len):
            mask[row + i, col : col + prefix_len + i + 1] = 0.0
        row += q_len
        col += ctx_len
    return mask


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
        # Upper-triangle -inf masks [rows, rows] per (dtype, device), shared by all steps.
        self._triangles: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
        # Reused across layers and steps: a fresh multi-MB tensor per layer costs page faults.
        self._workspace: torch.Tensor | None = None
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
        converted = kv_cache.dtype != key.dtype  # stored in the cache dtype (rounded if narrower)
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
        for chunk in metadata.prefills:
            if chunk.context_slots is None:
                k = key[chunk.start : chunk.end]
                v = value[chunk.start : chunk.end]
                if converted:  # the values as stored, as any later chunk or decode reads them
                    k = k.to(kv_cache.dtype).to(query.dtype)
                    v = v.to(kv_cache.dtype).to(query.dtype)
            else:
                # [context_len, kvh, d], in the query's dtype
                k = slots[0].index_select(0, chunk.context_slots).to(query.dtype)
                v = slots[1].index_select(0, chunk.context_slots).to(query.dtype)
            q = query[chunk.start : chunk.end]
            if metadata.prefill_block_rows is None:
                out[chunk.start : chunk.end] = _prefill_sdpa(q, k, v, chunk, scale)
            else:
                self._prefill_blocked(
                    q, k, v, chunk.prefix_len, scale, metadata.prefill_block_rows,
                    out[chunk.start : chunk.end],
                )
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

    def _prefill_blocked(
        self,
        query: torch.Tensor,  # [q_len, H, d]
        key: torch.Tensor,  # [context_len, kvh, d]
        value: torch.Tensor,
        prefix_len: int,
        scale: float,
        block_rows: int,
        out: torch.Tensor,  # [q_len, H, d], written
    ) -> None:
        q_len, num_heads, head_dim = query.shape
        num_kv_heads = key.shape[1]
        group = num_heads // num_kv_heads
        triangle = self._triangle(min(block_rows, q_len), query.dtype, query.device)
        # Per kv head: its `group` query heads stacked as rows, so GQA needs no K/V copies.
        q_heads = query.view(q_len, num_kv_heads, group, head_dim).permute(1, 2, 0, 3)
        keys_t = key.permute(1, 2, 0)  # [kvh, d, context_len]
        values = value.transpose(0, 1)  # [kvh, context_len, d]
        for first in range(0, q_len, block_rows):
            end = min(q_len, first + block_rows)
            rows = end - first
            visible = prefix_len + end  # keys up to the block's last position
            q = (q_heads[:, :, first:end] * scale).reshape(num_kv_heads, group * rows, head_dim)
            scores = torch.bmm(q, keys_t[:, :, :visible]).view(num_kv_heads, group, rows, visible)
            # Keys before the block are all visible; the block's own ones form a triangle.
            scores[..., prefix_len + first :].add_(triangle[:rows, :rows])
            probs = torch.softmax(scores, dim=-1).view(num_kv_heads, group * rows, visible)
            result = torch.bmm(probs, values[:, :visible])  # [kvh, group * rows, d]
            result = result.view(num_kv_heads, group, rows, head_dim).permute(2, 0, 1, 3)
            out[first:end].view(rows, num_kv_heads, group, head_dim).copy_(result)

    def _triangle(self, size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """[size, size] additive mask, -inf above the diagonal; one per (dtype, device)."""
        tri = self._triangles.get((dtype, device))
        if tri is None or tri.shape[0] < size:
            tri = torch.full((size, size), float("-inf"), dtype=dtype, device=device).triu_(1)
            self._triangles[(dtype, device)] = tri
        return tri

    def _decode(
        self, query: torch.Tensor, kv_cache: torch.Tensor, decode: DecodeBatch, scale: float
    ) -> torch.Tensor:
        _, num_heads, head_dim = query.shape
        _, num_blocks, block_size, num_kv_heads, _ = kv_cache.shape
        group = num_heads // num_kv_heads
        block_numel = block_size * num_kv_heads * head_dim
        # A narrower cache is widened after the gather: size chunks by the wider copy.
        element = max(kv_cache.element_size(), query.element_size())
        chunks = decode.chunks(2 * num_kv_heads * head_dim * element)
        blocks = kv_cache.view(2, num_blocks, block_numel)
        max_blocks = max(c.num_seqs * c.blocks_per_seq for c in chunks)
        workspace = self._get_workspace(2 * max_blocks * block_numel, kv_cache)

        # [B, kvh, group, d]: one decode token's heads that share a kv head act as `group`
        # query rows against it, so SDPA needs no GQA expansion.
        q = query.index_select(0, decode.token_index).view(-1, num_kv_heads, group, head_dim)
        out = torch.empty_like(q)
        for chunk in chunks:
            n = chunk.num_seqs
            gathered = workspace[: 2 * n * chunk.blocks_per_seq * block_numel]
            gathered = gathered.view(2, n * chunk.blocks_per_seq, block_numel)
            torch.index_select(blocks, 1, chunk.block_ids, out=gathered)
            kv = gathered.view(2, n, chunk.blocks_per_seq * block_size, num_kv_heads, head_dim)
            kv = kv.transpose(2, 3).to(q.dtype)  # [2, n, kvh, ctx, d]
            mask = None if chunk.mask is None else chunk.mask.for_dtype(q.dtype)
            out[chunk.start : chunk.end] = F.scaled_dot_product_attention(
                q[chunk.start : chunk.end], kv[0], kv[1], attn_mask=mask, scale=scale
            )
        return out.view(-1, num_heads, head_dim)

    def _get_workspace(self, numel: int, like: torch.Tensor) -> torch.Tensor:
        ws = self._workspace
        if ws is None or ws.numel() < numel or ws.dtype != like.dtype or ws.device != like.device:
            ws = torch.empty(numel, dtype=like.dtype, device=like.device)
            self._workspace = ws
        return ws


def _token_rows_contiguous(x: torch.Tensor) -> bool:
    """[tokens, heads, d] float32 whose heads of one token lie back to back (any token stride)."""
    return x.dtype == torch.float32 and x.stride(2) == 1 and x.stride(1) == x.shape[2]


def _prefill_sdpa(
    query: torch.Tensor,  # [q_len, H, d]
    key: torch.Tensor,  # [context_len, kvh, d]
    value: torch.Tensor,
    chunk: PrefillChunk,
    scale: float,
) -> torch.Tensor:
    gqa = query.shape[1] != key.shape[1]
    q, k, v = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    if chunk.mask is None:  # nothing cached before: plain causal
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    else:
        mask = chunk.mask.for_dtype(q.dtype)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
    return attn.transpose(0, 1)
