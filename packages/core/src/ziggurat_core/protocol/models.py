"""`/v1/models`, `/v1/info`, `/health`, tokenizer endpoints and the error body."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ._base import RequestModel, ResponseModel


class Model(ResponseModel):
    id: str
    object: Literal["model"] | str = "model"
    created: int = 0
    owned_by: str = "ziggurat"
    context_length: int | None = None
    parameter_count: int | None = None
    format: str | None = None


class ModelList(ResponseModel):
    object: Literal["list"] | str = "list"
    data: list[Model] = Field(default_factory=list)


class HealthStatus(ResponseModel):
    status: Literal["ok", "loading", "error"] | str
    model: str | None = None
    devices: list[str] | None = None


class ServerInfo(ResponseModel):
    version: str | None = None
    models: list[str] = Field(default_factory=list)
    uptime_s: float | None = None
    memory: dict[str, Any] | None = None
    engine: dict[str, Any] | None = None


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


class ErrorDetail(ResponseModel):
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(ResponseModel):
    error: ErrorDetail
