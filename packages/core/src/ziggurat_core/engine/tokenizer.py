"""`Tokenizer`: text <-> token ids, special tokens and chat templates for one model. No torch.

It wraps a Hugging Face `tokenizers.Tokenizer`, built either from a tokenizer.json (Hugging Face
model folders) or from the vocabulary inside a GGUF file (see `gguf_tokenizer.py`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as BackendTokenizer

from ..tools import hermes
from .chat_template import ChatTemplate, NoChatTemplateError
from .gguf_tokenizer import TokenizerKind, build_gguf_tokenizer, byte_level_piece_to_bytes

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")


class InvalidTokenIdError(ValueError):
    """A token id outside the vocabulary."""


class Tokenizer:
    """Encode/decode text for one model, with its BOS/EOS rules and chat templates."""

    def __init__(
        self,
        backend: BackendTokenizer,
        *,
        kind: TokenizerKind,
        bos_token_id: int | None = None,
        eos_token_ids: Sequence[int] = (),
        add_bos_token: bool | None = None,
        add_eos_token: bool | None = None,
        chat_templates: dict[str, str] | None = None,
        special_tokens: dict[str, str] | None = None,
        pieces: Sequence[str] | None = None,
    ) -> None:
        """Prefer the `from_*` constructors.

        `add_bos_token`/`add_eos_token` say whether `encode(add_special_tokens=True)` must add
        them. None leaves it to the backend's post-processor; True adds them when the
        post-processor does not; False removes a BOS the post-processor adds. `chat_templates` maps a name
        ("default", "tool_use") to a jinja source. `pieces` is the vocabulary as the model file
        spells it (GGUF), used when the backend has no entry for an id (duplicate pieces).
        """
        self._backend = backend
        self.kind: TokenizerKind = kind
        self._pieces = list(pieces) if pieces is not None else None
        self.vocab_size: int = (
            len(self._pieces)
            if self._pieces is not None
            else backend.get_vocab_size(with_added_tokens=True)
        )
        self.bos_token_id = bos_token_id
        self.eos_token_ids: list[int] = list(dict.fromkeys(eos_token_ids))
        for token_id in (bos_token_id, *self.eos_token_ids):
            if token_id is not None:
                self._check_id(token_id)

        self._added_special_ids = {
            token_id for token_id, added in backend.get_added_tokens_decoder().items()
            if added.special
        }
        self._added_ids = set(backend.get_added_tokens_decoder())
        self.all_special_ids: set[int] = set(self._added_special_ids) | set(self.eos_token_ids)
        if bos_token_id is not None:
            self.all_special_ids.add(bos_token_id)

        # What the post-processor (tokenizer.json's TemplateProcessing) adds around any text.
        framing = backend.encode("", add_special_tokens=True).ids
        post_processor_bos = bos_token_id is not None and bos_token_id in framing
        post_processor_eos = bool(self.eos_token_ids) and self.eos_token_ids[0] in framing
        self._prepend_bos = (
            bool(add_bos_token) and bos_token_id is not None and not post_processor_bos
        )
        self._strip_bos = post_processor_bos and add_bos_token is False
        self._append_eos = (
            bool(add_eos_token) and bool(self.eos_token_ids) and not post_processor_eos
        )

        self.special_tokens: dict[str, str] = dict(special_tokens or {})
        self.chat_templates: dict[str, ChatTemplate] = {
            name: ChatTemplate(source, self.special_tokens)
            for name, source in (chat_templates or {}).items()
        }
        self._bytes_cache: dict[int, bytes] = {}

    # --- constructors -----------------------------------------------------------------------

    @classmethod
    def from_gguf_metadata(cls, metadata: dict[str, Any]) -> Tokenizer:
        """From a GGUF's metadata (`Checkpoint.gguf_metadata()`)."""
        parts = build_gguf_tokenizer(metadata)
        return cls(
            parts.backend,
            kind=parts.kind,
            bos_token_id=parts.bos_token_id,
            eos_token_ids=parts.eos_token_ids,
            add_bos_token=parts.add_bos_token,
            add_eos_token=parts.add_eos_token,
            chat_templates=parts.chat_templates,
            special_tokens=parts.special_tokens,
            pieces=parts.pieces,
        )

    @classmethod
    def from_file(
        cls,
        tokenizer_json_path: str | PathLike[str],
        tokenizer_config: dict[str, Any] | None = None,
        *,
        generation_eos_token_ids: Sequence[int] = (),
        chat_template: str | None = None,
    ) -> Tokenizer:
        """From a tokenizer.json, with the settings of a tokenizer_config.json dict.

        `generation_eos_token_ids` (from generation_config.json) are extra end-of-generation
        ids; `chat_template` overrides the config's template (chat_template.jinja).
        """
        path = Path(tokenizer_json_path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        text = path.read_text(encoding="utf-8")
        backend = BackendTokenizer.from_str(text)
        config = dict(tokenizer_config or {})

        special_tokens = {
            name: token
            for name in _SPECIAL_TOKEN_NAMES
            if (token := _token_content(config.get(name))) is not None
        }
        bos_id = _lookup(backend, special_tokens.get("bos_token"))
        eos_ids = [
            token_id
            for token_id in (_lookup(backend, special_tokens.get("eos_token")),
                             *generation_eos_token_ids)
            if token_id is not None
        ]
        templates = _config_chat_templates(config.get("chat_template"))
        if chat_template is not None:
            templates["default"] = chat_template
        return cls(
            backend,
            kind=_kind_from_tokenizer_json(json.loads(text)),
            bos_token_id=bos_id,
            eos_token_ids=eos_ids,
            add_bos_token=_optional_bool(config.get("add_bos_token")),
            add_eos_token=_optional_bool(config.get("add_eos_token")),
            chat_templates=templates,
            special_tokens=special_tokens,
        )

    @classmethod
    def from_hf_dir(cls, path: str | PathLike[str]) -> Tokenizer:
        """From a Hugging Face model folder: tokenizer.json plus tokenizer_config.json,
        special_tokens_map.json, chat_template.jinja and generation_config.json when present."""
        folder = Path(path)
        if not (folder / "tokenizer.json").is_file():
            raise FileNotFoundError(f"no tokenizer.json in {folder}")
        config = _read_json(folder / "tokenizer_config.json")
        # special_tokens_map.json wins over the config, as in transformers.
        for name, value in _read_json(folder / "special_tokens_map.json").items():
            if name in _SPECIAL_TOKEN_NAMES:
                config[name] = value
        generation = _read_json(folder / "generation_config.json")
        generation_eos = generation.get("eos_token_id")
        if isinstance(generation_eos, int):
            generation_eos = [generation_eos]
        template_file = folder / "chat_template.jinja"
        return cls.from_file(
            folder / "tokenizer.json",
            config,
            generation_eos_token_ids=[int(t) for t in generation_eos or []],
            chat_template=(
                template_file.read_text(encoding="utf-8") if template_file.is_file() else None
            ),
        )

    # --- encoding / decoding ----------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`. Special tokens written in the text (e.g. "<|im_start|>") become
        their ids; `add_special_tokens` adds BOS/EOS only where the model asks for them."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        # encode_batch releases the GIL while it works (encode holds it): a long prompt being
        # tokenised in one thread must not stall the others (the server's event loop).
        encoding = self._backend.encode_batch([text], add_special_tokens=add_special_tokens)[0]
        ids: list[int] = encoding.ids
        if add_special_tokens:
            if self._prepend_bos:
                assert self.bos_token_id is not None
                ids.insert(0, self.bos_token_id)
            elif self._strip_bos and ids and ids[0] == self.bos_token_id:
                del ids[0]
            if self._append_eos:
                ids.append(self.eos_token_ids[0])
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`; bytes that do not form valid UTF-8 become U+FFFD."""
        id_list = list(ids)
        if id_list:
            self._check_id(min(id_list))
            self._check_id(max(id_list))
        return self._backend.decode(id_list, skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str:
        """The raw vocabulary piece (e.g. "Ġworld" in a byte-level vocabulary)."""
        self._check_id(token_id)
        piece = self._backend.id_to_token(token_id)
        if piece is None and self._pieces is not None:
            piece = self._pieces[token_id]
        return piece if piece is not None else ""

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes the token stands for (OpenAI logprobs' `bytes`); may be part of a
        multi-byte character."""
        cached = self._bytes_cache.get(token_id)
        if cached is not None:
            return cached
        piece = self.id_to_token(token_id)
        if self.kind == "byte_level":
            data = byte_level_piece_to_bytes(piece)
        elif self.kind == "sentencepiece":
            byte_match = _BYTE_PIECE.match(piece)
            if byte_match and token_id not in self._added_ids:
                data = bytes([int(byte_match.group(1), 16)])
            else:
                data = piece.replace("▁", " ").encode("utf-8")
        else:
            data = self._backend.decode([token_id], skip_special_tokens=False).encode("utf-8")
        self._bytes_cache[token_id] = data
        return data

    def token_to_text(self, token_id: int) -> str:
        """How the token displays on its own (logprobs): its bytes, invalid UTF-8 replaced."""
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def to_json(self) -> str:
        """The backend tokenizer serialised as tokenizer.json text (how llguidance builds its
        own tokenizer without transformers)."""
        return str(self._backend.to_str())

    def is_skipped_when_decoding(self, token_id: int) -> bool:
        """Whether `decode(..., skip_special_tokens=True)` drops this id."""
        return token_id in self._added_special_ids

    # --- special tokens and chat ------------------------------------------------------------

    @property
    def bos_token(self) -> str | None:
        return self.special_tokens.get("bos_token")

    @property
    def eos_token(self) -> str | None:
        return self.special_tokens.get("eos_token")

    @property
    def chat_template(self) -> ChatTemplate | None:
        """The default chat template, or None when the model has none."""
        if "default" in self.chat_templates:
            return self.chat_templates["default"]
        return next(iter(self.chat_templates.values()), None)

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        """The prompt text for a conversation. Encode it with `add_special_tokens=False`: the
        template already writes any BOS the model wants."""
        template = self.chat_templates.get("tool_use") if tools else None
        template = template or self.chat_template
        if template is None:
            raise NoChatTemplateError(
                "this model has no chat template; send a plain prompt (completions) instead"
            )
        if not template.renders_tools and hermes.needs_rewrite(messages, tools):
            messages = hermes.messages_with_tools(messages, tools)
            tools = None
        return template.render(
            messages, add_generation_prompt=add_generation_prompt, tools=tools, **kwargs
        )

    # --- helpers ----------------------------------------------------------------------------

    def _check_id(self, token_id: int) -> None:
        if not 0 <= token_id < self.vocab_size:
            raise InvalidTokenIdError(
                f"token id {token_id} is outside the vocabulary [0, {self.vocab_size})"
            )


def _token_content(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string or a serialised AddedToken."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _optional_bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


def _lookup(backend: BackendTokenizer, token: str | None) -> int | None:
    return backend.token_to_id(token) if token is not None else None


def _config_chat_templates(value: Any) -> dict[str, str]:
    """tokenizer_config's chat_template: one string, or a list of {"name", "template"}."""
    if isinstance(value, str):
        return {"default": value}
    if isinstance(value, list):
        return {
            str(entry["name"]): str(entry["template"])
            for entry in value
            if isinstance(entry, dict) and "name" in entry and "template" in entry
        }
    return {}


def _kind_from_tokenizer_json(tokenizer_json: dict[str, Any]) -> TokenizerKind:
    """Byte-level BPE, SentencePiece-style (▁ and <0xNN> byte pieces), or something else."""
    decoder_types = set(_node_types(tokenizer_json.get("decoder")))
    if "ByteLevel" in decoder_types:
        return "byte_level"
    if decoder_types & {"ByteFallback", "Metaspace"}:
        return "sentencepiece"
    return "other"


def _node_types(node: Any) -> Iterable[str]:
    """Every "type" in a (possibly nested `Sequence`) tokenizer.json component."""
    if isinstance(node, dict):
        if isinstance(node.get("type"), str):
            yield node["type"]
        for child in node.get("decoders", []) or []:
            yield from _node_types(child)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    value = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(value, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return value
