"""The reliability scenarios of issue 11, each run against a real server at `base_url`.

Each scenario returns a report: the figures it measured and `problems`, a list of what went wrong
in words (empty when the server behaved). The fast tests in tests/server/test_stress_*.py run
them with small counts; `benchmarks/stress.py` runs the heavy versions and prints the reports.
Nothing here knows the server's insides: it speaks HTTP and reads /metrics and /v1/info.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

DONE = "[DONE]"
# A request to a server that stopped answering is a problem to report, not a hang.
REQUEST_TIMEOUT_S = 600.0


@dataclass
class Report:
    figures: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {**self.figures, "problems": self.problems, "ok": not self.problems}


def async_client(base_url: str, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    # No connection cap: the scenarios open hundreds of streams at once on purpose.
    return httpx.AsyncClient(base_url=base_url, headers=headers, timeout=REQUEST_TIMEOUT_S,
                             limits=httpx.Limits(max_connections=None,
                                                 max_keepalive_connections=50))


@dataclass
class StreamOutcome:
    status: int
    cancelled: bool = False
    done: bool = False  # the stream ended with `data: [DONE]`
    finish_reason: str | None = None
    error_event: dict[str, Any] | None = None
    body: str = ""


async def sse_lines(response: httpx.Response) -> AsyncIterator[str]:
    """The stream's lines as SSE splits them: at LF only (the server never sends CR). Not
    httpx's `aiter_lines`: it splits like `str.splitlines`, also at U+2028, U+0085 and the
    like, which JSON strings carry unescaped, and so cuts a token's event in two."""
    pending = ""
    async for text in response.aiter_text():
        *lines, pending = (pending + text).split("\n")
        for line in lines:
            yield line
    if pending:
        yield pending


async def run_stream(http: httpx.AsyncClient, body: dict[str, Any], cancel_after: int | None,
                     path: str = "/v1/completions") -> StreamOutcome:
    """One streamed request; with `cancel_after`, the client hangs up after that many events."""
    async with http.stream("POST", path, json={**body, "stream": True}) as response:
        if response.status_code != 200:
            await response.aread()
            return StreamOutcome(response.status_code, body=response.text[:500])
        outcome = StreamOutcome(200)
        events = 0
        async for line in sse_lines(response):
            if not line.startswith("data: "):
                continue
            payload = line[len("data: "):]
            if payload == DONE:
                outcome.done = True
                break
            event = json.loads(payload)
            if "error" in event:
                outcome.error_event = event["error"]
            for choice in event.get("choices", []):
                outcome.finish_reason = choice.get("finish_reason") or outcome.finish_reason
            events += 1
            if cancel_after is not None and events >= cancel_after:
                outcome.cancelled = True
                return outcome  # leaving the block closes the connection mid-stream
        return outcome


async def engine_state(http: httpx.AsyncClient) -> dict[str, Any]:
    stats: dict[str, Any] = (await http.get("/v1/info")).json()["engine"]["stats"]
    return stats


async def wait_until_idle(http: httpx.AsyncClient, deadline_s: float = 60.0) -> dict[str, Any]:
    """The engine's stats once no sequence runs or waits and no KV block is held, or the last
    stats seen at the deadline (the caller reports what is left)."""
    deadline = time.monotonic() + deadline_s
    while True:
        stats = await engine_state(http)
        if stats["running"] == 0 and stats["waiting"] == 0 and stats["kv_blocks_used"] == 0:
            return stats
        if time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.1)


def leftovers(stats: dict[str, Any]) -> list[str]:
    return [f"{name} is {stats[name]} after all requests ended"
            for name in ("running", "waiting", "kv_blocks_used") if stats[name]]


def metric_value(exposition: str, name: str) -> float | None:
    """The unlabelled sample `name` in Prometheus text, or None when /metrics lacks it."""
    for line in exposition.splitlines():
        if not line.startswith("#") and line.rpartition(" ")[0] == name:
            return float(line.rpartition(" ")[2])
    return None


def random_prompt(draw: random.Random, length: int) -> list[int]:
    """Token ids of the tiny vocabulary (300 tokens; ids 10-289 are ordinary text) or of any
    larger one."""
    return [draw.randrange(10, 290) for _ in range(length)]


# --- 1. many concurrent streams, some cancelled --------------------------------------------

async def concurrent_streams(base_url: str, num_streams: int = 500, cancel_fraction: float = 0.2,
                             max_tokens: int = 32, seed: int = 0) -> Report:
    """`num_streams` streams at once, `cancel_fraction` of them hung up at a random event: no
    5xx, every other stream ends with its finish reason and `[DONE]`, and afterwards no sequence
    and no KV block is left in the engine."""
    draw = random.Random(seed)
    report = Report()
    plans = []
    for _ in range(num_streams):
        tokens = draw.randint(max_tokens // 2, max_tokens)
        cancel_after = draw.randint(1, tokens) if draw.random() < cancel_fraction else None
        body = {"prompt": random_prompt(draw, draw.randint(4, 48)), "max_tokens": tokens,
                "ignore_eos": True, "temperature": 1.0, "seed": draw.randrange(1 << 30)}
        plans.append((body, cancel_after))
    started = time.monotonic()
    async with async_client(base_url) as http:
        outcomes = await asyncio.gather(*(run_stream(http, body, cancel_after)
                                          for body, cancel_after in plans),
                                        return_exceptions=True)
        stats = await wait_until_idle(http)
    statuses: Counter[str] = Counter()
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            statuses["exception"] += 1
            report.problems.append(f"stream raised {outcome!r}")
            continue
        statuses[str(outcome.status)] += 1
        if outcome.status >= 500:
            report.problems.append(f"HTTP {outcome.status}: {outcome.body}")
        elif outcome.status != 200:
            report.problems.append(f"HTTP {outcome.status} under no limit: {outcome.body}")
        elif outcome.cancelled:
            continue
        elif not outcome.done or outcome.finish_reason != "length" or outcome.error_event:
            report.problems.append(f"stream incomplete: done={outcome.done} finish_reason="
                                   f"{outcome.finish_reason} error={outcome.error_event}")
    report.problems.extend(leftovers(stats))
    report.figures.update(
        streams=num_streams, cancelled=sum(1 for _, c in plans if c is not None),
        statuses=dict(statuses), wall_s=round(time.monotonic() - started, 1),
        engine_after=_engine_figures(stats))
    return report


def _engine_figures(stats: dict[str, Any]) -> dict[str, Any]:
    return {name: stats[name] for name in ("running", "waiting", "kv_blocks_used",
                                           "kv_blocks_total", "preemptions")}


# --- 2. the KV cache exhausted --------------------------------------------------------------

async def kv_exhaustion(base_url: str, num_requests: int = 64, prompt_len: int = 96,
                        max_tokens: int = 96, oversized: int = 4, deadline_s: float = 600.0,
                        seed: int = 1) -> Report:
    """Requests whose KV needs add up to many times the cache, plus `oversized` ones that alone
    exceed the context: each completes or gets a 4xx before a global deadline, the server
    lives, and the preemptions the scheduler made are counted in /metrics."""
    draw = random.Random(seed)
    report = Report()
    async with async_client(base_url) as http:
        before = await engine_state(http)
        info = (await http.get("/v1/info")).json()
        max_model_len = info["engine"]["max_model_len"]
        block_size = before["block_size"]
        cache_tokens = before["kv_blocks_total"] * block_size
        bodies: list[dict[str, Any]] = [
            {"prompt": random_prompt(draw, prompt_len), "max_tokens": max_tokens,
             "ignore_eos": True, "seed": i} for i in range(num_requests)]
        bodies += [{"prompt": random_prompt(draw, max_model_len + 1), "max_tokens": 4}
                   for _ in range(oversized)]
        draw.shuffle(bodies)

        async def one(body: dict[str, Any]) -> tuple[int, str | None, str]:
            if draw.random() < 0.5:
                outcome = await run_stream(http, body, None)
                ok = outcome.done and not outcome.error_event
                return outcome.status, outcome.finish_reason if ok else None, outcome.body
            response = await http.post("/v1/completions", json=body)
            if response.status_code != 200:
                return response.status_code, None, response.text[:300]
            return 200, response.json()["choices"][0]["finish_reason"], ""

        started = time.monotonic()
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(one(b) for b in bodies), return_exceptions=True), deadline_s)
        except TimeoutError:
            report.problems.append(f"not every request ended within {deadline_s}s (a hang)")
            results = []
        wall_s = time.monotonic() - started
        stats = await wait_until_idle(http)
        exposition = (await http.get("/metrics")).text
    statuses: Counter[str] = Counter()
    for result in results:
        if isinstance(result, BaseException):
            report.problems.append(f"request raised {result!r}")
            continue
        status, finish_reason, text = result
        statuses[str(status)] += 1
        if status == 200 and finish_reason != "length":
            report.problems.append(f"200 without completing: finish_reason={finish_reason}")
        elif status >= 500 or status < 200 or 300 <= status < 400:
            report.problems.append(f"HTTP {status}: {text}")
    exposed = metric_value(exposition, "ziggurat_preemptions_total")
    preempted = stats["preemptions"] - before["preemptions"]
    if exposed is None:
        report.problems.append("/metrics has no ziggurat_preemptions_total")
    elif exposed != stats["preemptions"]:
        report.problems.append(f"/metrics counts {exposed} preemptions, the engine "
                               f"{stats['preemptions']}")
    if preempted == 0:
        report.problems.append("the cache never ran out: no preemption (raise the load)")
    report.problems.extend(leftovers(stats))
    report.figures.update(
        requests=len(bodies), cache_tokens=cache_tokens,
        demand_tokens=num_requests * (prompt_len + max_tokens),
        statuses=dict(statuses), preemptions=preempted, metrics_preemptions=exposed,
        wall_s=round(wall_s, 1), engine_after=_engine_figures(stats))
    return report


# --- 4. every route without the API key -------------------------------------------------------

OPEN_PATHS = {"/health"}


async def auth_sweep(base_url: str, api_key: str) -> Report:
    """Every operation of the OpenAPI document (read with the key), called without a key and
    with a wrong one: only /health answers; everything else is 401 with `WWW-Authenticate:
    Bearer`. The document and the interactive docs themselves are swept too."""
    report = Report()
    async with async_client(base_url) as http:
        document = (await http.get("/openapi.json",
                                   headers={"Authorization": f"Bearer {api_key}"})).json()
        operations = [(method.upper(), path.replace("{", "").replace("}", ""))
                      for path, item in document["paths"].items() for method in item
                      if method in {"get", "post", "put", "patch", "delete"}]
        operations += [("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/redoc")]
        answered: dict[str, int] = {}
        for method, path in operations:
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                response = await http.request(method, path, headers=headers, json={})
                answered[f"{method} {path}"] = response.status_code
                if path in OPEN_PATHS:
                    if response.status_code != 200:
                        report.problems.append(f"{method} {path} is {response.status_code}")
                    continue
                if response.status_code != 401:
                    report.problems.append(f"{method} {path} without a valid key is "
                                           f"{response.status_code}, not 401")
                elif response.headers.get("www-authenticate") != "Bearer":
                    report.problems.append(f"{method} {path}: 401 without WWW-Authenticate: "
                                           f"Bearer ({response.headers.get('www-authenticate')})")
    report.figures.update(operations=len(operations), statuses=answered)
    return report


# --- 3. a soak of mixed traffic -----------------------------------------------------------------

BAD_BODIES: list[tuple[str, bytes]] = [
    ("/v1/completions", b'{"prompt": "x", "max_tokens": true}'),
    ("/v1/completions", b'{"prompt": "\\ud800"}'),
    ("/v1/completions", b'{"prompt": '),
    ("/v1/chat/completions", b'{"messages": [{"role": "user"}]}'),
    ("/v1/chat/completions", b'{"messages": [], "stream": "yes"}'),
    ("/v1/completions", b'{"prompt": [1, 2], "max_tokens": -3}'),
    ("/tokenize", b'{"prompt": 12}'),
]


async def soak(base_url: str, duration_s: float, rss_of_server: Any, concurrency: int = 16,
               warmup_fraction: float = 0.2, sample_every_s: float = 5.0,
               max_tokens: int = 32, seed: int = 2) -> Report:
    """Mixed traffic for `duration_s`: complete streams, cancelled streams, plain requests and
    bad requests (each a 4xx). `rss_of_server()` gives the server's resident bytes; its growth
    from the end of the warm-up to the end is reported, with any blocks left in use."""
    draw = random.Random(seed)
    report = Report()
    kinds: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    rss_samples: list[tuple[float, int]] = []
    started = time.monotonic()
    end = started + duration_s

    async def worker(http: httpx.AsyncClient) -> None:
        while time.monotonic() < end:
            kind = draw.choices(["stream", "cancel", "plain", "chat", "bad"],
                                weights=[4, 2, 2, 1, 1])[0]
            kinds[kind] += 1
            body: dict[str, Any] = {"prompt": random_prompt(draw, draw.randint(4, 64)),
                                    "max_tokens": draw.randint(1, max_tokens), "ignore_eos": True}
            if kind in ("stream", "cancel"):
                cancel_after = draw.randint(1, body["max_tokens"]) if kind == "cancel" else None
                outcome = await run_stream(http, body, cancel_after)
                statuses[str(outcome.status)] += 1
                if outcome.status != 200 or not (outcome.cancelled or outcome.done):
                    report.problems.append(f"{kind}: HTTP {outcome.status} done={outcome.done}")
            elif kind == "plain":
                response = await http.post("/v1/completions", json=body)
                statuses[str(response.status_code)] += 1
                if response.status_code != 200:
                    report.problems.append(f"plain: HTTP {response.status_code}")
            elif kind == "chat":
                response = await http.post("/v1/chat/completions", json={
                    "messages": [{"role": "user", "content": f"hello {draw.random()}"}],
                    "max_tokens": body["max_tokens"]})
                statuses[str(response.status_code)] += 1
                if response.status_code != 200:
                    report.problems.append(f"chat: HTTP {response.status_code}")
            else:
                path, raw = draw.choice(BAD_BODIES)
                response = await http.post(path, content=raw,
                                           headers={"Content-Type": "application/json"})
                statuses[str(response.status_code)] += 1
                if not 400 <= response.status_code < 500:
                    report.problems.append(f"bad body {raw!r}: HTTP {response.status_code}")

    async def sampler() -> None:
        while time.monotonic() < end:
            rss_samples.append((time.monotonic() - started, rss_of_server()))
            await asyncio.sleep(sample_every_s)

    async with async_client(base_url) as http:
        await asyncio.gather(sampler(), *(worker(http) for _ in range(concurrency)))
        stats = await wait_until_idle(http)
    rss_samples.append((time.monotonic() - started, rss_of_server()))
    warm = [rss for t, rss in rss_samples if t >= warmup_fraction * duration_s]
    base = warm[0] if warm else rss_samples[0][1]
    growth = (rss_samples[-1][1] - base) / base
    report.problems.extend(leftovers(stats))
    del report.problems[50:]  # one pattern repeated is enough to read
    report.figures.update(
        duration_s=round(time.monotonic() - started, 1), requests=dict(kinds),
        statuses=dict(statuses), rss_after_warmup_mib=round(base / 2**20, 1),
        rss_end_mib=round(rss_samples[-1][1] / 2**20, 1),
        rss_peak_mib=round(max(r for _, r in rss_samples) / 2**20, 1),
        rss_growth_after_warmup=round(growth, 4), kv_blocks_leaked=stats["kv_blocks_used"],
        rss_samples_mib=[(round(t), round(r / 2**20, 1)) for t, r in rss_samples[::6]])
    return report


# --- 5. SIGTERM under load ----------------------------------------------------------------

async def sigterm_under_load(base_url: str, terminate: Any, wait_exit: Any,
                             num_streams: int = 16, max_tokens: int = 48) -> Report:
    """`num_streams` streams running, then SIGTERM (`terminate()`): within --shutdown-timeout
    each in-flight request completes (finish_reason and `[DONE]`); none ends without a word;
    the process exits 0 (`wait_exit()` returns its code). A request sent after the signal gets
    503 or a refused connection, never a hang."""
    report = Report()
    draw = random.Random(3)

    async def stream(http: httpx.AsyncClient) -> StreamOutcome:
        body = {"prompt": random_prompt(draw, 16), "max_tokens": max_tokens, "ignore_eos": True}
        return await run_stream(http, body, None)

    async with async_client(base_url) as http:
        tasks = [asyncio.create_task(stream(http)) for _ in range(num_streams)]
        # Signal once every request is in the engine, running or waiting for a slot.
        deadline = time.monotonic() + 300
        while True:
            stats = await engine_state(http)
            if stats["running"] + stats["waiting"] >= num_streams:
                break
            if time.monotonic() > deadline:
                report.problems.append("the requests never all reached the engine")
                break
            await asyncio.sleep(0.05)
        in_engine = {"running": stats["running"], "waiting": stats["waiting"]}
        signalled = time.monotonic()
        terminate()
        await asyncio.sleep(0.2)
        try:
            late = await http.post("/v1/completions", json={"prompt": [5, 6], "max_tokens": 2})
            late_answer = str(late.status_code)
            if late.status_code != 503 or "retry-after" not in late.headers:
                report.problems.append(f"a request after SIGTERM got {late.status_code}")
        except httpx.TransportError as error:
            late_answer = type(error).__name__
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        drained_s = time.monotonic() - signalled
    exit_code = await asyncio.to_thread(wait_exit)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            report.problems.append(f"in-flight stream dropped: {outcome!r}")
        elif not outcome.done or outcome.finish_reason != "length" or outcome.error_event:
            report.problems.append(f"in-flight stream not completed: status={outcome.status} "
                                   f"done={outcome.done} finish_reason={outcome.finish_reason} "
                                   f"error={outcome.error_event}")
    if exit_code != 0:
        report.problems.append(f"server exited with {exit_code}")
    report.figures.update(streams=num_streams, at_sigterm=in_engine,
                          drained_s=round(drained_s, 1),
                          request_after_sigterm=late_answer, exit_code=exit_code)
    return report
