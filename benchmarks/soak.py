"""Soak: many concurrent streams through uvicorn, clients cut and resumed at random,
followers joining and leaving; every client must get exactly its stream's text.

    python -m benchmarks.soak                    # 1,000 streams per round, 10 minutes
    python -m benchmarks.soak --quick            # the short version CI runs (~15 s)
    python -m benchmarks.soak --streams 200 --minutes 2 --out soak.json

It starts a private ``redis-server`` and the app (this module's ``app``, under
``uvicorn`` in a process of its own), then runs rounds until the time is up: each round
starts ``--streams`` streams at once through `ResumableStreamClient`. A ``--cut``
share of the clients talk through a proxy that cuts connections mid-body at random
(``tests/tcp_proxy.py``), so they resume, maybe several times; ``--followers`` of the
streams get a second client that joins mid-stream, and half of those leave early.

After each round (once the app reports no running producer) it samples the app's RSS,
its asyncio task count and the number of Redis connections. The report (JSON on
stdout) says whether: every client got exactly its text (no loss, no duplicate);
RSS is flat after the warm-up round; tasks and Redis connections went back to their
idle level; every key in Redis has a TTL. The exit status is 0 only if all hold.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import resource
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

ROOT = Path(__file__).resolve().parent.parent

# -- the app (runs in the uvicorn process) -----------------------------------------------------


def chunk_text(stream: str, i: int, size: int) -> str:
    head = f"{stream}:{i:05d}|"
    return head + "." * max(0, size - len(head))


def expected_text(stream: str, n: int, size: int) -> str:
    return "".join(chunk_text(stream, i, size) for i in range(n))


async def _endpoint(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    query = parse_qs(scope.get("query_string", b"").decode())
    n = int(query["n"][0])
    pace = float(query["pace"][0])
    size = int(query["size"][0])
    stream = str(scope["path"]).rsplit("/", 1)[-1]
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain; charset=utf-8")],
        }
    )
    for i in range(n):
        if i:
            await asyncio.sleep(pace)  # the stream's pace, like a model's tokens
        body = chunk_text(stream, i, size).encode()
        await send({"type": "http.response.body", "body": body, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


class SoakApp:
    """The ASGI app: the middleware on Redis, plus ``GET /stats``."""

    def __init__(self) -> None:
        self.wrapped: Any = None
        self.ctx: Any = None
        self.client: Any = None

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["path"] == "/stats":
            body = json.dumps(
                {
                    "rss_kb": _rss_kb(),
                    "tasks": len(asyncio.all_tasks()),
                    "running_streams": self.ctx.running_streams,
                    # The app's Redis pool: connections it opened, and those not given
                    # back (redis-py keeps both lists on the pool).
                    "pool_open": len(self.client.connection_pool._available_connections)
                    + len(self.client.connection_pool._in_use_connections),
                    "pool_in_use": len(self.client.connection_pool._in_use_connections),
                }
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.wrapped(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        import redis.asyncio as aioredis

        from resumable_stream import StreamOptions, create_resumable_stream_context
        from resumable_stream.asgi import ResumableStreamMiddleware

        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.client = aioredis.Redis.from_url(os.environ["SOAK_REDIS_URL"])
                self.ctx = create_resumable_stream_context(
                    self.client,
                    key_prefix=os.environ["SOAK_PREFIX"],
                    ttl=600,
                    options=StreamOptions(finished_ttl=300),
                )
                self.wrapped = ResumableStreamMiddleware(
                    _endpoint, self.ctx, path="/chat/{id}",
                    stream_id=lambda scope: str(scope["path"]).rsplit("/", 1)[-1],
                    resume_path="/resume/{stream_id}", ping_interval=None,
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.ctx.aclose()
                await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


app = SoakApp()


# -- the driver ----------------------------------------------------------------------------------


class Totals:
    def __init__(self) -> None:
        self.streams = 0
        self.exact = 0
        self.lost_or_doubled = 0
        self.errors: list[str] = []
        self.error_kinds: Counter[str] = Counter()  # what failed, by exception (and cause)
        self.followers = 0
        self.followers_left = 0
        self.characters = 0
        self.cut_clients = 0


async def _one_stream(
    totals: Totals,
    stream: str,
    args: argparse.Namespace,
    rng: random.Random,
    direct: Any,
    through_proxy: Any,
) -> None:
    from resumable_stream.client import ResumableStreamClient

    cut = rng.random() < args.cut
    totals.cut_clients += cut
    expected = expected_text(stream, args.chunks, args.size)
    joined = asyncio.Event()

    def client(http: Any) -> ResumableStreamClient:
        # One shared httpx client per route, not one per stream: each AsyncClient loads
        # the CA bundle into an SSL context of its own (about 1 MB and a few ms of CPU),
        # which at 1,000 streams a round starved the driver (1.2 GB, POSTs timing out).
        return ResumableStreamClient(
            client=http, resume_path="/resume/{stream_id}", retry_delay=0.02,
            max_retry_delay=0.2, max_retries=20,
        )

    async def main() -> None:
        text = []
        query = f"n={args.chunks}&pace={args.pace}&size={args.size}"
        async with client(through_proxy if cut else direct).stream(
            "POST", f"/chat/{stream}?{query}"
        ) as messages:
            async for message in messages:
                text.append(message.data)
                joined.set()
        got = "".join(text)
        totals.characters += len(got)
        if got == expected:
            totals.exact += 1
        else:
            totals.lost_or_doubled += 1
            totals.errors.append(f"{stream}: got {len(got)} characters, wanted {len(expected)}")

    async def follower(leave_after: int | None) -> None:
        await joined.wait()
        totals.followers += 1
        text = []
        async with client(direct).follow(stream, resume_at=0) as messages:
            async for message in messages:
                text.append(message.data)
                if leave_after is not None and len(text) >= leave_after:
                    totals.followers_left += 1
                    return  # leaves early: closes its connection mid-stream
        got = "".join(text)
        if got != expected:
            totals.lost_or_doubled += 1
            totals.errors.append(f"{stream} follower: {len(got)} of {len(expected)} characters")

    jobs = [main()]
    if rng.random() < args.followers:
        jobs.append(follower(rng.randrange(1, args.chunks) if rng.random() < 0.5 else None))
    totals.streams += 1
    try:
        await asyncio.gather(*jobs)
    except Exception as exc:
        totals.errors.append(f"{stream}: {type(exc).__name__}: {exc}")
        cause = exc.__cause__
        kind = type(exc).__name__ + (f" ({type(cause).__name__})" if cause else "")
        reason = getattr(exc, "reason", None)
        totals.error_kinds[kind + (f" {reason}" if reason else "")] += 1


async def _stats(http: Any, url: str, timeout: float = 60.0) -> dict[str, Any]:
    """The app's stats once it runs no producer (polled: no event crosses processes)."""
    deadline = time.monotonic() + timeout
    while True:
        stats: dict[str, Any] = (await http.get(f"{url}/stats")).json()
        if stats["running_streams"] == 0 or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.05)


async def _redis_connections(client: Any) -> int:
    clients = await client.client_list()
    return len(clients) - 1  # not this one


def _start_processes(prefix: str) -> tuple[Any, subprocess.Popen[bytes], int]:
    """A private redis-server and the app under uvicorn, in processes of their own."""
    sys.path.insert(0, str(ROOT))
    from tests.servers import RedisServer, free_port

    server = RedisServer()
    server.start()
    port = free_port()
    env = {**os.environ, "SOAK_REDIS_URL": server.url, "SOAK_PREFIX": prefix,
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "benchmarks.soak:app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning", "--lifespan", "on",
         "--backlog", "4096"],
        cwd=ROOT, env=env,
    )
    return server, proc, port


def _stop_processes(server: Any, proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()  # the app process we started
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    server.close()


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    import httpx
    import redis.asyncio as aioredis

    sys.path.insert(0, str(ROOT))
    from tests.tcp_proxy import CuttingProxy, random_budgets

    rng = random.Random(args.seed)
    prefix = f"soak-{uuid.uuid4().hex[:8]}"
    server, proc, port = await asyncio.to_thread(_start_processes, prefix)
    redis = aioredis.Redis.from_url(server.url)
    url = f"http://127.0.0.1:{port}"
    body_size = args.chunks * (args.size + 10)
    totals = Totals()
    rounds: list[dict[str, Any]] = []
    began = time.monotonic()
    try:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=10, limits=limits) as http:
            for _ in range(200):  # the app's startup: no event crosses processes
                try:
                    await http.get(f"{url}/stats")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            idle = await _stats(http, url)
            async with CuttingProxy(
                port, random_budgets(args.seed, body_size, 0.7)
            ) as proxy, httpx.AsyncClient(
                base_url=url, timeout=args.client_timeout, limits=limits
            ) as direct, httpx.AsyncClient(
                base_url=proxy.url, timeout=args.client_timeout, limits=limits
            ) as through_proxy:
                n = 0
                while True:
                    started = time.monotonic()
                    errors_before = len(totals.errors)
                    streams = [f"r{len(rounds)}s{i}-{uuid.uuid4().hex[:6]}"
                               for i in range(args.streams)]
                    await asyncio.wait_for(
                        asyncio.gather(*(
                            _one_stream(totals, s, args, rng, direct, through_proxy)
                            for s in streams
                        )),
                        args.round_timeout,
                    )
                    n += len(streams)
                    stats = await _stats(http, url)
                    rounds.append({
                        "streams": len(streams),
                        "seconds": round(time.monotonic() - started, 2),
                        "rss_mb": round(stats["rss_kb"] / 1024, 1),
                        "tasks": stats["tasks"],
                        "redis_connections": await _redis_connections(redis),
                        "pool_open": stats["pool_open"],
                        "pool_in_use": stats["pool_in_use"],
                        "errors": len(totals.errors) - errors_before,
                    })
                    print(json.dumps(rounds[-1]), file=sys.stderr, flush=True)
                    done = len(rounds) >= args.rounds if args.rounds else (
                        time.monotonic() - began >= args.minutes * 60)
                    if done:
                        break
                proxy_cuts, proxy_connections = proxy.cuts, proxy.connections
        keys = [k async for k in redis.scan_iter(f"{prefix}:*", count=1000)]
        pttls = [await redis.pttl(k) for k in keys]
    finally:
        await redis.aclose()
        await asyncio.to_thread(_stop_processes, server, proc)

    after_warmup = rounds[1:] or rounds
    rss = [r["rss_mb"] for r in after_warmup]
    rss_growth = round(rss[-1] - rss[0], 1)
    # After the warm-up round the app holds one more task for good: the pub/sub
    # dispatcher, made on the first subscribe. A leak grows round after round.
    tasks_ok = all(r["tasks"] <= rounds[0]["tasks"] for r in rounds)
    # The app's Redis pool keeps what its busiest moment opened, so it grows over the
    # first rounds to its peak and then stays (42, 51, 51, ... in a full run); a leak
    # grows with every round. So the second half of the run may not pass the first.
    # A leak is a connection never given back to the pool, or one opened outside it
    # (pub/sub links) round after round. The pool itself may open more until the run's
    # busiest moment, whenever that comes: its growth is not a leak.
    outside = [r["redis_connections"] - r["pool_open"] for r in rounds]
    half = max(1, len(outside) // 2)
    connections_ok = all(r["pool_in_use"] == 0 for r in rounds) and max(
        outside[half:] or outside
    ) <= max(outside[:half]) + args.connections_slack
    report = {
        "benchmark": "soak",
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "seconds": round(time.monotonic() - began, 1),
        "streams": totals.streams,
        "exact": totals.exact,
        "lost_or_doubled": totals.lost_or_doubled,
        "errors": totals.errors[:20],
        "error_count": len(totals.errors),
        "error_kinds": dict(totals.error_kinds),
        "characters": totals.characters,
        "cut_clients": totals.cut_clients,
        "proxy_connections": proxy_connections,
        "cuts": proxy_cuts,
        "resumes_through_proxy": proxy_connections - totals.cut_clients,
        "followers": totals.followers,
        "followers_left_early": totals.followers_left,
        "idle_tasks": idle["tasks"],
        "rounds": rounds,
        "rss_growth_after_warmup_mb": rss_growth,
        "keys": len(keys),
        "keys_without_ttl": sum(1 for p in pttls if p < 0),
        "driver_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    report["ok"] = (
        totals.exact == totals.streams
        and totals.lost_or_doubled == 0
        and not totals.errors
        and rss_growth <= args.rss_slack_mb
        and tasks_ok
        and connections_ok
        and report["keys_without_ttl"] == 0
    )
    report["checks"] = {
        "every_client_exact": totals.exact == totals.streams and not totals.errors,
        "rss_flat": rss_growth <= args.rss_slack_mb,
        "no_task_leak": tasks_ok,
        "no_redis_connection_leak": connections_ok,
        "every_key_has_ttl": report["keys_without_ttl"] == 0,
    }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000, help="concurrent streams per round")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=0, help="a number of rounds instead")
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--size", type=int, default=32, help="characters per chunk")
    parser.add_argument("--pace", type=float, default=0.02, help="seconds between chunks")
    parser.add_argument("--cut", type=float, default=0.3, help="share of clients cut")
    parser.add_argument("--followers", type=float, default=0.2, help="share with a follower")
    parser.add_argument("--rss-slack-mb", type=float, default=20.0)
    parser.add_argument("--connections-slack", type=int, default=4,
                        help="Redis connections the app may add in the run's second half")
    parser.add_argument("--client-timeout", type=float, default=60.0,
                        help="seconds a client waits for any one read")
    parser.add_argument("--round-timeout", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="the short CI version")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--verbose", action="store_true", help="log every retry")
    args = parser.parse_args(argv)
    if args.quick:
        args.streams, args.rounds, args.chunks, args.pace = 60, 4, 40, 0.01
        args.round_timeout = 60.0
    if not args.verbose:
        logging.getLogger("resumable_stream").setLevel(logging.ERROR)  # no retry chatter
    report = asyncio.run(soak(args))
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.write_text(text)
    print(text)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
