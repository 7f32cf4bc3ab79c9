"""IncrementalDetokenizer and StopStringMatcher: streaming text without torn characters or
leaked stop strings."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_tokenizer import shared_smollm2_tokenizer
from ziggurat_core.engine.detokenizer import (
    IncrementalDetokenizer,
    StopStringMatcher,
    incomplete_utf8_tail,
)
from ziggurat_core.engine.tokenizer import InvalidTokenIdError, Tokenizer

SMOLLM2_VOCAB_SIZE = 49152
FIXTURE_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="session")
def smollm2_tokenizer() -> Tokenizer:
    return shared_smollm2_tokenizer()


def stream(detokenizer: IncrementalDetokenizer, token_ids: list[int]) -> list[str]:
    deltas = [detokenizer.push(token_id) for token_id in token_ids]
    deltas.append(detokenizer.flush())
    return deltas


# --- incomplete_utf8_tail -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", 0),
        (b"abc", 0),
        ("é".encode(), 0),
        ("é".encode()[:1], 1),
        ("€".encode()[:2], 2),
        ("🦙".encode()[:1], 1),
        ("🦙".encode()[:3], 3),
        (b"ok" + "🦙".encode(), 0),
        (b"\x80\x80\x80", 0),  # continuation bytes without a lead can never complete
        (b"\xff", 0),
        (b"\xc0", 0),  # overlong lead byte
        (b"\xe0\x80", 0),  # overlong 3-byte form
        (b"\xed\xa0", 0),  # surrogate
        (b"\xf4\x90", 0),  # beyond U+10FFFF
        (b"a\xf0\x9f\x98", 3),
    ],
)
def test_incomplete_utf8_tail(data: bytes, expected: int) -> None:
    assert incomplete_utf8_tail(data) == expected


# --- IncrementalDetokenizer ---------------------------------------------------------------------

token_ids = st.lists(st.integers(0, SMOLLM2_VOCAB_SIZE - 1), max_size=40)


@FIXTURE_SETTINGS
@given(prompt=token_ids, output=token_ids, skip_special_tokens=st.booleans())
def test_deltas_concatenate_to_decode_of_random_tokens(
    smollm2_tokenizer: Tokenizer, prompt: list[int], output: list[int], skip_special_tokens: bool
) -> None:
    detokenizer = IncrementalDetokenizer(smollm2_tokenizer, prompt, skip_special_tokens)
    text = "".join(stream(detokenizer, output))
    assert text == smollm2_tokenizer.decode(output, skip_special_tokens=skip_special_tokens)


# Text mixing ASCII, accents, CJK, emoji (incl. ZWJ sequences and flags) and special tokens.
text_pieces = st.sampled_from(
    ["Hello", " world", "\n", "  ", "é", "日本", "🦙", "👨‍👩‍👧", "🇫🇷", "🏳️‍🌈", "42", "<|im_end|>", "ñ"]
)


# SmolLM2's vocabulary lacks a few byte values (some ASCII controls and the UTF-8 lead bytes of
# U+40000 and above), so text using them cannot round-trip through any of its tokenizers.
encodable_chars = st.characters(
    max_codepoint=0x3FFFF,
    exclude_characters="\x04\x06\x13\x14\x16\x1d",
    codec="utf-8",  # no lone surrogates
)


@FIXTURE_SETTINGS
@given(
    prompt_text=st.text(encodable_chars, max_size=20),
    pieces=st.lists(st.one_of(text_pieces, st.text(encodable_chars, max_size=8)), max_size=12),
)
def test_valid_text_streams_without_replacement_characters(
    smollm2_tokenizer: Tokenizer, prompt_text: str, pieces: list[str]
) -> None:
    text = "".join(pieces).replace("\ufffd", "")
    ids = smollm2_tokenizer.encode(text)
    detokenizer = IncrementalDetokenizer(
        smollm2_tokenizer, smollm2_tokenizer.encode(prompt_text), skip_special_tokens=False
    )
    deltas = stream(detokenizer, ids)
    assert not any("\ufffd" in delta for delta in deltas)
    assert "".join(deltas) == text


def test_emoji_split_over_byte_tokens_is_emitted_whole(smollm2_tokenizer: Tokenizer) -> None:
    ids = smollm2_tokenizer.encode("🦙!")
    detokenizer = IncrementalDetokenizer(smollm2_tokenizer, smollm2_tokenizer.encode("Hi "))
    deltas = [detokenizer.push(token_id) for token_id in ids]
    assert len(ids) >= 3  # the llama emoji has no token of its own
    assert [d for d in deltas if d] == ["🦙", "!"]
    assert deltas[0] == ""


def test_flush_turns_a_dangling_partial_character_into_a_replacement(
    smollm2_tokenizer: Tokenizer,
) -> None:
    ids = smollm2_tokenizer.encode("ok🦙")[:-1]  # the emoji's last byte never comes
    detokenizer = IncrementalDetokenizer(smollm2_tokenizer, [])
    emitted = "".join(detokenizer.push(token_id) for token_id in ids)
    assert emitted == "ok"
    assert detokenizer.flush() == "\ufffd"
    assert emitted + "\ufffd" == smollm2_tokenizer.decode(ids)
    assert detokenizer.flush() == ""


def test_leading_space_of_the_first_token_is_kept(smollm2_tokenizer: Tokenizer) -> None:
    prompt = smollm2_tokenizer.encode("<|im_start|>assistant\nHello")
    ids = smollm2_tokenizer.encode(" world, again")
    detokenizer = IncrementalDetokenizer(smollm2_tokenizer, prompt)
    assert "".join(stream(detokenizer, ids)) == " world, again"


def test_special_tokens_follow_skip_special_tokens(smollm2_tokenizer: Tokenizer) -> None:
    ids = smollm2_tokenizer.encode("Done.<|im_end|>")
    skipping = IncrementalDetokenizer(smollm2_tokenizer, [], skip_special_tokens=True)
    keeping = IncrementalDetokenizer(smollm2_tokenizer, [], skip_special_tokens=False)
    assert "".join(stream(skipping, ids)) == "Done."
    assert "".join(stream(keeping, ids)) == "Done.<|im_end|>"


def test_invalid_token_id_raises(smollm2_tokenizer: Tokenizer) -> None:
    detokenizer = IncrementalDetokenizer(smollm2_tokenizer, [])
    with pytest.raises(InvalidTokenIdError):
        detokenizer.push(SMOLLM2_VOCAB_SIZE)


class _CountingTokenizer:
    """Forwards to a Tokenizer and records how many ids each decode call gets."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self.decode_lengths: list[int] = []

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        self.decode_lengths.append(len(ids))
        return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


def test_work_per_token_does_not_grow_with_the_output(smollm2_tokenizer: Tokenizer) -> None:
    counting = _CountingTokenizer(smollm2_tokenizer)
    ids = smollm2_tokenizer.encode("Some text with emoji 🦙 and accents é. " * 100)
    detokenizer = IncrementalDetokenizer(counting, ids[:10])  # type: ignore[arg-type]
    text = "".join(stream(detokenizer, ids))
    assert text == smollm2_tokenizer.decode(ids)
    assert len(ids) > 1000
    assert max(counting.decode_lengths) <= 10
    assert len(counting.decode_lengths) <= 2 * len(ids) + 2


# --- StopStringMatcher --------------------------------------------------------------------------


def reference_stop(text: str, stops: list[str], include: bool) -> tuple[str, str | None]:
    """The text before the first stop string (the one complete at the earliest position)."""
    for end in range(1, len(text) + 1):
        found = [s for s in stops if text[:end].endswith(s)]
        if found:
            stop = max(found, key=len)  # same end: the one starting earliest
            return (text[:end] if include else text[: end - len(stop)]), stop
    return text, None


def run_matcher(deltas: list[str], stops: list[str], include: bool) -> tuple[list[str], str | None]:
    matcher = StopStringMatcher(stops, include_stop_str_in_output=include)
    emitted: list[str] = []
    for delta in deltas:
        safe, matched = matcher.feed(delta)
        emitted.append(safe)
        if matched is not None:
            return emitted, matched
    emitted.append(matcher.flush())
    return emitted, None


def all_splits(text: str) -> list[list[str]]:
    """Every way to cut `text` into consecutive non-empty deltas."""
    splits = []
    for cuts in itertools.product([False, True], repeat=max(len(text) - 1, 0)):
        pieces, start = [], 0
        for index, cut in enumerate(cuts, start=1):
            if cut:
                pieces.append(text[start:index])
                start = index
        pieces.append(text[start:])
        splits.append(pieces)
    return splits


@pytest.mark.parametrize("include", [False, True])
def test_stop_string_split_every_possible_way(include: bool) -> None:
    text = "Hi</s>xx</s>"
    stops = ["</s>", "xx</"]
    expected = ("Hi</s>" if include else "Hi", "</s>")
    for deltas in all_splits(text):
        emitted, matched = run_matcher(deltas, stops, include)
        assert ("".join(emitted), matched) == expected, deltas
        if not include:
            assert all("<" not in piece for piece in emitted), deltas


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="ab<>/", max_size=24),
    stops=st.lists(st.text(alphabet="ab<>/", min_size=1, max_size=4), min_size=1, max_size=3),
    cut_points=st.lists(st.integers(0, 24), max_size=8),
    include=st.booleans(),
)
def test_stop_strings_never_leak(
    text: str, stops: list[str], cut_points: list[int], include: bool
) -> None:
    bounds = sorted({0, len(text), *(c for c in cut_points if c <= len(text))})
    deltas = [text[a:b] for a, b in itertools.pairwise(bounds)]
    emitted, matched = run_matcher(deltas, stops, include)
    output = "".join(emitted)
    assert (output, matched) == reference_stop(text, stops, include)
    if matched is not None and not include:
        # Nothing emitted, even transiently, reaches into the stop string.
        assert not any(s in output for s in stops)


def test_held_text_is_released_when_it_stops_looking_like_a_stop() -> None:
    matcher = StopStringMatcher(["Hello!"])
    assert matcher.feed("Say Hel") == ("Say ", None)
    assert matcher.feed("lo") == ("", None)
    assert matcher.feed("?") == ("Hello?", None)
    assert matcher.feed("Hel") == ("", None)
    assert matcher.flush() == "Hel"


def test_earliest_completed_stop_wins() -> None:
    matcher = StopStringMatcher(["abcd", "bc"])
    assert matcher.feed("xabcd") == ("xa", "bc")
    matcher = StopStringMatcher(["ab", "abc"])
    assert matcher.feed("zabc") == ("z", "ab")


def test_matcher_refuses_bad_input_and_use_after_match() -> None:
    with pytest.raises(ValueError):
        StopStringMatcher(["ok", ""])
    matcher = StopStringMatcher(["."])
    assert matcher.feed("end. more") == ("end", ".")
    assert matcher.matched == "."
    with pytest.raises(RuntimeError):
        matcher.feed("x")
    assert matcher.flush() == ""


def test_no_stop_strings_passes_text_through() -> None:
    matcher = StopStringMatcher([])
    assert matcher.feed("anything </s>") == ("anything </s>", None)
    assert matcher.flush() == ""
