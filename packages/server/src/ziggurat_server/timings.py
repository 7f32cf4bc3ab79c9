"""A response's `timings`, from the engine's per-request metrics (see protocol/timings.py)."""

from __future__ import annotations

from ziggurat_core.engine.outputs import RequestOutput
from ziggurat_core.protocol import Timings


def _ms(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start) * 1000.0, 3)


def _rates(count: int, ms: float | None) -> tuple[float | None, float | None]:
    """(milliseconds per token, tokens per second); None without tokens or time to divide."""
    if ms is None or ms <= 0.0 or count <= 0:
        return None, None
    return round(ms / count, 3), round(count * 1000.0 / ms, 3)


def timings_of(outputs: list[RequestOutput]) -> Timings:
    """The timings of one response made of these engine requests (their latest outputs), timed
    as one job: its earliest arrival, first scheduled step and first token, its last token."""
    metrics = [output.metrics for output in outputs if output.metrics is not None]
    arrival = min((m.arrival_time for m in metrics), default=None)
    scheduled = min((m.first_scheduled_time for m in metrics if m.first_scheduled_time is not None),
                    default=None)
    first_token = min((m.first_token_time for m in metrics if m.first_token_time is not None),
                      default=None)
    finished_times = [m.finished_time for m in metrics]
    finished = (max(t for t in finished_times if t is not None)
                if metrics and None not in finished_times else None)

    cache_n = sum(output.num_cached_tokens for output in outputs)
    prompt_n = sum(len(output.prompt_token_ids) for output in outputs) - cache_n
    predicted_n = sum(len(c.token_ids) for output in outputs for c in output.outputs)
    prompt_ms = _ms(scheduled, first_token)
    predicted_ms = _ms(first_token, finished)
    prompt_per_token_ms, prompt_per_second = _rates(prompt_n, prompt_ms)
    # The first token came out of the prompt's step; the decode rate counts the ones after it.
    predicted_per_token_ms, predicted_per_second = _rates(predicted_n - 1, predicted_ms)
    return Timings(
        prompt_n=prompt_n, prompt_ms=prompt_ms, prompt_per_token_ms=prompt_per_token_ms,
        prompt_per_second=prompt_per_second,
        predicted_n=predicted_n, predicted_ms=predicted_ms,
        predicted_per_token_ms=predicted_per_token_ms, predicted_per_second=predicted_per_second,
        cache_n=cache_n, queue_ms=_ms(arrival, scheduled), ttft_ms=_ms(arrival, first_token),
        total_ms=_ms(arrival, finished),
    )
