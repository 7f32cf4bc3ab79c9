"""`ReplicaSetEngine`: `InferenceEngine`'s request interface (add_request, step, abort_request)
over a `ReplicaSet`, for callers without an event loop: `LLM(num_replicas=N)` drives it exactly
as it drives one in-process engine."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from functools import cached_property

from ..config import EngineConfig, ModelConfig
from ..inputs import ChatMessage, ToolDefinition
from ..outputs import RequestOutput
from ..reports import EngineStats
from ..sampling_params import SamplingParams
from ..tokenizer import Tokenizer
from .replica_set import ReplicaSet


class ReplicaSetEngine:
    def __init__(self, replicas: ReplicaSet) -> None:
        self.replicas = replicas
        # Filled by the set's stream threads, emptied by `step`.
        self._arrived: queue.SimpleQueue[tuple[str, RequestOutput | BaseException]] = (
            queue.SimpleQueue())
        self._unfinished: set[str] = set()  # added, neither finished nor aborted
        self._held: list[RequestOutput] = []  # taken by a step that raised; the next returns them

    @classmethod
    def start(cls, config: EngineConfig) -> ReplicaSetEngine:
        """Start the replicas (blocking until every one has loaded its model)."""
        return cls(ReplicaSet.start(config))

    @property
    def config(self) -> EngineConfig:
        return self.replicas.engine_config

    @property
    def model_config(self) -> ModelConfig:
        return self.replicas.model_config

    @property
    def model_name(self) -> str:
        return self.replicas.model_name

    @property
    def max_model_len(self) -> int:
        return self.replicas.max_model_len

    @cached_property
    def tokenizer(self) -> Tokenizer:
        """The replicas' tokenizer, loaded here too on first use (from the checkpoint's
        tokenizer files or metadata; the weights are not read)."""
        from ..default_model import resolve_model_path
        from ..llm_engine import load_tokenizer
        from ..loader import load_checkpoint

        return load_tokenizer(load_checkpoint(resolve_model_path(self.config.model)))

    def add_request(
        self,
        request_id: str,
        prompt: str | None = None,
        sampling_params: SamplingParams | None = None,
        *,
        prompt_token_ids: list[int] | None = None,
        messages: list[ChatMessage] | None = None,
        tools: list[ToolDefinition] | None = None,
    ) -> None:
        """Queue the request on a replica; raises what `InferenceEngine.add_request` raises."""
        self.replicas.submit(request_id, lambda item: self._arrived.put((request_id, item)),
                             prompt=prompt, prompt_token_ids=prompt_token_ids,
                             messages=messages, tools=tools, sampling_params=sampling_params)
        self._unfinished.add(request_id)

    def abort_request(self, request_id: str) -> None:
        if request_id in self._unfinished:
            self._unfinished.discard(request_id)
            self.replicas.abort(request_id)

    def has_unfinished_requests(self) -> bool:
        return bool(self._unfinished)

    def step(self) -> list[RequestOutput]:
        """The outputs the replicas made since the previous call, waiting for at least one
        while requests are unfinished. A request whose replica stopped (or whose engine failed)
        raises its error here (`ReplicaUnavailableError` for a lost replica); the other requests
        go on."""
        if self._held:
            held, self._held = self._held, []
            return held
        if not self._unfinished:
            return []
        arrived = [self._arrived.get()]
        while True:
            try:
                arrived.append(self._arrived.get_nowait())
            except queue.Empty:
                break
        outputs: list[RequestOutput] = []
        failure: BaseException | None = None
        for request_id, item in arrived:
            if request_id not in self._unfinished:
                continue  # aborted meanwhile
            if isinstance(item, BaseException):
                self._unfinished.discard(request_id)
                failure = failure or item
                continue
            if item.finished:
                self._unfinished.discard(request_id)
            outputs.append(item)
        if failure is not None:
            self._held = outputs
            raise failure
        return outputs

    def get_outputs(self) -> Iterator[RequestOutput]:
        """Every output until no request is unfinished."""
        while self.has_unfinished_requests():
            yield from self.step()

    def stats(self) -> EngineStats:
        return self.replicas.stats()

    def close(self) -> None:
        """Stop the replicas (and a local Ray instance the set started)."""
        self.replicas.shutdown()
