"""`LLM.chat(tools=..., tool_choice=...)`: the request is checked as the server checks it, and the
output is constrained to calls."""

from __future__ import annotations

import json

import pytest
from fixtures_models import TinyModel
from long_context_model import long_context_copy
from ziggurat_core.engine import LLM, RequestValidationError, SamplingParams
from ziggurat_core.tools.parsing import calls_from_captures

ALARM = {"type": "function", "function": {
    "name": "set_alarm",
    "parameters": {"type": "object",
                   "properties": {"hour": {"type": "integer", "minimum": 0, "maximum": 23}},
                   "required": ["hour"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "Wake me at seven."}]


@pytest.fixture(scope="module")
def llm(tiny_llama: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> LLM:
    # The tools section is longer than the tiny model's own window.
    folder = long_context_copy(tiny_llama, tmp_path_factory.mktemp("tools"))
    return LLM(model=str(folder), num_kv_blocks=128)


def test_bad_tool_requests_raise_before_anything_runs(llm: LLM) -> None:
    with pytest.raises(RequestValidationError, match="nope") as caught:
        llm.chat(ASK, tools=[ALARM], tool_choice={"type": "function",
                                                  "function": {"name": "nope"}})
    assert caught.value.param == "tool_choice"
    with pytest.raises(RequestValidationError, match="required"):
        llm.chat(ASK, tool_choice="required")
    broken = {"type": "function", "function": {"name": "broken", "parameters": {
        "type": "object", "properties": {"x": {"type": "frob"}}}}}
    with pytest.raises(RequestValidationError, match="broken"):
        llm.chat(ASK, tools=[broken])


def test_the_callers_sampling_params_are_left_as_they_were(llm: LLM) -> None:
    params = SamplingParams(max_tokens=2, ignore_eos=True)
    llm.chat(ASK, params, tools=[ALARM], tool_choice="none")
    llm.chat(ASK, params, tools=[ALARM], tool_choice="auto")
    assert params.structured_outputs is None


def test_required_output_is_a_valid_call(llm: LLM, tiny_llama: TinyModel) -> None:
    # A set_alarm call is bounded (one integer 0-23): it fits in 400 tokens however written.
    params = [SamplingParams(temperature=1.0, seed=seed, max_tokens=400) for seed in range(6)]
    outputs = llm.chat([ASK] * len(params), params, tools=[ALARM], tool_choice="required",
                       parallel_tool_calls=False, use_tqdm=False)
    for output in outputs:
        completion = output.outputs[0]
        assert completion.finish_reason == "stop"
        [call] = calls_from_captures(completion.captures)
        assert call.name == "set_alarm"
        assert 0 <= json.loads(call.arguments)["hour"] <= 23
