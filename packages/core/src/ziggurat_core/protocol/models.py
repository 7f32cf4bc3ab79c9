"""`/v1/models` and `/v1/models/{id}`: the model card and the list of them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ._base import ResponseModel


class Model(ResponseModel):
    id: str
    object: Literal["model"] | str = "model"
    created: int = 0
    owned_by: str = "ziggurat"
    # Ziggurat's additions to OpenAI's card; other servers leave them out.
    context_length: int | None = None
    parameter_count: int | None = None
    format: str | None = None  # the checkpoint's format: "gguf" or "safetensors"
    architecture: str | None = None


class ModelList(ResponseModel):
    object: Literal["list"] | str = "list"
    data: list[Model] = Field(default_factory=list)
