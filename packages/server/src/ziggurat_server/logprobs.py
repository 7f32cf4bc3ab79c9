"""Engine `Logprob`s in OpenAI's two shapes: chat (`content` list) and legacy completions."""

from __future__ import annotations

from ziggurat_core.engine.outputs import Logprob
from ziggurat_core.protocol import (
    ChatChoiceLogprobs,
    ChatTokenLogprob,
    CompletionLogprobs,
    TopLogprob,
)

# A token the sampler ruled out (top_k, top_p, a grammar) has log-probability -inf, which JSON
# cannot carry (it would go out as null); OpenAI and vLLM send this floor instead.
LOGPROB_FLOOR = -9999.0


def _wire(logprob: float) -> float:
    return max(logprob, LOGPROB_FLOOR)


def chat_logprobs(entries: list[Logprob]) -> ChatChoiceLogprobs:
    """`bytes` are the token's exact bytes, part of a UTF-8 character maybe (then `token`
    shows U+FFFD)."""
    content = [
        ChatTokenLogprob(
            token=entry.token, logprob=_wire(entry.logprob), bytes=list(entry.token_bytes),
            top_logprobs=[TopLogprob(token=top.token, logprob=_wire(top.logprob),
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
        token_logprobs.append(_wire(entry.logprob))
        top_logprobs.append({top.token: _wire(top.logprob) for top in entry.top_logprobs})
        offsets.append(offset)
        offset += len(entry.token)
    return CompletionLogprobs(tokens=tokens, token_logprobs=token_logprobs,
                              top_logprobs=top_logprobs, text_offset=offsets)
