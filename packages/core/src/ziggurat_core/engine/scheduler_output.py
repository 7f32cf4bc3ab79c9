"""What the scheduler hands the engine: a step's schedule, its stats, and the callbacks its
`postprocess` takes. No torch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .block_manager import BlockManagerStats
from .sequence import SequenceState, SequenceStatus


@dataclass(frozen=True)
class ScheduledSequence:
    """`num_new_tokens` of `seq` to compute this step, starting at `start_position`."""

    seq: SequenceState
    num_new_tokens: int
    # Captured when scheduled, so `samples` stays right after postprocess advances the sequence.
    start_position: int = field(init=False)
    samples: bool = field(init=False)  # the chunk reaches the end of token_ids: sample a token

    def __post_init__(self) -> None:
        object.__setattr__(self, "start_position", self.seq.num_computed_tokens)
        object.__setattr__(
            self, "samples", self.seq.num_computed_tokens + self.num_new_tokens == len(self.seq)
        )


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSequence] = field(default_factory=list)
    num_batched_tokens: int = 0
    preempted: list[SequenceState] = field(default_factory=list)
    # Finished with FINISHED_LENGTH by the scheduler: the sequence outgrew the whole KV cache or
    # the context window. The engine must emit their final outputs.
    finished_by_scheduler: list[SequenceState] = field(default_factory=list)
    num_decodes: int = 0  # sequences scheduled by phase 1 (the first num_decodes of `scheduled`)
    # The prompt work the prefill chunks may take (charged tokens: prefill_allowance.py; None:
    # no limit) and what they were charged.
    prefill_allowance: int | None = None
    charged_prefill_tokens: float = 0.0


# Called by `postprocess` after a sequence gained a token: the finished status it must take now,
# or None to keep generating.
StopCheck = Callable[[SequenceState], SequenceStatus | None]
# Called by `postprocess` after a sequence gained its sampled token and goes on: tokens to append
# right after it without sampling (a grammar's forced run); computed in the next step.
ForcedTokens = Callable[[SequenceState], list[int]]


@dataclass(frozen=True)
class SchedulerStats:
    kv: BlockManagerStats
    num_running: int
    num_waiting: int
    num_preemptions: int  # since start
