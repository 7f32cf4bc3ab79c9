"""Scheduler tests: unit tests for each policy, then a hypothesis-driven simulated engine loop."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ziggurat_core.engine.config import EngineConfig
from ziggurat_core.engine.errors import (
    DuplicateRequestError,
    PromptTooLongError,
    RequestValidationError,
)
from ziggurat_core.engine.prefill_allowance import prefill_charge
from ziggurat_core.engine.sampling_params import SamplingParams
from ziggurat_core.engine.scheduler import Scheduler
from ziggurat_core.engine.scheduler_output import SchedulerOutput
from ziggurat_core.engine.sequence import SequenceState, SequenceStatus


def make_config(
    block_size: int = 4,
    max_num_seqs: int = 8,
    max_num_batched_tokens: int = 64,
    chunked: bool = True,
    prefix_caching: bool = True,
    prefill_cap: int | None = None,
    decode_slowdown: float | None = None,
) -> EngineConfig:
    return EngineConfig(
        block_size=block_size,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        enable_chunked_prefill=chunked,
        enable_prefix_caching=prefix_caching,
        max_prefill_tokens_while_decoding=prefill_cap,
        max_decode_slowdown=decode_slowdown,
    )


def make_request(request_id: str, prompt: list[int], n: int = 1, max_tokens: int = 4) -> list[SequenceState]:
    params = SamplingParams(n=n, max_tokens=max_tokens)
    return [SequenceState(request_id, prompt, params, index=i) for i in range(n)]


def fake_token(seq_id: int, position: int) -> int:
    """The 'model': a token determined by the sequence and the position it is sampled for."""
    return (seq_id * 7919 + position * 31) % 5


def stop_at_max_tokens(seq: SequenceState) -> SequenceStatus | None:
    max_tokens = seq.sampling_params.max_tokens
    if max_tokens is not None and seq.num_output_tokens >= max_tokens:
        return SequenceStatus.FINISHED_LENGTH
    return None


def fake_samples(out: SchedulerOutput) -> dict[int, int]:
    """The 'model' samples a token for every chunk that reaches the end of its sequence."""
    return {item.seq.seq_id: fake_token(item.seq.seq_id, len(item.seq))
            for item in out.scheduled if item.samples}


def run_step(scheduler: Scheduler) -> SchedulerOutput:
    """One engine step: schedule, 'compute', sample, finish sequences at max_tokens."""
    out = scheduler.schedule()
    scheduler.postprocess(out, fake_samples(out), stop_at_max_tokens)
    return out


def run_until_done(scheduler: Scheduler, max_steps: int = 200) -> list[SchedulerOutput]:
    """Step until nothing is left; a bounded loop, so a livelock fails instead of hanging."""
    outputs: list[SchedulerOutput] = []
    for _ in range(max_steps):
        if not scheduler.has_unfinished():
            return outputs
        outputs.append(run_step(scheduler))
    raise AssertionError(f"still unfinished after {max_steps} steps")


def new_tokens(out: SchedulerOutput) -> dict[int, int]:
    return {item.seq.seq_id: item.num_new_tokens for item in out.scheduled}


# ----- unit tests -----


def test_prefill_then_decodes_until_max_tokens() -> None:
    scheduler = Scheduler(make_config(), num_blocks=16, max_model_len=64)
    (seq,) = make_request("a", [1, 2, 3, 4, 5], max_tokens=3)
    scheduler.add_request("a", [seq])
    first = run_step(scheduler)
    assert new_tokens(first) == {seq.seq_id: 5}
    assert first.scheduled[0].samples
    assert first.num_batched_tokens == 5
    assert new_tokens(run_step(scheduler)) == {seq.seq_id: 1}
    run_step(scheduler)
    assert seq.status is SequenceStatus.FINISHED_LENGTH
    assert seq.num_output_tokens == 3
    assert not scheduler.has_unfinished()
    assert scheduler.block_manager.num_free_blocks == 16


def test_samples_flag_is_fixed_when_scheduled() -> None:
    scheduler = Scheduler(make_config(), num_blocks=16, max_model_len=64)
    (seq,) = make_request("a", [1, 2, 3])
    scheduler.add_request("a", [seq])
    out = scheduler.schedule()
    scheduler.postprocess(out, {})
    assert out.scheduled[0].samples  # still true after num_computed_tokens moved on
    assert out.scheduled[0].start_position == 0


def test_postprocess_appends_the_sampled_token_and_finishes_what_check_stop_ends() -> None:
    config = make_config(max_num_batched_tokens=8)
    scheduler = Scheduler(config, num_blocks=16, max_model_len=64)
    (short,) = make_request("a", [1, 2, 3])
    (chunked,) = make_request("b", list(range(10)))  # 5 of its 10 tokens fit after "a"
    scheduler.add_request("a", [short])
    scheduler.add_request("b", [chunked])
    out = scheduler.schedule()
    asked: list[int] = []

    def stop_short(seq: SequenceState) -> SequenceStatus | None:
        asked.append(seq.seq_id)
        return SequenceStatus.FINISHED_STOPPED if seq is short else None

    sampled = {short.seq_id: 4, chunked.seq_id: 0}  # a token for "b" mid-prompt is not taken
    assert scheduler.postprocess(out, sampled, stop_short) == [short]
    assert asked == [short.seq_id]
    assert short.output_token_ids == [4] and short.status is SequenceStatus.FINISHED_STOPPED
    assert short.block_table == []
    assert chunked.output_token_ids == [] and chunked.num_computed_tokens == 5
    assert scheduler.num_running == 1


def test_second_request_with_same_prompt_reuses_cached_blocks() -> None:
    scheduler = Scheduler(make_config(), num_blocks=16, max_model_len=64)
    prompt = list(range(10))
    (first,) = make_request("a", prompt, max_tokens=8)
    scheduler.add_request("a", [first])
    run_step(scheduler)
    (second,) = make_request("b", prompt)
    scheduler.add_request("b", [second])
    out = run_step(scheduler)
    assert new_tokens(out) == {first.seq_id: 1, second.seq_id: 2}
    assert second.num_cached_tokens == 8
    assert second.block_table[:2] == first.block_table[:2]
    bm = scheduler.block_manager
    assert [bm.ref_count(b) for b in second.block_table[:2]] == [2, 2]
    assert scheduler.stats().kv.prefix_cache_hits == 8


def test_n_samples_share_the_prompt_blocks_of_sample_zero() -> None:
    scheduler = Scheduler(make_config(), num_blocks=16, max_model_len=64)
    prompt = list(range(10))
    seqs = make_request("a", prompt, n=3)
    scheduler.add_request("a", seqs)
    assert scheduler.num_waiting == 3
    first = run_step(scheduler)
    assert new_tokens(first) == {seqs[0].seq_id: 10}  # siblings wait for the cached prompt
    second = run_step(scheduler)
    # Sample 0 decodes; the siblings only recompute the partial last block.
    assert new_tokens(second) == {seqs[0].seq_id: 1, seqs[1].seq_id: 2, seqs[2].seq_id: 2}
    shared = seqs[0].block_table[:2]
    assert all(seq.block_table[:2] == shared for seq in seqs)
    assert all(scheduler.block_manager.ref_count(b) == 3 for b in shared)
    assert len({seq.block_table[2] for seq in seqs}) == 3
    run_until_done(scheduler)
    assert all(seq.num_output_tokens == 4 for seq in seqs)


def test_n_samples_without_prefix_caching_are_independent() -> None:
    scheduler = Scheduler(make_config(prefix_caching=False), num_blocks=16, max_model_len=64)
    seqs = make_request("a", list(range(10)), n=3)
    scheduler.add_request("a", seqs)
    out = run_step(scheduler)
    assert new_tokens(out) == {seq.seq_id: 10 for seq in seqs}
    tables = [set(seq.block_table) for seq in seqs]
    assert tables[0].isdisjoint(tables[1]) and tables[1].isdisjoint(tables[2])


def test_chunked_prefill_splits_a_long_prompt_under_the_budget() -> None:
    scheduler = Scheduler(make_config(max_num_batched_tokens=8), num_blocks=16, max_model_len=64)
    (seq,) = make_request("a", list(range(20)))
    scheduler.add_request("a", [seq])
    chunks = []
    for _ in range(3):
        out = run_step(scheduler)
        assert out.num_batched_tokens <= 8
        chunks.append((out.scheduled[0].num_new_tokens, out.scheduled[0].samples))
    assert chunks == [(8, False), (8, False), (4, True)]
    assert seq.num_output_tokens == 1


def test_decodes_are_scheduled_before_chunked_prefills() -> None:
    scheduler = Scheduler(make_config(max_num_batched_tokens=8), num_blocks=32, max_model_len=64)
    (short,) = make_request("a", [1, 2, 3], max_tokens=10)
    scheduler.add_request("a", [short])
    run_step(scheduler)
    (long_seq,) = make_request("b", list(range(30)))
    scheduler.add_request("b", [long_seq])
    out = run_step(scheduler)
    assert new_tokens(out) == {short.seq_id: 1, long_seq.seq_id: 7}
    out = run_step(scheduler)
    assert new_tokens(out) == {short.seq_id: 1, long_seq.seq_id: 7}


def test_without_chunked_prefill_a_prompt_waits_until_it_fits_whole() -> None:
    config = make_config(max_num_batched_tokens=8, chunked=False)
    scheduler = Scheduler(config, num_blocks=32, max_model_len=64)
    (first,) = make_request("a", [1] * 6)
    (second,) = make_request("b", [2] * 6)
    (third,) = make_request("c", [3])
    for seq in (first, second, third):
        scheduler.add_request(seq.request_id, [seq])
    out = run_step(scheduler)
    # The second prompt does not fit the 2 tokens left, and FCFS keeps the third behind it.
    assert new_tokens(out) == {first.seq_id: 6}
    out = run_step(scheduler)
    assert new_tokens(out) == {first.seq_id: 1, second.seq_id: 6, third.seq_id: 1}


def test_max_num_seqs_limits_running_sequences() -> None:
    scheduler = Scheduler(make_config(max_num_seqs=2), num_blocks=32, max_model_len=64)
    seqs = [make_request(str(i), [i, i, i])[0] for i in range(3)]
    for seq in seqs:
        scheduler.add_request(seq.request_id, [seq])
    out = run_step(scheduler)
    assert new_tokens(out) == {seqs[0].seq_id: 3, seqs[1].seq_id: 3}
    assert (scheduler.num_running, scheduler.num_waiting) == (2, 1)


def test_preemption_frees_the_newest_and_it_completes_later() -> None:
    config = make_config(block_size=2, prefix_caching=False)
    scheduler = Scheduler(config, num_blocks=4, max_model_len=64)
    (old,) = make_request("old", [1, 2, 3], max_tokens=4)
    (new,) = make_request("new", [4, 5, 6], max_tokens=4)
    scheduler.add_request("old", [old])
    scheduler.add_request("new", [new])
    run_step(scheduler)  # both prefilled: 2 blocks each, the cache is full
    assert scheduler.block_manager.num_free_blocks == 0
    out = run_step(scheduler)  # position 3 of each: still inside their second blocks
    assert out.preempted == []
    out = run_step(scheduler)  # position 4 of `old` needs a third block: `new` must go
    assert out.preempted == [new]
    assert new_tokens(out) == {old.seq_id: 1}
    assert new.status is SequenceStatus.WAITING
    assert new.block_table == [] and new.num_computed_tokens == 0
    generated_before = list(new.output_token_ids)
    assert len(generated_before) == 2
    readmitted = next(
        item for out in run_until_done(scheduler) for item in out.scheduled if item.seq is new
    )
    # Re-admitted: the prompt and its two generated tokens are recomputed as one prefill.
    assert (readmitted.start_position, readmitted.num_new_tokens) == (0, 5)
    assert old.num_output_tokens == 4
    assert new.num_output_tokens == 4
    assert new.output_token_ids[:2] == generated_before
    assert scheduler.stats().num_preemptions == 1
    assert scheduler.block_manager.num_free_blocks == 4


def test_preempted_sequence_goes_back_ahead_of_newer_waiting_requests() -> None:
    config = make_config(block_size=2, max_num_seqs=2, prefix_caching=False)
    scheduler = Scheduler(config, num_blocks=4, max_model_len=64)
    (old,) = make_request("old", [1, 2, 3], max_tokens=3)
    (new,) = make_request("new", [4, 5, 6], max_tokens=3)
    (later,) = make_request("later", [7, 7, 7], max_tokens=1)  # 2 blocks: only one of them fits
    for seq in (old, new, later):
        scheduler.add_request(seq.request_id, [seq])
    run_step(scheduler)
    run_step(scheduler)
    out = run_step(scheduler)
    assert out.preempted == [new]
    assert old.status is SequenceStatus.FINISHED_LENGTH  # its third token ended it
    out = run_step(scheduler)
    # `later` arrived after `new`, but `new` was preempted and is served first.
    assert list(new_tokens(out)) == [new.seq_id]
    assert later.status is SequenceStatus.WAITING


def test_without_chunked_prefill_a_recompute_longer_than_the_budget_is_chunked() -> None:
    config = make_config(block_size=2, max_num_batched_tokens=4, chunked=False, prefix_caching=False)
    scheduler = Scheduler(config, num_blocks=3, max_model_len=64)
    (old,) = make_request("old", [1], max_tokens=3)
    (new,) = make_request("new", [2, 2, 2], max_tokens=3)
    scheduler.add_request("old", [old])
    scheduler.add_request("new", [new])
    assert new_tokens(run_step(scheduler)) == {old.seq_id: 1, new.seq_id: 3}  # the cache is full
    run_step(scheduler)
    out = run_step(scheduler)  # `old` needs a block for position 2
    assert out.preempted == [new]
    assert len(new) == 5  # its recompute is longer than the 4-token budget
    chunks = []
    for out in run_until_done(scheduler):
        assert out.num_batched_tokens <= 4
        if new.seq_id in new_tokens(out):
            chunks.append(new_tokens(out)[new.seq_id])
    assert chunks == [4, 1]  # two chunks; the second one samples its third and last token
    assert old.num_output_tokens == 3 and new.num_output_tokens == 3


def test_siblings_wait_until_a_chunked_prompt_is_fully_computed() -> None:
    scheduler = Scheduler(make_config(max_num_batched_tokens=4), num_blocks=16, max_model_len=64)
    seqs = make_request("a", list(range(10)), n=2)
    scheduler.add_request("a", seqs)
    steps = [new_tokens(run_step(scheduler)) for _ in range(4)]
    leader, sibling = seqs[0].seq_id, seqs[1].seq_id
    assert steps[:3] == [{leader: 4}, {leader: 4}, {leader: 2}]
    assert steps[3] == {leader: 1, sibling: 2}
    assert seqs[1].num_cached_tokens == 8


def test_a_sequence_that_outgrows_the_whole_cache_finishes_with_length() -> None:
    scheduler = Scheduler(make_config(block_size=2), num_blocks=2, max_model_len=64)
    (seq,) = make_request("a", [1, 2, 3], max_tokens=50)
    scheduler.add_request("a", [seq])
    finished: list[SequenceState] = []
    for _ in range(10):
        out = run_step(scheduler)
        finished.extend(out.finished_by_scheduler)
        if not scheduler.has_unfinished():
            break
    assert finished == [seq]
    assert seq.status is SequenceStatus.FINISHED_LENGTH
    assert len(seq) == 5  # positions 0..3 fill the cache; the 5th token has no slot
    assert scheduler.block_manager.num_free_blocks == 2


def test_abort_frees_everything_wherever_the_sequences_are() -> None:
    config = make_config(max_num_seqs=1)
    scheduler = Scheduler(config, num_blocks=16, max_model_len=64)
    running = make_request("a", list(range(10)), n=3)  # sample 0 runs, 1 and 2 are held
    (waiting,) = make_request("b", [1, 2])
    scheduler.add_request("a", running)
    scheduler.add_request("b", [waiting])
    run_step(scheduler)
    assert scheduler.num_running == 1
    aborted = scheduler.abort_request("a")
    assert aborted == running
    assert all(seq.status is SequenceStatus.FINISHED_ABORTED for seq in running)
    assert all(seq.block_table == [] for seq in running)
    assert scheduler.abort_request("b") == [waiting]
    assert waiting.status is SequenceStatus.FINISHED_ABORTED
    assert not scheduler.has_unfinished()
    assert (scheduler.num_running, scheduler.num_waiting) == (0, 0)
    assert scheduler.block_manager.num_free_blocks == 16
    assert scheduler.abort_request("a") == []
    assert scheduler.abort_request("unknown") == []


def test_abort_keeps_samples_that_already_finished() -> None:
    scheduler = Scheduler(make_config(prefix_caching=False), num_blocks=16, max_model_len=64)
    seqs = make_request("a", [1, 2, 3], n=2)
    scheduler.add_request("a", seqs)
    run_step(scheduler)
    scheduler.finish_sequence(seqs[0], SequenceStatus.FINISHED_STOPPED)
    assert scheduler.abort_request("a") == [seqs[1]]
    assert seqs[0].status is SequenceStatus.FINISHED_STOPPED


def test_aborted_step_output_is_ignored_by_postprocess() -> None:
    scheduler = Scheduler(make_config(), num_blocks=16, max_model_len=64)
    (seq,) = make_request("a", list(range(9)))
    scheduler.add_request("a", [seq])
    out = scheduler.schedule()
    scheduler.abort_request("a")
    assert scheduler.postprocess(out, fake_samples(out), stop_at_max_tokens) == []
    assert seq.num_computed_tokens == 0
    assert seq.output_token_ids == []
    assert scheduler.block_manager.stats().num_cached_blocks == 0


def test_finish_sequence_frees_blocks_and_releases_held_siblings() -> None:
    scheduler = Scheduler(make_config(), num_blocks=16, max_model_len=64)
    seqs = make_request("a", list(range(10)), n=2)
    scheduler.add_request("a", seqs)
    scheduler.schedule()  # sample 0 admitted, never completed
    scheduler.finish_sequence(seqs[0], SequenceStatus.FINISHED_STOPPED)
    assert seqs[0].block_table == []
    assert scheduler.block_manager.num_free_blocks == 16
    assert scheduler.num_running == 0
    out = scheduler.schedule()
    assert new_tokens(out) == {seqs[1].seq_id: 10}
    with pytest.raises(ValueError):
        scheduler.finish_sequence(seqs[1], SequenceStatus.RUNNING)


def test_check_request_refuses_prompts_that_can_never_run() -> None:
    scheduler = Scheduler(make_config(block_size=4), num_blocks=4, max_model_len=32)
    scheduler.check_request(15)  # 15 + 1 tokens fill the 16 slots exactly
    with pytest.raises(PromptTooLongError) as info:
        scheduler.check_request(16)  # the first generated token has no slot
    assert info.value.param == "prompt"

    unchunked = Scheduler(
        make_config(max_num_batched_tokens=8, chunked=False), num_blocks=64, max_model_len=32
    )
    unchunked.check_request(8)
    with pytest.raises(PromptTooLongError):
        unchunked.check_request(9)


def test_add_request_rejects_duplicates_and_bad_sequences() -> None:
    scheduler = Scheduler(make_config(), num_blocks=16, max_model_len=64)
    scheduler.add_request("a", make_request("a", [1, 2]))
    with pytest.raises(DuplicateRequestError):
        scheduler.add_request("a", make_request("a", [1, 2]))
    with pytest.raises(ValueError):
        scheduler.add_request("b", make_request("other", [1, 2]))
    with pytest.raises(ValueError):
        scheduler.add_request("c", [])
    twins = make_request("d", [1, 2], n=2)
    twins[1].index = 0
    with pytest.raises(ValueError):
        scheduler.add_request("d", twins)
    assert scheduler.num_waiting == 1


# ----- simulated engine loop (hypothesis) -----


class SimulatedEngine:
    """Drives a Scheduler like the engine does, with a fake KV cache that records, per slot,
    which token prefix it holds, so a block read with the wrong content is caught."""

    def __init__(self, config: EngineConfig, num_blocks: int, max_model_len: int) -> None:
        self.config = config
        self.num_blocks = num_blocks
        self.max_model_len = max_model_len
        self.scheduler = Scheduler(config, num_blocks, max_model_len)
        self.kv: dict[int, tuple[int, ...]] = {}
        self.requests: dict[str, list[SequenceState]] = {}
        self.aborted: set[int] = set()
        self.outgrown: set[int] = set()
        self.num_added = 0

    def add(self, prompt: list[int], n: int, max_tokens: int) -> None:
        request_id = f"req-{self.num_added}"
        self.num_added += 1
        if not prompt or len(prompt) >= self.max_model_len:
            return  # refused where the request enters the engine, before the scheduler
        bs = self.config.block_size
        never_fits = (
            -(-(len(prompt) + 1) // bs) > self.num_blocks
            or (not self.config.enable_chunked_prefill and len(prompt) > self.config.max_num_batched_tokens)
        )
        try:
            self.scheduler.check_request(len(prompt))
        except RequestValidationError:
            assert never_fits
            return
        assert not never_fits
        seqs = make_request(request_id, prompt, n=n, max_tokens=max_tokens)
        self.scheduler.add_request(request_id, seqs)
        self.requests[request_id] = seqs

    def abort(self, pick: int) -> None:
        if not self.requests:
            assert self.scheduler.abort_request("missing") == []
            return
        request_id = sorted(self.requests)[pick % len(self.requests)]
        unfinished = [s for s in self.requests[request_id] if not s.is_finished]
        aborted = self.scheduler.abort_request(request_id)
        assert aborted == unfinished
        for seq in aborted:
            assert seq.status is SequenceStatus.FINISHED_ABORTED
            assert seq.block_table == []
            self.aborted.add(seq.seq_id)

    def step(self) -> None:
        running = {seq.seq_id for seqs in self.requests.values() for seq in seqs
                   if seq.status is SequenceStatus.RUNNING}
        out = self.scheduler.schedule()
        self.check_output(out, running)
        self.outgrown.update(seq.seq_id for seq in out.finished_by_scheduler)
        self.fake_forward(out)
        self.scheduler.postprocess(out, fake_samples(out), self.stop)
        # A made-up step time (arbitrary units) for the prefill pacer: a fixed part, a part a
        # decode and a part a charged prompt token.
        self.scheduler.record_step_time(out, 10.0 + 2.0 * out.num_decodes + out.charged_prefill_tokens)
        self.check_state()

    def stop(self, seq: SequenceState) -> SequenceStatus | None:
        if seq.num_output_tokens >= (seq.sampling_params.max_tokens or 0) or len(seq) >= self.max_model_len:
            return SequenceStatus.FINISHED_LENGTH
        return None

    def slot(self, seq: SequenceState, position: int) -> int:
        bs = self.config.block_size
        return seq.block_table[position // bs] * bs + position % bs

    def fake_forward(self, out: SchedulerOutput) -> None:
        bm = self.scheduler.block_manager
        writes: dict[int, tuple[int, ...]] = {}
        for item in out.scheduled:
            seq = item.seq
            for position in range(item.start_position):  # the cached context must be right
                assert self.kv.get(self.slot(seq, position)) == tuple(seq.token_ids[: position + 1])
            for position in range(item.start_position, item.start_position + item.num_new_tokens):
                slot = self.slot(seq, position)
                assert slot not in writes, "two tokens written to one slot in a step"
                assert bm.ref_count(seq.block_table[position // self.config.block_size]) == 1
                writes[slot] = tuple(seq.token_ids[: position + 1])
        self.kv.update(writes)

    def check_output(self, out: SchedulerOutput, running_before: set[int]) -> None:
        config = self.config
        assert out.num_batched_tokens == sum(item.num_new_tokens for item in out.scheduled)
        assert out.num_batched_tokens <= config.max_num_batched_tokens
        assert len(out.scheduled) <= config.max_num_seqs
        assert len({item.seq.seq_id for item in out.scheduled}) == len(out.scheduled)
        for item in out.scheduled:
            seq = item.seq
            assert seq.status is SequenceStatus.RUNNING
            assert item.num_new_tokens >= 1
            assert item.start_position == seq.num_computed_tokens
            assert item.start_position + item.num_new_tokens <= len(seq)
            assert len(seq.block_table) * config.block_size >= item.start_position + item.num_new_tokens
        cap = config.max_prefill_tokens_while_decoding
        # Decodes as the scheduler's first phase sees them: of a running sequence, a last
        # token or generated tokens past a computed prompt.
        decodes = [item for item in out.scheduled if item.seq.seq_id in running_before and (
            len(item.seq) - item.start_position == 1 or item.start_position >= item.seq.num_prompt_tokens)]
        prefills = [item for item in out.scheduled if item not in decodes]
        assert out.scheduled[:out.num_decodes] == decodes
        charged = sum(prefill_charge(item.start_position, item.num_new_tokens) for item in prefills)
        assert out.charged_prefill_tokens == charged
        allowed = out.prefill_allowance
        if decodes and cap and config.enable_chunked_prefill:
            assert allowed is not None and 1 <= allowed <= cap  # the cap, or the pacer's within it
        elif not (decodes and config.max_decode_slowdown and config.enable_chunked_prefill):
            assert allowed is None  # no pacer either (a pacer without a cap may limit or not)
        if allowed is not None and prefills:
            # The step's prefill work stays within its allowance; only a lone one-token chunk
            # may exceed it (the progress every step guarantees a prompt).
            assert charged <= allowed or (len(prefills) == 1 and prefills[0].num_new_tokens == 1)
        for seq in out.preempted:
            assert seq.status is SequenceStatus.WAITING
            assert seq.block_table == [] and seq.num_computed_tokens == 0
        for seq in out.finished_by_scheduler:
            assert seq.status is SequenceStatus.FINISHED_LENGTH and seq.block_table == []

    def check_state(self) -> None:
        scheduler, bm = self.scheduler, self.scheduler.block_manager
        refs = [bm.ref_count(block) for block in range(self.num_blocks)]
        assert min(refs) >= 0
        free = bm.free_block_ids()
        assert len(free) == len(set(free))
        assert set(free) == {block for block, count in enumerate(refs) if count == 0}
        seqs = [seq for seqs in self.requests.values() for seq in seqs]
        table_refs: Counter[int] = Counter()
        running = waiting = 0
        for seq in seqs:
            if seq.status is SequenceStatus.RUNNING:
                running += 1
                assert len(set(seq.block_table)) == len(seq.block_table)
                assert len(seq.block_table) * self.config.block_size >= seq.num_computed_tokens
                table_refs.update(seq.block_table)
            else:
                assert seq.block_table == []
                waiting += seq.status is SequenceStatus.WAITING
        assert sum(refs) == sum(table_refs.values())
        assert all(refs[block] == count for block, count in table_refs.items())
        assert (scheduler.num_running, scheduler.num_waiting) == (running, waiting)
        assert running <= self.config.max_num_seqs
        stats = bm.stats()
        assert stats.num_used_blocks == sum(1 for count in refs if count > 0)
        assert stats.allocated_slots == stats.num_used_blocks * self.config.block_size
        used_slots = {
            self.slot(seq, position)
            for seq in seqs
            if seq.status is SequenceStatus.RUNNING
            for position in range(min(len(seq), len(seq.block_table) * self.config.block_size))
        }
        assert stats.used_slots == len(used_slots)
        assert stats.prefix_cache_hits <= stats.prefix_cache_queries

    def check_finished(self) -> None:
        assert not self.scheduler.has_unfinished()
        assert self.scheduler.block_manager.num_free_blocks == self.num_blocks
        for seqs in self.requests.values():
            for seq in seqs:
                assert seq.is_finished and seq.block_table == []
                if seq.seq_id in self.aborted:
                    continue
                assert seq.status is SequenceStatus.FINISHED_LENGTH
                # Every sampled token is the model's, at its own position: none lost or doubled.
                expected = [fake_token(seq.seq_id, p) for p in range(seq.num_prompt_tokens, len(seq))]
                assert seq.output_token_ids == expected
                max_tokens = seq.sampling_params.max_tokens
                done = seq.num_output_tokens == max_tokens or len(seq) >= self.max_model_len
                assert done or seq.seq_id in self.outgrown


token_ids = st.integers(min_value=0, max_value=3)
add_events = st.tuples(
    st.just("add"),
    st.integers(0, 2),  # which shared prefix
    st.integers(0, 16),  # how much of it
    st.lists(token_ids, max_size=6),  # own suffix
    st.integers(1, 3),  # n
    st.integers(1, 12),  # max_tokens
)
# Adds are drawn more often than steps and aborts so that sequences pile up and compete.
events = st.one_of(
    add_events,
    add_events,
    add_events,
    st.tuples(st.just("step"), st.integers(1, 3)),
    st.tuples(st.just("abort"), st.integers(0, 50)),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    block_size=st.sampled_from([1, 2, 4]),
    num_blocks=st.integers(2, 14),
    max_model_len=st.integers(4, 32),
    max_num_seqs=st.integers(1, 6),
    max_num_batched_tokens=st.integers(1, 24),
    chunked=st.booleans(),
    prefix_caching=st.booleans(),
    prefill_cap=st.sampled_from([None, 0, 1, 3, 8]),
    decode_slowdown=st.sampled_from([None, 0.0, 0.1, 1.0]),
    prefixes=st.lists(st.lists(token_ids, min_size=4, max_size=16), min_size=3, max_size=3),
    script=st.lists(events, min_size=4, max_size=30),
)
def test_simulated_engine_keeps_block_accounting_and_finishes_everything(
    block_size: int,
    num_blocks: int,
    max_model_len: int,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    chunked: bool,
    prefix_caching: bool,
    prefill_cap: int | None,
    decode_slowdown: float | None,
    prefixes: list[list[int]],
    script: list[tuple],
) -> None:
    config = make_config(block_size, max_num_seqs, max_num_batched_tokens, chunked, prefix_caching,
                         prefill_cap, decode_slowdown)
    sim = SimulatedEngine(config, num_blocks, max_model_len)
    for event in script:
        if event[0] == "add":
            _, which, cut, suffix, n, max_tokens = event
            sim.add(prefixes[which][:cut] + suffix, n, max_tokens)
        elif event[0] == "step":
            for _ in range(event[1]):
                sim.step()
        else:
            sim.abort(event[1])
        sim.check_state()
    for _ in range(5000):  # far more steps than the work needs; running out means a livelock
        if not sim.scheduler.has_unfinished():
            break
        sim.step()
    sim.check_finished()
