"""The response cache's bounds, expiry and key, without a server: an injected clock instead of
waiting, real prometheus counters."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from server_helpers import metric_value
from ziggurat_core.engine.sampling_params import SamplingParams
from ziggurat_core.protocol import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionMessage,
    ChatCompletionRequest,
)
from ziggurat_server.metrics import ServerMetrics
from ziggurat_server.response_cache import CachedResponse, ResponseCache
from ziggurat_server.response_caching import NOT_OUTPUT_FIELDS, RequestCaching, cache_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_cache(max_entries: int = 10, max_bytes: int = 1000, ttl_s: float = 60.0,
               ) -> tuple[ResponseCache, ServerMetrics, Clock]:
    metrics, clock = ServerMetrics(), Clock()
    return ResponseCache(max_entries, max_bytes, ttl_s, metrics.response_cache, clock), metrics, clock


def response(size: int) -> CachedResponse:
    return CachedResponse(("x" * size,))


def sample(metrics: ServerMetrics, name: str) -> float:
    return metric_value(metrics.render(None).decode(), name)


def test_a_stored_response_is_served_until_it_expires() -> None:
    cache, metrics, clock = make_cache(ttl_s=30.0)
    stored = response(10)
    assert cache.put("a", stored)
    clock.now += 29.9
    assert cache.get("a") is stored
    clock.now += 0.1
    assert cache.get("a") is None
    assert len(cache) == 0 and cache.nbytes == 0
    assert sample(metrics, 'ziggurat_response_cache_evictions_total{reason="expired"}') == 1
    assert sample(metrics, "ziggurat_response_cache_hits_total") == 1
    assert sample(metrics, "ziggurat_response_cache_misses_total") == 1


def test_storing_drops_expired_entries_first() -> None:
    cache, metrics, clock = make_cache(max_entries=2, ttl_s=30.0)
    cache.put("old", response(10))
    clock.now += 31
    cache.put("b", response(10))
    cache.put("c", response(10))  # room without evicting a live entry: "old" had expired
    assert cache.get("b") is not None and cache.get("c") is not None
    assert sample(metrics, 'ziggurat_response_cache_evictions_total{reason="expired"}') == 1
    assert sample(metrics, 'ziggurat_response_cache_evictions_total{reason="capacity"}') == 0


def test_the_entry_bound_evicts_the_least_recently_served() -> None:
    cache, metrics, _ = make_cache(max_entries=2)
    cache.put("a", response(10))
    cache.put("b", response(10))
    assert cache.get("a") is not None  # now "b" is the least recently served
    cache.put("c", response(10))
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None
    assert sample(metrics, 'ziggurat_response_cache_evictions_total{reason="capacity"}') == 1
    assert sample(metrics, "ziggurat_response_cache_entries") == 2


def test_the_byte_bound_evicts_until_the_new_entry_fits() -> None:
    cache, metrics, _ = make_cache(max_bytes=100)
    for key in ("a", "b", "c"):
        cache.put(key, response(30))
    assert cache.nbytes == 90
    cache.put("d", response(50))  # needs 40 more bytes than are free: "a" and "b" go
    assert [cache.get(k) is not None for k in ("a", "b", "c", "d")] == [False, False, True, True]
    assert cache.nbytes == 80
    assert sample(metrics, "ziggurat_response_cache_bytes") == 80
    assert sample(metrics, 'ziggurat_response_cache_evictions_total{reason="capacity"}') == 2


def test_a_response_larger_than_the_cache_is_not_stored() -> None:
    cache, _, _ = make_cache(max_bytes=100)
    cache.put("a", response(60))
    assert not cache.put("big", response(101))
    assert cache.get("a") is not None and cache.get("big") is None


def test_replacing_an_entry_is_not_an_eviction() -> None:
    cache, metrics, _ = make_cache()
    cache.put("a", response(10))
    newer = response(20)
    cache.put("a", newer)
    assert cache.get("a") is newer and cache.nbytes == 20
    assert sample(metrics, 'ziggurat_response_cache_evictions_total{reason="capacity"}') == 0


def test_bytes_count_utf8() -> None:
    assert CachedResponse(("é", "ab")).nbytes == 4


def _changed(value: Any) -> Any:
    """A different value of roughly the same kind (validation is not the point here)."""
    if value is None:
        return 1
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, list):
        return [*value, "1"]
    if isinstance(value, dict):
        return {**value, 1: 1.0}
    return f"{value!r} changed"


REQUEST = ChatCompletionRequest.model_validate(
    {"messages": [{"role": "user", "content": "hi"}], "temperature": 0})


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(SamplingParams)])
def test_every_sampling_parameter_is_part_of_the_key(name: str) -> None:
    params = SamplingParams(temperature=0.0)
    key = cache_key("chat", "tiny", [[1, 2, 3]], params, REQUEST)
    setattr(params, name, _changed(getattr(params, name)))
    assert cache_key("chat", "tiny", [[1, 2, 3]], params, REQUEST) != key


def test_request_fields_shape_the_key_unless_listed_as_bookkeeping() -> None:
    params = SamplingParams(temperature=0.0)
    key = cache_key("chat", "tiny", [[1, 2, 3]], params, REQUEST)
    for field, value in {"tools": [{"type": "function", "function": {"name": "f"}}],
                         "response_format": {"type": "json_object"}, "stream": True,
                         "some_future_field": 1}.items():
        changed = REQUEST.model_validate({**REQUEST.model_dump(), field: value})
        assert cache_key("chat", "tiny", [[1, 2, 3]], params, changed) != key, field
    for field in NOT_OUTPUT_FIELDS:
        value = True if field in ("cache", "store") else "x"
        changed = REQUEST.model_validate({**REQUEST.model_dump(), field: value})
        assert cache_key("chat", "tiny", [[1, 2, 3]], params, changed) == key, field
    assert cache_key("chat", "tiny", [[1, 2, 4]], params, REQUEST) != key
    assert cache_key("completions", "tiny", [[1, 2, 3]], params, REQUEST) != key
    assert cache_key("chat", "other", [[1, 2, 3]], params, REQUEST) != key


def body_finishing(reason: str) -> ChatCompletion:
    choice = ChatCompletionChoice(message=ChatCompletionMessage(content="x"), finish_reason=reason)
    return ChatCompletion(id="chatcmpl-1", created=1, model="tiny", choices=[choice])


def test_a_response_cut_short_by_an_abort_is_not_kept() -> None:
    cache, _, _ = make_cache()
    caching = RequestCaching(cache, "key")
    assert caching.keep_body(body_finishing("abort")).cached is False
    assert len(cache) == 0
    caching.keep_body(body_finishing("stop"))
    assert len(cache) == 1


def test_an_unreproducible_request_is_never_kept() -> None:
    cache, _, _ = make_cache()
    assert RequestCaching(cache, None).keep_body(body_finishing("stop")).cached is False
    assert len(cache) == 0
