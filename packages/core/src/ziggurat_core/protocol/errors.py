"""The error body every OpenAI-compatible server sends: `{"error": {...}}`."""

from __future__ import annotations

from ._base import ResponseModel


class ErrorDetail(ResponseModel):
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(ResponseModel):
    error: ErrorDetail
