"""Engine level: the default model's greedy output is the same with every SIMD variant of the
CPU kernels this machine runs (ZIGGURAT_CPU_ISA=avx2 and the native one). int8 accumulation
is exact and the epilogue is the same in every variant, so the linear layers agree bitwise.

Each variant runs in its own process, so the kernel library and every cache of it are chosen
cleanly by the environment, as a user would choose them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from int8_helpers import runnable_isas

# Greedy, int8 linear layers, several prompts at once (prefill of different lengths, then
# batched decode steps).
_SCRIPT = """
import json
from ziggurat_core.engine import LLM, SamplingParams
from ziggurat_core.engine.cpu_kernels import cpu_isa

llm = LLM(model="default", quantization="int8", max_num_seqs=8)
prompts = [
    "The capital of France is",
    "Write a short poem about the sea. The sea",
    "def fibonacci(n):",
    "Three reasons to learn a second language are",
]
params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
outputs = llm.generate(prompts, params)
print(json.dumps({"isa": cpu_isa(), "tokens": [o.outputs[0].token_ids for o in outputs]}))
"""

_SIMD_ISAS = [isa for isa in runnable_isas() if isa != "scalar"]


def _greedy_tokens(isa: str) -> list[list[int]]:
    env = os.environ | {"ZIGGURAT_CPU_ISA": isa}
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["isa"] == isa
    tokens: list[list[int]] = report["tokens"]
    return tokens


@pytest.mark.skipif(
    len(_SIMD_ISAS) < 2, reason=f"one SIMD variant at most runs here: {_SIMD_ISAS or 'none'}"
)
def test_greedy_output_is_identical_with_every_simd_variant(cpu_kernels: None) -> None:
    outputs = {isa: _greedy_tokens(isa) for isa in _SIMD_ISAS}
    best, *others = _SIMD_ISAS
    assert all(len(tokens) == 40 for tokens in outputs[best])
    for isa in others:
        assert outputs[isa] == outputs[best], f"{isa} differs from {best}"
