"""Error responses become the right exception class with the server's own message."""

from __future__ import annotations

import pytest
import respx
from client_helpers import API, BASE, chat_completion_body
from ziggurat import (
    APIError,
    APIResponseValidationError,
    AuthenticationError,
    BadRequestError,
    Client,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    UnprocessableEntityError,
    ZigguratError,
)

MESSAGES = [{"role": "user", "content": "hi"}]


def openai_error(message: str, error_type: str = "invalid_request_error", **extra: object) -> dict:
    return {"error": {"message": message, "type": error_type, "param": None, "code": None, **extra}}


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, ConflictError),
        (422, UnprocessableEntityError),
        (429, RateLimitError),
        (500, InternalServerError),
        (502, InternalServerError),
        (503, InternalServerError),
        (418, APIError),
    ],
)
def test_status_maps_to_error_class_with_server_message(
    status: int, error_class: type[APIError]
) -> None:
    message = f"server says {status}: prompt is 9000 tokens, the limit is 2048"
    with respx.mock(base_url=API) as router:
        router.post("/chat/completions").respond(status, json=openai_error(message))
        client = Client(base_url=BASE, max_retries=0)
        with pytest.raises(error_class) as caught:
            client.chat.completions.create("tiny", MESSAGES)
    error = caught.value
    assert type(error) is error_class
    assert isinstance(error, ZigguratError)
    assert error.message == message
    assert error.status_code == status
    assert error.body == openai_error(message)
    assert message in str(error)


def test_error_fields_type_code_and_param_are_kept() -> None:
    body = {
        "error": {
            "message": "'temperature' must be <= 2",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "invalid_value",
        }
    }
    with respx.mock(base_url=API) as router:
        router.post("/chat/completions").respond(400, json=body)
        with pytest.raises(BadRequestError) as caught:
            Client(base_url=BASE).chat.completions.create("tiny", MESSAGES, temperature=5)
    assert (caught.value.type, caught.value.code, caught.value.param) == (
        "invalid_request_error",
        "invalid_value",
        "temperature",
    )


def test_fastapi_detail_string_is_the_message() -> None:
    with respx.mock(base_url=API) as router:
        router.get("/models/nope").respond(404, json={"detail": "model 'nope' not found"})
        with pytest.raises(NotFoundError, match="model 'nope' not found"):
            Client(base_url=BASE).models.get("nope")


def test_fastapi_validation_detail_list_is_readable() -> None:
    detail = [{"loc": ["body", "messages"], "msg": "Field required", "type": "missing"}]
    with respx.mock(base_url=API) as router:
        router.post("/chat/completions").respond(422, json={"detail": detail})
        with pytest.raises(UnprocessableEntityError) as caught:
            Client(base_url=BASE).chat.completions.create("tiny", MESSAGES)
    assert caught.value.message == "body.messages: Field required"


def test_plain_text_error_body_is_the_message() -> None:
    with respx.mock(base_url=API) as router:
        router.post("/chat/completions").respond(502, text="Bad gateway from the proxy")
        with pytest.raises(InternalServerError) as caught:
            Client(base_url=BASE, max_retries=0).chat.completions.create("tiny", MESSAGES)
    assert caught.value.message == "Bad gateway from the proxy"
    assert caught.value.body == "Bad gateway from the proxy"


def test_empty_error_body_falls_back_to_the_status_line() -> None:
    with respx.mock(base_url=API) as router:
        router.post("/chat/completions").respond(403)
        with pytest.raises(PermissionDeniedError) as caught:
            Client(base_url=BASE).chat.completions.create("tiny", MESSAGES)
    assert caught.value.message == "HTTP 403 Forbidden"


def test_request_id_is_the_servers_echo_or_ours() -> None:
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions")
        route.respond(400, json=openai_error("bad"), headers={"X-Request-Id": "srv-42"})
        with pytest.raises(BadRequestError) as from_server:
            Client(base_url=BASE).chat.completions.create("tiny", MESSAGES)
        route.respond(400, json=openai_error("bad"))
        with pytest.raises(BadRequestError) as ours:
            Client(base_url=BASE).chat.completions.create("tiny", MESSAGES)
    assert from_server.value.request_id == "srv-42"
    sent_id = route.calls.last.request.headers["X-Request-Id"]
    assert ours.value.request_id == sent_id


def test_rate_limit_error_carries_retry_after() -> None:
    with respx.mock(base_url=API) as router:
        router.post("/chat/completions").respond(
            429, json=openai_error("slow down", "rate_limit_error"), headers={"Retry-After": "7"}
        )
        with pytest.raises(RateLimitError) as caught:
            Client(base_url=BASE, max_retries=0).chat.completions.create("tiny", MESSAGES)
    assert caught.value.retry_after == 7.0
    assert caught.value.message == "slow down"


def test_success_body_of_the_wrong_shape_raises_validation_error() -> None:
    with respx.mock(base_url=API) as router:
        router.post("/chat/completions").respond(200, json={"unexpected": True})
        with pytest.raises(APIResponseValidationError) as caught:
            Client(base_url=BASE).chat.completions.create("tiny", MESSAGES)
    assert caught.value.body == {"unexpected": True}


def test_success_body_that_is_not_json_raises_validation_error() -> None:
    with respx.mock(base_url=API) as router:
        router.post("/chat/completions").respond(200, text="<html>proxy login</html>")
        with pytest.raises(APIResponseValidationError):
            Client(base_url=BASE).chat.completions.create("tiny", MESSAGES)


def test_error_is_not_raised_for_success() -> None:
    with respx.mock(base_url=API) as router:
        router.post("/chat/completions").respond(200, json=chat_completion_body("fine"))
        reply = Client(base_url=BASE).chat.completions.create("tiny", MESSAGES)
    assert reply.choices[0].message.content == "fine"
