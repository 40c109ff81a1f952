"""Semantics beyond the npm scenarios, over every backend."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator

import pytest

from resumable_stream import (
    Backend,
    InvalidArgument,
    InvalidStreamId,
    MemoryBackend,
    ResumableStreamContext,
    ResumableStreamError,
    StreamAlreadyExists,
    StreamFailed,
    StreamNotFound,
    StreamOptions,
    StreamStatus,
    create_resumable_stream_context,
)
from resumable_stream._subscription import Subscription
from resumable_stream._types import Appended, Event

from .conftest import FAST
from .helpers import ControlledSource, read_all, read_n


async def test_producer_runs_to_the_end_without_its_reader(ctx: ResumableStreamContext) -> None:
    source = ControlledSource()
    stream = await ctx.resumable_stream("s", source)
    source.write("a")
    assert await read_n(stream, 1) == "a"
    await stream.aclose()  # the original reader goes away
    source.write("b")
    source.close()
    later = await ctx.resume_existing_stream("s", after=-1)
    assert await read_all(later) == "ab"
    assert await ctx.get_status("s") is StreamStatus.DONE


async def test_producer_survives_cancelled_request_task(ctx: ResumableStreamContext) -> None:
    source = ControlledSource()
    got: list[str] = []
    first = asyncio.Event()

    async def request() -> None:
        stream = await ctx.resumable_stream("s", source)
        assert stream is not None
        async for chunk in stream:
            got.append(chunk)  # type: ignore[arg-type]
            first.set()

    task = asyncio.create_task(request())
    source.write("a")
    await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    source.write("b")
    source.close()
    follower = await ctx.resume_existing_stream("s", after=-1)
    assert await read_all(follower) == "ab"
    assert got == ["a"]


async def test_claim_is_atomic_in_one_process(ctx: ResumableStreamContext) -> None:
    source = ControlledSource()
    streams = await asyncio.gather(*(ctx.resumable_stream("race", source) for _ in range(20)))
    assert source.started == 1
    source.write("x")
    source.close()
    assert [await read_all(s) for s in streams] == ["x"] * 20


async def test_claim_is_atomic_across_contexts(backend: object) -> None:
    # Two contexts on one backend stand in for two processes sharing a Redis server.
    one = create_resumable_stream_context(backend, options=FAST)
    two = create_resumable_stream_context(backend, options=FAST)
    source = ControlledSource()
    streams = await asyncio.gather(
        *(c.resumable_stream("race", source) for c in (one, two) * 5)
    )
    assert source.started == 1
    source.write("x")
    source.close()
    assert [await read_all(s) for s in streams] == ["x"] * 10
    await one.aclose()
    await two.aclose()


async def test_create_new_on_running_stream_raises(ctx: ResumableStreamContext) -> None:
    source = ControlledSource()
    stream = await ctx.create_new_resumable_stream("s", source)
    with pytest.raises(StreamAlreadyExists):
        await ctx.create_new_resumable_stream("s", source)
    source.close()
    assert await read_all(stream) == ""


async def test_resume_unknown_stream_raises(ctx: ResumableStreamContext) -> None:
    with pytest.raises(StreamNotFound) as info:
        await ctx.resume_existing_stream("nope")
    assert isinstance(info.value, LookupError)
    assert info.value.stream_id == "nope"


async def test_resume_after_index(ctx: ResumableStreamContext) -> None:
    source = ControlledSource()
    stream = await ctx.resumable_stream("s", source)
    for c in "abcde":
        source.write(c)
    pairs = []
    async for index, chunk in stream.indexed():
        pairs.append((index, chunk))
        if index == 2:
            break
    assert pairs == [(0, "a"), (1, "b"), (2, "c")]
    assert stream.last_index == 2
    resumed = await ctx.resume_existing_stream("s", after=2)
    source.close()
    assert resumed is not None
    assert [p async for p in resumed.indexed()] == [(3, "d"), (4, "e")]
    # A finished stream still serves a client that tracked its position...
    tail = await ctx.resume_existing_stream("s", after=3)
    assert tail is not None
    assert await read_all(tail) == "e"
    # ...and has nothing for one that has everything.
    assert await ctx.resume_existing_stream("s", after=4) is None


async def test_source_error_reaches_every_reader(ctx: ResumableStreamContext) -> None:
    source = ControlledSource()
    stream = await ctx.resumable_stream("s", source)
    follower = await ctx.resume_existing_stream("s")
    source.write("partial")
    source.fail(RuntimeError("model overloaded"))
    assert stream is not None
    assert follower is not None
    with pytest.raises(RuntimeError, match="model overloaded"):
        await read_all(stream)
    assert await follower.__anext__() == "partial"
    with pytest.raises(StreamFailed) as info:
        await follower.__anext__()
    assert info.value.error == "RuntimeError: model overloaded"
    assert await ctx.get_status("s") is StreamStatus.FAILED
    assert await ctx.has_existing_stream("s") == "DONE"
    late = await ctx.resume_existing_stream("s")
    with pytest.raises(StreamFailed):
        await read_all(late)


async def test_sync_iterable_source(ctx: ResumableStreamContext) -> None:
    def words() -> Iterator[str]:
        yield from ["sync ", "source"]

    assert await read_all(await ctx.resumable_stream("s", words)) == "sync source"


async def test_awaitable_make_stream_and_bytes(ctx: ResumableStreamContext) -> None:
    async def make() -> AsyncIterator[bytes]:
        async def gen() -> AsyncIterator[bytes]:
            yield b"\x00\xff"
            yield bytearray(b"ok")  # type: ignore[misc]

        return gen()

    stream = await ctx.resumable_stream("b", make)
    assert stream is not None
    assert [c async for c in stream] == [b"\x00\xff", b"ok"]
    replay = await ctx.resume_existing_stream("b", after=-1)
    assert replay is not None
    assert [c async for c in replay] == [b"\x00\xff", b"ok"]


async def test_empty_stream(ctx: ResumableStreamContext) -> None:
    async def nothing() -> AsyncIterator[str]:
        return
        yield

    assert await read_all(await ctx.resumable_stream("e", nothing)) == ""
    assert await ctx.has_existing_stream("e") == "DONE"


async def test_wait_until_gets_the_producer_task(backend: object) -> None:
    tasks: list[asyncio.Task[None]] = []
    ctx = create_resumable_stream_context(backend, options=FAST, wait_until=tasks.append)
    stream = await ctx.resumable_stream("w", lambda: iter(["a"]))
    assert await read_all(stream) == "a"
    assert len(tasks) == 1
    await tasks[0]
    await ctx.aclose()


async def test_aclose_cancels_producers_after_grace(backend: object) -> None:
    ctx = create_resumable_stream_context(
        backend, options=StreamOptions(lease=1.0, poll_interval=0.25, shutdown_grace=0.1)
    )
    source = ControlledSource()
    stream = await ctx.resumable_stream("forever", source)
    source.write("a")
    assert await read_n(stream, 1) == "a"
    await ctx.aclose()
    assert await ctx.get_status("forever") is StreamStatus.FAILED
    late = await ctx.resume_existing_stream("forever")
    with pytest.raises(StreamFailed, match="shut down"):
        await read_all(late)


# -- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "x" * 257, None, 42, b"bytes"])
async def test_bad_stream_id(ctx: ResumableStreamContext, bad: object) -> None:
    source = ControlledSource()
    with pytest.raises(InvalidStreamId):
        await ctx.resumable_stream(bad, source)  # type: ignore[arg-type]
    with pytest.raises(InvalidStreamId):
        await ctx.resume_existing_stream(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidStreamId):
        await ctx.has_existing_stream(bad)  # type: ignore[arg-type]
    assert source.started == 0


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True])
async def test_bad_skip(ctx: ResumableStreamContext, bad: object) -> None:
    with pytest.raises(InvalidArgument):
        await ctx.resumable_stream("s", ControlledSource(), bad)  # type: ignore[arg-type]
    assert await ctx.has_existing_stream("s") is None


async def test_bad_after(ctx: ResumableStreamContext) -> None:
    stream = await ctx.resumable_stream("s", lambda: iter(["a"]))
    await read_all(stream)
    for bad in (-2, 1.0, "1"):
        with pytest.raises(InvalidArgument):
            await ctx.resume_existing_stream("s", after=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        await ctx.resume_existing_stream("s", -1, after=0)


async def test_make_stream_not_callable(ctx: ResumableStreamContext) -> None:
    with pytest.raises(TypeError, match="callable"):
        await ctx.resumable_stream("s", ["not", "callable"])  # type: ignore[arg-type]
    assert await ctx.has_existing_stream("s") is None


@pytest.mark.parametrize("result", [42, None, "a string"])
async def test_make_stream_returns_no_iterable(ctx: ResumableStreamContext, result: object) -> None:
    with pytest.raises(TypeError):
        await ctx.resumable_stream("s", lambda: result)
    # The claim was released: nobody waits on a stream that never starts, and the id
    # is not poisoned (issue 16, fault 4): the next call starts it afresh.
    assert await ctx.get_status("s") is not StreamStatus.DONE

    async def good() -> AsyncIterator[str]:
        yield "fine"

    stream = await ctx.resumable_stream("s", good)
    assert stream is not None
    assert [chunk async for chunk in stream] == ["fine"]


async def test_bad_chunk_type_fails_the_stream(ctx: ResumableStreamContext) -> None:
    async def gen() -> AsyncIterator[object]:
        yield "ok"
        yield 42

    stream = await ctx.resumable_stream("s", gen)  # type: ignore[arg-type]
    follower = await ctx.resume_existing_stream("s")
    with pytest.raises(TypeError, match="str or bytes"):
        await read_all(stream)
    with pytest.raises(StreamFailed, match="TypeError"):
        await read_all(follower)


async def test_bad_options() -> None:
    with pytest.raises(InvalidArgument):
        StreamOptions(lease=0)
    with pytest.raises(InvalidArgument):
        StreamOptions(max_batch_chunks=10_000)
    with pytest.raises(InvalidArgument):
        create_resumable_stream_context(None, ttl=0)


async def test_bad_client_type() -> None:
    import redis

    with pytest.raises(TypeError, match=r"redis\.asyncio\.Redis"):
        create_resumable_stream_context(redis.Redis())
    with pytest.raises(TypeError):
        create_resumable_stream_context(object())


# -- lost messages and slow readers --------------------------------------------------------


class LossyMemoryBackend(MemoryBackend):
    """Drops every third live announcement, as a flaky pub/sub link would."""

    async def subscribe(self, stream_id: str, *, max_buffered_bytes: int) -> Subscription:
        sub = await super().subscribe(stream_id, max_buffered_bytes=max_buffered_bytes)
        push = sub.push
        seen = itertools.count()

        def lossy(event: Event) -> None:
            if isinstance(event, Appended) and next(seen) % 3 == 1:
                return
            push(event)

        sub.push = lossy  # type: ignore[method-assign]
        return sub


async def test_follower_fills_gaps_from_storage() -> None:
    ctx = create_resumable_stream_context(
        LossyMemoryBackend(), options=StreamOptions(lease=30, poll_interval=30)
    )
    source = ControlledSource()
    await ctx.resumable_stream("s", source)
    follower = await ctx.resume_existing_stream("s")
    assert follower is not None
    for i in range(30):
        source.write(f"{i},")
        if i % 4 == 0:
            await asyncio.sleep(0)
    source.close()
    # poll_interval is 30 s, so only gap detection can deliver this in time.
    text = await asyncio.wait_for(read_all(follower), 5)
    assert text == "".join(f"{i}," for i in range(30))
    await ctx.aclose()


async def test_slow_follower_has_bounded_buffer_and_catches_up(backend: Backend) -> None:
    options = StreamOptions(lease=1.0, poll_interval=0.25, reader_buffer_bytes=1024)
    ctx = create_resumable_stream_context(backend, options=options)
    payload = ["x" * 100 + f"{i:06d}" for i in range(2000)]
    original = await ctx.resumable_stream("big", lambda: iter(payload))
    follower = await ctx.resume_existing_stream("big")
    assert follower is not None
    # The follower reads nothing while the whole stream is produced.
    assert await read_all(original) == "".join(payload)
    # Bounded, whatever the producer wrote: the budget, or one event alone (a feed
    # with nothing queued takes a single event larger than its budget: one write).
    feed = follower._feed
    queued = len(feed._queue) // 2  # each event, then its size
    assert feed._size <= 1024 or queued == 1, (feed._size, queued)
    assert await read_all(follower) == "".join(payload)
    await ctx.aclose()


async def test_slow_original_reader_falls_back_to_storage(backend: Backend) -> None:
    options = StreamOptions(lease=1.0, poll_interval=0.25, reader_buffer_bytes=512)
    ctx = create_resumable_stream_context(backend, options=options)
    payload = [f"{i:05d}" * 20 for i in range(1000)]
    produced = asyncio.Event()

    async def source() -> AsyncIterator[str]:
        for chunk in payload:
            yield chunk
        produced.set()

    original = await ctx.resumable_stream("big", source)
    assert original is not None
    first = await original.__anext__()
    await produced.wait()  # the original reader lagged by the whole stream
    rest = await read_all(original)
    assert first + rest == "".join(payload)
    assert original._local is False  # it did switch to storage
    await ctx.aclose()


async def test_aclose_before_the_producer_ran_ends_its_reader(backend: Backend) -> None:
    ctx = create_resumable_stream_context(
        backend, options=StreamOptions(lease=1.0, poll_interval=0.25, shutdown_grace=0)
    )
    stream = await ctx.resumable_stream("s", ControlledSource())
    await ctx.aclose()  # grace 0: the producer task is cancelled before its first step
    with pytest.raises(StreamFailed):
        await asyncio.wait_for(read_all(stream), 5)
    with pytest.raises(ResumableStreamError, match="closed"):
        await ctx.resumable_stream("t", ControlledSource())


async def test_skip_characters_after_an_index(ctx: ResumableStreamContext) -> None:
    stream = await ctx.resumable_stream("s", lambda: iter(["ab", "cd", "ef"]))
    assert await read_all(stream) == "abcdef"
    assert await read_all(await ctx.resume_existing_stream("s", 3, after=0)) == "f"
    assert await ctx.resume_existing_stream("s", 3, after=2) is None


# -- metadata ----------------------------------------------------------------------------


async def test_metadata_reaches_every_reader(ctx: ResumableStreamContext) -> None:
    source = ControlledSource()
    meta = {"status": 200, "headers": [["content-type", "text/event-stream"]], "raw": b"\x00"}
    original = await ctx.resumable_stream("m", source, metadata=meta)
    follower = await ctx.resume_existing_stream("m")
    joiner = await ctx.resumable_stream("m", source)
    assert original is not None
    assert follower is not None
    assert joiner is not None
    assert dict(original.metadata) == meta
    assert dict(follower.metadata) == meta
    assert dict(joiner.metadata) == meta
    source.close()
    plain = await ctx.resumable_stream("plain", lambda: iter(["x"]))
    assert plain is not None
    assert plain.metadata == {}


@pytest.mark.parametrize("bad", [{"x": object()}, ["not", "a", "mapping"], {"big": "x" * 70_000}])
async def test_bad_metadata(ctx: ResumableStreamContext, bad: object) -> None:
    with pytest.raises(InvalidArgument):
        await ctx.resumable_stream("m", ControlledSource(), metadata=bad)  # type: ignore[arg-type]
    assert await ctx.has_existing_stream("m") is None


# -- status and stopping -------------------------------------------------------------------


async def test_reader_status(ctx: ResumableStreamContext) -> None:
    source = ControlledSource()
    original = await ctx.resumable_stream("s", source)
    follower = await ctx.resume_existing_stream("s")
    assert original is not None
    assert follower is not None
    assert original.status is StreamStatus.RUNNING
    assert follower.status is StreamStatus.RUNNING
    source.write("a")
    source.close()
    await read_all(original)
    await read_all(follower)
    assert original.status is StreamStatus.DONE
    assert follower.status is StreamStatus.DONE
    tail = await ctx.resume_existing_stream("s", after=-1)
    assert tail is not None
    assert tail.status is StreamStatus.DONE
    await tail.aclose()


async def test_failed_stream_with_nothing_left_after_position(ctx: ResumableStreamContext) -> None:
    source = ControlledSource()
    stream = await ctx.resumable_stream("s", source)
    source.write("a")
    source.fail(RuntimeError("x"))
    with pytest.raises(RuntimeError):
        await read_all(stream)
    assert await ctx.resume_existing_stream("s", after=0) is None
    tail = await ctx.resume_existing_stream("s", after=-1)
    assert tail is not None
    assert tail.status is StreamStatus.FAILED


async def test_stop_stream_in_this_process(ctx: ResumableStreamContext) -> None:
    source = ControlledSource()
    original = await ctx.resumable_stream("s", source)
    follower = await ctx.resume_existing_stream("s")
    source.write("a")
    assert await read_n(original, 1) == "a"
    assert await ctx.stop_stream("s") is True
    # Both end cleanly, without the source ever closing.
    assert await asyncio.wait_for(read_all(original), 5) == ""
    assert await asyncio.wait_for(read_all(follower), 5) == "a"
    assert await ctx.get_status("s") is StreamStatus.DONE
    assert await ctx.stop_stream("s") is False
    assert await ctx.stop_stream("unknown") is False


async def test_stop_stream_from_another_context(backend: Backend) -> None:
    producer_ctx = create_resumable_stream_context(backend, options=FAST)
    other_ctx = create_resumable_stream_context(backend, options=FAST)
    source = ControlledSource()
    original = await producer_ctx.resumable_stream("s", source)
    source.write("a")
    assert await read_n(original, 1) == "a"
    assert await other_ctx.stop_stream("s") is True
    # The producer sees the flag at its next write: here the idle lease renewal.
    assert await asyncio.wait_for(read_all(original), 5) == ""
    assert await other_ctx.get_status("s") is StreamStatus.DONE
    await producer_ctx.aclose()
    await other_ctx.aclose()
