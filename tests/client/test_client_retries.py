"""Retries: which failures retry, how long between attempts, and the headers of each attempt."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
import respx
from client_helpers import API, BASE, TrackedStream, chat_chunk, chat_completion_body, sse
from ziggurat import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    BadRequestError,
    Client,
    InternalServerError,
    RateLimitError,
    _retry,
)
from ziggurat._retry import RetryPolicy, parse_retry_after

MESSAGES = [{"role": "user", "content": "hi"}]


def error_response(status: int, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(
        status, json={"error": {"message": f"failure {status}"}}, headers=headers or {}
    )


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried(status: int) -> None:
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions")
        route.side_effect = [
            error_response(status),
            httpx.Response(200, json=chat_completion_body()),
        ]
        reply = Client(base_url=BASE).chat.completions.create("tiny", MESSAGES)
    assert reply.choices[0].message.content == "Hello!"
    assert route.call_count == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_not_retried(status: int) -> None:
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions")
        route.side_effect = [
            error_response(status),
            httpx.Response(200, json=chat_completion_body()),
        ]
        with pytest.raises(Exception) as caught:
            Client(base_url=BASE).chat.completions.create("tiny", MESSAGES)
    assert caught.value.status_code == status  # type: ignore[attr-defined]
    assert route.call_count == 1


@pytest.mark.parametrize(
    ("status", "should_retry", "expected_calls"),
    [(503, "false", 1), (400, "true", 2), (500, "maybe", 2)],
)
def test_server_can_override_the_retry_decision(
    status: int, should_retry: str, expected_calls: int
) -> None:
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions")
        route.side_effect = [
            error_response(status, {"X-Should-Retry": should_retry}),
            httpx.Response(200, json=chat_completion_body()),
        ]
        try:
            Client(base_url=BASE).chat.completions.create("tiny", MESSAGES)
        except APIError as error:
            assert error.status_code == status
    assert route.call_count == expected_calls


def test_gives_up_after_max_retries_with_the_last_error(sleeps: list[float]) -> None:
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions").mock(return_value=error_response(503))
        with pytest.raises(InternalServerError, match="failure 503"):
            Client(base_url=BASE, max_retries=2).chat.completions.create("tiny", MESSAGES)
    assert route.call_count == 3
    assert len(sleeps) == 2


def test_max_retries_zero_makes_one_attempt(sleeps: list[float]) -> None:
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions").mock(return_value=error_response(500))
        with pytest.raises(InternalServerError):
            Client(base_url=BASE, max_retries=0).chat.completions.create("tiny", MESSAGES)
    assert route.call_count == 1
    assert sleeps == []


def test_with_options_overrides_max_retries() -> None:
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions").mock(return_value=error_response(500))
        client = Client(base_url=BASE, max_retries=5)
        with pytest.raises(InternalServerError):
            client.with_options(max_retries=1).chat.completions.create("tiny", MESSAGES)
    assert route.call_count == 2


def test_connection_errors_are_retried_then_raised_as_api_connection_error() -> None:
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions").mock(side_effect=httpx.ConnectError("refused"))
        with pytest.raises(APIConnectionError) as caught:
            Client(base_url=BASE, max_retries=2).chat.completions.create("tiny", MESSAGES)
    assert not isinstance(caught.value, APITimeoutError)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert route.call_count == 3


def test_connection_error_then_success() -> None:
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions")
        route.side_effect = [
            httpx.RemoteProtocolError("server disconnected"),
            httpx.Response(200, json=chat_completion_body("recovered")),
        ]
        reply = Client(base_url=BASE).chat.completions.create("tiny", MESSAGES)
    assert reply.choices[0].message.content == "recovered"


@pytest.mark.parametrize(
    "timeout_error", [httpx.ReadTimeout, httpx.ConnectTimeout, httpx.PoolTimeout]
)
def test_timeouts_are_retried_then_raised_as_api_timeout_error(
    timeout_error: type[httpx.TimeoutException],
) -> None:
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions").mock(side_effect=timeout_error("too slow"))
        with pytest.raises(APITimeoutError) as caught:
            Client(base_url=BASE, max_retries=1).chat.completions.create("tiny", MESSAGES)
    assert isinstance(caught.value, APIConnectionError)
    assert route.call_count == 2


def test_request_id_is_stable_and_attempt_counter_increments() -> None:
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions")
        route.side_effect = [
            error_response(503),
            httpx.ConnectError("refused"),
            httpx.Response(200, json=chat_completion_body()),
        ]
        Client(base_url=BASE).chat.completions.create("tiny", MESSAGES)
    requests = [call.request for call in route.calls]
    request_ids = {request.headers["X-Request-Id"] for request in requests}
    assert len(request_ids) == 1
    assert [request.headers["X-Ziggurat-Attempt"] for request in requests] == ["1", "2", "3"]


def test_each_logical_request_gets_a_new_request_id() -> None:
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions").respond(200, json=chat_completion_body())
        client = Client(base_url=BASE)
        client.chat.completions.create("tiny", MESSAGES)
        client.chat.completions.create("tiny", MESSAGES)
    first, second = (call.request.headers["X-Request-Id"] for call in route.calls)
    assert first != second


def test_callers_own_request_id_is_sent_on_every_attempt() -> None:
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions")
        route.side_effect = [error_response(500), httpx.Response(200, json=chat_completion_body())]
        Client(base_url=BASE).chat.completions.create(
            "tiny", MESSAGES, extra_headers={"X-Request-Id": "trace-123"}
        )
    assert [call.request.headers["X-Request-Id"] for call in route.calls] == ["trace-123"] * 2


def test_backoff_grows_exponentially_with_jitter(sleeps: list[float]) -> None:
    with respx.mock(base_url=API) as router:
        router.post("/chat/completions").mock(return_value=error_response(500))
        with pytest.raises(InternalServerError):
            Client(base_url=BASE, max_retries=6).chat.completions.create("tiny", MESSAGES)
    # Nominal waits 0.5, 1, 2, 4, 8, 8 (capped); jitter keeps each in [half, full].
    nominal = [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert len(sleeps) == len(nominal)
    for waited, full in zip(sleeps, nominal, strict=True):
        assert full / 2 <= waited <= full


def test_jitter_varies_the_waits() -> None:
    policy = RetryPolicy(max_retries=3)
    assert len({policy.delay_s(3) for _ in range(20)}) > 1


def test_retry_after_seconds_is_honoured(sleeps: list[float]) -> None:
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions")
        route.side_effect = [
            error_response(429, {"Retry-After": "3"}),
            error_response(503, {"Retry-After": "1.5"}),
            httpx.Response(200, json=chat_completion_body()),
        ]
        Client(base_url=BASE).chat.completions.create("tiny", MESSAGES)
    assert sleeps == [3.0, 1.5]


def test_retry_after_is_capped(sleeps: list[float]) -> None:
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions")
        route.side_effect = [
            error_response(429, {"Retry-After": "3600"}),
            httpx.Response(200, json=chat_completion_body()),
        ]
        Client(base_url=BASE).chat.completions.create("tiny", MESSAGES)
    assert sleeps == [RetryPolicy(max_retries=1).max_retry_after_s]
    assert sleeps[0] < 3600


def test_retry_after_http_date_is_honoured(
    sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    monkeypatch.setattr(_retry, "utc_now", lambda: now)
    retry_at = format_datetime(now + timedelta(seconds=30), usegmt=True)
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions")
        route.side_effect = [
            error_response(503, {"Retry-After": retry_at}),
            httpx.Response(200, json=chat_completion_body()),
        ]
        Client(base_url=BASE).chat.completions.create("tiny", MESSAGES)
    assert sleeps == [30.0]


def test_retry_after_exhausted_raises_rate_limit_error(sleeps: list[float]) -> None:
    with respx.mock(base_url=API) as router:
        router.post("/chat/completions").mock(
            return_value=error_response(429, {"Retry-After": "2"})
        )
        with pytest.raises(RateLimitError) as caught:
            Client(base_url=BASE, max_retries=2).chat.completions.create("tiny", MESSAGES)
    assert caught.value.retry_after == 2.0
    assert sleeps == [2.0, 2.0]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "5"}, 5.0),
        ({"retry-after": "0.25"}, 0.25),
        ({"Retry-After": "-3"}, 0.0),
        ({"retry-after-ms": "1500", "Retry-After": "9"}, 1.5),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"}, 10.0),
        ({"Retry-After": "Wed, 21 Oct 2015 07:27:00 GMT"}, 0.0),
        ({"Retry-After": "soon"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert parse_retry_after(headers, now=now) == expected


def test_retry_policy_rejects_negative_retries() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        Client(base_url=BASE, max_retries=-1)


def test_stream_is_retried_before_it_yields() -> None:
    body = sse(chat_chunk("ok"), "[DONE]")
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions")
        route.side_effect = [error_response(503), httpx.Response(200, content=body)]
        stream = Client(base_url=BASE).chat.completions.create("tiny", MESSAGES, stream=True)
        contents = [chunk.choices[0].delta.content for chunk in stream]
    assert contents == ["ok"]
    assert route.call_count == 2


def test_stream_is_never_retried_once_it_has_yielded(sleeps: list[float]) -> None:
    body = TrackedStream([sse(chat_chunk("first")), sse(chat_chunk("second"))], fail_after=1)
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions").mock(return_value=httpx.Response(200, stream=body))
        stream = Client(base_url=BASE).chat.completions.create("tiny", MESSAGES, stream=True)
        received = []
        with pytest.raises(APIConnectionError):
            for chunk in stream:
                received.append(chunk.choices[0].delta.content)
    assert received == ["first"]
    assert route.call_count == 1
    assert sleeps == []
    assert body.closed


def test_logs_each_request_and_retry_without_the_api_key(caplog: pytest.LogCaptureFixture) -> None:
    secret = "sk-very-secret-key-123"
    caplog.set_level(logging.DEBUG, logger="ziggurat")
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions")
        route.side_effect = [error_response(503), httpx.Response(200, json=chat_completion_body())]
        Client(base_url=BASE, api_key=secret).chat.completions.create("tiny", MESSAGES)
    records = [record for record in caplog.records if record.name == "ziggurat"]
    messages = [record.getMessage() for record in records]
    assert all(record.levelno == logging.DEBUG for record in records)
    assert sum("attempt=" in message for message in messages) == 2
    assert sum("retrying" in message for message in messages) == 1
    assert all(secret not in message for message in messages)
    assert route.calls.last.request.headers["Authorization"] == f"Bearer {secret}"


def test_bad_request_is_raised_immediately_even_with_retry_after(sleeps: list[float]) -> None:
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions").mock(
            return_value=error_response(400, {"Retry-After": "1"})
        )
        with pytest.raises(BadRequestError):
            Client(base_url=BASE).chat.completions.create("tiny", MESSAGES)
    assert route.call_count == 1
    assert sleeps == []
