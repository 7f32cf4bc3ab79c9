"""How much prompt work one step may take beside decoding sequences (stall-free batching). No torch.

A step that carries a chunk of a long prompt next to decoding sequences delays each of their next
tokens by what the chunk costs. While sequences decode, the scheduler therefore caps the prefill
work of a step at `max_prefill_tokens_while_decoding` tokens' worth, as Sarathi-Serve's
stall-free batching does (vLLM's `long_prefill_token_threshold` is a cap of the same kind), and
the long prompt goes on in the following steps.

A count of tokens alone does not bound that cost: each prompt token's attention reads every token
before it, so a chunk late in a long prompt costs several times one of the same size at its start
(the profile is in docs/reliability.md). A chunk that starts at position p is therefore charged
(CONTEXT_TOKENS + p) / CONTEXT_TOKENS per token: one token's worth for its linear layers and the
rest for its attention over the p earlier tokens.
"""

from __future__ import annotations

# The context length at which a prompt token's attention costs about as much as its linear
# layers. It grows with the model's width (the linear layers' cost per token grows faster than
# attention's cost per earlier token), so for models larger than the one it was measured on the
# charge errs on the side of smaller chunks, never of longer steps.
CONTEXT_TOKENS = 1024


def prefill_charge(start_position: int, num_tokens: int) -> float:
    """What a chunk of `num_tokens` prompt tokens starting at `start_position` costs, in tokens
    at the start of a prompt: exact (a multiple of 1 / CONTEXT_TOKENS), not rounded, so that a
    short chunk deep in a prompt is not charged a whole token more than it costs."""
    return _charge_units(start_position, num_tokens) / CONTEXT_TOKENS


def _charge_units(start_position: int, num_tokens: int) -> int:
    """`prefill_charge` in units of 1 / CONTEXT_TOKENS token: integers, so the allowance's
    running balance is exact whatever the constant."""
    return num_tokens * (CONTEXT_TOKENS + start_position)


class PrefillAllowance:
    """The prefill work one step may still take: all it wants (`cap` None), or `cap` tokens'
    worth as `prefill_charge` counts them, shared by the step's prefill chunks in the order
    they ask. `charged`: what the chunks granted so far are charged in all (capped or not)."""

    def __init__(self, cap: int | None) -> None:
        if cap is not None and cap < 1:
            raise ValueError(f"a prefill cap must be >= 1 (or None for none), got {cap}")
        # In units of 1 / CONTEXT_TOKENS token (`_charge_units`); None: no cap.
        self._left = None if cap is None else cap * CONTEXT_TOKENS
        self._granted_any = False
        self._charged = 0

    @property
    def charged(self) -> float:
        return self._charged / CONTEXT_TOKENS

    def grant(self, start_position: int, wanted: int) -> int:
        """How many of the `wanted` tokens of a chunk starting at `start_position` the step may
        compute (charged against what is left; 0: none, stop asking). The step's first chunk
        gets at least one token, so that a prompt always advances however long its context."""
        if wanted < 1:
            raise ValueError(f"a chunk needs at least one token, got {wanted}")
        if self._left is None:
            granted = wanted
        else:
            affordable = self._left // (CONTEXT_TOKENS + start_position)
            granted = min(wanted, affordable)
            if granted == 0 and not self._granted_any:
                granted = 1
        if granted:
            self._granted_any = True
            charge = _charge_units(start_position, granted)
            self._charged += charge
            if self._left is not None:
                self._left = max(0, self._left - charge)
        return granted
