"""Map OpenAI request fields onto the engine's SamplingParams (OpenAI defaults where unset)."""

from __future__ import annotations

from ziggurat_core.engine.sampling_params import SamplingParams, StructuredOutputsParams
from ziggurat_core.protocol import ChatCompletionRequest, CompletionRequest
from ziggurat_core.protocol.common import SamplingFields

from .errors import bad_request, model_not_found
from .structured_output import structured_outputs_params

# OpenAI's legacy completions endpoint stops after 16 tokens when max_tokens is not given.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


def parse_logit_bias(logit_bias: dict[str, float] | None) -> dict[int, float] | None:
    """OpenAI sends token ids as string keys; the request model has checked that they are
    digits and the biases within +-100. Whether each id is in the vocabulary is the engine's
    check, made where the request enters it."""
    if not logit_bias:
        return None
    return {int(key): float(bias) for key, bias in logit_bias.items()}


def _build(fields: SamplingFields, *, max_tokens: int | None, logprobs: int | None,
           structured_outputs: StructuredOutputsParams | None = None) -> SamplingParams:
    """Out-of-range values raise the engine's SamplingParamsError (a RequestValidationError
    naming the param); the app's error handler answers it with a 400."""
    return SamplingParams(
        n=fields.n,
        temperature=1.0 if fields.temperature is None else fields.temperature,
        top_p=1.0 if fields.top_p is None else fields.top_p,
        top_k=-1 if fields.top_k is None else fields.top_k,
        min_p=0.0 if fields.min_p is None else fields.min_p,
        frequency_penalty=fields.frequency_penalty or 0.0,
        presence_penalty=fields.presence_penalty or 0.0,
        repetition_penalty=1.0 if fields.repetition_penalty is None else fields.repetition_penalty,
        logit_bias=parse_logit_bias(fields.logit_bias),
        seed=fields.seed,
        max_tokens=max_tokens,
        min_tokens=fields.min_tokens,
        stop=fields.stop_list(),
        stop_token_ids=list(fields.stop_token_ids or []),
        ignore_eos=fields.ignore_eos,
        logprobs=logprobs,
        structured_outputs=structured_outputs,
    )


def completion_sampling_params(request: CompletionRequest) -> SamplingParams:
    if request.suffix is not None:
        raise bad_request("suffix is not supported", param="suffix")
    if request.best_of is not None and request.best_of != request.n:
        raise bad_request("best_of is not supported (only best_of == n)", param="best_of")
    max_tokens = request.max_tokens if request.max_tokens is not None else COMPLETIONS_DEFAULT_MAX_TOKENS
    return _build(request, max_tokens=max_tokens, logprobs=request.logprobs,
                  structured_outputs=structured_outputs_params(request))


def chat_sampling_params(request: ChatCompletionRequest) -> SamplingParams:
    if request.top_logprobs is not None and not request.logprobs:
        raise bad_request("top_logprobs requires logprobs to be true", param="top_logprobs")
    logprobs = (request.top_logprobs or 0) if request.logprobs else None
    # None means "up to the context window", as OpenAI does for chat.
    return _build(request, max_tokens=request.effective_max_tokens(), logprobs=logprobs,
                  structured_outputs=structured_outputs_params(request))


def check_model_name(requested: str | None, served_name: str) -> None:
    """The model field may be omitted, or name the served model (or 'default')."""
    if requested is None or requested in (served_name, "default"):
        return
    raise model_not_found(requested, served_name)
