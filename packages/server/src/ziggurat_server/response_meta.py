"""Fields shared by every response and stream chunk of one request, and usage counting."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ziggurat_core.engine.outputs import RequestOutput
from ziggurat_core.protocol import PromptTokensDetails, Usage

from . import __version__

SYSTEM_FINGERPRINT = f"fp_ziggurat_{__version__}"


@dataclass
class ResponseMeta:
    id_prefix: str  # "chatcmpl" or "cmpl"
    model: str
    n: int
    include_usage: bool = False
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        if not self.id:
            self.id = f"{self.id_prefix}-{uuid.uuid4().hex}"

    def envelope(self, obj: str) -> dict[str, Any]:
        """The fields every body and chunk of this request starts with, as model arguments."""
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": SYSTEM_FINGERPRINT}

    def chunk_envelope(self, obj: str) -> dict[str, Any]:
        """A content chunk's envelope: OpenAI sends `usage: null` on every chunk but the last
        when usage was asked for, and no `usage` key at all otherwise."""
        envelope = self.envelope(obj)
        if self.include_usage:
            envelope["usage"] = None
        return envelope

    def choice_index(self, prompt_index: int, sample_index: int) -> int:
        # Several prompts with n samples each: prompt-major order, as OpenAI numbers them.
        return prompt_index * self.n + sample_index


def usage_of(outputs: list[RequestOutput]) -> Usage:
    prompt_tokens = sum(len(output.prompt_token_ids) for output in outputs)
    completion_tokens = sum(len(c.token_ids) for output in outputs for c in output.outputs)
    cached_tokens = sum(output.num_cached_tokens for output in outputs)
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens,
                 prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens))
