"""A reader of one stream: replay what is stored, then follow live events.

The merge (what to hand out, what to drop, when to re-read, when the stream ended)
is `Merge` in ``_merge.py``, pure and written once; this module does its I/O:

1. The caller subscribes and waits until the subscription is active (backend
   invariant 3), then takes a first snapshot from position ``start``. Anything
   written after the subscription became active is also announced to us, so between
   the snapshot and the live events nothing is missed.
2. The reader does what the merge asks: read storage from the merge's position,
   wait for the next live event (a follower waits at most ``poll_interval``, then
   reads), hand out a batch, or end.
3. A broken live feed (a Redis restart, a cut, a dropped slow subscriber) is
   replaced: subscribe again, then read, retrying for up to ``retry_window``.

The original reader (in the producer's process) starts on a local feed fed by the
producer itself and switches to the backend, through the same recovery, if it falls
too far behind.

The reader's state lives in the object (the merge, the batch in hand, the feed), not
in a suspended generator: cancelling a read (``asyncio.wait_for`` around
``__anext__`` as a keep-alive timer) leaves it where it was, and the next read goes
on from there.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio

from . import _telemetry
from ._exceptions import (
    BackendUnavailable,
    ProducerLost,
    StreamDeleted,
    StreamFailed,
    StreamNotFound,
    StreamTooLarge,
)
from ._lease import LeaseWatch, Liveness
from ._merge import DELIVER, DONE, LOST, READ, WAIT, Merge, Step
from ._options import StreamOptions
from ._retry import RetryWindow
from ._subscription import RESYNC, LocalFeed, Subscription
from ._types import Appended, Chunk, IndexedChunk, Resync, Snapshot, StreamStatus
from .backends._protocol import Backend, Deletes

__all__ = ["ReaderSource", "ResumableStream"]

_PAGE = 2000  # chunks per snapshot read
_CLOSE_TIMEOUT = 5.0  # seconds a reader's close waits for the backend to unsubscribe


def _never() -> bool:
    return False


@dataclass(frozen=True, slots=True)
class ReaderSource:
    """Where a reader reads from."""

    stream_id: str
    backend: Backend
    options: StreamOptions
    # This process's own producer of the stream runs and stores: then a lapsed lease
    # means a loop too busy to renew it in time, not a dead producer.
    here: Callable[[], bool] = _never
    # The original reader only: the source's own exception, re-raised as it was.
    origin_error: Callable[[], BaseException | None] | None = None


class _Hold:
    """What a reader gives back when it ends: its follower place and its subscription.

    Shared with the reader's finalizer, which must not refer to the reader itself.
    """

    __slots__ = ("feed", "on_close")

    def __init__(self, feed: Subscription, on_close: Callable[[], None] | None) -> None:
        self.feed = feed
        self.on_close = on_close

    def release(self) -> None:
        """Give back the place under ``max_followers`` (once)."""
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()

    def abandon(self) -> None:
        """The reader was garbage collected unclosed: give back everything now."""
        self.release()
        self.feed.close_nowait()


class ResumableStream:
    """An async iterator over a stream's chunks (``str`` or ``bytes``), with `aclose`.

    ``async for chunk in stream`` yields the chunks; ``async for index, chunk in
    stream.indexed()`` also gives each chunk's 0-based index, the value to resume
    after (``resume_existing_stream(id, after=index)``). Iterate from one task. A
    stream is also an async context manager that closes it; a reader dropped without
    closing gives back its subscription and its follower place when it is collected.

    A read may be cancelled (``asyncio.wait_for(stream.__anext__(), 15)`` as a
    keep-alive timer): the reader survives it, as anyio's memory streams do, and the
    next read goes on where it was, nothing lost and nothing doubled.

    Raises (while iterating):
        StreamFailed: the producer's source raised (the original reader gets the
            source's own exception instead), or the backend lost the stream's
            stored chunks (a Redis restart without persistence: "storage lost").
        StreamTooLarge: the stream was cut at ``max_stream_bytes`` (a StreamFailed).
        ProducerLost: the producer's process stopped renewing its lease (seen lapsed
            ``poll_interval`` apart, with no chunk in between).
        BackendUnavailable: storage could not be reached for ``retry_window`` seconds.
        StreamDeleted: the stream was deleted (``ctx.delete_stream``) while being read.
        StreamNotFound: the stream expired from storage while being read (or vanished
            in a restart, before its producer marked it failed).

    After the end (normal or raised), or after `aclose`, reads raise
    ``StopAsyncIteration``.
    """

    def __init__(
        self,
        source: ReaderSource,
        *,
        feed: Subscription,
        start: int,
        first: Snapshot | None = None,
        skip_characters: int = 0,
        local: bool = False,
        metadata: Mapping[str, Any] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.stream_id = source.stream_id
        self._source = source
        self._backend = source.backend
        self._options = source.options
        self._poll = source.options.poll_interval
        self._feed = feed
        try:  # `asyncio.get_running_loop()` is a getpid() call on 3.11: once, here
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # made outside a loop (a test)
            self._loop = None
        self._local = local
        self._stale = False  # the feed broke or fell behind: replace it before reading
        self._quiet_at: float | None = None  # when a follower's wait turns into a read
        self._live_at = 0.0  # telemetry: when a follower took the live event last (0: none)
        self._ended = False
        self._error: BaseException | None = None  # the end still to raise
        self._metadata: Mapping[str, Any] = metadata or {}
        self._merge = merge = Merge(
            start,
            LeaseWatch(self._poll, source.here),
            skip=skip_characters,
            live=local and first is None,
        )
        # The batch being handed out: chunks with indices batch_start, batch_start + 1...
        self._batch: Sequence[Chunk] = ()
        self._batch_start = start
        self._batch_pos = 0
        self._last_index: int | None = None
        self._hold = hold = _Hold(feed, on_close)
        # A reader dropped unread and unclosed still gives back what it holds.
        self._finalizer = weakref.finalize(self, hold.abandon)
        self._finalizer.atexit = False
        if first is not None:
            merge.status = first.status
            if merge.snapshot(first, start) is DELIVER:
                self._take()
            if merge.liveness is Liveness.LAPSED or merge.liveness is Liveness.LOST:
                # Opened on a lapsed lease: the reader confirms it (ProducerLost, or on
                # it goes), but a caller deciding how to answer now sees the doubt.
                merge.status = StreamStatus.FAILED

    @property
    def metadata(self) -> Mapping[str, Any]:
        """What the creator passed as ``metadata`` (empty if nothing)."""
        return self._metadata

    @property
    def status(self) -> StreamStatus:
        """The stream's status when this reader opened it (FAILED if its producer's
        lease had lapsed then, unless that producer runs in this process), then as the
        reader sees it end (FAILED once its producer is lost)."""
        return self._merge.status

    @property
    def last_index(self) -> int | None:
        """Index of the last chunk yielded so far, None before the first."""
        return self._last_index

    def __aiter__(self) -> ResumableStream:
        return self

    async def __anext__(self) -> Chunk:
        pos = self._batch_pos
        batch = self._batch
        if pos >= len(batch):
            await self._fill()
            batch = self._batch
            pos = 0
        self._batch_pos = pos + 1
        self._last_index = self._batch_start + pos
        return batch[pos]

    def _ready(self, limit: int) -> list[IndexedChunk]:
        """Up to ``limit`` more chunks that are here already (the rest of the batch in
        hand), taken without waiting: the HTTP pump sends them in one message."""
        batch = self._batch
        pos = self._batch_pos
        end = min(len(batch), pos + limit)
        if pos >= end:
            return []
        start = self._batch_start
        self._batch_pos = end
        self._last_index = start + end - 1
        new = _new_indexed
        return [new(IndexedChunk, (start + i, batch[i])) for i in range(pos, end)]

    def indexed(self) -> AsyncIterator[IndexedChunk]:
        """Iterate over ``(index, chunk)`` pairs instead of bare chunks."""
        return _Indexed(self)

    def indexed_nowait(self, limit: int = 256) -> list[IndexedChunk]:
        """Up to ``limit`` more ``(index, chunk)`` pairs that are here already, without
        waiting (empty if none is): a consumer that writes in batches takes them after
        each awaited item and sends them together. They count as read, as from
        `indexed` (`last_index` moves on)."""
        return self._ready(limit)

    def _begin_at(self, start: int) -> None:
        """Start at ``start`` instead, before the first read: the original reader of a
        pushed stream whose chunks before ``start`` reached its client another way
        (sent directly by the producing task)."""
        merge = self._merge
        self._merge = Merge(start, merge._watch, skip=merge.skip, live=True)
        self._batch = ()
        self._batch_start = start
        self._batch_pos = 0

    async def aclose(self) -> None:
        """Stop reading and release the subscription; the producer is not affected."""
        self._ended = True
        self._error = None
        await self._release()

    async def __aenter__(self) -> ResumableStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the merge's I/O -----------------------------------------------------------

    def _take(self) -> None:
        merge = self._merge
        self._batch = merge.batch
        self._batch_start = merge.batch_start
        self._batch_pos = 0

    async def _fill(self) -> None:
        """Take the next batch in hand, doing what the merge asks until it has one.

        Cancelled at any await, the merge is where it was: the read or the wait it
        asked for is asked again by the next call.

        Raises:
            StopAsyncIteration: the stream ended normally (or the reader was closed).
            BaseException: the stream's failure, or one of the I/O errors listed in the
                class docstring.
        """
        if not self._ended:
            merge = self._merge
            try:
                step = merge.step()
                while True:
                    if step is DELIVER:
                        self._take()
                        if self._live_at:  # only set if _telemetry.ENABLED
                            self._lag()
                        return
                    if step is WAIT:
                        step = await self._next_event()
                        if self._ended:  # closed meanwhile (aclose from another task)
                            break
                    elif step is READ:
                        pos = merge.pos
                        snap = await (self._recover() if self._stale else self._reread())
                        step = merge.snapshot(snap, pos)
                    else:
                        await self._end(None if step is DONE else self._failure(step))
                        break
            except asyncio.CancelledError:
                raise  # the state is as the merge left it: the next call goes on
            except BaseException as exc:
                await self._end(exc)
        error, self._error = self._error, None
        if error is not None:
            raise error
        raise StopAsyncIteration

    async def _next_event(self) -> Step:
        """Wait for the next live event (a follower: or ``poll_interval`` of quiet, kept
        across cancelled reads) and give it to the merge."""
        feed = self._feed
        merge = self._merge
        while True:
            try:
                event = feed.get_nowait()
            except BackendUnavailable:
                # The live feed broke: subscribe again and re-read, for up to retry_window.
                self._stale = True
                return merge.event(RESYNC)
            if event is not None:
                self._quiet_at = None
                if _telemetry.ENABLED and not self._local:
                    live = type(event) is Appended
                    self._live_at = self._now() if live else 0.0
                if type(event) is Resync and isinstance(feed, LocalFeed):
                    # A feed ahead of storage fell behind its budget (or its producer
                    # ended unstored): move to the backend's feed, then read.
                    self._stale = True
                return merge.event(event)
            if feed.closed:
                if self._ended:
                    return WAIT
                # Closed under us (the backend closed): follow on a new subscription.
                self._stale = True
                return merge.event(RESYNC)
            if self._local:
                # The producer itself feeds it and ends it: no need to poll storage.
                waiter = feed.waiter()
                if waiter is not None:
                    await waiter
                continue
            deadline = self._quiet_at
            if deadline is None:
                deadline = self._quiet_at = self._now() + self._poll
            if not await feed.wait(deadline):
                # Nothing for poll_interval: a message may be lost, or the producer may
                # be (the merge has its lease judged on the snapshot it asks for).
                self._quiet_at = None
                self._live_at = 0.0  # what a poll's read delivers arrived by no event
                return merge.event(None)

    async def _end(self, error: BaseException | None) -> None:
        """The stream ended for this reader: raise ``error`` (if any), then stop."""
        self._ended = True
        self._error = error
        await self._release()

    async def _release(self) -> None:
        """Give back the follower place and the subscription (both once)."""
        self._hold.release()
        closing = self._feed.release_soon()
        if closing is not None:
            # In a task of its own, so that a cancelled reader still unsubscribes;
            # bounded, as a backend that cannot be reached may not answer.
            await asyncio.wait((closing,), timeout=_CLOSE_TIMEOUT)
        self._finalizer.detach()

    def _now(self) -> float:
        """The loop's clock."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop.time()

    def _lag(self) -> None:
        """``resumable_stream.follower.lag``: from taking the live event to handing out
        its first chunk (through a re-read, when it showed a gap)."""
        lag = self._now() - self._live_at
        self._live_at = 0.0
        if _telemetry.ENABLED:
            _telemetry.follower_lag(lag)

    def _failure(self, step: Step) -> BaseException:
        if step is LOST:
            return ProducerLost(self.stream_id)
        merge = self._merge
        if merge.error and merge.error.startswith(StreamDeleted.PREFIX):
            return StreamDeleted(self.stream_id)  # announced by `delete_stream`, any process
        if merge.exception is not None:
            return merge.exception  # the local feed's end: the source's own exception
        if self._source.origin_error is not None:
            origin = self._source.origin_error()
            if origin is not None:
                return origin
        error = merge.error
        if error and error.startswith(StreamTooLarge.PREFIX):
            return StreamTooLarge(self.stream_id, error)
        return StreamFailed(self.stream_id, error or "unknown error")

    async def _read(self) -> Snapshot:
        snap = await self._backend.snapshot(self.stream_id, self._merge.pos, _PAGE)
        if snap is None:
            # Expired or deleted while we were reading it: nothing more will come. A
            # deletion's tombstone tells them apart (the announcement may not have
            # reached us first: a doorbell-only feed, or a feed being replaced).
            backend = self._backend
            if isinstance(backend, Deletes) and await backend.deleted(self.stream_id):
                raise StreamDeleted(self.stream_id)
            raise StreamNotFound(self.stream_id)
        return snap

    async def _reread(self) -> Snapshot:
        """Read from storage; if it is unreachable, recover as from a broken feed."""
        try:
            return await self._read()
        except BackendUnavailable:
            return await self._recover()

    async def _resubscribe(self) -> None:
        self._feed.release_soon()  # unsubscribes in a task of its own
        self._local = False
        feed = await self._backend.subscribe(
            self.stream_id, max_buffered_bytes=self._options.reader_buffer_bytes
        )
        self._feed = self._hold.feed = feed
        self._stale = False

    async def _recover(self) -> Snapshot:
        """Subscribe again, then read from storage (in that order, as at the start),
        retrying while the backend is unreachable for up to ``retry_window`` seconds.

        Raises:
            BackendUnavailable: still unreachable at the end of the window.
        """
        self._stale = True  # until a subscription succeeded (a cancelled one is retried)
        window = RetryWindow(self._options.retry_window)
        while True:
            try:
                # Bounded: a half-open connection may never answer (a backend's own
                # timeouts can be longer than the window, or absent).
                with anyio.fail_after(window.attempt()):
                    await self._resubscribe()
                    return await self._read()
            except TimeoutError:
                raise BackendUnavailable(
                    f"no answer from the backend within retry_window "
                    f"({self._options.retry_window} s)"
                ) from None
            except BackendUnavailable as exc:
                if _telemetry.ENABLED:
                    _telemetry.backend_error(exc, "read")
                if window.exhausted():
                    raise
                await window.pause()


_new_indexed = tuple.__new__  # IndexedChunk(i, c) without its Python-level __new__


class _Indexed:
    """``stream.indexed()``: a plain iterator object, so that it survives a cancelled
    read as the stream does (an async generator would be closed by it)."""

    __slots__ = ("_stream",)

    def __init__(self, stream: ResumableStream) -> None:
        self._stream = stream

    def __aiter__(self) -> _Indexed:
        return self

    async def __anext__(self) -> IndexedChunk:
        stream = self._stream
        # `ResumableStream.__anext__`, written out here rather than awaited: one
        # coroutine per chunk instead of two (a third of a follower's cost per chunk).
        # Keep the two alike.
        pos = stream._batch_pos
        batch = stream._batch
        if pos >= len(batch):
            await stream._fill()
            batch = stream._batch
            pos = 0
        stream._batch_pos = pos + 1
        index = stream._last_index = stream._batch_start + pos
        return _new_indexed(IndexedChunk, (index, batch[pos]))
