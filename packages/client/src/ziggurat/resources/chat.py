"""`client.chat.completions`: POST /v1/chat/completions."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal, Unpack, cast, overload

from ziggurat_core.protocol import ChatCompletion, ChatCompletionChunk

from .._params import CHAT_COMPLETION_PARAM_NAMES, ChatCompletionCreateKwargs, MessageParam
from .._parsing import ParsedChatCompletion, ParsedT, parse_chat_completion
from .._request import RequestOptions, create_request
from .._streaming import AsyncStream, Stream

if TYPE_CHECKING:
    from .._async_client import AsyncClient
    from .._client import Client


def build_chat_request(
    model: str,
    messages: Iterable[MessageParam],
    stream: bool,
    kwargs: ChatCompletionCreateKwargs,
) -> RequestOptions:
    """The request for one create call (shared by the sync and async resources)."""
    if isinstance(messages, str | bytes):
        raise TypeError("messages must be a list of messages, not a string")
    return create_request(
        "/chat/completions", {"model": model, "messages": list(messages)}, kwargs,
        CHAT_COMPLETION_PARAM_NAMES, "chat.completions.create", stream,
    )


class ChatCompletions:
    def __init__(self, client: Client) -> None:
        self._client = client

    @overload
    def create(
        self,
        model: str,
        messages: Iterable[MessageParam],
        *,
        stream: Literal[False] = False,
        **kwargs: Unpack[ChatCompletionCreateKwargs],
    ) -> ChatCompletion: ...

    @overload
    def create(
        self,
        model: str,
        messages: Iterable[MessageParam],
        *,
        stream: Literal[True],
        **kwargs: Unpack[ChatCompletionCreateKwargs],
    ) -> Stream[ChatCompletionChunk]: ...

    @overload
    def create(
        self,
        model: str,
        messages: Iterable[MessageParam],
        *,
        stream: bool,
        **kwargs: Unpack[ChatCompletionCreateKwargs],
    ) -> ChatCompletion | Stream[ChatCompletionChunk]: ...

    def create(
        self,
        model: str,
        messages: Iterable[MessageParam],
        *,
        stream: bool = False,
        **kwargs: Unpack[ChatCompletionCreateKwargs],
    ) -> ChatCompletion | Stream[ChatCompletionChunk]:
        """Create a chat completion; with `stream=True`, iterate the returned chunks."""
        options = build_chat_request(model, messages, stream, kwargs)
        if stream:
            return self._client._request_stream(options, ChatCompletionChunk)
        return self._client._request(options, ChatCompletion)

    def parse(  # type: ignore[misc]  # response_format is taken here, never left in kwargs
        self,
        model: str,
        messages: Iterable[MessageParam],
        *,
        response_format: type[ParsedT],
        **kwargs: Unpack[ChatCompletionCreateKwargs],
    ) -> ParsedChatCompletion[ParsedT]:
        """Create a chat completion constrained to `response_format`'s JSON schema; each
        choice's `message.parsed` is the content as a `response_format` instance."""
        params = cast(ChatCompletionCreateKwargs, {**kwargs, "response_format": response_format})
        options = build_chat_request(model, messages, False, params)
        return parse_chat_completion(self._client._request(options, ChatCompletion), response_format)


class AsyncChatCompletions:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    @overload
    async def create(
        self,
        model: str,
        messages: Iterable[MessageParam],
        *,
        stream: Literal[False] = False,
        **kwargs: Unpack[ChatCompletionCreateKwargs],
    ) -> ChatCompletion: ...

    @overload
    async def create(
        self,
        model: str,
        messages: Iterable[MessageParam],
        *,
        stream: Literal[True],
        **kwargs: Unpack[ChatCompletionCreateKwargs],
    ) -> AsyncStream[ChatCompletionChunk]: ...

    @overload
    async def create(
        self,
        model: str,
        messages: Iterable[MessageParam],
        *,
        stream: bool,
        **kwargs: Unpack[ChatCompletionCreateKwargs],
    ) -> ChatCompletion | AsyncStream[ChatCompletionChunk]: ...

    async def create(
        self,
        model: str,
        messages: Iterable[MessageParam],
        *,
        stream: bool = False,
        **kwargs: Unpack[ChatCompletionCreateKwargs],
    ) -> ChatCompletion | AsyncStream[ChatCompletionChunk]:
        """Create a chat completion; with `stream=True`, `async for` over the returned chunks."""
        options = build_chat_request(model, messages, stream, kwargs)
        if stream:
            return await self._client._request_stream(options, ChatCompletionChunk)
        return await self._client._request(options, ChatCompletion)

    async def parse(  # type: ignore[misc]  # response_format is taken here, never left in kwargs
        self,
        model: str,
        messages: Iterable[MessageParam],
        *,
        response_format: type[ParsedT],
        **kwargs: Unpack[ChatCompletionCreateKwargs],
    ) -> ParsedChatCompletion[ParsedT]:
        """Create a chat completion constrained to `response_format`'s JSON schema; each
        choice's `message.parsed` is the content as a `response_format` instance."""
        params = cast(ChatCompletionCreateKwargs, {**kwargs, "response_format": response_format})
        options = build_chat_request(model, messages, False, params)
        completion = await self._client._request(options, ChatCompletion)
        return parse_chat_completion(completion, response_format)


class Chat:
    def __init__(self, client: Client) -> None:
        self.completions = ChatCompletions(client)


class AsyncChat:
    def __init__(self, client: AsyncClient) -> None:
        self.completions = AsyncChatCompletions(client)
