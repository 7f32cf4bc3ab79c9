"""Tools in the prompt: SmolLM2's template knows nothing of tools, so the Hermes section, calls and
results are spelled out in its turns; a template that renders tools is used as it is."""

from __future__ import annotations

import json
from typing import Any

from test_tokenizer import shared_smollm2_tokenizer, smollm2_metadata
from ziggurat_core.engine.chat_template import ChatTemplate
from ziggurat_core.engine.tokenizer import Tokenizer
from ziggurat_core.protocol import ChatMessage

TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
ROUND_TRIP: list[dict[str, Any]] = [
    {"role": "user", "content": "Weather in Paris and Oslo?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_2", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
    {"role": "tool", "tool_call_id": "call_2", "content": "4 C, rain"},
]
# A template in the style of models trained for tools: it reads `tools` itself.
TOOLS_TEMPLATE = (
    "{% if tools %}[TOOLS]{% for tool in tools %}{{ tool.function.name }};{% endfor %}[/TOOLS]"
    "{% endif %}{% for m in messages %}<{{ m.role }}>{{ m.content or '' }}"
    "{% for c in m.tool_calls or [] %}[CALL {{ c.function.name }} "
    "{{ c.function.arguments | tojson }}]{% endfor %}</{{ m.role }}>{% endfor %}"
)


def template_messages() -> list[dict[str, Any]]:
    """The round trip as the server hands it to the engine (through the protocol model)."""
    return [ChatMessage.model_validate(m).to_template_dict() for m in ROUND_TRIP]


def test_renders_tools_is_read_from_the_template_source() -> None:
    assert ChatTemplate(TOOLS_TEMPLATE).renders_tools
    assert not ChatTemplate("{% for m in messages %}{{ m.content }}{% endfor %}").renders_tools


def test_smollm2_gets_the_hermes_tools_section() -> None:
    tokenizer = shared_smollm2_tokenizer()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Weather in Paris?"}],
                                           tools=[TOOL])
    system = prompt[:prompt.index("<|im_start|>user")]
    assert system.startswith("<|im_start|>system\n# Tools")
    assert "<tools>\n" + json.dumps(TOOL) + "\n</tools>" in system
    assert "<tool_call>" in system
    # The tools section replaces SmolLM2's default system prompt, not the user's own.
    with_system = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        tools=[TOOL])
    assert with_system.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    assert with_system.count("<|im_start|>system") == 1


def test_smollm2_renders_the_round_trip() -> None:
    prompt = shared_smollm2_tokenizer().apply_chat_template(template_messages(), tools=[TOOL])
    assert ("<|im_start|>assistant\n"
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
            "<|im_end|>") in prompt
    # Both results come back in one user turn, in order.
    assert ("<|im_start|>user\n<tool_response>\n18 C, sunny\n</tool_response>\n"
            "<tool_response>\n4 C, rain\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\n") in prompt
    assert "<|im_start|>tool" not in prompt


def test_without_tools_a_plain_conversation_is_unchanged() -> None:
    tokenizer = shared_smollm2_tokenizer()
    messages = [{"role": "user", "content": "Hi"}]
    assert tokenizer.apply_chat_template(messages) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_a_template_that_renders_tools_is_used_as_it_is() -> None:
    metadata = {**smollm2_metadata(), "tokenizer.chat_template": TOOLS_TEMPLATE}
    tokenizer = Tokenizer.from_gguf_metadata(metadata)
    prompt = tokenizer.apply_chat_template(template_messages(), tools=[TOOL])
    assert prompt.startswith("[TOOLS]get_weather;[/TOOLS]<user>Weather in Paris and Oslo?</user>")
    assert '[CALL get_weather {"city": "Paris"}]' in prompt  # arguments handed over as an object
    assert "<tool>18 C, sunny</tool>" in prompt
    assert "# Tools" not in prompt and "<tool_response>" not in prompt
