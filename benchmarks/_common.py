"""What every workload of the suite shares: chunks, clocks, percentiles, Redis probes.

Clocks: every timestamp is ``time.monotonic_ns()`` (``CLOCK_MONOTONIC``), the clock
Node's ``process.hrtime`` also reads on Linux, so a time taken in one process (the
producer) and one taken in another (a follower, an HTTP client, a Node script) can
be subtracted.

Redis cost: ``round_trips`` are counted on the client side for Python clients (one
per request written to a socket, a pipeline counting once, connection handshakes
excluded) by `CountingConnection`; ``commands`` come from ``INFO commandstats``
deltas on the server and include the commands the library's Lua scripts run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

NS = 1_000_000_000
# Commands a new connection sends before any work, and our own probes.
NOT_WORK = frozenset(
    {"hello", "client|setinfo", "client|setname", "select", "auth", "info", "ping"}
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def now() -> int:
    return time.monotonic_ns()


# -- chunks ---------------------------------------------------------------------------------


def make_chunk(stream: int, index: int, size: int) -> str:
    """A chunk unique to its stream and index, exactly ``size`` ASCII characters."""
    head = f"{stream}:{index}:"
    if len(head) > size:
        raise ValueError(f"chunk size {size} is too small to label chunk {stream}:{index}")
    return head + "." * (size - len(head))


def chunk_index(chunk: str | bytes) -> int:
    """The index written into a chunk by `make_chunk`."""
    text = chunk.decode() if isinstance(chunk, bytes) else chunk
    return int(text.split(":", 2)[1])


def expected(stream: int, chunks: int, size: int) -> list[str]:
    return [make_chunk(stream, i, size) for i in range(chunks)]


async def source(
    stream: int,
    chunks: int,
    size: int,
    stamps: list[int] | None = None,
    *,
    delay: float = 0.0,
    gate: asyncio.Event | None = None,
    hold_after: int | None = None,
    hold: asyncio.Event | None = None,
) -> AsyncIterator[str]:
    """The producer's source, the same for every Python variant.

    Between chunks it awaits ``asyncio.sleep(delay)``; with ``delay=0`` that is a bare
    yield to the event loop, the fastest source that still lets the loop run (a real
    one awaits the network). ``stamps[i]`` gets the time chunk ``i`` was yielded.
    ``gate``: wait for it before the first chunk. ``hold_after``/``hold``: after that
    many chunks, wait for ``hold`` (a running stream with chunks stored).
    """
    if gate is not None:
        await gate.wait()
    for index in range(chunks):
        if index == hold_after and hold is not None:
            await hold.wait()
        elif index:
            await asyncio.sleep(delay)
        if stamps is not None:
            stamps.append(now())
        yield make_chunk(stream, index, size)


# -- statistics -----------------------------------------------------------------------------


def percentiles(values_ns: Sequence[int] | Iterable[int]) -> dict[str, float | int]:
    """p50/p90/p99/max in milliseconds (nearest rank), and the sample count."""
    ordered = sorted(values_ns)
    n = len(ordered)
    if not n:
        return {"n": 0}

    def rank(p: float) -> float:
        return ordered[min(n - 1, max(0, int(p * n + 0.5) - 1))] / 1e6

    return {
        "n": n,
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "max": ordered[-1] / 1e6,
    }


def lags(sent: Sequence[int], received: Iterable[tuple[int, int]]) -> list[int]:
    """Receive time minus send time for every ``(index, time)`` received."""
    return [t - sent[i] for i, t in received]


# -- process resources ----------------------------------------------------------------------


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size now (Linux ``/proc``)."""
    path = f"/proc/{pid or 'self'}/statm"
    with open(path) as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes(pid: int | None = None) -> int:
    """Peak resident set size of a process (``VmHWM``), or of this one."""
    if pid is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int | None = None) -> float:
    """User plus system CPU time of a process (or of this one) so far."""
    if pid is None:
        return time.process_time()
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Meter:
    """Wall time and CPU time of this process around a measured section."""

    def __init__(self) -> None:
        self.started = self.cpu_started = 0.0
        self.elapsed = self.cpu = 0.0

    def __enter__(self) -> Meter:
        self.cpu_started = time.process_time()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.started
        self.cpu = time.process_time() - self.cpu_started


def throughput(
    chunks: int, nbytes: int, meter: Meter, *, cpu: float | None = None
) -> dict[str, Any]:
    used = meter.cpu if cpu is None else cpu
    return {
        "chunks": chunks,
        "bytes": nbytes,
        "elapsed_s": meter.elapsed,
        "chunks_per_s": chunks / meter.elapsed if meter.elapsed else 0.0,
        "bytes_per_s": nbytes / meter.elapsed if meter.elapsed else 0.0,
        "cpu_s": used,
        "cpu_us_per_chunk": used / chunks * 1e6 if chunks else 0.0,
        "peak_rss_mb": peak_rss_bytes() / 2**20,
    }


# -- Redis ----------------------------------------------------------------------------------


def counting_client(url: str, **kwargs: Any) -> Any:
    """A ``redis.asyncio.Redis`` whose connections count the requests they send.

    ``client.sent[0]`` is the number of requests (a pipeline is one; handshakes on
    connect are not counted): the client's network round trips.
    """
    import redis.asyncio as aioredis
    from redis.asyncio.connection import Connection

    sent = [0]

    class CountingConnection(Connection):
        _handshaking = False

        async def on_connect_check_health(self, check_health: bool = True) -> None:
            self._handshaking = True
            try:
                await super().on_connect_check_health(check_health)
            finally:
                self._handshaking = False

        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            if not self._handshaking:
                sent[0] += 1
            await super().send_packed_command(command, check_health)

    pool = aioredis.ConnectionPool.from_url(
        url, connection_class=CountingConnection, socket_connect_timeout=5, **kwargs
    )
    client = aioredis.Redis.from_pool(pool)
    client.sent = sent  # type: ignore[attr-defined]
    return client


class SharedWriter:
    """The least a process pays to store every chunk of many streams in Redis with
    redis-py: one writer task for all streams, every round on the next tick of a 2 ms
    clock (as ours), one pipeline per round of ``RPUSH`` + ``PEXPIRE`` + ``PUBLISH``
    per stream that has chunks (keys expire after ``ttl`` seconds). No lease, no
    index check, no retry, no follower's feed: what any write-behind costs before
    it is correct. The floor of storing with redis-py at all (``raw_shared``)."""

    def __init__(
        self,
        client: Any,
        slots: asyncio.Semaphore,
        pipes: list[int],
        ttl: float = 300.0,
        interval: float = 0.002,
    ) -> None:
        self._client = client
        self._ttl_ms = int(ttl * 1000)
        self._slots = slots
        self._pipes = pipes
        self._interval = interval
        self._pending: dict[str, list[str | bytes]] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._run())

    def add(self, key: str, chunk: str | bytes) -> None:
        self._pending.setdefault(key, []).append(chunk)
        self._wake.set()

    async def aclose(self) -> None:
        """Store what is pending, then stop."""
        self._closing = True
        self._wake.set()
        await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if not self._closing:
                # Every round on the next tick of the clock, as the library's writes.
                await asyncio.sleep(self._interval - loop.time() % self._interval)
            pending, self._pending = self._pending, {}
            pipe = self._client.pipeline(transaction=False)
            for key, chunks in pending.items():
                pipe.rpush(key, *chunks)
                pipe.pexpire(key, self._ttl_ms)
                joined = b"".join(c if type(c) is bytes else c.encode() for c in chunks)
                pipe.publish(key, joined)
            async with self._slots:
                await pipe.execute()
            self._pipes[0] += 1


def _commandstats(info: dict[str, Any]) -> Counter[str]:
    calls: Counter[str] = Counter()
    for key, value in info.items():
        if key.startswith("cmdstat_") and isinstance(value, dict):
            calls[key[len("cmdstat_") :]] = int(value.get("calls", 0))
    return calls


class RedisProbe:
    """``INFO`` deltas (commands, server CPU) around a measured section."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as aioredis

        self.client = aioredis.Redis.from_url(url, socket_connect_timeout=5)
        self._before: tuple[Counter[str], float] | None = None
        self.commands: Counter[str] = Counter()
        self.cpu = 0.0

    async def _read(self) -> tuple[Counter[str], float]:
        stats = await self.client.info("commandstats")
        cpu = await self.client.info("cpu")
        return _commandstats(stats), float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    async def start(self) -> None:
        self._before = await self._read()

    async def stop(self) -> None:
        assert self._before is not None
        after = await self._read()
        delta = after[0] - self._before[0]
        for name in NOT_WORK:
            delta.pop(name, None)
        self.commands = delta
        self.cpu = after[1] - self._before[1]

    async def used_memory(self) -> int:
        info = await self.client.info("memory")
        return int(info["used_memory"])

    def report(self, chunks: int, round_trips: int | None = None) -> dict[str, Any]:
        """Per-chunk Redis cost; ``round_trips`` None means: count client commands."""
        total = sum(self.commands.values())
        scripted = sum(self.commands[n] for n in ("evalsha", "eval", "fcall", "evalsha_ro"))
        out: dict[str, Any] = {
            "commands": total,
            "commands_per_chunk": total / chunks if chunks else 0.0,
            "scripts_per_chunk": scripted / chunks if chunks else 0.0,
            "redis_cpu_s": self.cpu,
            "redis_cpu_us_per_chunk": self.cpu / chunks * 1e6 if chunks else 0.0,
            "commands_by_name": dict(sorted(self.commands.items())),
        }
        if round_trips is None:
            round_trips = total  # no scripts, no pipelines counted: one command, one request
            out["round_trips_counted"] = "server: commands (upper bound: clients may pipeline)"
        else:
            out["round_trips_counted"] = "client: requests written (a pipeline counts once)"
        out["round_trips"] = round_trips
        out["round_trips_per_chunk"] = round_trips / chunks if chunks else 0.0
        return out

    async def aclose(self) -> None:
        await self.client.aclose()


def install_loop(kind: str) -> str:
    """Use uvloop (as uvicorn does) when asked and installed; returns the loop's name."""
    if kind == "uvloop":
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            return "uvloop"
    return "asyncio"
