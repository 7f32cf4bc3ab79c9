"""ChatTemplate: jinja2 chat templates rendered with Hugging Face semantics."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from test_tokenizer import shared_smollm2_tokenizer, transformers_smollm2
from ziggurat_core.engine.chat_template import ChatTemplate, ChatTemplateError

SYSTEM = {"role": "system", "content": "You are terse."}
USER = {"role": "user", "content": "What is the capital of France?"}
ASSISTANT = {"role": "assistant", "content": "Paris."}
FOLLOW_UP = {"role": "user", "content": "And of Italy? Answer with <b>one</b> word & a 🙂."}

CONVERSATIONS = {
    "single_turn": [USER],
    "multi_turn_with_system": [SYSTEM, USER, ASSISTANT, FOLLOW_UP],
    "multi_turn_without_system": [USER, ASSISTANT, FOLLOW_UP],
    "ends_with_assistant": [SYSTEM, USER, ASSISTANT],
}


@pytest.fixture(scope="module")
def smollm2_template() -> ChatTemplate:
    template = shared_smollm2_tokenizer().chat_template
    assert template is not None
    return template


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_smollm2_template_matches_transformers(
    smollm2_template: ChatTemplate, name: str, add_generation_prompt: bool
) -> None:
    messages = CONVERSATIONS[name]
    expected = transformers_smollm2().apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert smollm2_template.render(messages, add_generation_prompt=add_generation_prompt) == expected


def test_smollm2_template_adds_default_system_prompt(smollm2_template: ChatTemplate) -> None:
    assert smollm2_template.render([{"role": "user", "content": "Hi"}]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
        "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_raise_exception_gives_chat_template_error() -> None:
    template = ChatTemplate(
        "{% if messages[0]['role'] != 'user' %}"
        "{{ raise_exception('Conversation must start with a user message') }}{% endif %}ok"
    )
    assert template.render([USER]) == "ok"
    with pytest.raises(ChatTemplateError, match="Conversation must start with a user message"):
        template.render([ASSISTANT])
    assert issubclass(ChatTemplateError, ValueError)


def test_tojson_keeps_text_unescaped_and_takes_options() -> None:
    tools = [{"name": "get_weather", "description": "<b>Weather</b> & 'more' in Zürich"}]
    template = ChatTemplate("{{ tools | tojson }}|{{ tools[0] | tojson(indent=2) }}")
    rendered = template.render([USER], tools=tools)
    compact, indented = rendered.split("|", 1)
    assert compact == json.dumps(tools, ensure_ascii=False)
    assert indented == json.dumps(tools[0], ensure_ascii=False, indent=2)


def test_blocks_trim_newlines_and_leading_whitespace() -> None:
    # trim_blocks drops the newline after a tag, lstrip_blocks the indentation before one.
    template = ChatTemplate(
        "{% for m in messages %}\n    {% if m['role'] == 'user' %}\n[{{ m['content'] }}]\n"
        "    {% endif %}\n{% endfor %}"
    )
    assert template.render([USER, ASSISTANT, FOLLOW_UP]) == (
        f"[{USER['content']}]\n[{FOLLOW_UP['content']}]\n"
    )


def test_loop_controls() -> None:
    template = ChatTemplate(
        "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
        "{% if m['role'] == 'system' %}{% continue %}{% endif %}{{ m['role'] }};{% endfor %}"
    )
    assert template.render([SYSTEM, USER, ASSISTANT, FOLLOW_UP]) == "user;"


def test_special_tokens_kwargs_and_generation_prompt_variables() -> None:
    template = ChatTemplate(
        "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}>{% endif %}{% if enable_thinking is defined %}"
        "{{ enable_thinking }}{% endif %}{{ tools is none }}",
        special_tokens={"bos_token": "<s>", "eos_token": "</s>"},
    )
    assert template.render([USER]) == f"<s>{USER['content']}</s>>True"
    assert template.render([USER], add_generation_prompt=False, enable_thinking=False,
                           tools=[{}]) == f"<s>{USER['content']}</s>FalseFalse"


def test_strftime_now() -> None:
    rendered = ChatTemplate("{{ strftime_now('%Y-%m-%d') }}").render([USER])
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", rendered)


def test_generation_blocks_render_their_body() -> None:
    template = ChatTemplate(
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{% generation %}"
        "{{ m['content'] }}{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}|{% endfor %}"
    )
    assert template.render([USER, ASSISTANT]) == f"{USER['content']}|{ASSISTANT['content']}|"


def test_continue_final_message_leaves_the_last_message_open(
    smollm2_template: ChatTemplate,
) -> None:
    messages = [USER, {"role": "assistant", "content": "The capital is"}]
    rendered = smollm2_template.render(
        messages, add_generation_prompt=False, continue_final_message=True
    )
    assert rendered.endswith("<|im_start|>assistant\nThe capital is")
    with pytest.raises(ChatTemplateError):
        smollm2_template.render(messages, add_generation_prompt=True, continue_final_message=True)


@pytest.mark.parametrize(
    "source",
    [
        "{{ messages.append({'role': 'user'}) }}",  # the sandbox makes inputs immutable
        "{{ ''.__class__.__mro__ }}",  # no access to Python internals
        "{{ messages[0]['content'] | no_such_filter }}",
    ],
)
def test_unsafe_or_broken_templates_raise_chat_template_error(source: str) -> None:
    with pytest.raises(ChatTemplateError):
        ChatTemplate(source).render([USER])


@pytest.mark.parametrize("source", ["{% for m in messages %}", "{{ }}", "", "   "])
def test_templates_that_do_not_compile_raise(source: str) -> None:
    with pytest.raises(ChatTemplateError):
        ChatTemplate(source)


def test_messages_must_be_a_list_of_dicts() -> None:
    template = ChatTemplate("{{ messages | length }}")
    bad: Any = ["hello"]
    with pytest.raises(ChatTemplateError):
        template.render(bad)
