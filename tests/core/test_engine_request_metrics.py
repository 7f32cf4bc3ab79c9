"""The engine's per-request stage times (which the server's `timings` are built from) and the
prompt rendering it shares with `add_request`."""

from __future__ import annotations

import pytest
from fixtures_models import TinyModel
from ziggurat_core.engine import InferenceEngine, SamplingParams
from ziggurat_core.engine.config import EngineConfig
from ziggurat_core.engine.errors import RequestValidationError


@pytest.fixture(scope="module")
def engine(tiny_llama: TinyModel) -> InferenceEngine:
    return InferenceEngine(EngineConfig(model=str(tiny_llama.gguf_path), num_kv_blocks=32,
                                        block_size=4, max_num_seqs=1,
                                        max_num_batched_tokens=8))


def test_stages_are_stamped_in_order_and_queueing_is_seen(engine: InferenceEngine) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)
    engine.add_request("first", prompt_token_ids=[5, 6, 7, 8, 9, 10, 11, 12, 13, 14],
                       sampling_params=params)
    engine.add_request("second", prompt_token_ids=[20, 21, 22], sampling_params=params)
    finals = {o.request_id: o for o in engine.get_outputs() if o.finished}
    first, second = finals["first"].metrics, finals["second"].metrics
    for metrics in (first, second):
        assert metrics is not None
        assert metrics.first_scheduled_time is not None
        assert metrics.first_token_time is not None and metrics.finished_time is not None
        assert (metrics.arrival_time <= metrics.first_scheduled_time
                <= metrics.first_token_time <= metrics.finished_time)
    assert first is not None and second is not None
    # One seat (max_num_seqs=1): the second request waits until the first one has finished.
    assert first.finished_time is not None and second.first_scheduled_time is not None
    assert second.first_scheduled_time >= first.finished_time
    # A 10-token prompt in 8-token steps: the first token comes a step after the first chunk.
    assert first.first_token_time is not None
    assert first.first_token_time > first.first_scheduled_time


def test_render_prompt_gives_the_tokens_add_request_runs(engine: InferenceEngine) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=1)
    messages = [{"role": "user", "content": "Hello there"}]
    for request_id, given in (("text", {"prompt": "Hello there"}),
                              ("chat", {"messages": messages}),
                              ("ids", {"prompt_token_ids": [3, 4, 5]})):
        _, token_ids = engine.render_prompt(**given)  # type: ignore[arg-type]
        engine.add_request(request_id, sampling_params=params, **given)  # type: ignore[arg-type]
        [final] = [o for o in engine.get_outputs() if o.finished]
        assert final.prompt_token_ids == token_ids
    with pytest.raises(RequestValidationError, match="exactly one"):
        engine.render_prompt("text", prompt_token_ids=[1])
