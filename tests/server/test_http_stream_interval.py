"""`--stream-interval N` on a real server: streamed responses come in fewer chunks, and what
they carry is what a server without it streams: the same text, every token's logprobs, the
same finish reason and usage."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fixtures_models import TinyModel
from server_helpers import DONE, TINY_NUM_KV_BLOCKS, chat_text, parse_sse
from server_process import ServerProcess

INTERVAL = 4


@pytest.fixture(scope="module")
def paced_server(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("paced-server-logs"),
                           "--model", str(tiny_model.gguf_path), "--served-model-name", "tiny",
                           "--num-kv-blocks", str(TINY_NUM_KV_BLOCKS), "--max-num-seqs", "64",
                           "--stream-interval", str(INTERVAL))
    server.wait_ready()
    yield server
    server.stop()


def _stream(server: ServerProcess, path: str, body: dict[str, Any]) -> list[Any]:
    response = httpx.post(f"{server.base_url}{path}", json={**body, "stream": True},
                          timeout=60.0)
    assert response.status_code == 200, response.text
    events = parse_sse(response.text)
    assert events[-1] == DONE
    return events[:-1]


def _choice_events(events: list[Any], index: int) -> list[dict[str, Any]]:
    return [choice for event in events for choice in event["choices"]
            if choice["index"] == index]


def _tokens(entries: list[dict[str, Any]]) -> list[Any]:
    return [(e["token"], e["bytes"], [(t["token"], t["bytes"]) for t in e["top_logprobs"]])
            for e in entries]


def _values(entries: list[dict[str, Any]]) -> list[float]:
    return [value for e in entries for value in (e["logprob"], *(t["logprob"] for t in e["top_logprobs"]))]


def test_chat_chunks_every_n_tokens_carry_every_token(
        tiny_server: ServerProcess, paced_server: ServerProcess) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Tell me a story"}],
            "max_tokens": 21, "temperature": 0, "ignore_eos": True, "n": 2, "logprobs": True,
            "top_logprobs": 2, "stream_options": {"include_usage": True}}
    every_token = _stream(tiny_server, "/v1/chat/completions", body)
    paced = _stream(paced_server, "/v1/chat/completions", body)
    assert paced[-1]["usage"] == every_token[-1]["usage"]
    assert paced[-1]["usage"]["completion_tokens"] == 2 * 21
    for index in (0, 1):
        reference, choices = _choice_events(every_token, index), _choice_events(paced, index)
        # The role chunk, a chunk per token, the finish chunk; paced: the first token's chunk,
        # then one for each 4 steps at most.
        assert len(reference) == 1 + 21 + 1
        assert len(choices) <= 1 + 1 + (21 - 1 + INTERVAL - 1) // INTERVAL + 1 + 1
        assert chat_text(paced, index) == chat_text(every_token, index)
        logprobs = [entry for c in choices if c.get("logprobs")
                    for entry in c["logprobs"]["content"]]
        assert len(logprobs) == 21 and all(len(e["top_logprobs"]) == 2 for e in logprobs)
        expected = [entry for c in reference if c.get("logprobs") for entry in c["logprobs"]["content"]]
        # The second sample's prompt is prefilled beside the first's decodes in chunks that the
        # prefill pacer sizes from each server's own step times: the same tokens, logprobs equal
        # to float32 rounding rather than bit for bit.
        assert _tokens(logprobs) == _tokens(expected)
        assert _values(logprobs) == pytest.approx(_values(expected), abs=1e-4)
        assert [c["finish_reason"] for c in choices if c["finish_reason"]] == ["length"]
        assert choices[-1]["finish_reason"] == "length"


def test_completion_stop_string_and_logprobs_match_an_unpaced_stream(
        tiny_server: ServerProcess, paced_server: ServerProcess) -> None:
    body: dict[str, Any] = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 24,
                            "temperature": 0, "ignore_eos": True}
    text = "".join(e["choices"][0]["text"] for e in _stream(tiny_server, "/v1/completions", body))
    stop = text[len(text) // 2:len(text) // 2 + 3]
    assert stop.strip(), text
    body.update(stop=[stop], logprobs=1)
    reference = _stream(tiny_server, "/v1/completions", body)
    paced = _stream(paced_server, "/v1/completions", body)
    assert len(paced) < len(reference)

    # (text_offset is left out: a stream's offsets count from the text sent before each chunk,
    # which a detokeniser holding back a partial character makes differ with the chunking.)
    def joined(events: list[Any]) -> tuple[str, list[str], list[float], list[str | None]]:
        choices = [e["choices"][0] for e in events]
        return ("".join(c["text"] for c in choices),
                [t for c in choices if c["logprobs"] for t in c["logprobs"]["tokens"]],
                [p for c in choices if c["logprobs"] for p in c["logprobs"]["token_logprobs"]],
                [c["finish_reason"] for c in choices if c["finish_reason"]])

    assert joined(paced) == joined(reference)
    assert joined(paced)[3] == ["stop"] and stop not in joined(paced)[0]
