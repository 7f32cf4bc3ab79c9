"""Async batch: 100 prompts sent at once with asyncio.gather, with a progress bar.

All requests share one connection pool; the server batches them on its side.
Start a server first (`make serve`), then: python examples/async_batch.py
"""

from __future__ import annotations

import asyncio
import sys
import time

from ziggurat import AsyncClient

NUM_PROMPTS = 100
BAR_WIDTH = 40


class ProgressBar:
    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0

    def advance(self) -> None:
        self.done += 1
        filled = BAR_WIDTH * self.done // self.total
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        sys.stderr.write(f"\r[{bar}] {self.done}/{self.total}")
        if self.done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


async def main() -> None:
    async with AsyncClient(timeout=300.0) as client:
        model = (await client.models.list()).data[0].id
        progress = ProgressBar(NUM_PROMPTS)

        async def complete(number: int) -> str:
            reply = await client.completions.create(
                model, f"Fact number {number} about the moon:", max_tokens=16, temperature=0.7
            )
            progress.advance()
            return reply.choices[0].text.strip()

        started = time.perf_counter()
        facts = await asyncio.gather(*(complete(number) for number in range(NUM_PROMPTS)))
        elapsed = time.perf_counter() - started

    for number, fact in enumerate(facts[:5]):
        print(f"{number}: {fact}")
    print(f"... {NUM_PROMPTS} completions in {elapsed:.1f}s ({NUM_PROMPTS / elapsed:.1f}/s)")


if __name__ == "__main__":
    asyncio.run(main())
