"""Engine and model settings. No torch: the server and CLI build these."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any

from pydantic import ByteSize, TypeAdapter, ValidationError


@dataclass
class ModelConfig:
    """Architecture hyper-parameters, read from GGUF metadata or a Hugging Face config.json."""

    architecture: str  # "llama" | "mistral" | "qwen2"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # HF format, e.g. {"rope_type": "llama3", ...}
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v projections carry biases (Qwen2)
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    name: str = "model"
    source_path: str | None = None
    source_format: str | None = None  # "gguf" | "safetensors"

    def num_parameters(self) -> int:
        """Parameter count of the module layout (tied embeddings counted once)."""
        h, i, L = self.hidden_size, self.intermediate_size, self.num_hidden_layers
        q = self.num_attention_heads * self.head_dim
        kv = self.num_key_value_heads * self.head_dim
        attn = h * q + 2 * h * kv + q * h + ((q + 2 * kv) if self.attention_bias else 0)
        mlp = 3 * h * i
        per_layer = attn + mlp + 2 * h
        embed = self.vocab_size * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return L * per_layer + embed + head + h


# A number with a decimal point and no unit, like "0.5": a fraction of memory, not a byte count.
_FRACTION_RE = re.compile(r"^\s*[0-9]*\.[0-9]+\s*$")
_BYTE_SIZE = TypeAdapter(ByteSize)


def parse_memory_size(value: int | float | str) -> int | float:
    """'2GiB' / '512MB' / '4g' / 1073741824 -> bytes (int, parsed by pydantic's ByteSize); a
    float in (0, 1], or such a number written with a decimal point, is a fraction of memory."""
    if isinstance(value, bool):
        raise ValueError(f"invalid memory size: {value!r}")
    if isinstance(value, float) or (isinstance(value, str) and _FRACTION_RE.match(value)):
        fraction = float(value)
        if fraction <= 0.0:
            raise ValueError(f"memory size must be positive, got {value}")
        return fraction if fraction <= 1.0 else int(fraction)  # above 1: a byte count
    try:
        size = int(_BYTE_SIZE.validate_python(value))
    except ValidationError:
        raise ValueError(f"invalid memory size {value!r}: use bytes, e.g. '2GiB', '512MB', or "
                         "a fraction like 0.5") from None
    if size <= 0:
        raise ValueError(f"memory size must be positive, got {value!r}")
    return size


QUANTIZATIONS = ("auto", "none", "int8")
# EngineConfig.max_prefill_tokens_while_decoding left unset, on CPU.
DEFAULT_CPU_PREFILL_TOKENS_WHILE_DECODING = 64
# EngineConfig.max_decode_slowdown left unset, on CPU.
DEFAULT_CPU_MAX_DECODE_SLOWDOWN = 0.25
KV_CACHE_DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass
class EngineConfig:
    model: str = "default"  # "default" (SmolLM2 GGUF), a .gguf file, or a Hugging Face folder
    served_model_name: str | None = None
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    dtype: str = "auto"  # "auto" (float32 on CPU, bfloat16 on CUDA) | "float32" | "float16" | "bfloat16"
    attention_backend: str = "auto"  # "auto" | "torch" | "xformers"
    # Tokens per KV block; None: the engine picks (256 for xformers on CUDA, whose kernels read
    # the paged cache directly only at a multiple of 256, else 16: attention/selector.py).
    block_size: int | None = None
    # KV cache size: bytes (int or "2GiB") or a fraction of device memory (float in (0, 1]).
    kv_cache_memory: int | float | str | None = None
    num_kv_blocks: int | None = None  # exact block count; wins over kv_cache_memory (tests)
    max_model_len: int | None = None  # None: the model's context window
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    enable_chunked_prefill: bool = True
    # While sequences decode, the most prompt work one step takes beside them, in tokens (a
    # chunk late in a long prompt counts for more, its attention reading the context:
    # prefill_allowance.py), so a long prompt cannot stall the running streams for the whole
    # of its prefill. 0: no cap. None: the engine resolves it for its device and use
    # (resolved_prefill_tokens_while_decoding: 64 for a server on CPU, else none). Needs
    # chunked prefill.
    max_prefill_tokens_while_decoding: int | None = None
    # While sequences decode, how much longer than a decode-only step a step that also carries
    # prompt work may take, as a fraction (0.25: at most 1.25 times; a decode-only step of the
    # batch that the decoding sequences make with the prompts about to join): the pacer learns
    # both costs from the steps it ran and sizes each step's prompt work to fit
    # (prefill_pacer.py), within max_prefill_tokens_while_decoding if that is set. 0: no pacing,
    # the cap alone. None: the engine resolves it like the cap (resolved_max_decode_slowdown:
    # 0.25 for a server on CPU, else off).
    max_decode_slowdown: float | None = None
    # On CPU, while other work on the host waits for a CPU (the server's frontend, clients,
    # other processes), run the model with one OpenMP thread fewer and take it back once that
    # work leaves the core idle (adaptive_threads.py): the team's parallel regions otherwise
    # wait for whichever thread lost its core. None: the engine resolves it like the prefill cap
    # (resolved_adaptive_threads: on for a streaming engine on CPU, off offline and on CUDA).
    adaptive_threads: bool | None = None
    enable_prefix_caching: bool = True
    seed: int = 0
    num_threads: int | None = None  # torch CPU threads; None: torch's default
    cpu_weight_prepack: bool = True  # float weights on CPU in oneDNN's blocked layout (faster GEMM)
    # Linear layers' compute on CPU: "int8" (int8 weights and per-token int8 activations, faster
    # GEMMs), "none" (the run dtype), or "auto": int8 when the checkpoint's weights are
    # already quantised (a Q4/Q8/K-quant GGUF, as llama.cpp would run it), else none.
    quantization: str = "auto"
    # Element type of the KV cache: "float32", "float16", "bfloat16", or "auto": float16 when the
    # linear layers run int8 (as llama.cpp's default f16 cache; decode attention reads half the
    # bytes and the cache holds twice the tokens), else the run dtype.
    kv_cache_dtype: str = "auto"
    # On CUDA without kv_cache_memory / num_kv_blocks: the fraction of the device's total
    # memory the whole engine may use (vLLM's meaning); the KV cache gets what the weights and
    # a profiled step at max_num_batched_tokens leave of it (memory_profile.py).
    gpu_memory_utilization: float = 0.9
    # CUDA: decode steps run eagerly instead of as CUDA graphs captured at start-up
    # (vLLM's name; cuda_graphs.py). Graphs are never captured on CPU.
    enforce_eager: bool = False
    # Ranks the model is split across (engine/distributed); 1: one process, no torch.distributed.
    tensor_parallel_size: int = 1
    # Replicas (data parallel, engine/replicas): with more than one, or with a Ray address, each
    # replica is a Ray actor with its own model copy and KV cache; one without an address is
    # today's in-process engine, and Ray is never imported.
    num_replicas: int = 1
    ray_address: str | None = None  # join this Ray cluster; None: start a local Ray instance
    replica_cpus: float = 1.0  # Ray CPUs reserved for each replica
    replica_gpus: float = 0.0  # Ray GPUs reserved for each replica
    # Streamed outputs (AsyncEngine, so the server and each replica) go out every N engine
    # steps, each with the deltas of those steps, instead of after every step: fewer chunks,
    # wake-ups and Ray items for a coarser stream (vLLM's name; stream_interval.py).
    stream_interval: int = 1

    @property
    def resolved_block_size(self) -> int:
        """block_size once the model runner has resolved a None from the attention backend (the
        engine's config holds the resolved value); ValueError before that."""
        if self.block_size is None:
            raise ValueError("block_size is not resolved yet: the model runner picks it from the "
                             "attention backend (attention/selector.default_block_size)")
        return self.block_size

    def resolved_prefill_tokens_while_decoding(self, device_type: str, streaming: bool) -> int:
        """The cap an unset `max_prefill_tokens_while_decoding` takes on `device_type` ("cpu",
        "cuda") for an engine whose outputs stream to waiting clients (`streaming`: the
        server's, a replica's) or not (`LLM`, an `InferenceEngine` driven directly). Only a
        streaming engine on CPU gets one: there a step's cost grows with its prompt tokens from
        the first one, so a whole token budget of prompt beside the decodes stalls the streams
        many decode steps long (docs/reliability.md). Offline, nobody waits between tokens and
        the cap only costs throughput (docs/benchmarks.md); on CUDA a step of a few hundred
        tokens costs little more than a decode step, and a cap would only slow prompts down."""
        if self.max_prefill_tokens_while_decoding is not None:
            return self.max_prefill_tokens_while_decoding
        return DEFAULT_CPU_PREFILL_TOKENS_WHILE_DECODING if streaming and device_type == "cpu" else 0

    def resolved_max_decode_slowdown(self, device_type: str, streaming: bool) -> float:
        """The pacing an unset `max_decode_slowdown` takes, where the cap is on by default and
        for the same reasons (`resolved_prefill_tokens_while_decoding`): on for a streaming
        engine on CPU, off offline and on CUDA."""
        if self.max_decode_slowdown is not None:
            return self.max_decode_slowdown
        return DEFAULT_CPU_MAX_DECODE_SLOWDOWN if streaming and device_type == "cpu" else 0.0

    def resolved_adaptive_threads(self, device_type: str, streaming: bool) -> bool:
        """An unset `adaptive_threads`: on for a streaming engine on CPU, where the streams'
        latency is what crowded cores cost; offline only throughput counts, and a steady team
        serves it best."""
        if self.adaptive_threads is not None:
            return self.adaptive_threads
        return streaming and device_type == "cpu"

    @property
    def uses_ray(self) -> bool:
        return self.num_replicas > 1 or self.ray_address is not None

    def validate(self) -> None:
        if self.block_size is not None and (self.block_size < 1 or self.block_size & (self.block_size - 1)):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        cap = self.max_prefill_tokens_while_decoding
        if cap is not None and cap < 0:
            raise ValueError(f"max_prefill_tokens_while_decoding must be >= 0, got {cap}")
        slowdown = self.max_decode_slowdown
        if slowdown is not None and (isinstance(slowdown, bool) or not isinstance(slowdown, (int, float))
                                     or not math.isfinite(slowdown) or slowdown < 0):
            raise ValueError(f"max_decode_slowdown must be a finite number >= 0 (0: no pacing), "
                             f"got {slowdown!r}")
        if self.adaptive_threads is not None and not isinstance(self.adaptive_threads, bool):
            raise ValueError(f"adaptive_threads must be true, false or None, got {self.adaptive_threads!r}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError(f"num_kv_blocks must be >= 1, got {self.num_kv_blocks}")
        if self.kv_cache_memory is not None:
            parse_memory_size(self.kv_cache_memory)
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {self.quantization!r}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            choices = ", ".join(KV_CACHE_DTYPES)
            raise ValueError(
                f"kv_cache_dtype must be one of {choices}, got {self.kv_cache_dtype!r}"
            )
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if self.tensor_parallel_size > 1 and self.quantization == "int8":
            raise ValueError("quantization='int8' runs with tensor_parallel_size=1 only; "
                             "use quantization='none' or 'auto' (float32 under tensor parallelism)")
        if self.num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {self.num_replicas}")
        if self.replica_cpus < 0 or self.replica_gpus < 0:
            raise ValueError("replica_cpus and replica_gpus must be >= 0, got "
                             f"{self.replica_cpus} and {self.replica_gpus}")
        if self.stream_interval < 1:
            raise ValueError(f"stream_interval must be >= 1, got {self.stream_interval}")
        if self.attention_backend not in ("auto", "torch", "xformers"):
            raise ValueError(f"attention_backend must be auto, torch or xformers, got {self.attention_backend!r}")


def engine_config(config: EngineConfig | None = None, **overrides: Any) -> EngineConfig:
    """`config` (or the defaults) with `overrides` applied, checked. A copy: the caller's config
    stays as they wrote it. An unknown setting is a TypeError naming it."""
    names = {f.name for f in fields(EngineConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown engine setting {unknown[0]!r}")
    resolved = replace(config if config is not None else EngineConfig(), **overrides)
    resolved.validate()
    return resolved
