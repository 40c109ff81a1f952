"""Reader faults of issue 16: cancelled reads (8), readers dropped unread (7), and the
smaller findings: the original reader on storage keeps the stall protection followers
have, a failed resubscribe after a `Resync` is retried, budgets count UTF-8 bytes."""

from __future__ import annotations

import asyncio
import gc
import random
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from resumable_stream import (
    Backend,
    BackendUnavailable,
    IndexedChunk,
    MemoryBackend,
    ResumableStream,
    StreamOptions,
    StreamStatus,
    create_resumable_stream_context,
)
from resumable_stream._subscription import RESYNC, Subscription, _releasing
from resumable_stream._types import Appended

from .helpers import ControlledSource, read_all
from .servers import RedisServer

pytestmark = pytest.mark.timeout(60)

STEP = 10.0  # seconds any one wait of these tests may take at most
OPTIONS = StreamOptions(lease=1.0, poll_interval=0.05, shutdown_grace=2.0)


@pytest.fixture
def backend(memory_or_redis: Backend) -> Backend:
    return memory_or_redis


def text(i: int) -> str:
    return f"{i:04d}|"


async def read_impatiently(
    stream: ResumableStream, rng: random.Random, *, indexed: bool
) -> list[IndexedChunk]:
    """Every read under a tiny timeout, as a keep-alive timer would; retried."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STEP
    iterator = stream.indexed() if indexed else stream
    items: list[IndexedChunk] = []
    timeouts = 0
    while True:
        assert loop.time() < deadline, f"stuck after {len(items)} chunks"
        try:
            got = await asyncio.wait_for(
                iterator.__anext__(), rng.choice([0.0002, 0.0005, 0.001, 0.003])
            )
        except TimeoutError:
            timeouts += 1
            continue
        except StopAsyncIteration:
            assert timeouts > 0, "no read was cancelled: the test tested nothing"
            return items
        if indexed:
            assert isinstance(got, IndexedChunk)
            items.append(got)
        else:
            assert stream.last_index is not None
            items.append(IndexedChunk(stream.last_index, got))


# -- fault 8: a cancelled read can end a stream silently --------------------------------


@pytest.mark.parametrize("indexed", [False, True], ids=["anext", "indexed"])
async def test_cancelled_reads_lose_nothing(backend: Backend, indexed: bool) -> None:
    """Before: a read cancelled while the reader waited inside its generator closed it,
    and later reads raised StopAsyncIteration while the stream ran (``indexed()`` died
    at its first cancelled read)."""
    total = 300
    rng = random.Random(16)
    ctx = create_resumable_stream_context(backend, options=OPTIONS)
    try:
        source = ControlledSource()
        original = await ctx.resumable_stream("s", source)
        assert original is not None
        for i in range(20):  # stored before the follower joins: it replays, then follows
            source.write(text(i))
        source.write(text(20))
        assert await original.__anext__() == text(0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STEP
        while (snap := await backend.snapshot("s", 0, 0)) is None or snap.length < 21:
            assert loop.time() < deadline
            await asyncio.sleep(0.005)  # the writer's batching interval: no event for it
        follower = await ctx.resume_existing_stream("s")
        assert follower is not None
        # The follower hands out what it replayed; its next read waits for live events
        # (before: inside its generator, which a cancelled read closed).
        replayed = [await follower.__anext__() for _ in range(21)]
        assert replayed == [text(i) for i in range(21)]
        writer = asyncio.create_task(write_paced_from(source, 21, total, rng))
        got_original, got_follower = await asyncio.gather(
            read_impatiently(original, rng, indexed=indexed),
            read_impatiently(follower, rng, indexed=indexed),
        )
        await writer
        expected = [IndexedChunk(i, text(i)) for i in range(total)]
        assert got_original == expected[1:]
        assert got_follower == expected[21:]
        assert original.status is StreamStatus.DONE
        assert follower.status is StreamStatus.DONE
        assert ctx.followers("s") == 0
    finally:
        await ctx.aclose()


async def write_paced_from(
    source: ControlledSource, start: int, total: int, rng: random.Random
) -> None:
    """Chunks ``start`` to ``total - 1`` at an uneven pace (the pace is the workload,
    as a model's tokens are), then the end."""
    await asyncio.sleep(0.01)  # the readers wait first, with nothing to take
    for i in range(start, total):
        source.write(text(i))
        if rng.random() < 0.5:
            await asyncio.sleep(rng.choice([0, 0.0005, 0.002]))
    source.close()


class Deaf(MemoryBackend):
    """A memory backend whose subscriptions never hear anything: every live message
    is lost, so readers find chunks only by polling storage."""

    async def subscribe(self, stream_id: str, *, max_buffered_bytes: int) -> Subscription:
        return Subscription(stream_id, max_buffered_bytes=max_buffered_bytes)


async def test_a_cancelled_wait_keeps_its_poll_deadline() -> None:
    """A follower whose every wait is cancelled before ``poll_interval`` still polls
    storage: its quiet period runs on across cancelled reads."""
    backend = Deaf()
    options = StreamOptions(lease=5.0, poll_interval=0.2, shutdown_grace=2.0)
    ctx = create_resumable_stream_context(backend, options=options)
    # Another process's follower: one in the producer's context is fed by the producer.
    other = create_resumable_stream_context(backend, options=options)
    try:
        source = ControlledSource()
        original = await ctx.resumable_stream("q", source)
        follower = await other.resume_existing_stream("q")
        assert original is not None
        assert follower is not None
        source.write("a")
        assert await original.__anext__() == "a"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STEP
        cancelled = 0
        while True:
            assert loop.time() < deadline, "the follower never polled storage"
            try:
                chunk = await asyncio.wait_for(follower.__anext__(), 0.05)  # < poll_interval
                break
            except TimeoutError:
                cancelled += 1
        assert chunk == "a"
        assert cancelled >= 2
        source.close()
        assert await asyncio.wait_for(read_all(follower), STEP) == ""
    finally:
        await other.aclose()
        await ctx.aclose()


# -- fault 7: readers dropped before their first read leak their subscription -------------


async def numsub(client: aioredis.Redis, channel: str) -> int:
    reply = await client.pubsub_numsub(channel)
    return int(reply[0][1])


async def until_unsubscribed(client: aioredis.Redis, channel: str) -> int:
    """PUBSUB NUMSUB of ``channel`` once it is 0, or after STEP seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STEP
    while (count := await numsub(client, channel)) and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)  # the server's count has no event to wait on
    return count


async def until_left(fanout: Any) -> list[Any]:
    """The producer's local feeds once the dropped ones' releases ran: a finalizer
    schedules each release for the loop's next turn, which starts it as a task."""
    await asyncio.sleep(0)  # the scheduled callbacks run before this task resumes
    with anyio.fail_after(STEP):
        await asyncio.gather(*_releasing)
    return list(fanout.feeds)


async def test_followers_dropped_unread_unsubscribe(
    redis_server: RedisServer, key_prefix: str
) -> None:
    """Before: the finalizer gave back only the follower place; the subscription (and
    up to reader_buffer_bytes each) stayed, and the stream's channel stayed subscribed.
    `aclose` before the first read left the subscription behind too."""
    client = aioredis.Redis.from_url(redis_server.url)
    ctx = create_resumable_stream_context(client, key_prefix=key_prefix, options=OPTIONS)
    # The followers run in another process (the producer's own are fed by it: below).
    elsewhere = create_resumable_stream_context(client, key_prefix=key_prefix, options=OPTIONS)
    channel = f"{key_prefix}:{{s}}:events"
    try:
        source = ControlledSource()
        original = await ctx.resumable_stream("s", source)
        assert original is not None
        followers = [await elsewhere.resume_existing_stream("s") for _ in range(50)]
        assert all(f is not None for f in followers)
        assert elsewhere.followers("s") == 50
        assert await numsub(client, channel) == 1  # one shared link for the process
        del followers
        gc.collect()
        assert elsewhere.followers("s") == 0
        assert await until_unsubscribed(client, channel) == 0
        # Closed before reading anything: the same.
        closed = [await elsewhere.resume_existing_stream("s") for _ in range(5)]
        assert await numsub(client, channel) == 1
        for reader in closed:
            assert reader is not None
            await reader.aclose()
        assert elsewhere.followers("s") == 0
        assert await until_unsubscribed(client, channel) == 0
        # Followers in the producer's context, dropped unread, leave its fanout.
        fanout = ctx._local["s"].fanout
        local = [await ctx.resume_existing_stream("s") for _ in range(50)]
        assert len(fanout.feeds) == 50
        del local
        gc.collect()
        assert ctx.followers("s") == 0
        assert await until_left(fanout) == []
        source.write("a")
        source.close()
        assert await read_all(original) == "a"
    finally:
        await elsewhere.aclose()
        await ctx.aclose()
        await client.aclose()


# -- smaller findings ----------------------------------------------------------------------


async def test_original_reader_on_storage_outlives_a_lapsed_lease(
    redis_server: RedisServer, key_prefix: str
) -> None:
    """Before: the original reader, once it fell behind its local feed and read from
    storage, had no word from its own producer and took a lapsed lease (a loop too busy
    to renew it) for a lost producer; followers in the same process did not."""
    client = aioredis.Redis.from_url(redis_server.url)
    options = StreamOptions(lease=30.0, poll_interval=0.05, reader_buffer_bytes=64)
    ctx = create_resumable_stream_context(client, key_prefix=key_prefix, options=options)
    try:
        source = ControlledSource()
        original = await ctx.resumable_stream("busy", source)
        assert original is not None
        for i in range(20):  # far more than its 64 bytes: it falls back to storage
            source.write(text(i))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STEP
        while (snap := await ctx.backend.snapshot("busy", 0, 0)) is None or snap.length < 20:
            assert loop.time() < deadline
            await asyncio.sleep(0.005)  # the writer's batching interval
        got = [await asyncio.wait_for(original.__anext__(), STEP) for _ in range(20)]
        assert got == [text(i) for i in range(20)]
        reading = asyncio.create_task(read_all(original))
        # The lease lapses, as an overloaded loop lets it (renewed only every 10 s).
        assert await client.delete(f"{key_prefix}:{{busy}}:lease") == 1
        for _ in range(6):  # several polls of the lapsed lease: the reader's workload
            snap = await ctx.backend.snapshot("busy", 0, 0)
            assert snap is not None
            assert not snap.lease_alive
            await asyncio.sleep(options.poll_interval)
        assert not reading.done(), reading
        source.write("z")
        source.close()
        assert await asyncio.wait_for(reading, STEP) == "z"
    finally:
        await ctx.aclose()
        await client.aclose()


class FlakySubscribe(MemoryBackend):
    """A memory backend whose next ``failures`` subscriptions fail, as a Redis that is
    briefly unreachable does."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0
        self.refused = 0

    async def subscribe(self, stream_id: str, *, max_buffered_bytes: int) -> Subscription:
        if self.failures:
            self.failures -= 1
            self.refused += 1
            raise BackendUnavailable("subscribe refused")
        return await super().subscribe(stream_id, max_buffered_bytes=max_buffered_bytes)


async def test_resubscribe_after_a_resync_is_retried() -> None:
    """Before: the original reader, told to `Resync`, subscribed again directly, and
    one refused subscription ended it with BackendUnavailable; now it retries within
    ``retry_window`` as every other recovery does."""
    backend = FlakySubscribe()
    options = StreamOptions(lease=1.0, poll_interval=0.05, reader_buffer_bytes=64)
    ctx = create_resumable_stream_context(backend, options=options)
    try:
        source = ControlledSource()
        original = await ctx.resumable_stream("r", source)
        assert original is not None
        for i in range(20):  # overflows its 64 bytes: a Resync waits for it
            source.write(text(i))
        source.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STEP
        while await backend.status("r") is not StreamStatus.DONE:
            assert loop.time() < deadline
            await asyncio.sleep(0.005)  # the writer's batching interval
        backend.failures = 2
        assert await asyncio.wait_for(read_all(original), STEP) == "".join(
            text(i) for i in range(20)
        )
        assert backend.refused == 2
    finally:
        await ctx.aclose()
        await backend.aclose()


async def test_reader_budget_counts_utf8_bytes() -> None:
    """Before: ``len(str)`` counted code points, so text in other scripts (2 to 4
    bytes a character) could hold 2 to 4 times the budget."""
    wide = "é" * 100  # 100 code points, 200 bytes
    narrow = "e" * 200  # 200 code points, 200 bytes
    for chunk in (wide, narrow):
        sub = Subscription("k", max_buffered_bytes=1000)
        for i in range(6):  # 6 x (200 + 16) bytes: over the budget
            sub.push_chunk(i, chunk)
        assert await sub.get(None) is RESYNC, chunk[:1]
        batch = Subscription("k", max_buffered_bytes=1000)
        for i in range(6):  # the backends' path: whole events
            batch.push(Appended(i, [chunk]))
        assert await batch.get(None) is RESYNC, chunk[:1]
    # Within budget, nothing is dropped: 4 x 216 bytes.
    sub = Subscription("k", max_buffered_bytes=1000)
    for i in range(4):
        sub.push_chunk(i, wide)
    event = await sub.get(None)
    assert event is not None
    assert event is not RESYNC
