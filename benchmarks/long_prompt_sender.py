"""The long prompts of `long_prompt_latency.py`, sent from a process of its own (a remote client's
stand-in): through /tokenize or as 1-token completions, one after another or at a fixed rate."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event as ProcessEvent

import httpx


async def send_long_prompts(http: httpx.AsyncClient, model: str, phase: str, long_text: str,
                            rate: float | None, stop: ProcessEvent, sent: list[int]) -> None:
    """Long prompts until `stop`: through /tokenize or as 1-token completions, each a different
    text so no prefix cache or response cache can help. Without a `rate`, one after another
    (the next when the last is answered); with one, `rate` a second whether or not the earlier
    ones were answered, as independent clients would send them, so that configurations that
    answer at different speeds still get the same load. `sent` counts those answered before
    `stop`."""

    async def send(index: int) -> None:
        text = f"{index} {long_text}"
        if phase == "tokenize":
            response = await http.post("/tokenize", json={"model": model, "prompt": text})
        else:
            response = await http.post("/v1/completions", json={
                "model": model, "prompt": text, "max_tokens": 1, "temperature": 0})
        if rate is not None and response.status_code == 429:
            return  # a fixed rate above what the engine admits: the server's refusal, not counted
        response.raise_for_status()
        if not stop.is_set():
            # Answered within the measured window: one still being prefilled when the window
            # closes finishes unhindered after it (the streams are gone) and would flatter a
            # configuration that serves long prompts slowly.
            sent[0] += 1

    index = 0
    if rate is None:
        while not stop.is_set():
            await send(index)
            index += 1
        return
    started = time.perf_counter()
    in_flight: set[asyncio.Task[None]] = set()
    while not stop.is_set():
        # Late (a busy host) means sent at once, never skipped.
        await asyncio.sleep(max(0.0, started + index / rate - time.perf_counter()))
        task = asyncio.create_task(send(index))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        index += 1
    await asyncio.gather(*in_flight)


def sender_process(url: str, model: str, phase: str, long_text: str, rate: float | None,
                   nice: int, ready: ProcessEvent, go: ProcessEvent, stop: ProcessEvent,
                   sent: Synchronized[int]) -> None:
    """`send_long_prompts` in a process of its own at nice `nice` (a remote client's stand-in)."""
    os.nice(nice)

    async def send() -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=url, timeout=3600, limits=limits) as http:
            count = [0]
            ready.set()
            await asyncio.to_thread(go.wait)
            try:
                await send_long_prompts(http, model, phase, long_text, rate, stop, count)
            finally:
                sent.value = count[0]

    asyncio.run(send())


class SenderProcess:
    """A started sender process that waits for `go`; `finish` stops it and counts its prompts."""

    def __init__(self, url: str, model: str, phase: str, long_text: str, rate: float | None,
                 nice: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.ready, self.go, self.stop = context.Event(), context.Event(), context.Event()
        self.sent: Synchronized[int] = context.Value("q", 0)  # type: ignore[assignment]
        self.process = context.Process(target=sender_process, daemon=True, args=(
            url, model, phase, long_text, rate, nice, self.ready, self.go, self.stop, self.sent))
        self.process.start()

    async def wait_ready(self) -> None:
        if not await asyncio.to_thread(self.ready.wait, 120):
            raise RuntimeError("the sender process did not start")

    async def finish(self) -> int:
        self.stop.set()
        await asyncio.to_thread(self.process.join, 600)
        if self.process.exitcode != 0:
            raise RuntimeError(f"the sender process failed (exit code {self.process.exitcode})")
        return int(self.sent.value)
