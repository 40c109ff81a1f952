"""A per-stream ``ttl=`` overrides the context's for that stream (issue 20).

It must reach every place a stream's expiry is set: the claim, the producer's writes
(each renews the expiry) and the release of a claim whose source failed to open.
On Redis that is what ``PTTL`` shows; on memory the stream is gone after it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from resumable_stream import (
    InvalidArgument,
    MemoryBackend,
    ResumableStreamContext,
    StreamOptions,
    create_resumable_stream_context,
)
from resumable_stream.backends._wire import stream_keys
from resumable_stream.backends.redis import RedisBackend

from .helpers import ControlledSource, read_all, read_n

# A short lease: the producer renews the stream's expiry every lease / 3 while idle.
OPTIONS = StreamOptions(lease=0.6, poll_interval=0.2, shutdown_grace=2.0)
CONTEXT_TTL = 3600.0
STREAM_TTL = 30.0


@pytest.fixture
async def redis_ctx(
    redis_client: aioredis.Redis, key_prefix: str
) -> AsyncIterator[ResumableStreamContext]:
    ctx = create_resumable_stream_context(
        RedisBackend(redis_client, key_prefix=key_prefix), ttl=CONTEXT_TTL, options=OPTIONS
    )
    yield ctx
    await ctx.aclose()


async def test_running_stream_keeps_its_own_ttl_on_redis(
    redis_ctx: ResumableStreamContext, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    source = ControlledSource()
    stream = await redis_ctx.resumable_stream("t1", source, ttl=STREAM_TTL)
    source.write("a")
    assert await read_n(stream, 1) == "a"
    meta = stream_keys(key_prefix, "t1").meta
    # Watch PTTL until the producer renews the expiry (PTTL rises again), so that the
    # renewing writes are checked too, not only the claim and the first write.
    seen: list[int] = []
    deadline = time.monotonic() + 5.0
    renewed = False
    while not renewed and time.monotonic() < deadline:
        pttl = await redis_client.pttl(meta)
        renewed = bool(seen) and pttl > seen[-1]
        seen.append(pttl)
        await asyncio.sleep(0.02)  # pacing of a bounded poll; there is no event to await
    assert renewed, f"no renewal seen in 5 s: {seen[:5]}...{seen[-5:]}"
    assert all(0 < p <= STREAM_TTL * 1000 for p in seen), (min(seen), max(seen))
    assert await redis_client.pttl(stream_keys(key_prefix, "t1").chunks) <= STREAM_TTL * 1000
    source.close()
    assert await read_all(stream) == ""


async def test_created_stream_ends_with_its_own_ttl_on_redis(
    redis_ctx: ResumableStreamContext, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    stream = await redis_ctx.create_new_resumable_stream("t2", lambda: iter(["x"]), ttl=7)
    assert await read_all(stream) == "x"
    keys = stream_keys(key_prefix, "t2")
    assert 0 < await redis_client.pttl(keys.meta) <= 7000
    assert 0 < await redis_client.pttl(keys.chunks) <= 7000


async def test_released_claim_keeps_the_stream_ttl_on_redis(
    redis_ctx: ResumableStreamContext, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    with pytest.raises(TypeError):
        await redis_ctx.resumable_stream("t3", lambda: 42, ttl=STREAM_TTL)
    pttl = await redis_client.pttl(stream_keys(key_prefix, "t3").meta)
    assert 0 < pttl <= STREAM_TTL * 1000


async def test_context_ttl_still_applies_without_the_argument(
    redis_ctx: ResumableStreamContext, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    stream = await redis_ctx.resumable_stream("t4", lambda: iter(["y"]))
    assert await read_all(stream) == "y"
    assert await redis_client.pttl(stream_keys(key_prefix, "t4").meta) > STREAM_TTL * 1000


@pytest.mark.parametrize("create", [True, False])
async def test_stream_expires_after_its_ttl_on_memory(create: bool) -> None:
    async with ResumableStreamContext(MemoryBackend(), ttl=CONTEXT_TTL, options=OPTIONS) as ctx:
        started = time.monotonic()
        if create:
            stream = await ctx.create_new_resumable_stream("m", lambda: iter(["z"]), ttl=0.5)
        else:
            stream = await ctx.resumable_stream("m", lambda: iter(["z"]), ttl=0.5)
        assert await read_all(stream) == "z"
        assert await ctx.has_existing_stream("m") == "DONE"
        deadline = started + 5.0
        while await ctx.get_status("m") is not None and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # pacing of a bounded poll of an expiry
        assert await ctx.get_status("m") is None, "still there 5 s after a ttl of 0.5 s"
        assert time.monotonic() - started >= 0.5


@pytest.mark.parametrize("bad", [0, -1, 0.0, float("nan"), float("inf"), True, "10", [10]])
async def test_bad_ttl_is_refused(bad: object) -> None:
    source = ControlledSource()
    async with ResumableStreamContext(MemoryBackend(), options=OPTIONS) as ctx:
        with pytest.raises(InvalidArgument):
            await ctx.resumable_stream("b", source, ttl=bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            await ctx.create_new_resumable_stream("b", source, ttl=bad)  # type: ignore[arg-type]
        assert source.started == 0
        assert await ctx.get_status("b") is None
