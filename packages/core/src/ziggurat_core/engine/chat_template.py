"""Chat templates: jinja2 rendered the way Hugging Face transformers renders them. No torch.

Templates come from model files and are untrusted, so they run in jinja2's immutable sandbox.
The environment mirrors transformers' `apply_chat_template`: `trim_blocks` and `lstrip_blocks`,
the `loopcontrols` extension, a `tojson` filter that does not HTML-escape, and the globals
`raise_exception` and `strftime_now`. `{% generation %}` blocks (used by transformers to mark
assistant tokens for training masks) are accepted and simply render their body.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.meta
import jinja2.nodes
import jinja2.parser
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """The template failed to compile or render, or it called `raise_exception(message)`."""


class NoChatTemplateError(ValueError):
    """The model ships no chat template, so chat messages cannot be turned into a prompt."""


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: renders the body unchanged."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(str(message))


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # jinja2's own tojson escapes <, >, & and ' for HTML; prompts need the plain JSON text.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(date_format: str) -> str:
    return datetime.now().strftime(date_format)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


class ChatTemplate:
    """A compiled chat template. Compiling happens once, here; rendering is per request."""

    def __init__(self, source: str, special_tokens: dict[str, str] | None = None) -> None:
        """`special_tokens` are template variables such as {"bos_token": "<s>", ...}."""
        if not isinstance(source, str) or not source.strip():
            raise ChatTemplateError("chat template is empty")
        self.source = source
        self.special_tokens: dict[str, str] = dict(special_tokens or {})
        try:
            environment = _environment()
            self._template = environment.from_string(source)
            variables = jinja2.meta.find_undeclared_variables(environment.parse(source))
        except jinja2.TemplateSyntaxError as exc:
            raise ChatTemplateError(f"chat template does not compile: {exc}") from exc
        # A template that never reads `tools` cannot show them to the model; the tokenizer then
        # spells tools, calls and results out in the messages instead (ziggurat_core.tools.hermes).
        self.renders_tools = "tools" in variables

    def render(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        documents: list[dict[str, Any]] | None = None,
        continue_final_message: bool = False,
        **kwargs: Any,
    ) -> str:
        """The prompt text for `messages`.

        `continue_final_message` leaves the last message open (the model continues it), so it
        cannot be combined with `add_generation_prompt`. Extra keyword arguments become
        template variables (e.g. `enable_thinking=False`) and override the special tokens.
        """
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ChatTemplateError("messages must be a list of dicts")
        if continue_final_message:
            if add_generation_prompt:
                raise ChatTemplateError(
                    "continue_final_message and add_generation_prompt cannot both be set"
                )
            if not messages:
                raise ChatTemplateError("continue_final_message needs at least one message")
        variables: dict[str, Any] = {
            **self.special_tokens,
            **kwargs,
            "messages": messages,
            "tools": tools,
            "documents": documents,
            "add_generation_prompt": add_generation_prompt,
        }
        try:
            rendered = self._template.render(**variables)
        except ChatTemplateError:
            raise
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"chat template failed to render: {exc}") from exc
        if continue_final_message:
            rendered = _cut_after_final_message(rendered, messages[-1])
        return rendered


def _cut_after_final_message(rendered: str, final_message: dict[str, Any]) -> str:
    """Drop what the template wrote after the last message's content (its end-of-turn marker)."""
    content = final_message.get("content")
    if isinstance(content, list):  # OpenAI content parts: the last text part ends the message
        texts = [part.get("text", "") for part in content if isinstance(part, dict)]
        content = texts[-1] if texts else ""
    if not isinstance(content, str) or not content.strip():
        raise ChatTemplateError("continue_final_message needs a final message with text content")
    # Templates often strip the content, so look for the stripped text.
    needle = content.strip()
    position = rendered.rfind(needle)
    if position < 0:
        raise ChatTemplateError("the final message's content does not appear in the rendered chat")
    return rendered[: position + len(needle)]
