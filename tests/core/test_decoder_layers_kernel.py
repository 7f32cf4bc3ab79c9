"""Every decoder layer in one C call (`cpu_kernels/decoder_layers.py`) against the layer-by-layer
path it replaces (`LlamaDecoderLayer.forward` on the same kernels), bitwise: the final hidden
states and every KV cache written, for steps that mix decode tokens, fresh prompts and prompt
chunks after a cached prefix, over float32 and float16 caches; a row's result does not depend on
the other rows of the step or on the thread count.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from conftest import TinyModelFactory
from int8_helpers import runnable_isas
from ziggurat_core.engine.attention.base import StepLayout
from ziggurat_core.engine.config import EngineConfig
from ziggurat_core.engine.cpu_kernels import (
    BoundDecoderLayers,
    DecoderShape,
    KernelError,
    decoder_layers_kernel_for,
    load_decoder_layers_kernel,
)
from ziggurat_core.engine.llm_engine import InferenceEngine
from ziggurat_core.engine.models.llama import LlamaForCausalLM

_BLOCK_SIZE = 4
_NUM_BLOCKS = 160


@pytest.fixture(scope="module", params=["float32", "float16"])
def engine(
    cpu_kernels: None, tiny_model_factory: TinyModelFactory, request: pytest.FixtureRequest
) -> Iterator[InferenceEngine]:
    with pytest.MonkeyPatch.context() as env:
        env.delenv("ZIGGURAT_CPU_ISA", raising=False)
        engine = _int8_engine(tiny_model_factory, request.param)
    yield engine


def _int8_engine(tiny_model_factory: TinyModelFactory, kv_cache_dtype: str) -> InferenceEngine:
    """An int8 engine of the tiny Llama on the kernel variant ZIGGURAT_CPU_ISA selects now."""
    tiny = tiny_model_factory("llama", "Q8_0")
    engine = InferenceEngine(
        EngineConfig(
            model=str(tiny.gguf_path),
            quantization="int8",
            kv_cache_dtype=kv_cache_dtype,
            block_size=_BLOCK_SIZE,
            num_kv_blocks=_NUM_BLOCKS,
        )
    )
    assert engine.runner.quantization == "int8"
    return engine


@pytest.fixture
def kernel_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many tokens each call of the one-call kernel ran (the test sees which path ran)."""
    calls: list[int] = []
    original = BoundDecoderLayers.__call__

    def counting(self: BoundDecoderLayers, hidden: torch.Tensor, *args: Any) -> Any:
        calls.append(hidden.shape[0])
        return original(self, hidden, *args)

    monkeypatch.setattr(BoundDecoderLayers, "__call__", counting)
    return calls


def _random_caches(engine: InferenceEngine, seed: int) -> list[torch.Tensor]:
    """Caches whose every slot holds a value: the prefixes the step's tokens attend to."""
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(cache.shape, generator=gen).to(cache.dtype) for cache in engine.runner.kv_caches
    ]


def _ids(engine: InferenceEngine, count: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, engine.runner.model_config.vocab_size, (count,), generator=gen)


def _step(
    engine: InferenceEngine,
    layout: StepLayout,
    caches: list[torch.Tensor],
    use_kernel: bool,
    ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """The model's final hidden states for one step of `layout`."""
    model = engine.runner.model
    assert isinstance(model, LlamaForCausalLM)
    model.model.use_layer_kernel = use_kernel
    try:
        if ids is None:
            ids = _ids(engine, layout.num_tokens)
        positions = torch.tensor(
            [
                p
                for q, c in zip(layout.query_lens, layout.context_lens, strict=True)
                for p in range(c - q, c)
            ]
        )
        metadata = engine.runner.attention.prepare(layout, torch.device("cpu"))
        with torch.inference_mode():
            return model(ids, positions, caches, engine.runner.attention, metadata)
    finally:
        model.model.use_layer_kernel = True


def _blocks(first: int, count: int) -> list[int]:
    return list(range(first, first + count))


# (query_lens, context_lens): decode tokens, a fresh prompt, a chunk after a cached prefix
_MIXED = ([1, 5, 3, 1, 7], [9, 5, 11, 1, 20])


def _layout(query_lens: list[int], context_lens: list[int]) -> StepLayout:
    tables, first = [], 0
    for ctx in context_lens:
        count = -(-ctx // _BLOCK_SIZE)
        tables.append(_blocks(first, count))
        first += count
    return StepLayout(query_lens, context_lens, tables, _BLOCK_SIZE)


@pytest.mark.parametrize(
    "lens",
    [([1], [1]), ([1], [30]), ([1, 1, 1], [3, 17, 8]), _MIXED, ([120], [200]), ([200], [200])],
    ids=["first-token", "one-decode", "decodes", "mixed", "long-chunk", "long-prompt"],
)
def test_one_call_equals_layer_by_layer_bitwise(
    engine: InferenceEngine, kernel_calls: list[int], lens: tuple[list[int], list[int]]
) -> None:
    layout = _layout(*lens)
    by_layer_caches = _random_caches(engine, seed=1)
    one_call_caches = [cache.clone() for cache in by_layer_caches]

    expected = _step(engine, layout, by_layer_caches, use_kernel=False)
    assert kernel_calls == []
    got = _step(engine, layout, one_call_caches, use_kernel=True)

    rows_limit = engine.runner.model.model._layer_kernel[2]  # noqa: SLF001 - the path to expect
    if rows_limit is not None and layout.num_tokens >= rows_limit:
        assert kernel_calls == []  # large steps go to torch._int_mm there, layer by layer
    else:
        assert kernel_calls == [layout.num_tokens]
    assert torch.equal(got, expected)
    for got_cache, expected_cache in zip(one_call_caches, by_layer_caches, strict=True):
        assert torch.equal(got_cache, expected_cache)


def test_engines_of_two_variants_in_one_process_each_run_their_own_layers(
    cpu_kernels: None, tiny_model_factory: TinyModelFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine built under a forced variant, then one built under the native variant (as when
    a run forced to scalar builds an engine before this file's): each keeps the variant it was
    built with for every layer, so each one's layer-by-layer path is still bitwise its one-call
    path, whatever the other loaded first and whatever the environment selects afterwards."""
    runnable = runnable_isas()
    if len(runnable) < 2:
        pytest.skip("this CPU runs one kernel variant only")
    engines = {}
    for isa in (runnable[-1], runnable[0]):
        monkeypatch.setenv("ZIGGURAT_CPU_ISA", isa)
        engines[isa] = _int8_engine(tiny_model_factory, "float32")
    monkeypatch.setenv("ZIGGURAT_CPU_ISA", runnable[-1])  # neither engine follows it now
    layout = _layout(*_MIXED)
    for isa, engine in engines.items():
        assert engine.runner.cpu_isa == isa
        by_layer_caches = _random_caches(engine, seed=8)
        one_call_caches = [cache.clone() for cache in by_layer_caches]
        expected = _step(engine, layout, by_layer_caches, use_kernel=False)
        got = _step(engine, layout, one_call_caches, use_kernel=True)
        assert torch.equal(got, expected), f"the {isa} engine"
        for got_cache, expected_cache in zip(one_call_caches, by_layer_caches, strict=True):
            assert torch.equal(got_cache, expected_cache), f"the {isa} engine"


def test_a_row_does_not_depend_on_the_rest_of_the_step(
    engine: InferenceEngine, kernel_calls: list[int]
) -> None:
    """Sequence 0 decodes alone, then beside a prompt chunk and other decodes, in the same
    blocks: its row is the same bits."""
    alone = _layout([1], [9])
    batch = _layout(*_MIXED)  # its first sequence is the same decode in the same blocks
    assert batch.block_tables[0] == alone.block_tables[0]
    caches = _random_caches(engine, seed=2)
    ids = _ids(engine, batch.num_tokens, seed=5)
    single = _step(engine, alone, [c.clone() for c in caches], use_kernel=True, ids=ids[:1])
    many = _step(engine, batch, caches, use_kernel=True, ids=ids)
    assert kernel_calls == [1, batch.num_tokens]
    assert torch.equal(many[0], single[0])


def test_the_thread_count_does_not_change_the_result(
    engine: InferenceEngine, kernel_calls: list[int]
) -> None:
    layout = _layout(*_MIXED)
    caches = _random_caches(engine, seed=3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _step(engine, layout, [c.clone() for c in caches], use_kernel=True)
        torch.set_num_threads(max(2, threads))
        several = _step(engine, layout, [c.clone() for c in caches], use_kernel=True)
    finally:
        torch.set_num_threads(threads)
    assert len(kernel_calls) == 2
    assert torch.equal(one, several)


def test_an_attention_backend_without_the_c_kernel_keeps_the_layer_path(
    engine: InferenceEngine, kernel_calls: list[int]
) -> None:
    attention = engine.runner.attention
    layout = _layout([1], [5])
    attention.use_decode_kernel = False
    try:
        _step(engine, layout, _random_caches(engine, seed=4), use_kernel=True)
    finally:
        attention.use_decode_kernel = True
    assert kernel_calls == []


def test_binding_checks_the_layer_shapes(engine: InferenceEngine) -> None:
    _step(engine, _layout([1], [1]), _random_caches(engine, seed=6), use_kernel=True)
    bound = engine.runner.model.model._layer_kernel[1]  # noqa: SLF001 - as the model bound them
    assert bound is not None
    kernel = decoder_layers_kernel_for(bound.layers[0].qkv)
    shape = bound.shape
    wider = DecoderShape(
        shape.hidden, shape.heads, shape.kv_heads, shape.head_dim, shape.intermediate + 1
    )
    with pytest.raises(KernelError, match="gate_up"):
        kernel.bind(bound.layers, wider)
    with pytest.raises(KernelError, match="kv heads"):
        kernel.bind(bound.layers, DecoderShape(shape.hidden, 3, 2, shape.head_dim, shape.intermediate))


def test_layers_bind_to_the_library_that_packed_their_weights(
    engine: InferenceEngine, kernel_calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine packed its weights with the native variant; a variant forced afterwards (as
    when a whole test run is forced to one) changes neither the one-call path nor its library."""
    model = engine.runner.model.model
    packing = model.layers[0].self_attn.qkv_proj.packed.fused
    others = [isa for isa in runnable_isas() if isa != packing.isa]
    if not others:
        pytest.skip("this CPU runs one kernel variant only")
    monkeypatch.setenv("ZIGGURAT_CPU_ISA", others[-1])
    model._layer_kernel = None  # noqa: SLF001 - bind again, now with the other variant forced
    layout = _layout([1], [7])
    _step(engine, layout, _random_caches(engine, seed=7), use_kernel=True)
    assert kernel_calls == [1]
    bound = model._layer_kernel[1]  # noqa: SLF001
    assert bound is not None and bound.layers[0].qkv.library is packing.library
    forced = load_decoder_layers_kernel()
    assert forced is not None and forced.isa == others[-1]
    with pytest.raises(KernelError, match=f"of the {others[-1]} library"):
        forced.bind(bound.layers, bound.shape)
