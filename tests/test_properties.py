"""Exactly-once delivery whatever the interleaving of writes, joins and reads."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import fakeredis
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resumable_stream import (
    Backend,
    IndexedChunk,
    MemoryBackend,
    ResumableStream,
    create_resumable_stream_context,
)
from resumable_stream.backends.redis import RedisBackend

from .conftest import FAST
from .helpers import ControlledSource
from .servers import RedisServer

BACKENDS = ["memory", "fakeredis", "redis"]


Closer = Callable[[], Awaitable[None]]


async def make_backend(kind: str, server: RedisServer) -> tuple[Backend, Closer]:
    if kind == "memory":
        backend: Backend = MemoryBackend()
        return backend, backend.aclose
    if kind == "fakeredis":
        client = fakeredis.FakeAsyncRedis()
    else:
        client = aioredis.Redis.from_url(server.url)
    backend = RedisBackend(client, key_prefix=f"prop-{uuid.uuid4().hex[:10]}")

    async def close() -> None:
        await backend.aclose()
        await client.aclose()

    return backend, close


class Reader:
    def __init__(self, stream: ResumableStream, expected_start: int, skip: int) -> None:
        self.stream = stream
        self.items: list[IndexedChunk] = []
        self.expected_start = expected_start
        self.skip = skip
        self._it = stream.indexed()
        self.finished = False

    async def read(self, n: int) -> None:
        for _ in range(n):
            if self.finished:
                return
            try:
                self.items.append(await asyncio.wait_for(self._it.__anext__(), 10))
            except StopAsyncIteration:
                self.finished = True

    async def read_rest(self) -> None:
        while not self.finished:
            await self.read(100)


write = st.tuples(st.just("write"), st.text(max_size=4))
join = st.tuples(st.just("join"), st.integers(0, 12), st.booleans())
read = st.tuples(st.just("read"), st.integers(0, 7), st.integers(1, 4))
tick = st.tuples(st.just("tick"), st.integers(0, 3))
operations = st.lists(st.one_of(write, write, join, read, tick), max_size=40)


async def run_scenario(kind: str, server: RedisServer, ops: list[tuple]) -> None:  # type: ignore[type-arg]
    backend, close = await make_backend(kind, server)
    ctx = create_resumable_stream_context(backend, options=FAST)
    source = ControlledSource()
    chunks: list[str] = []
    try:
        original = await ctx.resumable_stream("p", source)
        assert original is not None
        readers = [Reader(original, 0, 0)]
        for op in ops:
            if op[0] == "write":
                chunks.append(op[1])
                source.write(op[1])
            elif op[0] == "join":
                _, n, by_index = op
                if by_index:
                    # A client that got chunks up to `after` (any index seen so far).
                    after = min(n, len(chunks)) - 1
                    stream = await ctx.resume_existing_stream("p", after=after)
                    assert stream is not None
                    readers.append(Reader(stream, after + 1, 0))
                else:
                    stream = await ctx.resumable_stream("p", source, n)
                    assert stream is not None
                    readers.append(Reader(stream, 0, n))
            elif op[0] == "read":
                reader = readers[op[1] % len(readers)]
                # Never wait on a chunk that was not written yet.
                available = len(chunks) - reader.expected_start - len(reader.items)
                await reader.read(max(0, min(op[2], available)) if reader.skip == 0 else 0)
            else:
                await asyncio.sleep(op[1] / 1000)
        source.close()
        await asyncio.wait_for(asyncio.gather(*(r.read_rest() for r in readers)), 20)
        full = "".join(chunks)
        for reader in readers:
            indices = [i for i, _ in reader.items]
            text = "".join(c for _, c in reader.items)  # type: ignore[misc]
            if reader.skip:
                assert text == full[reader.skip :]
                assert indices == sorted(set(indices))
            else:
                assert indices == list(range(reader.expected_start, len(chunks)))
                assert text == "".join(chunks[reader.expected_start :])
    finally:
        await ctx.aclose()
        await close()


@pytest.mark.parametrize("kind", BACKENDS)
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=operations)
def test_any_interleaving_delivers_exactly_once(
    kind: str, redis_server: RedisServer, ops: list[tuple]  # type: ignore[type-arg]
) -> None:
    asyncio.run(run_scenario(kind, redis_server, ops))


@pytest.mark.parametrize("kind", BACKENDS)
async def test_twenty_readers_join_a_fast_producer(kind: str, redis_server: RedisServer) -> None:
    backend, close = await make_backend(kind, redis_server)
    ctx = create_resumable_stream_context(backend, options=FAST)
    total = 5000
    rng = random.Random(1234)
    join_at = sorted(rng.randrange(total) for _ in range(20))
    reached = {i: asyncio.Event() for i in join_at}
    # Joiners at one index all join before the producer goes on: they join a running
    # stream (once it ends, a plain join returns None, as the npm package does).
    pending = {i: join_at.count(i) for i in join_at}
    joined = {i: asyncio.Event() for i in join_at}
    expected = "".join(f"<{i}>" for i in range(total))

    async def producer() -> AsyncIterator[str]:
        for i in range(total):
            yield f"<{i}>"
            if i in reached:
                reached[i].set()
                await joined[i].wait()
            if i % 50 == 0:
                await asyncio.sleep(0)  # let joiners and the writer in

    async def joiner(at: int, how: int) -> str:
        await reached[at].wait()
        if how == 0:
            stream = await ctx.resumable_stream("fast", producer)
        else:
            stream = await ctx.resume_existing_stream("fast")
        pending[at] -= 1
        if not pending[at]:
            joined[at].set()
        assert stream is not None
        return "".join([c async for c in stream])  # type: ignore[misc]

    try:
        original = await ctx.resumable_stream("fast", producer)
        assert original is not None
        results = await asyncio.wait_for(
            asyncio.gather(
                *(joiner(at, n % 2) for n, at in enumerate(join_at)),
                _read(original),
            ),
            60,
        )
        assert len(results) == 21
        assert all(r == expected for r in results)
    finally:
        await ctx.aclose()
        await close()


async def _read(stream: ResumableStream) -> str:
    return "".join([c async for c in stream])  # type: ignore[misc]
