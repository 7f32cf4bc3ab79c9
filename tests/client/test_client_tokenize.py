"""Client.tokenize / detokenize: the requests they send (respx; the e2e tests run them against
the real server)."""

from __future__ import annotations

import pytest
import respx
from client_helpers import BASE, sent_json
from ziggurat import Client
from ziggurat._params import DETOKENIZE_PARAM_NAMES, TOKENIZE_PARAM_NAMES
from ziggurat.types import ChatMessage
from ziggurat_core.protocol import DetokenizeRequest, TokenizeRequest


def test_tokenize_and_detokenize_post_outside_the_api_prefix() -> None:
    with respx.mock(base_url=BASE) as router:
        tokenize = router.post("/tokenize").respond(
            200, json={"tokens": [5, 6], "count": 2, "max_model_len": 256})
        detokenize = router.post("/detokenize").respond(200, json={"prompt": "hi"})
        client = Client(base_url=BASE)
        counted = client.tokenize(
            model="tiny", messages=[ChatMessage(role="user", content="hi")],
            add_generation_prompt=False, continue_final_message=True,
            chat_template_kwargs={"enable_thinking": False}, add_special_tokens=None)
        text = client.detokenize((5, 6), model="tiny", extra_body={"x": 1})
    assert counted.tokens == [5, 6] and counted.count == 2 and counted.max_model_len == 256
    assert sent_json(tokenize) == {
        "model": "tiny", "messages": [{"role": "user", "content": "hi"}],
        "add_generation_prompt": False, "continue_final_message": True,
        "chat_template_kwargs": {"enable_thinking": False}}
    assert text.prompt == "hi"
    assert sent_json(detokenize) == {"tokens": [5, 6], "model": "tiny", "x": 1}


def test_tokenize_refuses_misspelt_names_and_string_inputs() -> None:
    client = Client(base_url=BASE)
    with pytest.raises(TypeError, match="promt"):
        client.tokenize(promt="hi")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="messages must be a list"):
        client.tokenize(messages="hi")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tokens must be a list"):
        client.detokenize("5 6")


def test_tokenize_params_match_the_request_model() -> None:
    """Every field /tokenize takes has a typed keyword argument, and no other."""
    assert set(TOKENIZE_PARAM_NAMES) == set(TokenizeRequest.model_fields)
    assert set(DETOKENIZE_PARAM_NAMES) == set(DetokenizeRequest.model_fields) - {"tokens"}
