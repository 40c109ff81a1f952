"""A reader of one stream: replay what is stored, then follow live events.

The merge, written once for every backend:

1. Subscribe and wait until the subscription is active (backend invariant 3).
2. Take a snapshot from position ``pos``: status, length and stored chunks, read
   atomically. Anything written after the subscription became active is also
   announced to us, so between the snapshot and the live events nothing is missed.
3. Follow live events by sequence number: an `Appended` whose chunks we already have
   is dropped (or trimmed); one that starts beyond ``pos`` means a message was lost,
   so re-read from storage. `Resync` (reconnect, overflow) and a quiet period of
   ``poll_interval`` also re-read. `Ended` with a length beyond ``pos`` re-reads first.

So each reader yields every index exactly once, in order, whatever the timing.
The original reader (in the producer's process) starts on a local feed fed by the
producer itself and switches to the backend only if it falls too far behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import anyio

from ._exceptions import (
    BackendUnavailable,
    ProducerLost,
    StreamFailed,
    StreamNotFound,
    StreamTooLarge,
)
from ._options import StreamOptions
from ._subscription import Subscription
from ._types import Appended, Chunk, Ended, IndexedChunk, Resync, Snapshot, StreamStatus
from .backends._protocol import Backend

__all__ = ["ResumableStream"]

_PAGE = 2000  # chunks per snapshot read
_LEAST_ATTEMPT = 1.0  # seconds a recovery attempt may take even at the end of the window


class ResumableStream:
    """An async iterator over a stream's chunks (``str`` or ``bytes``), with `aclose`.

    ``async for chunk in stream`` yields the chunks; ``async for index, chunk in
    stream.indexed()`` also gives each chunk's 0-based index, the value to resume
    after (``resume_existing_stream(id, after=index)``). Iterate from one task and
    call `aclose` from that task or once iteration has stopped, as with any async
    generator. A stream is also an async context manager that closes it.

    Raises (while iterating):
        StreamFailed: the producer's source raised (the original reader gets the
            source's own exception instead), or the backend lost the stream's
            stored chunks (a Redis restart without persistence: "storage lost").
        StreamTooLarge: the stream was cut at ``max_stream_bytes`` (a StreamFailed).
        ProducerLost: the producer's process stopped renewing its lease (seen twice,
            ``poll_interval`` apart, with no chunk in between).
        BackendUnavailable: storage could not be reached for ``retry_window`` seconds.
        StreamNotFound: the stream expired from storage while being read (or vanished
            in a restart, before its producer marked it failed).
    """

    def __init__(
        self,
        stream_id: str,
        backend: Backend,
        options: StreamOptions,
        *,
        feed: Subscription,
        start: int,
        first: Snapshot | None = None,
        skip_characters: int = 0,
        local: bool = False,
        origin_error: Callable[[], BaseException | None] | None = None,
        metadata: Mapping[str, Any] | None = None,
        on_close: Callable[[], None] | None = None,
        producer_alive: Callable[[], bool] | None = None,
    ) -> None:
        self.stream_id = stream_id
        self._on_close = on_close
        # True while this process's own producer of the stream runs and stores: then a
        # lapsed lease means a loop too busy to renew it in time, not a dead producer.
        self._producer_alive = producer_alive
        self._backend = backend
        self._options = options
        self._feed = feed
        self._pos = start
        self._skip = skip_characters
        self._local = local
        self._origin_error = origin_error
        self._last_index: int | None = None
        self._metadata: Mapping[str, Any] = metadata or {}
        self._status = StreamStatus.RUNNING
        if first is not None:
            self._status = first.status
            if first.status is StreamStatus.RUNNING and not self._lease_alive(first):
                self._status = StreamStatus.FAILED
        # The batch being handed out: chunks with indices batch_start, batch_start + 1...
        self._batch: Sequence[Chunk] = ()
        self._batch_start = 0
        self._batch_pos = 0
        # True while `_run` waits at a yield whose next step is taking the feed's next
        # event: then `__anext__` takes an `Appended` that continues at ``_pos`` itself.
        self._following = False
        self._quiet = False  # __anext__ waited a whole poll_interval for nothing
        self._lapsed = False  # the last snapshot found the producer's lease lapsed
        self._poll = options.poll_interval
        self._gen = self._run(first)

    @property
    def metadata(self) -> Mapping[str, Any]:
        """What the creator passed as ``metadata`` (empty if nothing)."""
        return self._metadata

    @property
    def status(self) -> StreamStatus:
        """The stream's status when this reader opened it (FAILED if its producer was
        already lost), then as the reader sees it end."""
        return self._status

    @property
    def last_index(self) -> int | None:
        """Index of the last chunk yielded so far, None before the first."""
        return self._last_index

    def __aiter__(self) -> ResumableStream:
        return self

    async def __anext__(self) -> Chunk:
        # Fast path: hand out the current batch without entering the generator.
        pos = self._batch_pos
        batch = self._batch
        if pos >= len(batch):
            taken = None
            if self._following:
                feed = self._feed
                taken = feed.take_at(self._pos)
                if taken is None and feed.idle():
                    # Wait for the next event right here: no generator frames to
                    # resume per chunk. The original reader never polls; a follower
                    # that heard nothing for poll_interval has `_run` re-read.
                    if await feed.wait_ready(None if self._local else self._poll):
                        taken = feed.take_at(self._pos)
                    else:
                        self._quiet = True
            if taken:
                # Straight from the live feed: the generator would do just this.
                self._lapsed = False
                self._batch_start = self._pos
                self._pos += len(taken)
                batch = self._batch = taken
            else:
                self._batch_start, batch = await self._gen.__anext__()
                self._batch = batch
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
        return [IndexedChunk(start + i, batch[i]) for i in range(pos, end)]

    def indexed(self) -> AsyncIterator[IndexedChunk]:
        """Iterate over ``(index, chunk)`` pairs instead of bare chunks."""
        return self._indexed()

    async def _indexed(self) -> AsyncGenerator[IndexedChunk, None]:
        while True:
            try:
                chunk = await self.__anext__()
            except StopAsyncIteration:
                return
            yield IndexedChunk(self._batch_start + self._batch_pos - 1, chunk)

    async def aclose(self) -> None:
        """Stop reading and release the subscription; the producer is not affected."""
        try:
            await self._gen.aclose()
        finally:
            self._release()

    def _release(self) -> None:
        """Give back this reader's place under ``max_followers`` (once)."""
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    async def __aenter__(self) -> ResumableStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _cut(self, chunk: Chunk) -> Chunk | None:
        """Apply what is left of ``skip_characters`` to ``chunk``."""
        if self._skip >= len(chunk):
            self._skip -= len(chunk)
            return None
        chunk = chunk[self._skip :]
        self._skip = 0
        return chunk

    def _lease_alive(self, snap: Snapshot) -> bool:
        return snap.lease_alive or (self._producer_alive is not None and self._producer_alive())

    def _failure(self, error: str | None) -> BaseException:
        if self._origin_error is not None:
            origin = self._origin_error()
            if origin is not None:
                return origin
        if error and error.startswith(StreamTooLarge.PREFIX):
            return StreamTooLarge(self.stream_id, error)
        return StreamFailed(self.stream_id, error or "unknown error")

    async def _read(self) -> Snapshot:
        snap = await self._backend.snapshot(self.stream_id, self._pos, _PAGE)
        if snap is None:
            # Expired (or deleted) while we were reading it: nothing more will come.
            raise StreamNotFound(self.stream_id)
        return snap

    async def _resubscribe(self) -> None:
        await self._feed.aclose()  # closed feeds ignore a second aclose in `finally`
        self._local = False
        self._feed = await self._backend.subscribe(
            self.stream_id, max_buffered_bytes=self._options.reader_buffer_bytes
        )

    async def _reread(self) -> Snapshot:
        """Re-read from storage; if it is unreachable, recover as from a broken feed."""
        try:
            return await self._read()
        except BackendUnavailable:
            return await self._recover()

    async def _recover(self) -> Snapshot:
        """Subscribe again, then re-read from storage (in that order, as at the start),
        retrying while the backend is unreachable for up to ``retry_window`` seconds.

        Raises:
            BackendUnavailable: still unreachable at the end of the window.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._options.retry_window
        delay = 0.05
        while True:
            try:
                # Bounded: a half-open connection may never answer (a backend's own
                # timeouts can be longer than the window, or absent).
                with anyio.fail_after(max(deadline - loop.time(), _LEAST_ATTEMPT)):
                    await self._resubscribe()
                    return await self._read()
            except TimeoutError:
                raise BackendUnavailable(
                    f"no answer from the backend within retry_window "
                    f"({self._options.retry_window} s)"
                ) from None
            except BackendUnavailable:
                if loop.time() + delay > deadline:
                    raise
                await asyncio.sleep(delay)  # backoff between retries, not synchronisation
                delay = min(delay * 2, 1.0)

    def _batches(
        self, start: int, chunks: Sequence[Chunk]
    ) -> Iterator[tuple[int, Sequence[Chunk]]]:
        """``chunks`` (from index ``start``) as batches, after what is left to skip."""
        if not self._skip:
            yield start, chunks
            return
        for i, chunk in enumerate(chunks):
            if not self._skip:
                yield start + i, chunks[i:]
                return
            cut = self._cut(chunk)
            if cut is not None:
                yield start + i, (cut,)

    async def _run(
        self, snap: Snapshot | None
    ) -> AsyncGenerator[tuple[int, Sequence[Chunk]], None]:
        poll = self._options.poll_interval
        try:
            while True:
                if snap is not None:
                    if snap.chunks:
                        start = self._pos
                        self._pos += len(snap.chunks)
                        for batch in self._batches(start, snap.chunks):
                            yield batch
                    if self._pos < snap.length:
                        snap = await self._reread()
                        continue
                    if snap.status is StreamStatus.DONE:
                        self._status = StreamStatus.DONE
                        return
                    if snap.status is StreamStatus.FAILED:
                        self._status = StreamStatus.FAILED
                        raise self._failure(snap.error)
                    if not self._lease_alive(snap):
                        if self._lapsed:
                            self._status = StreamStatus.FAILED
                            raise ProducerLost(self.stream_id)
                        # Seen once: confirmed a poll_interval later, unless the producer
                        # shows life meanwhile. A process whose loop stalls (a full GC
                        # pass over 10,000 streams, a burst of work) renews late, and a
                        # follower ended for that would lose a live stream.
                        self._lapsed = True
                    else:
                        self._lapsed = False
                    snap = None
                try:
                    if self._quiet:  # __anext__ already waited poll_interval for it
                        self._quiet = False
                        event = None
                    else:
                        event = await self._feed.get(None if self._local else poll)
                except BackendUnavailable:
                    # The live feed broke (a Redis restart, a cut, a dropped slow
                    # subscriber): subscribe again and re-read, for up to retry_window.
                    snap = await self._recover()
                    continue
                if event is None or isinstance(event, Resync):
                    if self._local:
                        # The original reader fell behind its budget: read from storage.
                        await self._resubscribe()
                    snap = await self._reread()
                    continue
                if isinstance(event, Appended):
                    if event.start > self._pos:
                        snap = await self._reread()  # a message was lost: fill the gap
                        continue
                    offset = self._pos - event.start
                    fresh = event.chunks[offset:] if offset else event.chunks
                    if fresh:
                        self._lapsed = False  # the producer lives
                        start = self._pos
                        self._pos += len(fresh)
                        if self._skip:
                            for batch in self._batches(start, fresh):
                                yield batch
                        else:
                            # Until resumed, the next step is the feed's next event,
                            # which __anext__ may take itself (see `_following`).
                            self._following = True
                            try:
                                yield start, fresh
                            finally:
                                self._following = False
                    continue
                assert isinstance(event, Ended)
                if event.length > self._pos:
                    snap = await self._reread()
                    continue
                self._status = event.status
                if event.status is StreamStatus.DONE:
                    return
                if event.exception is not None:
                    raise event.exception
                raise self._failure(event.error)
        finally:
            self._release()
            with anyio.move_on_after(5.0, shield=True):
                await self._feed.aclose()
