"""The default connection pool over real sockets: 200 concurrent requests, then reuse.

A minimal HTTP/1.1 stub (asyncio streams) stands in for the server, so the real httpx transport
and its pool are exercised rather than a mock.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from client_helpers import completion_body
from ziggurat import AsyncClient

pytestmark = pytest.mark.anyio


class StubServer:
    """Answers POST /v1/completions once `barrier` requests are waiting, counting connections."""

    def __init__(self, barrier: int) -> None:
        self.barrier = barrier
        self.connections = 0
        self.waiting = 0
        self.release = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode("latin-1").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                prompt = json.loads(await reader.readexactly(length))["prompt"]
                self.waiting += 1
                if self.waiting >= self.barrier:
                    self.release.set()
                await self.release.wait()
                body = json.dumps(completion_body(f"echo {prompt}")).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_one_real_pool_reuses_connections_and_carries_200_concurrent_requests() -> None:
    stub = StubServer(barrier=1)
    server = await asyncio.start_server(stub.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    count = 200
    try:
        async with AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60.0) as client:
            for index in range(3):
                await client.completions.create("tiny", f"warm{index}")
            # Sequential calls reuse the one kept-alive connection.
            assert stub.connections == 1

            stub.barrier, stub.waiting, stub.release = count, 0, asyncio.Event()
            replies = await asyncio.gather(
                *(client.completions.create("tiny", f"p{index}") for index in range(count))
            )
            # The stub held every request until the last arrived: all 200 were in flight at
            # once, over the warm connection plus 199 new ones in the same pool.
            assert stub.connections == count
    finally:
        server.close()
        await server.wait_closed()
    assert [c.choices[0].text for c in replies] == [f"echo p{index}" for index in range(count)]
