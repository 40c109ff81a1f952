# ruff: noqa: F811  (backend_kind: the fault harness fixture, imported as a fixture)
"""Followers in the producer's own context, fed by the producer (`Fanout`).

They get chunks before storage does, so the end must reach them only once it is
stored: a follower may end normally only when the stored stream is DONE.
"""

from __future__ import annotations

import asyncio

import pytest

from resumable_stream import (
    Backend,
    ResumableStream,
    ResumableStreamContext,
    ResumableStreamError,
    StreamDeleted,
    StreamFailed,
    StreamOptions,
    StreamStatus,
    _fanout,
)
from resumable_stream._fanout import Fanout
from resumable_stream._subscription import LocalFeed
from resumable_stream._types import Appended, Ended

from .faulty_backend import Fault, FaultPlan
from .helpers import ControlledSource, read_all
from .test_fault_harness import OPTIONS, STEP_TIMEOUT, backend_kind, directed  # noqa: F401

# The first write of the stream fails for good: the write clock's try cannot encode it,
# and the writer's task finds storage unreachable with no time left to retry.
BROKEN = FaultPlan({("write_soon", 0): Fault.RAISE_SYNC, ("write", 0): Fault.RAISE})


async def local_pair(
    ctx: ResumableStreamContext,
) -> tuple[ControlledSource, ResumableStream, ResumableStream]:
    """A stream in ``ctx``: its source, original reader, and a follower fed by the
    producer (the path under test)."""
    source = ControlledSource()
    original = await ctx.resumable_stream("s", source)
    follower = await ctx.resume_existing_stream("s", after=-1)
    assert original is not None
    assert follower is not None
    assert isinstance(follower._feed, LocalFeed)
    return source, original, follower


async def test_a_local_follower_of_a_broken_writer_ends_with_a_typed_error(
    backend_kind: tuple[str, str | None],
) -> None:
    options = StreamOptions(**{**OPTIONS.__dict__, "retry_window": 0.0})
    async with directed(*backend_kind, BROKEN, options) as (_, ctx, producers):
        source, original, follower = await local_pair(ctx)
        for text in "abc":
            source.write(text)
        source.close()
        # The original reader is fed by the producer: it gets everything.
        assert await asyncio.wait_for(read_all(original), STEP_TIMEOUT) == "abc"
        # The follower got what the producer handed it, then storage's verdict.
        with pytest.raises(ResumableStreamError) as caught:
            await asyncio.wait_for(read_all(follower), STEP_TIMEOUT)
        assert isinstance(caught.value, StreamFailed), caught.value
        await asyncio.wait(producers, timeout=STEP_TIMEOUT)


async def test_a_local_follower_is_cut_when_storage_breaks_not_at_the_sources_end(
    backend_kind: tuple[str, str | None],
) -> None:
    """Once nothing more can be stored it stops running ahead of storage, as followers
    in other processes do; the original reader goes on. (No poll would cut it in
    time: the cut is the writer's.)"""
    options = StreamOptions(**{**OPTIONS.__dict__, "retry_window": 0.0, "poll_interval": 60.0})
    async with directed(*backend_kind, BROKEN, options) as (_, ctx, producers):
        source, original, follower = await local_pair(ctx)
        source.write("a")  # its write fails for good; the source stays open
        with pytest.raises(ResumableStreamError):
            await asyncio.wait_for(read_all(follower), STEP_TIMEOUT)
        for text in "bc":
            source.write(text)
        source.close()
        assert await asyncio.wait_for(read_all(original), STEP_TIMEOUT) == "abc"
        await asyncio.wait(producers, timeout=STEP_TIMEOUT)


async def test_a_local_follower_gets_every_chunk_once_through_a_slow_write(
    backend_kind: tuple[str, str | None],
) -> None:
    """It joins while a write is held: the chunks in flight and pending are handed over."""
    plan = FaultPlan({("write_soon", 0): Fault.HOLD})
    async with directed(*backend_kind, plan) as (backend, ctx, producers):
        source = ControlledSource()
        original = await ctx.resumable_stream("s", source)
        assert original is not None
        source.write("a")
        assert await original.__anext__() == "a"
        await asyncio.wait_for(backend.held("write_soon", 0).wait(), STEP_TIMEOUT)
        for text in "bc":
            source.write(text)
            assert await original.__anext__() == text
        follower = await ctx.resume_existing_stream("s", after=-1)
        assert follower is not None
        assert isinstance(follower._feed, LocalFeed)
        got = [await asyncio.wait_for(follower.__anext__(), STEP_TIMEOUT) for _ in range(3)]
        assert got == ["a", "b", "c"]  # "a" in flight, "b" and "c" pending: none stored
        backend.release("write_soon", 0)
        source.write("d")
        source.close()
        assert await asyncio.wait_for(read_all(follower), STEP_TIMEOUT) == "d"
        assert await asyncio.wait_for(read_all(original), STEP_TIMEOUT) == "d"
        await asyncio.wait(producers, timeout=STEP_TIMEOUT)


async def test_a_slow_local_follower_moves_to_the_backend_and_loses_nothing(
    backend_kind: tuple[str, str | None],
) -> None:
    options = StreamOptions(**{**OPTIONS.__dict__, "reader_buffer_bytes": 64})
    async with directed(*backend_kind, FaultPlan(), options) as (_, ctx, producers):
        source, original, follower = await local_pair(ctx)
        texts = [f"{i:04d}" for i in range(200)]
        for text in texts:  # far past its 64-byte budget before it reads once
            source.write(text)
        source.close()
        assert await asyncio.wait_for(read_all(original), STEP_TIMEOUT) == "".join(texts)
        assert await asyncio.wait_for(read_all(follower), STEP_TIMEOUT) == "".join(texts)
        assert not isinstance(follower._feed, LocalFeed)  # it moved to the backend's
        await asyncio.wait(producers, timeout=STEP_TIMEOUT)


async def test_a_local_follower_of_a_failed_source_gets_stream_failed(
    backend_kind: tuple[str, str | None],
) -> None:
    """Not the source's own exception object: that is the original reader's."""
    async with directed(*backend_kind, FaultPlan()) as (_, ctx, producers):
        source, original, follower = await local_pair(ctx)
        source.write("a")
        source.fail(KeyError("boom"))
        with pytest.raises(KeyError):
            await asyncio.wait_for(read_all(original), STEP_TIMEOUT)
        with pytest.raises(StreamFailed):
            await asyncio.wait_for(read_all(follower), STEP_TIMEOUT)
        await asyncio.wait(producers, timeout=STEP_TIMEOUT)


@pytest.mark.parametrize("memory_or_redis", ["memory", "redis"], indirect=True)
async def test_a_local_follower_of_a_stream_deleted_elsewhere_gets_stream_deleted(
    memory_or_redis: Backend,
) -> None:
    ctx = ResumableStreamContext(memory_or_redis, options=OPTIONS)
    elsewhere = ResumableStreamContext(memory_or_redis, options=OPTIONS)
    try:
        source, original, follower = await local_pair(ctx)
        source.write("a")
        assert await asyncio.wait_for(follower.__anext__(), STEP_TIMEOUT) == "a"
        assert await elsewhere.delete_stream("s")
        source.write("b")  # its write meets the tombstone: the producer stops
        with pytest.raises(StreamDeleted):
            await asyncio.wait_for(read_all(follower), STEP_TIMEOUT)
        with pytest.raises(StreamDeleted):
            await asyncio.wait_for(read_all(original), STEP_TIMEOUT)
    finally:
        await elsewhere.aclose()
        await ctx.aclose()



async def test_chunks_back_to_back_ring_a_feed_once_per_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first chunk rings at once; those within the interval of it wait for one
    timer, which the end cancels (it rings every feed itself)."""
    monkeypatch.setattr(_fanout, "RING_INTERVAL", 60.0)  # no timer fires in this test
    fanout = Fanout(asyncio.get_running_loop())
    feed = fanout.join("s", 1 << 20, 0, [])
    assert feed is not None
    fanout.push_chunk(0, "a")
    assert feed._wakeup.is_set()
    assert fanout._ring is None
    feed._wakeup.clear()
    fanout.push_chunk(1, "b")
    fanout.push_chunk(2, "c")
    assert not feed._wakeup.is_set()
    assert fanout._ring is not None
    fanout.close(Ended(StreamStatus.DONE, 3))
    assert fanout._ring is None
    assert feed._wakeup.is_set()
    assert feed.get_nowait() == Appended(0, ["a", "b", "c"])
    assert feed.get_nowait() == Ended(StreamStatus.DONE, 3)


async def test_a_round_waiting_for_its_timer_rings_when_it_fires() -> None:
    fanout = Fanout(asyncio.get_running_loop())
    feed = fanout.join("s", 1 << 20, 0, [])
    assert feed is not None
    fanout.push_chunk(0, "a")
    feed._wakeup.clear()
    fanout.push_chunk(1, "b")  # rung by the timer (or at once, on a machine that slow)
    await asyncio.wait_for(feed._wakeup.wait(), STEP_TIMEOUT)
    assert fanout._ring is None
    assert feed.get_nowait() == Appended(0, ["a", "b"])
    fanout.close(None)


async def test_a_fast_producer_gets_every_chunk_to_its_local_followers(
    backend_kind: tuple[str, str | None],
) -> None:
    """Chunks yielded back to back reach every follower, several per wake-up, and the
    round still pending at the end does not outlive the producer."""
    async with directed(*backend_kind, FaultPlan()) as (_, ctx, producers):
        source, original, follower = await local_pair(ctx)
        second = await ctx.resume_existing_stream("s", after=-1)
        assert second is not None
        fanout = ctx._local["s"].fanout
        texts = [f"{i:03d}" for i in range(300)]
        for text in texts:
            source.write(text)
        source.close()
        for reader in (original, follower, second):
            assert await asyncio.wait_for(read_all(reader), STEP_TIMEOUT) == "".join(texts)
        await asyncio.wait(producers, timeout=STEP_TIMEOUT)
        assert fanout._ring is None
