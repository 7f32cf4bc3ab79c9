"""Replicas and tensor parallelism combined: two replicas on a local Ray instance, each an
engine split over two gloo ranks (four processes of one thread), give the same greedy tokens as
one unsplit in-process engine, and each replica reports its tensor-parallel size."""

from __future__ import annotations

import time

from comparisons import shared_prefix_prompts
from fixtures_models import TinyModel
from ziggurat_core.engine import SamplingParams
from ziggurat_core.engine.llm import LLM
from ziggurat_core.engine.replicas.sync_engine import ReplicaSetEngine

WAIT_S = 60.0


def test_two_replicas_of_two_ranks_match_one_engine(tiny_llama: TinyModel) -> None:
    settings = dict(model=str(tiny_llama.hf_dir), device="cpu", dtype="float32", num_threads=1,
                    num_kv_blocks=64)
    prompts = shared_prefix_prompts(tiny_llama.config.vocab_size)
    greedy = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    expected = LLM(**settings).generate(prompts, greedy, use_tqdm=False)
    split = LLM(**settings, num_replicas=2, replica_cpus=1, tensor_parallel_size=2)
    try:
        got = split.generate(prompts, greedy, use_tqdm=False)
        assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids
                                                          for o in expected]
        assert isinstance(split.engine, ReplicaSetEngine)
        replicas = split.engine.replicas
        deadline = time.monotonic() + WAIT_S  # the sizes come with the first heartbeat
        while any(r.tensor_parallel_size is None for r in replicas.replicas()):
            assert time.monotonic() < deadline, "no heartbeat from the replicas"
            time.sleep(0.1)
        assert [r.tensor_parallel_size for r in replicas.replicas()] == [2, 2]
        assert replicas.resolved_settings.tensor_parallel_size == 2
    finally:
        split.close()
