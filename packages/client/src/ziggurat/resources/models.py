"""`client.models`: GET /v1/models and GET /v1/models/{id}."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from ziggurat_core.protocol import Model, ModelList

from .._request import RequestOptions, Timeout

if TYPE_CHECKING:
    from .._async_client import AsyncClient
    from .._client import Client


def list_models_request(timeout: Timeout | None) -> RequestOptions:
    return RequestOptions("GET", "/models", timeout=timeout)


def get_model_request(model_id: str, timeout: Timeout | None) -> RequestOptions:
    if not model_id:
        raise ValueError("model_id must be a non-empty string")
    # Ids such as "org/name" keep their slash, as OpenAI-compatible servers route them.
    return RequestOptions("GET", f"/models/{quote(model_id, safe='/')}", timeout=timeout)


class Models:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self, *, timeout: Timeout | None = None) -> ModelList:
        """The models the server serves."""
        return self._client._request(list_models_request(timeout), ModelList)

    def get(self, model_id: str, *, timeout: Timeout | None = None) -> Model:
        """One model by id; raises NotFoundError when the server does not serve it."""
        return self._client._request(get_model_request(model_id, timeout), Model)


class AsyncModels:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self, *, timeout: Timeout | None = None) -> ModelList:
        """The models the server serves."""
        return await self._client._request(list_models_request(timeout), ModelList)

    async def get(self, model_id: str, *, timeout: Timeout | None = None) -> Model:
        """One model by id; raises NotFoundError when the server does not serve it."""
        return await self._client._request(get_model_request(model_id, timeout), Model)
