"""`AsyncClient`: the asynchronous twin of `Client` (asyncio or trio); only the I/O differs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Self, TypeVar, Unpack

import httpx
import tenacity
from pydantic import BaseModel
from ziggurat_core.protocol import DetokenizeResponse, HealthStatus, ServerInfo, TokenizeResponse

from . import _retry
from ._base_client import BaseClient
from ._constants import DEFAULT_CONNECTION_LIMITS, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_S
from ._exceptions import InternalServerError
from ._params import DetokenizeKwargs, TokenizeKwargs
from ._request import RequestOptions, Timeout
from ._streaming import AsyncStream
from .resources.chat import AsyncChat
from .resources.completions import AsyncCompletions
from .resources.models import AsyncModels
from .resources.tokenization import detokenize_request, tokenize_request

ModelT = TypeVar("ModelT", bound=BaseModel)


async def _sleep(seconds: float) -> None:
    await _retry.async_sleep(seconds)  # looked up per call so tests can replace it


class AsyncClient(BaseClient):
    """An asynchronous client for Ziggurat or any OpenAI-compatible server (asyncio or trio).

    `base_url` defaults to $ZIGGURAT_BASE_URL, then http://localhost:8000; typing `/v1` at the
    end is optional. `api_key` defaults to $ZIGGURAT_API_KEY. Pass `http_client` to use your own
    `httpx.AsyncClient` (it is then yours to close). Concurrent calls share one connection pool.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            headers=headers,
        )
        self._owns_http_client = http_client is None
        self._http_client = (
            http_client
            if http_client is not None
            else httpx.AsyncClient(limits=DEFAULT_CONNECTION_LIMITS)
        )
        self.chat = AsyncChat(self)
        self.completions = AsyncCompletions(self)
        self.models = AsyncModels(self)

    def with_options(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: Timeout | None = None,
        max_retries: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncClient:
        """A copy with some settings overridden; it shares (and does not own) the connection pool."""
        settings = self._copy_settings(
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            headers=headers,
        )
        return AsyncClient(**settings, http_client=self._http_client)

    # -- endpoints outside the resources ------------------------------------------------------

    async def info(self, *, timeout: Timeout | None = None) -> ServerInfo:
        """GET /v1/info: server version, models, uptime, memory and engine statistics."""
        return await self._request(RequestOptions("GET", "/info", timeout=timeout), ServerInfo)

    async def health(self, *, timeout: Timeout | None = None) -> HealthStatus:
        """GET /health (outside /v1). Not retried: a 503 "loading" status is returned, not raised."""
        options = RequestOptions(
            "GET", "/health", under_api_prefix=False, timeout=timeout, max_retries=0
        )
        try:
            return await self._request(options, HealthStatus)
        except InternalServerError as error:
            if isinstance(error.body, dict) and "status" in error.body:
                return HealthStatus.model_validate(error.body)
            raise

    async def tokenize(self, **kwargs: Unpack[TokenizeKwargs]) -> TokenizeResponse:
        """POST /tokenize (outside /v1): the token ids of `prompt`, or of `messages` rendered by
        the model's chat template as a chat request with the same options would render them."""
        return await self._request(tokenize_request(kwargs), TokenizeResponse)

    async def detokenize(
        self, tokens: Sequence[int], **kwargs: Unpack[DetokenizeKwargs]
    ) -> DetokenizeResponse:
        """POST /detokenize (outside /v1): the text of `tokens`."""
        return await self._request(detokenize_request(tokens, kwargs), DetokenizeResponse)

    # -- I/O ----------------------------------------------------------------------------------

    async def _send_once(
        self, options: RequestOptions, request_id: str, attempt: int
    ) -> httpx.Response:
        request = self._build_request(options, request_id, attempt)
        self._log_attempt(request, request_id, attempt)
        try:
            response = await self._http_client.send(request, stream=options.stream)
        except httpx.TransportError as exc:
            raise self._transport_error(exc, request_id) from exc
        if response.is_error:
            try:
                content = await response.aread()
            except httpx.TransportError as exc:
                raise self._transport_error(exc, request_id) from exc
            finally:
                await response.aclose()
            raise self._status_error(response, content, request_id)
        return response

    async def _send_with_retries(self, options: RequestOptions, request_id: str) -> httpx.Response:
        async for attempt in tenacity.AsyncRetrying(**self._retry_settings(options, _sleep)):
            with attempt:
                response = await self._send_once(
                    options, request_id, attempt.retry_state.attempt_number
                )
        return response

    async def _request(self, options: RequestOptions, cast_to: type[ModelT]) -> ModelT:
        request_id = self._request_id_for(options)
        response = await self._send_with_retries(options, request_id)
        return self._parse_response(response.content, cast_to, request_id)

    async def _request_stream(
        self, options: RequestOptions, cast_to: type[ModelT]
    ) -> AsyncStream[ModelT]:
        request_id = self._request_id_for(options)
        response = await self._send_with_retries(options, request_id)
        return AsyncStream(response, cast_to, request_id)

    # -- lifetime -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the connection pool, unless it was passed in by the caller or shared."""
        if self._owns_http_client:
            await self._http_client.aclose()

    @property
    def is_closed(self) -> bool:
        return self._http_client.is_closed

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
