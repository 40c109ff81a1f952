from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from resumable_stream import (
    Backend,
    MemoryBackend,
    ResumableStreamContext,
    StreamOptions,
    create_resumable_stream_context,
)
from resumable_stream.backends.redis import RedisBackend

from .servers import RedisServer

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
def key_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture(params=["memory", "fakeredis", "redis"])
async def backend(
    request: pytest.FixtureRequest, key_prefix: str
) -> AsyncIterator[Backend]:
    """Every contract test runs over each backend."""
    client: aioredis.Redis | None = None
    if request.param == "memory":
        made: Backend = MemoryBackend()
    elif request.param == "fakeredis":
        import fakeredis

        client = fakeredis.FakeAsyncRedis()
        made = RedisBackend(client, key_prefix=key_prefix)
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
