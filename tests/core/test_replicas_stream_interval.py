"""`stream_interval` reaches each replica: a replica set's streams come in chunks of up to N
steps' tokens (so fewer Ray items and outputs), and the deltas the set assembles add up to the
tokens and logprobs one in-process engine makes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from comparisons import shared_prefix_prompts
from fixtures_models import TinyModel
from replica_streams import stream_concurrently, tiny_settings
from ziggurat_core.engine import SamplingParams
from ziggurat_core.engine.llm import LLM
from ziggurat_core.engine.replicas.sync_engine import ReplicaSetEngine

INTERVAL = 3
MAX_TOKENS = 16
PARAMS = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True, logprobs=1)


@pytest.fixture(scope="module")
def paced(tiny_llama: TinyModel) -> Iterator[LLM]:
    llm = LLM(**tiny_settings(tiny_llama), num_replicas=2, replica_cpus=1,
              stream_interval=INTERVAL)
    yield llm
    llm.close()


def test_replica_streams_come_every_n_steps_with_every_token(
        paced: LLM, tiny_llama: TinyModel) -> None:
    prompts = shared_prefix_prompts(tiny_llama.config.vocab_size) * 2
    assert isinstance(paced.engine, ReplicaSetEngine)
    streams = stream_concurrently(paced.engine.replicas, prompts, PARAMS, "paced")
    expected = LLM(**tiny_settings(tiny_llama)).generate(prompts, PARAMS, use_tqdm=False)
    for outputs, want in zip(streams, expected, strict=True):
        assert [o.finished for o in outputs] == [False] * (len(outputs) - 1) + [True]
        # The first token at once, then at most one output every INTERVAL steps, the last.
        assert len(outputs) <= 2 + (MAX_TOKENS - 1 + INTERVAL - 1) // INTERVAL
        deltas = [o.outputs[0] for o in outputs]
        assert len(deltas[0].delta_token_ids) == 1
        assert all(len(d.delta_token_ids) <= INTERVAL for d in deltas)
        tokens = [t for d in deltas for t in d.delta_token_ids]
        logprobs = [lp for d in deltas for lp in d.delta_logprobs or []]
        final = want.outputs[0]
        assert tokens == deltas[-1].token_ids == final.token_ids
        assert "".join(d.delta_text for d in deltas) == final.text
        assert [lp.token_id for lp in logprobs] == tokens
        assert [lp.logprob for lp in logprobs] == pytest.approx(
            [lp.logprob for lp in final.logprobs or []])
        assert deltas[-1].finish_reason == "length"
