"""POST /tokenize and POST /detokenize (outside /v1, as vLLM serves them): the request each
call sends, shared by `Client` and `AsyncClient`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .._params import DETOKENIZE_PARAM_NAMES, TOKENIZE_PARAM_NAMES
from .._request import RequestOptions, create_request


def tokenize_request(kwargs: Mapping[str, Any]) -> RequestOptions:
    if isinstance(kwargs.get("messages"), str | bytes):
        raise TypeError("messages must be a list of messages, not a string")
    return create_request("/tokenize", {}, kwargs, TOKENIZE_PARAM_NAMES, "tokenize", False,
                          under_api_prefix=False)


def detokenize_request(tokens: Sequence[int], kwargs: Mapping[str, Any]) -> RequestOptions:
    if isinstance(tokens, str | bytes):
        raise TypeError("tokens must be a list of token ids, not a string")
    return create_request("/detokenize", {"tokens": list(tokens)}, kwargs,
                          DETOKENIZE_PARAM_NAMES, "detokenize", False, under_api_prefix=False)
