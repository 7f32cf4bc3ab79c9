"""Tokens a grammar forces after a sampled one: appended by postprocess, computed as one chunk
in the next step (with the blocks they need, preempting if the cache is short)."""

from __future__ import annotations

from ziggurat_core.engine.config import EngineConfig
from ziggurat_core.engine.sampling_params import SamplingParams
from ziggurat_core.engine.scheduler import Scheduler
from ziggurat_core.engine.scheduler_output import SchedulerOutput
from ziggurat_core.engine.sequence import SequenceState, SequenceStatus

FORCED = [7, 8, 9, 10, 11]


def make_scheduler(num_blocks: int = 16, budget: int = 64) -> Scheduler:
    config = EngineConfig(block_size=4, max_num_seqs=4, max_num_batched_tokens=budget)
    return Scheduler(config, num_blocks=num_blocks, max_model_len=64)


def samples(out: SchedulerOutput) -> dict[int, int]:
    return {item.seq.seq_id: 1 for item in out.scheduled if item.samples}


def test_forced_tokens_are_appended_after_the_sampled_one_and_computed_in_one_chunk() -> None:
    scheduler = make_scheduler()
    seq = SequenceState("r", [1, 2, 3], SamplingParams(max_tokens=20))
    scheduler.add_request("r", [seq])
    checked: list[int] = []

    def check_stop(s: SequenceState) -> SequenceStatus | None:
        checked.append(s.output_token_ids[-1])
        return None

    out = scheduler.schedule()  # the prompt
    grown = scheduler.postprocess(out, samples(out), check_stop, lambda s: list(FORCED))
    assert grown == [seq]
    assert seq.output_token_ids == [1, *FORCED] and checked == [1, *FORCED]
    assert seq.num_uncomputed_tokens == 1 + len(FORCED)

    out = scheduler.schedule()
    (item,) = out.scheduled
    assert (item.num_new_tokens, item.start_position, item.samples) == (6, 3, True)
    # Blocks for every position computed this step (9 tokens: 3 blocks of 4).
    assert len(seq.block_table) == 3
    scheduler.postprocess(out, samples(out), check_stop, lambda s: [])
    assert seq.num_computed_tokens == 9 and seq.output_token_ids[-1] == 1


def test_a_stop_among_forced_tokens_finishes_there() -> None:
    scheduler = make_scheduler()
    seq = SequenceState("r", [1, 2, 3], SamplingParams(max_tokens=20))
    scheduler.add_request("r", [seq])

    def check_stop(s: SequenceState) -> SequenceStatus | None:
        return SequenceStatus.FINISHED_LENGTH if s.num_output_tokens == 3 else None

    out = scheduler.schedule()
    scheduler.postprocess(out, samples(out), check_stop, lambda s: list(FORCED))
    assert seq.output_token_ids == [1, 7, 8]
    assert seq.status is SequenceStatus.FINISHED_LENGTH
    assert scheduler.block_manager.num_free_blocks == 16


def test_a_forced_run_that_needs_blocks_preempts_the_newest_sequence() -> None:
    scheduler = make_scheduler(num_blocks=3)
    old = SequenceState("old", [1, 2, 3], SamplingParams(max_tokens=20))
    new = SequenceState("new", [4, 5, 6], SamplingParams(max_tokens=20))
    scheduler.add_request("old", [old])
    scheduler.add_request("new", [new])
    out = scheduler.schedule()  # both prompts: one block each
    scheduler.postprocess(out, samples(out), None,
                          lambda s: list(FORCED) if s is old else [])
    out = scheduler.schedule()
    # old needs 2 more blocks for its 6 new tokens; only 1 is free, so "new" gives its block up.
    assert [item.seq for item in out.scheduled] == [old]
    assert out.preempted == [new] and new.status is SequenceStatus.WAITING
    assert out.scheduled[0].num_new_tokens == 6
