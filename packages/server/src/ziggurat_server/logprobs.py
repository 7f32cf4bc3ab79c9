"""Engine `Logprob`s in OpenAI's two shapes: chat (`content` list) and legacy completions."""

from __future__ import annotations

from collections.abc import Callable

from ziggurat_core.engine.outputs import Logprob
from ziggurat_core.protocol import (
    ChatChoiceLogprobs,
    ChatTokenLogprob,
    CompletionLogprobs,
    TopLogprob,
)


def _top_sorted(entry: Logprob) -> list[tuple[int, float]]:
    return sorted(entry.top_logprobs.items(), key=lambda item: item[1], reverse=True)


def _text_of(entry: Logprob, token_id: int) -> str:
    return entry.top_tokens.get(token_id, "")


TokenBytes = Callable[[int], bytes]


def chat_logprobs(entries: list[Logprob], token_bytes: TokenBytes | None = None) -> ChatChoiceLogprobs:
    """`token_bytes` gives a token's exact bytes (part of a UTF-8 character, maybe); without
    it the displayed text is encoded."""

    def bytes_of(token_id: int, text: str) -> list[int]:
        return list(token_bytes(token_id) if token_bytes is not None else text.encode("utf-8"))

    content = []
    for entry in entries:
        tops = [
            TopLogprob(token=_text_of(entry, tid), logprob=lp,
                       bytes=bytes_of(tid, _text_of(entry, tid)))
            for tid, lp in _top_sorted(entry)
        ]
        content.append(ChatTokenLogprob(token=entry.token, logprob=entry.logprob,
                                        bytes=bytes_of(entry.token_id, entry.token),
                                        top_logprobs=tops))
    return ChatChoiceLogprobs(content=content)


def completion_logprobs(entries: list[Logprob], text_offset_start: int) -> CompletionLogprobs:
    """Parallel lists; `text_offset` counts characters from the start of the choice's text."""
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    offsets: list[int] = []
    offset = text_offset_start
    for entry in entries:
        tokens.append(entry.token)
        token_logprobs.append(entry.logprob)
        top_logprobs.append({_text_of(entry, tid): lp for tid, lp in _top_sorted(entry)})
        offsets.append(offset)
        offset += len(entry.token)
    return CompletionLogprobs(tokens=tokens, token_logprobs=token_logprobs,
                              top_logprobs=top_logprobs, text_offset=offsets)
