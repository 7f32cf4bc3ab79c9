"""Llama-family decoder (Llama 2/3, Mistral, SmolLM2, Qwen2) over a flat batch of tokens.

Tokens from many sequences come in one flat batch with no batch dimension; the attention
backend knows which sequence each token belongs to (its per-step metadata). Q/K/V and gate/up
projections are fused into one matmul each; `load_weights` maps the Hugging Face names onto
those fused matrices.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from ..attention.base import AttentionBackend
from ..config import ModelConfig
from ..cpu_kernels import (
    BoundDecoderLayers,
    DecoderLayerParts,
    DecoderShape,
    KernelError,
    decoder_layers_kernel_for,
    load_elementwise_kernels,
)
from ..layers import Embedding, Linear, RMSNorm, RotaryEmbedding, SiluAndMul, apply_rotary
from ..layers.kernels import KernelsOnFirstUse
from ..layers.packed import Int8Weight
from ..loader.errors import CheckpointError
from .materialize import materialize_parameters

if TYPE_CHECKING:
    from ..loader import Checkpoint


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scale = self.head_dim**-0.5
        self.qkv_proj = Linear(
            config.hidden_size, self.q_size + 2 * self.kv_size, bias=config.attention_bias
        )
        self.o_proj = Linear(self.q_size, config.hidden_size, bias=False)
        self._rotary_kernels = KernelsOnFirstUse(load_elementwise_kernels)

    def forward(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_backend: AttentionBackend,
        attn_metadata: Any,
    ) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        qkv = self.qkv_proj(hidden)
        out = attn_backend.forward_fused_qkv(
            qkv, cos, sin, self.num_heads, kv_cache, attn_metadata, self.scale
        )
        if out is None:
            q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
            kernels = self._rotary_kernels
            q = apply_rotary(q.view(num_tokens, self.num_heads, self.head_dim), cos, sin, kernels)
            k = apply_rotary(k.view(num_tokens, self.num_kv_heads, self.head_dim), cos, sin, kernels)
            v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
            out = attn_backend.forward(q, k, v, kv_cache, attn_metadata, self.scale)
        return self.o_proj(out.reshape(num_tokens, self.q_size))


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_up_proj = Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act = SiluAndMul()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(hidden)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_backend: AttentionBackend,
        attn_metadata: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (this layer's MLP output, the residual stream before it); the next layer's
        norm adds the two, which saves one pass over the activations per layer."""
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm.add_and_norm(hidden, residual)
        hidden = self.self_attn(hidden, cos, sin, kv_cache, attn_backend, attn_metadata)
        hidden, residual = self.post_attention_layernorm.add_and_norm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(
            config.head_dim, config.max_position_embeddings, config.rope_theta, config.rope_scaling
        )
        self.config = config
        # Whether a step may run every layer in one C call (`_layer_kernel_step`); tests turn it
        # off to compare with the layer-by-layer path, which computes the same bits.
        self.use_layer_kernel = True
        # (the packed weight it was bound for, the bound layers or None, the most rows it takes)
        self._layer_kernel: tuple[object, BoundDecoderLayers | None, int | None] | None = None

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        attn_backend: AttentionBackend,
        attn_metadata: Any,
    ) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        cos, sin = self.rotary_emb.cos_sin(positions, hidden.dtype)  # once per step, not per layer
        residual: torch.Tensor | None = None
        stepped = self._layer_kernel_step(hidden, cos, sin, kv_caches, attn_backend, attn_metadata)
        if stepped is not None:
            hidden, residual = stepped
        else:
            for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
                hidden, residual = layer(
                    hidden, residual, cos, sin, kv_cache, attn_backend, attn_metadata
                )
        if residual is None:  # a model without layers
            return self.norm(hidden)
        return self.norm.add_and_norm(hidden, residual)[0]

    def _layer_kernel_step(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_caches: list[torch.Tensor],
        attn_backend: AttentionBackend,
        attn_metadata: Any,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(last MLP output, residual) from every layer in one C call where the step runs on
        the CPU kernels end to end (int8 layers, the C paged attention); None otherwise. At one
        sequence the Python around each layer costs as much as the layer's weights take to
        stream, so the step's layers run without it."""
        if not self.use_layer_kernel or hidden.device.type != "cpu" or hidden.dtype != torch.float32:
            return None
        if cos.dtype != torch.float32 or sin.dtype != torch.float32:
            return None
        first = cast(LlamaDecoderLayer, self.layers[0]) if len(self.layers) else None
        key = None if first is None else first.self_attn.qkv_proj.packed
        if self._layer_kernel is None or self._layer_kernel[0] is not key:
            self._layer_kernel = (key, *self._bind_layer_kernel())
        _, bound, max_rows = self._layer_kernel
        if first is None or bound is None or (max_rows is not None and hidden.shape[0] >= max_rows):
            return None
        step = attn_backend.kernel_step_inputs(kv_caches, attn_metadata)
        if step is None:
            return None
        return bound(
            hidden.contiguous(),
            cos.contiguous(),
            sin.contiguous(),
            kv_caches,
            step.slot_mapping,
            step.block_tables,
            step.context_lens,
            step.token_rows,
            first.self_attn.scale,
        )

    def _decoder_layers(self) -> list[LlamaDecoderLayer]:
        return [cast(LlamaDecoderLayer, layer) for layer in self.layers]

    def _bind_layer_kernel(self) -> tuple[BoundDecoderLayers | None, int | None]:
        """The layers bound to the one-call kernel, and the most rows (exclusive) every int8
        layer takes through its fused C path; (None, None) where a layer cannot run there."""
        layers = self._decoder_layers()
        if not layers:
            return None, None
        parts: list[DecoderLayerParts] = []
        max_rows: int | None = None
        for layer in layers:
            attn, mlp = layer.self_attn, layer.mlp
            bound = []
            for linear in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj):
                packed = linear.packed
                if (
                    not isinstance(packed, Int8Weight)
                    or packed.fused is None
                    or packed.out_dtype != torch.float32
                ):
                    return None, None
                if packed.int_mm_min_rows is not None:
                    limit = packed.int_mm_min_rows
                    max_rows = limit if max_rows is None else min(max_rows, limit)
                bound.append(packed.fused)
            norms = (layer.input_layernorm, layer.post_attention_layernorm)
            if any(n.weight.dtype != torch.float32 or n.weight.device.type != "cpu" for n in norms):
                return None, None
            parts.append(
                DecoderLayerParts(
                    layer.input_layernorm.weight.data,
                    layer.input_layernorm.eps,
                    layer.post_attention_layernorm.weight.data,
                    layer.post_attention_layernorm.eps,
                    *bound,
                )
            )
        config = self.config
        shape = DecoderShape(
            config.hidden_size,
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
            config.intermediate_size,
        )
        # The kernel of the library that packed the weights, which may not be the one the
        # environment selects now (a test that forces another variant after loading).
        kernel = decoder_layers_kernel_for(parts[0].qkv)
        try:
            return kernel.bind(parts, shape), max_rows
        except KernelError:
            return None, None


@dataclass(frozen=True)
class _Target:
    """Where one Hugging Face tensor goes: a parameter, or a row range of a fused one."""

    param_name: str
    row_start: int | None = None
    row_end: int | None = None


class LlamaForCausalLM(nn.Module):
    """Parameters are uninitialised until `load_weights` (see `build_model`)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        attn_backend: AttentionBackend,
        attn_metadata: Any,
    ) -> torch.Tensor:
        """input_ids, positions: [num_tokens] -> final hidden states [num_tokens, hidden]."""
        return self.model(input_ids, positions, kv_caches, attn_backend, attn_metadata)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[n, hidden] -> float32 logits [n, vocab]."""
        return self.lm_head(hidden).float()

    # ------------------------------------------------------------------ weights
    def _weight_targets(self) -> dict[str, _Target]:
        """Every Hugging Face tensor name this model needs, and where it goes."""
        config = self.config
        q = config.num_attention_heads * config.head_dim
        kv = config.num_key_value_heads * config.head_dim
        inter = config.intermediate_size
        targets: dict[str, _Target] = {}
        for name, _ in self.named_parameters():  # tied parameters are listed once
            fused = name.rsplit(".", 2)
            if ".self_attn.qkv_proj." in name:
                prefix, _, kind = fused
                targets[f"{prefix}.q_proj.{kind}"] = _Target(name, 0, q)
                targets[f"{prefix}.k_proj.{kind}"] = _Target(name, q, q + kv)
                targets[f"{prefix}.v_proj.{kind}"] = _Target(name, q + kv, q + 2 * kv)
            elif ".mlp.gate_up_proj." in name:
                prefix, _, kind = fused
                targets[f"{prefix}.gate_proj.{kind}"] = _Target(name, 0, inter)
                targets[f"{prefix}.up_proj.{kind}"] = _Target(name, inter, 2 * inter)
            else:
                targets[name] = _Target(name)
        return targets

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy Hugging Face-named tensors into the (fused) parameters.

        Raises CheckpointError for an unknown name, a wrong shape, or a tensor that never came.
        """
        targets = self._weight_targets()
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if name.endswith("rotary_emb.inv_freq"):  # old checkpoints saved the RoPE buffer
                continue
            if name == "lm_head.weight" and self.config.tie_word_embeddings:
                continue  # some tied checkpoints store the shared matrix twice
            target = targets.get(name)
            if target is None:
                raise CheckpointError(f"unexpected tensor {name!r} for a {self.config.architecture} model")
            destination: torch.Tensor = params[target.param_name]
            if target.row_start is not None:
                destination = destination[target.row_start : target.row_end]
            if tensor.shape != destination.shape:
                raise CheckpointError(
                    f"tensor {name!r} has shape {tuple(tensor.shape)}, the model expects {tuple(destination.shape)}"
                )
            destination.copy_(tensor)
            loaded.add(name)
        missing = sorted(set(targets) - loaded)
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise CheckpointError(f"checkpoint lacks {len(missing)} tensor(s): {shown}")


def build_model(
    checkpoint: Checkpoint, device: torch.device | str, dtype: torch.dtype
) -> LlamaForCausalLM:
    """Construct the model for `checkpoint.model_config` on `device` in `dtype` and load weights.

    Built on `meta` (shapes only), then given storage in `dtype` on `device` and filled tensor by
    tensor: peak memory is the model plus one checkpoint tensor, never a float32 model that is
    cast afterwards.
    """
    with torch.device("meta"):
        model = LlamaForCausalLM(checkpoint.model_config)
    materialize_parameters(model, device, dtype)
    model.model.rotary_emb.build_tables(torch.device(device))
    try:
        model.load_weights(checkpoint.weights())
    except CheckpointError as exc:
        raise CheckpointError(f"{checkpoint.path}: {exc}") from exc
    return model.eval()
