"""Constrained decoding with a tiny RANDOM-weight model: it follows no instruction, so every
valid output below is valid because of the grammar, over many seeds at temperature 1."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fixtures_models import TinyModel
from ziggurat_core.engine import (
    LLM,
    GrammarCompileError,
    InferenceEngine,
    RequestOutput,
    SamplingParams,
    StructuredOutputsParams,
)
from ziggurat_core.engine.config import EngineConfig

SEEDS = range(20)
PROMPT = "Once upon a time"

# Every constraint keyword here bounds the output, so a random model always finishes it within
# the token budget and a "length" finish would be a bug.
PERSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "mood": {"enum": ["happy", "sad"]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
    },
    "required": ["name", "age", "mood", "tags"],
    "additionalProperties": False,
}


def check_person(document: object) -> None:
    """PERSON_SCHEMA, checked by hand (written from the schema, not from the engine)."""
    assert isinstance(document, dict)
    assert set(document) == {"name", "age", "mood", "tags"}
    assert isinstance(document["name"], str) and 1 <= len(document["name"]) <= 6
    age = document["age"]
    assert isinstance(age, int) and not isinstance(age, bool) and 0 <= age <= 120
    assert document["mood"] in ("happy", "sad")
    tags = document["tags"]
    assert isinstance(tags, list) and len(tags) <= 3 and all(isinstance(t, bool) for t in tags)


@pytest.fixture(scope="module")
def engine(tiny_llama: TinyModel) -> InferenceEngine:
    return InferenceEngine(EngineConfig(model=str(tiny_llama.gguf_path), block_size=4,
                                        num_kv_blocks=256, max_num_seqs=32))


def run(engine: InferenceEngine, params: list[SamplingParams], prompt: str = PROMPT
        ) -> list[RequestOutput]:
    """Every request in one batch; their final outputs, in order."""
    for i, p in enumerate(params):
        engine.add_request(f"r{i}", prompt, p)
    finished = {o.request_id: o for o in engine.get_outputs() if o.finished}
    return [finished[f"r{i}"] for i in range(len(params))]


def sampled(constraint: StructuredOutputsParams, max_tokens: int = 120, **extra: Any
            ) -> list[SamplingParams]:
    return [SamplingParams(temperature=1.0, seed=seed, max_tokens=max_tokens,
                           structured_outputs=constraint, **extra) for seed in SEEDS]


def texts(outputs: list[RequestOutput]) -> Iterator[str]:
    for output in outputs:
        completion = output.outputs[0]
        assert completion.finish_reason == "stop", completion
        yield completion.text


def test_json_schema_outputs_parse_and_validate(engine: InferenceEngine) -> None:
    outputs = run(engine, sampled(StructuredOutputsParams(json=PERSON_SCHEMA)))
    documents = [json.loads(text) for text in texts(outputs)]
    for document in documents:
        check_person(document)
    assert len({json.dumps(d) for d in documents}) > 1, "the seeds should give different outputs"


def test_json_schema_given_as_text_and_json_object(engine: InferenceEngine) -> None:
    as_text = run(engine, sampled(StructuredOutputsParams(json=json.dumps(PERSON_SCHEMA)))[:5])
    for text in texts(as_text):
        check_person(json.loads(text))
    # Any object: a random model may write a long one, so only the finished ones must parse.
    objects = run(engine, sampled(StructuredOutputsParams(json_object=True), max_tokens=200))
    finished = [o.outputs[0].text for o in objects if o.outputs[0].finish_reason == "stop"]
    assert finished
    for text in finished:
        assert isinstance(json.loads(text), dict)


def test_regex_outputs_fullmatch(engine: InferenceEngine) -> None:
    pattern = r"(cat|dog)-[0-9]{2,4}(\.[a-f]+)?"
    for text in texts(run(engine, sampled(StructuredOutputsParams(regex=pattern)))):
        assert re.fullmatch(pattern, text), text


def test_choice_outputs_are_one_of_the_choices(engine: InferenceEngine) -> None:
    choices = ["yes", "no", 'say "maybe"', "back\\slash", "naïve ☃"]
    outputs = run(engine, sampled(StructuredOutputsParams(choice=choices)))
    got = list(texts(outputs))
    assert set(got) <= set(choices)


@pytest.mark.parametrize("grammar", [
    # llguidance's Lark dialect
    'start: "(" sum ")"\nsum: NUM ("+" NUM)*\nNUM: /[1-9][0-9]{0,2}/\n',
    # the same language in GBNF (llama.cpp), converted by llguidance
    'root ::= "(" sum ")"\nsum ::= num ("+" num)*\nnum ::= [1-9] [0-9]? [0-9]?\n',
])
def test_grammar_outputs_are_sentences_of_the_grammar(engine: InferenceEngine, grammar: str) -> None:
    sentence = re.compile(r"\((?:[1-9][0-9]{0,2})(?:\+[1-9][0-9]{0,2})*\)")
    for text in texts(run(engine, sampled(StructuredOutputsParams(grammar=grammar), max_tokens=200))):
        assert sentence.fullmatch(text), text


def test_max_tokens_cuts_a_constrained_output_with_length(engine: InferenceEngine) -> None:
    outputs = run(engine, sampled(StructuredOutputsParams(json=PERSON_SCHEMA), max_tokens=5)[:5])
    for output in outputs:
        completion = output.outputs[0]
        assert completion.finish_reason == "length"
        assert len(completion.token_ids) == 5
        # Cut short where the grammar still wanted more: a prefix of a document, not one.
        head = '{"name": "'
        assert head.startswith(completion.text) or completion.text.startswith(head)
        with pytest.raises(json.JSONDecodeError):
            json.loads(completion.text)


@pytest.mark.parametrize(("constraint", "message"), [
    (StructuredOutputsParams(regex="(cat|dog"), "regex"),
    (StructuredOutputsParams(grammar="start: undefined_rule\n"), "undefined_rule"),
    (StructuredOutputsParams(grammar='root ::= "a" (\n'), "GBNF"),
    (StructuredOutputsParams(json={"type": "no-such-type"}), "no-such-type"),
    (StructuredOutputsParams(json="{not json"), "not valid JSON"),
    (StructuredOutputsParams(choice=[]), "at least one"),
])
def test_a_constraint_that_does_not_compile_is_refused_before_anything_is_allocated(
    engine: InferenceEngine, constraint: StructuredOutputsParams, message: str
) -> None:
    free_before = engine.scheduler.block_manager.num_free_blocks
    with pytest.raises(GrammarCompileError, match=re.escape(message)) as caught:
        engine.add_request("bad", PROMPT, SamplingParams(structured_outputs=constraint))
    assert caught.value.param == "structured_outputs"
    assert not engine.has_unfinished_requests()
    assert engine.scheduler.block_manager.num_free_blocks == free_before
    assert engine.structured_output.num_live == 0
    # The engine keeps serving, constrained and not.
    outputs = run(engine, [SamplingParams(temperature=0.0, max_tokens=4),
                           SamplingParams(structured_outputs=StructuredOutputsParams(choice=["ok"]))])
    assert len(outputs[0].outputs[0].token_ids) == 4
    assert outputs[1].outputs[0].text == "ok"


def test_unconstrained_rows_are_unchanged_by_constrained_neighbours(tiny_llama: TinyModel) -> None:
    # A cache small enough that the batch is preempted and recomputed on the way.
    engine = InferenceEngine(EngineConfig(model=str(tiny_llama.gguf_path), block_size=4,
                                          num_kv_blocks=40, max_num_seqs=16))
    greedy = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    prompts = [f"Prompt number {i}: the fox" for i in range(4)]

    def batch(with_neighbours: bool) -> tuple[list[list[int]], list[RequestOutput]]:
        ids = []
        for i, prompt in enumerate(prompts):
            engine.add_request(f"plain{i}", prompt, greedy)
            ids.append(f"plain{i}")
            if with_neighbours:
                for seed in range(2):
                    engine.add_request(f"json{i}-{seed}", prompt, SamplingParams(
                        temperature=1.0, seed=seed, max_tokens=120,
                        structured_outputs=StructuredOutputsParams(json=PERSON_SCHEMA)))
        finished = {o.request_id: o for o in engine.get_outputs() if o.finished}
        constrained = [o for rid, o in finished.items() if rid.startswith("json")]
        return [finished[rid].outputs[0].token_ids for rid in ids], constrained

    alone, _ = batch(with_neighbours=False)
    together, constrained = batch(with_neighbours=True)
    assert together == alone
    assert engine.stats().preemptions > 0, "the cache was meant to be too small for the batch"
    assert len(constrained) == 8
    for text in texts(constrained):
        check_person(json.loads(text))
    assert engine.structured_output.num_live == 0


def test_n_samples_each_follow_the_grammar(engine: InferenceEngine) -> None:
    params = SamplingParams(n=4, temperature=1.0, seed=3, max_tokens=60,
                            structured_outputs=StructuredOutputsParams(regex=r"[a-z]{3}[0-9]"))
    (output,) = run(engine, [params])
    assert len(output.outputs) == 4
    for completion in output.outputs:
        assert completion.finish_reason == "stop"
        assert re.fullmatch(r"[a-z]{3}[0-9]", completion.text)


def test_forced_runs_are_computed_in_one_step_each(engine: InferenceEngine) -> None:
    forced = "The answer, as forced by the grammar, is: "
    pattern = re.escape(forced) + "[0-9]"
    steps_before = engine.counters["steps"]
    (output,) = run(engine, [SamplingParams(temperature=1.0, seed=0, max_tokens=100,
                                            structured_outputs=StructuredOutputsParams(regex=pattern))])
    completion = output.outputs[0]
    steps = engine.counters["steps"] - steps_before
    assert completion.finish_reason == "stop"
    assert re.fullmatch(pattern, completion.text)
    # The forced text is the grammar's own tokenisation of it, which is the canonical one.
    assert engine.tokenizer.decode(completion.token_ids) == completion.text
    # Each forward pass would give one token; the forced run after the first token takes one.
    assert len(completion.token_ids) > 10
    assert steps <= 4, f"{steps} steps for {len(completion.token_ids)} tokens"


def test_forced_runs_respect_max_tokens(engine: InferenceEngine) -> None:
    pattern = re.escape("a fairly long forced sentence of many tokens") + "[0-9]"
    (output,) = run(engine, [SamplingParams(max_tokens=6, structured_outputs=StructuredOutputsParams(regex=pattern))])
    completion = output.outputs[0]
    assert completion.finish_reason == "length"
    assert len(completion.token_ids) == 6
    assert "a fairly long forced sentence of many tokens".startswith(completion.text)


def test_lazy_grammar_lets_free_text_through_until_its_trigger_and_captures(
    engine: InferenceEngine
) -> None:
    # Free text until "@" (the trigger), then a number the grammar captures, then "!".
    grammar = ('start: head call\n'
               'head[lazy]: /(.|\\n)*@/\n'
               'call: number "!"\n'
               'number[capture="num"]: /[0-9]{1,3}/\n')
    at = engine.tokenizer.encode("@", add_special_tokens=False)
    assert len(at) == 1
    params = [SamplingParams(temperature=1.0, seed=seed, max_tokens=150, logit_bias={at[0]: 4.0},
                             structured_outputs=StructuredOutputsParams(grammar=grammar))
              for seed in range(8)]
    for i, p in enumerate(params):
        engine.add_request(f"lazy{i}", PROMPT, p)
    streamed: dict[str, list[RequestOutput]] = {}
    for output in engine.get_outputs():
        streamed.setdefault(output.request_id, []).append(output)
    free_text_seen = False
    for outputs in streamed.values():
        final = outputs[-1].outputs[0]
        assert final.finish_reason == "stop"
        match = re.fullmatch(r"(?s)(.*?)@([0-9]{1,3})!", final.text)
        assert match, final.text
        free_text_seen |= bool(match.group(1))
        assert final.captures == [("num", match.group(2))]
        # Every output of the request carries the captures so far, cumulatively.
        seen: list[tuple[str, str]] = []
        for output in outputs:
            captures = output.outputs[0].captures
            assert captures[: len(seen)] == seen
            seen = captures
    assert free_text_seen, "the lazy head should let some free text through before the trigger"


def test_eos_only_where_the_grammar_accepts_and_ignore_eos_min_tokens(engine: InferenceEngine) -> None:
    # The grammar accepts after one digit but allows up to eight: EOS may end it early.
    constraint = StructuredOutputsParams(regex=r"[0-9]{1,8}")
    free = run(engine, sampled(constraint, max_tokens=40))
    for text in texts(free):
        assert re.fullmatch(r"[0-9]{1,8}", text)
    # ignore_eos: EOS is never taken while the grammar allows more, so every output is the
    # longest the grammar allows, and it still ends with "stop" when the grammar is complete.
    for text in texts(run(engine, sampled(constraint, max_tokens=40, ignore_eos=True))):
        assert re.fullmatch(r"[0-9]{8}", text), text
    # min_tokens: the same for the first min_tokens tokens.
    for output in run(engine, sampled(constraint, max_tokens=40, min_tokens=3)):
        assert len(output.outputs[0].token_ids) >= 3
        assert re.fullmatch(r"[0-9]{1,8}", output.outputs[0].text)
    # The grammar wins over both: a complete grammar ends the output however short.
    short = StructuredOutputsParams(choice=["ok"])
    for output in run(engine, sampled(short, max_tokens=40, min_tokens=10, ignore_eos=True)[:3]):
        assert (output.outputs[0].text, output.outputs[0].finish_reason) == ("ok", "stop")


def test_stop_strings_and_logit_bias_with_a_grammar(engine: InferenceEngine) -> None:
    choices = ["alpha beta", "gamma"]
    # A stop string still ends the output where it appears (the caller asked for it).
    stopped = run(engine, [SamplingParams(temperature=1.0, seed=s, max_tokens=20, stop=["beta"],
                                          structured_outputs=StructuredOutputsParams(choice=choices))
                           for s in range(8)])
    for output in stopped:
        completion = output.outputs[0]
        assert completion.finish_reason == "stop"
        assert (completion.text, completion.stop_reason) in (("alpha ", "beta"), ("gamma", None))
    # logit_bias only reorders what the grammar allows: a huge bias on a token outside it
    # changes nothing about validity.
    x = engine.tokenizer.encode("x", add_special_tokens=False)[0]
    for text in texts(run(engine, sampled(StructuredOutputsParams(choice=choices), logit_bias={x: 100.0}))):
        assert text in choices


def test_logprobs_reflect_the_constrained_distribution(engine: InferenceEngine) -> None:
    constraint = StructuredOutputsParams(regex=r"(ab|cd)[0-9]")
    (output,) = run(engine, [SamplingParams(temperature=1.0, seed=1, max_tokens=10, logprobs=5,
                                            structured_outputs=constraint)])
    completion = output.outputs[0]
    assert completion.logprobs is not None
    first = completion.logprobs[0]
    # Only tokens the grammar allows have a probability: every listed alternative starts a
    # valid output, and the listed mass is at most 1.
    for alternative in first.top_logprobs:
        if alternative.logprob > float("-inf"):
            assert any(c.startswith(alternative.token_bytes.decode()) or
                       alternative.token_bytes.decode().startswith(c) for c in ("ab", "cd"))
    assert re.fullmatch(r"(ab|cd)[0-9]", completion.text)


def test_abort_releases_the_matchers(engine: InferenceEngine) -> None:
    engine.add_request("to-abort", PROMPT, SamplingParams(
        n=2, max_tokens=50, structured_outputs=StructuredOutputsParams(json=PERSON_SCHEMA)))
    engine.step()
    assert engine.structured_output.num_live == 2
    engine.abort_request("to-abort")
    assert engine.structured_output.num_live == 0
    assert not engine.has_unfinished_requests()


def test_unconstrained_requests_never_build_the_grammar_tokenizer(tiny_llama: TinyModel) -> None:
    llm = LLM(config=EngineConfig(model=str(tiny_llama.gguf_path), num_kv_blocks=32))
    llm.generate([PROMPT], SamplingParams(max_tokens=4))
    assert llm.engine.structured_output.compiler is None
    # The Python API takes the constraint on SamplingParams.
    (output,) = llm.generate([PROMPT], SamplingParams(
        max_tokens=80, structured_outputs=StructuredOutputsParams(json=PERSON_SCHEMA)))
    check_person(json.loads(output.outputs[0].text))
    compiler = llm.engine.structured_output.compiler
    assert compiler is not None
    llm.generate([PROMPT, PROMPT], SamplingParams(
        max_tokens=80, structured_outputs=StructuredOutputsParams(json=PERSON_SCHEMA)))
    assert (compiler.misses, len(compiler)) == (1, 1), "one schema is compiled once"
