"""InferenceEngine: the synchronous, step-driven engine that users embed."""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .adaptive_threads import AdaptiveThreads, HostCpuSample, read_host_cpu
from .calibration_text import CALIBRATION_TEXT
from .config import EngineConfig, ModelConfig, engine_config
from .default_model import default_served_name, resolve_model_path
from .errors import PromptTooLongError, RequestValidationError
from .inputs import ChatMessage, ToolDefinition
from .output_processor import OutputProcessor, RequestState
from .outputs import RequestMetrics, RequestOutput
from .reports import EngineStats
from .sample_result import SampleResult
from .sampling_params import SamplingParams
from .scheduler import Scheduler
from .scheduler_output import SchedulerOutput
from .sequence import SequenceState, SequenceStatus
from .structured_output.manager import GrammarState, StructuredOutputManager
from .tokenizer import Tokenizer

if TYPE_CHECKING:
    from .distributed import TensorParallelRunner
    from .loader import Checkpoint
    from .model_runner import ModelRunner

logger = logging.getLogger("ziggurat.engine")


def load_tokenizer(checkpoint: Checkpoint) -> Tokenizer:
    if checkpoint.format == "gguf":
        return Tokenizer.from_gguf_metadata(checkpoint.gguf_metadata())
    return Tokenizer.from_hf_dir(checkpoint.path)


def step_cost_clock(runner: object, device_type: str, wall_clock: Callable[[], float]
                    ) -> Callable[[], float]:
    """What the prefill pacer times a step with. On CPU, in one process: the stepping thread's
    CPU time, which is the step's own work (the OpenMP team's other threads work beside it,
    and wait at the same barriers). Its wall time also holds whatever else took the core: in a
    server whose replicas fill every core, the server's work on arriving requests lands on
    exactly the steps that compute their prompts, and the pacer, timing those by the wall,
    took prompt tokens for dearer than they are and let a burst of arrivals in a few tokens a
    step. On a GPU or across tensor-parallel ranks the thread waits for work done elsewhere,
    which only the wall clock sees; Windows counts thread time in 15.6 ms ticks."""
    from .model_runner import ModelRunner

    if device_type == "cpu" and isinstance(runner, ModelRunner) and sys.platform != "win32":
        return time.thread_time
    return wall_clock


class InferenceEngine:
    """Continuous-batching engine. Drive it with `step()` or iterate `get_outputs()`."""

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        streaming: bool = False,
        clock: Callable[[], float] = time.perf_counter,
        step_clock: Callable[[], float] | None = None,
        host_cpu: Callable[[], HostCpuSample | None] = read_host_cpu,
        **overrides: Any,
    ) -> None:
        """`streaming`: the outputs stream to waiting clients (AsyncEngine: the server, a
        replica), which changes the defaults that trade throughput for their inter-token
        latency (`EngineConfig.resolved_prefill_tokens_while_decoding`,
        `resolved_max_decode_slowdown`). `clock`: seconds, the adaptive threads' windows (a
        test's fake clock). `step_clock`: seconds, what the steps are timed with for the
        prefill pacer (a test's fake clock); by default the stepping thread's CPU time when one
        process runs the model on CPU (`step_cost_clock`), else `clock`. `host_cpu`: how the
        adaptive threads read the host's CPU pressure and idle time (a test's fake host)."""
        from .device import resolve_device, resolve_dtype
        from .loader import load_checkpoint
        from .model_runner import ModelRunner

        config = engine_config(config, **overrides)
        if config.uses_ray:
            raise ValueError("num_replicas > 1 and ray_address are served by a replica set: "
                             "LLM(num_replicas=...) or ziggurat_core.engine.replicas."
                             "ReplicaSetEngine.start(config), which takes requests as this "
                             "class does; InferenceEngine is one engine in this process")
        self.config = config
        self.started_at = time.time()
        started = time.perf_counter()
        path = resolve_model_path(config.model)
        device = resolve_device(config.device)
        checkpoint = load_checkpoint(path, dtype=resolve_dtype(config.dtype, device))
        self.model_config: ModelConfig = checkpoint.model_config
        self.model_name = config.served_model_name or default_served_name(config.model)
        self.tokenizer = load_tokenizer(checkpoint)
        model_len = self.model_config.max_position_embeddings
        self.max_model_len = min(config.max_model_len or model_len, model_len)
        self.runner: ModelRunner | TensorParallelRunner
        if config.tensor_parallel_size > 1:
            from .distributed import TensorParallelRunner

            self.runner = TensorParallelRunner(config, checkpoint, self.max_model_len)
        else:
            self.runner = ModelRunner(
                config, checkpoint, self.max_model_len, self.tokenizer.encode(CALIBRATION_TEXT)
            )
        self.resolved_settings = self.runner.resolved_settings()
        # The runner resolves an unset block size from its attention backend; the block manager
        # must cut the cache into the same blocks. The prefill cap and pacing depend on the
        # device and the use.
        device_type = self.resolved_settings.engine_device.split(":")[0]
        self.config = config = dataclasses.replace(
            config, block_size=self.runner.kv_spec.block_size,
            max_prefill_tokens_while_decoding=config.resolved_prefill_tokens_while_decoding(
                device_type, streaming
            ),
            max_decode_slowdown=config.resolved_max_decode_slowdown(device_type, streaming),
            adaptive_threads=config.resolved_adaptive_threads(device_type, streaming),
        )
        self._step_clock = step_clock or step_cost_clock(self.runner, device_type, clock)
        # A team of one has no core to give back; a tensor-parallel run's ranks keep theirs.
        self._cpu_threads = self.runner.cpu_threads if isinstance(self.runner, ModelRunner) else None
        self.adaptive_threads: AdaptiveThreads | None = None
        if (config.adaptive_threads and isinstance(self.runner, ModelRunner)
                and self._cpu_threads is not None and self._cpu_threads >= 2):
            self.adaptive_threads = AdaptiveThreads(self._cpu_threads, read=host_cpu, clock=clock)
            self._set_cpu_threads = self.runner.set_cpu_threads
        self.scheduler = Scheduler(config, self.runner.kv_spec.num_blocks, self.max_model_len)
        eos = list(dict.fromkeys([*self.model_config.eos_token_ids, *self.tokenizer.eos_token_ids]))
        self.eos_token_ids = eos
        self.output_processor = OutputProcessor(self.tokenizer, eos, self.max_model_len)
        # Matchers of constrained sequences; builds llguidance's tokenizer on first use only.
        self.structured_output = StructuredOutputManager(self.tokenizer, self.model_config.vocab_size, eos)
        self.load_seconds = time.perf_counter() - started
        # The output side of each request in flight (detokenizers, text, metrics); its
        # sequences belong to the scheduler.
        self._requests: dict[str, RequestState] = {}
        self.counters = {"prompt_tokens": 0, "generation_tokens": 0, "steps": 0}
        self.peak_kv_waste = 0.0
        self.peak_kv_usage = 0.0
        logger.info("engine ready in %.2fs: %s", self.load_seconds, self.model_name)

    # ------------------------------------------------------------------ requests
    def add_request(
        self,
        request_id: str,
        prompt: str | None = None,
        sampling_params: SamplingParams | None = None,
        *,
        prompt_token_ids: list[int] | None = None,
        messages: list[ChatMessage] | None = None,
        tools: list[ToolDefinition] | None = None,
        arrival_time: float | None = None,
    ) -> None:
        """Queue a request. Raises RequestValidationError (nothing is queued) if it cannot run.

        This is where a request enters the engine, so every check of the prompt and the
        sampling parameters is made here, once (the server relies on it too)."""
        params = sampling_params if sampling_params is not None else SamplingParams()
        params.validate()
        prompt, token_ids = self.render_prompt(
            prompt, prompt_token_ids=prompt_token_ids, messages=messages, tools=tools)
        self._validate_tokens(token_ids, params)
        self.scheduler.check_request(len(token_ids))
        # Compiled before anything is allocated: a grammar that does not compile is a
        # GrammarCompileError here, never a request that runs unconstrained.
        matcher = None
        if params.structured_outputs is not None:
            spec = params.structured_outputs
            matcher = self.structured_output.compile(spec, spec.param)

        now = time.monotonic() if arrival_time is None else arrival_time
        seqs = [SequenceState(request_id, token_ids, params, index=i, arrival_time=now) for i in range(params.n)]
        state = RequestState(
            request_id=request_id,
            prompt=prompt,
            prompt_token_ids=token_ids,
            samples=[self.output_processor.new_sample(seq) for seq in seqs],
            metrics=RequestMetrics(arrival_time=now),
        )
        self.scheduler.add_request(request_id, seqs)  # raises DuplicateRequestError for a known id
        if matcher is not None:
            self.structured_output.start(seqs, matcher)
        self._requests[request_id] = state
        self.counters["prompt_tokens"] += len(token_ids)

    def render_prompt(
        self,
        prompt: str | None = None,
        *,
        prompt_token_ids: list[int] | None = None,
        messages: list[ChatMessage] | None = None,
        tools: list[ToolDefinition] | None = None,
    ) -> tuple[str | None, list[int]]:
        """The prompt text (None when given as token ids) and the token ids the engine runs for
        exactly one of `prompt`, `prompt_token_ids` or `messages`. Raises RequestValidationError.
        Reads only the tokenizer, so any thread may call it."""
        given = sum(x is not None for x in (prompt, prompt_token_ids, messages))
        if given != 1:
            raise RequestValidationError("give exactly one of prompt, prompt_token_ids or messages", "prompt")
        if messages is not None:
            try:
                text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tools=tools)
            except ValueError as exc:
                raise RequestValidationError(f"chat template failed: {exc}", "messages") from exc
            # The template already wrote any BOS it wants.
            return text, self.tokenizer.encode(text, add_special_tokens=False)
        if prompt is not None:
            return prompt, self.tokenizer.encode(prompt)
        assert prompt_token_ids is not None
        return None, list(prompt_token_ids)

    def _validate_tokens(self, token_ids: list[int], params: SamplingParams) -> None:
        vocab = self.model_config.vocab_size
        if not token_ids:
            raise RequestValidationError("the prompt is empty: it must hold at least one token", "prompt")
        bad = next((t for t in token_ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise RequestValidationError(f"prompt token id {bad} is outside the vocabulary [0, {vocab})", "prompt")
        for name, ids in (("logit_bias", list((params.logit_bias or {}).keys())), ("stop_token_ids", params.stop_token_ids)):
            bad = next((t for t in ids if not 0 <= t < vocab), None)
            if bad is not None:
                raise RequestValidationError(f"{name} token id {bad} is outside the vocabulary [0, {vocab})", name)
        prompt_len = len(token_ids)
        if prompt_len >= self.max_model_len:
            raise PromptTooLongError(
                f"the prompt has {prompt_len} tokens but the context window is {self.max_model_len} "
                "tokens (and at least one must be generated)", "prompt")
        if params.max_tokens is not None and prompt_len + params.max_tokens > self.max_model_len:
            raise PromptTooLongError(
                f"this model's context window is {self.max_model_len} tokens, but {prompt_len} prompt "
                f"tokens plus max_tokens={params.max_tokens} ask for {prompt_len + params.max_tokens}; "
                "shorten the prompt or lower max_tokens", "max_tokens")

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Stop a request at any time; its KV blocks are freed. Returns its final output."""
        state = self._requests.pop(request_id, None)
        self.scheduler.abort_request(request_id)
        if state is None:
            return None
        self.structured_output.release(sample.seq.seq_id for sample in state.samples)
        return self.output_processor.make_output(state)

    # ------------------------------------------------------------------ stepping
    def step(self) -> list[RequestOutput]:
        """Run one scheduling step; return the outputs of requests that progressed."""
        started = self._step_clock()
        if self.adaptive_threads is not None and self.has_unfinished_requests():
            self._adapt_cpu_threads(self.adaptive_threads.threads_for_step())
        sched = self.scheduler.schedule()
        touched: dict[str, RequestState] = {}
        for seq in sched.finished_by_scheduler:
            state = self._requests.get(seq.request_id)
            if state is not None:
                self.output_processor.finish_without_token(state.samples[seq.index])
                touched[seq.request_id] = state
        if sched.scheduled:
            scheduled_at = time.monotonic()
            for item in sched.scheduled:
                metrics = self._requests[item.seq.request_id].metrics
                if metrics.first_scheduled_time is None:
                    metrics.first_scheduled_time = scheduled_at
            self.counters["steps"] += 1
            self._track_kv_stats()
            structured = self.structured_output
            token_mask = structured.fill_bitmask if structured.num_live else None
            results = self.runner.execute(sched.scheduled, self.eos_token_ids, token_mask)
            if structured.num_live:
                grown = self._postprocess_constrained(sched, results)
            else:
                sampled = {seq_id: result.token_id for seq_id, result in results.items()}

                def check_stop(seq: SequenceState) -> SequenceStatus | None:
                    sample = self._requests[seq.request_id].samples[seq.index]
                    return self.output_processor.process_token(sample, results[seq.seq_id])

                grown = self.scheduler.postprocess(sched, sampled, check_stop)
            self.scheduler.record_step_time(sched, self._step_clock() - started)
            now = time.monotonic()
            for seq in grown:
                state = self._requests[seq.request_id]
                if state.metrics.first_token_time is None:
                    state.metrics.first_token_time = now
                touched[seq.request_id] = state
            self.counters["generation_tokens"] += len(grown)
        outputs = [OutputProcessor.make_output(state) for state in touched.values()]
        for output in outputs:
            if output.finished:
                state = self._requests.pop(output.request_id)
                if self.structured_output.num_live:
                    self.structured_output.release(sample.seq.seq_id for sample in state.samples)
        return outputs

    def _adapt_cpu_threads(self, threads: int) -> None:
        if threads == self._cpu_threads:
            return
        self._set_cpu_threads(threads)
        self._cpu_threads = threads
        self.scheduler.step_costs_changed()  # every step's time moves with the team

    def _postprocess_constrained(
        self, sched: SchedulerOutput, results: dict[int, SampleResult]
    ) -> list[SequenceState]:
        """`scheduler.postprocess` for a step with constrained sequences: each token a sequence
        gains also advances its grammar, a finished grammar stops the sequence ("stop"), and
        the tokens the grammar forces next are appended for the next step to compute at once.
        The results of a sequence's tokens are queued in the order it gains them: the sampled
        one, then the forced ones (probability 1 under the grammar: logprob 0)."""
        structured = self.structured_output
        pending = {seq_id: deque([result]) for seq_id, result in results.items()}

        def check_stop(seq: SequenceState) -> SequenceStatus | None:
            sample = self._requests[seq.request_id].samples[seq.index]
            token = seq.output_token_ids[-1]
            grammar = structured.accept(seq, token)
            status = self.output_processor.process_token(sample, pending[seq.seq_id].popleft())
            if grammar is None:
                return status
            sample.captures = structured.captures(seq) or []
            if status is None and grammar is GrammarState.COMPLETE:
                self.output_processor.finish_without_token(sample)
                return SequenceStatus.FINISHED_STOPPED
            if status is None and grammar is GrammarState.ERROR:
                self.output_processor.finish_without_token(sample)
                return SequenceStatus.FINISHED_ABORTED
            return status

        def forced_tokens(seq: SequenceState) -> list[int]:
            params = seq.sampling_params
            limit = self.max_model_len - len(seq)
            if params.max_tokens is not None:
                limit = min(limit, params.max_tokens - seq.num_output_tokens)
            tokens = structured.forced_tokens(seq, limit)
            wants_logprobs = params.logprobs is not None
            pending[seq.seq_id].extend(
                SampleResult(token, 0.0 if wants_logprobs else None, {token: 0.0} if wants_logprobs else None)
                for token in tokens
            )
            return tokens

        sampled = {seq_id: result.token_id for seq_id, result in results.items()}
        return self.scheduler.postprocess(sched, sampled, check_stop, forced_tokens)

    def _track_kv_stats(self) -> None:
        stats = self.scheduler.block_manager.stats()
        self.peak_kv_usage = max(self.peak_kv_usage, stats.usage)
        if stats.usage >= self.peak_kv_usage:
            self.peak_kv_waste = stats.waste

    def get_outputs(self) -> Iterator[RequestOutput]:
        """Step until every request is finished, yielding outputs as they are produced."""
        while self.has_unfinished_requests():
            yield from self.step()

    def close(self) -> None:
        """Stop the tensor-parallel ranks, if any (a one-process engine holds nothing to stop)."""
        self.runner.close()

    # ------------------------------------------------------------------ introspection
    def has_unfinished_requests(self) -> bool:
        return bool(self._requests)

    def get_num_unfinished_requests(self) -> int:
        return len(self._requests)

    def stats(self) -> EngineStats:
        sched = self.scheduler.stats()
        kv = sched.kv
        return EngineStats(
            running=sched.num_running,
            waiting=sched.num_waiting,
            kv_blocks_total=kv.num_blocks,
            kv_blocks_used=kv.num_used_blocks,
            kv_usage=kv.usage,
            kv_waste=kv.waste,
            kv_cache_bytes=self.runner.kv_spec.total_bytes,
            block_size=self.config.resolved_block_size,
            prefix_cache_hit_rate=kv.hit_rate,
            peak_kv_usage=self.peak_kv_usage,
            peak_kv_waste=self.peak_kv_waste,
            prompt_tokens=self.counters["prompt_tokens"],
            generation_tokens=self.counters["generation_tokens"],
            steps=self.counters["steps"],
            preemptions=sched.num_preemptions,
            uptime_s=time.time() - self.started_at,
            cpu_threads=self._cpu_threads,
            cpu_thread_yields=self.adaptive_threads.yields if self.adaptive_threads else 0,
        )
