"""What one logical API call needs (no I/O): the options record and request-body helpers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import BaseModel

from ._params import RequestOptionParams
from ._parsing import response_format_body

Timeout = float | httpx.Timeout
HeaderOverrides = Mapping[str, str | None]

REQUEST_OPTION_KEYS = frozenset(RequestOptionParams.__optional_keys__)


@dataclass(frozen=True)
class RequestOptions:
    """One API call, before any attempt is made."""

    method: str
    path: str
    # False for routes outside the API prefix, such as /health.
    under_api_prefix: bool = True
    json_body: Mapping[str, Any] | None = None
    extra_headers: HeaderOverrides | None = None
    timeout: Timeout | None = None
    stream: bool = False
    max_retries: int | None = None


def to_jsonable(value: Any) -> Any:
    """Pydantic models, mappings and sequences as plain JSON values (models drop None fields and
    use their JSON names, e.g. "schema" for `schema_`)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True, by_alias=True)
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray):
        return [to_jsonable(item) for item in value]
    return value


def check_known_params(
    params: Mapping[str, Any], allowed: frozenset[str], function_name: str
) -> None:
    """Reject misspelt keyword arguments the way Python would, instead of sending them on."""
    for name in params:
        if name not in allowed:
            raise TypeError(
                f"{function_name}() got an unexpected keyword argument {name!r}; "
                "send fields the client does not know through extra_body"
            )


def build_body(
    required: Mapping[str, Any],
    params: Mapping[str, Any],
    extra_body: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The JSON body: required fields, then parameters that are not None, then extra_body."""
    body = {key: to_jsonable(value) for key, value in required.items()}
    body.update({key: to_jsonable(value) for key, value in params.items() if value is not None})
    if extra_body:
        body.update(to_jsonable(extra_body))
    return body


def split_request_options(
    kwargs: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(endpoint parameters, per-call request options) from one **kwargs mapping."""
    params = {key: value for key, value in kwargs.items() if key not in REQUEST_OPTION_KEYS}
    options = {key: value for key, value in kwargs.items() if key in REQUEST_OPTION_KEYS}
    return params, options


def create_request(
    path: str, required: dict[str, Any], kwargs: Mapping[str, Any], known: frozenset[str],
    method_name: str, stream: bool, *, under_api_prefix: bool = True,
) -> RequestOptions:
    """The POST for one call with typed keyword arguments: checks the parameter names, builds
    the body, applies the per-call options (shared by every resource, sync and async)."""
    params, options = split_request_options(kwargs)
    check_known_params(params, known, method_name)
    if params.get("response_format") is not None:
        params["response_format"] = response_format_body(params["response_format"])
    if stream:
        required = {**required, "stream": True}
    return RequestOptions(
        "POST",
        path,
        under_api_prefix=under_api_prefix,
        json_body=build_body(required, params, options.get("extra_body")),
        extra_headers=options.get("extra_headers"),
        timeout=options.get("timeout"),
        stream=stream,
    )
