"""Prompts become token ids in the frontend's worker pool, never on the event loop or the
engine thread.

Rendering a chat template and tokenising a long prompt take time in proportion to its length;
on the event loop that time would stall every other request (/health included), on the
engine's stepping thread every running stream's next token. The tokenizer releases the GIL
while it encodes, so a worker thread runs beside both, at a lower CPU priority than the engine
(frontend_pool.py says why). The engine gets token ids and still makes every check of them
(context window, vocabulary) where a request enters it."""

from __future__ import annotations

from ziggurat_core.engine.inputs import ChatMessage, ToolDefinition
from ziggurat_core.protocol.chat import ChatTemplateFields

from .errors import bad_request
from .frontend_pool import FrontendPool
from .serving_engine import ServingEngine

# What a chat template raises on messages it cannot render (jinja's `raise_exception`, a
# missing key, a value of the wrong type).
TEMPLATE_ERRORS = (ValueError, TypeError, KeyError)


async def encode_text(pool: FrontendPool, engine: ServingEngine, text: str, *,
                      add_special_tokens: bool = True) -> list[int]:
    """`text`'s token ids, as the engine would tokenise a text prompt."""
    return await pool.run(lambda: engine.encode(text, add_special_tokens=add_special_tokens))


async def encode_chat(pool: FrontendPool, engine: ServingEngine, messages: list[ChatMessage],
                      template: ChatTemplateFields, *, tools: list[ToolDefinition] | None = None,
                      add_special_tokens: bool = False) -> list[int]:
    """The token ids of a conversation rendered by the model's chat template as `template`
    asks; a template that refuses the messages is a 400 naming `messages`."""

    def render_and_encode() -> list[int]:
        text = engine.apply_chat_template(
            messages, add_generation_prompt=template.add_generation_prompt, tools=tools,
            continue_final_message=template.continue_final_message,
            template_kwargs=template.chat_template_kwargs)
        # The template writes any BOS it wants, unless asked otherwise.
        return engine.encode(text, add_special_tokens=add_special_tokens)

    try:
        return await pool.run(render_and_encode)
    except TEMPLATE_ERRORS as exc:
        raise bad_request(f"chat template failed: {exc}", param="messages") from None


async def decode_tokens(pool: FrontendPool, engine: ServingEngine, token_ids: list[int]) -> str:
    """The text of `token_ids` (a prompt given as ids, echoed back or detokenised)."""
    return await pool.run(lambda: engine.decode(token_ids))
