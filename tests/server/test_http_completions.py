"""POST /v1/completions against the real server process with the tiny random model."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from tokenizers import Tokenizer

CONTEXT_WINDOW = 256  # the tiny model's max_position_embeddings
EOS_ID = 0  # <|endoftext|>


def complete(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/completions", json={"model": "tiny", **body})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def single_char_token(tokenizer: Tokenizer, char: str) -> int:
    token_id = tokenizer.token_to_id(char)
    assert token_id is not None, f"{char!r} is not a token of the tiny vocabulary"
    return token_id


def test_response_shape_and_usage(client: httpx.Client, reference_tokenizer: Tokenizer) -> None:
    body = complete(client, prompt="Hello world", max_tokens=5, temperature=0, ignore_eos=True)
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    assert isinstance(body["created"], int)
    assert body["model"] == "tiny"
    assert body["system_fingerprint"]
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "length"
    assert choice["logprobs"] is None
    prompt_tokens = len(reference_tokenizer.encode("Hello world").ids)
    cached = body["usage"]["prompt_tokens_details"]["cached_tokens"]  # earlier tests' prefix
    assert body["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 5,
                             "total_tokens": prompt_tokens + 5,
                             "prompt_tokens_details": {"cached_tokens": cached}}
    assert 0 <= cached < prompt_tokens


def test_max_tokens_defaults_to_16_like_openai(client: httpx.Client) -> None:
    body = complete(client, prompt="Hello", ignore_eos=True)
    assert body["usage"]["completion_tokens"] == 16
    assert body["choices"][0]["finish_reason"] == "length"


def test_token_id_prompts_and_n_number_choices_prompt_major(client: httpx.Client) -> None:
    first, second = [5, 6, 7, 8], [9, 10, 11]
    body = complete(client, prompt=[first, second], n=2, max_tokens=4, temperature=0,
                    ignore_eos=True)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["usage"]["prompt_tokens"] == len(first) + len(second)
    assert body["usage"]["completion_tokens"] == 4 * 4
    # Greedy: each prompt's samples equal that prompt's single completion.
    alone_first = complete(client, prompt=first, max_tokens=4, temperature=0, ignore_eos=True)
    alone_second = complete(client, prompt=second, max_tokens=4, temperature=0, ignore_eos=True)
    texts = [c["text"] for c in body["choices"]]
    assert texts[0] == texts[1] == alone_first["choices"][0]["text"]
    assert texts[2] == texts[3] == alone_second["choices"][0]["text"]
    assert alone_first["usage"]["prompt_tokens"] == len(first)


def test_list_of_string_prompts(client: httpx.Client, reference_tokenizer: Tokenizer) -> None:
    prompts = ["The quick brown fox", "Hello"]
    body = complete(client, prompt=prompts, max_tokens=3, temperature=0, ignore_eos=True)
    assert len(body["choices"]) == 2
    expected = sum(len(reference_tokenizer.encode(p).ids) for p in prompts)
    assert body["usage"]["prompt_tokens"] == expected
    for index, prompt in enumerate(prompts):
        alone = complete(client, prompt=prompt, max_tokens=3, temperature=0, ignore_eos=True)
        assert body["choices"][index]["text"] == alone["choices"][0]["text"]


def test_echo_prepends_the_prompt(client: httpx.Client) -> None:
    plain = complete(client, prompt="Once upon a time", max_tokens=4, temperature=0,
                     ignore_eos=True)
    echoed = complete(client, prompt="Once upon a time", max_tokens=4, temperature=0,
                      ignore_eos=True, echo=True)
    assert echoed["choices"][0]["text"] == "Once upon a time" + plain["choices"][0]["text"]


def test_logit_bias_forces_a_token(client: httpx.Client, reference_tokenizer: Tokenizer) -> None:
    token_a = single_char_token(reference_tokenizer, "a")
    body = complete(client, prompt="Hello", max_tokens=6, ignore_eos=True,
                    logit_bias={str(token_a): 100})
    assert body["choices"][0]["text"] == "a" * 6


@pytest.mark.parametrize("bias, fragment", [
    ({"100000": 5}, "outside the vocabulary"),
    # The request model refuses keys that are not token ids and biases beyond +-100.
    ({"-1": 5}, "should match pattern"),
    ({"abc": 5}, "should match pattern"),
    ({"5": 500}, "less than or equal to 100"),
])
def test_bad_logit_bias_is_400(client: httpx.Client, bias: dict[str, float], fragment: str) -> None:
    response = client.post("/v1/completions", json={"prompt": "Hi", "logit_bias": bias})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"].split(".")[0] == "logit_bias"
    assert fragment in error["message"]


def test_legacy_logprobs_shape(client: httpx.Client, reference_tokenizer: Tokenizer) -> None:
    token_a = single_char_token(reference_tokenizer, "a")
    body = complete(client, prompt="Hello", max_tokens=5, ignore_eos=True, logprobs=3,
                    logit_bias={str(token_a): 100})
    logprobs = body["choices"][0]["logprobs"]
    assert logprobs["tokens"] == ["a"] * 5
    assert logprobs["text_offset"] == [0, 1, 2, 3, 4]
    assert len(logprobs["token_logprobs"]) == 5
    assert all(lp <= 0.0 for lp in logprobs["token_logprobs"])
    assert len(logprobs["top_logprobs"]) == 5
    for top in logprobs["top_logprobs"]:
        # Three alternatives (fewer only if two tokens display as the same text).
        assert 1 <= len(top) <= 3
        assert all(lp <= 0.0 for lp in top.values())


def test_greedy_logprobs_top_entry_is_the_chosen_token(client: httpx.Client) -> None:
    body = complete(client, prompt="Paged attention", max_tokens=6, temperature=0,
                    ignore_eos=True, logprobs=2)
    logprobs = body["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == 6
    for chosen, top in zip(logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True):
        assert chosen == pytest.approx(max(top.values()), abs=1e-4)
    offsets = logprobs["text_offset"]
    assert offsets == sorted(offsets) and offsets[0] == 0


def test_stop_token_ids_and_min_tokens(client: httpx.Client, reference_tokenizer: Tokenizer) -> None:
    token_a = single_char_token(reference_tokenizer, "a")
    bias = {str(token_a): 100}
    stopped = complete(client, prompt="Hello", max_tokens=10, logit_bias=bias,
                       stop_token_ids=[token_a])
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert stopped["usage"]["completion_tokens"] == 1
    assert stopped["choices"][0]["text"] == ""
    # min_tokens holds stop tokens back for 3 tokens; the 4th is "a" again, and stops.
    later = complete(client, prompt="Hello", max_tokens=10, logit_bias=bias,
                     stop_token_ids=[token_a], min_tokens=3)
    assert later["usage"]["completion_tokens"] == 4
    assert later["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("stop", ["aaa", ["zzz", "aaa"]])
def test_stop_strings(client: httpx.Client, reference_tokenizer: Tokenizer, stop: Any) -> None:
    token_a = single_char_token(reference_tokenizer, "a")
    body = complete(client, prompt="Hello", max_tokens=10, logit_bias={str(token_a): 100},
                    stop=stop)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["text"] == ""  # the stop string itself is not returned
    assert body["usage"]["completion_tokens"] == 3


def test_eos_stops_unless_ignore_eos(client: httpx.Client) -> None:
    bias = {str(EOS_ID): 100}
    stopped = complete(client, prompt="Hello", max_tokens=5, logit_bias=bias)
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert stopped["usage"]["completion_tokens"] == 1
    ignored = complete(client, prompt="Hello", max_tokens=5, logit_bias=bias, ignore_eos=True)
    assert ignored["choices"][0]["finish_reason"] == "length"
    assert ignored["usage"]["completion_tokens"] == 5


def test_seed_makes_sampling_reproducible(client: httpx.Client) -> None:
    def sample(seed: int) -> str:
        body = complete(client, prompt="Hello", max_tokens=8, temperature=1.0, seed=seed,
                        ignore_eos=True)
        return str(body["choices"][0]["text"])

    assert sample(1234) == sample(1234)
    assert len({sample(seed) for seed in range(4)}) > 1


def test_sampling_parameters_are_accepted(client: httpx.Client) -> None:
    body = complete(client, prompt="Hello", max_tokens=4, temperature=0.7, top_p=0.9, top_k=20,
                    min_p=0.05, frequency_penalty=0.5, presence_penalty=0.5,
                    repetition_penalty=1.2, user="tester", n=3, ignore_eos=True)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert body["usage"]["completion_tokens"] == 12


@pytest.mark.parametrize(("fields", "param", "fragment"), [
    # Refused by SamplingParams while the route builds them.
    ({"min_tokens": 5, "max_tokens": 2}, "min_tokens", "must not exceed max_tokens"),
    # Refused where the request enters the engine (only the engine knows the vocabulary).
    ({"stop_token_ids": [99999]}, "stop_token_ids", "outside the vocabulary"),
])
def test_engine_refusals_are_400_naming_the_param(client: httpx.Client, fields: dict[str, Any],
                                                  param: str, fragment: str) -> None:
    response = client.post("/v1/completions", json={"prompt": "Hi", **fields})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert fragment in error["message"]


def test_suffix_is_not_supported(client: httpx.Client) -> None:
    response = client.post("/v1/completions", json={"prompt": "Hi", "suffix": "end"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"] == "suffix is not supported"
    assert error["param"] == "suffix"


@pytest.mark.parametrize(("body", "param"), [
    ({"prompt": "Hi", "echo": True, "logprobs": 1}, "echo"),
    ({"prompt": "Hi", "prompt_logprobs": 1}, "prompt_logprobs"),
])
def test_prompt_logprobs_are_refused_naming_the_field(client: httpx.Client, body: dict[str, Any],
                                                      param: str) -> None:
    """The engine computes no prompt logprobs: asking for them is a 400, never a response
    that silently leaves them out."""
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    assert "prompt logprobs" in error["message"]


def test_chat_prompt_logprobs_are_refused(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "Hi"}], "prompt_logprobs": 0})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompt_logprobs"


def test_prompt_beyond_context_window_names_the_numbers(client: httpx.Client) -> None:
    prompt = [7] * 250
    response = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 10})
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "250" in message and str(CONTEXT_WINDOW) in message


def test_prompt_token_outside_vocabulary_is_400(client: httpx.Client) -> None:
    response = client.post("/v1/completions", json={"prompt": [1, 2, 99999]})
    assert response.status_code == 400
    assert "99999" in response.json()["error"]["message"]
