"""The prefill cap while sequences decode (`max_prefill_tokens_while_decoding`): a long prompt
next to decoding sequences is spread over steps whose prefill work stays within the cap, the
decodes run in every step, and the prompt still finishes. Scheduler-level, no model."""

from __future__ import annotations

import pytest
from test_scheduler import make_config, make_request, run_step
from ziggurat_core.engine.config import EngineConfig
from ziggurat_core.engine.prefill_allowance import CONTEXT_TOKENS, PrefillAllowance, prefill_charge
from ziggurat_core.engine.scheduler import Scheduler
from ziggurat_core.engine.scheduler_output import SchedulerOutput
from ziggurat_core.engine.sequence import SequenceState, SequenceStatus


def start_decoding(scheduler: Scheduler, count: int, max_tokens: int = 10_000) -> list[SequenceState]:
    """`count` short requests, prefilled in one step: from the next step on they decode."""
    streams = [make_request(f"s{i}", [1, 2, 3], max_tokens=max_tokens)[0] for i in range(count)]
    for seq in streams:
        scheduler.add_request(seq.request_id, [seq])
    run_step(scheduler)
    assert all(seq.num_output_tokens == 1 for seq in streams)
    return streams


def chunks_of(out: SchedulerOutput, seq: SequenceState) -> list[tuple[int, int]]:
    return [(item.start_position, item.num_new_tokens) for item in out.scheduled if item.seq is seq]


def prefill_long_prompt(scheduler: Scheduler, prompt_len: int, streams: list[SequenceState],
                        max_steps: int = 10_000) -> list[SchedulerOutput]:
    """Add a prompt of `prompt_len` tokens and step until it sampled its token, checking in
    every step that each stream decoded one token."""
    (long_seq,) = make_request("long", list(range(prompt_len)), max_tokens=1)
    scheduler.add_request("long", [long_seq])
    outputs = []
    for _ in range(max_steps):
        before = [seq.num_output_tokens for seq in streams]
        out = run_step(scheduler)
        outputs.append(out)
        assert [seq.num_output_tokens for seq in streams] == [n + 1 for n in before]
        if long_seq.is_finished:
            break
    assert long_seq.status is SequenceStatus.FINISHED_LENGTH
    assert long_seq.num_output_tokens == 1
    return outputs


def capped(cap: int | None, budget: int = 2048, chunked: bool = True) -> Scheduler:
    config = make_config(block_size=16, max_num_seqs=16, max_num_batched_tokens=budget,
                         chunked=chunked, prefix_caching=False, prefill_cap=cap)
    return Scheduler(config, num_blocks=1024, max_model_len=8192)


def test_a_long_prompt_beside_decodes_is_spread_over_steps_within_the_cap() -> None:
    scheduler = capped(64)
    streams = start_decoding(scheduler, 8)
    outputs = prefill_long_prompt(scheduler, 1500, streams)
    long_chunks = [chunk for out in outputs for item in out.scheduled if item.seq.request_id == "long"
                   for chunk in [(item.start_position, item.num_new_tokens)]]
    # The chunks cover the prompt in order, without gap or overlap.
    position = 0
    for start, size in long_chunks:
        assert start == position
        position += size
    assert position == 1500
    for out in outputs:
        prefill = [item for item in out.scheduled if item.seq.request_id == "long"]
        assert len(prefill) == 1
        assert prefill_charge(prefill[0].start_position, prefill[0].num_new_tokens) <= 64
        assert len(out.scheduled) == 9  # every stream decodes in the same step
    # A chunk deep into the prompt is smaller than one at its start: its attention reads more.
    assert long_chunks[0] == (0, 64)
    assert all(size <= 32 for start, size in long_chunks if start >= CONTEXT_TOKENS)
    assert len(outputs) > 1500 // 64


def test_without_the_cap_the_long_prompt_takes_the_whole_budget_in_one_step() -> None:
    for cap in (None, 0):
        scheduler = capped(cap)
        streams = start_decoding(scheduler, 8)
        outputs = prefill_long_prompt(scheduler, 1500, streams)
        assert len(outputs) == 1
        assert outputs[0].num_batched_tokens == 1508


def test_without_decodes_a_prompt_takes_the_whole_budget() -> None:
    scheduler = capped(64, budget=512)
    (seq,) = make_request("long", list(range(1500)), max_tokens=2)
    scheduler.add_request("long", [seq])
    assert [chunks_of(run_step(scheduler), seq) for _ in range(3)] == [
        [(0, 512)], [(512, 512)], [(1024, 476)]]
    # Once it decodes itself, a newcomer's prompt is capped beside it.
    (newcomer,) = make_request("new", list(range(200)), max_tokens=1)
    scheduler.add_request("new", [newcomer])
    out = run_step(scheduler)
    assert chunks_of(out, seq) == [(1500, 1)]
    assert chunks_of(out, newcomer) == [(0, 64)]


def test_prompts_admitted_beside_decodes_share_the_cap_in_arrival_order() -> None:
    scheduler = capped(8)
    (stream,) = start_decoding(scheduler, 1)
    prompts = [make_request(name, [5] * 5, max_tokens=1)[0] for name in ("a", "b", "c")]
    for seq in prompts:
        scheduler.add_request(seq.request_id, [seq])
    out = run_step(scheduler)
    assert chunks_of(out, stream) == [(3, 1)]
    # 5 + 3 tokens: the second is chunked at the cap, the third waits its turn.
    assert [chunks_of(out, seq) for seq in prompts] == [[(0, 5)], [(0, 3)], []]
    assert prompts[2].status is SequenceStatus.WAITING
    out = run_step(scheduler)
    # The first sampled its token and finished; the second's rest goes first, then the third.
    assert [chunks_of(out, seq) for seq in prompts] == [[], [(3, 2)], [(0, 5)]]


def test_a_prompt_advances_every_step_however_deep_its_context() -> None:
    # A cap of 1 token is less than any chunk past position 0 is charged: the step's first
    # chunk still gets one token, so the prompt finishes, one token a step.
    scheduler = capped(1)
    streams = start_decoding(scheduler, 2)
    outputs = prefill_long_prompt(scheduler, 40, streams)
    assert len(outputs) == 40
    assert all(out.num_batched_tokens == 3 for out in outputs)


def test_without_chunked_prefill_the_cap_never_splits_a_prompt() -> None:
    scheduler = capped(8, budget=64, chunked=False)
    streams = start_decoding(scheduler, 2)
    outputs = prefill_long_prompt(scheduler, 40, streams)
    assert len(outputs) == 1


def test_preempted_decodes_are_recomputed_under_the_cap() -> None:
    # A cache too small for everything: preemption and recompute (a prefill of prompt and
    # generated tokens) under the cap must still let every request finish.
    config = make_config(block_size=4, max_num_seqs=4, max_num_batched_tokens=64,
                         prefix_caching=False, prefill_cap=4)
    scheduler = Scheduler(config, num_blocks=12, max_model_len=64)
    seqs = [make_request(str(i), list(range(10)), max_tokens=12)[0] for i in range(4)]
    for seq in seqs:
        scheduler.add_request(seq.request_id, [seq])
    for _ in range(500):
        if not scheduler.has_unfinished():
            break
        run_step(scheduler)
    assert all(seq.num_output_tokens == 12 for seq in seqs)
    assert scheduler.stats().num_preemptions > 0
    assert scheduler.block_manager.num_free_blocks == 12


def test_allowance_charges_chunks_by_their_depth() -> None:
    allowance = PrefillAllowance(64)
    assert allowance.grant(0, 10) == 10  # 10 left to charge 54
    # At position CONTEXT_TOKENS each token is charged 2: 27 of the 54 left.
    assert allowance.grant(CONTEXT_TOKENS, 100) == 27
    assert allowance.grant(0, 5) == 0  # nothing left, and the step already has a chunk
    assert PrefillAllowance(None).grant(5000, 4096) == 4096
    assert prefill_charge(0, 64) == 64
    assert prefill_charge(CONTEXT_TOKENS, 1) == 2
    # Exact, not rounded up: a one-token chunk just past the start costs a little over one.
    assert prefill_charge(1, 1) == 1 + 1 / CONTEXT_TOKENS
    assert prefill_charge(CONTEXT_TOKENS // 2, 3) == 4.5
    # Four one-token chunks just past their starts leave 59.99 tokens' worth, not 56.
    short_tails = PrefillAllowance(64)
    assert [short_tails.grant(1, 1) for _ in range(4)] == [1, 1, 1, 1]
    assert short_tails.grant(0, 100) == 59
    assert short_tails.charged == 4 * (1 + 1 / CONTEXT_TOKENS) + 59
    with pytest.raises(ValueError):
        PrefillAllowance(0)
    with pytest.raises(ValueError):
        PrefillAllowance(4).grant(0, 0)


def test_the_default_cap_depends_on_the_device_and_use_and_a_setting_wins() -> None:
    assert EngineConfig().resolved_prefill_tokens_while_decoding("cpu", streaming=True) == 64
    assert EngineConfig().resolved_prefill_tokens_while_decoding("cpu", streaming=False) == 0
    assert EngineConfig().resolved_prefill_tokens_while_decoding("cuda", streaming=True) == 0
    config = EngineConfig(max_prefill_tokens_while_decoding=0)
    assert config.resolved_prefill_tokens_while_decoding("cpu", streaming=True) == 0
    config = EngineConfig(max_prefill_tokens_while_decoding=300)
    assert config.resolved_prefill_tokens_while_decoding("cuda", streaming=False) == 300
    with pytest.raises(ValueError, match="max_prefill_tokens_while_decoding"):
        EngineConfig(max_prefill_tokens_while_decoding=-1).validate()
