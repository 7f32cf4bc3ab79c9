"""Owns the model, the KV-cache tensors and the sampler; turns a scheduled step into tokens."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .attention.base import StepLayout
from .attention.selector import default_block_size, select_attention_backend
from .config import KV_CACHE_DTYPES, EngineConfig
from .cpu_kernels import cpu_isa
from .cpu_kernels.cache_memory import zeroed_cache_tensor
from .cuda_graphs import DecodeGraphRunner, decode_graphs_wanted
from .decode_graph_setup import capture_measured, decode_step_over, make_decode_graphs
from .device import dtype_name, host_to_device, resolve_device, resolve_dtype
from .kv_cache_plan import kv_bytes_per_block, plan_kv_cache
from .layers import pack_linears
from .memory_profiler import profile_cuda_memory, profile_query_lens
from .models.llama import build_model
from .quantization import measure_input_absmax, quantize_linears_int8
from .reports import MemoryProfile, ResolvedSettings
from .sampler import Sampler, SampleResult

if TYPE_CHECKING:
    from .loader import Checkpoint
    from .scheduler_output import ScheduledSequence
    from .sequence import SequenceState
    from .structured_output.manager import TokenBitmask

# The grammar bitmask of a step's sampled sequences (row i = sequence i), None if none is
# constrained; called once the forward pass is launched, so on a GPU it runs meanwhile.
TokenMaskFn = Callable[[list["SequenceState"]], "TokenBitmask | None"]

logger = logging.getLogger("ziggurat.engine")

@dataclass
class StepInputs:
    """One step's forward-pass inputs, as plain lists (picklable)."""

    input_ids: list[int]
    positions: list[int]
    query_lens: list[int]
    context_lens: list[int]
    block_tables: list[list[int]]
    sample_rows: list[int]  # flat-batch rows whose logits are sampled


# The CPU kernel variants with an int8 GEMM of their own. Elsewhere an int8 layer would run
# `torch._int_mm`, which is fast only where oneDNN finds AVX-512 VNNI and far slower than a
# float32 matmul without it; the scalar variant's int8 GEMM is the portable reference loop.
INT8_KERNEL_ISAS = ("avx512vnni", "avx2", "neon")


def resolve_quantization(
    setting: str, checkpoint: Checkpoint, device: torch.device, cpu_isa: str | None
) -> str:
    """'auto' -> 'int8' for an already-quantised checkpoint on CPU where the loaded C kernels
    (`cpu_isa`, their variant; None without them) have an int8 GEMM, else 'none', so auto never
    picks a path slower than float32. int8 runs on CPU only (`torch._int_mm` with per-token
    scales is not the fast path on CUDA)."""
    if setting == "auto":
        if device.type != "cpu" or not checkpoint.weights_quantized:
            return "none"
        if cpu_isa in INT8_KERNEL_ISAS:
            return "int8"
        why = (
            "the C kernels are not loaded (ZIGGURAT_CPU_KERNELS=0, no C compiler or a failed "
            "build: see above)"
            if cpu_isa is None
            else f"the {cpu_isa} kernel variant has no fast int8 GEMM"
        )
        logger.warning(
            "quantization=auto runs the linear layers in float32, not int8: %s, and int8 "
            "would be slower than float32 here",
            why,
        )
        return "none"
    if setting == "int8" and device.type != "cpu":
        raise ValueError(f"quantization='int8' runs on CPU only, the device is {device}")
    return setting


_KV_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_kv_cache_dtype(setting: str, quantization: str, dtype: torch.dtype) -> torch.dtype:
    """'auto' -> float16 when the linear layers run int8 (a quantised checkpoint on CPU, where
    llama.cpp's default cache is f16 too), else the run dtype `dtype`; other settings name the
    dtype. `quantization` is the resolved one ('int8' or 'none')."""
    if setting == "auto":
        return torch.float16 if quantization == "int8" else dtype
    if setting not in _KV_DTYPES:
        choices = ", ".join(KV_CACHE_DTYPES)
        raise ValueError(f"kv_cache_dtype must be one of {choices}, got {setting!r}")
    return _KV_DTYPES[setting]


def zeroed_tensor(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """torch.zeros, but on CPU from memory whose pages the OS zeroes on first touch (huge pages
    where Linux has them, `cpu_kernels/cache_memory.py`): writing zeros into a large KV cache up
    front was a large share of the model load (figures in docs/benchmarks.md). (Zeros matter:
    padded slots are read and masked, and 0 * NaN from stale memory would poison the result.)"""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    return zeroed_cache_tensor(shape, dtype)


class ModelRunner:
    """`calibration_token_ids`: text run once through the float model before int8 packing to
    measure input ranges (see `quantization.py`); without it int8 packs without smoothing.
    `parallelize`: run on the loaded model before anything else (tensor-parallel sharding).
    `static_decode`: decode steps over static buffers padded to the captured batch sizes,
    captured as CUDA graphs on CUDA and run eagerly elsewhere (cuda_graphs.py); None: on CUDA
    unless `config.enforce_eager` (the CPU tests pass True)."""

    def __init__(
        self,
        config: EngineConfig,
        checkpoint: Checkpoint,
        max_model_len: int,
        calibration_token_ids: list[int] | None = None,
        parallelize: Callable[[torch.nn.Module], None] | None = None,
        static_decode: bool | None = None,
    ) -> None:
        self.config = config
        self.model_config = checkpoint.model_config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        if config.num_threads is not None and self.device.type == "cpu":
            torch.set_num_threads(config.num_threads)
        # Built now on CPU (first use compiles them), never on CUDA, where no CPU kernel runs.
        # Raises CpuIsaError for a ZIGGURAT_CPU_ISA this CPU cannot run.
        self.cpu_isa = cpu_isa() if self.device.type == "cpu" else None
        # Resolved before anything is built: the KV cache dtype depends on the quantisation.
        self.quantization = resolve_quantization(
            config.quantization, checkpoint, self.device, self.cpu_isa
        )
        self.kv_cache_dtype = resolve_kv_cache_dtype(
            config.kv_cache_dtype, self.quantization, self.dtype
        )
        backend = config.attention_backend
        if self.kv_cache_dtype != self.dtype:
            # Only the torch backend converts between the cache and the run dtype.
            if backend == "xformers":
                raise ValueError(
                    "attention_backend='xformers' needs the KV cache in the run dtype "
                    f"{self.dtype}, kv_cache_dtype resolved to {self.kv_cache_dtype}; use "
                    "attention_backend='torch' or kv_cache_dtype='auto'"
                )
            if backend == "auto":
                backend = "torch"
        torch.manual_seed(config.seed)
        started = time.perf_counter()
        self.model = build_model(checkpoint, self.device, self.dtype)
        if parallelize is not None:  # tensor parallelism: this rank's shard (engine/distributed)
            parallelize(self.model)
        self.attention = select_attention_backend(backend, self.device, self.dtype)
        if config.block_size is None:
            # Resolved here, where the backend is known; the engine's scheduler takes it from
            # `kv_spec.block_size`, so runner and block manager always agree.
            config = dataclasses.replace(config, block_size=default_block_size(self.attention.name))
            self.config = config
        if static_decode is None:
            static_decode = decode_graphs_wanted(
                self.device, config.enforce_eager, config.tensor_parallel_size
            )
        self.memory_profile = self._profile_memory(
            max_model_len, graphs=static_decode and self.device.type == "cuda"
        )
        self.kv_spec = plan_kv_cache(
            config, self.model_config, self.device, self.kv_cache_dtype, max_model_len,
            self.memory_profile, reserved_blocks=int(static_decode),
        )
        # Static decode pads batches with rows whose every block is one more block at the end
        # of the cache, which the scheduler never hands out.
        self.kv_caches = self._make_kv_caches(self.kv_spec.num_blocks + int(static_decode))
        mc = self.model_config
        # The calibration pass runs through the attention layers, so the cache exists first.
        if self.quantization == "int8":
            ids = (calibration_token_ids or [])[: min(max_model_len, self.kv_spec.num_slots)]
            absmax = measure_input_absmax(self.model, lambda: self._prefill_only(ids)) if ids else None
            quantize_linears_int8(self.model, absmax)
        elif self.device.type == "cpu" and config.cpu_weight_prepack:
            pack_linears(self.model, "onednn")
        self.load_seconds = time.perf_counter() - started
        self.sampler = Sampler(mc.vocab_size, self.device, seed=config.seed)
        self.decode_graphs = self._capture_decode_graphs(max_model_len) if static_decode else None
        kernels = ""
        if self.device.type == "cpu":
            kernels = f", cpu kernels: {self.cpu_isa or 'none, torch ops'}"
        logger.info(
            "model loaded in %.2fs on %s (%s, linear layers: %s%s), attention=%s, "
            "kv cache %d blocks of %s (%.1f MiB)",
            self.load_seconds, self.device, self.dtype, self.quantization, kernels,
            self.attention.name,
            self.kv_spec.num_blocks, str(self.kv_cache_dtype).removeprefix("torch."),
            self.kv_spec.total_bytes / 2**20,
        )

    def _capture_decode_graphs(self, max_model_len: int) -> DecodeGraphRunner | None:
        """The static decode runner over the KV cache; on CUDA with what its graphs took
        recorded in the memory profile (decode_graph_setup.py)."""
        def make() -> DecodeGraphRunner | None:
            return self._make_decode_graphs(self.kv_caches, max_model_len)

        if self.memory_profile is None or self.device.type != "cuda":
            return make()
        graphs, self.memory_profile = capture_measured(make, self.memory_profile, self.device)
        return graphs

    def _make_decode_graphs(
        self, kv_caches: list[torch.Tensor], max_model_len: int, quiet: bool = False
    ) -> DecodeGraphRunner | None:
        """The static decode runner over `kv_caches`, whose last block is the padding block."""
        bs = self.config.resolved_block_size
        return make_decode_graphs(
            decode_step_over(self.model, self.attention, bs, kv_caches), self.config.max_num_seqs,
            max_model_len, bs, pad_block=kv_caches[0].shape[1] - 1, device=self.device, quiet=quiet,
        )

    def _make_kv_caches(self, num_blocks: int) -> list[torch.Tensor]:
        mc = self.model_config
        shape = (2, num_blocks, self.config.resolved_block_size, mc.num_key_value_heads, mc.head_dim)
        return [
            zeroed_tensor(shape, self.kv_cache_dtype, self.device) for _ in range(mc.num_hidden_layers)
        ]

    def _profile_memory(self, max_model_len: int, graphs: bool) -> MemoryProfile | None:
        """On CUDA with no cache size given: the KV cache's share from a profiled dummy step
        at max_num_batched_tokens and, where `graphs`, a capture of the decode graphs
        (memory_profiler.py); None elsewhere."""
        config = self.config
        if self.device.type != "cuda" or config.num_kv_blocks is not None or config.kv_cache_memory is not None:
            return None
        query_lens = profile_query_lens(config.max_num_batched_tokens, config.max_num_seqs, max_model_len)
        profile = profile_cuda_memory(
            self.model, self.attention, self.device, query_lens, config.resolved_block_size,
            self._make_kv_caches,
            gpu_memory_utilization=config.gpu_memory_utilization,
            bytes_per_block=kv_bytes_per_block(
                self.model_config, config.resolved_block_size, self.kv_cache_dtype
            ),
            capture_graphs=(
                (lambda caches: self._make_decode_graphs(caches, max_model_len, quiet=True))
                if graphs else None
            ),
        )
        gib = 2**30
        logger.info(
            "memory profile of %s: %.2f GiB total x gpu_memory_utilization %.2f; weights "
            "%.2f GiB, peak of a %d-token step %.2f GiB, outside torch %.2f GiB, decode CUDA "
            "graphs %.3f GiB, headroom %.3f GiB -> KV cache %.2f GiB (%d blocks)",
            self.device, profile.total_bytes / gib, profile.gpu_memory_utilization,
            profile.weights_bytes / gib, sum(query_lens), profile.peak_activation_bytes / gib,
            profile.non_torch_bytes / gib, profile.cuda_graph_bytes / gib,
            profile.headroom_bytes / gib, profile.kv_cache_bytes / gib, profile.num_kv_blocks,
        )
        return profile

    @torch.inference_mode()
    def resolved_settings(self) -> ResolvedSettings:
        return ResolvedSettings(
            engine_device=str(self.device),
            dtype=dtype_name(self.dtype),
            attention_backend=self.attention.name,
            quantization=self.quantization,
            kv_cache_dtype=dtype_name(self.kv_cache_dtype),
            cpu_isa=self.cpu_isa,
            memory_profile=self.memory_profile,
        )

    @property
    def cpu_threads(self) -> int | None:
        """The OpenMP threads this thread's parallel regions run with; None on CUDA."""
        return torch.get_num_threads() if self.device.type == "cpu" else None

    def set_cpu_threads(self, threads: int) -> None:
        """Run the next steps with `threads` OpenMP threads (from the thread that steps: the
        count is that thread's own)."""
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)

    def close(self) -> None:
        """Give the device memory back: the decode graphs and the KV cache go, and on CUDA the
        allocator's cache with them, so a process can load another engine after closing one
        (TensorParallelRunner stops its ranks here). The runner runs no step after this."""
        self.decode_graphs = None
        self.kv_caches = []
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _prefill_only(self, token_ids: list[int]) -> None:
        """One sequence's forward pass from the first cache slots, logits for every position,
        nothing sampled; the cache contents it leaves are never read (no block is allocated yet)."""
        n, bs = len(token_ids), self.config.resolved_block_size
        layout = StepLayout([n], [n], [list(range(-(-n // bs)))], bs)
        metadata = self.attention.prepare(layout, self.device)
        ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)
        hidden = self.model(ids, torch.arange(n, device=self.device), self.kv_caches, self.attention, metadata)
        self.model.compute_logits(hidden)  # the vocabulary head's inputs are calibrated too

    def prepare_step(
        self, scheduled: list[ScheduledSequence]
    ) -> tuple[StepInputs, list[SequenceState]]:
        """The forward pass's inputs for the scheduled chunks (plain lists, so tensor-parallel
        rank 0 can send them to the other ranks), and the sequences sampled after it."""
        inputs = StepInputs([], [], [], [], [], [])
        sample_seqs = []
        offset = 0
        for item in scheduled:
            seq, start = item.seq, item.seq.num_computed_tokens
            end = start + item.num_new_tokens
            inputs.input_ids.extend(seq.token_ids[start:end])
            inputs.positions.extend(range(start, end))
            inputs.query_lens.append(item.num_new_tokens)
            inputs.context_lens.append(end)
            inputs.block_tables.append(seq.block_table)
            offset += item.num_new_tokens
            if end == len(seq.token_ids):
                inputs.sample_rows.append(offset - 1)
                sample_seqs.append(seq)
        return inputs, sample_seqs

    @torch.inference_mode()
    def forward_step(self, inputs: StepInputs) -> torch.Tensor | None:
        """The logits of the step's sampled rows; None if it samples nothing."""
        # A decode step: one new token per sequence, every one sampled.
        if self.decode_graphs is not None and 0 < len(inputs.sample_rows) == len(inputs.input_ids):
            logits = self.decode_graphs.run(inputs.input_ids, inputs.positions, inputs.block_tables)
            if logits is not None:
                return logits
        layout = StepLayout(
            inputs.query_lens, inputs.context_lens, inputs.block_tables, self.config.resolved_block_size
        )
        metadata = self.attention.prepare(layout, self.device)
        # On CUDA through pinned memory, copied asynchronously: the step never waits for the
        # device before the sampler reads its tokens.
        ids = host_to_device(inputs.input_ids, torch.long, self.device)
        pos = host_to_device(inputs.positions, torch.long, self.device)
        hidden = self.model(ids, pos, self.kv_caches, self.attention, metadata)
        if not inputs.sample_rows:
            return None
        rows = host_to_device(inputs.sample_rows, torch.long, self.device)
        return self.model.compute_logits(hidden.index_select(0, rows))

    @torch.inference_mode()
    def sample(
        self,
        logits: torch.Tensor,
        sample_seqs: list[SequenceState],
        eos_token_ids: list[int],
        token_mask: TokenMaskFn | None = None,
    ) -> dict[int, SampleResult]:
        mask = token_mask(sample_seqs) if token_mask is not None else None
        if mask is not None:
            from .structured_output.bitmask import apply_token_bitmask

            apply_token_bitmask(logits, mask)
        results = self.sampler(logits, sample_seqs, eos_token_ids)
        return {seq.seq_id: result for seq, result in zip(sample_seqs, results, strict=True)}

    def execute(
        self,
        scheduled: list[ScheduledSequence],
        eos_token_ids: list[int],
        token_mask: TokenMaskFn | None = None,
    ) -> dict[int, SampleResult]:
        """Run one forward pass over the scheduled chunks; sample where a chunk ends a sequence,
        from the tokens `token_mask` allows (structured output)."""
        inputs, sample_seqs = self.prepare_step(scheduled)
        logits = self.forward_step(inputs)
        if logits is None:
            return {}
        return self.sample(logits, sample_seqs, eos_token_ids, token_mask)
