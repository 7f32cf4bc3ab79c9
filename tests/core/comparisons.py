"""Prompts and distribution comparisons shared by the engine tests."""

from __future__ import annotations

import random

import torch


def shared_prefix_prompts(vocab: int, seed: int = 3) -> list[list[int]]:
    """Eight token-id prompts of mixed length; half share a 20-token prefix, so prefix caching
    has something to hit."""
    rng = random.Random(seed)
    shared = [rng.randrange(3, vocab) for _ in range(20)]
    prompts = []
    for i in range(8):
        own = [rng.randrange(3, vocab) for _ in range(rng.randint(1, 25))]
        prompts.append(shared + own if i % 2 == 0 else own)
    return prompts


def kl_and_top1(reference: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    """(mean KL(reference || other) over positions, fraction of positions with the same argmax)."""
    log_p = torch.log_softmax(reference.double(), dim=-1)
    log_q = torch.log_softmax(other.double(), dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    top1 = (reference.argmax(dim=-1) == other.argmax(dim=-1)).double().mean()
    return float(kl.mean()), float(top1)
