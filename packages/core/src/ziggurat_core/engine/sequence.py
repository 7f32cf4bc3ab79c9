"""A sequence (one sample of a request) as the scheduler and block manager see it. No torch."""

from __future__ import annotations

import enum
import itertools
from typing import Any

from .sampling_params import SamplingParams

_seq_counter = itertools.count()


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED_STOPPED = "finished_stopped"
    FINISHED_LENGTH = "finished_length"
    FINISHED_ABORTED = "finished_aborted"

    @property
    def finished(self) -> bool:
        return self in (
            SequenceStatus.FINISHED_STOPPED,
            SequenceStatus.FINISHED_LENGTH,
            SequenceStatus.FINISHED_ABORTED,
        )

    @property
    def finish_reason(self) -> str | None:
        return {
            SequenceStatus.FINISHED_STOPPED: "stop",
            SequenceStatus.FINISHED_LENGTH: "length",
            SequenceStatus.FINISHED_ABORTED: "abort",
        }.get(self)


class SequenceState:
    """Token ids, KV-cache bookkeeping and status of one generated sample.

    Owned by the scheduler: only it appends tokens, changes the status and frees the blocks.
    Invariant: the KV of `token_ids[:num_computed_tokens]` is in the cache. A step computes
    `token_ids[num_computed_tokens : num_computed_tokens + n]`; when that reaches the end of
    `token_ids` the step also samples the next token.
    """

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        index: int = 0,
        arrival_time: float = 0.0,
    ) -> None:
        self.seq_id: int = next(_seq_counter)
        self.request_id = request_id
        self.index = index  # sample number within its request, 0..n-1
        self.sampling_params = sampling_params
        self.arrival_time = arrival_time
        self.prompt_token_ids: list[int] = list(prompt_token_ids)
        self.output_token_ids: list[int] = []
        self.token_ids: list[int] = list(prompt_token_ids)  # prompt + output, kept in step
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache
        self.block_table: list[int] = []
        self.status = SequenceStatus.WAITING
        # Per-sequence sampler state (e.g. a seeded torch.Generator), owned by the sampler.
        self.sampler_state: Any = None

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    def append_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.token_ids.append(token_id)

    def reset_for_recompute(self) -> None:
        """Preemption by recompute: the KV is dropped, generated tokens are kept and refed."""
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0
        self.block_table = []
        self.status = SequenceStatus.WAITING

    def __repr__(self) -> str:
        return (
            f"SequenceState(id={self.seq_id}, req={self.request_id!r}, idx={self.index}, "
            f"len={len(self)}, computed={self.num_computed_tokens}, status={self.status.value})"
        )
