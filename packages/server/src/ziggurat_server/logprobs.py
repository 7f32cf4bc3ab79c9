"""Engine `Logprob`s in OpenAI's two shapes: chat (`content` list) and legacy completions."""

from __future__ import annotations

from ziggurat_core.engine.outputs import Logprob
from ziggurat_core.protocol import (
    ChatChoiceLogprobs,
    ChatTokenLogprob,
    CompletionLogprobs,
    TopLogprob,
)


def chat_logprobs(entries: list[Logprob]) -> ChatChoiceLogprobs:
    """`bytes` are the token's exact bytes, part of a UTF-8 character maybe (then `token`
    shows U+FFFD)."""
    content = [
        ChatTokenLogprob(
            token=entry.token, logprob=entry.logprob, bytes=list(entry.token_bytes),
            top_logprobs=[TopLogprob(token=top.token, logprob=top.logprob,
                                     bytes=list(top.token_bytes))
                          for top in entry.top_logprobs])
        for entry in entries
    ]
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
        top_logprobs.append({top.token: top.logprob for top in entry.top_logprobs})
        offsets.append(offset)
        offset += len(entry.token)
    return CompletionLogprobs(tokens=tokens, token_logprobs=token_logprobs,
                              top_logprobs=top_logprobs, text_offset=offsets)
