"""A replica sends each output as a delta (engine/replicas/deltas.py) and the set adds the deltas
up again: every RequestOutput a real engine makes must come back equal, field by field."""

from __future__ import annotations

import pickle

from fixtures_models import TinyModel
from ziggurat_core.engine import InferenceEngine, SamplingParams
from ziggurat_core.engine.outputs import RequestOutput
from ziggurat_core.engine.replicas.deltas import DeltaEncoder, OutputAssembler


def _outputs(engine: InferenceEngine) -> list[RequestOutput]:
    made = []
    while engine.has_unfinished_requests():
        made.extend(engine.step())
    return made


def test_deltas_add_up_to_the_engine_outputs(tiny_llama: TinyModel) -> None:
    engine = InferenceEngine(model=str(tiny_llama.gguf_path), device="cpu", num_threads=1,
                             num_kv_blocks=64)
    engine.add_request("plain", "the quick brown fox",
                       SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True))
    engine.add_request("logprobs", prompt_token_ids=[5, 9, 14, 3, 7],
                       sampling_params=SamplingParams(max_tokens=9, temperature=0.8, seed=3,
                                                      logprobs=2, n=2, ignore_eos=True))
    engine.add_request("stopped", "hello there",
                       SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True,
                                      stop=["e"]))
    made = _outputs(engine)
    encoders: dict[str, DeltaEncoder] = {}
    assemblers: dict[str, OutputAssembler] = {}
    for output in made:
        delta = encoders.setdefault(output.request_id, DeltaEncoder()).encode(output)
        delta = pickle.loads(pickle.dumps(delta))  # as it crosses Ray
        rebuilt = assemblers.setdefault(output.request_id, OutputAssembler()).apply(delta)
        assert rebuilt == output
    assert {o.request_id for o in made if o.finished} == {"plain", "logprobs", "stopped"}
    assert any(len(o.outputs) == 2 and o.outputs[0].logprobs for o in made)


def test_the_prompt_travels_once(tiny_llama: TinyModel) -> None:
    engine = InferenceEngine(model=str(tiny_llama.gguf_path), device="cpu", num_threads=1,
                             num_kv_blocks=64)
    engine.add_request("r", prompt_token_ids=list(range(3, 40)),
                       sampling_params=SamplingParams(max_tokens=4, ignore_eos=True))
    encoder = DeltaEncoder()
    deltas = [encoder.encode(output) for output in _outputs(engine)]
    assert deltas[0].prompt_token_ids == list(range(3, 40))
    assert len(deltas) > 1 and all(d.prompt_token_ids is None for d in deltas[1:])
