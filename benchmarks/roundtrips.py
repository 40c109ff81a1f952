"""Redis cost per chunk of resumable streams, for a fast and a slow producer.

Run from the repository root::

    python -m benchmarks.roundtrips            # full sizes, a private redis-server
    python -m benchmarks.roundtrips --quick    # small sizes, a few seconds
    python -m benchmarks.roundtrips --redis-url redis://127.0.0.1:6379/0 --out r.json --plot r.png

Workloads (full sizes; ``--quick`` shrinks them):

* ``fast``: 20 streams x 1,000 chunks x 32 B. The source only does
  ``await asyncio.sleep(0)`` between chunks: the fastest source that still lets the
  event loop run (a real one awaits the network). The write-behind writer keeps one
  write in flight and batches what arrives meanwhile, so it should cost far fewer
  round trips than chunks.
* ``slow``: 1 stream x 200 chunks, ``await asyncio.sleep(0.005)`` between chunks
  (the sleep is the workload: an LLM emitting tokens). Every chunk finds the writer
  idle, so about one round trip per chunk.

Each library run creates the streams on one backend (the original reader consumes
in this process) and resumes each from the start on a second backend with its own
Redis client, standing in for another process (one follower per stream). Every
reader's chunks are checked against what the source yielded, index by index; the
exit status is 1 if any differs. A ``plain`` run consumes the same source without
the library, side by side with each library run, for the throughput ratio.

Redis cost comes from ``INFO commandstats`` deltas around each library run:
``commands`` counts every command the server ran, including those inside the Lua
scripts, except ``INFO`` itself and connection handshakes (reported apart);
``round_trips`` counts ``EVALSHA`` calls (every storage operation of the library
is one script call; pub/sub ``SUBSCRIBE``/``UNSUBSCRIBE`` are reported apart). On a
shared server (``--redis-url``) other clients' commands are counted too.

One JSON document goes to stdout, progress to stderr.
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
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import redis.asyncio as aioredis

import resumable_stream
from resumable_stream import (
    Chunk,
    ResumableStream,
    StreamOptions,
    StreamStatus,
    create_resumable_stream_context,
)
from resumable_stream._subscription import Subscription
from resumable_stream._types import Ended, Snapshot
from resumable_stream.backends.redis import RedisBackend

# Commands a new connection sends before any work: not a per-chunk cost.
HANDSHAKE = frozenset({"hello", "client|setinfo", "client|setname", "select", "auth"})
PUBSUB = frozenset({"subscribe", "unsubscribe", "psubscribe", "punsubscribe"})
TTL = 300.0  # seconds: keys left on a shared server go away soon
OPTIONS = StreamOptions(finished_ttl=60.0)


@dataclass(frozen=True)
class Workload:
    name: str
    streams: int
    chunks: int
    chunk_bytes: int
    delay: float  # seconds slept between chunks; 0 = asyncio.sleep(0), a bare yield

    @property
    def total_chunks(self) -> int:
        return self.streams * self.chunks


FULL = (
    Workload("fast", streams=20, chunks=1000, chunk_bytes=32, delay=0.0),
    Workload("slow", streams=1, chunks=200, chunk_bytes=32, delay=0.005),
)
QUICK = (
    Workload("fast", streams=4, chunks=200, chunk_bytes=32, delay=0.0),
    Workload("slow", streams=1, chunks=40, chunk_bytes=32, delay=0.005),
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_chunk(stream: int, index: int, size: int) -> bytes:
    """A chunk unique to its stream and index, exactly ``size`` bytes."""
    head = f"{stream}:{index}:".encode()
    if len(head) > size:
        raise ValueError(f"chunk_bytes={size} is too small to label chunk {stream}:{index}")
    return head + b"." * (size - len(head))


def expected_chunks(workload: Workload) -> list[list[bytes]]:
    return [
        [make_chunk(s, i, workload.chunk_bytes) for i in range(workload.chunks)]
        for s in range(workload.streams)
    ]


async def source(stream: int, workload: Workload) -> AsyncIterator[bytes]:
    """The producer's source: an async generator, the same for plain and library runs."""
    for index in range(workload.chunks):
        if index:
            await asyncio.sleep(workload.delay)
        yield make_chunk(stream, index, workload.chunk_bytes)


class CountingBackend:
    """A `Backend` that counts the calls the library makes, then delegates."""

    def __init__(self, inner: RedisBackend) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.chunks_written = 0
        self.largest_write = 0

    def reset(self) -> None:
        self.calls.clear()
        self.chunks_written = 0
        self.largest_write = 0

    async def claim(
        self, stream_id: str, token: str, *, ttl: float, lease: float, metadata: bytes = b""
    ) -> StreamStatus | None:
        self.calls["claim"] += 1
        return await self.inner.claim(stream_id, token, ttl=ttl, lease=lease, metadata=metadata)

    async def request_stop(self, stream_id: str) -> bool:
        self.calls["request_stop"] += 1
        return await self.inner.request_stop(stream_id)

    async def write(
        self,
        stream_id: str,
        token: str,
        start: int,
        chunks: Sequence[Chunk],
        *,
        end: Ended | None,
        ttl: float,
        finished_ttl: float,
        lease: float,
    ) -> bool:
        self.calls["write"] += 1
        self.chunks_written += len(chunks)
        self.largest_write = max(self.largest_write, len(chunks))
        return await self.inner.write(
            stream_id,
            token,
            start,
            chunks,
            end=end,
            ttl=ttl,
            finished_ttl=finished_ttl,
            lease=lease,
        )

    async def snapshot(self, stream_id: str, start: int, limit: int) -> Snapshot | None:
        self.calls["snapshot"] += 1
        return await self.inner.snapshot(stream_id, start, limit)

    async def status(self, stream_id: str) -> StreamStatus | None:
        self.calls["status"] += 1
        return await self.inner.status(stream_id)

    async def subscribe(self, stream_id: str, *, max_buffered_bytes: int) -> Subscription:
        self.calls["subscribe"] += 1
        return await self.inner.subscribe(stream_id, max_buffered_bytes=max_buffered_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


def command_calls(info: dict[str, Any]) -> Counter[str]:
    calls: Counter[str] = Counter()
    for key, value in info.items():
        if key.startswith("cmdstat_") and isinstance(value, dict):
            calls[key[len("cmdstat_") :]] = int(value.get("calls", 0))
    return calls


def failed_calls(info: dict[str, Any]) -> int:
    return sum(
        int(v.get("failed_calls", 0)) + int(v.get("rejected_calls", 0))
        for k, v in info.items()
        if k.startswith("cmdstat_") and isinstance(v, dict) and k != "cmdstat_info"
    )


async def collect(stream: ResumableStream | None) -> list[tuple[int, Chunk]]:
    if stream is None:
        return []
    return [(index, data) async for index, data in stream.indexed()]


def exact(got: list[tuple[int, Chunk]], want: list[bytes]) -> bool:
    return [i for i, _ in got] == list(range(len(want))) and [d for _, d in got] == want


def mismatch(
    who: str, stream_id: str, got: list[tuple[int, Chunk]], want: list[bytes]
) -> dict[str, Any]:
    """What went wrong, for the report: enough to start debugging from."""
    indices = [i for i, _ in got]
    seen = Counter(indices)
    first_bad = next(
        (n for n, (i, d) in enumerate(got) if i != n or n >= len(want) or d != want[n]), None
    )
    return {
        "reader": who,
        "stream_id": stream_id,
        "got_chunks": len(got),
        "want_chunks": len(want),
        "duplicate_indices": sorted(i for i, c in seen.items() if c > 1)[:10],
        "missing_indices": sorted(set(range(len(want))) - set(seen))[:10],
        "first_bad_position": first_bad,
        "got_at_first_bad": (
            None if first_bad is None or first_bad >= len(got) else repr(got[first_bad])[:120]
        ),
    }


async def run_plain(workload: Workload, want: list[list[bytes]]) -> dict[str, Any]:
    async def consume(stream: int) -> list[bytes]:
        return [chunk async for chunk in source(stream, workload)]

    started = time.perf_counter()
    got = await asyncio.gather(*(consume(s) for s in range(workload.streams)))
    elapsed = time.perf_counter() - started
    return {
        "elapsed_s": elapsed,
        "chunks_per_s": workload.total_chunks / elapsed,
        "bytes_ok": got == want,
    }


class Bench:
    """Clients and backends shared by every run, so runs measure steady state."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"bench-{uuid.uuid4().hex[:10]}"
        self.stats = aioredis.Redis.from_url(url, socket_connect_timeout=5)
        self.producer_client = aioredis.Redis.from_url(url, socket_connect_timeout=5)
        self.follower_client = aioredis.Redis.from_url(url, socket_connect_timeout=5)
        self.producer = CountingBackend(RedisBackend(self.producer_client, key_prefix=self.prefix))
        self.follower = CountingBackend(RedisBackend(self.follower_client, key_prefix=self.prefix))

    async def aclose(self) -> None:
        for backend in (self.producer, self.follower):
            await backend.aclose()
        for client in (self.producer_client, self.follower_client, self.stats):
            await client.aclose()

    async def run_library(
        self, workload: Workload, want: list[list[bytes]], run: int, budget: float
    ) -> dict[str, Any]:
        self.producer.reset()
        self.follower.reset()
        ctx = create_resumable_stream_context(self.producer, ttl=TTL, options=OPTIONS)
        fctx = create_resumable_stream_context(self.follower, ttl=TTL, options=OPTIONS)
        origin_done: list[float] = []
        problems: list[dict[str, Any]] = []

        async def one(stream: int) -> tuple[bool, bool]:
            stream_id = f"{workload.name}-{run}-{stream}"
            origin = await ctx.create_new_resumable_stream(
                stream_id, partial(source, stream, workload)
            )
            follower = await fctx.resume_existing_stream(stream_id, after=-1)

            async def timed_origin() -> list[tuple[int, Chunk]]:
                got = await collect(origin)
                origin_done.append(time.perf_counter())
                return got

            got_origin, got_follower = await asyncio.gather(timed_origin(), collect(follower))
            ok_origin = exact(got_origin, want[stream])
            ok_follower = exact(got_follower, want[stream])
            if not ok_origin:
                problems.append(mismatch("origin", stream_id, got_origin, want[stream]))
            if not ok_follower:
                problems.append(mismatch("follower", stream_id, got_follower, want[stream]))
            return ok_origin, ok_follower

        before_info = await self.stats.info("commandstats")
        started = time.perf_counter()
        try:
            with anyio.fail_after(budget):
                results = await asyncio.gather(*(one(s) for s in range(workload.streams)))
            elapsed = time.perf_counter() - started
        finally:
            with anyio.move_on_after(OPTIONS.shutdown_grace + 1.0, shield=True):
                await ctx.aclose()
                await fctx.aclose()
        after_info = await self.stats.info("commandstats")

        delta = command_calls(after_info) - command_calls(before_info)
        delta.pop("info", None)
        handshakes = sum(n for name, n in delta.items() if name in HANDSHAKE)
        pubsub = sum(n for name, n in delta.items() if name in PUBSUB)
        commands = sum(n for name, n in delta.items() if name not in HANDSHAKE)
        evalsha = delta.get("evalsha", 0)
        script_calls = sum(
            self.producer.calls[m] + self.follower.calls[m] for m in ("claim", "write", "snapshot")
        )
        chunks = workload.total_chunks
        writes = self.producer.calls["write"]
        return {
            "elapsed_s": elapsed,
            "chunks_per_s": chunks / elapsed,
            "origin_chunks_per_s": chunks / (max(origin_done) - started),
            "commands": commands,
            "round_trips": evalsha,
            "pubsub_commands": pubsub,
            "handshake_commands": handshakes,
            "failed_commands": failed_calls(after_info) - failed_calls(before_info),
            "commands_per_chunk": commands / chunks,
            "round_trips_per_chunk": evalsha / chunks,
            "writes": writes,
            "writes_per_chunk": writes / chunks,
            "chunks_per_write": self.producer.chunks_written / writes if writes else 0.0,
            "largest_write": self.producer.largest_write,
            "commands_by_name": dict(sorted(delta.items())),
            "backend_calls": {
                "producer_side": dict(sorted(self.producer.calls.items())),
                "follower_side": dict(sorted(self.follower.calls.items())),
            },
            "evalsha_matches_backend_calls": evalsha == script_calls,
            "origin_bytes_ok": all(o for o, _ in results),
            "follower_bytes_ok": all(f for _, f in results),
            "bytes_ok": all(o and f for o, f in results),
            "mismatches": problems[:10],
        }


def median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def summarize(
    workload: Workload, plain: list[dict[str, Any]], library: list[dict[str, Any]]
) -> dict[str, Any]:
    chunks = workload.total_chunks * len(library)
    by_name: Counter[str] = Counter()
    for run in library:
        by_name.update(run["commands_by_name"])
    pairs = list(zip(plain, library, strict=True))  # each library run beside its plain run
    ratios = [lib["chunks_per_s"] / p["chunks_per_s"] for p, lib in pairs]
    origin_ratios = [lib["origin_chunks_per_s"] / p["chunks_per_s"] for p, lib in pairs]
    return {
        "config": {
            **asdict(workload),
            "source": (
                f"await asyncio.sleep({workload.delay}) between chunks"
                if workload.delay
                else "await asyncio.sleep(0) between chunks (a bare yield to the event loop)"
            ),
            "total_chunks": workload.total_chunks,
            "repeats": len(library),
        },
        "round_trips_per_chunk": median(library, "round_trips_per_chunk"),
        "commands_per_chunk": median(library, "commands_per_chunk"),
        "writes_per_chunk": median(library, "writes_per_chunk"),
        "chunks_per_write": median(library, "chunks_per_write"),
        "pubsub_commands_per_chunk": median(library, "pubsub_commands") / workload.total_chunks,
        "commands_by_name_per_chunk": {k: v / chunks for k, v in sorted(by_name.items())},
        "plain_chunks_per_s": median(plain, "chunks_per_s"),
        "library_chunks_per_s": median(library, "chunks_per_s"),
        "throughput_ratio": float(statistics.median(ratios)),
        "origin_throughput_ratio": float(statistics.median(origin_ratios)),
        "evalsha_matches_backend_calls": all(r["evalsha_matches_backend_calls"] for r in library),
        "bytes_ok": all(r["bytes_ok"] for r in plain + library),
        "runs": {"plain": plain, "library": library},
    }


async def benchmark(
    url: str, workloads: Sequence[Workload], repeats: int, budget: float
) -> dict[str, Any]:
    bench = Bench(url)
    try:
        with anyio.fail_after(30):
            server = await bench.stats.info("server")
        # Load the scripts, open the pub/sub connections and as many pooled connections
        # as the widest workload uses, so that runs measure steady state.
        warmup = Workload(
            "warmup",
            streams=max(w.streams for w in workloads),
            chunks=20,
            chunk_bytes=32,
            delay=0.0,
        )
        await bench.run_library(warmup, expected_chunks(warmup), 0, budget)
        results: dict[str, Any] = {}
        for workload in workloads:
            want = expected_chunks(workload)
            plain: list[dict[str, Any]] = []
            library: list[dict[str, Any]] = []
            for run in range(repeats):
                plain.append(await run_plain(workload, want))
                library.append(await bench.run_library(workload, want, run, budget))
                log(
                    f"{workload.name} run {run + 1}/{repeats}: "
                    f"{library[-1]['round_trips_per_chunk']:.4f} round trips/chunk, "
                    f"{library[-1]['commands_per_chunk']:.3f} commands/chunk, "
                    f"library {library[-1]['chunks_per_s']:,.0f} chunks/s, "
                    f"plain {plain[-1]['chunks_per_s']:,.0f} chunks/s, "
                    f"bytes_ok={library[-1]['bytes_ok'] and plain[-1]['bytes_ok']}"
                )
                for problem in library[-1]["mismatches"]:
                    log(f"  MISMATCH {json.dumps(problem)}")
            results[workload.name] = summarize(workload, plain, library)
        return {
            "redis": {"version": server.get("redis_version"), "key_prefix": bench.prefix},
            "workloads": results,
        }
    finally:
        with anyio.move_on_after(10, shield=True):
            await bench.aclose()


def plot(report: dict[str, Any], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        message = "matplotlib is not installed; no plot drawn (pip install matplotlib)"
        log(message)
        return message
    workloads = report["workloads"]
    names = list(workloads)
    panels = [
        ("round_trips_per_chunk", "Round trips (EVALSHA) per chunk"),
        ("commands_per_chunk", "Redis commands per chunk"),
        ("throughput_ratio", "Throughput, library / plain"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    for ax, (key, title) in zip(axes, panels, strict=True):
        values = [workloads[n][key] for n in names]
        bars = ax.bar(names, values, color=["tab:blue", "tab:orange", "tab:green"][: len(names)])
        ax.bar_label(bars, labels=[f"{v:.3g}" for v in values])
        ax.set_title(title, fontsize=10)
        ax.margins(y=0.2)
    fig.suptitle(
        f"resumable-stream {report['version']} on Redis {report['redis']['version']}"
        f" ({report['mode']})",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def is_loopback(url: str) -> bool:
    """Only a Redis on this machine: the benchmark never leaves loopback."""
    parsed = urlsplit(url)
    if parsed.scheme == "unix":
        return True
    if parsed.scheme not in ("redis", "rediss"):
        return False
    host = parsed.hostname or ""
    return host == "localhost" or host == "::1" or host.startswith("127.")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.roundtrips", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (a few seconds)")
    parser.add_argument(
        "--redis-url",
        help="use this Redis (loopback or unix socket only) instead of a private "
        "redis-server; its commandstats then include other clients' commands",
    )
    parser.add_argument("--repeats", type=int, help="runs per workload (default 3, quick 1)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--plot", type=Path, help="draw a bar chart PNG here (needs matplotlib)")
    args = parser.parse_args(argv)
    workloads = QUICK if args.quick else FULL
    repeats = args.repeats or (1 if args.quick else 3)
    if repeats < 1:
        parser.error("--repeats must be >= 1")
    budget = 30.0 if args.quick else 180.0  # seconds per library run

    server = None
    url = args.redis_url
    if url is not None and not is_loopback(url):
        parser.error(f"--redis-url must point to this machine (loopback), not {url!r}")
    if url is None:
        try:
            from tests.servers import RedisServer
        except ImportError:
            parser.error(
                "run from the repository root (tests.servers not importable), or pass --redis-url"
            )
        server = RedisServer()
        server.start()
        url = server.url
    try:
        measured = asyncio.run(benchmark(url, workloads, repeats, budget))
    except TimeoutError:
        log(f"a run took longer than {budget:.0f} s: aborted")
        return 2
    finally:
        if server is not None:
            server.close()

    report: dict[str, Any] = {
        "benchmark": "roundtrips",
        "version": resumable_stream.__version__,
        "mode": "quick" if args.quick else "full",
        "python": platform.python_version(),
        "redis": {**measured["redis"], "private": server is not None},
        "workloads": measured["workloads"],
    }
    report["bytes_ok"] = all(w["bytes_ok"] for w in report["workloads"].values())
    if args.plot is not None:
        report["plot"] = plot(report, args.plot)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if not report["bytes_ok"]:
        log("FAILED: some reader did not get exactly the chunks the source yielded")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
