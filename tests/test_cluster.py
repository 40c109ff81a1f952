"""Redis Cluster: a private 3-master, 3-replica cluster on loopback (``redis_cluster``).

The contract suites (test_contract.py, test_core.py) also run over the cluster backend;
this file covers what only a cluster shows: keys spread over the masters, one
pub/sub connection per master, sharded announcements only, and streams that keep
going while their slot fails over or migrates.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from functools import partial

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from resumable_stream import (
    ResumableStreamContext,
    StreamOptions,
    create_resumable_stream_context,
)
from resumable_stream._keys import StreamKeys
from resumable_stream.backends.cluster import RedisClusterBackend

from . import helpers
from .cluster_servers import PrivateCluster
from .conftest import FAST
from .helpers import (
    ControlledSource,
    assert_promise,
    check_binary_and_text_chunks,
    disrupted_stream,
    read_all,
    read_n,
)

# The producer retries a write for retry_window: long enough to outlast a failover.
PRODUCER = StreamOptions(lease=10.0, retry_window=10.0, poll_interval=0.25, shutdown_grace=5.0)
# Followers that never poll: only the re-subscription after a slot move can wake them.
NO_POLL = StreamOptions(lease=10.0, retry_window=10.0, poll_interval=60.0, shutdown_grace=5.0)
# About 5.5 s at 5 ms a chunk: the failover (about 1 s, more under load) falls in the
# second half.
TOTAL = 1000


def new_client(cluster: PrivateCluster) -> RedisCluster:
    return RedisCluster(host="127.0.0.1", port=cluster.ports[0])


@pytest.fixture
async def two_processes(
    redis_cluster: PrivateCluster, key_prefix: str
) -> AsyncIterator[tuple[ResumableStreamContext, ResumableStreamContext]]:
    async with helpers.two_processes(
        partial(new_client, redis_cluster), key_prefix, PRODUCER, NO_POLL
    ) as contexts:
        yield contexts


def slot_of(prefix: str, stream_id: str) -> int:
    return key_slot(StreamKeys(prefix, stream_id).meta.encode())


async def test_streams_spread_over_every_master_one_slot_each_every_key_expiring(
    redis_cluster: PrivateCluster, cluster_client: RedisCluster, key_prefix: str
) -> None:
    ctx = create_resumable_stream_context(cluster_client, key_prefix=key_prefix, options=FAST)
    ids = [f"s{i}" for i in range(48)]
    running = ControlledSource()
    await ctx.resumable_stream("running", running)
    running.write("x")

    async def one(stream_id: str) -> str:
        stream = await ctx.resumable_stream(stream_id, partial(iter, [stream_id, "!"]))
        return await read_all(stream)

    assert await asyncio.gather(*map(one, ids)) == [f"{i}!" for i in ids]  # all at once
    follower = await ctx.resume_existing_stream("running")
    assert await read_n(follower, 1) == "x"  # stored by now

    keys: dict[int, list[bytes]] = {}
    for node in cluster_client.get_primaries():
        async for key in cluster_client.scan_iter(match=f"{key_prefix}:*", target_nodes=node):
            keys.setdefault(int(node.port), []).append(key)
            assert await cluster_client.pttl(key) > 0, key
    assert set(keys) == set(redis_cluster.masters()), "a master holds no stream"
    by_stream: dict[bytes, set[int]] = {}
    for port, names in keys.items():
        for name in names:
            by_stream.setdefault(name.split(b"}")[0], set()).add(key_slot(name))
            assert redis_cluster.owner(key_slot(name)) == port
    assert len(by_stream) == len(ids) + 1
    assert all(len(slots) == 1 for slots in by_stream.values())
    running.close()
    assert await read_all(follower) == ""
    await ctx.aclose()


async def test_one_pubsub_connection_per_master_for_many_readers(
    redis_cluster: PrivateCluster, cluster_client: RedisCluster, key_prefix: str
) -> None:
    backend = RedisClusterBackend(cluster_client, key_prefix=key_prefix)
    ctx = create_resumable_stream_context(backend, options=FAST)
    # The followers run in another process; the producers' own are fed by them.
    reading = RedisClusterBackend(cluster_client, key_prefix=key_prefix)
    elsewhere = create_resumable_stream_context(reading, options=FAST)
    sources = [ControlledSource() for _ in range(12)]
    originals = [await ctx.resumable_stream(f"s{i}", src) for i, src in enumerate(sources)]
    followers = await asyncio.gather(
        *(elsewhere.resume_existing_stream(f"s{i % 12}") for i in range(120))
    )
    local = await asyncio.gather(*(ctx.resume_existing_stream(f"s{i}") for i in range(12)))
    masters = {slot_of(key_prefix, f"s{i}") for i in range(12)}
    assert len({redis_cluster.owner(slot) for slot in masters}) == 3  # streams on every master
    assert reading._hub.connections == 3
    assert backend._hub.connections == 0
    for port in redis_cluster.masters():
        info = await cluster_client.get_node(host="127.0.0.1", port=port).execute_command(  # type: ignore[union-attr]
            "CLIENT", "LIST", "TYPE", "pubsub"
        )
        text = info.decode() if isinstance(info, bytes) else str(info)
        sharded = [line for line in text.splitlines() if " ssub=0" not in line and "ssub=" in line]
        assert len(sharded) == 1, text
    for i, src in enumerate(sources):
        src.write(f"chunk{i}")
        src.close()
    results = await asyncio.gather(*(read_all(f) for f in followers))
    assert results == [f"chunk{i % 12}" for i in range(120)]
    assert [await read_all(o) for o in originals] == [f"chunk{i}" for i in range(12)]
    assert [await read_all(f) for f in local] == [f"chunk{i}" for i in range(12)]
    await elsewhere.aclose()
    await ctx.aclose()


async def test_failover_of_the_streams_master_mid_stream(
    redis_cluster: PrivateCluster,
    two_processes: tuple[ResumableStreamContext, ResumableStreamContext],
    key_prefix: str,
) -> None:
    producer, follower = two_processes
    master = redis_cluster.owner(slot_of(key_prefix, "fo"))
    replica = redis_cluster.replica_of(master)
    origin, followers = await disrupted_stream(
        producer, follower, "fo", lambda: redis_cluster.failover(replica), total=TOTAL
    )
    assert redis_cluster.owner(slot_of(key_prefix, "fo")) == replica
    # A manual failover loses nothing: the followers that never poll got it all live.
    assert_promise(origin, followers, TOTAL, lossless=True)


async def test_slot_migration_of_a_running_stream(
    redis_cluster: PrivateCluster,
    two_processes: tuple[ResumableStreamContext, ResumableStreamContext],
    key_prefix: str,
) -> None:
    producer, follower = two_processes
    slot = slot_of(key_prefix, "mig")
    target = next(port for port in redis_cluster.masters() if port != redis_cluster.owner(slot))

    def migrate() -> None:
        # Hold the window in which the keys live on the target while the source
        # still owns the slot: writes then run on the target (ASK) and announce there,
        # not to the subscribers on the source. It is the operator's pace, not a wait.
        redis_cluster.migrate_slot(slot, target, before_final=lambda: time.sleep(0.3))

    origin, followers = await disrupted_stream(producer, follower, "mig", migrate, total=TOTAL)
    assert redis_cluster.owner(slot) == target
    assert_promise(origin, followers, TOTAL, lossless=True)


async def test_no_classic_publish_anywhere_on_the_cluster(
    redis_cluster: PrivateCluster, cluster_client: RedisCluster, key_prefix: str
) -> None:
    ctx = create_resumable_stream_context(cluster_client, key_prefix=key_prefix, options=FAST)
    for i in range(12):
        stream = await ctx.resumable_stream(f"s{i}", lambda: iter(["a", "b"]))
        follower = await ctx.resume_existing_stream(f"s{i}", after=-1)
        assert await read_all(stream) == "ab"
        assert await read_all(follower) == "ab"
    await ctx.aclose()
    stats = redis_cluster.commandstats()
    assert all("publish" not in calls for calls in stats.values()), stats
    assert sum(calls.get("spublish", 0) for calls in stats.values()) > 0
    assert all("subscribe" not in calls for calls in stats.values())


async def test_a_client_that_decodes_responses(
    redis_cluster: PrivateCluster, key_prefix: str
) -> None:
    client = RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0], decode_responses=True)
    await check_binary_and_text_chunks(client, key_prefix)
    await client.aclose()


def test_cluster_backend_refuses_a_single_server_client() -> None:
    import redis.asyncio as aioredis

    with pytest.raises(TypeError, match="RedisCluster"):
        RedisClusterBackend(aioredis.Redis())  # type: ignore[arg-type]
