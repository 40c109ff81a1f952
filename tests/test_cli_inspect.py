"""``python -m resumable_stream inspect|list`` against a real redis-server (issue 20).

The command line runs as a subprocess, started with asyncio so that the producers of
this process keep renewing their leases while it runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from resumable_stream import (
    ResumableStreamContext,
    StreamOptions,
    StreamStatus,
    create_resumable_stream_context,
)
from resumable_stream._inspect import list_streams
from resumable_stream.backends._wire import stream_keys
from resumable_stream.backends.cluster import RedisClusterBackend
from resumable_stream.backends.redis import RedisBackend

from .cluster_servers import PrivateCluster
from .helpers import ControlledSource, read_all
from .servers import RedisServer

ROOT = Path(__file__).resolve().parents[1]
# A long lease: a running stream's lease is alive whenever the command reads it.
OPTIONS = StreamOptions(lease=30.0, poll_interval=0.25, shutdown_grace=2.0)
TTL = 600.0
ODD_ID = "a/b%c日本"
KEYS = {"status", "chunks", "bytes", "ttl", "lease", "owner"}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "KV_URL")}
    env["PYTHONPATH"] = str(ROOT)  # this checkout's package, whatever is installed
    env.update(extra)
    return env


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "resumable_stream", *args, cwd=ROOT,
        env=_env() if env is None else env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def ctx(
    redis_client: aioredis.Redis, key_prefix: str
) -> AsyncIterator[ResumableStreamContext]:
    context = create_resumable_stream_context(
        RedisBackend(redis_client, key_prefix=key_prefix), ttl=TTL, options=OPTIONS
    )
    yield context
    await context.aclose()


class Streams:
    """Streams in each state, made through the library as an application would."""

    def __init__(self, ctx: ResumableStreamContext) -> None:
        self.ctx = ctx
        self.sources: list[ControlledSource] = []

    async def running(self, stream_id: str, *chunks: str | bytes) -> None:
        source = ControlledSource()
        self.sources.append(source)
        stream = await self.ctx.resumable_stream(stream_id, source)
        for chunk in chunks:
            source.write(chunk)
        assert stream is not None
        for chunk in chunks:  # read back: once the original reader has a chunk...
            assert await stream.__anext__() == chunk
        # ...it may not be stored yet: wait until Redis holds them all.
        for _ in range(200):
            snap = await self.ctx.backend.snapshot(stream_id, 0, 0)
            if snap is not None and snap.length == len(chunks):
                break
            await asyncio.sleep(0.01)  # pacing of a bounded poll of the stored length
        assert await self.ctx.has_existing_stream(stream_id) is True

    async def done(self, stream_id: str, *chunks: str) -> None:
        stream = await self.ctx.resumable_stream(stream_id, lambda: iter(chunks))
        assert await read_all(stream) == "".join(chunks)

    async def failed(self, stream_id: str) -> None:
        source = ControlledSource()
        stream = await self.ctx.resumable_stream(stream_id, source)
        source.write("part")
        source.fail(RuntimeError("boom"))
        with pytest.raises(RuntimeError):  # the original reader gets the source's error
            await read_all(stream)
        for _ in range(200):  # the producer writes the end after the reader hears of it
            snap = await self.ctx.backend.snapshot(stream_id, 0, 0)
            if snap is not None and snap.status is StreamStatus.FAILED:
                break
            await asyncio.sleep(0.01)  # pacing of a bounded poll of the stored status

    def close(self) -> None:
        for source in self.sources:
            source.close()


@pytest.fixture
async def streams(ctx: ResumableStreamContext) -> AsyncIterator[Streams]:
    made = Streams(ctx)
    yield made
    made.close()


async def inspect_json(server: RedisServer, prefix: str, stream_id: str) -> dict[str, Any]:
    code, out, err = await cli(
        "inspect", stream_id, "--redis-url", server.url, "--key-prefix", prefix, "--json"
    )
    assert code == 0, err
    result: dict[str, Any] = json.loads(out)
    assert set(result) == KEYS
    return result


async def test_inspect_running(
    redis_server: RedisServer, key_prefix: str, streams: Streams
) -> None:
    await streams.running("r", "héllo", b"\x00\x01")  # 6 + 2 UTF-8 bytes
    info = await inspect_json(redis_server, key_prefix, "r")
    assert info["status"] == "running"
    assert info["chunks"] == 2
    assert info["bytes"] == 8
    assert 0 < info["ttl"] <= TTL
    assert 0 < info["lease"] <= OPTIONS.lease
    assert info["owner"] is None
    code, out, _ = await cli(
        "inspect", "r", "--redis-url", redis_server.url, "--key-prefix", key_prefix
    )
    assert code == 0
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert lines["status"] == "running"
    assert lines["chunks"] == "2"
    assert lines["bytes"] == "8"
    assert lines["owner"] == "-"


async def test_inspect_done(redis_server: RedisServer, key_prefix: str, streams: Streams) -> None:
    await streams.done("d", "one ", "two")
    info = await inspect_json(redis_server, key_prefix, "d")
    assert info == {
        "status": "done", "chunks": 2, "bytes": 7, "ttl": info["ttl"], "lease": None,
        "owner": None,
    }  # fmt: skip
    assert 0 < info["ttl"] <= TTL


async def test_inspect_failed(redis_server: RedisServer, key_prefix: str, streams: Streams) -> None:
    await streams.failed("f")
    info = await inspect_json(redis_server, key_prefix, "f")
    assert info["status"] == "failed"
    assert info["chunks"] == 1
    assert info["lease"] is None
    code, out, _ = await cli(
        "inspect", "f", "--redis-url", redis_server.url, "--key-prefix", key_prefix
    )
    assert code == 0
    assert "boom" in out  # the text form shows the error


async def test_inspect_lost_chunks_reads_failed(
    redis_server: RedisServer, key_prefix: str, streams: Streams, redis_client: aioredis.Redis
) -> None:
    """An ended stream whose chunks were evicted reads as every reader sees it."""
    await streams.done("e", "x", "y")
    await redis_client.delete(stream_keys(key_prefix, "e").chunks)
    info = await inspect_json(redis_server, key_prefix, "e")
    assert (info["status"], info["chunks"], info["bytes"]) == ("failed", 0, 0)


async def test_inspect_unknown_id(redis_server: RedisServer, key_prefix: str) -> None:
    args = ("inspect", "nope", "--redis-url", redis_server.url, "--key-prefix", key_prefix)
    code, out, err = await cli(*args, "--json")
    assert code == 1
    assert json.loads(out) == {"error": "not found", "id": "nope"}
    code, out, err = await cli(*args)
    assert code == 1
    assert out == ""
    assert "no stream 'nope'" in err


async def test_inspect_owner_field(
    redis_server: RedisServer, key_prefix: str, streams: Streams, redis_client: aioredis.Redis
) -> None:
    """The owner ``owner=`` bound the stream to, from the stream's metadata."""
    await streams.running("o")
    packed = msgpack.packb({"http": {}, "owner": "user-7"})
    await redis_client.hset(stream_keys(key_prefix, "o").meta, "info", packed)
    assert (await inspect_json(redis_server, key_prefix, "o"))["owner"] == "user-7"


async def test_odd_id(redis_server: RedisServer, key_prefix: str, streams: Streams) -> None:
    await streams.running(ODD_ID, "日本")
    info = await inspect_json(redis_server, key_prefix, ODD_ID)
    assert (info["status"], info["chunks"], info["bytes"]) == ("running", 1, 6)
    code, out, err = await cli(
        "list", "--redis-url", redis_server.url, "--key-prefix", key_prefix, "--json"
    )
    assert code == 0, err
    assert [s["id"] for s in json.loads(out)["streams"]] == [ODD_ID]


async def test_list_finds_running_streams_only(
    redis_server: RedisServer, key_prefix: str, streams: Streams
) -> None:
    await streams.running("run-1", "a")
    await streams.running("run-2", "b", "c")
    await streams.done("finished", "z")
    await streams.failed("broken")
    args = ("list", "--redis-url", redis_server.url, "--key-prefix", key_prefix)
    code, out, err = await cli(*args, "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert listed["truncated"] is False
    by_id = {s["id"]: s for s in listed["streams"]}
    assert set(by_id) == {"run-1", "run-2"}
    assert (by_id["run-1"]["chunks"], by_id["run-2"]["chunks"]) == (1, 2)
    assert all(0 < s["ttl"] <= TTL and s["lease"] > 0 for s in by_id.values())
    code, out, _ = await cli(*args)
    assert code == 0
    rows = out.splitlines()
    assert rows[0].split() == ["ID", "CHUNKS", "TTL", "LEASE"]
    assert sorted(row.split()[0] for row in rows[1:-1]) == ["run-1", "run-2"]
    assert rows[-1] == "2 running streams"
    code, out, _ = await cli(*args, "--json", "--limit", "1")
    assert code == 0
    one = json.loads(out)
    assert len(one["streams"]) == 1
    assert one["streams"][0]["id"] in by_id


async def test_redis_url_from_the_environment(
    redis_server: RedisServer, key_prefix: str, streams: Streams
) -> None:
    await streams.done("env", "x")
    code, out, err = await cli(
        "inspect", "env", "--key-prefix", key_prefix, "--json",
        env=_env(REDIS_URL=redis_server.url),
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["status"] == "done"


async def test_without_redis_configured() -> None:
    for command in (["inspect", "x"], ["list"]):
        code, _, err = await cli(*command)
        assert code == 2
        assert "no Redis" in err
        assert "REDIS_URL" in err


async def test_redis_unreachable(key_prefix: str) -> None:
    from .servers import free_port

    url = f"redis://user:secret@127.0.0.1:{free_port()}/0"
    code, _, err = await cli("inspect", "x", "--redis-url", url)
    assert code == 2
    assert "error: Redis at" in err
    assert "secret" not in err


async def test_bad_id_and_limit(redis_server: RedisServer) -> None:
    code, _, err = await cli("inspect", "x" * 300, "--redis-url", redis_server.url)
    assert (code, "256" in err) == (2, True)
    code, _, err = await cli("list", "--limit", "0", "--redis-url", redis_server.url)
    assert (code, "--limit" in err) == (2, True)


# -- Redis Cluster: inspect follows the slot, list walks every primary -----------------------


@pytest.fixture
async def cluster_streams(cluster_client: RedisCluster, key_prefix: str) -> AsyncIterator[Streams]:
    context = create_resumable_stream_context(
        RedisClusterBackend(cluster_client, key_prefix=key_prefix), ttl=TTL, options=OPTIONS
    )
    made = Streams(context)
    yield made
    made.close()
    await context.aclose()


def cluster_url(cluster: PrivateCluster) -> str:
    return f"redis://127.0.0.1:{cluster.ports[0]}/0"


def primary_of(client: RedisCluster, prefix: str, stream_id: str) -> str:
    node = client.get_node_from_key(stream_keys(prefix, stream_id).meta)
    assert node is not None
    return str(node.name)


async def ids_on_every_primary(client: RedisCluster, prefix: str, per_primary: int) -> list[str]:
    """Stream ids whose keys land ``per_primary`` times on each primary."""
    await client.initialize()
    primaries = {node.name for node in client.get_primaries()}
    assert len(primaries) == 3
    picked: dict[str, list[str]] = {name: [] for name in primaries}
    for n in range(1000):  # a slot is a hash: each primary gets a third of the ids
        stream_id = f"c{n}"
        taken = picked[primary_of(client, prefix, stream_id)]
        if len(taken) < per_primary:
            taken.append(stream_id)
        if all(len(ids) == per_primary for ids in picked.values()):
            return [i for ids in picked.values() for i in ids]
    raise AssertionError("ids did not spread over the primaries")


async def test_cluster_list_walks_every_primary(
    redis_cluster: PrivateCluster,
    cluster_client: RedisCluster,
    key_prefix: str,
    cluster_streams: Streams,
) -> None:
    running = await ids_on_every_primary(cluster_client, key_prefix, 2)
    for n, stream_id in enumerate(running):
        await cluster_streams.running(stream_id, *("x" * (n + 1)))
    await cluster_streams.done("finished", "z")
    await cluster_streams.failed("broken")
    url = cluster_url(redis_cluster)
    args = ("list", "--redis-url", url, "--key-prefix", key_prefix, "--json")
    for extra in ((), ("--cluster",)):  # found by asking the node, and forced
        code, out, err = await cli(*args, *extra)
        assert code == 0, err
        listed = json.loads(out)
        assert listed["truncated"] is False
        by_id = {s["id"]: s for s in listed["streams"]}
        assert set(by_id) == set(running)
        assert [by_id[i]["chunks"] for i in running] == list(range(1, len(running) + 1))
        assert all(0 < s["ttl"] <= TTL and s["lease"] > 0 for s in by_id.values())
    code, out, err = await cli(*args, "--limit", "2")
    assert code == 0, err
    two = json.loads(out)
    assert (len(two["streams"]), two["truncated"]) == (2, True)
    assert {s["id"] for s in two["streams"]} <= set(running)


async def test_cluster_list_bounds_scans_across_primaries(
    cluster_client: RedisCluster, key_prefix: str, cluster_streams: Streams
) -> None:
    running = await ids_on_every_primary(cluster_client, key_prefix, 1)
    for stream_id in running:
        await cluster_streams.running(stream_id, "a")
    # One SCAN call per primary at the least: with fewer the walk stops, and says so.
    found, truncated = await list_streams(cluster_client, key_prefix, max_scans=2)
    assert truncated is True
    assert {s["id"] for s in found} < set(running)
    found, truncated = await list_streams(cluster_client, key_prefix)
    assert truncated is False
    assert {s["id"] for s in found} == set(running)


async def test_cluster_inspect_follows_the_slot(
    redis_cluster: PrivateCluster,
    cluster_client: RedisCluster,
    key_prefix: str,
    cluster_streams: Streams,
) -> None:
    ids = await ids_on_every_primary(cluster_client, key_prefix, 1)
    await cluster_streams.running(ids[0], "héllo")
    await cluster_streams.done(ids[1], "one ", "two")
    await cluster_streams.failed(ids[2])
    url = cluster_url(redis_cluster)

    async def inspect(stream_id: str, *extra: str) -> tuple[int, dict[str, Any]]:
        code, out, err = await cli(
            "inspect", stream_id, "--redis-url", url, "--key-prefix", key_prefix, "--json",
            *extra,
        )  # fmt: skip
        assert code in (0, 1), err
        return code, json.loads(out)

    for extra in ((), ("--cluster",)):
        code, info = await inspect(ids[0], *extra)
        assert code == 0
        assert (info["status"], info["chunks"], info["bytes"]) == ("running", 1, 6)
        assert 0 < info["lease"] <= OPTIONS.lease
        code, info = await inspect(ids[1], *extra)
        assert (code, info["status"], info["chunks"], info["bytes"]) == (0, "done", 2, 7)
        assert info["lease"] is None
        code, info = await inspect(ids[2], *extra)
        assert (code, info["status"], info["chunks"]) == (0, "failed", 1)
        assert await inspect("nope", *extra) == (1, {"error": "not found", "id": "nope"})


async def test_cluster_flag_on_a_plain_server(redis_server: RedisServer, key_prefix: str) -> None:
    """``--cluster`` against a server that is no cluster: a clear error, exit 2."""
    code, out, err = await cli(
        "list", "--redis-url", redis_server.url, "--key-prefix", key_prefix, "--cluster"
    )
    assert code == 2
    assert out == ""
    assert "error: Redis at" in err
