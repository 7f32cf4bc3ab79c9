"""Request fields that Ziggurat does not implement: each gets a 400 naming it, never a silent 200
that pretends it was honoured.

OpenAI fields with no implementation here are refused with the reason (`unsupported_parameter`).
Any other field the request models do not declare, at any depth, is refused as OpenAI refuses it
(`unknown_parameter`): a vendor extension meant for another server (vLLM's
`skip_special_tokens`, llama.cpp's `n_predict`), or a misspelt name, would otherwise change
nothing without a word.

Accepted and ignored: fields that only concern OpenAI's own platform and cannot change a
response (`metadata`, `user`, `safety_identifier`, `prompt_cache_key` (a routing hint; the
prefix cache needs none), `store: false`, `service_tier` "auto"/"default"), and extra keys on a
message or inside it: a conversation sent back carries what the responses returned (`refusal`,
`annotations`, `reasoning_content`). A `null` counts as not given. Image, audio and file content
parts are refused where the message enters (protocol/chat.py): the served models read text only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from pydantic import BaseModel
from ziggurat_core.protocol import ChatMessage
from ziggurat_core.protocol._base import RequestModel
from ziggurat_core.protocol.common import SamplingFields

from .errors import bad_request

# field -> (does this value ask for something unimplemented?, why it is refused)
_UNSUPPORTED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "audio": (lambda value: True, "audio output is not supported: the model generates text only"),
    "modalities": (lambda value: value != ["text"],
                   'only the "text" modality is supported: the model generates text only'),
    "prediction": (lambda value: True, "predicted outputs (prediction) are not supported"),
    "web_search_options": (lambda value: True, "web search is not supported"),
    "reasoning_effort": (lambda value: True,
                         "reasoning_effort is not supported: the served model has no reasoning "
                         "mode"),
    "verbosity": (lambda value: True, "verbosity is not supported by the served model"),
    "store": (lambda value: value is not False,
              "stored completions are not supported (store must be false or left out)"),
    "service_tier": (lambda value: value not in ("auto", "default"),
                     'service_tier must be "auto" or "default": there is one tier'),
    # vLLM's extension; dropping it would hand back a response without what was asked.
    "prompt_logprobs": (lambda value: True,
                        "the engine does not compute prompt logprobs"),
}
# OpenAI platform bookkeeping that cannot change a response (`user` is a declared field).
_PLATFORM_FIELDS = frozenset({"metadata", "safety_identifier", "prompt_cache_key"})
# Objects whose own undeclared keys are tolerated (see the module's docstring); what they hold
# (content parts, tool calls) is checked as everywhere else.
_TOLERANT: tuple[type[RequestModel], ...] = (ChatMessage,)


def reject_unimplemented_fields(body: RequestModel) -> None:
    """Raise a 400 for the first field given (not null) that asks for something Ziggurat does
    not do or that no request model declares."""
    generation = isinstance(body, SamplingFields)
    for name, value in (body.model_extra or {}).items():
        if value is None or (generation and name in _PLATFORM_FIELDS):
            continue
        if generation and name in _UNSUPPORTED:
            unsupported, reason = _UNSUPPORTED[name]
            if unsupported(value):
                raise bad_request(f"{name}: {reason}", param=name, code="unsupported_parameter")
            continue
        raise _unknown(name)
    for path in _nested_extras(body, ""):
        raise _unknown(path)


def _unknown(path: str) -> Exception:
    return bad_request(f"Unrecognized request argument supplied: {path}", param=path,
                       code="unknown_parameter")


def _nested_extras(model: BaseModel, path: str) -> Iterator[str]:
    """Dotted paths of the undeclared, non-null keys of the request objects below `model`."""
    for name in type(model).model_fields:
        yield from _extras_in(getattr(model, name), f"{path}{name}")


def _extras_in(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _extras_in(item, f"{path}.{index}")
    elif isinstance(value, RequestModel):
        if not isinstance(value, _TOLERANT):
            yield from (f"{path}.{key}" for key, item in (value.model_extra or {}).items()
                        if item is not None)
        yield from _nested_extras(value, f"{path}.")


# The accepted values of the platform and unsupported fields, as the OpenAPI document states them.
_ANY: dict[str, Any] = {"description": "accepted and ignored: OpenAI platform bookkeeping"}
_ACCEPTED_SCHEMAS: dict[str, dict[str, Any]] = {
    **dict.fromkeys(_PLATFORM_FIELDS, _ANY),
    "store": {"enum": [False, None]},
    "service_tier": {"enum": ["auto", "default", None]},
    "modalities": {"anyOf": [{"const": ["text"]}, {"type": "null"}]},
}


def document_unimplemented_fields(schemas: dict[str, Any]) -> None:
    """Say in the OpenAPI components what `reject_unimplemented_fields` lets through: on each
    request object, undeclared keys only as null (a tolerant one keeps any), and on the
    generation requests the platform fields and the accepted values of the unsupported ones."""
    for model in _request_models():
        schema = schemas.get(model.__name__)
        if schema is None or issubclass(model, _TOLERANT):
            continue
        schema["additionalProperties"] = {"type": "null"}
        if issubclass(model, SamplingFields):
            schema.setdefault("properties", {}).update(_ACCEPTED_SCHEMAS)


def _request_models() -> Iterator[type[RequestModel]]:
    pending = list(RequestModel.__subclasses__())
    while pending:
        model = pending.pop()
        pending.extend(model.__subclasses__())
        yield model
