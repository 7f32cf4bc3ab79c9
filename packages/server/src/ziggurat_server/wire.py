"""The one place a response model becomes an HTTP body (see `ResponseModel.wire_json`)."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import Response
from ziggurat_core.protocol import ResponseModel


class ModelResponse(Response):
    """A protocol model serialised once, in Rust, as compact JSON (as OpenAI sends it)."""

    media_type = "application/json"

    def __init__(self, body: ResponseModel, status_code: int = 200,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(body.wire_json(), status_code=status_code, headers=headers)
