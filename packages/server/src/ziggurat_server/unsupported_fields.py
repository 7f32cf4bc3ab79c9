"""OpenAI request fields that Ziggurat does not implement: each gets a 400 naming it, never a
silent 200 that pretends it was honoured.

Fields that only concern OpenAI's own platform and cannot change a response are accepted and
ignored: `metadata` (tags for stored completions), `user`, `safety_identifier`,
`prompt_cache_key` (a routing hint; Ziggurat's prefix cache needs none), `store: false` and
`service_tier` "auto"/"default". Image, audio and file content parts are refused where the
message enters (protocol/chat.py): the served models read text only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ziggurat_core.protocol.common import SamplingFields

from .errors import bad_request

# field -> (does this value ask for something unimplemented?, why it is refused)
_UNSUPPORTED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "audio": (lambda value: True, "audio output is not supported: the model generates text only"),
    "modalities": (lambda value: value != ["text"],
                   'only the "text" modality is supported: the model generates text only'),
    "prediction": (lambda value: True, "predicted outputs (prediction) are not supported"),
    "web_search_options": (lambda value: True, "web search is not supported"),
    "reasoning_effort": (lambda value: True,
                         "reasoning_effort is not supported: the served model has no reasoning "
                         "mode"),
    "verbosity": (lambda value: True, "verbosity is not supported by the served model"),
    "store": (lambda value: value is not False,
              "stored completions are not supported (store must be false or left out)"),
    "service_tier": (lambda value: value not in ("auto", "default"),
                     'service_tier must be "auto" or "default": there is one tier'),
}


def reject_unsupported_fields(fields: SamplingFields) -> None:
    """Raise a 400 for the first field given (not null) whose value asks for something
    Ziggurat does not do."""
    given = fields.model_extra or {}
    for name, (unsupported, reason) in _UNSUPPORTED.items():
        value = given.get(name)
        if value is not None and unsupported(value):
            raise bad_request(f"{name}: {reason}", param=name, code="unsupported_parameter")
