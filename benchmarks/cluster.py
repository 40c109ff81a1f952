"""W1 on a 3-master Redis Cluster beside a single Redis server, in one run.

Run from the repository root::

    python -m benchmarks.cluster            # 100 streams x 1,000 chunks x 32 B, 3 repeats
    python -m benchmarks.cluster --quick    # 10 streams x 100 chunks, 1 repeat (CI)
    python -m benchmarks.cluster --redis-url redis://127.0.0.1:6379/0 \\
        --cluster-url redis://127.0.0.1:7000/0 --out cluster.json

Without URLs it starts a private redis-server and a private cluster of 3 masters and 3
replicas on free loopback ports (``tests/servers.py``, ``tests/cluster_servers.py``);
URLs must be loopback. The workload is the suite's W1 (``benchmarks/_inproc.py``):
``streams`` concurrent streams, producer and original reader in this process, the
source awaiting ``asyncio.sleep(0)`` between chunks. Repeats alternate between the
two deployments. After each measured run every stream is read back from storage
through a second client and compared with what the source yielded, index by index.

Reported for each deployment (medians over repeats):

* ``chunks_per_s``: chunks delivered to the original readers over the wall time;
  ``ratio.chunks_per_s`` is cluster / single, per repeat pair, then the median.
* ``commands_per_chunk``: ``INFO commandstats`` deltas summed over the masters
  (scripts count with the commands they run), connection handshakes and our own
  probes left out; what replicas replay is reported apart (``replica_commands``).
  A classic ``PUBLISH`` on a cluster would be forwarded to every node: the library
  uses ``SPUBLISH`` there, so ``publish_calls`` must be 0 on the cluster and
  ``commands_per_script`` the same on both. (Commands per chunk also depend on how
  many chunks each write batches, which varies with timing.)
* ``master_share``: the part of the commands each master served, and
  ``max_share_over_mean`` (balanced when at most 1.5).

One JSON document goes to stdout (and to ``--out``), progress to stderr. The exit
status is 1 if any reader or read-back differs from the source.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

import resumable_stream
from resumable_stream import StreamOptions, create_resumable_stream_context

from ._common import Meter, RedisProbe, expected, log, source, throughput
from ._inproc import exact, read_all
from .roundtrips import is_loopback

TTL = 300.0  # seconds: keys left on a shared server go away soon
OPTIONS = StreamOptions(finished_ttl=60.0)
BALANCED = 1.5  # no master above 1.5x the mean share


@dataclass(frozen=True)
class Workload:
    streams: int
    chunks: int
    chunk_bytes: int

    @property
    def total_chunks(self) -> int:
        return self.streams * self.chunks


FULL = Workload(streams=100, chunks=1000, chunk_bytes=32)
QUICK = Workload(streams=10, chunks=100, chunk_bytes=32)
WARMUP = Workload(streams=64, chunks=20, chunk_bytes=32)


class Deployment:
    """One Redis deployment: how to make a client, and probes on its nodes by role."""

    def __init__(self, name: str, make_client: Callable[[], Any]) -> None:
        self.name = name
        self.make_client = make_client
        self.masters: dict[str, RedisProbe] = {}
        self.replicas: dict[str, RedisProbe] = {}

    @classmethod
    async def single(cls, url: str) -> Deployment:
        made = cls("single", partial(aioredis.Redis.from_url, url))
        made.masters[_address(url)] = RedisProbe(url)
        return made

    @classmethod
    async def cluster(cls, url: str) -> Deployment:
        made = cls("cluster", partial(RedisCluster.from_url, url))
        # CLUSTER NODES, not the client's slot map: Redis 7.0 leaves out of CLUSTER
        # SLOTS the replicas of a cluster that has not been written to yet.
        client = aioredis.Redis.from_url(url)
        try:
            nodes: dict[str, dict[str, Any]] = await client.execute_command("CLUSTER NODES")
        finally:
            await client.aclose()
        for address, node in nodes.items():
            address = address.split("@")[0]
            if "master" in node["flags"] and node["slots"]:
                made.masters[address] = RedisProbe(f"redis://{address}/0")
            elif "slave" in node["flags"]:
                made.replicas[address] = RedisProbe(f"redis://{address}/0")
        return made

    async def version(self) -> str:
        probe = next(iter(self.masters.values()))
        return str((await probe.client.info("server"))["redis_version"])

    async def aclose(self) -> None:
        for probe in [*self.masters.values(), *self.replicas.values()]:
            await probe.aclose()


def _address(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}"


async def run_w1(deployment: Deployment, workload: Workload, budget: float) -> dict[str, Any]:
    """One measured W1 run, then a read-back of every stream through another client."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    streams, chunks, size = workload.streams, workload.chunks, workload.chunk_bytes
    want = [expected(s, chunks, size) for s in range(streams)]
    got: list[list[tuple[int, str | bytes, int]]] = [[] for _ in range(streams)]
    producer_client, reader_client = deployment.make_client(), deployment.make_client()
    ctx = create_resumable_stream_context(
        producer_client, key_prefix=prefix, ttl=TTL, options=OPTIONS
    )
    reader = create_resumable_stream_context(
        reader_client, key_prefix=prefix, ttl=TTL, options=OPTIONS
    )
    probes = [*deployment.masters.values(), *deployment.replicas.values()]
    try:
        # Load the scripts on every master and open the connections the run will use.
        warm = [
            ctx.create_new_resumable_stream(f"warm-{s}", partial(source, s, 20, size))
            for s in range(min(streams, WARMUP.streams))
        ]
        for stream in await asyncio.gather(*warm):
            await read_all(stream, [])

        async def one(s: int) -> None:
            stream = await ctx.create_new_resumable_stream(
                f"s{s}", partial(source, s, chunks, size)
            )
            await read_all(stream, got[s])

        for probe in probes:
            await probe.start()
        with Meter() as meter:
            await asyncio.wait_for(asyncio.gather(*(one(s) for s in range(streams))), budget)
        for probe in probes:
            await probe.stop()
        stored: list[list[tuple[int, str | bytes, int]]] = [[] for _ in range(streams)]
        for s in range(streams):
            await read_all(await reader.resume_existing_stream(f"s{s}", after=-1), stored[s])
    finally:
        await ctx.aclose()
        await reader.aclose()
        await producer_client.aclose()
        await reader_client.aclose()
    total = workload.total_chunks
    per_master = {name: sum(p.commands.values()) for name, p in deployment.masters.items()}
    commands: Counter[str] = Counter()
    for probe in deployment.masters.values():
        commands.update(probe.commands)
    all_commands = sum(per_master.values())
    shares = {name: n / all_commands for name, n in per_master.items()} if all_commands else {}
    mean = 1 / len(shares) if shares else 0.0
    return {
        **throughput(total, total * size, meter),
        "exact": all(exact(g, w) for g, w in zip(got, want, strict=True)),
        "stored_exact": all(exact(g, w) for g, w in zip(stored, want, strict=True)),
        "commands": all_commands,
        "commands_per_chunk": all_commands / total,
        "scripts_per_chunk": commands["evalsha"] / total,
        # Each script runs the same commands wherever it runs: equal on both when
        # nothing is broadcast (how many writes a run batches into varies with timing).
        "commands_per_script": all_commands / commands["evalsha"] if commands["evalsha"] else 0.0,
        "publish_calls": commands["publish"],
        "spublish_calls": commands["spublish"],
        "replica_commands": sum(sum(p.commands.values()) for p in deployment.replicas.values()),
        "commands_by_name": dict(sorted(commands.items())),
        "commands_per_master": per_master,
        "master_share": shares,
        "max_share_over_mean": max(shares.values()) / mean if shares else 0.0,
    }


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(run[key] for run in runs))


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = (
        "chunks_per_s", "commands_per_chunk", "scripts_per_chunk", "commands_per_script",
        "max_share_over_mean", "cpu_us_per_chunk",
    )
    return {
        **{key: _median(runs, key) for key in keys},
        "publish_calls": sum(run["publish_calls"] for run in runs),
        "spublish_calls": sum(run["spublish_calls"] for run in runs),
        "bytes_ok": all(run["exact"] and run["stored_exact"] for run in runs),
        "runs": runs,
    }


async def benchmark(
    single_url: str, cluster_url: str, workload: Workload, repeats: int, budget: float
) -> dict[str, Any]:
    single = await Deployment.single(single_url)
    cluster = await Deployment.cluster(cluster_url)
    try:
        runs: dict[str, list[dict[str, Any]]] = {"single": [], "cluster": []}
        for repeat in range(repeats):
            for deployment in (single, cluster):
                run = await run_w1(deployment, workload, budget)
                runs[deployment.name].append(run)
                log(
                    f"{deployment.name} run {repeat + 1}/{repeats}: "
                    f"{run['chunks_per_s']:,.0f} chunks/s, "
                    f"{run['commands_per_chunk']:.3f} commands/chunk, "
                    f"max share/mean {run['max_share_over_mean']:.2f}, "
                    f"exact={run['exact'] and run['stored_exact']}"
                )
        pairs = list(zip(runs["single"], runs["cluster"], strict=True))
        result = {
            "redis": {"version": await single.version(), "cluster_masters": len(cluster.masters)},
            "single": summarize(runs["single"]),
            "cluster": summarize(runs["cluster"]),
            "ratio": {
                "chunks_per_s": statistics.median(
                    c["chunks_per_s"] / s["chunks_per_s"] for s, c in pairs
                ),
                "commands_per_chunk": statistics.median(
                    c["commands_per_chunk"] / s["commands_per_chunk"] for s, c in pairs
                ),
                "commands_per_script": statistics.median(
                    c["commands_per_script"] / s["commands_per_script"] for s, c in pairs
                ),
            },
        }
        result["balanced"] = result["cluster"]["max_share_over_mean"] <= BALANCED
        return result
    finally:
        await single.aclose()
        await cluster.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cluster", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument("--redis-url", help="a single Redis on loopback instead of a private one")
    parser.add_argument("--cluster-url", help="any node of a cluster on loopback")
    parser.add_argument("--repeats", type=int, help="runs per deployment (default 3, quick 1)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    workload = QUICK if args.quick else FULL
    repeats = args.repeats or (1 if args.quick else 3)
    if repeats < 1:
        parser.error("--repeats must be >= 1")
    for url in (args.redis_url, args.cluster_url):
        if url is not None and not is_loopback(url):
            parser.error(f"URLs must point to this machine (loopback), not {url!r}")
    budget = 60.0 if args.quick else 300.0  # seconds per measured run

    with ExitStack() as servers:
        single_url, cluster_url = args.redis_url, args.cluster_url
        if single_url is None or cluster_url is None:
            try:
                from tests.cluster_servers import PrivateCluster
                from tests.servers import RedisServer
            except ImportError:
                parser.error("run from the repository root, or pass --redis-url and --cluster-url")
        if single_url is None:
            server = RedisServer()
            servers.callback(server.close)
            server.start()
            single_url = server.url
        if cluster_url is None:
            log("starting a private 3-master, 3-replica cluster")
            cluster = PrivateCluster()
            servers.callback(cluster.close)
            cluster.start()
            cluster_url = f"redis://127.0.0.1:{cluster.ports[0]}/0"
        try:
            measured = asyncio.run(benchmark(single_url, cluster_url, workload, repeats, budget))
        except TimeoutError:
            log(f"a run took longer than {budget:.0f} s: aborted")
            return 2

    report: dict[str, Any] = {
        "benchmark": "cluster",
        "version": resumable_stream.__version__,
        "mode": "quick" if args.quick else "full",
        "python": platform.python_version(),
        "workload": {**asdict(workload), "name": "W1", "repeats": repeats},
        **measured,
    }
    report["bytes_ok"] = report["single"]["bytes_ok"] and report["cluster"]["bytes_ok"]
    json.dump(report, sys.stdout, indent=2)
    print()
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if report["bytes_ok"]:
        return 0
    bad = [
        f"{name} run {n + 1}"
        for name in ("single", "cluster")
        for n, run in enumerate(report[name]["runs"])
        if not (run["exact"] and run["stored_exact"])
    ]
    log(f"FAILED: readers or read-backs differ from the source in {', '.join(bad)}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
