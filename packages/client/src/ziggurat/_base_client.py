"""`BaseClient`: everything the sync and async clients share that does no I/O.

URLs (with or without a typed `/v1`), headers (auth, request id, attempt counter, user
overrides), `httpx.Request` construction, error mapping, retry decisions and delays, and the
tenacity configuration. `Client` and `AsyncClient` add only sending, reading and closing.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import httpx
import tenacity
from pydantic import BaseModel, ValidationError

from ._constants import (
    API_KEY_ENV,
    API_PREFIX,
    ATTEMPT_HEADER,
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    REQUEST_ID_HEADER,
)
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APITimeoutError,
    make_api_error,
    parse_error_body,
)
from ._request import RequestOptions, Timeout
from ._retry import RetryPolicy, is_retryable_error, parse_retry_after
from ._version import __version__

logger = logging.getLogger("ziggurat")

ModelT = TypeVar("ModelT", bound=BaseModel)


def normalize_base_url(base_url: str) -> str:
    """The server root: scheme, host, port and any path prefix, without a trailing `/v1`."""
    url = httpx.URL(base_url.strip())
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"base_url must be an http(s) URL with a host, got {base_url!r}")
    path = url.path.rstrip("/")
    if path.endswith(API_PREFIX):
        path = path[: -len(API_PREFIX)]
    return str(url.copy_with(path=path or "/", query=None, fragment=None)).rstrip("/")


def _env_or_none(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


class BaseClient:
    """Configuration and I/O-free request logic; see `Client` and `AsyncClient`."""

    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        timeout: Timeout,
        max_retries: int,
        headers: Mapping[str, str] | None,
    ) -> None:
        self._root_url = normalize_base_url(
            base_url or _env_or_none(BASE_URL_ENV) or DEFAULT_BASE_URL
        )
        self.api_key = api_key if api_key is not None else _env_or_none(API_KEY_ENV)
        self.timeout = timeout
        self.retry_policy = RetryPolicy(max_retries=max_retries)
        self.custom_headers: dict[str, str] = dict(headers or {})

    # -- configuration ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The API base, always ending in `/v1`."""
        return self._root_url + API_PREFIX

    @property
    def max_retries(self) -> int:
        return self.retry_policy.max_retries

    def _copy_settings(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        timeout: Timeout | None,
        max_retries: int | None,
        headers: Mapping[str, str] | None,
    ) -> dict[str, Any]:
        """Constructor arguments for `with_options`: overrides win, headers are merged."""
        overridden = {name.lower() for name in headers or {}}
        merged_headers = {
            name: value
            for name, value in self.custom_headers.items()
            if name.lower() not in overridden
        }
        merged_headers.update(headers or {})
        return {
            "base_url": base_url if base_url is not None else self._root_url,
            "api_key": api_key if api_key is not None else self.api_key,
            "timeout": timeout if timeout is not None else self.timeout,
            "max_retries": max_retries if max_retries is not None else self.max_retries,
            "headers": merged_headers,
        }

    # -- requests -----------------------------------------------------------------------------

    def _url_for(self, options: RequestOptions) -> str:
        prefix = API_PREFIX if options.under_api_prefix else ""
        return f"{self._root_url}{prefix}{options.path}"

    def _headers_for(self, options: RequestOptions, request_id: str, attempt: int) -> httpx.Headers:
        # httpx.Headers replaces and deletes case-insensitively, so "accept" overrides "Accept".
        headers = httpx.Headers(
            {
                "Accept": "text/event-stream" if options.stream else "application/json",
                "User-Agent": f"ziggurat-python/{__version__}",
                REQUEST_ID_HEADER: request_id,
            }
        )
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        headers.update(self.custom_headers)
        for name, value in (options.extra_headers or {}).items():
            if value is None:  # lets a caller drop a default header for one call
                headers.pop(name, None)
            else:
                headers[name] = value
        headers[ATTEMPT_HEADER] = str(attempt)  # always ours: it counts our attempts
        return headers

    def _request_id_for(self, options: RequestOptions) -> str:
        """A caller's own X-Request-Id wins; otherwise one new id per logical request."""
        for name, value in (options.extra_headers or {}).items():
            if name.lower() == REQUEST_ID_HEADER.lower() and value:
                return value
        for name, value in self.custom_headers.items():
            if name.lower() == REQUEST_ID_HEADER.lower() and value:
                return value
        return f"req_{uuid.uuid4().hex}"

    def _timeout_for(self, options: RequestOptions) -> httpx.Timeout:
        timeout = options.timeout if options.timeout is not None else self.timeout
        return timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)

    def _build_request(
        self, options: RequestOptions, request_id: str, attempt: int
    ) -> httpx.Request:
        headers = self._headers_for(options, request_id, attempt)
        # The send path reads the timeout from the request, so every request carries one.
        extensions = {"timeout": self._timeout_for(options).as_dict()}
        return httpx.Request(
            options.method,
            self._url_for(options),
            headers=headers,
            json=options.json_body,
            extensions=extensions,
        )

    def _log_attempt(self, request: httpx.Request, request_id: str, attempt: int) -> None:
        if not logger.isEnabledFor(logging.DEBUG):
            return  # skip building the redacted URL on every request
        url = request.url.copy_with(userinfo=b"")  # credentials in a URL stay out of logs
        logger.debug(
            "request %s %s request_id=%s attempt=%d",
            request.method,
            url,
            request_id,
            attempt,
        )

    # -- responses and errors -----------------------------------------------------------------

    def _transport_error(self, exc: httpx.TransportError, request_id: str) -> APIConnectionError:
        if isinstance(exc, httpx.TimeoutException):
            return APITimeoutError(request_id=request_id)
        return APIConnectionError(f"Connection error: {exc}", request_id=request_id)

    def _status_error(self, response: httpx.Response, content: bytes, request_id: str) -> APIError:
        headers = dict(response.headers)
        return make_api_error(
            response.status_code,
            parse_error_body(content),
            request_id=response.headers.get(REQUEST_ID_HEADER) or request_id,
            headers=headers,
            retry_after=parse_retry_after(headers),
            default_message=f"HTTP {response.status_code} {response.reason_phrase}".strip(),
        )

    def _parse_response(self, content: bytes, cast_to: type[ModelT], request_id: str) -> ModelT:
        try:
            return cast_to.model_validate_json(content)
        except ValidationError as exc:
            raise APIResponseValidationError(
                f"response is not a valid {cast_to.__name__}: {exc}",
                None,
                parse_error_body(content),
                request_id,
            ) from exc

    # -- retries ------------------------------------------------------------------------------

    def _retry_delay_s(self, retry_state: tenacity.RetryCallState) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome is not None else None
        retry_after = parse_retry_after(error.headers) if isinstance(error, APIError) else None
        return self.retry_policy.delay_s(retry_state.attempt_number, retry_after)

    def _log_retry(self, retry_state: tenacity.RetryCallState) -> None:
        error = retry_state.outcome.exception() if retry_state.outcome is not None else None
        delay = retry_state.next_action.sleep if retry_state.next_action is not None else 0.0
        logger.debug(
            "retrying after attempt %d failed (%s: %s); waiting %.2fs",
            retry_state.attempt_number,
            type(error).__name__,
            error,
            delay,
        )

    def _retry_settings(
        self, options: RequestOptions, sleep: Callable[[float], Any]
    ) -> dict[str, Any]:
        """Keyword arguments for tenacity's Retrying / AsyncRetrying."""
        max_retries = options.max_retries if options.max_retries is not None else self.max_retries
        return {
            "stop": tenacity.stop_after_attempt(max_retries + 1),
            "wait": self._retry_delay_s,
            "retry": tenacity.retry_if_exception(is_retryable_error),
            "before_sleep": self._log_retry,
            "sleep": sleep,
            "reraise": True,
        }
