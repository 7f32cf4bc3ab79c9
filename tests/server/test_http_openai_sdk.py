"""The official openai SDK, unchanged, against the server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest


@pytest.fixture()
def sdk(tiny_server: Any) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{tiny_server.base_url}/v1", api_key="not-needed",
                       max_retries=0) as client:
        yield client


def test_models(sdk: openai.OpenAI) -> None:
    models = sdk.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    model = sdk.models.retrieve("tiny")
    assert model.id == "tiny" and model.object == "model"


def test_completion(sdk: openai.OpenAI) -> None:
    completion = sdk.completions.create(model="tiny", prompt="Hello", max_tokens=4,
                                        temperature=0, extra_body={"ignore_eos": True})
    assert completion.object == "text_completion"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 4


def test_chat(sdk: openai.OpenAI) -> None:
    response = sdk.chat.completions.create(
        model="tiny", messages=[{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Hi"}],
        max_completion_tokens=3, extra_body={"ignore_eos": True})
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].finish_reason == "length"
    assert response.usage is not None and response.usage.completion_tokens == 3


def test_chat_streaming_with_usage(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
        temperature=0, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert chunks[-2].choices[0].finish_reason == "length"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = sdk.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
        temperature=0, extra_body={"ignore_eos": True})
    assert streamed == whole.choices[0].message.content


def test_completion_streaming(sdk: openai.OpenAI) -> None:
    stream = sdk.completions.create(model="tiny", prompt="Hello", max_tokens=4, stream=True,
                                    extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_sdk_error_types(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        sdk.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.completions.create(model="tiny", prompt="x", temperature=3)
    assert "temperature" in bad.value.message


def test_cache_and_timings_through_the_sdk(sdk: openai.OpenAI) -> None:
    """`cache` travels in extra_body; `cached` and `timings` arrive as the SDK's extra fields."""
    request: dict[str, Any] = {
        "model": "tiny", "messages": [{"role": "user", "content": "cache me through the SDK"}],
        "max_tokens": 3, "temperature": 0, "extra_body": {"ignore_eos": True, "cache": True}}
    first = sdk.chat.completions.create(**request)
    again = sdk.chat.completions.create(**request)
    assert (first.model_extra or {})["cached"] is False
    assert (again.model_extra or {})["cached"] is True
    assert again.choices[0].message.content == first.choices[0].message.content
    timings = (again.model_extra or {})["timings"]
    assert timings["predicted_n"] == 3
    assert first.usage is not None and first.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == timings["cache_n"]
    with pytest.raises(openai.BadRequestError, match="prediction"):
        sdk.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                    prediction={"type": "content", "content": "Hi"})


def test_a_returned_message_goes_back_as_the_sdk_sends_it(sdk: openai.OpenAI) -> None:
    """The SDK's usual loop appends the response's message object to the conversation; a
    misspelt parameter in extra_body is refused by name rather than dropped."""
    messages: list[Any] = [{"role": "user", "content": "Hi"}]
    first = sdk.chat.completions.create(model="tiny", messages=messages, max_tokens=2)
    messages += [first.choices[0].message, {"role": "user", "content": "And again?"}]
    again = sdk.chat.completions.create(model="tiny", messages=messages, max_tokens=2)
    assert again.choices[0].message.role == "assistant"
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model="tiny", messages=messages, max_tokens=2,
                                    extra_body={"max_token": 2})
    assert bad.value.code == "unknown_parameter"
    assert bad.value.param == "max_token"
