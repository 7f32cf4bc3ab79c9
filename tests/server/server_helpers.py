"""Helpers for the server tests: strict SSE parsing, the tiny model's chat template, metrics."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

DONE = "[DONE]"
TINY_NUM_KV_BLOCKS = 256  # the session server's cache: 16 tokens a block, room for 64 requests


def parse_sse(body: str) -> list[Any]:
    """Each event must be exactly `data: <payload>` followed by a blank line."""
    assert body.endswith("\n\n"), f"stream does not end with a blank line: {body[-80:]!r}"
    events: list[Any] = []
    for block in body[:-2].split("\n\n"):
        assert block.startswith("data: "), f"not a data event: {block!r}"
        assert "\n" not in block, f"multi-line event: {block!r}"
        payload = block[len("data: "):]
        events.append(DONE if payload == DONE else json.loads(payload))
    return events


def chat_text(events: list[Any], index: int = 0) -> str:
    return "".join(
        choice["delta"].get("content") or ""
        for event in events if event != DONE
        for choice in event["choices"] if choice["index"] == index
    )


def render_chatml(messages: list[dict[str, str]]) -> str:
    """The tiny model's ChatML template, written out by hand."""
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def metric_value(exposition: str, name: str) -> float:
    """The sample `name` (with its labels written exactly as in the text) from Prometheus text."""
    for line in exposition.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        sample, _, value = line.rpartition(" ")
        if sample == name:
            return float(value)
    return 0.0


_unique = itertools.count()


def fresh_prompt(length: int) -> list[int]:
    """Random token ids (of the tiny vocabulary's 300) that no other request sends, so neither
    the prefix cache nor the response cache has seen them."""
    draw = random.Random(f"fresh-prompt-{next(_unique)}")
    return [draw.randrange(10, 290) for _ in range(length)]


def thread_nice_values(pid: int) -> dict[int, int]:
    """Each thread's nice value (field 19 of /proc/<pid>/task/<tid>/stat), by thread id."""
    values = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        values[int(task.name)] = int(fields[16])
    return values
