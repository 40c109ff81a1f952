from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from resumable_stream import (
    Backend,
    MemoryBackend,
    ResumableStreamContext,
    StreamOptions,
    create_resumable_stream_context,
)
from resumable_stream.backends.cluster import RedisClusterBackend
from resumable_stream.backends.redis import RedisBackend

from .cluster_servers import PrivateCluster, PrivateSentinels
from .servers import RedisServer
from .upstash_standin import UpstashStandin

# Short lease and poll so that failure paths finish in about a second.
FAST = StreamOptions(lease=1.0, poll_interval=0.25, shutdown_grace=2.0)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server for the session; tests use a fresh key prefix each."""
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server for one test only, which the test may stop."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_factory() -> Iterator[list[RedisServer]]:
    """Private redis-servers with options of the test's choosing (`start` them), stopped
    at the end of the test."""
    servers: list[RedisServer] = []
    yield servers
    for server in servers:
        server.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[PrivateCluster]:
    """A private 3-master, 3-replica Redis Cluster for the session (about 8 s to form).

    Tests that fail over or migrate slots leave it healthy, with other masters."""
    cluster = PrivateCluster()
    cluster.start()
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def redis_sentinels() -> Iterator[PrivateSentinels]:
    """A private primary, its replica and three sentinels for the session."""
    sentinels = PrivateSentinels()
    sentinels.start()
    yield sentinels
    sentinels.close()


@pytest.fixture(scope="session")
def upstash_standin(redis_server: RedisServer) -> Iterator[UpstashStandin]:
    """Upstash's REST API on loopback, over the session's redis-server."""
    standin = UpstashStandin(redis_server.port)
    standin.start()
    yield standin
    standin.close()


@pytest.fixture
async def cluster_client(redis_cluster: PrivateCluster) -> AsyncIterator[RedisCluster]:
    client = RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0])
    yield client
    await client.aclose()


@pytest.fixture
def key_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture(params=["memory", "fakeredis", "redis", "cluster", "upstash"])
async def backend(
    request: pytest.FixtureRequest, key_prefix: str
) -> AsyncIterator[Backend]:
    """Every contract test runs over each backend."""
    client: aioredis.Redis | RedisCluster | None = None
    if request.param == "memory":
        made: Backend = MemoryBackend()
    elif request.param == "fakeredis":
        import fakeredis

        client = fakeredis.FakeAsyncRedis()
        made = RedisBackend(client, key_prefix=key_prefix)
    elif request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        client = aioredis.Redis.from_url(server.url)
        made = RedisBackend(client, key_prefix=key_prefix)
    elif request.param == "upstash":
        from resumable_stream.backends.upstash import UpstashBackend

        standin: UpstashStandin = request.getfixturevalue("upstash_standin")
        made = UpstashBackend(standin.url, standin.token, key_prefix=key_prefix)
    else:
        cluster: PrivateCluster = request.getfixturevalue("redis_cluster")
        client = RedisCluster(host="127.0.0.1", port=cluster.ports[0])
        made = RedisClusterBackend(client, key_prefix=key_prefix)
    yield made
    await made.aclose()
    if client is not None:
        await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def memory_or_redis(
    request: pytest.FixtureRequest, key_prefix: str
) -> AsyncIterator[Backend]:
    """The in-memory backend, then Redis on the private server: for test modules that
    take their ``backend`` from it instead of all five."""
    client: aioredis.Redis | None = None
    if request.param == "memory":
        made: Backend = MemoryBackend()
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        client = aioredis.Redis.from_url(server.url)
        made = RedisBackend(client, key_prefix=key_prefix)
    yield made
    await made.aclose()
    if client is not None:
        await client.aclose()


@pytest.fixture
async def ctx(backend: Backend) -> AsyncIterator[ResumableStreamContext]:
    context = create_resumable_stream_context(backend, options=FAST)
    yield context
    await context.aclose()
