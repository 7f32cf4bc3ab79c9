"""Request fields Ziggurat does not implement get a 400 naming the field: OpenAI's with the
reason, any other undeclared field (a vendor extension, a misspelling) as OpenAI answers it. The
bookkeeping fields that cannot change a response, and response fields on a message sent back,
are accepted; the OpenAPI document says the same."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
COMPLETION = {"model": "tiny", "prompt": "Hi", "max_tokens": 1}

REFUSED: list[tuple[str, Any]] = [
    ("audio", {"voice": "alloy", "format": "wav"}),
    ("modalities", ["text", "audio"]),
    ("modalities", ["audio"]),
    ("prediction", {"type": "content", "content": "Hello"}),
    ("web_search_options", {}),
    ("reasoning_effort", "low"),
    ("verbosity", "low"),
    ("store", True),
    ("service_tier", "flex"),
    ("prompt_logprobs", 1),
]
ACCEPTED: list[tuple[str, Any]] = [
    ("modalities", ["text"]),
    ("store", False),
    ("service_tier", "auto"),
    ("service_tier", "default"),
    ("metadata", {"team": "search"}),
    ("user", "user-1"),
    ("safety_identifier", "hash-1"),
    ("prompt_cache_key", "conversation-1"),
    ("audio", None),  # null is "not given", as the openai SDK means it
]


@pytest.mark.parametrize("path, base", [("/v1/chat/completions", CHAT),
                                        ("/v1/completions", COMPLETION)], ids=["chat", "legacy"])
@pytest.mark.parametrize("field, value", REFUSED, ids=[f"{f}={v}" for f, v in REFUSED])
def test_unimplemented_fields_are_refused_by_name(client: httpx.Client, path: str,
                                                  base: dict[str, Any], field: str,
                                                  value: Any) -> None:
    response = client.post(path, json={**base, field: value})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == field
    assert error["code"] == "unsupported_parameter"
    assert error["message"].startswith(f"{field}: ")


@pytest.mark.parametrize("field, value", ACCEPTED, ids=[f"{f}={v}" for f, v in ACCEPTED])
def test_bookkeeping_fields_are_accepted(client: httpx.Client, field: str, value: Any) -> None:
    response = client.post("/v1/chat/completions", json={**CHAT, field: value})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("part", [
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    {"type": "file", "file": {"file_id": "file-1"}},
], ids=lambda part: part["type"])
def test_non_text_content_parts_are_refused_by_type(client: httpx.Client,
                                                    part: dict[str, Any]) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, part]}]
    response = client.post("/v1/chat/completions", json={**CHAT, "messages": messages})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "messages.0.content"
    assert f"{part['type']} content parts are not supported" in error["message"]


# Vendor extensions of other servers and misspellings: each would otherwise change nothing.
UNKNOWN: list[tuple[str, Any]] = [
    ("skip_special_tokens", False),  # vLLM
    ("n_predict", 8),  # llama.cpp's max_tokens
    ("grammar", "root ::= \"a\""),  # llama.cpp
    ("max_token", 8),  # misspelt
    ("stop_sequences", ["x"]),
    ("temperature_", 0),
    ("extra", {}),
    ("flag", False),  # a false value is still a value
]


@pytest.mark.parametrize("path, base", [("/v1/chat/completions", CHAT),
                                        ("/v1/completions", COMPLETION)], ids=["chat", "legacy"])
@pytest.mark.parametrize("field, value", UNKNOWN, ids=[f for f, _ in UNKNOWN])
def test_unknown_fields_are_refused_by_name(client: httpx.Client, path: str,
                                            base: dict[str, Any], field: str, value: Any) -> None:
    response = client.post(path, json={**base, field: value})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == {
        "message": f"Unrecognized request argument supplied: {field}",
        "type": "invalid_request_error", "param": field, "code": "unknown_parameter"}


@pytest.mark.parametrize("path, body, param", [
    ("/tokenize", {"prompt": "Hi", "return_token_strs": True}, "return_token_strs"),
    ("/tokenize", {"prompt": "Hi", "metadata": {"a": "b"}}, "metadata"),  # no platform fields
    ("/detokenize", {"tokens": [1, 2], "skip_special_tokens": False}, "skip_special_tokens"),
], ids=["tokenize", "tokenize-metadata", "detokenize"])
def test_unknown_fields_are_refused_on_the_tokenizer_routes(client: httpx.Client, path: str,
                                                            body: dict[str, Any],
                                                            param: str) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


@pytest.mark.parametrize("extra, param", [
    ({"stream": True, "stream_options": {"include_usage": True,
                                         "continuous_usage_stats": True}},
     "stream_options.continuous_usage_stats"),
    ({"structured_outputs": {"structural_tag": "{}"}}, "structured_outputs.structural_tag"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object"}, "strict": True, "mode": "fast"}}},
     "response_format.json_schema.mode"),
    ({"tools": [TOOL, {**TOOL, "cache_control": {"type": "ephemeral"}}]}, "tools.1.cache_control"),
    ({"tools": [{"type": "function", "function": {"name": "f", "returns": "int"}}]},
     "tools.0.function.returns"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi",
                                                 "cache_control": {"type": "ephemeral"}}]}]},
     "messages.0.content.0.cache_control"),
], ids=["stream_options", "structured_outputs", "json_schema", "tool", "function", "part"])
def test_unknown_nested_fields_are_refused_by_path(client: httpx.Client, extra: dict[str, Any],
                                                   param: str) -> None:
    response = client.post("/v1/chat/completions", json={**CHAT, **extra})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["message"] == f"Unrecognized request argument supplied: {param}"


def test_unknown_fields_given_as_null_are_not_given(client: httpx.Client) -> None:
    body = {**CHAT, "chat_template_kwargs": None, "stream_options": {"extra": None},
            "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.read().endswith(b"data: [DONE]\n\n")


def test_a_conversation_sent_back_may_carry_response_fields(client: httpx.Client) -> None:
    """An assistant turn sent back as a response returned it keeps `refusal`, `annotations`
    and the like; they say what was answered, not what to do."""
    answer = {"role": "assistant", "content": "Hello", "refusal": "", "annotations": [],
              "reasoning_content": "greet back", "audio": None, "function_call": None}
    messages = [{"role": "user", "content": "Hi"}, answer, {"role": "user", "content": "Again"}]
    response = client.post("/v1/chat/completions", json={**CHAT, "messages": messages})
    assert response.status_code == 200, response.text


def test_the_openapi_document_says_which_fields_are_accepted(client: httpx.Client) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    only_null = {"type": "null"}
    for name in ("ChatCompletionRequest", "CompletionRequest", "TokenizeRequest",
                 "DetokenizeRequest", "StreamOptions", "ResponseFormat", "JSONSchemaFormat",
                 "StructuredOutputsOptions", "ChatCompletionTool", "FunctionDefinition",
                 "TextContentPart", "ToolCallParam"):
        assert schemas[name]["additionalProperties"] == only_null, name
    assert schemas["ChatMessage"].get("additionalProperties", True) is True
    chat = schemas["ChatCompletionRequest"]["properties"]
    assert {"metadata", "safety_identifier", "prompt_cache_key", "store", "service_tier",
            "modalities"} <= set(chat)
    assert chat["store"] == {"enum": [False, None]}
    assert not {"metadata", "store"} & set(schemas["TokenizeRequest"]["properties"])
