"""Base models: responses keep unknown fields (newer servers), requests keep vendor extras."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ResponseModel(BaseModel):
    """A server response: unknown fields are kept so newer servers never break older clients.

    The server sends exactly the fields it set when it built the model: a field set to None goes
    out as `null`, a field left at its default is left out. That is how OpenAI's bodies tell
    "no value" (`"logprobs": null`) from "not part of this message" (a delta without `role`),
    and parsing keeps the distinction: a parsed model's set fields are the ones in the JSON.
    """

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    def wire_json(self) -> str:
        """The body as the server sends it: compact JSON of the fields that were set."""
        return self.model_dump_json(exclude_unset=True)


class RequestModel(BaseModel):
    """A request body: extra fields are allowed (OpenAI clients send vendor extras) but kept."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())
