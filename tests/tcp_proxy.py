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


# -- a proxy for links to Redis: stalls (half-open) and latency ------------------------------


class ProxiedConnection:
    """One connection through a `FaultProxy`: what the client sent, and its fault."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.subscribed = False  # the client sent a (S)SUBSCRIBE: a pub/sub connection
        self.stalled = False
        self.closed = False


class FaultProxy:
    """A loopback TCP proxy to a server (Redis) with the faults of a bad network link.

    * ``stall(which)``: the chosen open connections go half-open, as a dead NAT entry, a
      pulled cable or a frozen server look to a client: from then on nothing is
      forwarded either way (bytes vanish) and the server's side is never closed; the
      client closing its side still ends the connection. New connections are unaffected
      unless ``stall_new`` is set (a black hole).
    * ``latency``: each piece of data is held for ``latency()`` seconds per direction
      before it is forwarded, never overtaking earlier data (TCP keeps order, so a
      short delay after a long one waits for it).
    * ``cut(which)``: abort the chosen connections (an RST both ways).

    ``changed`` is notified whenever a connection opens, subscribes or closes, so that
    tests wait for those with `wait_for` instead of sleeping.
    """

    def __init__(
        self, target_port: int, *, latency: Callable[[], float] | None = None
    ) -> None:
        self.target_port = target_port
        self.latency = latency
        self.port = 0
        self.stall_new = False
        self.opened: list[ProxiedConnection] = []
        self.forwarded = 0  # bytes, both directions
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._aborts: dict[ProxiedConnection, Callable[[], None]] = {}
        self._changed: asyncio.Condition | None = None

    async def __aenter__(self) -> FaultProxy:
        self._changed = asyncio.Condition()
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

    def open(self) -> list[ProxiedConnection]:
        """The connections that are still open."""
        return [c for c in self.opened if not c.closed]

    def stall(self, which: Callable[[ProxiedConnection], bool] = lambda c: True) -> int:
        """Stall the open connections ``which`` selects; returns how many."""
        chosen = [c for c in self.open() if which(c)]
        for connection in chosen:
            connection.stalled = True
        return len(chosen)

    def cut(self, which: Callable[[ProxiedConnection], bool] = lambda c: True) -> int:
        """Abort the open connections ``which`` selects; returns how many."""
        chosen = [c for c in self.open() if which(c)]
        for connection in chosen:
            connection.closed = True  # at once: its handler notices a moment later
            abort = self._aborts.get(connection)
            if abort is not None:
                abort()
        return len(chosen)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until ``predicate()`` holds, re-checked on every connection change.

        Raises:
            TimeoutError: it did not hold within ``timeout`` seconds.
        """
        assert self._changed is not None
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout)

    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        connection = ProxiedConnection(len(self.opened))
        connection.stalled = self.stall_new
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.transport.abort()
            self._tasks.discard(task)
            return
        self.opened.append(connection)

        def abort() -> None:
            client_w.transport.abort()
            server_w.transport.abort()

        self._aborts[connection] = abort
        await self._notify()
        pipes = [
            asyncio.create_task(self._forward(client_r, server_w, connection, upstream=True)),
            asyncio.create_task(self._forward(server_r, client_w, connection, upstream=False)),
        ]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass  # the proxy is shutting down: the connection goes with it
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.wait(pipes)
            abort()
            connection.closed = True
            del self._aborts[connection]
            self._tasks.discard(task)
            with contextlib.suppress(RuntimeError):  # the loop may be closing
                await self._notify()

    async def _forward(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        connection: ProxiedConnection,
        *,
        upstream: bool,
    ) -> None:
        """Copy one direction until EOF, through the latency queue if there is one."""
        stall = asyncio.Event()  # never set: a stalled direction waits here for good
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)  # the link's latency: the fault modelled
                if not data:
                    return
                if connection.stalled:
                    await stall.wait()
                writer.write(data)
                await writer.drain()
                self.forwarded += len(data)

        delivering = asyncio.create_task(deliver()) if self.latency is not None else None
        last_due = 0.0
        try:
            with contextlib.suppress(OSError):
                while True:
                    data = await reader.read(65536)
                    if upstream and not connection.subscribed and b"SUBSCRIBE" in data.upper():
                        connection.subscribed = True
                        await self._notify()
                    if connection.stalled:
                        if data or not upstream:
                            # Swallowed: what the client sends vanishes, and neither a
                            # reply nor the server's close ever reaches it. The client's
                            # own close still ends the connection.
                            if not data:
                                await stall.wait()
                            continue
                        return
                    if self.latency is None:
                        if not data:
                            return
                        writer.write(data)
                        await writer.drain()
                        self.forwarded += len(data)
                        continue
                    assert delivering is not None
                    # Never before what came earlier: a TCP stream keeps its order.
                    last_due = max(loop.time() + self.latency(), last_due)
                    queue.put_nowait((last_due, data))
                    if not data:
                        await delivering  # what is queued, then the end
                        return
        finally:
            if delivering is not None:
                delivering.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await delivering


def jitter(seed: int, low: float, high: float) -> Callable[[], float]:
    """Latencies drawn uniformly from [low, high] seconds, replayable by ``seed``."""
    rng = random.Random(seed)
    return lambda: rng.uniform(low, high)
