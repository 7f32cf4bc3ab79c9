"""`/tokenize` and `/detokenize` with the served model's tokenizer."""

from __future__ import annotations

from typing import Any

from ._base import RequestModel, ResponseModel


class TokenizeRequest(RequestModel):
    model: str | None = None
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class TokenizeResponse(ResponseModel):
    tokens: list[int]
    count: int
    max_model_len: int | None = None


class DetokenizeRequest(RequestModel):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(ResponseModel):
    prompt: str
