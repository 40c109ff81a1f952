"""The producer: runs the user's source once, feeds the original reader directly,
and writes every chunk behind to the backend.

Ordering invariants:

* Chunk ``i`` goes to the local feed before it is handed to the writer, so the
  original reader never waits on the backend.
* The writer has at most one write in flight. Chunks that arrive meanwhile are
  batched into the next write (up to ``max_batch_chunks``/``max_batch_bytes``), so a
  fast source costs far fewer writes than chunks and a slow one costs one per chunk.
* Writes are numbered by their start index and the backend refuses one that does
  not start at the stored length: a retried or stale write can neither leave a gap
  nor store a chunk twice.
* The end (done or failed) rides on the last write, after every chunk, and the
  original reader sees the end only after that write: read-your-writes for
  whoever acts on the original reader finishing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import anyio

from ._exceptions import BackendUnavailable, StreamTooLarge, describe
from ._options import StreamOptions
from ._subscription import Bell, Subscription
from ._types import Chunk, Ended, StreamStatus
from .backends._protocol import Backend, StaleProducer

__all__ = ["STORAGE_LOST", "Producer"]

logger = logging.getLogger("resumable_stream")

STORAGE_LOST = (
    "storage lost: the backend lost this stream's stored chunks "
    "(a Redis restart without persistence, or eviction)"
)


_RENEW_TICK = 0.05  # seconds: lease renewals are rounded down to this clock


class _Writer:
    """Write-behind of one stream's chunks, one write in flight at a time."""

    def __init__(
        self,
        backend: Backend,
        stream_id: str,
        token: str,
        options: StreamOptions,
        ttl: float,
        on_stop: Callable[[], None],
    ) -> None:
        self._backend = backend
        self._on_stop = on_stop
        self._stream_id = stream_id
        self._token = token
        self._options = options
        self._ttl = ttl
        self._finished_ttl = options.finished_ttl or ttl
        self._pending: list[Chunk] = []
        self._pending_bytes = 0
        self._stored = 0  # index of the first pending chunk
        self._end: Ended | None = None
        self._wake = Bell()
        self._tick: asyncio.TimerHandle | None = None  # the next write, if scheduled
        self._due = False  # a tick fired and its write has not started
        # Backends that can start a write without a task (`write_soon`) are written
        # from the tick's timer: the writer task then only renews, retries and ends.
        self._soon = getattr(backend, "write_soon", None)
        self._in_flight = False  # a write is out (from a tick, or the task's own)
        self._retry: list[Chunk] | None = None  # a failed tick write, for the task
        self._last_write = 0.0
        self._room = asyncio.Event()
        self._room.set()
        self.broken = False
        self.writes = 0

    def add(self, chunk: Chunk) -> bool:
        """Queue ``chunk``; True if the source should wait (`wait_for_room`)."""
        if self.broken:
            return False
        self._pending.append(chunk)
        self._pending_bytes += len(chunk)
        if self._tick is None and not self._in_flight:
            self._schedule()
        return self._pending_bytes > self._options.max_buffered_bytes

    def _schedule(self) -> None:
        """Wake the writer at the next tick of the write clock (a multiple of
        ``write_interval`` in loop time): chunks that come meanwhile join that write,
        and every stream of the process writes in the same loop turn, so the backend
        can send them all at once. A timer, not a task switch per chunk."""
        interval = self._options.write_interval
        if interval <= 0:
            self._fire()
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._tick = loop.call_at(now + interval - now % interval, self._fire)

    def _fire(self) -> None:
        self._tick = None
        if self.broken or self._in_flight:
            return  # a failed writer, or the write in flight schedules the next tick
        if self._soon is None or self._end is not None or self._due:
            # The task writes: a backend without `write_soon`, the end (it rides on
            # the last write), or a write the task is already busy with.
            self._due = True
            self._wake.set()
            return
        size = self._pending_bytes
        batch = self._take()
        if not batch:
            return
        future = self._soon(
            self._stream_id, self._token, self._stored, batch, end=None,
            ttl=self._ttl, finished_ttl=self._finished_ttl, lease=self._options.lease,
        )
        if future is None:  # not this time (or never): the task writes
            self._soon = None
            self._pending[:0] = batch
            self._pending_bytes = size
            self._due = True
            self._wake.set()
            return
        self._in_flight = True
        future.add_done_callback(lambda f: self._written(f, batch))

    def _written(self, future: asyncio.Future[bool], batch: list[Chunk]) -> None:
        """A tick's write completed: account for it, or hand it to the task to retry."""
        error: BaseException | None = (
            asyncio.CancelledError() if future.cancelled() else future.exception()
        )
        if error is not None:
            self._retry = batch  # the task retries it; nothing else is written meanwhile
            self._wake.set()
            return
        self._in_flight = False
        self._stored += len(batch)
        self.writes += 1
        self._last_write = future.get_loop().time()
        if future.result() and self._end is None:
            self._on_stop()  # requested from some process with stop_stream()
        if self._pending_bytes <= self._options.max_buffered_bytes:
            self._room.set()
        if self._end is not None:
            self._wake.set()  # the task writes the rest and the end
        elif self._pending and self._tick is None:
            self._schedule()

    async def wait_for_room(self) -> None:
        """Backpressure on the source, only when the backend is far behind."""
        self._room.clear()
        await self._room.wait()

    def close(self, end: Ended) -> None:
        self._end = end
        self._wake.set()

    def _take(self) -> list[Chunk]:
        options = self._options
        pending = self._pending
        batch = pending[: options.max_batch_chunks]
        size = sum(map(len, batch))
        if size > options.max_batch_bytes and len(batch) > 1:
            # Cut at the byte limit (a batch always holds at least one chunk).
            size = 0
            for n, chunk in enumerate(batch):
                if n and size + len(chunk) > options.max_batch_bytes:
                    batch = batch[:n]
                    break
                size += len(chunk)
        del pending[: len(batch)]
        self._pending_bytes -= size
        return batch

    async def run(self) -> None:
        renew_every = self._options.lease / 3
        # Renewals fall on a coarse shared clock, so that a process' idle streams
        # renew together (one pipeline, not one round trip each).
        clock = min(_RENEW_TICK, renew_every / 2)
        loop = asyncio.get_running_loop()
        self._last_write = loop.time()
        try:
            while True:
                while self._retry is None and (
                    self._in_flight or (self._end is None and not self._due)
                ):
                    due = self._last_write + renew_every
                    renew_at = due - due % clock
                    now = loop.time()
                    if self._in_flight:
                        # A tick's write is out; its completion moves the lease on.
                        renew_at = max(renew_at, now + clock)
                    elif now >= renew_at:
                        break  # an empty batch only renews the lease
                    self._wake.clear()
                    timer = loop.call_at(renew_at, self._wake.set)
                    try:
                        await self._wake.wait()
                    finally:
                        timer.cancel()
                if self._retry is not None:
                    # A tick's write failed: retry it here, with the usual window.
                    batch, self._retry = self._retry, None
                    if not await self._write(batch, None):
                        return
                    self._in_flight = False
                    self._stored += len(batch)
                    self._last_write = loop.time()
                    if self._pending_bytes <= self._options.max_buffered_bytes:
                        self._room.set()
                    if self._pending and self._tick is None and self._end is None:
                        self._schedule()
                    continue
                self._due = False
                batch = self._take()
                end = self._end if not self._pending else None
                self._in_flight = True  # no tick writes meanwhile: one write at a time
                try:
                    if not await self._write(batch, end):
                        return
                finally:
                    self._in_flight = False
                self._stored += len(batch)
                self._last_write = loop.time()
                if self._pending and self._tick is None and self._end is None:
                    self._schedule()  # chunks came during the write
                if self._pending_bytes <= self._options.max_buffered_bytes:
                    self._room.set()
                if end is not None:
                    return
        finally:
            if self._tick is not None:
                self._tick.cancel()

    async def _write(self, batch: list[Chunk], end: Ended | None) -> bool:
        """One write, retried while the backend is unreachable for up to ``retry_window``."""
        deadline = asyncio.get_running_loop().time() + self._options.retry_window
        delay = 0.05
        while True:
            try:
                stop = await self._backend.write(
                    self._stream_id, self._token, self._stored, batch, end=end,
                    ttl=self._ttl, finished_ttl=self._finished_ttl, lease=self._options.lease,
                )
                self.writes += 1
                if stop and end is None:
                    self._on_stop()  # requested from some process with stop_stream()
                return True
            except StaleProducer as exc:
                # An earlier try (ours, or a resend inside the Redis client after a
                # cut) may have been applied with its reply lost.
                if await self._landed(batch, end):
                    return True
                self._give_up(exc)
                await self._if_lost()
                return False
            except (BackendUnavailable, OSError) as exc:
                if asyncio.get_running_loop().time() + delay > deadline:
                    self._give_up(exc)
                    await self._mark_failed(f"persistence failed: {exc}")
                    return False
                await asyncio.sleep(delay)  # backoff between retries, not synchronisation
                delay = min(delay * 2, 1.0)
            except Exception as exc:  # refused for good (an error reply that no retry fixes)
                self._give_up(exc)
                await self._mark_failed(f"persistence failed: {exc}")
                return False

    async def _landed(self, batch: list[Chunk], end: Ended | None) -> bool:
        """After a refused retry: did the try whose reply was lost store ``batch``?

        Only this producer can write to a stream while its record exists (a claim never
        takes a stream over), so a stored length of exactly ``stored + len(batch)`` with
        the expected status means that try was applied.
        """
        try:
            snap = await self._backend.snapshot(self._stream_id, 0, 0)
        except Exception:  # unknowable now; the refusal stands
            return False
        if snap is None or snap.length != self._stored + len(batch):
            return False
        expected = StreamStatus.RUNNING if end is None else end.status
        return snap.status is expected

    async def _if_lost(self) -> None:
        """After a refused write: if the backend lost the stream's record (a Redis
        restart without persistence, eviction), store a failed record in its place;
        if it lost stored chunks only (the list evicted), end the stream failed.

        Readers then get `StreamFailed` ("storage lost") and a resume after a position
        gets nothing, instead of a stream that silently vanished (or, worse, one that
        a later producer could start again under the same id)."""
        try:
            snap = await self._backend.snapshot(self._stream_id, 0, 0)
            if snap is not None:
                if snap.status is StreamStatus.RUNNING and snap.length < self._stored:
                    # The record is there but stored chunks are not (the list evicted):
                    # end it failed where storage now stands (fenced by our token).
                    await self._backend.write(
                        self._stream_id, self._token, snap.length, [],
                        end=Ended(StreamStatus.FAILED, snap.length, STORAGE_LOST),
                        ttl=self._ttl, finished_ttl=self._finished_ttl,
                        lease=self._options.lease,
                    )
                    logger.error(
                        "stream %r: the backend lost stored chunks; marked failed",
                        self._stream_id,
                    )
                return  # otherwise a real refusal: another producer, or the stream ended
            if await self._backend.claim(
                self._stream_id, self._token, ttl=self._ttl, lease=self._options.lease
            ) is not None:
                return  # someone else made a stream of this id meanwhile: theirs now
            await self._backend.write(
                self._stream_id, self._token, 0, [],
                end=Ended(StreamStatus.FAILED, 0, STORAGE_LOST),
                ttl=self._ttl, finished_ttl=self._finished_ttl, lease=self._options.lease,
            )
        except Exception as exc:
            logger.error(
                "stream %r: cannot mark the lost stream failed (%s)",
                self._stream_id, describe(exc),
            )
            return
        logger.error(
            "stream %r: the backend lost its stored chunks; marked failed", self._stream_id
        )

    def _give_up(self, exc: BaseException) -> None:
        logger.error(
            "stream %r: cannot store chunks from index %d (%s); the original reader goes on, "
            "other readers will get an error",
            self._stream_id, self._stored, describe(exc),
        )
        self.broken = True
        self._pending.clear()
        self._pending_bytes = 0
        self._room.set()

    async def _mark_failed(self, error: str) -> None:
        try:
            await self._backend.write(
                self._stream_id, self._token, self._stored, [],
                end=Ended(StreamStatus.FAILED, self._stored, error),
                ttl=self._ttl, finished_ttl=self._finished_ttl, lease=self._options.lease,
            )
        except Exception as exc:  # the lease will lapse instead: readers get ProducerLost
            logger.error(
                "stream %r: cannot mark it failed either (%s)", self._stream_id, describe(exc)
            )


def _size(chunk: Chunk) -> int:
    """Stored bytes of a chunk: UTF-8 for text."""
    if isinstance(chunk, bytes) or chunk.isascii():
        return len(chunk)
    return len(chunk.encode("utf-8", "surrogatepass"))


def _coerce(chunk: object) -> Chunk:
    if isinstance(chunk, (str, bytes)):
        return chunk
    if isinstance(chunk, (bytearray, memoryview)):
        return bytes(chunk)
    raise TypeError(f"stream chunks must be str or bytes, not {type(chunk).__name__}")


class Producer:
    """Runs one stream's source to the end in a task owned by the context."""

    def __init__(
        self,
        backend: Backend,
        stream_id: str,
        token: str,
        source: AsyncIterator[Chunk],
        feed: Subscription,
        options: StreamOptions,
        ttl: float,
    ) -> None:
        self.stream_id = stream_id
        self._source = source
        self._feed = feed
        self._options = options
        self.writer = _Writer(backend, stream_id, token, options, ttl, self.stop)
        self.exception: BaseException | None = None
        self._index = 0
        self._ended = False
        self._stop_scope = anyio.CancelScope()

    def stop(self) -> None:
        """Stop pulling from the source and end the stream as done (not failed)."""
        self._stop_scope.cancel()

    def on_task_done(self, task: asyncio.Task[None]) -> None:
        """Done-callback: a task cancelled before it ran must still end its reader."""
        if not self._ended:
            self._ended = True
            error = "CancelledError: the producer was shut down"
            self._feed.push(Ended(StreamStatus.FAILED, self._index, error))

    async def run(self) -> None:
        writer_task = asyncio.create_task(self.writer.run())
        index = 0
        cancelled: BaseException | None = None
        try:
            # stop() cancels this scope only; the scope swallows its own cancellation.
            push, add = self._feed.push_chunk, self.writer.add
            limit = self._options.max_stream_bytes
            stored = 0
            with self._stop_scope:
                async for chunk in self._source:
                    if type(chunk) is not str and type(chunk) is not bytes:
                        chunk = _coerce(chunk)
                    if limit is not None:
                        stored += _size(chunk)
                        if stored > limit:
                            raise StreamTooLarge.for_limit(self.stream_id, limit)
                    push(index, chunk)
                    index = self._index = index + 1
                    if add(chunk):
                        await self.writer.wait_for_room()
            end = Ended(StreamStatus.DONE, index)
        except asyncio.CancelledError as exc:
            cancelled = exc
            end = Ended(StreamStatus.FAILED, index, "CancelledError: the producer was shut down")
        except StreamTooLarge as exc:
            self.exception = exc
            logger.warning("stream %r: cut at chunk %d: %s", self.stream_id, index, exc.error)
            end = Ended(StreamStatus.FAILED, index, exc.error, exc)
        except Exception as exc:
            self.exception = exc
            logger.warning("stream %r: its source raised %s", self.stream_id, describe(exc))
            end = Ended(StreamStatus.FAILED, index, describe(exc), exc)
        finally:
            aclose = getattr(self._source, "aclose", None)
            if aclose is not None:
                with anyio.move_on_after(1.0, shield=True):
                    await aclose()
        self.writer.close(end)
        # Finish the writes even when shutting down, but never hang on them.
        grace = max(self._options.lease, self._options.retry_window) + 1.0
        with anyio.move_on_after(grace, shield=True):
            await asyncio.wait([writer_task])
        if not writer_task.done():
            writer_task.cancel()
        # The original reader ends only once the end is stored (one round trip, once
        # per stream): after it, every reader and `has_existing_stream` see "done".
        self._ended = True
        self._feed.push(end)
        if cancelled is not None:
            raise cancelled
