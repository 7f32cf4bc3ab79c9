"""`client.completions`: POST /v1/completions (the legacy text-completion endpoint)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Unpack, overload

from ziggurat_core.protocol import Completion

from .._params import COMPLETION_PARAM_NAMES, CompletionCreateKwargs, PromptParam
from .._request import RequestOptions, create_request
from .._streaming import AsyncStream, Stream

if TYPE_CHECKING:
    from .._async_client import AsyncClient
    from .._client import Client


def build_completion_request(
    model: str,
    prompt: PromptParam,
    stream: bool,
    kwargs: CompletionCreateKwargs,
) -> RequestOptions:
    """The request for one create call (shared by the sync and async resources)."""
    return create_request(
        "/completions", {"model": model, "prompt": prompt}, kwargs,
        COMPLETION_PARAM_NAMES, "completions.create", stream,
    )


class Completions:
    def __init__(self, client: Client) -> None:
        self._client = client

    @overload
    def create(
        self,
        model: str,
        prompt: PromptParam,
        *,
        stream: Literal[False] = False,
        **kwargs: Unpack[CompletionCreateKwargs],
    ) -> Completion: ...

    @overload
    def create(
        self,
        model: str,
        prompt: PromptParam,
        *,
        stream: Literal[True],
        **kwargs: Unpack[CompletionCreateKwargs],
    ) -> Stream[Completion]: ...

    @overload
    def create(
        self,
        model: str,
        prompt: PromptParam,
        *,
        stream: bool,
        **kwargs: Unpack[CompletionCreateKwargs],
    ) -> Completion | Stream[Completion]: ...

    def create(
        self,
        model: str,
        prompt: PromptParam,
        *,
        stream: bool = False,
        **kwargs: Unpack[CompletionCreateKwargs],
    ) -> Completion | Stream[Completion]:
        """Complete `prompt`; with `stream=True`, iterate the returned chunks (also `Completion`s)."""
        options = build_completion_request(model, prompt, stream, kwargs)
        if stream:
            return self._client._request_stream(options, Completion)
        return self._client._request(options, Completion)


class AsyncCompletions:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    @overload
    async def create(
        self,
        model: str,
        prompt: PromptParam,
        *,
        stream: Literal[False] = False,
        **kwargs: Unpack[CompletionCreateKwargs],
    ) -> Completion: ...

    @overload
    async def create(
        self,
        model: str,
        prompt: PromptParam,
        *,
        stream: Literal[True],
        **kwargs: Unpack[CompletionCreateKwargs],
    ) -> AsyncStream[Completion]: ...

    @overload
    async def create(
        self,
        model: str,
        prompt: PromptParam,
        *,
        stream: bool,
        **kwargs: Unpack[CompletionCreateKwargs],
    ) -> Completion | AsyncStream[Completion]: ...

    async def create(
        self,
        model: str,
        prompt: PromptParam,
        *,
        stream: bool = False,
        **kwargs: Unpack[CompletionCreateKwargs],
    ) -> Completion | AsyncStream[Completion]:
        """Complete `prompt`; with `stream=True`, `async for` over the returned chunks."""
        options = build_completion_request(model, prompt, stream, kwargs)
        if stream:
            return await self._client._request_stream(options, Completion)
        return await self._client._request(options, Completion)
