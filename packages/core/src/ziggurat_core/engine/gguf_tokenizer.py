"""Build a `tokenizers.Tokenizer` from the vocabulary a GGUF file stores in its metadata. No torch.

A GGUF carries no tokenizer.json: llama.cpp keeps the pieces, merges (or scores), token types and
a pre-tokenizer name under `tokenizer.ggml.*`. We rebuild an equivalent Hugging Face `tokenizers`
pipeline from those, following llama.cpp's rules (llama.cpp defines the format):

- `tokenizer.ggml.model == "gpt2"`: byte-level BPE. `tokenizer.ggml.pre` names the regexes that
  cut text into words before BPE; llama.cpp applies several in sequence, each splitting the pieces
  the previous one left, which is what a chain of `Split(..., "isolated")` does.
- `tokenizer.ggml.model == "llama"`: SentencePiece BPE with byte fallback. Merges are implied by
  the scores: the pair whose concatenation has the higher score merges first.

Control tokens (type 3) become special added tokens and user-defined tokens (type 4) plain added
tokens, so both are matched whole in text and never split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gguf import TokenType  # llama.cpp's token types
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as BackendTokenizer

TokenizerKind = Literal["byte_level", "sentencepiece", "other"]


class UnsupportedTokenizerError(ValueError):
    """The GGUF describes a tokenizer (model or pre-tokenizer type) we cannot rebuild."""


# --- pre-tokenizer regexes (tokenizer.ggml.pre) -----------------------------------------------

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DEEPSEEK3 = (
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_BLOOM = r" ?[^(\s|.,!?…。，、।۔،)]+"


@dataclass(frozen=True)
class _PreTokenizerRule:
    splits: tuple[str, ...]  # applied in order, each to the pieces the previous one produced
    add_bos: bool = False  # llama.cpp's default when the file has no tokenizer.ggml.add_bos_token
    ignore_merges: bool = False  # a word that is itself in the vocabulary is taken whole
    has_bos: bool = True


def _rules(names: Sequence[str], rule: _PreTokenizerRule) -> dict[str, _PreTokenizerRule]:
    return dict.fromkeys(names, rule)


# Which regexes llama.cpp (src/llama-vocab.cpp) uses for each tokenizer.ggml.pre value.
PRE_TOKENIZER_RULES: dict[str, _PreTokenizerRule] = {
    "default": _PreTokenizerRule(
        (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")
    ),
    **_rules(
        ["gpt2", "gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de",
         "mpt", "olmo", "jais", "exaone4", "a.x-4.0", "mellum", "modern-bert", "trillion",
         "granite-docling"],
        _PreTokenizerRule((_GPT2,)),
    ),
    **_rules(
        ["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
         "lfm2", "jina-v5-nano"],
        _PreTokenizerRule((_LLAMA3,), add_bos=True, ignore_merges=True),
    ),
    **_rules(["dbrx", "smaug-bpe"], _PreTokenizerRule((_LLAMA3,))),
    **_rules(["glm4", "chatglm-bpe"], _PreTokenizerRule((_LLAMA3,), has_bos=False)),
    # Digits are split one by one before the GPT-2 regex runs (SmolLM's tokenizer.json does the
    # same with a `Digits(individual_digits=True)` pre-tokenizer).
    **_rules(
        ["starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"],
        _PreTokenizerRule((r"\p{N}", _GPT2)),
    ),
    **_rules(
        ["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan"],
        _PreTokenizerRule((_QWEN2,)),
    ),
    "falcon": _PreTokenizerRule((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]")),
    "tekken": _PreTokenizerRule((_TEKKEN,), add_bos=True, ignore_merges=True),
    **_rules(["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"], _PreTokenizerRule((_GPT4O,))),
    **_rules(["deepseek-v3", "hunyuan-dense"],
             _PreTokenizerRule((r"\p{N}{1,3}", r"[一-龥぀-ゟ゠-ヿ]+", _DEEPSEEK3))),
    "deepseek-coder": _PreTokenizerRule(
        (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}")
    ),
    **_rules(["poro-chat", "bloom", "gpt3-finnish"], _PreTokenizerRule((_BLOOM,))),
    "viking": _PreTokenizerRule((_BLOOM, r"\p{N}")),
}


# --- the GPT-2 byte alphabet ------------------------------------------------------------------


def _build_byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table.

    Bytes that are printable Latin-1 characters stand for themselves; the rest (controls, space,
    soft hyphen...) are moved to code points from U+0100 upwards, in byte order.
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {byte: chr(byte) for byte in printable}
    next_code_point = 0x100
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(next_code_point)
            next_code_point += 1
    return table


BYTE_TO_CHAR: dict[int, str] = _build_byte_alphabet()
CHAR_TO_BYTE: dict[str, int] = {char: byte for byte, char in BYTE_TO_CHAR.items()}


def byte_level_piece_to_bytes(piece: str) -> bytes:
    """The bytes a byte-level BPE piece stands for.

    A piece using any character outside the byte alphabet (an added token written as plain text,
    like "<｜end▁of▁sentence｜>") stands for its own UTF-8 text, as in `tokenizers`' decoder.
    """
    try:
        return bytes(CHAR_TO_BYTE[char] for char in piece)
    except KeyError:
        return piece.encode("utf-8")


# --- building the tokenizer -------------------------------------------------------------------


@dataclass
class GGUFTokenizerParts:
    """What `build_gguf_tokenizer` recovers from the metadata."""

    backend: BackendTokenizer
    kind: TokenizerKind
    pieces: list[str]  # the vocabulary exactly as the file spells it, indexed by id
    bos_token_id: int | None
    eos_token_ids: list[int]  # eos first, then the other end-of-generation tokens
    add_bos_token: bool
    add_eos_token: bool
    chat_templates: dict[str, str]  # "default" and named ones such as "tool_use"
    special_tokens: dict[str, str] = field(default_factory=dict)  # "bos_token" -> "<s>", ...


def build_gguf_tokenizer(metadata: dict[str, Any]) -> GGUFTokenizerParts:
    """Rebuild the tokenizer a GGUF's `tokenizer.ggml.*` metadata describes."""
    model_type = metadata.get("tokenizer.ggml.model")
    pieces = metadata.get("tokenizer.ggml.tokens")
    if not isinstance(pieces, list) or not pieces:
        raise UnsupportedTokenizerError("GGUF metadata has no tokenizer.ggml.tokens vocabulary")
    token_types = _token_types(metadata, len(pieces))

    if model_type == "gpt2":
        pre_name = metadata.get("tokenizer.ggml.pre") or "default"
        rule = PRE_TOKENIZER_RULES.get(pre_name)
        if rule is None:
            raise UnsupportedTokenizerError(
                f"unsupported GGUF pre-tokenizer type {pre_name!r}; supported: "
                f"{', '.join(sorted(PRE_TOKENIZER_RULES))}"
            )
        backend = _byte_level_backend(pieces, metadata.get("tokenizer.ggml.merges"), rule)
        kind: TokenizerKind = "byte_level"
        default_add_bos, has_bos = rule.add_bos, rule.has_bos
    elif model_type == "llama":
        scores = metadata.get("tokenizer.ggml.scores")
        add_space_prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
        unk_id = metadata.get("tokenizer.ggml.unknown_token_id")
        backend = _sentencepiece_backend(pieces, scores, token_types, add_space_prefix, unk_id)
        kind = "sentencepiece"
        default_add_bos, has_bos = True, True
    else:
        raise UnsupportedTokenizerError(
            f"unsupported GGUF tokenizer model {model_type!r}; supported: 'gpt2', 'llama'"
        )

    _add_special_pieces(backend, pieces, token_types)
    bos_id = _token_id(metadata, "tokenizer.ggml.bos_token_id", len(pieces)) if has_bos else None
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", default_add_bos))
    eos_ids = end_of_generation_ids(metadata, pieces)
    return GGUFTokenizerParts(
        backend=backend,
        kind=kind,
        pieces=list(pieces),
        bos_token_id=bos_id,
        eos_token_ids=eos_ids,
        add_bos_token=add_bos and bos_id is not None,
        add_eos_token=bool(metadata.get("tokenizer.ggml.add_eos_token", False)) and bool(eos_ids),
        chat_templates=_chat_templates(metadata),
        special_tokens=_special_token_strings(metadata, pieces, bos_id),
    )


def _chat_templates(metadata: dict[str, Any]) -> dict[str, str]:
    """`tokenizer.chat_template`, plus named ones stored as `tokenizer.chat_template.<name>`."""
    templates: dict[str, str] = {}
    prefix = "tokenizer.chat_template."
    for key, value in metadata.items():
        if key.startswith(prefix) and isinstance(value, str) and value.strip():
            templates[key[len(prefix):]] = value
    default = metadata.get("tokenizer.chat_template")
    if isinstance(default, str) and default.strip():
        templates["default"] = default
    return templates


def _token_types(metadata: dict[str, Any], vocab_size: int) -> list[int]:
    token_types = metadata.get("tokenizer.ggml.token_type")
    if token_types is None:
        return [TokenType.NORMAL] * vocab_size
    if len(token_types) != vocab_size:
        raise UnsupportedTokenizerError(
            f"tokenizer.ggml.token_type has {len(token_types)} entries for {vocab_size} tokens"
        )
    return [int(t) for t in token_types]


def _token_id(metadata: dict[str, Any], key: str, vocab_size: int) -> int | None:
    value = metadata.get(key)
    if value is None:
        return None
    if not 0 <= int(value) < vocab_size:
        raise UnsupportedTokenizerError(f"{key}={value} is outside the vocabulary (size {vocab_size})")
    return int(value)


def _unique_vocab(pieces: Sequence[str]) -> dict[str, int]:
    """piece -> id. Some files repeat a piece; the first id keeps it (the model never emits the
    duplicates' text through BPE anyway)."""
    vocab: dict[str, int] = {}
    for token_id, piece in enumerate(pieces):
        vocab.setdefault(piece, token_id)
    return vocab


def _byte_level_backend(
    pieces: Sequence[str], merges: Sequence[str] | None, rule: _PreTokenizerRule
) -> BackendTokenizer:
    if not merges:
        raise UnsupportedTokenizerError("byte-level GGUF tokenizer has no tokenizer.ggml.merges")
    merge_pairs: list[tuple[str, str]] = []
    for merge in merges:
        left, sep, right = merge.partition(" ")
        if not sep:
            raise UnsupportedTokenizerError(f"malformed merge {merge!r} in tokenizer.ggml.merges")
        merge_pairs.append((left, right))
    model = models.BPE(
        vocab=_unique_vocab(pieces), merges=merge_pairs, ignore_merges=rule.ignore_merges
    )
    backend = BackendTokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(split), behavior="isolated") for split in rule.splits]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    backend.decoder = decoders.ByteLevel()
    return backend


def _sentencepiece_backend(
    pieces: Sequence[str],
    scores: Sequence[float] | None,
    token_types: Sequence[int],
    add_space_prefix: bool,
    unk_id: int | None,
) -> BackendTokenizer:
    if scores is None or len(scores) != len(pieces):
        raise UnsupportedTokenizerError("SentencePiece GGUF tokenizer needs one score per token")
    vocab = _unique_vocab(pieces)
    mergeable = {
        piece: token_id
        for piece, token_id in vocab.items()
        if token_types[token_id] in (TokenType.NORMAL, TokenType.USER_DEFINED)
    }
    unk_piece = pieces[unk_id] if unk_id is not None and 0 <= unk_id < len(pieces) else None
    model = models.BPE(
        vocab=vocab,
        merges=merges_from_scores(mergeable, scores),
        unk_token=unk_piece,
        fuse_unk=True,
        byte_fallback=True,
    )
    backend = BackendTokenizer(model)
    # llama.cpp escapes spaces as "▁" and prefixes one to every stretch of text between special
    # tokens. Normalizers run on exactly those stretches; Metaspace would not prefix text that
    # already starts with a space, which llama.cpp (and SentencePiece) do.
    escape = normalizers.Replace(" ", "▁")
    backend.normalizer = (
        normalizers.Sequence([normalizers.Prepend("▁"), escape]) if add_space_prefix else escape
    )
    steps: list[Any] = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    backend.decoder = decoders.Sequence(steps)
    return backend


def merges_from_scores(vocab: dict[str, int], scores: Sequence[float]) -> list[tuple[str, str]]:
    """BPE merges implied by SentencePiece scores.

    Every way of cutting a piece into two pieces that both exist is a merge; merges producing a
    higher-scoring piece come first. Ties keep a fixed order (by the ids of the two halves).
    """
    ranked: list[tuple[float, int, int, str, str]] = []
    for piece, piece_id in vocab.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            left_id, right_id = vocab.get(left), vocab.get(right)
            if left_id is not None and right_id is not None:
                ranked.append((-float(scores[piece_id]), left_id, right_id, left, right))
    ranked.sort()
    return [(left, right) for _, _, _, left, right in ranked]


def _add_special_pieces(
    backend: BackendTokenizer, pieces: Sequence[str], token_types: Sequence[int]
) -> None:
    """Control tokens become special added tokens, user-defined ones plain added tokens: either
    way they are matched whole in the input and never cut by the pre-tokenizer."""
    control = [
        AddedToken(piece, special=True, normalized=False)
        for piece, token_type in zip(pieces, token_types, strict=True)
        if token_type == TokenType.CONTROL and piece
    ]
    user_defined = [
        AddedToken(piece, special=False, normalized=False)
        for piece, token_type in zip(pieces, token_types, strict=True)
        if token_type == TokenType.USER_DEFINED and piece
    ]
    if control:
        backend.add_special_tokens(control)
    if user_defined:
        backend.add_tokens(user_defined)


# Token texts llama.cpp treats as end of generation even when no metadata key names them.
_END_OF_GENERATION_TEXTS = frozenset(
    {
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<end_of_turn>",
        "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>", "<|end_of_text|>",
        "<end_of_utterance>",
    }
)


def end_of_generation_ids(metadata: dict[str, Any], pieces: Sequence[str]) -> list[int]:
    """Token ids that end generation: eos first, then eot/eom, then tokens known by their text."""
    ids: list[int] = []
    for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                "tokenizer.ggml.eom_token_id"):
        token_id = _token_id(metadata, key, len(pieces))
        if token_id is not None and token_id not in ids:
            ids.append(token_id)
    for token_id, piece in enumerate(pieces):
        if piece in _END_OF_GENERATION_TEXTS and token_id not in ids:
            ids.append(token_id)
    return ids


def _special_token_strings(
    metadata: dict[str, Any], pieces: Sequence[str], bos_id: int | None
) -> dict[str, str]:
    """The texts of bos/eos/unk/pad, the variables chat templates receive."""
    ids = {
        "bos_token": bos_id,
        "eos_token": _token_id(metadata, "tokenizer.ggml.eos_token_id", len(pieces)),
        "unk_token": _token_id(metadata, "tokenizer.ggml.unknown_token_id", len(pieces)),
        "pad_token": _token_id(metadata, "tokenizer.ggml.padding_token_id", len(pieces)),
    }
    return {name: pieces[token_id] for name, token_id in ids.items() if token_id is not None}
