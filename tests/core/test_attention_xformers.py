"""XFormersAttentionBackend and the backend selector.

xformers kernels need CUDA; on CPU the attention biases it builds are materialised and compared
with the torch backend's dense reference mask for the same step layout.
"""

from __future__ import annotations

import builtins
import importlib.util
import itertools
import math
import random
import subprocess
import sys
from typing import Any

import pytest
import torch
from ziggurat_core.engine.attention import select_attention_backend, xformers_backend
from ziggurat_core.engine.attention.base import StepLayout
from ziggurat_core.engine.attention.torch_backend import PortableAttentionBackend, reference_mask
from ziggurat_core.engine.attention.xformers_backend import (
    XFormersAttentionBackend,
    xformers_unavailable_reason,
)

HAS_XFORMERS = importlib.util.find_spec("xformers") is not None
needs_xformers = pytest.mark.skipif(not HAS_XFORMERS, reason="xformers is not installed")


def gpu_kernels_missing() -> str | None:
    """Why xformers' kernels cannot run here (the engine's own probe, so these tests run
    exactly where the engine would use xformers; gpu_check.py reports the reason too), or None."""
    if not HAS_XFORMERS or not torch.cuda.is_available():
        return "xformers kernels need xformers and a CUDA GPU"
    return xformers_unavailable_reason(torch.device("cuda"), torch.float16)


GPU_KERNELS_MISSING = gpu_kernels_missing()
needs_gpu_kernels = pytest.mark.skipif(GPU_KERNELS_MISSING is not None, reason=str(GPU_KERNELS_MISSING))

CPU = torch.device("cpu")


def make_layout(seqs: list[tuple[int, int]], block_size: int, seed: int = 0) -> StepLayout:
    """(cached prefix, new tokens) per sequence; blocks are shuffled and never shared."""
    rng = random.Random(seed)
    counts = [-(-(p + n) // block_size) for p, n in seqs]
    ids = list(range(sum(counts) + 2))
    rng.shuffle(ids)
    tables = []
    for count in counts:
        tables.append(ids[:count])
        ids = ids[count:]
    return StepLayout([n for _, n in seqs], [p + n for p, n in seqs], tables, block_size)


def bias_as_reference_columns(metadata, layout: StepLayout) -> torch.Tensor:
    """Materialise the xformers bias and pick its key columns in reference_mask's order
    (sequence after sequence, each context in position order)."""
    bias = metadata.attn_bias
    bs = layout.block_size
    rows = layout.num_tokens
    if metadata.kind == "new_tokens":
        return bias.materialize((rows, rows), dtype=torch.float32, device="cpu")
    if metadata.kind == "gathered":
        padded = metadata.padded_context_len
        dense = bias.materialize((rows, padded * len(layout.query_lens)), dtype=torch.float32, device="cpu")
        cols = [i * padded + p for i, ctx in enumerate(layout.context_lens) for p in range(ctx)]
        return dense[:, cols]
    assert metadata.kind == "paged"
    # The kernel reads page j of sequence i from physical block block_tables[i, j]; check the
    # table, then materialise the same bias with logical (unpaged) keys. (Paged `materialize`
    # scatters padding pages of the table too, which the kernel never reads.)
    max_blocks = bias.block_tables.shape[1]
    for i, (table, ctx) in enumerate(zip(layout.block_tables, layout.context_lens, strict=True)):
        needed = -(-ctx // bs)
        assert bias.block_tables[i, :needed].tolist() == table[:needed]
    assert bias.page_size == bs
    row_len = max_blocks * bs
    starts = bias.q_seqinfo.seqstart_py
    unpaged = type(bias)._UNPAGED_TYPE.from_seqlens(
        q_seqlen=[end - start for start, end in itertools.pairwise(starts)],
        kv_padding=row_len,
        kv_seqlen=bias.k_seqinfo.seqlen_py,
        device=CPU,
    )
    dense = unpaged.materialize((rows, row_len * len(layout.query_lens)), dtype=torch.float32, device="cpu")
    cols = [i * row_len + p for i, ctx in enumerate(layout.context_lens) for p in range(ctx)]
    return dense[:, cols]


MIXES = {
    "prefills": [(0, 5), (0, 17), (0, 1), (0, 9)],
    "decodes": [(4, 1), (31, 1), (16, 1), (0, 1)],
    "chunked_prefill": [(16, 9), (5, 20), (0, 7)],
    "mixed": [(7, 1), (0, 12), (20, 1), (16, 5), (3, 1)],
}


@needs_xformers
@pytest.mark.parametrize("mix", sorted(MIXES))
@pytest.mark.parametrize("block_size", [16, 4])
@pytest.mark.parametrize("paged", [True, False])
def test_bias_matches_reference_mask(mix: str, block_size: int, paged: bool) -> None:
    layout = make_layout(MIXES[mix], block_size)
    metadata = XFormersAttentionBackend(paged=paged).prepare(layout, CPU)
    has_prefix = any(p > 0 for p, _ in MIXES[mix])
    expected_kind = ("paged" if paged else "gathered") if has_prefix else "new_tokens"
    assert metadata.kind == expected_kind
    assert torch.equal(bias_as_reference_columns(metadata, layout), reference_mask(layout))


@needs_xformers
def test_slot_mapping_matches_layout() -> None:
    layout = make_layout(MIXES["mixed"], 4)
    metadata = XFormersAttentionBackend().prepare(layout, CPU)
    assert metadata.slot_mapping.tolist() == layout.slot_mapping()


@needs_xformers
@pytest.mark.parametrize(("block_size", "paged"), [(16, False), (256, True), (512, True)])
def test_paged_kernel_only_for_block_sizes_it_supports(block_size: int, paged: bool) -> None:
    assert XFormersAttentionBackend().uses_paged_kernel(block_size) is paged


@needs_xformers
def test_forward_on_cpu_is_refused_and_changes_nothing() -> None:
    layout = make_layout([(3, 1), (0, 4)], 4)
    backend = XFormersAttentionBackend()
    metadata = backend.prepare(layout, CPU)
    cache = torch.zeros(2, 6, 4, 2, 8, dtype=torch.float16)
    q = torch.randn(5, 4, 8, dtype=torch.float16)
    kv = torch.randn(5, 2, 8, dtype=torch.float16)
    with pytest.raises(ValueError, match="CUDA"):
        backend.forward(q, kv, kv, cache, metadata, 0.35)
    assert not cache.any()


def test_missing_xformers_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "xformers.ops", None)  # makes `import xformers.ops` fail
    with pytest.raises(ImportError, match="xformers"):
        XFormersAttentionBackend()


def test_engine_imports_without_xformers() -> None:
    """Importing the attention package and selecting on CPU never imports xformers."""
    code = (
        "import sys, torch\n"
        "from ziggurat_core.engine.attention import select_attention_backend\n"
        "select_attention_backend('auto', torch.device('cpu'), torch.float32)\n"
        "assert not any(m.split('.')[0] == 'xformers' for m in sys.modules), 'xformers imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---- selector ----


def test_auto_on_cpu_selects_torch() -> None:
    assert isinstance(select_attention_backend("auto", CPU, torch.float32), PortableAttentionBackend)
    assert isinstance(select_attention_backend("auto", CPU, torch.bfloat16), PortableAttentionBackend)


def test_torch_is_always_available() -> None:
    backend = select_attention_backend("torch", torch.device("cuda"), torch.float16)
    assert isinstance(backend, PortableAttentionBackend)


def test_unknown_backend_name() -> None:
    with pytest.raises(ValueError, match="unknown attention backend"):
        select_attention_backend("flash", CPU, torch.float32)


def test_xformers_on_cpu_says_why() -> None:
    with pytest.raises(ValueError, match="CUDA device"):
        select_attention_backend("xformers", CPU, torch.float16)


def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend CUDA exists and xformers' kernels run on it (xformers imported first: importing
    it for the first time with CUDA faked would try to initialise CUDA)."""
    if HAS_XFORMERS:
        import xformers.ops  # noqa: F401

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(xformers_backend, "probe_kernels", lambda device, dtype: None)


@needs_xformers
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where CUDA kernels fail")
def test_xformers_with_broken_kernels_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # Here the probe really runs: CPU-only torch cannot make CUDA tensors.
    with pytest.raises(ValueError, match="kernels do not run"):
        select_attention_backend("xformers", torch.device("cuda"), torch.float16)
    backend = select_attention_backend("auto", torch.device("cuda"), torch.float16)
    assert isinstance(backend, PortableAttentionBackend)


def test_xformers_with_float32_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch)
    with pytest.raises(ValueError, match="float16 and bfloat16"):
        select_attention_backend("xformers", torch.device("cuda"), torch.float32)
    # auto falls back instead of failing
    backend = select_attention_backend("auto", torch.device("cuda"), torch.float32)
    assert isinstance(backend, PortableAttentionBackend)


def test_xformers_that_fails_to_import_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """A build for another torch can fail at import with any error (one that finds no CUDA
    asserts): a reason to fall back, not a crash."""
    fake_cuda(monkeypatch)
    real_import = builtins.__import__

    def failing_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("xformers"):
            raise AssertionError("Torch not compiled with CUDA enabled")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing_import)
    with pytest.raises(ValueError, match="does not import here"):
        select_attention_backend("xformers", torch.device("cuda"), torch.float16)
    backend = select_attention_backend("auto", torch.device("cuda"), torch.float16)
    assert isinstance(backend, PortableAttentionBackend)


def test_xformers_not_installed_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch)
    monkeypatch.setitem(sys.modules, "xformers.ops", None)
    with pytest.raises(ValueError, match="not installed"):
        select_attention_backend("xformers", torch.device("cuda"), torch.float16)
    backend = select_attention_backend("auto", torch.device("cuda"), torch.float16)
    assert isinstance(backend, PortableAttentionBackend)


@needs_xformers
@pytest.mark.parametrize("name", ["auto", "xformers"])
def test_xformers_selected_on_cuda_half(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    fake_cuda(monkeypatch)
    backend = select_attention_backend(name, torch.device("cuda"), torch.bfloat16)
    assert isinstance(backend, XFormersAttentionBackend)


# ---- real kernels ----


@needs_gpu_kernels
@pytest.mark.parametrize("mix", sorted(MIXES))
@pytest.mark.parametrize(("block_size", "paged"), [(16, False), (256, True), (256, False)])
@pytest.mark.parametrize(("num_heads", "num_kv_heads"), [(8, 8), (9, 3)])
# bfloat16 is the CUDA default; with GQA (9, 3) it runs xformers' 5-D layout and padded bias.
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float16, 1e-2), (torch.bfloat16, 3e-2)])
def test_forward_matches_torch_backend_on_gpu(
    mix: str, block_size: int, paged: bool, num_heads: int, num_kv_heads: int,
    dtype: torch.dtype, tolerance: float,
) -> None:
    device = torch.device("cuda")
    head_dim = 64
    layout = make_layout(MIXES[mix], block_size)
    num_blocks = max(max(t) for t in layout.block_tables) + 1
    gen = torch.Generator(device=device).manual_seed(0)
    cache = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, device=device, dtype=dtype, generator=gen)
    q = torch.randn(layout.num_tokens, num_heads, head_dim, device=device, dtype=dtype, generator=gen)
    k = torch.randn(layout.num_tokens, num_kv_heads, head_dim, device=device, dtype=dtype, generator=gen)
    v = torch.randn(layout.num_tokens, num_kv_heads, head_dim, device=device, dtype=dtype, generator=gen)
    scale = 1.0 / math.sqrt(head_dim)

    torch_cache = cache.clone()
    torch_backend = PortableAttentionBackend()
    expected = torch_backend.forward(q, k, v, torch_cache, torch_backend.prepare(layout, device), scale)

    xf = XFormersAttentionBackend(paged=paged)
    out = xf.forward(q, k, v, cache, xf.prepare(layout, device), scale)
    # bfloat16 keeps 8 bits of mantissa to float16's 11: the two backends' different summation
    # orders differ by a few of its units.
    torch.testing.assert_close(out, expected, rtol=tolerance, atol=tolerance)
    assert torch.equal(cache, torch_cache)


# ---- the paged path at block size 256, as its kernel would read it (CPU) ----


def attend_as_xformers_kernel(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor,
    metadata: xformers_backend.XFormersAttentionMetadata, scale: float,
) -> torch.Tensor:
    """Attention computed only from what xformers' kernel reads: the cache after the backend's
    write at `slot_mapping`, then (paged) the bias's block tables and page size or (gathered)
    the gathered slots at the bias's key starts, the query starts and key lengths
    (bottom-right causal), GQA heads grouped as in its 5-D layout."""
    bias = metadata.attn_bias
    num_kv_heads, head_dim = kv_cache.shape[3], kv_cache.shape[4]
    group = query.shape[1] // num_kv_heads
    slots = kv_cache.view(2, -1, num_kv_heads, head_dim)
    slots[0].index_copy_(0, metadata.slot_mapping, key)
    slots[1].index_copy_(0, metadata.slot_mapping, value)
    paged = metadata.kind == "paged"
    if paged:
        assert bias.page_size == kv_cache.shape[2]
        assert bias.block_tables.dtype == torch.int32
    else:  # "gathered": each sequence's keys at its padded row of the gathered slots
        assert metadata.kind == "gathered" and metadata.gather_slots is not None
        gathered_k = slots[0].index_select(0, metadata.gather_slots)
        gathered_v = slots[1].index_select(0, metadata.gather_slots)
    out = torch.empty_like(query)
    starts = bias.q_seqinfo.seqstart.tolist()
    for i, (start, end) in enumerate(itertools.pairwise(starts)):
        kv_len = int(bias.k_seqinfo.seqlen[i])
        if paged:
            table = bias.block_tables[i].long()
            k = kv_cache[0].index_select(0, table).reshape(-1, num_kv_heads, head_dim)[:kv_len]
            v = kv_cache[1].index_select(0, table).reshape(-1, num_kv_heads, head_dim)[:kv_len]
        else:
            key_start = int(bias.k_seqinfo.seqstart[i])
            k = gathered_k[key_start : key_start + kv_len]
            v = gathered_v[key_start : key_start + kv_len]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        q_len = end - start
        visible = torch.arange(kv_len)[None, :] <= (kv_len - q_len + torch.arange(q_len))[:, None]
        scores = torch.einsum("qhd,khd->hqk", query[start:end] * scale, k)
        scores = scores.masked_fill(~visible, float("-inf"))
        out[start:end] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)
    return out


PAGED_256_MIXES = {
    "decodes": [(300, 1), (700, 1), (5, 1), (255, 1), (256, 1)],
    "mixed": [(511, 1), (0, 40), (260, 8), (3, 1)],
    "chunked_prefill": [(256, 100), (30, 300)],
}


@needs_xformers
@pytest.mark.parametrize("mix", sorted(PAGED_256_MIXES))
@pytest.mark.parametrize(("num_heads", "num_kv_heads"), [(4, 4), (6, 2)])
def test_paged_inputs_at_block_size_256_attend_like_the_torch_backend(
    mix: str, num_heads: int, num_kv_heads: int
) -> None:
    layout = make_layout(PAGED_256_MIXES[mix], 256, seed=3)
    metadata = XFormersAttentionBackend().prepare(layout, CPU)
    assert metadata.kind == "paged"  # the default at 256: no gather
    head_dim = 16
    num_blocks = max(max(t) for t in layout.block_tables) + 1
    gen = torch.Generator().manual_seed(1)
    cache = torch.randn(2, num_blocks, 256, num_kv_heads, head_dim, generator=gen)
    q = torch.randn(layout.num_tokens, num_heads, head_dim, generator=gen)
    k = torch.randn(layout.num_tokens, num_kv_heads, head_dim, generator=gen)
    v = torch.randn(layout.num_tokens, num_kv_heads, head_dim, generator=gen)
    scale = 1.0 / math.sqrt(head_dim)

    torch_cache = cache.clone()
    reference = PortableAttentionBackend()
    expected = reference.forward(q, k, v, torch_cache, reference.prepare(layout, CPU), scale)
    got = attend_as_xformers_kernel(q, k, v, cache, metadata, scale)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(cache, torch_cache)


@needs_xformers
@pytest.mark.parametrize(("block_size", "kind"), [(256, "paged"), (16, "gathered")])
def test_fixed_shape_decode_inputs_attend_like_the_torch_backend(block_size: int, kind: str) -> None:
    """`prepare_decode` (what a CUDA graph captures) builds the biases from device tensors; with
    two padding rows on a block of their own it attends as the torch backend's step does."""
    contexts = [300, 1, 700, 256, 1, 1]  # the last two: padding rows
    max_blocks = -(-800 // block_size)
    rng = random.Random(4)
    ids = list(range(4 * max_blocks))
    rng.shuffle(ids)
    pad_block = len(ids)
    tables = [ids[i * max_blocks:(i + 1) * max_blocks] for i in range(4)] + [[pad_block] * max_blocks] * 2
    layout = StepLayout([1] * 6, contexts, tables, block_size)
    num_kv_heads, num_heads, head_dim = 2, 6, 16
    gen = torch.Generator().manual_seed(2)
    cache = torch.randn(2, pad_block + 1, block_size, num_kv_heads, head_dim, generator=gen)
    q = torch.randn(6, num_heads, head_dim, generator=gen)
    k = torch.randn(6, num_kv_heads, head_dim, generator=gen)
    v = torch.randn(6, num_kv_heads, head_dim, generator=gen)
    lens = torch.tensor(contexts)

    metadata = XFormersAttentionBackend().prepare_decode(torch.tensor(tables), lens, lens - 1, block_size)
    assert metadata.kind == kind
    torch_cache = cache.clone()
    reference = PortableAttentionBackend()
    expected = reference.forward(q, k, v, torch_cache, reference.prepare(layout, CPU), 0.25)
    got = attend_as_xformers_kernel(q, k, v, cache, metadata, 0.25)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(cache, torch_cache)


@needs_gpu_kernels
@pytest.mark.parametrize("block_size", [256, 16])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fixed_shape_decode_matches_torch_backend_on_gpu(block_size: int, dtype: torch.dtype) -> None:
    device = torch.device("cuda")
    contexts = [300, 1, 700, 256]
    max_blocks = -(-800 // block_size)
    ids = list(range(4 * max_blocks))
    random.Random(5).shuffle(ids)
    tables = [ids[i * max_blocks:(i + 1) * max_blocks] for i in range(4)]
    layout = StepLayout([1] * 4, contexts, tables, block_size)
    gen = torch.Generator(device=device).manual_seed(0)
    cache = torch.randn(2, len(ids), block_size, 3, 64, device=device, dtype=dtype, generator=gen)
    q = torch.randn(4, 9, 64, device=device, dtype=dtype, generator=gen)
    k = torch.randn(4, 3, 64, device=device, dtype=dtype, generator=gen)
    v = torch.randn(4, 3, 64, device=device, dtype=dtype, generator=gen)
    torch_cache = cache.clone()
    reference = PortableAttentionBackend()
    expected = reference.forward(q, k, v, torch_cache, reference.prepare(layout, device), 0.125)
    lens = torch.tensor(contexts, device=device)
    xf = XFormersAttentionBackend()
    metadata = xf.prepare_decode(torch.tensor(tables, device=device), lens, lens - 1, block_size)
    out = xf.forward(q, k, v, cache, metadata, 0.125)
    torch.testing.assert_close(out, expected, rtol=3e-2, atol=3e-2)
    assert torch.equal(cache, torch_cache)
