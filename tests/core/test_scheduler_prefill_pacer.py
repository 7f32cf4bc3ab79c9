"""The prefill pacer in the scheduler (`max_decode_slowdown`), with step times from a written-down
cost model instead of a clock: a long prompt beside decodes still finishes, every decode runs in
every step, each step's prompt work stays within what the pacer allowed, and the allowance
settles where the cost model says a step is `1 + max_decode_slowdown` decode steps long."""

from __future__ import annotations

from collections.abc import Callable

from test_scheduler import make_config, make_request, run_step
from test_scheduler_prefill_cap import start_decoding
from ziggurat_core.engine.prefill_pacer import RELEARN_STEPS
from ziggurat_core.engine.scheduler import Scheduler
from ziggurat_core.engine.scheduler_output import SchedulerOutput
from ziggurat_core.engine.sequence import SequenceStatus

StepCost = Callable[[SchedulerOutput], float]


def paced(slowdown: float | None, cap: int | None, max_num_seqs: int = 16,
          budget: int = 2048) -> Scheduler:
    config = make_config(block_size=16, max_num_seqs=max_num_seqs, max_num_batched_tokens=budget,
                         prefix_caching=False, prefill_cap=cap, decode_slowdown=slowdown)
    return Scheduler(config, num_blocks=2048, max_model_len=8192)


def linear_cost(decode_seconds: float, token_seconds: float) -> StepCost:
    """A step costs `decode_seconds` for its decodes and `token_seconds` a charged prompt token."""
    return lambda out: decode_seconds + token_seconds * out.charged_prefill_tokens


def timed_step(scheduler: Scheduler, cost: StepCost) -> SchedulerOutput:
    out = run_step(scheduler)
    scheduler.record_step_time(out, cost(out))
    return out


def prefill_beside(scheduler: Scheduler, streams: int, prompt_len: int, cost: StepCost,
                   decode_only_steps: int = 10) -> list[SchedulerOutput]:
    """`streams` decoding streams and `decode_only_steps` steps of them alone, then a prompt of
    `prompt_len` tokens stepped until it sampled its token; checks every step on the way."""
    decoding = start_decoding(scheduler, streams)
    for _ in range(decode_only_steps):
        timed_step(scheduler, cost)
    (long_seq,) = make_request("long", list(range(prompt_len)), max_tokens=1)
    scheduler.add_request("long", [long_seq])
    outputs = []
    for _ in range(20_000):
        before = [seq.num_output_tokens for seq in decoding]
        out = timed_step(scheduler, cost)
        outputs.append(out)
        assert [seq.num_output_tokens for seq in decoding] == [n + 1 for n in before]
        # (The prompt's last token, when a chunk leaves one alone, is computed as a decode.)
        assert out.num_decodes in (streams, streams + 1)
        assert out.prefill_allowance is not None
        assert out.charged_prefill_tokens <= out.prefill_allowance or out.num_batched_tokens == streams + 1
        if long_seq.is_finished:
            break
    assert long_seq.status is SequenceStatus.FINISHED_LENGTH
    return outputs


def test_the_pacer_sizes_the_prompt_work_to_the_slowdown() -> None:
    # 8 streams, 10 ms a decode step, 1 ms a charged token: a quarter of a decode step is 2.5
    # tokens' worth, so once learned each step takes 2 charged tokens of the long prompt.
    scheduler = paced(0.25, cap=64)
    outputs = prefill_beside(scheduler, 8, 600, linear_cost(0.010, 0.001))
    assert outputs[0].prefill_allowance == 64  # the first step beside decodes: the cap
    allowances = [out.prefill_allowance for out in outputs]
    assert allowances[-100:] == [2] * 100
    # Every step it allowed kept within 1.25 decode steps once learned (the 1-token floor aside).
    assert all(out.charged_prefill_tokens <= 2 for out in outputs[-100:])
    # 600 tokens at 2 charged tokens a step (fewer tokens deeper in): hundreds of steps, where
    # the cap alone takes fewer than 20 (600 tokens charged at most 1.6 each, 64 a step).
    assert len(outputs) > 250
    capped = prefill_beside(paced(None, cap=64), 8, 600, linear_cost(0.010, 0.001))
    assert len(capped) < 20


def test_a_larger_batch_buys_more_prompt_work() -> None:
    # 64 streams, 80 ms a decode step: the same slowdown is 20 charged tokens a step.
    scheduler = paced(0.25, cap=64, max_num_seqs=80)
    outputs = prefill_beside(scheduler, 64, 400, linear_cost(0.080, 0.001))
    assert [out.prefill_allowance for out in outputs[-5:]] == [20] * 5


def test_the_static_cap_bounds_the_pacer_and_zero_unbounds_it() -> None:
    # Prompt tokens so cheap that a quarter of a decode step buys 250: the cap still holds.
    cheap = linear_cost(0.010, 0.00001)
    outputs = prefill_beside(paced(0.25, cap=64), 8, 1500, cheap)
    assert {out.prefill_allowance for out in outputs} == {64}
    # Without a static cap the pacer alone decides (a small start until it has measured).
    outputs = prefill_beside(paced(0.25, cap=0), 8, 1500, cheap)
    assert outputs[0].prefill_allowance == 16
    assert outputs[-2].prefill_allowance == 250


def test_without_decodes_the_pacer_does_not_limit_a_prompt() -> None:
    scheduler = paced(0.25, cap=64, budget=512)
    (seq,) = make_request("long", list(range(1200)), max_tokens=2)
    scheduler.add_request("long", [seq])
    outputs = [timed_step(scheduler, linear_cost(0.010, 0.001)) for _ in range(3)]
    assert [out.num_batched_tokens for out in outputs] == [512, 512, 176]
    assert all(out.prefill_allowance is None and out.num_decodes == 0 for out in outputs)


def test_without_chunked_prefill_there_is_no_pacer() -> None:
    config = make_config(block_size=16, max_num_seqs=16, max_num_batched_tokens=2048,
                         chunked=False, prefill_cap=64, decode_slowdown=0.25)
    assert Scheduler(config, num_blocks=64, max_model_len=1024).pacer is None
    assert paced(0.0, cap=64).pacer is None
    assert paced(None, cap=64).pacer is None


def test_when_the_step_costs_change_a_few_decode_only_steps_relearn_the_baseline() -> None:
    # The long prompt fills every step beside the decodes, so no decode-only step would come
    # by itself; after `step_costs_changed` the scheduler makes RELEARN_STEPS of them.
    scheduler = paced(0.25, cap=64)
    decoding = start_decoding(scheduler, 8)
    slow = 1.0
    cost: StepCost = lambda out: slow * (0.010 + 0.001 * out.charged_prefill_tokens)  # noqa: E731
    for _ in range(10):
        timed_step(scheduler, cost)
    (long_seq,) = make_request("long", list(range(1500)), max_tokens=1)
    scheduler.add_request("long", [long_seq])
    for _ in range(40):
        timed_step(scheduler, cost)
    slow = 1.6  # the CPU team shrank: every step 1.6 times as long
    scheduler.step_costs_changed()
    outputs = [timed_step(scheduler, cost) for _ in range(40)]
    decode_only = [out.num_batched_tokens == out.num_decodes for out in outputs]
    assert decode_only[:RELEARN_STEPS] == [True] * RELEARN_STEPS
    assert not any(decode_only[RELEARN_STEPS:])  # then the prompt goes on at once
    assert all(out.num_decodes == 8 for out in outputs)
    assert all(seq.status is SequenceStatus.RUNNING for seq in decoding)
    # and at what the slowdown allows in the new regime: 0.25 x 16 ms / 1.6 ms = 2.5 tokens
    assert [out.prefill_allowance for out in outputs[-10:]] == [2] * 10


def learn_batch_sizes(scheduler: Scheduler) -> None:
    """Teaches the scheduler's pacer decode steps of 5 ms + 1 ms a sequence over batches of 1
    to 16, and 0.5 ms a charged prompt token beside them."""
    pacer = scheduler.pacer
    assert pacer is not None
    for i in range(200):
        decodes = 1 + i % 16
        pacer.observe(decodes, 0, 0.005 + 0.001 * decodes)
        pacer.observe(decodes, 8, 0.005 + 0.001 * decodes + 0.004)


def test_a_burst_of_arrivals_is_paced_to_the_batch_it_will_make() -> None:
    # Decode steps of 5 ms + 1 ms a sequence, 0.5 ms a charged prompt token, learned over
    # batches of 1 to 16. One stream decodes when 15 requests of 40-token prompts arrive.
    def cost(out: SchedulerOutput) -> float:
        return 0.005 + 0.001 * out.num_decodes + 0.0005 * out.charged_prefill_tokens

    scheduler = paced(0.25, cap=64, max_num_seqs=32)
    learn_batch_sizes(scheduler)
    (stream,) = start_decoding(scheduler, 1)
    burst = [make_request(f"b{i}", [7 + i] * 40, max_tokens=1000)[0] for i in range(15)]
    for seq in burst:
        scheduler.add_request(seq.request_id, [seq])
    steps = []
    while any(seq.num_output_tokens == 0 for seq in burst):
        before = stream.num_output_tokens
        out = timed_step(scheduler, cost)
        steps.append(out)
        assert stream.num_output_tokens == before + 1  # the first stream never stalls
        assert out.prefill_allowance is not None
        assert out.charged_prefill_tokens <= out.prefill_allowance
        # Each step within 1.25 times the decode step of the 16 streams the burst makes.
        assert cost(out) <= 1.25 * (0.005 + 0.001 * 16) * 1.02
        assert len(steps) < 200
    # 600 prompt tokens: held to a quarter of the first streams' own small steps (1.5 ms, 3
    # tokens, at one stream) they took over 100 steps; paced to the 16-stream step, under 40.
    assert len(steps) < 40
    assert steps[0].prefill_allowance > 30  # type: ignore[operator]


def test_only_the_seats_left_count_as_joining() -> None:
    # 4 seats, 2 decoding: 10 waiting prompts can add only 2 streams to the batch, so they buy
    # the allowance that 2 waiting ones do.
    def allowance_with(waiting: int, seats: int) -> int | None:
        scheduler = paced(0.25, cap=None, max_num_seqs=seats)
        learn_batch_sizes(scheduler)
        start_decoding(scheduler, 2)
        for i in range(waiting):
            (seq,) = make_request(f"w{i}", [9] * 200, max_tokens=4)
            scheduler.add_request(seq.request_id, [seq])
        return run_step(scheduler).prefill_allowance

    assert allowance_with(10, seats=4) == allowance_with(2, seats=4)
    assert allowance_with(10, seats=16) > allowance_with(2, seats=16)  # type: ignore[operator]
    assert allowance_with(2, seats=16) > allowance_with(0, seats=16)  # type: ignore[operator]
