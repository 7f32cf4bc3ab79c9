"""Continuous-batching scheduler. No torch.

Every step it picks, per sequence, how many new tokens to compute under a token budget
(`max_num_batched_tokens`) and a seat limit (`max_num_seqs`):
1. running decodes, oldest first: the token sampled last step, plus any tokens a grammar forced
   after it (appended uncomputed, so a forced run costs one forward pass, not one each); when the
   KV cache is full the most recently arrived running sequence is preempted (its blocks freed,
   recomputed later from the front of the waiting queue);
2. running prefills that were chunked, oldest first;
3. waiting sequences in FCFS order, while budget, seats and blocks allow (skipped in a step that
   had to preempt, since blocks are short).
When phase 1 scheduled any decode, phases 2 and 3 together take at most
`max_prefill_tokens_while_decoding` tokens' worth of prompt work (prefill_allowance.py), so that
a long prompt is spread over several steps instead of stalling every decoding sequence in one;
with `max_decode_slowdown` set, the prefill pacer (prefill_pacer.py) sets that allowance step by
step from the measured step times (`record_step_time`) and the sequences about to join the
decodes, the cap bounding it; after the engine
changed how it runs its steps (`step_costs_changed`), the few steps the pacer needs to relearn
its baseline are decode-only.

A step is schedule -> run the model -> `postprocess`, and `postprocess` is the one place where a
sequence gains its sampled token, finishes and has its blocks freed. The scheduler owns every
`SequenceState` and its life cycle; the engine only reads them.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Mapping

from .block_manager import BlockManager
from .config import EngineConfig
from .errors import DuplicateRequestError, PromptTooLongError
from .prefill_allowance import PrefillAllowance
from .prefill_pacer import PrefillPacer
from .scheduler_output import (
    ForcedTokens,
    ScheduledSequence,
    SchedulerOutput,
    SchedulerStats,
    StopCheck,
)
from .sequence import SequenceState, SequenceStatus


class Scheduler:
    def __init__(self, config: EngineConfig, num_blocks: int, max_model_len: int) -> None:
        if max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1, got {max_model_len}")
        self.config = config
        self.max_model_len = max_model_len
        self.block_manager = BlockManager(
            num_blocks, config.resolved_block_size, enable_prefix_caching=config.enable_prefix_caching
        )
        self._waiting: deque[SequenceState] = deque()
        self._running: list[SequenceState] = []  # sorted by _order_key (arrival order)
        # Samples 1..n-1 of a request wait here until sample 0's prompt is computed, so that
        # they find its prompt blocks in the prefix cache instead of computing them again.
        self._held_siblings: dict[str, list[SequenceState]] = {}
        self._num_held = 0
        self._requests: dict[str, list[SequenceState]] = {}
        self._arrival: dict[int, int] = {}  # seq_id -> arrival number of its request
        self._arrival_counter = itertools.count()
        self._num_preemptions = 0
        # Without chunked prefill a prompt runs whole, so there is nothing a cap could split.
        # None (unresolved) or 0: no cap.
        cap = config.max_prefill_tokens_while_decoding
        self._prefill_cap_while_decoding = cap if cap and config.enable_chunked_prefill else None
        # None (unresolved) or 0: no pacing, the cap alone.
        slowdown = config.max_decode_slowdown
        self.pacer = (PrefillPacer(slowdown, self._prefill_cap_while_decoding)
                      if slowdown and config.enable_chunked_prefill else None)

    # ----- admission control -----

    def check_request(self, num_prompt_tokens: int) -> None:
        """Raise if the KV cache or the token budget can never hold a prompt of this length.

        Call before creating state. The prompt itself (empty, longer than the context window,
        token ids in the vocabulary) is checked once, where the request enters the engine."""
        bm = self.block_manager
        # The prompt plus the first generated token must fit in the cache at the same time.
        needed_blocks = bm.blocks_for_tokens(num_prompt_tokens + 1)
        if needed_blocks > bm.num_blocks:
            raise PromptTooLongError(
                f"the prompt has {num_prompt_tokens} tokens; with the first generated token it "
                f"needs {needed_blocks} KV-cache blocks but the cache holds only {bm.num_blocks} "
                f"({bm.num_blocks * bm.block_size} tokens)",
                param="prompt",
            )
        budget = self.config.max_num_batched_tokens
        if not self.config.enable_chunked_prefill and num_prompt_tokens > budget:
            raise PromptTooLongError(
                f"the prompt has {num_prompt_tokens} tokens, more than max_num_batched_tokens "
                f"({budget}) and chunked prefill is disabled",
                param="prompt",
            )

    def add_request(self, request_id: str, seqs: list[SequenceState]) -> None:
        """Queue the n samples of one request (FCFS)."""
        if request_id in self._requests:
            raise DuplicateRequestError(f"request {request_id!r} is already in flight", param="request_id")
        if not seqs:
            raise ValueError(f"request {request_id!r} has no sequences")
        for seq in seqs:
            if seq.request_id != request_id:
                raise ValueError(f"sequence {seq.seq_id} belongs to {seq.request_id!r}, not {request_id!r}")
            if seq.status is not SequenceStatus.WAITING or seq.block_table or not seq.token_ids:
                raise ValueError(f"sequence {seq.seq_id} is not a fresh waiting sequence")
        if len({seq.index for seq in seqs}) != len(seqs):  # (arrival, index) orders `_running`
            raise ValueError(f"the sequences of request {request_id!r} need distinct indices")
        arrival = next(self._arrival_counter)
        for seq in seqs:
            self._arrival[seq.seq_id] = arrival
        self._requests[request_id] = list(seqs)
        leader, siblings = seqs[0], seqs[1:]
        self._waiting.append(leader)
        bs = self.block_manager.block_size
        shares_blocks = (leader.num_prompt_tokens - 1) // bs > 0  # at least one full block to hit
        if siblings and self.config.enable_prefix_caching and shares_blocks:
            self._held_siblings[request_id] = list(siblings)
            self._num_held += len(siblings)
        else:
            self._waiting.extend(siblings)

    # ----- the step -----

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        budget = self._schedule_running_decodes(budget, out)
        # Phase 1 schedules decodes only: anything scheduled so far is a decode.
        out.num_decodes = len(out.scheduled)
        out.prefill_allowance = self._prefill_allowance(out)
        allowance = PrefillAllowance(out.prefill_allowance)
        # A pacer learning its baseline anew needs decode-only steps: the prompts wait a few.
        probing = out.num_decodes > 0 and self.pacer is not None and self.pacer.relearning
        if not probing:
            budget = self._schedule_running_prefills(budget, out, allowance)
        if not out.preempted and not probing:
            budget = self._admit_waiting(budget, out, allowance)
        out.num_batched_tokens = self.config.max_num_batched_tokens - budget
        out.charged_prefill_tokens = allowance.charged
        return out

    def record_step_time(self, output: SchedulerOutput, seconds: float) -> None:
        """The wall time of the step that ran `output` (schedule, model, postprocess), for the
        prefill pacer to learn from. The engine loop measures it; without a pacer, ignored."""
        if self.pacer is not None:
            self.pacer.observe(output.num_decodes, output.charged_prefill_tokens, seconds)

    def step_costs_changed(self) -> None:
        """The engine runs its steps differently from now on (its CPU team changed size): the
        prefill pacer learns the decode-only time anew, from the next few decode-only steps."""
        if self.pacer is not None:
            self.pacer.rebaseline()

    def postprocess(
        self,
        output: SchedulerOutput,
        sampled: Mapping[int, int],
        check_stop: StopCheck | None = None,
        forced_tokens: ForcedTokens | None = None,
    ) -> list[SequenceState]:
        """The step's post-processing: advance the scheduled sequences past the tokens the step
        computed, append the token sampled for each whose chunk reached its end (`sampled`, by
        seq_id), then finish (and free) those `check_stop` says are done. A sequence that goes on
        also gains the tokens `forced_tokens` gives, each checked by `check_stop` in turn.
        Returns the sequences that gained a token."""
        released: list[SequenceState] = []
        sampling: list[SequenceState] = []
        for item in output.scheduled:
            seq = item.seq
            if seq.status is not SequenceStatus.RUNNING:
                continue  # finished or aborted since it was scheduled; its blocks are gone
            seq.num_computed_tokens += item.num_new_tokens
            self.block_manager.mark_computed(seq)
            if seq.num_computed_tokens >= seq.num_prompt_tokens:
                released.extend(self._held_siblings.pop(seq.request_id, []))
            if item.samples:
                sampling.append(seq)
        self._release_siblings(released)
        grown: list[SequenceState] = []
        for seq in sampling:
            token = sampled.get(seq.seq_id)
            if token is None:
                continue
            seq.append_token(token)
            grown.append(seq)
            status = check_stop(seq) if check_stop is not None else None
            if status is None and forced_tokens is not None:
                for forced in forced_tokens(seq):
                    seq.append_token(forced)
                    status = check_stop(seq) if check_stop is not None else None
                    if status is not None:
                        break
            if status is not None:
                self.finish_sequence(seq, status)
        return grown

    def finish_sequence(self, seq: SequenceState, status: SequenceStatus) -> None:
        """Finish `seq` (stop / length / abort): frees its blocks. Already finished: no-op."""
        if not status.finished:
            raise ValueError(f"finish_sequence needs a finished status, got {status}")
        if seq.is_finished:
            return
        self._finish(seq, status)

    def abort_request(self, request_id: str) -> list[SequenceState]:
        """Abort every unfinished sample of the request and return them. Unknown id: []."""
        seqs = self._requests.get(request_id)
        if seqs is None:
            return []
        aborted = [seq for seq in seqs if not seq.is_finished]
        held = self._held_siblings.pop(request_id, [])
        self._num_held -= len(held)
        held_ids = {seq.seq_id for seq in held}
        if any(seq.status is SequenceStatus.WAITING and seq.seq_id not in held_ids for seq in aborted):
            self._waiting = deque(seq for seq in self._waiting if seq.request_id != request_id)
        for seq in aborted:
            if seq.status is SequenceStatus.RUNNING:
                self._remove_running(seq)
            self.block_manager.free(seq)
            seq.status = SequenceStatus.FINISHED_ABORTED
            self._arrival.pop(seq.seq_id, None)
        del self._requests[request_id]
        return aborted

    # ----- queries -----

    def has_unfinished(self) -> bool:
        return bool(self._running or self._waiting or self._num_held)

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        """Waiting sequences, including samples held back until their prompt is cached."""
        return len(self._waiting) + self._num_held

    def stats(self) -> SchedulerStats:
        return SchedulerStats(
            kv=self.block_manager.stats(),
            num_running=self.num_running,
            num_waiting=self.num_waiting,
            num_preemptions=self._num_preemptions,
        )

    # ----- scheduling phases -----

    def _schedule_running_decodes(self, budget: int, out: SchedulerOutput) -> int:
        bm = self.block_manager
        index = 0
        while index < len(self._running) and budget > 0:
            seq = self._running[index]
            if not self._is_decode(seq):
                index += 1  # a prefill (phase 2), or nothing new to compute yet
                continue
            num_new = min(seq.num_uncomputed_tokens, budget)
            if self._outgrown(seq):
                self._finish(seq, SequenceStatus.FINISHED_LENGTH)
                out.finished_by_scheduler.append(seq)
                continue  # the list shifted left: same index is the next sequence
            while not bm.can_append(seq, num_new):
                # Newest arrival goes first; victims always sit at or after `index`, so nothing
                # already scheduled in this step is taken back.
                victim = self._running[-1]
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    break
            else:
                bm.append(seq, num_new)
                out.scheduled.append(ScheduledSequence(seq, num_new))
                budget -= num_new
                index += 1
        return budget

    def _schedule_running_prefills(
        self, budget: int, out: SchedulerOutput, allowance: PrefillAllowance
    ) -> int:
        # Prompt blocks were all allocated at admission, so chunks never need new blocks.
        for seq in self._running:
            if budget == 0:
                break
            if seq.num_uncomputed_tokens > 1 and not self._is_decode(seq):
                wanted = min(seq.num_uncomputed_tokens, budget)
                num_new = allowance.grant(seq.num_computed_tokens, wanted)
                if num_new == 0:
                    break
                self.block_manager.append(seq, num_new)
                out.scheduled.append(ScheduledSequence(seq, num_new))
                budget -= num_new
        return budget

    def _admit_waiting(self, budget: int, out: SchedulerOutput, allowance: PrefillAllowance) -> int:
        bm = self.block_manager
        max_batched = self.config.max_num_batched_tokens
        while self._waiting and budget > 0 and len(self._running) < self.config.max_num_seqs:
            seq = self._waiting[0]
            if self._outgrown(seq):
                self._finish(seq, SequenceStatus.FINISHED_LENGTH)
                out.finished_by_scheduler.append(seq)
                continue
            cached = bm.cached_prefix_len(seq)
            remaining = len(seq) - cached
            if remaining <= budget:
                num_new = remaining
            elif self.config.enable_chunked_prefill or remaining > max_batched:
                # Without chunked prefill only a preempted sequence that grew past the budget
                # gets here; chunking it is the only way it can ever run again.
                num_new = budget
            else:
                break  # FCFS: later prompts do not overtake this one
            if not bm.can_allocate(seq):
                break
            num_new = allowance.grant(cached, num_new)  # allocate() starts it at `cached`
            if num_new == 0:
                break
            self._waiting.popleft()
            bm.allocate(seq)
            seq.status = SequenceStatus.RUNNING
            bisect.insort(self._running, seq, key=self._order_key)
            out.scheduled.append(ScheduledSequence(seq, num_new))
            budget -= num_new
        return budget

    # ----- helpers -----

    def _prefill_allowance(self, out: SchedulerOutput) -> int | None:
        """The prompt work the step may take beside its decodes (None: no limit). The pacer
        also counts the sequences that will decode beside them once their prompts are in (the
        running ones still computing a prompt, the waiting and the held ones) as far as seats
        allow."""
        if out.num_decodes == 0:
            return None
        if self.pacer is None:
            return self._prefill_cap_while_decoding
        joining = len(self._running) - out.num_decodes + len(self._waiting) + self._num_held
        seats = self.config.max_num_seqs - out.num_decodes
        return self.pacer.allowance(out.num_decodes, max(0, min(joining, seats)))

    @staticmethod
    def _is_decode(seq: SequenceState) -> bool:
        """Whether phase 1 computes `seq`: a last token, or generated tokens past a computed
        prompt (a sampled token and a grammar's forced run, which may need new blocks)."""
        uncomputed = seq.num_uncomputed_tokens
        return uncomputed == 1 or (uncomputed > 1 and seq.num_computed_tokens >= seq.num_prompt_tokens)

    def _order_key(self, seq: SequenceState) -> tuple[int, int]:
        return (self._arrival[seq.seq_id], seq.index)

    def _outgrown(self, seq: SequenceState) -> bool:
        """Computing all of `seq`'s tokens would pass the context window or the whole cache."""
        bm = self.block_manager
        return len(seq) > self.max_model_len or bm.blocks_for_tokens(len(seq)) > bm.num_blocks

    def _preempt(self, seq: SequenceState) -> None:
        self._remove_running(seq)
        self.block_manager.free(seq)
        seq.reset_for_recompute()
        self._waiting.appendleft(seq)
        self._num_preemptions += 1

    def _finish(self, seq: SequenceState, status: SequenceStatus) -> None:
        if seq.status is SequenceStatus.RUNNING:
            self._remove_running(seq)
        elif seq in self._waiting:
            self._waiting.remove(seq)
        else:
            held = self._held_siblings.get(seq.request_id, [])
            if seq in held:
                held.remove(seq)
                self._num_held -= 1
                if not held:
                    del self._held_siblings[seq.request_id]
        self.block_manager.free(seq)
        seq.status = status
        self._arrival.pop(seq.seq_id, None)
        seqs = self._requests.get(seq.request_id, [])
        if seqs and seqs[0] is seq:
            # A leader that ends before its prompt was cached must not strand its siblings.
            self._release_siblings(self._held_siblings.pop(seq.request_id, []))
        if all(s.is_finished for s in seqs):
            self._requests.pop(seq.request_id, None)

    def _release_siblings(self, siblings: list[SequenceState]) -> None:
        # They belong to an older request than most of the queue: serve them next.
        self._num_held -= len(siblings)
        self._waiting.extendleft(reversed(siblings))

    def _remove_running(self, seq: SequenceState) -> None:
        index = bisect.bisect_left(self._running, self._order_key(seq), key=self._order_key)
        if index >= len(self._running) or self._running[index] is not seq:
            raise RuntimeError(f"sequence {seq.seq_id} is not running")
        del self._running[index]
