"""Rank 0 of a tensor-parallel engine: a ModelRunner over its own shard that starts the other
ranks (spawned processes, or Ray actors where Ray is in use), sends them each step's inputs and
samples from the gathered logits."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..config import EngineConfig
from ..device import resolve_device
from ..errors import EngineDeadError
from ..kv_cache_plan import KVCacheSpec
from ..model_runner import ModelRunner, StepInputs, TokenMaskFn
from ..reports import ResolvedSettings
from ..sample_result import SampleResult
from . import group
from .messages import Command, QueryState, RankState, Step, Stop
from .parallel_layers import parallelize_llama
from .sharding import ShardedCheckpoint, TensorShard, check_tensor_parallel
from .worker import agree_ready, rank_config, worker_main

if TYPE_CHECKING:
    from ..loader import Checkpoint
    from ..scheduler_output import ScheduledSequence
    from ..sequence import SequenceState

logger = logging.getLogger("ziggurat.engine")

_T = TypeVar("_T")


class TensorParallelRankError(EngineDeadError):
    """A tensor-parallel rank died or stopped answering; the engine cannot run another step."""


class _Rank(Protocol):
    """What the runner uses of a rank's process: `multiprocessing.Process` or `RayRank`."""

    name: str

    @property
    def pid(self) -> int | None: ...
    @property
    def exitcode(self) -> int | None: ...
    def start(self) -> None: ...
    def is_alive(self) -> bool: ...
    def join(self, timeout: float | None = None) -> None: ...
    def kill(self) -> None: ...


def _ray_in_use() -> bool:
    """Whether this process is connected to Ray (a replica, or a user's own `ray.init`); never
    imports Ray itself."""
    ray = sys.modules.get("ray")
    return ray is not None and bool(ray.is_initialized())


def _start_rank(args: tuple[Any, ...], name: str) -> _Rank:
    """A rank other than 0, not yet started: a Ray actor where this process uses Ray, else a
    spawned daemon process."""
    if _ray_in_use():
        from .ray_ranks import RayRank

        return RayRank(args, name)
    process: _Rank = mp.get_context("spawn").Process(target=worker_main, args=args, name=name,
                                                    daemon=True)
    return process


class TensorParallelRunner:
    """The ModelRunner interface the engine uses (`kv_spec`, `execute`, `resolved_settings`),
    run across `config.tensor_parallel_size` ranks."""

    def __init__(
        self, config: EngineConfig, checkpoint: Checkpoint, max_model_len: int
    ) -> None:
        size = config.tensor_parallel_size
        check_tensor_parallel(checkpoint.model_config, size)  # before any process starts
        if dist.is_initialized():
            raise group.TensorParallelError(
                "this process already runs a torch.distributed group (one tensor-parallel "
                "engine per process: close the other first)"
            )
        self.size = size
        self._dead: str | None = None
        self._closed = False
        self._sent: dict[int, SequenceState] = {}  # sequences whose blocks the ranks hold
        device = resolve_device(rank_config(config, 0).device)
        timeout = group.COLLECTIVE_TIMEOUT_S
        store = group.open_store(0, size, 0, timeout)
        self.workers = [
            _start_rank((rank, size, store.port, config, str(checkpoint.path), max_model_len),
                        f"ziggurat-tp-rank{rank}")
            for rank in range(1, size)
        ]
        for worker in self.workers:
            worker.start()
        try:
            group.init_group(store, 0, size, device, timeout)
        except Exception:
            self._stop_workers()
            raise
        shard = TensorShard(0, size)
        try:
            runner = ModelRunner(
                rank_config(config, 0),
                ShardedCheckpoint(checkpoint, shard),
                max_model_len,
                parallelize=partial(parallelize_llama, shard=shard),
            )
        except Exception as exc:
            # The other ranks learn it from the agreement below and stop too.
            with contextlib.suppress(RuntimeError):
                agree_ready(f"rank 0: {type(exc).__name__}: {exc}", size)
            self._abandon("rank 0 failed to load")
            raise
        try:
            failed = [error for error in agree_ready(None, size) if error]
        except RuntimeError as exc:
            self._abandon("a rank failed to start")
            raise TensorParallelRankError(f"a tensor-parallel rank failed to start: {exc}") from exc
        if failed:
            self._abandon("a rank failed to load")
            raise TensorParallelRankError("; ".join(failed))
        self.local = runner
        self.kv_spec: KVCacheSpec = runner.kv_spec
        self.load_seconds = runner.load_seconds
        logger.info("tensor parallel: %d ranks (%s)", size, dist.get_backend())

    # ------------------------------------------------------------------ the ModelRunner interface
    @property
    def device(self) -> torch.device:
        """Rank 0's device (the other ranks' are alike on one host)."""
        return self.local.device

    def resolved_settings(self) -> ResolvedSettings:
        return dataclasses.replace(self.local.resolved_settings(), tensor_parallel_size=self.size)

    def execute(
        self,
        scheduled: list[ScheduledSequence],
        eos_token_ids: list[int],
        token_mask: TokenMaskFn | None = None,
    ) -> dict[int, SampleResult]:
        inputs, sample_seqs = self.local.prepare_step(scheduled)
        seq_ids = [item.seq.seq_id for item in scheduled]
        for item in scheduled:
            self._sent[item.seq.seq_id] = item.seq
        self._send(Step(inputs, seq_ids, self._released()))
        logits = self._collective(partial(self._forward, inputs))
        if logits is None:
            return {}
        return self.local.sample(logits, sample_seqs, eos_token_ids, token_mask)

    def _forward(self, inputs: StepInputs) -> torch.Tensor | None:
        return self.local.forward_step(inputs)

    # ------------------------------------------------------------------ introspection
    def rank_states(self) -> list[RankState]:
        """Every rank's view of the KV blocks it holds (rank 0's from the sequences it sent),
        asked of the other ranks over the same channel as the steps."""
        released = self._released()
        self._send(QueryState(released))
        held = [seq.block_table for seq in self._sent.values()]
        own = RankState(0, len(held), len({b for table in held for b in table}))
        states: list[object] = [None] * self.size
        self._collective(partial(dist.gather_object, own, states, dst=0))
        return [state for state in states if isinstance(state, RankState)]

    def _released(self) -> list[int]:
        """Sequences sent before whose blocks the block manager has freed since."""
        gone = [sid for sid, seq in self._sent.items() if seq.is_finished or not seq.block_table]
        for sid in gone:
            del self._sent[sid]
        return gone

    # ------------------------------------------------------------------ the channel
    def _send(self, command: Command) -> None:
        self._check_alive()
        self._collective(partial(dist.broadcast_object_list, [command], src=0))

    def _collective(self, run: Callable[[], _T]) -> _T:
        self._check_alive()
        try:
            return run()
        except RuntimeError as exc:  # gloo: a closed peer socket or the collective timeout
            self._dead = f"a tensor-parallel collective failed: {exc}"
            raise TensorParallelRankError(self._dead) from exc

    def _check_alive(self) -> None:
        if self._closed:
            raise TensorParallelRankError("the tensor-parallel engine is closed")
        if self._dead is None:
            lost = [w for w in self.workers if not w.is_alive()]
            if lost:
                self._dead = ", ".join(f"{w.name} (pid {w.pid}) exited with {w.exitcode}" for w in lost)
        if self._dead is not None:
            raise TensorParallelRankError(f"tensor-parallel rank lost: {self._dead}")

    # ------------------------------------------------------------------ shutdown
    def close(self) -> None:
        """Stop the other ranks and leave the process group (idempotent)."""
        if self._closed:
            return
        if self._dead is None and all(w.is_alive() for w in self.workers) and dist.is_initialized():
            with contextlib.suppress(RuntimeError):  # a rank died meanwhile: stopped below
                dist.broadcast_object_list([Stop()], src=0)
        self._closed = True
        self._stop_workers()
        if dist.is_initialized():
            dist.destroy_process_group()

    def _abandon(self, reason: str) -> None:
        """Close after a failed start: the other ranks stop on their own, no Stop is sent."""
        self._dead = reason
        self.close()

    def _stop_workers(self) -> None:
        for worker in self.workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
                worker.join()
