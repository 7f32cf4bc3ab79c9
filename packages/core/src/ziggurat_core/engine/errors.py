"""Typed errors raised by the engine. No torch: the server maps these to HTTP statuses."""

from __future__ import annotations


class EngineError(Exception):
    """Base class for engine errors."""


class RequestValidationError(EngineError, ValueError):
    """The request cannot be served as asked (the server answers 400). Nothing was allocated."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class PromptTooLongError(RequestValidationError):
    """The prompt (plus max_tokens) does not fit the context window or the whole KV cache."""


class DuplicateRequestError(RequestValidationError):
    """A request with this id is already in flight."""


class GrammarCompileError(RequestValidationError):
    """A structured-output constraint (JSON schema, regex, choice or grammar) does not compile;
    the message carries llguidance's own. The request never runs unconstrained."""


class ModelNotFoundError(EngineError, FileNotFoundError):
    """The model path does not exist, or the default model package is not installed."""


class EngineDeadError(EngineError, RuntimeError):
    """The background engine loop stopped after an internal error; requests cannot be served."""


class ReplicaUnavailableError(EngineError, RuntimeError):
    """No replica could serve the request: its replica stopped while it ran, or none is up (the
    server answers 503; Ray restarts stopped replicas, so a retry may succeed)."""
