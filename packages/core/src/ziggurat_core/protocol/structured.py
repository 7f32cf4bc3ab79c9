"""Structured-output request fields: OpenAI's `response_format`, vLLM's `structured_outputs`
object and vLLM's older top-level `guided_*` fields. No torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from ._base import RequestModel

# A choice constraint lists the strings the output may be, each non-empty.
Choices = Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]

ConstraintKind = Literal["json", "json_object", "regex", "choice", "grammar"]


class JSONSchemaFormat(RequestModel):
    """`response_format.json_schema` as OpenAI defines it."""

    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    # `schema` would shadow a pydantic BaseModel attribute; the JSON key is still "schema".
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    model_config = {**RequestModel.model_config, "populate_by_name": True}


class ResponseFormat(RequestModel):
    """`{"type": "text"}`, `{"type": "json_object"}` or `{"type": "json_schema", "json_schema":
    {...}}`."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_matches_type(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("a json_schema response_format needs its json_schema object")
        if self.type != "json_schema" and self.json_schema is not None:
            raise ValueError(f"json_schema is only allowed with type json_schema, not {self.type}")
        return self


class StructuredOutputsOptions(RequestModel):
    """vLLM's `structured_outputs` extension: exactly one constraint."""

    json_: dict[str, Any] | str | None = Field(default=None, alias="json")
    json_object: bool | None = None
    regex: str | None = None
    choice: Choices | None = None
    grammar: str | None = None

    model_config = {**RequestModel.model_config, "populate_by_name": True}

    def given(self) -> list[tuple[ConstraintKind, Any]]:
        values: list[tuple[ConstraintKind, Any]] = [
            ("json", self.json_), ("json_object", self.json_object or None),
            ("regex", self.regex), ("choice", self.choice), ("grammar", self.grammar)]
        return [(kind, value) for kind, value in values if value is not None]


class StructuredOutputFields(RequestModel):
    """The constraint fields a request may carry; at most one constraint in all."""

    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputsOptions | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: Choices | None = None
    guided_grammar: str | None = None


@dataclass(frozen=True)
class OutputConstraint:
    """The one constraint of a request: its kind, its value and the request field it came from
    (how errors about it name it)."""

    kind: ConstraintKind
    value: Any
    field: str


class ConstraintFieldsError(ValueError):
    """The constraint fields do not name exactly one constraint; `param` is the field to fix."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def output_constraint(request: StructuredOutputFields) -> OutputConstraint | None:
    """The request's constraint, or None (no field, or `response_format` of type text).
    Raises ConstraintFieldsError naming the fields when there is more than one."""
    found: list[OutputConstraint] = []
    response_format = request.response_format
    if response_format is not None and response_format.type == "json_object":
        found.append(OutputConstraint("json_object", True, "response_format"))
    elif response_format is not None and response_format.json_schema is not None:
        schema = response_format.json_schema.schema_
        # OpenAI allows a json_schema without a schema; any JSON object is all it can mean.
        found.append(OutputConstraint("json", schema, "response_format") if schema is not None
                     else OutputConstraint("json_object", True, "response_format"))
    if request.structured_outputs is not None:
        found.extend(OutputConstraint(kind, value, f"structured_outputs.{kind}")
                     for kind, value in request.structured_outputs.given())
    guided: list[tuple[ConstraintKind, Any]] = [
        ("json", request.guided_json), ("regex", request.guided_regex),
        ("choice", request.guided_choice), ("grammar", request.guided_grammar)]
    found.extend(OutputConstraint(kind, value, f"guided_{kind}")
                 for kind, value in guided if value is not None)
    if len(found) > 1:
        fields = [constraint.field for constraint in found]
        raise ConstraintFieldsError(
            f"only one output constraint may be given, got {len(fields)}: {', '.join(fields)}",
            fields[0])
    if request.structured_outputs is not None and not found:
        raise ConstraintFieldsError(
            "structured_outputs must set one of json, json_object, regex, choice, grammar",
            "structured_outputs")
    return found[0] if found else None
