"""Upstash over REST against Redis over TCP, through the loopback stand-in, in one run.

Run from the repository root::

    python -m benchmarks.upstash            # 5 repeats, 50 resumes per kind
    python -m benchmarks.upstash --quick    # 1 repeat, 10 resumes, shorter streams (CI)
    python -m benchmarks.upstash --redis-url redis://127.0.0.1:6379/0 --out upstash.json

It starts a private redis-server (unless ``--redis-url``, which must be loopback) and the
stand-in of Upstash's REST API over it (``tests/upstash_standin.py``, uvicorn in a
subprocess), so REST and TCP reach the very same server. Reported:

* ``requests_per_chunk``: HTTP requests the stand-in served per chunk stored, for a
  *fast* producer (2,000 chunks of 32 B, the source awaiting ``asyncio.sleep(0)``
  between them) and a *slow* one (100 chunks 20 ms apart, an LLM's pace), each with only
  its original reader (medians over repeats). Write-behind batching is what makes the
  first far below 1; the second pays one write per chunk, plus the claim.
* ``resume_first_chunk_ms``: from ``resume_existing_stream()`` to the first chunk of a
  running stream that holds 2,000 chunks (written over TCP), from other contexts
  (another process's view: nothing local), over REST and over TCP, taking turns.
  *cold*: a new backend (new connections) per resume, as a fresh serverless instance
  has; *warm*: one backend for every resume, its connections kept alive. A REST resume
  is two requests in sequence (the streaming subscribe, confirmed, then the read of the
  list); TCP's is one ``SUBSCRIBE`` on a shared connection and one script.

On loopback the REST figures are the stand-in's own cost (a Python ASGI server that
forwards to Redis); against Upstash add a network round trip per request. The stored
streams are read back and compared with what the sources yielded; the exit status is 1
if any differs. One JSON document goes to stdout (and to ``--out``), progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

import resumable_stream
from resumable_stream import Backend, StreamOptions, create_resumable_stream_context
from resumable_stream.backends.redis import RedisBackend
from resumable_stream.backends.upstash import UpstashBackend

from ._common import log, make_chunk
from .roundtrips import is_loopback

OPTIONS = StreamOptions(shutdown_grace=5.0)
FAST, SLOW = (2000, 0.0), (100, 0.02)  # (chunks, seconds between two chunks)
HELD = 2000  # chunks stored in the stream that is resumed
QUICK_SLOW, QUICK_HELD = (25, 0.02), 500
SIZE = 32


async def source(chunks: int, pace: float, gate: asyncio.Event | None = None) -> AsyncIterator[str]:
    for i in range(chunks):
        yield make_chunk(0, i, SIZE)
        await asyncio.sleep(pace)  # the source's pace (0: let the writer run)
    if gate is not None:
        await gate.wait()  # stay running until the resumes are measured


def ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered) * 1000, 3),
        "p90": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 3),
        "max": round(ordered[-1] * 1000, 3),
    }


class Bench:
    """The stand-in, its token and a redis URL: everything a measurement needs."""

    def __init__(
        self, redis_url: str, rest_url: str, token: str, stats: Callable[[], dict[str, int]],
        *, quick: bool,
    ) -> None:
        self.redis_url = redis_url
        self.slow = QUICK_SLOW if quick else SLOW
        self.held = QUICK_HELD if quick else HELD
        self.rest_url = rest_url
        self.token = token
        self.stats = stats
        self.exact = True

    def rest(self, prefix: str) -> UpstashBackend:
        return UpstashBackend(self.rest_url, self.token, key_prefix=prefix)

    async def requests(self) -> int:
        return sum((await asyncio.to_thread(self.stats)).values())

    async def check(self, backend: Backend, stream_id: str, chunks: int) -> None:
        snap = await backend.snapshot(stream_id, 0, chunks + 1)
        if snap is None or list(snap.chunks) != [make_chunk(0, i, SIZE) for i in range(chunks)]:
            log(f"FAILED: {stream_id} is not stored exactly")
            self.exact = False

    async def requests_per_chunk(self, chunks: int, pace: float) -> float:
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        backend = self.rest(prefix)
        ctx = create_resumable_stream_context(backend, options=OPTIONS)
        try:
            await backend.status("warm-up")  # the connection, outside the count
            before = await self.requests()
            stream = await ctx.create_new_resumable_stream("s", lambda: source(chunks, pace))
            assert stream is not None
            got = [chunk async for chunk in stream]
            after = await self.requests()  # the last write landed before the reader ended
            if got != [make_chunk(0, i, SIZE) for i in range(chunks)]:
                self.exact = False
            await self.check(backend, "s", chunks)
        finally:
            await ctx.aclose()
        return (after - before) / chunks

    async def first_chunk(self, backend: Backend) -> float:
        """Seconds from ``resume_existing_stream`` to the first chunk, on ``backend``."""
        ctx = create_resumable_stream_context(backend, options=OPTIONS)
        start = time.perf_counter()
        stream = await ctx.resume_existing_stream("s")
        assert stream is not None
        first = await stream.__anext__()
        elapsed = time.perf_counter() - start
        await stream.aclose()
        if first != make_chunk(0, 0, SIZE):
            self.exact = False
        return elapsed


Maker = Callable[[str], Awaitable[tuple[Backend, Callable[[], Awaitable[None]]]]]


async def benchmark(bench: Bench, repeats: int, trials: int) -> dict[str, Any]:
    fast: list[float] = []
    slow: list[float] = []
    for n in range(repeats):
        log(f"requests per chunk, repeat {n + 1}/{repeats}")
        fast.append(await bench.requests_per_chunk(*FAST))
        slow.append(await bench.requests_per_chunk(*bench.slow))

    async def rest(prefix: str) -> tuple[Backend, Callable[[], Awaitable[None]]]:
        backend = bench.rest(prefix)
        return backend, backend.aclose

    async def tcp(prefix: str) -> tuple[Backend, Callable[[], Awaitable[None]]]:
        client = aioredis.Redis.from_url(bench.redis_url)
        backend = RedisBackend(client, key_prefix=prefix)

        async def close() -> None:
            await backend.aclose()
            await client.aclose()

        return backend, close

    # One running stream holding `held` chunks, resumed over REST and over TCP alike.
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    makers: dict[str, Maker] = {"rest": rest, "tcp": tcp}
    times: dict[tuple[str, str], list[float]] = {
        (name, kind): [] for name in makers for kind in ("cold", "warm")
    }
    async with AsyncExitStack() as stack:
        owned: dict[str, Backend] = {}
        for name, make in makers.items():
            backend, close = await make(prefix)
            stack.push_async_callback(close)
            owned[name] = backend
        producer = create_resumable_stream_context(owned["tcp"], options=OPTIONS)
        stack.push_async_callback(producer.aclose)
        gate = asyncio.Event()
        stack.callback(gate.set)
        original = await producer.create_new_resumable_stream(
            "s", lambda: source(bench.held, 0.0, gate)
        )
        assert original is not None
        # A follower over REST reads only what is stored: once it has every chunk, the
        # stream is ready to be resumed (and is checked).
        checker = create_resumable_stream_context(owned["rest"], options=OPTIONS)
        stack.push_async_callback(checker.aclose)
        follower = await checker.resume_existing_stream("s")
        assert follower is not None
        for _ in range(bench.held):
            await follower.__anext__()
        await follower.aclose()
        await bench.check(owned["rest"], "s", bench.held)
        # The four kinds take turns, one resume each, so that a change in the machine's
        # load (it is shared) falls on all of them alike.
        log(f"time to first chunk of a resume: {trials} of each kind")
        for _ in range(trials):
            for (name, kind), values in times.items():
                if kind == "warm":
                    values.append(await bench.first_chunk(owned[name]))
                    continue
                backend, close = await makers[name](prefix)
                try:
                    values.append(await bench.first_chunk(backend))
                finally:
                    await close()
        gate.set()
        async for _ in original:
            pass
    first: dict[str, dict[str, Any]] = {"rest": {}, "tcp": {}}
    for (name, kind), values in times.items():
        first[name][kind] = ms(values)
    return {
        "requests_per_chunk": {
            "fast": {
                "chunks": FAST[0], "pace_s": FAST[1], "median": round(statistics.median(fast), 4),
                "runs": [round(v, 4) for v in fast],
            },
            "slow": {
                "chunks": bench.slow[0], "pace_s": bench.slow[1],
                "median": round(statistics.median(slow), 4),
                "runs": [round(v, 4) for v in slow],
            },
        },
        "resume_first_chunk_ms": {
            **first,
            "held_chunks": bench.held,
            "trials": trials,
            "ratio_p50_rest_over_tcp": {
                kind: round(first["rest"][kind]["p50"] / first["tcp"][kind]["p50"], 2)
                for kind in ("cold", "warm")
            },
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="1 repeat, 10 resumes, shorter streams (CI)"
    )
    parser.add_argument("--redis-url", help="a loopback Redis (default: start one)")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args(argv)
    if args.redis_url is not None and not is_loopback(args.redis_url):
        parser.error("--redis-url must be a loopback address")
    repeats, trials = (1, 10) if args.quick else (5, 50)
    try:
        from tests.servers import RedisServer
        from tests.upstash_standin import UpstashStandin
    except ImportError:
        parser.error("run from the repository root (tests.upstash_standin)")
    with ExitStack() as servers:
        redis_url = args.redis_url
        if redis_url is None:
            server = RedisServer()
            servers.callback(server.close)
            server.start()
            redis_url = server.url
        port = aioredis.Redis.from_url(redis_url).connection_pool.connection_kwargs["port"]
        standin = UpstashStandin(int(port))
        servers.callback(standin.close)
        standin.start()
        bench = Bench(
            redis_url, standin.url, standin.token, lambda: standin.control("stats"),
            quick=args.quick,
        )
        measured = asyncio.run(benchmark(bench, repeats, trials))
    report: dict[str, Any] = {
        "benchmark": "upstash",
        "version": resumable_stream.__version__,
        "mode": "quick" if args.quick else "full",
        "python": platform.python_version(),
        "transport": "loopback: the stand-in (uvicorn, Python) in front of redis-server",
        **measured,
        "exact": bench.exact,
    }
    json.dump(report, sys.stdout, indent=2)
    print()
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if not bench.exact:
        log("FAILED: a reader or a read-back differs from the source")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
