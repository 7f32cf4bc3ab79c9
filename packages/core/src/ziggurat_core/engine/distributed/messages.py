"""What rank 0 sends the other ranks each step (pickled through broadcast_object_list)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..model_runner import StepInputs


@dataclass
class Step:
    inputs: StepInputs
    seq_ids: list[int]  # the sequence of each block table in `inputs`
    released: list[int] = field(default_factory=list)  # sequences whose blocks were freed


@dataclass
class QueryState:
    """Ask every rank for its RankState (after applying `released`)."""

    released: list[int] = field(default_factory=list)


@dataclass
class Stop:
    pass


Command = Step | QueryState | Stop


@dataclass(frozen=True)
class RankState:
    """A rank's view of the KV cache it holds: the blocks of the sequences it was told of."""

    rank: int
    num_sequences: int
    num_blocks_held: int
