"""Regression tests for the core's faults of issue 16: each failed on the core as it
was (0.1.0) and states the invariant it guards, not one timing.

Every path of a stream ends in exactly one of: the whole stream, or a clean prefix
and then a typed error; and once its producer has ended nothing keeps it RUNNING.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from resumable_stream import (
    BackendUnavailable,
    IndexedChunk,
    ResumableStream,
    ResumableStreamContext,
    ResumableStreamError,
    StreamFailed,
    StreamOptions,
    StreamStatus,
    create_resumable_stream_context,
)
from resumable_stream.backends import Backend, MemoryBackend

SHORT = StreamOptions(lease=0.5, poll_interval=0.1, retry_window=0.5, shutdown_grace=2.0)

def must(stream: ResumableStream | None) -> ResumableStream:
    assert stream is not None
    return stream


both = pytest.mark.parametrize("backend", ["memory", "redis"], indirect=True)


@pytest.fixture
async def short(backend: Backend) -> AsyncIterator[ResumableStreamContext]:
    context = create_resumable_stream_context(backend, options=SHORT)
    yield context
    await context.aclose()


async def drain(
    stream: AsyncIterator[IndexedChunk],
) -> tuple[list[IndexedChunk], BaseException | None]:
    got: list[IndexedChunk] = []
    try:
        with anyio.fail_after(10):
            async for item in stream:
                got.append(item)
    except Exception as exc:  # the typed error after the prefix
        return got, exc
    return got, None


async def settled(ctx: ResumableStreamContext) -> None:
    """Wait (bounded) until no producer of ``ctx`` runs."""
    with anyio.fail_after(10):
        while ctx.running_streams:
            await asyncio.wait(list(ctx._producers))


# Fault 1: a str chunk holding a lone surrogate (json.loads hands them out for
# "\ud800") cannot be encoded; its batch vanished and the stream ended DONE short,
# with later indices shifted. Now the stream fails at that chunk, for every reader.


@both
async def test_a_lone_surrogate_fails_the_stream_at_that_chunk(
    short: ResumableStreamContext,
) -> None:
    async def source() -> AsyncIterator[str]:
        yield "a"
        await asyncio.sleep(0.02)  # a model's pace: "a" is written on its own
        yield "b\ud800"
        yield "c"

    stream = must(await short.create_new_resumable_stream("s", source))
    got, error = await drain(stream.indexed())
    assert got == [(0, "a")]
    assert isinstance(error, ValueError)
    assert "lone surrogate" in str(error)
    await settled(short)
    assert await short.get_status("s") is StreamStatus.FAILED
    replay, error = await drain(must(await short.resume_existing_stream("s", after=-1)).indexed())
    assert replay == [(0, "a")]
    assert isinstance(error, StreamFailed)
    assert "lone surrogate" in error.error


class _SoonRaises(MemoryBackend):
    """write_soon raises synchronously on its second call (nothing sent)."""

    calls = 0

    def write_soon(self, *args: Any, **kwargs: Any) -> asyncio.Future[bool]:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("cannot encode this batch")
        return super().write_soon(*args, **kwargs)


async def test_a_write_that_raises_synchronously_loses_no_chunk() -> None:
    """Any exception on the write path is routed to the writer: here the task
    writes the batch instead (it stores), so the stream is whole. Never DONE short."""
    backend = _SoonRaises()
    async with create_resumable_stream_context(backend, options=SHORT) as ctx:

        async def source() -> AsyncIterator[str]:
            for n in range(30):
                yield f"{n},"
                await asyncio.sleep(0.005)  # several writes, one per tick

        stream = must(await ctx.create_new_resumable_stream("s", source))
        got, error = await drain(stream.indexed())
        assert error is None
        assert [c for _, c in got] == [f"{n}," for n in range(30)]
        await settled(ctx)
        assert backend.calls >= 2
        replay, error = await drain(
            must(await ctx.resume_existing_stream("s", after=-1)).indexed()
        )
        assert replay == got
        assert error is None


# Fault 2: the producer closes the source (stop, size cap, cancellation) and the
# source's cleanup raises. The exception left the producer before the writer was
# closed: the lease was renewed forever and the status stayed RUNNING.


@both
@pytest.mark.parametrize("how", ["stop", "size-cap"])
async def test_a_source_whose_cleanup_raises_still_ends_the_stream(
    short: ResumableStreamContext, backend: Backend, how: str
) -> None:
    options = StreamOptions(
        lease=0.5, poll_interval=0.1, retry_window=0.5, max_stream_bytes=20
    )
    ctx = short if how == "stop" else create_resumable_stream_context(backend, options=options)
    first = asyncio.Event()

    async def source() -> AsyncIterator[str]:
        try:
            n = 0
            while True:
                yield f"{n:04}"
                n += 1
                first.set()
                await asyncio.sleep(0.01)
        finally:
            raise RuntimeError("cleanup failed")

    stream = must(await ctx.create_new_resumable_stream("s", source))
    if how == "stop":
        await first.wait()
        assert await ctx.stop_stream("s")
    got, error = await drain(stream.indexed())
    await settled(ctx)
    status = await ctx.get_status("s")
    if how == "stop":
        assert error is None
        assert status is StreamStatus.DONE
    else:
        assert isinstance(error, StreamFailed)
        assert status is StreamStatus.FAILED
        assert len(got) == 5  # 5 chunks of 4 bytes: the sixth passes the cap
    assert ctx.running_streams == 0
    # Nothing renews the stream any more: its lease lapses (it ended, so it stays ended).
    snap = must(await backend.snapshot("s", 0, 0))
    assert snap.status is status
    assert snap.length == len(got)
    if ctx is not short:
        await ctx.aclose()


# Fault 4: a claim whose caller went away (cancelled while the claim was on the wire,
# or its reply lost) left a record that nobody produced; after the lease the id
# answered None ("finished") for the whole TTL. Claims are now idempotent by token,
# released when their caller goes, and a record that stored nothing under a lapsed
# lease is taken over by the next claim.


class _ClaimFaults:
    """Delegates to ``inner``; the first claim is applied, then its reply is lost
    ("lost") or never comes ("hang", until the caller is cancelled)."""

    def __init__(self, inner: Backend, fault: str) -> None:
        self.inner = inner
        self.fault = fault
        self.claims = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def claim(self, stream_id: str, token: str, **kwargs: Any) -> StreamStatus | None:
        self.claims += 1
        answer = await self.inner.claim(stream_id, token, **kwargs)
        if self.claims == 1:
            if self.fault == "lost":
                raise BackendUnavailable("the reply was lost")
            await asyncio.Event().wait()  # on the wire until the caller gives up
        return answer


async def _letters() -> AsyncIterator[str]:
    for letter in "abc":
        yield letter


@both
@pytest.mark.parametrize("fault", ["lost", "hang"])
async def test_a_lost_claim_never_poisons_the_id(backend: Backend, fault: str) -> None:
    faulty = _ClaimFaults(backend, fault)
    async with create_resumable_stream_context(faulty, options=SHORT) as ctx:  # type: ignore[arg-type]
        if fault == "lost":
            # The retry carries the same token: the backend answers "yours".
            stream = must(await ctx.resumable_stream("s", _letters))
        else:
            with pytest.raises(TimeoutError):
                with anyio.fail_after(0.2):
                    await ctx.resumable_stream("s", _letters)
            assert ctx.running_streams == 0
            stream = must(await ctx.resumable_stream("s", _letters))
        got, error = await drain(stream.indexed())
        assert error is None
        assert got == [(0, "a"), (1, "b"), (2, "c")]
        assert await ctx.get_status("s") is StreamStatus.DONE


@both
async def test_a_source_that_fails_to_open_leaves_the_id_free(
    short: ResumableStreamContext,
) -> None:
    def broken() -> AsyncIterator[str]:
        raise OSError("the model is down")

    with pytest.raises(OSError, match="the model is down"):
        await short.resumable_stream("s", broken)
    stream = must(await short.resumable_stream("s", _letters))
    got, error = await drain(stream.indexed())
    assert error is None
    assert [c for _, c in got] == ["a", "b", "c"]


# Fault 5: a resume with a position took one lapsed-lease observation as the end and
# answered None (HTTP 410) while the producer was alive on a stalled loop; readers
# confirmed a lapse a poll_interval later. One verdict (resumable_stream._lease) now.


async def test_a_resume_confirms_a_lapsed_lease_like_a_reader() -> None:
    options = StreamOptions(lease=3.0, poll_interval=0.2, retry_window=0.5)
    backend = MemoryBackend()
    seen_lapsed = asyncio.Event()

    class Watching(MemoryBackend):
        async def snapshot(self, stream_id: str, start: int, limit: int) -> Any:
            snap = await backend.snapshot(stream_id, start, limit)
            if snap is not None and not snap.lease_alive:
                seen_lapsed.set()
            return snap

        def __getattribute__(self, name: str) -> Any:
            if name == "snapshot":
                return object.__getattribute__(self, name)
            return getattr(backend, name)

    go = asyncio.Event()

    async def stalls() -> AsyncIterator[str]:
        yield "a"
        await go.wait()
        yield "b"

    async with (
        create_resumable_stream_context(backend, options=options) as producing,
        create_resumable_stream_context(Watching(), options=options) as elsewhere,
    ):
        original = must(await producing.create_new_resumable_stream("s", stalls))
        feed = await backend.subscribe("s", max_buffered_bytes=1 << 16)
        assert await original.__anext__() == "a"
        if must(await backend.snapshot("s", 0, 0)).length == 0:
            assert await feed.get(5.0) is not None  # the write of "a" landed
        await feed.aclose()
        backend._entries["s"].lease_until = 0.0  # its loop stalled: the lease lapsed

        async def unstall() -> None:
            await seen_lapsed.wait()
            go.set()  # the producer goes on: "b" renews the lease

        helper = asyncio.create_task(unstall())
        resumed = await elsewhere.resume_existing_stream("s", after=0)
        await helper
        got, error = await drain(must(resumed).indexed())
        assert error is None
        assert got == [(1, "b")]
        assert [c async for c in original] == ["b"]


# Smaller finding: a claim in flight during aclose() could start a producer that
# aclose() never saw (an untracked task outliving its context).


async def test_a_claim_in_flight_during_aclose_starts_nothing() -> None:
    opening = asyncio.Event()
    release = asyncio.Event()

    async def slow_open() -> AsyncIterator[str]:
        opening.set()
        await release.wait()  # the model's first byte is slow: aclose comes meanwhile
        return _letters()

    backend = MemoryBackend()
    ctx = create_resumable_stream_context(backend, options=SHORT)
    before = set(asyncio.all_tasks())
    call = asyncio.create_task(ctx.resumable_stream("s", slow_open))
    await opening.wait()
    closing = asyncio.create_task(ctx.aclose())
    await asyncio.sleep(0)  # let aclose start (it marks the context closed first)
    release.set()
    with pytest.raises(ResumableStreamError, match="closed"):
        await call
    await closing
    assert ctx.running_streams == 0
    assert set(asyncio.all_tasks()) - before == {asyncio.current_task()} - before
    # The claim was released: another context may start the id afresh.
    async with create_resumable_stream_context(backend, options=SHORT) as other:
        got, error = await drain(must(await other.resumable_stream("s", _letters)).indexed())
        assert error is None
        assert [c for _, c in got] == ["a", "b", "c"]
