"""Replicas from the Python API: `LLM(num_replicas=2)` runs two engine replicas as Ray actors on
a local Ray instance and gives the same greedy results as one in-process engine, with both
replicas taking work; `ReplicaSetEngine` takes, refuses and aborts requests as
`InferenceEngine` does."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from comparisons import shared_prefix_prompts
from fixtures_models import TinyModel
from replica_streams import WAIT_S, stream_concurrently, tiny_settings
from ziggurat_core.engine import InferenceEngine, SamplingParams
from ziggurat_core.engine.errors import PromptTooLongError
from ziggurat_core.engine.llm import LLM
from ziggurat_core.engine.replicas.sync_engine import ReplicaSetEngine

GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def replicated(tiny_llama: TinyModel) -> Iterator[LLM]:
    llm = LLM(**tiny_settings(tiny_llama), num_replicas=2, replica_cpus=1)
    yield llm
    llm.close()


def _engine(llm: LLM) -> ReplicaSetEngine:
    assert isinstance(llm.engine, ReplicaSetEngine)
    return llm.engine


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S  # replica counters come with a heartbeat
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _generation_tokens(llm: LLM) -> list[int]:
    return [r.stats.generation_tokens if r.stats else 0 for r in _engine(llm).replicas.replicas()]


def test_greedy_results_equal_one_engine_and_both_replicas_work(
        replicated: LLM, tiny_llama: TinyModel) -> None:
    prompts = shared_prefix_prompts(tiny_llama.config.vocab_size) * 2
    before = _generation_tokens(replicated)
    got = replicated.generate(prompts, GREEDY, use_tqdm=False)
    expected = LLM(**tiny_settings(tiny_llama)).generate(prompts, GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in expected]
    assert [o.outputs[0].text for o in got] == [o.outputs[0].text for o in expected]
    assert [o.prompt_token_ids for o in got] == prompts
    assert all(o.finished and o.outputs[0].finish_reason == "length" for o in got)

    def counted() -> bool:
        return sum(_generation_tokens(replicated)) - sum(before) == len(prompts) * 8

    _wait_for(counted, "the replicas' token counts")
    served = [after - b for after, b in zip(_generation_tokens(replicated), before, strict=True)]
    assert all(tokens > 0 for tokens in served), served


def test_chat_and_tokenizer_match_one_engine(replicated: LLM, tiny_llama: TinyModel) -> None:
    one = InferenceEngine(**tiny_settings(tiny_llama))
    assert replicated.tokenizer.encode("the quick brown fox") == one.tokenizer.encode(
        "the quick brown fox")
    messages = [{"role": "user", "content": "hello there"}]
    got = replicated.chat(messages, GREEDY, use_tqdm=False)[0]
    expected = LLM(**tiny_settings(tiny_llama)).chat(messages, GREEDY, use_tqdm=False)[0]
    assert got.prompt_token_ids == expected.prompt_token_ids
    assert got.outputs[0].token_ids == expected.outputs[0].token_ids


def test_a_refused_prompt_raises_the_engine_error(replicated: LLM) -> None:
    engine = _engine(replicated)
    with pytest.raises(PromptTooLongError):
        engine.add_request("too-long", prompt_token_ids=[5] * 300, sampling_params=GREEDY)
    assert not engine.has_unfinished_requests()


def test_abort_frees_the_blocks_on_the_replica(replicated: LLM) -> None:
    engine = _engine(replicated)
    before = sum(_generation_tokens(replicated))
    max_tokens = 240  # far more than run before the abort lands
    engine.add_request("long", prompt_token_ids=[5, 6, 7, 8],
                       sampling_params=SamplingParams(max_tokens=max_tokens, ignore_eos=True))
    outputs = engine.step()
    assert outputs and not outputs[0].finished
    engine.abort_request("long")
    assert not engine.has_unfinished_requests() and engine.step() == []

    def freed_after_work() -> bool:
        replicas = engine.replicas.replicas()
        return sum(_generation_tokens(replicated)) > before and all(
            r.stats is not None and r.stats.kv_blocks_used == 0 and r.stats.running == 0
            for r in replicas)

    _wait_for(freed_after_work, "the aborted request's blocks to be freed")
    assert sum(_generation_tokens(replicated)) - before < max_tokens


def test_concurrent_generates_on_one_loop_stream_every_output_in_order(
        replicated: LLM, tiny_llama: TinyModel) -> None:
    """`ReplicaSet.generate` (the server's path): a step's outputs reach all the requests
    waiting on one event loop at once; each request still gets every output, in order, each
    adding its delta to the previous, and ends with the tokens one engine makes."""
    prompts = shared_prefix_prompts(tiny_llama.config.vocab_size) * 2
    streams = stream_concurrently(_engine(replicated).replicas, prompts, GREEDY, "loop")
    expected = LLM(**tiny_settings(tiny_llama)).generate(prompts, GREEDY, use_tqdm=False)
    for outputs, want in zip(streams, expected, strict=True):
        assert [o.finished for o in outputs] == [False] * (len(outputs) - 1) + [True]
        tokens: list[int] = []
        for output in outputs:
            tokens += output.outputs[0].delta_token_ids
            assert output.outputs[0].token_ids == tokens
        assert tokens == want.outputs[0].token_ids


def test_inference_engine_points_to_the_replica_set(tiny_llama: TinyModel) -> None:
    with pytest.raises(ValueError, match="ReplicaSetEngine"):
        InferenceEngine(**tiny_settings(tiny_llama), num_replicas=2)


def test_one_replica_llm_never_imports_ray(tiny_llama: TinyModel) -> None:
    code = (
        "import sys\n"
        "from ziggurat_core.engine.llm import LLM\n"
        "from ziggurat_core.engine import SamplingParams\n"
        f"llm = LLM(model={str(tiny_llama.gguf_path)!r}, num_kv_blocks=16, num_replicas=1)\n"
        "llm.generate('hello', SamplingParams(max_tokens=2), use_tqdm=False)\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
        "print('in-process engine, no ray')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "in-process engine, no ray" in result.stdout
