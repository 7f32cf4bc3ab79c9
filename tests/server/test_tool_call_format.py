"""The chat answer and stream chunks built from a constrained request's outputs, token by token.

Runs today, without an engine that enforces grammars: the outputs are what the engine's contract
promises (cumulative text and the grammar's captures in every output), made here by feeding
hand-written answers through llguidance's own matcher over SmolLM2's tokenizer. The stream is
rebuilt by the openai SDK's own accumulator and must equal the non-streamed answer.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import llguidance
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk as SdkChunk
from ziggurat_core.engine.outputs import CompletionOutput, RequestOutput
from ziggurat_core.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionTool,
    FunctionDefinition,
)
from ziggurat_core.tools import plan_tools, tool_call_grammar
from ziggurat_core.tools.plan import ToolPlan
from ziggurat_server.chat_format import ChatChunker, chat_completion_body
from ziggurat_server.response_meta import ResponseMeta

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
from test_http_wire_models import strict_parse  # noqa: E402
from test_tokenizer import smollm2_metadata  # noqa: E402
from ziggurat_core.engine.gguf_tokenizer import build_gguf_tokenizer  # noqa: E402

TOOLS = [ChatCompletionTool(function=FunctionDefinition(name="get_weather", parameters={
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}))]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa</tool_call>ris"}}\n</tool_call>'


@pytest.fixture(scope="module")
def smollm2() -> Any:
    return build_gguf_tokenizer(smollm2_metadata())


def engine_outputs(parts: Any, plan: ToolPlan, answer: str, finish_reason: str
                   ) -> list[RequestOutput]:
    """One RequestOutput per token, as the engine streams them, captures from the matcher."""
    grammar = tool_call_grammar(plan)
    assert grammar is not None
    eos = parts.eos_token_ids[0]
    matcher = llguidance.LLMatcher(llguidance.LLTokenizer(parts.backend.to_str(), eos_token=eos),
                                   grammar, log_level=0)
    ids = parts.backend.encode(answer, add_special_tokens=False).ids
    outputs, text = [], ""
    for position, token in enumerate(ids):
        assert matcher.consume_token(token), answer
        new_text = parts.backend.decode(ids[:position + 1])
        last = position == len(ids) - 1
        captures = [(name, value.decode()) for name, value in matcher.get_captures()]
        completion = CompletionOutput(
            index=0, text=new_text, token_ids=ids[:position + 1],
            finish_reason=finish_reason if last else None, delta_text=new_text[len(text):],
            delta_token_ids=[token], captures=captures)
        text = new_text
        outputs.append(RequestOutput("r", None, [1, 2, 3], [completion], finished=last))
    return outputs


def answer_and_stream(parts: Any, plan: ToolPlan, answer: str, finish_reason: str = "stop"
                      ) -> tuple[dict[str, Any], list[dict[str, Any]], Any]:
    outputs = engine_outputs(parts, plan, answer, finish_reason)
    meta = ResponseMeta("chatcmpl", "m", 1)
    body_json = chat_completion_body(meta, [outputs[-1]], plan).wire_json()
    strict_parse(ChatCompletion, body_json)  # the client's models declare every field sent
    body = json.loads(body_json)
    chunker = ChatChunker(meta, plan)
    chunks = [*chunker.role_chunks(1)]
    for output in outputs:
        chunks.extend(chunker.output_chunks(0, output))
    wire = [json.loads(strict_parse(ChatCompletionChunk, chunk.wire_json()).model_dump_json(
        exclude_unset=True)) for chunk in chunks]
    state: ChatCompletionStreamState[None] = ChatCompletionStreamState()
    for chunk in wire:
        state.handle_chunk(SdkChunk.model_validate(chunk))
    return body, wire, state.current_completion_snapshot


def test_required_call_answer_and_stream_agree(smollm2: Any) -> None:
    plan = plan_tools(TOOLS, "required")
    body, wire, accumulated = answer_and_stream(smollm2, plan, CALL)
    [choice] = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather",
                                "arguments": '{"city": "Pa</tool_call>ris"}'}
    [streamed] = accumulated.choices
    assert streamed.finish_reason == "tool_calls"
    assert streamed.message.content is None
    [got] = streamed.message.tool_calls
    assert (got.function.name, got.function.arguments) == ("get_weather", call["function"]["arguments"])
    assert got.id.startswith("call_") and got.type == "function"
    # The markup never leaks: no content delta carries any of the call's text.
    assert all(not choice["delta"].get("content") for chunk in wire for choice in chunk["choices"])


def test_auto_text_then_parallel_calls(smollm2: Any) -> None:
    plan = plan_tools(TOOLS, "auto")
    second = CALL.replace("Pa</tool_call>ris", "Oslo")
    answer = "Checking <b>both</b> cities.\n" + CALL + "\n" + second
    body, wire, accumulated = answer_and_stream(smollm2, plan, answer)
    message = body["choices"][0]["message"]
    assert message["content"] == "Checking <b>both</b> cities.\n"
    assert [json.loads(c["function"]["arguments"])["city"] for c in message["tool_calls"]] == [
        "Pa</tool_call>ris", "Oslo"]
    streamed = accumulated.choices[0].message
    assert streamed.content == message["content"]
    assert [(c.function.name, c.function.arguments) for c in streamed.tool_calls] == [
        (c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]]
    indexes = [d["index"] for chunk in wire for choice in chunk["choices"]
               for d in choice["delta"].get("tool_calls", [])]
    assert indexes == [0, 0, 1, 1]


def test_auto_plain_text_is_all_content(smollm2: Any) -> None:
    plan = plan_tools(TOOLS, "auto")
    answer = "No tool needed: a < b and <tool is not a call."
    body, _, accumulated = answer_and_stream(smollm2, plan, answer)
    [choice] = body["choices"]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == answer and "tool_calls" not in choice["message"]
    assert accumulated.choices[0].message.content == answer


def test_a_call_cut_short_is_not_reported(smollm2: Any) -> None:
    plan = plan_tools(TOOLS, "auto")
    answer = 'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Ro'
    body, _, accumulated = answer_and_stream(smollm2, plan, answer, finish_reason="length")
    [choice] = body["choices"]
    assert choice["finish_reason"] == "length"
    assert choice["message"] == {"role": "assistant", "content": "Sure.\n"}
    assert accumulated.choices[0].message.content == "Sure.\n"
    assert not accumulated.choices[0].message.tool_calls


def test_legacy_functions_answer_with_function_call(smollm2: Any) -> None:
    plan = plan_tools(functions=[TOOLS[0].function], function_call={"name": "get_weather"})
    body, wire, _ = answer_and_stream(smollm2, plan, CALL)
    [choice] = body["choices"]
    assert choice["finish_reason"] == "function_call"
    assert choice["message"]["function_call"]["name"] == "get_weather"
    assert "tool_calls" not in choice["message"]
    deltas = [c["delta"]["function_call"] for chunk in wire for c in chunk["choices"]
              if "function_call" in c["delta"]]
    assert deltas[0] == {"name": "get_weather", "arguments": ""}
    assert "".join(d["arguments"] for d in deltas) == choice["message"]["function_call"]["arguments"]
