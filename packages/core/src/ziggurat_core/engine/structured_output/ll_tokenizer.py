"""llguidance's view of the model's vocabulary. No torch, no transformers."""

from __future__ import annotations

from collections.abc import Sequence

from llguidance import LLTokenizer

from ..tokenizer import Tokenizer


def build_ll_tokenizer(tokenizer: Tokenizer, logits_width: int, eos_token_ids: Sequence[int]) -> LLTokenizer:
    """An LLTokenizer from the tokenizer.json text of our own tokenizer (HF folder or rebuilt
    from a GGUF).

    Its vocabulary is as wide as the model's logits when those are wider than the tokenizer
    (padding rows then stand for no bytes, so a grammar never allows them); `eos_token_ids` are
    the ids the grammar allows where it accepts. Building it takes a noticeable time for a large
    vocabulary: build once per engine, on first use."""
    n_vocab = max(logits_width, tokenizer.vocab_size)
    return LLTokenizer(tokenizer.to_json(), n_vocab=n_vocab, eos_token=list(eos_token_ids))
