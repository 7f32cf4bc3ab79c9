"""A structured-output constraint as llguidance grammar text. No torch.

Each kind of `StructuredOutputsParams` becomes the serialised grammar `LLMatcher` compiles:
JSON schemas and regexes through llguidance's own converters, a choice as a Lark grammar of
literal alternatives, GBNF through llguidance's GBNF-to-Lark converter.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from llguidance import LLMatcher
from llguidance.gbnf_to_lark import GbnfToLarkError, gbnf_to_lark

from ..errors import GrammarCompileError
from ..sampling_params import StructuredOutputsParams

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

# GBNF (llama.cpp) defines rules with `::=`; Lark uses `:`. A Lark grammar can only hold `::=`
# inside a string or regex literal, so look for it at the start of a rule only.
_GBNF_RULE = re.compile(r"(?m)^\s*[A-Za-z_][A-Za-z0-9_-]*\s*::=")

# Any JSON object: what json_object (OpenAI's "JSON mode") asks for.
_ANY_OBJECT_SCHEMA = {"type": "object"}
# JSON is written as `json.dumps` writes it (", " and ": ", no other whitespace) rather than
# with llguidance's default of any whitespace between tokens: a model cannot spend its tokens
# on runs of blanks, and a schema's own "x-guidance" options still override this.
_JSON_OPTIONS: JsonCompileOptions = {
    "whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def grammar_text(spec: StructuredOutputsParams, param: str = "structured_outputs") -> str:
    """The llguidance grammar for `spec`. Raises GrammarCompileError (naming `param`) for input
    llguidance's converters reject before compiling (a schema that is not JSON, bad GBNF)."""
    if spec.json is not None:
        return _json_schema_grammar(spec.json, param)
    if spec.json_object:
        return LLMatcher.grammar_from_json_schema(_ANY_OBJECT_SCHEMA, _JSON_OPTIONS)
    if spec.regex is not None:
        return LLMatcher.grammar_from_regex(spec.regex)
    if spec.choice is not None:
        return LLMatcher.grammar_from_lark(choice_lark(spec.choice, param))
    assert spec.grammar is not None  # StructuredOutputsParams guarantees exactly one kind
    return LLMatcher.grammar_from_lark(_lark_source(spec.grammar, param))


def choice_lark(choices: list[str], param: str = "structured_outputs") -> str:
    """A Lark grammar whose only sentences are the `choices`, each matched literally."""
    if not choices:
        raise GrammarCompileError("choice must list at least one string", param)
    if not all(isinstance(choice, str) and choice for choice in choices):
        raise GrammarCompileError("every choice must be a non-empty string", param)
    # A JSON string literal is a Lark string literal: quotes, backslashes, control characters
    # and non-ASCII text are escaped the way llguidance's Lark lexer reads them.
    return "start: " + " | ".join(json.dumps(choice) for choice in choices) + "\n"


def is_gbnf(grammar: str) -> bool:
    return _GBNF_RULE.search(grammar) is not None


def _lark_source(grammar: str, param: str) -> str:
    if not is_gbnf(grammar):
        return grammar
    try:
        return gbnf_to_lark(grammar)
    except GbnfToLarkError as exc:
        raise GrammarCompileError(f"invalid GBNF grammar: {exc}", param) from exc


def _json_schema_grammar(schema: object, param: str) -> str:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise GrammarCompileError(f"the JSON schema is not valid JSON: {exc}", param) from exc
    if not isinstance(schema, dict):
        raise GrammarCompileError(
            f"a JSON schema must be a JSON object, got {type(schema).__name__}", param)
    try:
        return LLMatcher.grammar_from_json_schema(schema, _JSON_OPTIONS)
    except ValueError as exc:
        raise GrammarCompileError(f"invalid JSON schema: {exc}", param) from exc
