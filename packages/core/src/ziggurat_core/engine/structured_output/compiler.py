"""Compiles constraints into llguidance matchers, once per distinct grammar. No torch."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from llguidance import LLMatcher, LLTokenizer

from ..errors import GrammarCompileError
from ..sampling_params import StructuredOutputsParams
from .grammar import grammar_text

# Distinct grammars kept compiled. A JSON-schema service sees few schemas, each many times;
# a bound keeps a stream of one-off grammars from growing memory without limit.
DEFAULT_CACHE_SIZE = 256


class GrammarCompiler:
    """Turns a `StructuredOutputsParams` into a compiled matcher in its initial state.

    The compiled matcher is a template: each sequence runs on its own `deep_copy()` (cheap), so
    a grammar is compiled once however many requests and samples use it. Templates are kept in
    an LRU keyed by a hash of the llguidance grammar text (the normalised form every kind is
    converted to)."""

    def __init__(self, tokenizer: LLTokenizer, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}")
        self._tokenizer = tokenizer
        self._cache_size = cache_size
        self._templates: OrderedDict[str, LLMatcher] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._templates)

    def compile(self, spec: StructuredOutputsParams, param: str = "structured_outputs") -> LLMatcher:
        """A fresh matcher for `spec`, at the start of its grammar. Raises GrammarCompileError
        with llguidance's message when the grammar does not compile against this vocabulary."""
        grammar = grammar_text(spec, param)
        key = hashlib.sha256(grammar.encode("utf-8")).hexdigest()
        template = self._templates.get(key)
        if template is not None:
            self._templates.move_to_end(key)
            self.hits += 1
            return template.deep_copy()
        self.misses += 1
        template = self._compile(grammar, spec, param)
        self._templates[key] = template
        if len(self._templates) > self._cache_size:
            self._templates.popitem(last=False)
        return template.deep_copy()

    def _compile(self, grammar: str, spec: StructuredOutputsParams, param: str) -> LLMatcher:
        kind = spec.kinds()[0]
        is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar, self._tokenizer)
        if is_error:
            raise GrammarCompileError(
                f"the {kind} constraint does not compile: {messages[0].strip()}", param)
        matcher = LLMatcher(self._tokenizer, grammar, log_level=0)
        if matcher.is_error():  # validation passed, so only a resource limit gets here
            raise GrammarCompileError(
                f"the {kind} constraint does not compile: {matcher.get_error()}", param)
        return matcher
