"""The tool-call grammar, run by llguidance's own matcher over SmolLM2's tokenizer, token by token.

Independent of the engine: the calls are written by hand (not by the code under test), encoded
with the model's tokenizer and fed to `llguidance.LLMatcher`; the test reads acceptance and the
captures the engine will report.
"""

from __future__ import annotations

import json
from typing import Any

import llguidance
import pytest
from test_tokenizer import smollm2_metadata
from tokenizers import Tokenizer as BackendTokenizer
from ziggurat_core.engine.errors import RequestValidationError
from ziggurat_core.engine.gguf_tokenizer import build_gguf_tokenizer
from ziggurat_core.protocol import ChatCompletionTool, FunctionDefinition, NamedToolChoice
from ziggurat_core.tools import (
    TOOL_ARGUMENTS_CAPTURE,
    TOOL_NAME_CAPTURE,
    check_tool_schemas,
    plan_tools,
    tool_call_grammar,
)
from ziggurat_core.tools.hermes import format_call
from ziggurat_core.tools.parsing import (
    ToolCallStreamReader,
    calls_from_captures,
    content_outside_calls,
)

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "where": {"type": "object",
                  "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                  "required": ["lat", "lon"]},
    },
    "required": ["city"],
}
TOOLS = [
    ChatCompletionTool(function=FunctionDefinition(name="get_weather", parameters=WEATHER)),
    ChatCompletionTool(function=FunctionDefinition(name="get_time")),
]


def call(name: str, arguments: str) -> str:
    """A call written out by hand in the Hermes shape."""
    return f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'


PARIS = call("get_weather", '{"city": "Paris"}')


class Tok:
    """SmolLM2's tokenizer twice: as llguidance reads it and as `tokenizers` encodes with it."""

    def __init__(self) -> None:
        parts = build_gguf_tokenizer(smollm2_metadata())
        self.backend: BackendTokenizer = parts.backend
        self.eos = parts.eos_token_ids[0]
        self.ll = llguidance.LLTokenizer(parts.backend.to_str(), eos_token=self.eos)


@pytest.fixture(scope="module")
def tok() -> Tok:
    return Tok()


def feed(tok: Tok, grammar: str, text: str) -> tuple[bool, llguidance.LLMatcher, int]:
    """(whether every token was accepted, the matcher, how many tokens were)."""
    matcher = llguidance.LLMatcher(tok.ll, grammar, log_level=0)
    assert not matcher.is_error(), matcher.get_error()
    ids = tok.backend.encode(text, add_special_tokens=False).ids
    for position, token in enumerate(ids):
        if not matcher.consume_token(token):
            return False, matcher, position
    return True, matcher, len(ids)


def captures(matcher: llguidance.LLMatcher) -> list[tuple[str, str]]:
    return [(name, value.decode("utf-8")) for name, value in matcher.get_captures()]


def grammar(choice: Any = "required", parallel: bool | None = None) -> str:
    text = tool_call_grammar(plan_tools(TOOLS, choice, parallel))
    assert text is not None
    return text


def accepts_complete(tok: Tok, grammar_text: str, text: str) -> llguidance.LLMatcher:
    ok, matcher, _ = feed(tok, grammar_text, text)
    assert ok, f"rejected {text!r}"
    assert matcher.is_accepting()
    assert matcher.consume_token(tok.eos)  # the model may end its turn here
    return matcher


def test_required_call_is_accepted_and_captured(tok: Tok) -> None:
    matcher = accepts_complete(tok, grammar(), PARIS)
    assert captures(matcher) == [(TOOL_NAME_CAPTURE, "get_weather"),
                                 (TOOL_ARGUMENTS_CAPTURE, '{"city": "Paris"}')]
    [parsed] = calls_from_captures(captures(matcher))
    assert (parsed.name, json.loads(parsed.arguments)) == ("get_weather", {"city": "Paris"})
    assert parsed.id.startswith("call_")


def test_required_forbids_text_and_an_empty_answer(tok: Tok) -> None:
    ok, _, position = feed(tok, grammar(), "Sure! " + PARIS)
    assert not ok and position == 0
    matcher = llguidance.LLMatcher(tok.ll, grammar(), log_level=0)
    assert not matcher.consume_token(tok.eos)


def test_end_marker_inside_a_string_argument_does_not_end_the_call(tok: Tok) -> None:
    arguments = '{"city": "a</tool_call>b\\"</tool_call>"}'
    matcher = accepts_complete(tok, grammar(), call("get_weather", arguments))
    [parsed] = calls_from_captures(captures(matcher))
    assert json.loads(parsed.arguments) == {"city": 'a</tool_call>b"</tool_call>'}


def test_unicode_arguments_are_captured_exactly(tok: Tok) -> None:
    arguments = '{"city": "Zürich 東京 🌧️ \\u00e9"}'
    matcher = accepts_complete(tok, grammar(), call("get_weather", arguments))
    [parsed] = calls_from_captures(captures(matcher))
    assert parsed.arguments == arguments
    assert json.loads(parsed.arguments)["city"] == "Zürich 東京 🌧️ é"


def test_nested_objects_and_enums_follow_the_schema(tok: Tok) -> None:
    good = '{"city": "Oslo", "unit": "celsius", "where": {"lat": 59.9, "lon": 10.75}}'
    matcher = accepts_complete(tok, grammar(), call("get_weather", good))
    [parsed] = calls_from_captures(captures(matcher))
    assert json.loads(parsed.arguments)["where"] == {"lat": 59.9, "lon": 10.75}
    for bad in ('{"city": "Oslo", "unit": "kelvin"}',        # not in the enum
                '{"city": "Oslo", "where": {"lat": 59.9}}',  # nested required member missing
                '{"unit": "celsius"}',                       # required member missing
                '{"city": 3}'):                              # wrong type
        ok, _, _ = feed(tok, grammar(), call("get_weather", bad))
        assert not ok, bad


def test_unknown_tool_names_and_malformed_markup_are_refused(tok: Tok) -> None:
    for bad in (call("get_wether", "{}"),
                call("get_weather", '{"city": "Paris"'),             # unclosed object
                PARIS.replace("</tool_call>", "</tool>"),
                PARIS.replace('"arguments"', '"args"')):
        ok, matcher, _ = feed(tok, grammar(), bad)
        assert not ok or not matcher.is_accepting(), bad


def test_parallel_calls_come_in_order(tok: Tok) -> None:
    second = call("get_time", "{}")
    matcher = accepts_complete(tok, grammar(parallel=True), PARIS + "\n" + PARIS + "\n" + second)
    parsed = calls_from_captures(captures(matcher))
    assert [(c.name, c.arguments) for c in parsed] == [
        ("get_weather", '{"city": "Paris"}'), ("get_weather", '{"city": "Paris"}'),
        ("get_time", "{}")]
    assert len({c.id for c in parsed}) == 3


def test_parallel_tool_calls_false_refuses_a_second_call(tok: Tok) -> None:
    ok, matcher, _ = feed(tok, grammar(parallel=False), PARIS + "\n" + PARIS)
    assert not ok
    matcher = accepts_complete(tok, grammar(parallel=False), PARIS)
    assert len(calls_from_captures(captures(matcher))) == 1


def test_named_choice_allows_only_that_tool(tok: Tok) -> None:
    named = grammar(NamedToolChoice.model_validate({"function": {"name": "get_time"}}))
    accepts_complete(tok, named, call("get_time", '{"any": [1, 2]}'))
    ok, _, _ = feed(tok, named, PARIS)
    assert not ok
    ok, _, _ = feed(tok, named, call("get_time", "{}") + "\n" + call("get_time", "{}"))
    assert not ok  # a named choice is one call


def test_auto_allows_plain_text(tok: Tok) -> None:
    text = "It is sunny in Paris <b>today</b>.\nNo tool needed."
    matcher = accepts_complete(tok, grammar("auto"), text)
    assert captures(matcher) == []
    assert content_outside_calls(plan_tools(TOOLS, "auto"), text) == text


def test_auto_forces_a_started_call_to_be_well_formed(tok: Tok) -> None:
    plan = plan_tools(TOOLS, "auto")
    text = "Let me check.\n" + PARIS
    matcher = accepts_complete(tok, grammar("auto"), text)
    assert [c.name for c in calls_from_captures(captures(matcher))] == ["get_weather"]
    assert content_outside_calls(plan, text) == "Let me check.\n"
    for bad in ("Let me check.\n<tool_call>\nI think it rains",
                "Let me check.\n" + call("get_weather", '{"town": "Paris"}'),
                "Let me check.\n" + PARIS + "\nDone."):  # nothing but calls after a call
        ok, _, _ = feed(tok, grammar("auto"), bad)
        assert not ok, bad


def test_the_prompt_format_is_what_the_grammar_accepts(tok: Tok) -> None:
    """The calls the Hermes prompt shows the model (round trip) are calls the grammar accepts."""
    written = format_call("get_weather", json.dumps({"city": "Köln", "unit": "celsius"},
                                                    ensure_ascii=False))
    accepts_complete(tok, grammar(), written)


def test_no_grammar_when_no_call_can_be_made() -> None:
    assert tool_call_grammar(plan_tools(TOOLS, "none")) is None
    assert tool_call_grammar(plan_tools(None, None)) is None


def test_plan_validation_names_the_field() -> None:
    duplicate = [TOOLS[0], TOOLS[0]]
    cases = [
        (lambda: plan_tools(duplicate, "auto"), "tools", "get_weather"),
        (lambda: plan_tools(TOOLS, NamedToolChoice.model_validate(
            {"function": {"name": "nope"}})), "tool_choice", "nope"),
        (lambda: plan_tools(None, "required"), "tool_choice", "required"),
        (lambda: plan_tools(TOOLS, functions=[TOOLS[0].function]), "functions", "legacy"),
    ]
    for make, param, word in cases:
        with pytest.raises(RequestValidationError) as caught:
            make()
        assert caught.value.param == param
        assert word in str(caught.value)


def test_a_schema_that_does_not_compile_is_refused_naming_the_tool() -> None:
    bad = ChatCompletionTool(function=FunctionDefinition(
        name="broken", parameters={"type": "object", "properties": {"x": {"type": "frob"}}}))
    with pytest.raises(RequestValidationError) as caught:
        check_tool_schemas(plan_tools([TOOLS[0], bad], "auto"))
    assert "broken" in str(caught.value) and caught.value.param == "tools[1].function.parameters"
    not_object = ChatCompletionTool(function=FunctionDefinition(
        name="listy", parameters={"type": "array"}))
    with pytest.raises(RequestValidationError, match="listy"):
        check_tool_schemas(plan_tools([not_object], "auto"))


def test_streamed_content_never_shows_markup_and_adds_up(tok: Tok) -> None:
    """Fed one character at a time, the reader sends exactly the content before the call."""
    plan = plan_tools(TOOLS, "auto")
    for text in ("Let me check <tool_ca", "Checking.\n" + PARIS, "a < b <tool", "<tool_call>"):
        reader = ToolCallStreamReader(plan)
        sent = "".join(reader.content_delta(text[:end], end == len(text))
                       for end in range(1, len(text) + 1))
        assert "<tool_call>" not in sent
        assert sent == (content_outside_calls(plan, text) or "")


def test_arguments_the_schema_does_not_list_are_refused_unless_it_allows_them(tok: Tok) -> None:
    # WEATHER says nothing about other members: the call is a function's signature, so an
    # invented argument (top level or nested) is refused.
    for extra in ('{"city": "Oslo", "country": "Norway"}',
                  '{"city": "Oslo", "where": {"lat": 1, "lon": 2, "alt": 3}}'):
        ok, _, _ = feed(tok, grammar(), call("get_weather", extra))
        assert not ok, extra
    open_schema = {**WEATHER, "additionalProperties": True}
    tools = [ChatCompletionTool(function=FunctionDefinition(name="get_weather",
                                                            parameters=open_schema))]
    text = tool_call_grammar(plan_tools(tools, "required", None))
    assert text is not None
    accepts_complete(tok, text, call("get_weather", '{"city": "Oslo", "country": "Norway"}'))
