"""Protocol models: validation ranges, forward compatibility, and no torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError
from ziggurat_core.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionRequest,
    ChoiceDelta,
    Completion,
    CompletionRequest,
    ErrorResponse,
    ModelList,
)


def test_protocol_import_does_not_import_torch() -> None:
    code = "import sys, ziggurat_core.protocol; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("temperature", 2.5),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("frequency_penalty", 2.1),
        ("presence_penalty", -2.1),
        ("n", 0),
        ("max_tokens", 0),
    ],
)
def test_request_ranges_are_enforced_with_field_named(field: str, value: float) -> None:
    body = {"prompt": "hi", field: value}
    with pytest.raises(ValidationError) as info:
        CompletionRequest.model_validate(body)
    assert field in str(info.value)


def test_request_accepts_boundaries() -> None:
    req = CompletionRequest.model_validate(
        {"prompt": "hi", "temperature": 2.0, "top_p": 1.0, "frequency_penalty": -2.0, "n": 1, "max_tokens": 1}
    )
    assert req.temperature == 2.0 and req.top_p == 1.0


def test_prompt_shapes_normalise() -> None:
    assert CompletionRequest(prompt="a").prompts() == ["a"]
    assert CompletionRequest(prompt=["a", "b"]).prompts() == ["a", "b"]
    assert CompletionRequest(prompt=[1, 2, 3]).prompts() == [[1, 2, 3]]
    assert CompletionRequest(prompt=[[1], [2, 3]]).prompts() == [[1], [2, 3]]
    with pytest.raises(ValidationError):
        CompletionRequest(prompt=[])


def test_chat_content_parts_and_max_completion_tokens() -> None:
    req = ChatCompletionRequest.model_validate(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]},
            ],
            "max_tokens": 5,
            "max_completion_tokens": 7,
        }
    )
    assert req.messages[1].text() == "Hello"
    assert req.messages[1].to_template_dict() == {"role": "user", "content": "Hello"}
    assert req.effective_max_tokens() == 7
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"messages": []})
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"messages": [{"role": "wizard", "content": "x"}]})


def test_responses_keep_unknown_fields() -> None:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "service_tier": "default",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hi", "refusal": None, "annotations": []},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2,
                  "prompt_tokens_details": {"cached_tokens": 0}},
    }
    parsed = ChatCompletion.model_validate(body)
    assert parsed.model_extra == {"service_tier": "default"}
    assert parsed.choices[0].message.model_extra == {"refusal": None, "annotations": []}
    assert parsed.usage is not None and parsed.usage.total_tokens == 2
    dumped = parsed.model_dump()
    assert dumped["service_tier"] == "default"


def test_chunk_usage_only_and_completion_and_lists() -> None:
    chunk = ChatCompletionChunk.model_validate(
        {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
         "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}
    )
    assert chunk.choices == [] and chunk.usage is not None and chunk.usage.completion_tokens == 4
    comp = Completion.model_validate(
        {"id": "x", "object": "text_completion", "created": 1, "model": "m",
         "choices": [{"index": 0, "text": "t", "finish_reason": "length", "logprobs": None}]}
    )
    assert comp.choices[0].finish_reason == "length"
    models = ModelList.model_validate({"object": "list", "data": [{"id": "a", "object": "model", "created": 0, "owned_by": "me"}]})
    assert models.data[0].id == "a"
    err = ErrorResponse.model_validate({"error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}})
    assert err.error.message == "bad"


def test_wire_json_sends_what_was_set_and_null_only_when_set() -> None:
    choice = ChatCompletionChunkChoice(index=0, delta=ChoiceDelta(content="hi"), logprobs=None,
                                       finish_reason=None)
    chunk = ChatCompletionChunk(id="c", object="chat.completion.chunk", created=1, model="m",
                                choices=[choice])
    assert json.loads(chunk.wire_json()) == {
        "id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"content": "hi"}, "logprobs": None,
                     "finish_reason": None}],
    }
    with_usage = ChatCompletionChunk(id="c", object="chat.completion.chunk", created=1, model="m",
                                     choices=[], usage=None)
    assert json.loads(with_usage.wire_json())["usage"] is None


def test_a_parsed_body_is_written_back_as_it_came() -> None:
    body = ('{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":'
            '[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},'
            '"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"x"}')
    assert ChatCompletionChunk.model_validate_json(body).wire_json() == body
