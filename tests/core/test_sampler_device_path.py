"""The sampler's top-k/top-p path off the CPU reads nothing back to the host per candidate
width (`_sample_every_width`); it must choose exactly the tokens of the CPU loop, which stops
early. Both run here on CPU tensors."""

from __future__ import annotations

import pytest
import torch
from ziggurat_core.engine import sampler as sampler_module


@pytest.mark.parametrize("vocab_size", [300, 5000, 9000])
@pytest.mark.parametrize("seed", range(4))
def test_every_width_path_picks_the_loops_tokens(vocab_size: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    rows = 24
    # Sharp and flat rows, so nuclei fall inside and outside each candidate width.
    sharpness = torch.tensor([0.5, 2.0, 8.0])[torch.arange(rows) % 3].unsqueeze(1)
    probs = torch.softmax(torch.randn(rows, vocab_size, generator=gen) * sharpness, dim=-1)
    top_k = torch.tensor([vocab_size, 1, 20, 256, 300, 4096, 5000, vocab_size] * 3)
    top_k = top_k.clamp(max=vocab_size)
    top_p = torch.tensor([0.9, 1.0, 0.5, 0.99, 0.3, 0.95, 0.999, 0.7] * 3, dtype=torch.float64)
    uniforms = torch.rand(rows, dtype=torch.float64, generator=gen)

    loop = sampler_module._sample_top_k_top_p(probs, top_k, top_p, uniforms)
    every_width = sampler_module._sample_every_width(probs, top_k, top_p, uniforms)
    assert torch.equal(loop, every_width)
