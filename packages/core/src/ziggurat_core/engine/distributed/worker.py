"""The process of one tensor-parallel rank other than 0: loads its shard of the model and
KV cache, then runs every step rank 0 broadcasts until told to stop."""

from __future__ import annotations

import dataclasses
import logging
from functools import partial

import torch
import torch.distributed as dist

from ..config import EngineConfig
from ..device import resolve_device, resolve_dtype
from ..loader import load_checkpoint
from ..model_runner import ModelRunner
from .group import init_group, open_store
from .messages import QueryState, RankState, Step, Stop
from .parallel_layers import parallelize_llama
from .sharding import ShardedCheckpoint, TensorShard

logger = logging.getLogger("ziggurat.engine")

# A rank other than 0 waits for rank 0's next command as long as the engine is idle; a rank 0
# that dies closes its sockets, which ends the wait at once.
_FOLLOWER_TIMEOUT_S = 365 * 24 * 3600.0


def rank_config(config: EngineConfig, rank: int) -> EngineConfig:
    """On CUDA each rank takes its own device, counted from the configured one."""
    device = resolve_device(config.device)
    if device.type != "cuda":
        return config
    return dataclasses.replace(config, device=f"cuda:{(device.index or 0) + rank}")


def build_rank_runner(
    config: EngineConfig, model_path: str, max_model_len: int, shard: TensorShard
) -> ModelRunner:
    config = rank_config(config, shard.rank)
    dtype = resolve_dtype(config.dtype, resolve_device(config.device))
    checkpoint = ShardedCheckpoint(load_checkpoint(model_path, dtype=dtype), shard)
    return ModelRunner(
        config, checkpoint, max_model_len, parallelize=partial(parallelize_llama, shard=shard)
    )


def agree_ready(error: str | None, size: int) -> list[str | None]:
    """Every rank's load error (None: loaded), so all ranks stop together if one failed."""
    errors: list[str | None] = [None] * size
    dist.all_gather_object(errors, error)
    return errors


def worker_main(
    rank: int, size: int, port: int, config: EngineConfig, model_path: str, max_model_len: int
) -> None:
    """Entry point of a spawned rank (`torch.multiprocessing`, spawn context)."""
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    shard = TensorShard(rank, size)
    device = resolve_device(rank_config(config, rank).device)
    store = open_store(rank, size, port, _FOLLOWER_TIMEOUT_S)
    init_group(store, rank, size, device, _FOLLOWER_TIMEOUT_S)
    try:
        runner: ModelRunner | None = build_rank_runner(config, model_path, max_model_len, shard)
        error = None
    except Exception as exc:  # reported to rank 0, which raises it
        runner, error = None, f"rank {rank}: {type(exc).__name__}: {exc}"
    if any(agree_ready(error, size)) or runner is None:
        dist.destroy_process_group()
        return
    follow(runner, rank)
    dist.destroy_process_group()


def follow(runner: ModelRunner, rank: int) -> None:
    """Run rank 0's commands. `held`: the block table of every sequence rank 0 has not yet
    released, i.e. the blocks of this rank's KV cache shard that are in use."""
    held: dict[int, list[int]] = {}
    while True:
        box: list[object] = [None]
        dist.broadcast_object_list(box, src=0)
        command = box[0]
        if isinstance(command, Stop):
            return
        assert isinstance(command, Step | QueryState)
        for seq_id in command.released:
            held.pop(seq_id, None)
        if isinstance(command, Step):
            for seq_id, table in zip(command.seq_ids, command.inputs.block_tables, strict=True):
                held[seq_id] = list(table)
            runner.forward_step(command.inputs)
        else:
            blocks = {block for table in held.values() for block in table}
            dist.gather_object(RankState(rank, len(held), len(blocks)), None, dst=0)
