"""What the replica-set tests share: a tiny one-thread engine's settings, and streaming several
prompts at once through a replica set on one event loop (the server's path)."""

from __future__ import annotations

import asyncio
from typing import Any

from fixtures_models import TinyModel
from ziggurat_core.engine import SamplingParams
from ziggurat_core.engine.replicas.replica_set import ReplicaSet

WAIT_S = 60.0


def tiny_settings(model: TinyModel) -> dict[str, Any]:
    return dict(model=str(model.gguf_path), device="cpu", num_threads=1, num_kv_blocks=64)


def stream_concurrently(
    replicas: ReplicaSet, prompts: list[list[int]], params: SamplingParams, prefix: str
) -> list[list[Any]]:
    """Every output of each prompt's stream (request ids `prefix-i`), all streamed together."""

    async def stream(index: int, prompt: list[int]) -> list[Any]:
        return [output async for output in replicas.generate(
            f"{prefix}-{index}", prompt_token_ids=prompt, sampling_params=params)]

    async def run() -> list[list[Any]]:
        return await asyncio.wait_for(
            asyncio.gather(*(stream(i, p) for i, p in enumerate(prompts))), WAIT_S)

    return asyncio.run(run())
