"""Run as a script: build a generated Llama in bfloat16 on CPU and print, as JSON, the peak
resident memory the build added and the bytes of the model's parameters.

Run under MALLOC_PERTURB_ (glibc fills every allocation with a byte pattern), so memory that
is allocated but never written still counts in the peak: a float32 model allocated and cast
without being filled would otherwise not show. The checkpoint generates each float32 tensor
when asked, as GGUF dequantisation does, so no file pages count either.
"""

from __future__ import annotations

import json
import resource
from collections.abc import Iterator
from pathlib import Path

import torch
from ziggurat_core.engine.config import ModelConfig
from ziggurat_core.engine.loader.checkpoint import Checkpoint
from ziggurat_core.engine.models import LlamaForCausalLM, build_model

CONFIG = ModelConfig(
    architecture="llama",
    vocab_size=4096,
    hidden_size=512,
    intermediate_size=2048,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=8,
    head_dim=64,
    max_position_embeddings=256,
)


class GeneratedCheckpoint(Checkpoint):
    """Hugging Face-named float32 tensors of `CONFIG`'s shapes, made one at a time."""

    format = "safetensors"

    def weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        c = CONFIG
        h, i = c.hidden_size, c.intermediate_size
        yield "model.embed_tokens.weight", torch.randn(c.vocab_size, h)
        for layer in range(c.num_hidden_layers):
            prefix = f"model.layers.{layer}"
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                yield f"{prefix}.self_attn.{name}.weight", torch.randn(h, h)
            yield f"{prefix}.mlp.gate_proj.weight", torch.randn(i, h)
            yield f"{prefix}.mlp.up_proj.weight", torch.randn(i, h)
            yield f"{prefix}.mlp.down_proj.weight", torch.randn(h, i)
            yield f"{prefix}.input_layernorm.weight", torch.ones(h)
            yield f"{prefix}.post_attention_layernorm.weight", torch.ones(h)
        yield "model.norm.weight", torch.ones(h)
        yield "lm_head.weight", torch.randn(c.vocab_size, h)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def main() -> None:
    checkpoint = GeneratedCheckpoint(Path("generated"), CONFIG, torch.float32)
    # The first model built loads what any build needs once (tens of MB, whatever the
    # model's size): done on meta before the measurement starts.
    with torch.device("meta"):
        LlamaForCausalLM(CONFIG)
    before = peak_rss_bytes()
    model = build_model(checkpoint, "cpu", torch.bfloat16)
    added = peak_rss_bytes() - before
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"peak_added_bytes": added, "model_bytes": model_bytes}))


if __name__ == "__main__":
    main()
