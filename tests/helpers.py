"""Test sources: one the test controls chunk by chunk (like the npm package's testing
stream), and a paced one for streams disrupted by a failover."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio

from resumable_stream import (
    Chunk,
    ResumableStream,
    ResumableStreamContext,
    ResumableStreamError,
    StreamOptions,
    create_resumable_stream_context,
)


class ControlledSource:
    """``write`` chunks, then ``close`` (or ``fail``); iterate it as the producer's source."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        self.started = 0

    def write(self, chunk: Chunk) -> None:
        self._queue.put_nowait(("chunk", chunk))

    def close(self) -> None:
        self._queue.put_nowait(("close", None))

    def fail(self, exc: BaseException) -> None:
        self._queue.put_nowait(("fail", exc))

    def __call__(self) -> AsyncIterator[Chunk]:
        self.started += 1
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Chunk]:
        while True:
            kind, value = await self._queue.get()
            if kind == "close":
                return
            if kind == "fail":
                assert isinstance(value, BaseException)
                raise value
            yield value  # type: ignore[misc]


async def read_all(stream: ResumableStream | None) -> str:
    assert stream is not None, "expected a stream, got None"
    return "".join([c async for c in stream])  # type: ignore[misc]


async def until_stored(backend: Any, stream_id: str, length: int) -> None:
    """Wait until storage holds ``length`` chunks of ``stream_id``: a follower in the
    producer's context gets chunks before they are stored, as the original reader does."""
    with anyio.fail_after(5.0):
        while True:
            snap = await backend.snapshot(stream_id, 0, 0)
            if snap is not None and snap.length >= length:
                return
            await asyncio.sleep(0.002)  # storage announces nothing to this context


async def read_n(stream: ResumableStream | None, n: int) -> str:
    assert stream is not None
    out = []
    for _ in range(n):
        out.append(await stream.__anext__())
    return "".join(out)  # type: ignore[arg-type]


def paced_text(i: int) -> str:
    """Chunk ``i`` of a paced stream: unique, so a gap or a duplicate shows."""
    return f"{i:05d}|"


async def paced_source(total: int, pace: float) -> AsyncIterator[str]:
    """``total`` chunks, ``pace`` seconds apart (the pace is the workload, as a model's
    tokens are; no test waits on it)."""
    for i in range(total):
        if i:
            await asyncio.sleep(pace)
        yield paced_text(i)


class Outcome:
    """What one reader of a disrupted stream got: indexed chunks, then maybe an error."""

    def __init__(self) -> None:
        self.got: list[tuple[int, Chunk]] = []
        self.error: BaseException | None = None

    async def read(
        self, stream: ResumableStream | None, mark: asyncio.Event | None = None, at: int = 0
    ) -> Outcome:
        """Read ``stream`` to its end; set ``mark`` once ``at`` chunks have come."""
        assert stream is not None, "expected a stream, got None"
        try:
            async for index, chunk in stream.indexed():
                self.got.append((index, chunk))
                if mark is not None and len(self.got) == at:
                    mark.set()
        except Exception as exc:  # judged by the caller: typed or not
            self.error = exc
        return self

    def whole(self, total: int) -> bool:
        return self.error is None and self.got == [(i, paced_text(i)) for i in range(total)]

    def clean_prefix(self) -> bool:
        return self.got == [(i, paced_text(i)) for i in range(len(self.got))]


async def disrupted_stream(
    producer: ResumableStreamContext,
    follower: ResumableStreamContext,
    stream_id: str,
    disrupt: Callable[[], object],
    *,
    total: int = 400,
    pace: float = 0.005,
    at: float = 0.5,
    early: int = 3,
    budget: float = 30.0,
) -> tuple[Outcome, list[Outcome]]:
    """Run a paced stream; once its original reader has read the fraction ``at`` of
    it, call ``disrupt`` (in a thread: it may block on redis-cli) while the producer
    keeps going.

    Returns the original reader's outcome and the followers' (``early`` that joined
    before the disruption, then one that joined after it), all read to their end
    within ``budget`` seconds: a hang fails the test.
    """
    half = asyncio.Event()
    original = await producer.create_new_resumable_stream(
        stream_id, partial(paced_source, total, pace)
    )
    reads = [asyncio.create_task(Outcome().read(original, half, int(total * at)))]
    for _ in range(early):
        stream = await follower.resume_existing_stream(stream_id, after=-1)
        reads.append(asyncio.create_task(Outcome().read(stream)))
    await asyncio.wait_for(half.wait(), budget)
    await asyncio.to_thread(disrupt)
    if reads[0].done():
        raise AssertionError("the stream ended before the disruption did: make it longer")
    late = Outcome()
    try:
        stream = await follower.resume_existing_stream(stream_id, after=-1)
    except ResumableStreamError as exc:  # typed: allowed right after a failover
        late.error = exc
    else:
        reads.append(asyncio.create_task(late.read(stream)))
    outcomes = await asyncio.wait_for(asyncio.gather(*reads), budget)
    followers = list(outcomes[1:])
    if late not in followers:
        followers.append(late)
    return outcomes[0], followers


def assert_promise(
    origin: Outcome, followers: list[Outcome], total: int, *, lossless: bool = False
) -> None:
    """The original reader gets the whole text; each follower the whole text or a
    typed error after a clean prefix, never a silent hole. ``lossless``: when Redis
    lost no write, every follower gets the whole text."""
    assert origin.whole(total), (origin.error, len(origin.got))
    for follower in followers:
        if follower.error is None:
            assert follower.whole(total), f"{len(follower.got)} chunks, not {total}"
        else:
            assert isinstance(follower.error, ResumableStreamError), repr(follower.error)
            assert follower.clean_prefix()
    if lossless:
        assert all(f.whole(total) for f in followers), [(len(f.got), f.error) for f in followers]


async def check_binary_and_text_chunks(client: object, key_prefix: str) -> None:
    """A stream of ``bytes`` and ``str`` chunks over ``client`` reads back exactly,
    whatever the client's ``decode_responses``, and the client stays open."""
    ctx = create_resumable_stream_context(client, key_prefix=key_prefix)
    stream = await ctx.resumable_stream("s", partial(iter, [b"\xff\x00", "text"]))
    follower = await ctx.resume_existing_stream("s", after=-1)
    assert stream is not None
    assert follower is not None
    assert [c async for c in stream] == [b"\xff\x00", "text"]
    assert [c async for c in follower] == [b"\xff\x00", "text"]
    again = await ctx.resume_existing_stream("s", after=0)
    assert await read_all(again) == "text"
    await ctx.aclose()
    assert await client.ping()  # type: ignore[attr-defined]  # not closed by the context


@asynccontextmanager
async def two_processes(
    make_client: Callable[[], Any],
    key_prefix: str,
    producer_options: StreamOptions,
    follower_options: StreamOptions,
) -> AsyncIterator[tuple[ResumableStreamContext, ResumableStreamContext]]:
    """A producing context and a following one, each on its own client, as two
    processes would have; both closed (and their clients) at the end."""
    clients = [make_client(), make_client()]
    producer = create_resumable_stream_context(
        clients[0], key_prefix=key_prefix, options=producer_options
    )
    follower = create_resumable_stream_context(
        clients[1], key_prefix=key_prefix, options=follower_options
    )
    try:
        yield producer, follower
    finally:
        for ctx in (producer, follower):
            await asyncio.wait_for(ctx.aclose(), 15)
        for client in clients:
            await client.aclose()
