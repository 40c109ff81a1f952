"""A loopback TCP proxy that cuts connections, for tests of clients that resume.

Each accepted connection is forwarded to the target. The proxy counts the bytes of
the response *body* (everything after the first blank line the server sends) and,
when the connection's budget is spent, aborts both sides (an RST, as a dropped
mobile link would look to the client). Budgets come from a seeded `random.Random`,
so a failing run can be replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable


class CuttingProxy:
    """``budget()`` returns how many body bytes a new connection may carry (None: all)."""

    def __init__(self, target_port: int, budget: Callable[[], int | None]) -> None:
        self.target_port = target_port
        self.budget = budget
        self.port = 0
        self.connections = 0
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        budget = self.budget()
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.transport.abort()
            self._tasks.discard(task)
            return
        upstream = asyncio.create_task(self._pipe(client_r, server_w))
        try:
            await self._downstream(server_r, client_w, budget)
        except asyncio.CancelledError:
            pass  # the proxy is shutting down: the connection goes with it
        finally:
            upstream.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await upstream
            client_w.transport.abort()
            server_w.transport.abort()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()

    async def _downstream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, budget: int | None
    ) -> None:
        head = b""
        in_body = False
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if not in_body:
                    head += data
                    end = head.find(b"\r\n\r\n")
                    if end < 0:
                        writer.write(data)
                        await writer.drain()
                        continue
                    in_body = True
                    # Forward the headers whole; the body part of `data` counts.
                    body_part = head[end + 4 :]
                    writer.write(data[: len(data) - len(body_part)])
                    data = body_part
                if budget is not None and len(data) >= budget:
                    writer.write(data[:budget])
                    await writer.drain()
                    self.cuts += 1
                    return
                if budget is not None:
                    budget -= len(data)
                writer.write(data)
                await writer.drain()


def random_budgets(
    seed: int, body_size: int, cut_probability: float = 0.7
) -> Callable[[], int | None]:
    """Cut most connections somewhere in the body; let some through whole."""
    rng = random.Random(seed)

    def budget() -> int | None:
        if rng.random() > cut_probability:
            return None
        return rng.randrange(0, max(1, body_size))

    return budget
