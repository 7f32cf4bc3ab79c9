"""How a conversation becomes a prompt, as the request asks: `continue_final_message` leaves the
last message open for the model to continue, `chat_template_kwargs` reach the template as
variables, and /tokenize counts exactly what a chat request would run."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from tokenizers import Tokenizer

CONVERSATION = [{"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "The quick brown"}]
QUESTION = [{"role": "user", "content": "Hi"}]
# The tiny model's ChatML template (tests/core/fixtures_models.py), written out by hand.
OPEN_ANSWER = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nThe quick brown"
WITH_NOTE = ("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
             "<|im_start|>assistant\n")
CONTINUE = {"add_generation_prompt": False, "continue_final_message": True}
NOTE = {"chat_template_kwargs": {"system_note": "be brief"}}


@pytest.mark.parametrize("messages, options, rendered", [
    (CONVERSATION, CONTINUE, OPEN_ANSWER),
    (QUESTION, NOTE, WITH_NOTE),
], ids=["continue_final_message", "chat_template_kwargs"])
def test_the_prompt_is_rendered_as_asked(client: httpx.Client, reference_tokenizer: Tokenizer,
                                         messages: list[dict[str, str]], options: dict[str, Any],
                                         rendered: str) -> None:
    expected = reference_tokenizer.encode(rendered).ids
    tokenized = client.post("/tokenize", json={"messages": messages, **options})
    assert tokenized.status_code == 200, tokenized.text
    assert tokenized.json()["tokens"] == expected
    chat = client.post("/v1/chat/completions", json={
        "messages": messages, "max_tokens": 2, "temperature": 0, **options})
    assert chat.status_code == 200, chat.text
    assert chat.json()["usage"]["prompt_tokens"] == len(expected)
    # Without the options the prompt differs: they are not dropped on the way.
    plain = client.post("/tokenize", json={"messages": messages}).json()["tokens"]
    assert plain != expected


def test_a_continued_answer_goes_on_from_its_last_token(client: httpx.Client) -> None:
    """The continuation is what the model predicts after the open answer: the same tokens as a
    completion of the rendered text."""
    chat = client.post("/v1/chat/completions", json={
        "messages": CONVERSATION, "max_tokens": 6, "temperature": 0, "ignore_eos": True,
        **CONTINUE}).json()
    completion = client.post("/v1/completions", json={
        "prompt": OPEN_ANSWER, "max_tokens": 6, "temperature": 0, "ignore_eos": True}).json()
    assert chat["choices"][0]["message"]["content"] == completion["choices"][0]["text"]


@pytest.mark.parametrize("path, body, param", [
    ("/v1/chat/completions", {"messages": CONVERSATION, "continue_final_message": True},
     "continue_final_message"),
    ("/tokenize", {"messages": CONVERSATION, "continue_final_message": True},
     "continue_final_message"),
    ("/v1/chat/completions", {"messages": QUESTION, "chat_template_kwargs": {"messages": []}},
     "chat_template_kwargs.messages"),
    ("/v1/chat/completions", {"messages": QUESTION,
                              "chat_template_kwargs": {"add_generation_prompt": False}},
     "chat_template_kwargs.add_generation_prompt"),
    ("/tokenize", {"prompt": "Hi", "chat_template_kwargs": {"system_note": "x"}},
     "chat_template_kwargs"),
    ("/tokenize", {"prompt": "Hi", **CONTINUE}, "add_generation_prompt"),
], ids=["both-endings-chat", "both-endings-tokenize", "reserved-messages",
        "reserved-generation-prompt", "prompt-with-kwargs", "prompt-with-continue"])
def test_template_options_that_cannot_apply_are_refused_by_name(
        client: httpx.Client, path: str, body: dict[str, Any], param: str) -> None:
    response = client.post(path, json={**body, "max_tokens": 1} if "chat" in path else body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_an_assistant_turn_without_text_cannot_be_continued(client: httpx.Client) -> None:
    messages = [QUESTION[0], {"role": "assistant", "content": "  "}]
    response = client.post("/v1/chat/completions", json={
        "messages": messages, "max_tokens": 1, **CONTINUE})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "messages"
    assert "continue_final_message" in error["message"]
