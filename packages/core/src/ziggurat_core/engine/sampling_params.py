"""Per-request sampling settings. No torch: the scheduler and server build these."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import RequestValidationError


class SamplingParamsError(RequestValidationError):
    """A sampling parameter is out of range; `param` names it, the message gives the range."""


@dataclass(frozen=True)
class StructuredOutputsParams:
    """A constraint on the output's form, enforced token by token (never checked afterwards).

    Exactly one kind is set; the names follow vLLM's structured-output options:
    - `json`: a JSON schema (a dict, or its JSON text); the output is one document it accepts;
    - `json_object`: any JSON object;
    - `regex`: the whole output matches this regular expression;
    - `choice`: the output is exactly one of these strings;
    - `grammar`: a context-free grammar, in llguidance's Lark dialect or in GBNF.
    """

    json: dict[str, Any] | str | None = None
    json_object: bool = False
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    # The request field the constraint came from (e.g. "response_format"), named by the errors
    # about it; not part of the constraint itself.
    param: str = field(default="structured_outputs", compare=False)

    def __post_init__(self) -> None:
        kinds = self.kinds()
        if len(kinds) != 1:
            raise SamplingParamsError(
                "structured_outputs must set exactly one of json, json_object, regex, choice, "
                f"grammar; got {', '.join(kinds) if kinds else 'none'}",
                param=self.param)

    def kinds(self) -> list[str]:
        """The names of the kinds that are set (exactly one in a valid instance)."""
        values = {"json": self.json, "json_object": self.json_object or None,
                  "regex": self.regex, "choice": self.choice, "grammar": self.grammar}
        return [name for name, value in values.items() if value is not None]


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 or 0 disables top-k
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] | None = None
    seed: int | None = None
    max_tokens: int | None = 16  # None: up to the context window
    min_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # number of top logprobs per token; 0 = only the chosen one
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    structured_outputs: StructuredOutputsParams | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.validate()

    def validate(self) -> None:
        checks: list[tuple[bool, str, str]] = [
            (self.n >= 1, "n", f"n must be >= 1, got {self.n}"),
            (0.0 <= self.temperature <= 2.0, "temperature",
             f"temperature must be in [0, 2], got {self.temperature}"),
            (0.0 < self.top_p <= 1.0, "top_p", f"top_p must be in (0, 1], got {self.top_p}"),
            (self.top_k >= -1, "top_k", f"top_k must be -1 (disabled) or >= 0, got {self.top_k}"),
            (0.0 <= self.min_p <= 1.0, "min_p", f"min_p must be in [0, 1], got {self.min_p}"),
            (-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty",
             f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}"),
            (-2.0 <= self.presence_penalty <= 2.0, "presence_penalty",
             f"presence_penalty must be in [-2, 2], got {self.presence_penalty}"),
            (0.0 < self.repetition_penalty <= 2.0, "repetition_penalty",
             f"repetition_penalty must be in (0, 2], got {self.repetition_penalty}"),
            (self.max_tokens is None or self.max_tokens >= 1, "max_tokens",
             f"max_tokens must be >= 1, got {self.max_tokens}"),
            (self.min_tokens >= 0, "min_tokens", f"min_tokens must be >= 0, got {self.min_tokens}"),
            (self.max_tokens is None or self.min_tokens <= self.max_tokens, "min_tokens",
             f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})"),
            (self.logprobs is None or 0 <= self.logprobs <= 20, "logprobs",
             f"logprobs must be in [0, 20], got {self.logprobs}"),
            (all(s != "" for s in self.stop), "stop", "stop strings must not be empty"),
        ]
        for ok, param, message in checks:
            if not ok:
                raise SamplingParamsError(message, param=param)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1
