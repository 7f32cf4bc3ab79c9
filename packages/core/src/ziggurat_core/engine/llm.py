"""LLM: offline batch generation on top of InferenceEngine."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence as SequenceABC
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError

from ..protocol.tools import ChatCompletionTool, ToolChoice
from ..tools import ToolPlan, check_tool_schemas, plan_tools, tool_call_grammar
from .config import EngineConfig, engine_config
from .errors import RequestValidationError
from .inputs import ChatMessage, PromptInput, ToolDefinition
from .llm_engine import InferenceEngine
from .outputs import RequestOutput
from .sampling_params import SamplingParams, StructuredOutputsParams
from .tokenizer import Tokenizer

if TYPE_CHECKING:
    from .replicas.sync_engine import ReplicaSetEngine

Messages = list[ChatMessage]
# Show a progress bar once a batch is long enough for a user to wonder whether it is moving.
_PROGRESS_MIN_REQUESTS = 8


class LLM:
    """`LLM(model="default").generate(prompts, params)` runs a whole batch and returns it in order."""

    def __init__(self, model: str | None = None, config: EngineConfig | None = None,
                 **engine_kwargs: Any) -> None:
        """`model` wins over `config.model`; with neither, the default model is served. The
        caller's `config` is left as it was."""
        if model is not None:
            engine_kwargs["model"] = model
        resolved = engine_config(config, **engine_kwargs)
        # Replicas (num_replicas > 1 or a Ray address) run as Ray actors behind the same
        # request interface; Ray is imported only then.
        self.engine: InferenceEngine | ReplicaSetEngine
        if resolved.uses_ray:
            from .replicas.sync_engine import ReplicaSetEngine

            self.engine = ReplicaSetEngine.start(resolved)
        else:
            self.engine = InferenceEngine(resolved)
        self._ids = itertools.count()

    @property
    def tokenizer(self) -> Tokenizer:
        return self.engine.tokenizer

    def close(self) -> None:
        """Stop the engine's helpers: tensor-parallel ranks, or the replicas (and a local Ray
        instance their set started)."""
        self.engine.close()

    def generate(
        self,
        prompts: str | list[str] | list[list[int]],
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        if isinstance(prompts, str):
            prompts = [prompts]
        requests: list[PromptInput] = []
        for prompt in prompts:
            if isinstance(prompt, str):
                requests.append({"prompt": prompt})
            else:
                requests.append({"prompt_token_ids": list(prompt)})
        return self._run(requests, sampling_params, use_tqdm)

    def chat(
        self,
        messages: Messages | list[Messages],
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        use_tqdm: bool = True,
        tools: list[ToolDefinition] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        parallel_tool_calls: bool = True,
    ) -> list[RequestOutput]:
        """One conversation (a list of messages) or a batch of them.

        `tools` and `tool_choice` take OpenAI's shapes. When a call can be made, the output is
        constrained to well-formed calls (see ziggurat_core.tools); read them with
        `ziggurat_core.tools.parsing.calls_from_captures(completion.captures)`.
        """
        single = bool(messages) and isinstance(messages[0], dict)
        batch: list[Messages] = [messages] if single else messages  # type: ignore[assignment,list-item]
        plan = _tool_plan(tools, tool_choice, parallel_tool_calls)
        grammar = tool_call_grammar(plan)
        if grammar is not None:
            sampling_params = _with_grammar(sampling_params, grammar)
        prompt_tools = plan.prompt_tools()
        return self._run([{"messages": conv, "tools": prompt_tools} for conv in batch],
                         sampling_params, use_tqdm)

    def _run(
        self,
        requests: list[PromptInput],
        sampling_params: SamplingParams | list[SamplingParams] | None,
        use_tqdm: bool,
    ) -> list[RequestOutput]:
        if isinstance(sampling_params, SequenceABC):
            if len(sampling_params) != len(requests):
                raise ValueError(
                    f"got {len(sampling_params)} sampling params for {len(requests)} prompts"
                )
            params_list = list(sampling_params)
        else:
            params_list = [sampling_params or SamplingParams()] * len(requests)
        order: dict[str, int] = {}
        added: list[str] = []
        try:
            for position, (request, params) in enumerate(zip(requests, params_list, strict=True)):
                request_id = f"llm-{next(self._ids)}"
                self.engine.add_request(request_id, sampling_params=params, **request)
                order[request_id] = position
                added.append(request_id)
        except Exception:
            for request_id in added:  # a bad prompt refuses the whole batch, leaving nothing behind
                self.engine.abort_request(request_id)
            raise
        results: list[RequestOutput | None] = [None] * len(requests)
        bar = None
        if use_tqdm and len(requests) >= _PROGRESS_MIN_REQUESTS:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(requests), desc="Generating", unit="req")
        try:
            while any(r is None for r in results):
                for output in self.engine.step():
                    if output.finished and output.request_id in order:
                        results[order[output.request_id]] = output
                        if bar is not None:
                            bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return [r for r in results if r is not None]


def _tool_plan(tools: list[ToolDefinition] | None, tool_choice: str | dict[str, Any] | None,
               parallel_tool_calls: bool) -> ToolPlan:
    """The OpenAI-shaped arguments checked as the server checks a request's."""
    try:
        typed_tools = None if tools is None else [ChatCompletionTool.model_validate(t)
                                                  for t in tools]
        choice = None if tool_choice is None else TypeAdapter(ToolChoice).validate_python(
            tool_choice)
    except ValidationError as exc:
        raise RequestValidationError(f"invalid tools or tool_choice: {exc}", "tools") from None
    plan = plan_tools(typed_tools, choice, parallel_tool_calls)
    check_tool_schemas(plan)
    return plan


def _with_grammar(sampling_params: SamplingParams | list[SamplingParams] | None,
                  grammar: str) -> SamplingParams | list[SamplingParams]:
    """Copies of the parameters constrained to the tool-call grammar (the caller's are kept)."""
    def constrained(params: SamplingParams) -> SamplingParams:
        if params.structured_outputs is not None:
            raise RequestValidationError(
                "structured_outputs cannot be combined with tool calls", "structured_outputs")
        return dataclasses.replace(params,
                                   structured_outputs=StructuredOutputsParams(grammar=grammar))

    if isinstance(sampling_params, SequenceABC):
        return [constrained(params) for params in sampling_params]
    return constrained(sampling_params or SamplingParams())
