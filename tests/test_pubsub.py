"""The pub/sub hub on real servers: lost subscriptions are repaired or fail typed."""

from __future__ import annotations

import asyncio

import msgpack
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from resumable_stream import BackendUnavailable
from resumable_stream._types import Appended, Resync
from resumable_stream.backends._pubsub import PubSubHub
from resumable_stream.backends.cluster import _ShardRouter
from resumable_stream.backends.redis import _ServerRouter, decode_event

from .cluster_servers import PrivateCluster
from .servers import RedisServer

BUDGET = 1 << 20


def appended(start: int, chunk: str) -> bytes:
    """A message as write.lua announces it."""
    return msgpack.packb(0) + msgpack.packb(start) + msgpack.packb(chunk)


async def test_a_server_back_within_the_repair_time_resyncs_readers(
    own_redis: RedisServer,
) -> None:
    client = aioredis.Redis.from_url(own_redis.url)
    hub = PubSubHub(_ServerRouter(client), decode_event, repair_timeout=20.0)
    sub = await hub.subscribe("ch", BUDGET)
    await asyncio.to_thread(own_redis.stop)
    await asyncio.to_thread(own_redis.start)
    assert isinstance(await asyncio.wait_for(sub.get(None), 15), Resync)
    await client.publish("ch", appended(3, "x"))
    assert await asyncio.wait_for(sub.get(None), 5) == Appended(3, ("x",))
    assert hub.connections == 1
    await sub.aclose()
    await hub.aclose()
    await client.aclose()


async def test_a_channel_that_cannot_be_repaired_fails_its_readers(
    own_redis: RedisServer,
) -> None:
    client = aioredis.Redis.from_url(own_redis.url)
    hub = PubSubHub(_ServerRouter(client), decode_event, repair_timeout=0.5)
    subs = [await hub.subscribe("ch", BUDGET) for _ in range(3)]
    await asyncio.to_thread(own_redis.stop)
    for sub in subs:
        with pytest.raises(BackendUnavailable, match="not restored"):
            await asyncio.wait_for(sub.get(None), 10)
    with pytest.raises(BackendUnavailable):  # and a new reader is refused at once
        await hub.subscribe("ch", BUDGET)
    await hub.aclose()
    await client.aclose()


class WrongFirst(_ShardRouter):
    """Names a wrong master for the first channel it is asked about."""

    def __init__(self, cluster: RedisCluster) -> None:
        super().__init__(cluster)
        self.lied = False

    async def locate(self, channel: bytes) -> str:
        right = await super().locate(channel)
        if self.lied:
            return right
        self.lied = True
        return next(n.name for n in self._cluster.get_primaries() if n.name != right)


async def test_moved_reply_to_ssubscribe_subscribes_on_the_owner(
    redis_cluster: PrivateCluster, cluster_client: RedisCluster
) -> None:
    await cluster_client.initialize()
    router = WrongFirst(cluster_client)
    hub = PubSubHub(router, decode_event)
    sub = await asyncio.wait_for(hub.subscribe("x:{moved}:events", BUDGET), 15)
    assert router.lied
    await cluster_client.execute_command("SPUBLISH", "x:{moved}:events", appended(0, "a"))
    assert await asyncio.wait_for(sub.get(None), 5) == Appended(0, ("a",))
    await sub.aclose()
    await hub.aclose()


async def test_killed_sharded_connections_are_repaired_with_a_resync_each(
    redis_cluster: PrivateCluster, cluster_client: RedisCluster
) -> None:
    await cluster_client.initialize()
    hub = PubSubHub(_ShardRouter(cluster_client), decode_event)
    names = [f"x:{{k{i}}}:events" for i in range(30)]
    subs = [await hub.subscribe(name, BUDGET) for name in names]
    assert hub.connections == 3
    for node in cluster_client.get_primaries():
        await node.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    for sub in subs:
        assert isinstance(await asyncio.wait_for(sub.get(None), 15), Resync)
    for i, name in enumerate(names):
        await cluster_client.execute_command("SPUBLISH", name, appended(i, name))
    for i, (sub, name) in enumerate(zip(subs, names, strict=True)):
        assert await asyncio.wait_for(sub.get(None), 5) == Appended(i, (name,))
    assert hub.connections == 3
    for sub in subs:
        await sub.aclose()
    await hub.aclose()
