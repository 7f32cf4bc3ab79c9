"""`Client`: the synchronous client. Only the I/O lives here; the rest is in `BaseClient`."""

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
from ._streaming import Stream
from .resources.chat import Chat
from .resources.completions import Completions
from .resources.models import Models
from .resources.tokenization import detokenize_request, tokenize_request

ModelT = TypeVar("ModelT", bound=BaseModel)


def _sleep(seconds: float) -> None:
    _retry.sleep(seconds)  # looked up per call so tests can replace it


class Client(BaseClient):
    """A synchronous client for Ziggurat or any OpenAI-compatible server.

    `base_url` defaults to $ZIGGURAT_BASE_URL, then http://localhost:8000; typing `/v1` at the
    end is optional. `api_key` defaults to $ZIGGURAT_API_KEY. Pass `http_client` to use your own
    `httpx.Client` (it is then yours to close).
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.Client | None = None,
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
            else httpx.Client(limits=DEFAULT_CONNECTION_LIMITS)
        )
        self.chat = Chat(self)
        self.completions = Completions(self)
        self.models = Models(self)

    def with_options(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: Timeout | None = None,
        max_retries: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Client:
        """A copy with some settings overridden; it shares (and does not own) the connection pool."""
        settings = self._copy_settings(
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            headers=headers,
        )
        return Client(**settings, http_client=self._http_client)

    # -- endpoints outside the resources ------------------------------------------------------

    def info(self, *, timeout: Timeout | None = None) -> ServerInfo:
        """GET /v1/info: server version, models, uptime, memory and engine statistics."""
        return self._request(RequestOptions("GET", "/info", timeout=timeout), ServerInfo)

    def health(self, *, timeout: Timeout | None = None) -> HealthStatus:
        """GET /health (outside /v1). Not retried: a 503 "loading" status is returned, not raised."""
        options = RequestOptions(
            "GET", "/health", under_api_prefix=False, timeout=timeout, max_retries=0
        )
        try:
            return self._request(options, HealthStatus)
        except InternalServerError as error:
            if isinstance(error.body, dict) and "status" in error.body:
                return HealthStatus.model_validate(error.body)
            raise

    def tokenize(self, **kwargs: Unpack[TokenizeKwargs]) -> TokenizeResponse:
        """POST /tokenize (outside /v1): the token ids of `prompt`, or of `messages` rendered by
        the model's chat template as a chat request with the same options would render them."""
        return self._request(tokenize_request(kwargs), TokenizeResponse)

    def detokenize(
        self, tokens: Sequence[int], **kwargs: Unpack[DetokenizeKwargs]
    ) -> DetokenizeResponse:
        """POST /detokenize (outside /v1): the text of `tokens`."""
        return self._request(detokenize_request(tokens, kwargs), DetokenizeResponse)

    # -- I/O ----------------------------------------------------------------------------------

    def _send_once(self, options: RequestOptions, request_id: str, attempt: int) -> httpx.Response:
        request = self._build_request(options, request_id, attempt)
        self._log_attempt(request, request_id, attempt)
        try:
            response = self._http_client.send(request, stream=options.stream)
        except httpx.TransportError as exc:
            raise self._transport_error(exc, request_id) from exc
        if response.is_error:
            try:
                content = response.read()
            except httpx.TransportError as exc:
                raise self._transport_error(exc, request_id) from exc
            finally:
                response.close()
            raise self._status_error(response, content, request_id)
        return response

    def _send_with_retries(self, options: RequestOptions, request_id: str) -> httpx.Response:
        for attempt in tenacity.Retrying(**self._retry_settings(options, _sleep)):
            with attempt:
                response = self._send_once(options, request_id, attempt.retry_state.attempt_number)
        return response

    def _request(self, options: RequestOptions, cast_to: type[ModelT]) -> ModelT:
        request_id = self._request_id_for(options)
        response = self._send_with_retries(options, request_id)
        return self._parse_response(response.content, cast_to, request_id)

    def _request_stream(self, options: RequestOptions, cast_to: type[ModelT]) -> Stream[ModelT]:
        request_id = self._request_id_for(options)
        response = self._send_with_retries(options, request_id)
        return Stream(response, cast_to, request_id)

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pool, unless it was passed in by the caller or shared."""
        if self._owns_http_client:
            self._http_client.close()

    @property
    def is_closed(self) -> bool:
        return self._http_client.is_closed

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
