"""Whether the engine in this checkout enforces `SamplingParams.structured_outputs` (the engine
side lands on branch so-engine). Tests that need it skip, saying why, until it does."""

from __future__ import annotations

from pathlib import Path

import pytest


def skip_unless_engine_constrains(model: Path) -> None:
    """Skip unless a yes/no `choice` constraint holds over several random samples of `model`."""
    from ziggurat_core.engine import LLM, SamplingParams
    from ziggurat_core.engine.sampling_params import StructuredOutputsParams

    llm = LLM(model=str(model), num_kv_blocks=64)
    params = [SamplingParams(temperature=1.0, seed=seed, max_tokens=6,
                             structured_outputs=StructuredOutputsParams(choice=["yes", "no"]))
              for seed in range(6)]
    try:
        outputs = llm.generate(["Answer:"] * len(params), params, use_tqdm=False)
    except Exception as exc:  # an engine that refuses constraints it cannot apply
        pytest.skip(f"the engine does not enforce structured outputs yet ({exc!r})")
    texts = [output.outputs[0].text for output in outputs]
    if not all(text in ("yes", "no") for text in texts):
        pytest.skip("the engine does not enforce structured outputs yet (branch so-engine): "
                    f"a choice of yes/no produced {texts!r}")
