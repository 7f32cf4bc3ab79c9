"""Streamed outputs sent every N engine steps instead of every step (`EngineConfig.
stream_interval`, vLLM's `--stream-interval`). No torch.

Each step's `RequestOutput` carries the deltas since the previous one. A paced stream sends its
first output at once (the time to the first token does not change), its last one at once (the
finish reason, and whatever text a stop string let through), and in between only on steps
whose number is a multiple of N; an output held back is merged into the next one, so the
deltas that go out add up to exactly what the engine produced, token by token, logprobs
included.

Why steps and not each stream's own token count: every stream of an engine then flushes on the
same step, so a replica's outputs travel as one Ray item every N steps and a server's event
loop wakes once for all of them; counted per stream, the flushes of streams that started at
different times would fall on every step and save only the per-stream work. A decoding stream
gains one token per step, so its chunks hold N tokens (the one after the first may hold fewer).
"""

from __future__ import annotations

from collections.abc import Callable

from .outputs import RequestOutput

# Where a request's outputs go, called on the engine's loop thread: each output, or the error
# ending it.
OutputSink = Callable[[RequestOutput | BaseException], None]


def merge_into(later: RequestOutput, earlier: RequestOutput) -> RequestOutput:
    """`later` with `earlier`'s deltas in front of its own: what one output after both steps
    would have said. Changes `later` in place (the engine made it for this one delivery)."""
    held = {completion.index: completion for completion in earlier.outputs}
    for completion in later.outputs:
        before = held.get(completion.index)
        if before is None:
            continue
        completion.delta_text = before.delta_text + completion.delta_text
        completion.delta_token_ids = [*before.delta_token_ids, *completion.delta_token_ids]
        if before.delta_logprobs is not None or completion.delta_logprobs is not None:
            completion.delta_logprobs = [*(before.delta_logprobs or []),
                                         *(completion.delta_logprobs or [])]
    return later


class PacedStream:
    """One request's way to its consumer: `push` each output the engine makes for it, with
    whether this step is one that sends."""

    def __init__(self, deliver: OutputSink) -> None:
        self.deliver = deliver
        self._held: RequestOutput | None = None
        self._started = False  # its first output went out

    def push(self, output: RequestOutput, sending_step: bool) -> None:
        if self._held is not None:
            output = merge_into(output, self._held)
            self._held = None
        if sending_step or output.finished or not self._started:
            self._started = True
            self.deliver(output)
        else:
            self._held = output

    def fail(self, error: BaseException) -> None:
        """End the stream with an error (what was held back is dropped with the request)."""
        self._held = None
        self.deliver(error)
