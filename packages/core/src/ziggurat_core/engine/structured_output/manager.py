"""The grammar side of constrained decoding: one llguidance matcher per constrained sequence.
No torch (the bitmask is a numpy array; `bitmask.py` applies it to the logits).

The manager is the one owner of matcher state, keyed by seq id: the engine starts matchers when
a request is admitted, asks for the step's bitmask, feeds each token the sequence gains, and
releases the request's matchers when it finishes or is aborted. Unconstrained requests never
reach it: with no live matcher a step costs one dict check, and the tokenizer llguidance needs
is built on the first constrained request, not before.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from llguidance import LLExecutor, LLMatcher, LLTokenizer
from llguidance.numpy import (
    allocate_token_bitmask,
    fill_next_token_bitmask,
    fill_next_token_bitmask_par,
)

from ..sampling_params import StructuredOutputsParams
from ..sequence import SequenceState
from ..tokenizer import Tokenizer
from .compiler import GrammarCompiler
from .ll_tokenizer import build_ll_tokenizer

logger = logging.getLogger("ziggurat.engine")


class GrammarState(enum.Enum):
    OPEN = "open"  # the grammar allows more tokens
    COMPLETE = "complete"  # the grammar is finished: the sequence stops ("stop")
    ERROR = "error"  # the matcher rejected a token; cannot happen for a masked sample


@dataclass(frozen=True)
class TokenBitmask:
    """Allowed tokens of the constrained rows of a step: bit t of `bits[i]` (little-endian
    int32 words) allows token t in row `rows[i]` of the step's sampled logits."""

    bits: np.ndarray  # [len(rows), ceil(vocab / 32)] int32
    rows: list[int]


class StructuredOutputManager:
    def __init__(self, tokenizer: Tokenizer, logits_width: int, eos_token_ids: Sequence[int]) -> None:
        self._tokenizer = tokenizer
        self._logits_width = logits_width
        self._eos_token_ids = list(eos_token_ids)
        self._ll_tokenizer: LLTokenizer | None = None
        self._compiler: GrammarCompiler | None = None
        self._executor: LLExecutor | None = None
        self._bitmask: np.ndarray | None = None  # reused across steps, grown as needed
        self._matchers: dict[int, LLMatcher] = {}

    # ------------------------------------------------------------------ admission
    def compile(self, spec: StructuredOutputsParams, param: str = "structured_outputs") -> LLMatcher:
        """A matcher at the start of `spec`'s grammar. Raises GrammarCompileError; call before
        anything is allocated for the request."""
        return self._grammar_compiler().compile(spec, param)

    def start(self, seqs: Sequence[SequenceState], matcher: LLMatcher) -> None:
        """Give each sequence its own matcher, all at `matcher`'s state (the first takes it)."""
        for i, seq in enumerate(seqs):
            self._matchers[seq.seq_id] = matcher if i == 0 else matcher.deep_copy()

    def release(self, seq_ids: Iterable[int]) -> None:
        for seq_id in seq_ids:
            self._matchers.pop(seq_id, None)

    @property
    def num_live(self) -> int:
        return len(self._matchers)

    @property
    def compiler(self) -> GrammarCompiler | None:
        """The grammar cache; None until the first constrained request."""
        return self._compiler

    # ------------------------------------------------------------------ the step
    def fill_bitmask(self, seqs: Sequence[SequenceState]) -> TokenBitmask | None:
        """The bitmask for the constrained ones of `seqs` (the rows sampled this step, in
        order); None when no row is constrained."""
        if not self._matchers:
            return None
        rows = [row for row, seq in enumerate(seqs) if seq.seq_id in self._matchers]
        if not rows:
            return None
        bits = self._bitmask_buffer(len(rows))
        matchers = [self._matchers[seqs[row].seq_id] for row in rows]
        if len(matchers) == 1:
            fill_next_token_bitmask(matchers[0], bits, 0)
        else:
            fill_next_token_bitmask_par(self._ll_executor(), [(m, i) for i, m in enumerate(matchers)], bits)
        for i, row in enumerate(rows):
            params = seqs[row].sampling_params
            if params.ignore_eos or seqs[row].num_output_tokens < params.min_tokens:
                self._forbid_eos(bits[i])
        return TokenBitmask(bits, rows)

    def accept(self, seq: SequenceState, token_id: int) -> GrammarState | None:
        """Advance `seq`'s matcher past the token it just gained. None: not constrained."""
        matcher = self._matchers.get(seq.seq_id)
        if matcher is None:
            return None
        if not matcher.consume_token(token_id):
            logger.error("request %s: the grammar rejected token %d: %s",
                         seq.request_id, token_id, matcher.get_error())
            return GrammarState.ERROR
        return GrammarState.COMPLETE if matcher.is_stopped() else GrammarState.OPEN

    def forced_tokens(self, seq: SequenceState, limit: int) -> list[int]:
        """Up to `limit` tokens the grammar forces next (the only continuation it allows), to be
        appended without sampling; they are the grammar's own tokenisation of the forced text."""
        matcher = self._matchers.get(seq.seq_id)
        if matcher is None or limit <= 0 or matcher.is_stopped():
            return []
        tokens: list[int] = matcher.compute_ff_tokens()
        return tokens[:limit]

    def captures(self, seq: SequenceState) -> list[tuple[str, str]] | None:
        """The grammar's named captures so far, as text; None: not constrained."""
        matcher = self._matchers.get(seq.seq_id)
        if matcher is None:
            return None
        return [(name, value.decode("utf-8", errors="replace")) for name, value in matcher.get_captures()]

    # ------------------------------------------------------------------ helpers
    def _grammar_compiler(self) -> GrammarCompiler:
        if self._compiler is None:
            self._ll_tokenizer = build_ll_tokenizer(self._tokenizer, self._logits_width, self._eos_token_ids)
            self._compiler = GrammarCompiler(self._ll_tokenizer)
        return self._compiler

    def _ll_executor(self) -> LLExecutor:
        if self._executor is None:
            self._executor = LLExecutor()
        return self._executor

    def _bitmask_buffer(self, num_rows: int) -> np.ndarray:
        assert self._ll_tokenizer is not None  # a live matcher means a compiled grammar
        if self._bitmask is None or self._bitmask.shape[0] < num_rows:
            self._bitmask = allocate_token_bitmask(max(num_rows, 8), self._ll_tokenizer.vocab_size)
        # A prefix of rows of a C-contiguous array is contiguous; every word is overwritten.
        return self._bitmask[:num_rows]

    def _forbid_eos(self, row: np.ndarray) -> None:
        """Clear the EOS bits (ignore_eos, or min_tokens not reached yet) unless EOS is all the
        grammar allows: the grammar wins, so a finished grammar still ends the sequence."""
        kept = row.copy()
        for token_id in self._eos_token_ids:
            word, bit = divmod(token_id, 32)
            if word < kept.shape[0]:
                kept[word] &= ~np.int32(1 << bit) if bit < 31 else np.int32(0x7FFFFFFF)
        if kept.any():
            row[:] = kept

