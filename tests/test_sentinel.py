"""Sentinel: a private primary, its replica and three sentinels on loopback.

The client is redis-py's ``Sentinel(...).master_for(...)``; the backend is the plain
Redis backend, whose pub/sub connection asks the sentinels for the primary whenever
it connects.
"""

from __future__ import annotations

from functools import partial

import pytest
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel

from resumable_stream import (
    StreamOptions,
)

from . import helpers
from .cluster_servers import PrivateSentinels, config_set
from .helpers import assert_promise, check_binary_and_text_chunks, disrupted_stream

# The producer retries a write for retry_window = 15 s: longer than the sentinels take
# to demote the old primary (about 1 s at the fixture's INFO period) and resync it,
# after which a new primary with min-replicas-to-write takes writes again.
PATIENT = StreamOptions(lease=20.0, retry_window=15.0, poll_interval=0.25, shutdown_grace=5.0)
FOLLOWER = StreamOptions(lease=20.0, retry_window=15.0, poll_interval=1.0, shutdown_grace=5.0)
# About 11 s at 5 ms a chunk; the failover (about 3 s, more under load) starts after
# the first quarter.
TOTAL = 2000


def primary_client(
    sentinels: PrivateSentinels, *, decode_responses: bool = False
) -> aioredis.Redis:
    manager = Sentinel(sentinels.addresses, socket_timeout=5.0)  # type: ignore[no-untyped-call]
    client: aioredis.Redis = manager.master_for(
        sentinels.service, socket_timeout=5.0, decode_responses=decode_responses
    )
    return client


@pytest.mark.parametrize("decode_responses", [False, True])
async def test_a_sentinel_managed_client(
    redis_sentinels: PrivateSentinels, key_prefix: str, decode_responses: bool
) -> None:
    client = primary_client(redis_sentinels, decode_responses=decode_responses)
    await check_binary_and_text_chunks(client, key_prefix)
    await client.aclose()


@pytest.mark.parametrize("min_replicas", [False, True], ids=["default", "min-replicas"])
async def test_sentinel_failover_mid_stream(
    redis_sentinels: PrivateSentinels,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
    min_replicas: bool,
) -> None:
    # Replication is asynchronous: writes the old primary acknowledged and its replica
    # had not received when it was promoted are lost, and with default settings so
    # is everything written until the sentinels demote the old primary (about 1 s
    # here, up to 10 s with their default INFO period). The producer's next write
    # then starts beyond the stored list and is refused, so nobody reads a hole:
    # followers end with a typed error after a clean prefix.
    # With min-replicas-to-write the old primary refuses writes (NOREPLICAS) as soon
    # as its replica leaves; the producer retries them until they reach the new
    # primary (which takes writes once the old one has resynced as its replica), and
    # usually nothing is lost.
    servers = (redis_sentinels.primary.port, redis_sentinels.replica.port)
    if min_replicas:
        for port in servers:
            config_set(port, "min-replicas-to-write", "1", "min-replicas-max-lag", "10")
    old = redis_sentinels.primary_port()
    try:
        async with helpers.two_processes(
            partial(primary_client, redis_sentinels), key_prefix, PATIENT, FOLLOWER
        ) as (producer, follower):
            origin, followers = await disrupted_stream(
                producer, follower, "fo", redis_sentinels.failover,
                total=TOTAL, at=0.25, budget=60.0,
            )
    finally:
        for port in servers:
            config_set(port, "min-replicas-to-write", "0")
    assert redis_sentinels.primary_port() != old
    assert_promise(origin, followers, TOTAL)
    messages = [r.getMessage() for r in caplog.records]
    # The pub/sub connection followed the primary.
    assert any("pub/sub connection" in m for m in messages), messages
    # A refused write (NOREPLICAS) was retried, never a reason to give up.
    assert not any("NOREPLICAS" in m for m in messages), messages
