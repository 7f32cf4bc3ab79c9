"""Base models: responses keep unknown fields (newer servers), requests validate strictly."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ResponseModel(BaseModel):
    """A server response: unknown fields are kept so newer servers never break older clients."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())


class RequestModel(BaseModel):
    """A request body: extra fields are allowed (OpenAI clients send vendor extras) but kept."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())
