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
import enum
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio

from . import _telemetry
from ._exceptions import BackendUnavailable, StreamDeleted, StreamTooLarge, describe
from ._fanout import Fanout
from ._options import StreamOptions
from ._retry import LEAST_ATTEMPT, RetryWindow
from ._subscription import Bell, LocalFeed, Subscription
from ._types import Chunk, Ended, StreamStatus
from .backends._protocol import Backend, StaleProducer, WritesSoon

__all__ = [
    "STORAGE_LOST",
    "Intake",
    "Producer",
    "PushedProducer",
    "PushedSource",
    "Refused",
    "WriteClock",
    "WriterState",
]

logger = logging.getLogger("resumable_stream")

STORAGE_LOST = (
    "storage lost: the backend lost this stream's stored chunks "
    "(a Redis restart without persistence, or eviction)"
)


_RENEW_TICK = 0.05  # seconds: lease renewals are rounded down to this clock
_SHUT_DOWN = "CancelledError: the producer was shut down"
_UNEXPECTED = Ended(StreamStatus.FAILED, 0, "the producer ended unexpectedly")
_CLEANUP = 1.0  # seconds the source's own cleanup (aclose) may take


class WriterState(enum.Enum):
    """Where a stream's write-behind is. Every change of state is one method below."""

    IDLE = "idle"  # nothing pending, no write out: the task sleeps until a renewal is due
    SCHEDULED = "scheduled"  # chunks pending, the write clock's timer is set
    DUE = "due"  # chunks (or the end) to write now, by the task
    WRITING = "writing"  # one write is out (`_out` holds its chunks until it lands)
    RETRYING = "retrying"  # the write out failed in a way a retry may fix: the task retries it
    ENDED = "ended"  # the end is stored
    BROKEN = "broken"  # storage refused for good: nothing more is written


_FINAL = (WriterState.ENDED, WriterState.BROKEN)


class WriteClock:
    """The write clock of one context: one timer per tick for every stream due at it.

    A timer per stream per write costs a heap entry, a handle and its cancellation;
    1,000 streams writing at the same tick now share one. A writer found here whose
    state moved on meanwhile (closed, broken, or already written) ignores the tick.
    """

    __slots__ = ("_due", "_handle", "_loop")

    def __init__(self) -> None:
        self._due: list[_Writer] = []
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, writer: _Writer, interval: float, loop: asyncio.AbstractEventLoop) -> None:
        """Call ``writer._on_tick()`` at the next multiple of ``interval`` (loop time),
        or with the tick already set, if one is (it is never later than that)."""
        if loop is not self._loop:
            # A context used from another loop: the old loop's tick will never come.
            self._loop, self._handle, self._due = loop, None, []
        self._due.append(writer)
        if self._handle is None:
            now = loop.time()
            self._handle = loop.call_at(now + interval - now % interval, self._fire)

    def _fire(self) -> None:
        self._handle = None
        due, self._due = self._due, []
        for writer in due:
            writer._on_tick()


class _Writer:
    """Write-behind of one stream's chunks, one write in flight at a time.

    Two paths issue writes, and both report to the same transitions: the write
    clock's timer (`_on_tick`, through `WritesSoon.write_soon`: no task switch per
    write) and the writer's task (`run`: backends without `write_soon`, retries,
    lease renewals, the end). A chunk leaves ``_pending`` only into ``_out``, the
    write in flight, and leaves ``_out`` only in `_landed` (the one place that records
    a stored write) or `_give_up` (storage refused for good; the stream is marked
    failed). So a batch can be retried or failed, never dropped.
    """

    __slots__ = (
        "_backend",
        "_clock",
        "_end",
        "_error",
        "_finished_ttl",
        "_last_write",
        "_loop",
        "_on_deleted",
        "_on_halt",
        "_on_stop",
        "_options",
        "_out",
        "_out_at",
        "_out_bytes",
        "_out_end",
        "_out_future",
        "_out_sizes",
        "_pending",
        "_pending_bytes",
        "_room",
        "_sizes",
        "_soon",
        "_stored",
        "_stream_id",
        "_tick",
        "_token",
        "_ttl",
        "_wake",
        "state",
        "writes",
    )

    def __init__(
        self,
        backend: Backend,
        stream_id: str,
        token: str,
        options: StreamOptions,
        ttl: float,
        on_stop: Callable[[], object],
        on_deleted: Callable[[], object],
        on_halt: Callable[[], object],
        clock: WriteClock,
    ) -> None:
        self._backend = backend
        self._clock = clock
        self._on_stop = on_stop
        self._on_deleted = on_deleted
        self._on_halt = on_halt
        self._stream_id = stream_id
        self._token = token
        self._options = options
        self._ttl = ttl
        self._finished_ttl = options.finished_ttl or ttl
        self._soon = backend if isinstance(backend, WritesSoon) else None
        self.state = WriterState.IDLE
        self._pending: list[Chunk] = []
        self._sizes: list[int] = []  # UTF-8 bytes of each pending chunk
        self._pending_bytes = 0
        self._out: list[Chunk] = []  # the chunks of the write in flight (or to retry)
        self._out_sizes: list[int] = []
        self._out_bytes = 0
        self._out_at = 0.0  # when the write in flight (its last try) went out
        self._out_end: Ended | None = None  # the end, if the write in flight carries it
        self._out_future: asyncio.Future[bool] | None = None  # a timer-issued write
        self._stored = 0  # chunks stored: the index of the first chunk of `_out`
        self._end: Ended | None = None  # what `close` asked for
        self._error: BaseException | None = None  # why a write failed (RETRYING, BROKEN)
        self._tick: asyncio.Handle | None = None  # only with write_interval 0
        # Made by the producer inside its loop; `asyncio.get_running_loop()` costs a
        # getpid() system call on Python 3.11, and the writer asks once per write.
        self._loop = asyncio.get_running_loop()
        self._wake = Bell(self._loop)
        # Made only once the source has to wait for room (most streams never do).
        self._room: asyncio.Event | None = None
        self._last_write = 0.0
        self.writes = 0

    @property
    def stores(self) -> bool:
        """False once storage refused for good: the stream's stored copy is failed."""
        return self.state is not WriterState.BROKEN

    # -- transitions, called from the producer ---------------------------------------

    def add(self, chunk: Chunk, size: int) -> bool:
        """Queue ``chunk`` (``size`` UTF-8 bytes); True if the source should wait
        (`wait_for_room`)."""
        if self.state in _FINAL:
            return False
        self._pending.append(chunk)
        self._sizes.append(size)
        self._pending_bytes += size
        if self.state is WriterState.IDLE:
            self._schedule()
        return self._pending_bytes + self._out_bytes > self._options.max_buffered_bytes

    async def wait_for_room(self) -> None:
        """Backpressure on the source, only when the backend is far behind."""
        if self._pending_bytes + self._out_bytes > self._options.max_buffered_bytes:
            room = self._room
            if room is None:
                room = self._room = asyncio.Event()
            room.clear()
            await room.wait()

    def close(self, end: Ended) -> None:
        """The source ended: write what is pending, then ``end``, and stop."""
        if self._end is None:
            self._end = end
        if self.state in (WriterState.IDLE, WriterState.SCHEDULED):
            self._cancel_tick()
            self.state = WriterState.DUE
        self._wake.set()

    # -- transitions, called from the timer and the write's callback -----------------

    def _schedule(self) -> None:
        """IDLE -> SCHEDULED: wake at the next tick of the write clock (a multiple of
        ``write_interval`` in loop time). Chunks that come meanwhile join that write,
        and every stream of the process writes in the same loop turn, so the backend
        can send them all in one pipeline."""
        self.state = WriterState.SCHEDULED
        interval = self._options.write_interval
        if interval <= 0:
            self._tick = self._loop.call_soon(self._on_tick)
            return
        self._clock.add(self, interval, self._loop)

    def _cancel_tick(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None

    def _on_tick(self) -> None:
        """SCHEDULED -> WRITING (issued here, through `write_soon`) or DUE (the task)."""
        self._guarded(self._tick_now)

    def _guarded(self, step: Callable[[], None]) -> None:
        """Run a callback's step; an exception goes to the state machine, never to the
        loop's log (a stream must not end short because a callback died)."""
        try:
            step()
        except Exception as exc:
            self._give_up(exc)

    def _tick_now(self) -> None:
        self._tick = None
        if self.state is not WriterState.SCHEDULED:
            return
        if self._soon is None:
            self._due()
            return
        self._take()
        try:
            future = self._soon.write_soon(
                self._stream_id, self._token, self._stored, self._out, end=None,
                ttl=self._ttl, finished_ttl=self._finished_ttl, lease=self._options.lease,
            )
        except Exception:  # nothing was sent: the task writes it, and meets the error
            future = None
        if future is None:
            # Not now, or never (it raised): from here on the task writes this stream.
            self._soon = None
            self._untake()
            self._due()
            return
        self.state = WriterState.WRITING
        self._out_future = future
        self._out_at = self._loop.time()
        future.add_done_callback(self._on_soon_done)

    def _on_soon_done(self, future: asyncio.Future[bool]) -> None:
        """A timer-issued write completed: WRITING -> landed, or RETRYING."""
        try:  # as `_guarded`, without a closure per write
            self._soon_done(future)
        except Exception as exc:
            self._give_up(exc)

    def _soon_done(self, future: asyncio.Future[bool]) -> None:
        if future is not self._out_future:
            return  # abandoned by the task as overdue: its retry decides
        self._out_future = None
        if future.cancelled():
            self._failed(BackendUnavailable("the write was cancelled"))
            return
        error = future.exception()
        if error is not None:
            self._failed(error)
            return
        self._landed(future.result())

    def _due(self) -> None:
        """-> DUE: the task writes now."""
        self.state = WriterState.DUE
        self._wake.set()

    def _failed(self, error: BaseException) -> None:
        """WRITING -> RETRYING: the task retries ``_out`` (or gives up) with the usual
        window; nothing else is written meanwhile."""
        if _telemetry.ENABLED:
            _telemetry.backend_error(error, "write")
        self._error = error
        self.state = WriterState.RETRYING
        self._wake.set()

    def _landed(self, stop: bool) -> None:
        """The write in flight is stored: the one place that records it."""
        now = self._loop.time()
        if _telemetry.ENABLED:
            _telemetry.write_landed(len(self._out), now - self._out_at)
        self._stored += len(self._out)
        self._out = []
        self._out_bytes = 0
        self.writes += 1
        self._last_write = now
        self._error = None
        ended = self._out_end is not None
        self._out_end = None
        if self._room is not None and self._pending_bytes <= self._options.max_buffered_bytes:
            self._room.set()
        if ended:
            self.state = WriterState.ENDED
            self._wake.set()
            return
        if stop:
            self._on_stop()  # requested from some process with stop_stream()
        if self._end is not None:
            self._due()  # the rest, then the end
        elif self._pending:
            self._schedule()
        else:
            self.state = WriterState.IDLE

    def _give_up(self, exc: BaseException) -> None:
        """-> BROKEN: storage refused for good. The original reader goes on (it is fed
        by the producer); other readers get an error from the failed record."""
        logger.error(
            "stream %r: cannot store chunks from index %d (%s); the original reader goes on, "
            "other readers will get an error",
            self._stream_id, self._stored, describe(exc),
        )
        if _telemetry.ENABLED:
            _telemetry.backend_error(exc, "write")
        self._halt(exc)

    def _halt(self, exc: BaseException) -> None:
        """-> BROKEN: drop what is pending (nothing more is written) and wake the task."""
        self._cancel_tick()
        self.state = WriterState.BROKEN
        self._error = exc
        self._pending.clear()
        self._sizes.clear()
        self._pending_bytes = 0
        self._out = []
        self._out_bytes = 0
        if self._room is not None:
            self._room.set()
        self._wake.set()
        self._on_halt()

    def _deleted(self, exc: StaleProducer) -> None:
        """-> BROKEN, quietly: the stream was deleted. The producer stops its source and
        ends the original reader with `StreamDeleted`; nothing is marked failed."""
        logger.info("stream %r: deleted; its producer stops", self._stream_id)
        self._halt(exc)
        self._on_deleted()

    # -- the batch ---------------------------------------------------------------------

    def _take(self) -> None:
        """Move the next batch from ``_pending`` to ``_out`` (at least one chunk if any
        is pending; at most ``max_batch_chunks`` and, past one, ``max_batch_bytes``)."""
        options = self._options
        sizes = self._sizes
        n = min(len(self._pending), options.max_batch_chunks)
        size = sum(sizes[:n])
        if size > options.max_batch_bytes and n > 1:
            size = 0
            for i in range(n):
                if i and size + sizes[i] > options.max_batch_bytes:
                    n = i
                    break
                size += sizes[i]
        self._out = self._pending[:n]
        self._out_sizes = sizes[:n]
        self._out_bytes = size
        del self._pending[:n], sizes[:n]
        self._pending_bytes -= size

    def _untake(self) -> None:
        """Put ``_out`` back in front of ``_pending`` (nothing of it was sent)."""
        out = self._out
        self._pending[:0] = out
        self._sizes[:0] = self._out_sizes
        self._pending_bytes += self._out_bytes
        self._out = []
        self._out_bytes = 0

    # -- the task ----------------------------------------------------------------------

    async def run(self) -> None:
        """Write what the timer does not, renew the lease, write the end.

        Returns once the end is stored or storage refused for good (then the stream
        is marked failed, or left to its lease).
        """
        renew_every = self._options.lease / 3
        # Renewals fall on a coarse shared clock, so that a process' idle streams
        # renew together (one call, not one round trip each).
        clock = min(_RENEW_TICK, renew_every / 2)
        overdue = max(self._options.retry_window, LEAST_ATTEMPT)
        loop = asyncio.get_running_loop()
        self._last_write = loop.time()
        try:
            while self.state not in _FINAL:
                state = self.state
                if state is WriterState.DUE:
                    self._take()
                    self._out_end = self._end if not self._pending else None
                    self.state = WriterState.WRITING
                    await self._write()
                elif state is WriterState.RETRYING:
                    self.state = WriterState.WRITING
                    await self._write()
                elif state is WriterState.WRITING:
                    # A timer-issued write is out: its callback moves us on. Past the
                    # deadline it is abandoned and retried here (a backend whose
                    # future never resolves must not hold the stream forever).
                    issued = self._out_future
                    if not await self._sleep(self._out_at + overdue) and self._out_future is issued:
                        self._out_future = None
                        self._failed(BackendUnavailable(f"no answer within {overdue} s"))
                else:
                    due = self._last_write + renew_every
                    renew_at = due - due % clock
                    if state is WriterState.IDLE and loop.time() >= renew_at:
                        self._out = []
                        self.state = WriterState.WRITING
                        await self._write()  # no chunks: only renews the lease
                    else:
                        await self._sleep(renew_at)
        finally:
            self._cancel_tick()
        if self.state is WriterState.BROKEN and not isinstance(self._error, StaleProducer):
            await self._mark_failed()

    async def _sleep(self, until: float) -> bool:
        """Until ``until`` (loop time) or a wake-up; True if woken."""
        self._wake.clear()
        if self.state not in (WriterState.IDLE, WriterState.SCHEDULED, WriterState.WRITING):
            return True
        timer = asyncio.get_running_loop().call_at(until, self._wake.set)
        try:
            await self._wake.wait()
        finally:
            timer.cancel()
        return asyncio.get_running_loop().time() < until

    async def _write(self) -> None:
        """The write in ``_out`` (and ``_out_end``), retried while the backend is
        unreachable for up to ``retry_window``; each try has its own deadline. Ends in
        `_landed` or `_give_up`."""
        loop = asyncio.get_running_loop()
        window = RetryWindow(self._options.retry_window)
        while True:
            self._out_at = loop.time()
            try:
                with anyio.fail_after(window.attempt()):
                    stop = await self._backend.write(
                        self._stream_id, self._token, self._stored, self._out,
                        end=self._out_end, ttl=self._ttl, finished_ttl=self._finished_ttl,
                        lease=self._options.lease,
                    )
            except StaleProducer as exc:
                if exc.deleted:
                    # The stream was deleted (from any process): stop, store nothing
                    # more, and never take the vanished record for lost storage.
                    self._deleted(exc)
                    return
                # An earlier try (ours, or a resend inside the client after a cut) may
                # have been applied with its reply lost.
                if await self._applied():
                    self._landed(False)
                    return
                self._give_up(exc)
                await self._if_lost()
                return
            except (BackendUnavailable, OSError, TimeoutError) as exc:
                if window.exhausted():
                    self._give_up(exc)
                    return
                if _telemetry.ENABLED:
                    _telemetry.backend_error(exc, "write")
                await window.pause()
                continue
            except Exception as exc:  # refused for good (an error no retry fixes)
                self._give_up(exc)
                return
            self._landed(stop)
            return

    async def _applied(self) -> bool:
        """Did a try whose reply was lost store ``_out`` (and ``_out_end``)?

        Only this producer can write to a stream while its record exists (a claim
        never takes over a stream that stored a chunk), so a stored length of exactly
        ``stored + len(out)`` with the expected status means that try was applied.
        """
        try:
            with anyio.fail_after(LEAST_ATTEMPT):
                snap = await self._backend.snapshot(self._stream_id, 0, 0)
        except Exception:  # unknowable now; the caller decides on its own evidence
            return False
        if snap is None or snap.length != self._stored + len(self._out):
            return False
        expected = StreamStatus.RUNNING if self._out_end is None else self._out_end.status
        return snap.status is expected and bool(self._out or self._out_end is not None)

    async def _if_lost(self) -> None:
        """After a refused write: if the backend lost the stream's record (a Redis
        restart without persistence, eviction), store a failed record in its place;
        if it lost stored chunks only (the list evicted), end the stream failed.

        Readers then get `StreamFailed` ("storage lost") and a resume after a position
        gets nothing, instead of a stream that silently vanished (or, worse, one that
        a later producer could start again under the same id). Bounded in time."""
        lost_at: int | None = None
        try:
            with anyio.fail_after(3 * LEAST_ATTEMPT):
                snap = await self._backend.snapshot(self._stream_id, 0, 0)
                if snap is not None:
                    if snap.status is not StreamStatus.RUNNING or snap.length >= self._stored:
                        return  # a real refusal: another producer, or the stream ended
                    # The record is there but stored chunks are not (the list evicted):
                    # end it failed where storage now stands (fenced by our token).
                    lost_at = snap.length
                else:
                    # A deleted stream's tombstone answers FAILED here: not re-created.
                    taken = await self._backend.claim(
                        self._stream_id, self._token, ttl=self._ttl, lease=self._options.lease
                    )
                    if taken is not None:
                        return  # someone made a stream of this id meanwhile: theirs now
                    lost_at = 0
                await self._backend.write(
                    self._stream_id, self._token, lost_at, [],
                    end=Ended(StreamStatus.FAILED, lost_at, STORAGE_LOST),
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

    async def _mark_failed(self) -> None:
        """After `_give_up`: store the failed end where storage stands, if it still
        can (bounded); otherwise the lease lapses and readers get `ProducerLost`."""
        error = f"persistence failed: {describe(self._error) if self._error else 'unknown'}"
        try:
            with anyio.fail_after(LEAST_ATTEMPT):
                await self._backend.write(
                    self._stream_id, self._token, self._stored, [],
                    end=Ended(StreamStatus.FAILED, self._stored, error),
                    ttl=self._ttl, finished_ttl=self._finished_ttl, lease=self._options.lease,
                )
        except Exception as exc:
            logger.error(
                "stream %r: cannot mark it failed either (%s)", self._stream_id, describe(exc)
            )


def _size(chunk: Chunk) -> int:
    """Stored bytes of a chunk: UTF-8 for text.

    Raises:
        ValueError: a ``str`` chunk that is not valid Unicode text (a lone surrogate,
            which ``json.loads`` hands out for ``"\\ud800"``): it cannot be stored nor
            sent over HTTP, so the stream fails at that chunk.
    """
    if isinstance(chunk, bytes) or chunk.isascii():
        return len(chunk)
    try:
        return len(chunk.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"a str chunk must be valid Unicode text; it holds a lone surrogate at "
            f"{exc.start} ({chunk[exc.start : exc.start + 1]!r}): encode or replace it first"
        ) from None


def _coerce(chunk: object) -> Chunk:
    if isinstance(chunk, (str, bytes)):
        return chunk
    if isinstance(chunk, (bytearray, memoryview)):
        return bytes(chunk)
    raise TypeError(f"stream chunks must be str or bytes, not {type(chunk).__name__}")


class _Admission:
    """What every chunk of a stream passes before it is stored, pulled or pushed: its
    type (bytes-likes become bytes), its stored size, and the stream's size cap."""

    __slots__ = ("_limit", "_stream_id", "counted")

    def __init__(self, stream_id: str, limit: int | None) -> None:
        self._stream_id = stream_id
        self._limit = limit
        self.counted = 0

    def admit(self, chunk: object) -> tuple[Chunk, int]:
        """The chunk as stored and its size.

        Raises:
            TypeError: not a chunk.
            ValueError: a ``str`` chunk that is not valid Unicode (see `_size`).
            StreamTooLarge: it takes the stream past ``max_stream_bytes``.
        """
        if type(chunk) is not str and type(chunk) is not bytes:
            chunk = _coerce(chunk)
        size = _size(chunk)
        if self._limit is not None:
            self.counted += size
            if self.counted > self._limit:
                raise StreamTooLarge.for_limit(self._stream_id, self._limit)
        return chunk, size


class Producer:
    """One stream's producing unit: the source, its writer and the lease.

    `run` owns the writer's task: whatever way the source ends (exhausted, raised,
    stopped, cut at the size cap, cancelled, or its cleanup raised), the writer is
    closed with an end, its task awaited (bounded) or cancelled, and the original
    reader told. The context owns the task that runs `run`.
    """

    __slots__ = (
        "_deleted",
        "_ended",
        "_feed",
        "_index",
        "_options",
        "_source",
        "_stop_scope",
        "exception",
        "fanout",
        "stream_id",
        "writer",
    )

    def __init__(
        self,
        backend: Backend,
        stream_id: str,
        token: str,
        source: AsyncIterator[Chunk],
        feed: Subscription,
        options: StreamOptions,
        ttl: float,
        clock: WriteClock | None = None,
    ) -> None:
        self.stream_id = stream_id
        self._source = source
        self._feed = feed
        self._options = options
        self.writer = _Writer(
            backend, stream_id, token, options, ttl, self.stop, self.delete,
            self._storage_halted, clock if clock is not None else WriteClock(),
        )
        self.fanout = Fanout(self.writer._loop)
        self.exception: BaseException | None = None
        self._index = 0
        self._ended = False
        self._deleted = False
        self._stop_scope = anyio.CancelScope()

    def follow(self, max_buffered_bytes: int) -> LocalFeed | None:
        """A live feed for a follower in this context, fed from here (see `Fanout`);
        None once the producer ended or its storage failed (then the follower
        subscribes to the backend)."""
        writer = self.writer
        if self._ended or not writer.stores:
            return None
        unlanded = writer._out + writer._pending  # a new list, the follower's own
        return self.fanout.join(self.stream_id, max_buffered_bytes, writer._stored, unlanded)

    def _storage_halted(self) -> None:
        """The writer stopped for good (storage refused, or the stream was deleted):
        local followers stop running ahead of storage now, not at the source's end,
        and end as followers elsewhere do, from the stored record."""
        self.fanout.close(None)

    def _end_followers(self, end: Ended) -> None:
        """Local followers get the end only if it is stored; else they re-read."""
        stored = self.writer.state is WriterState.ENDED and not self._deleted
        self.fanout.close(end if stored else None)

    def stop(self) -> bool:
        """Stop pulling from the source and end the stream as done (not failed).

        Returns:
            True if this call stopped it (it was running, and not stopping already).
        """
        stopping = not self._ended and not self._stop_scope.cancel_called
        self._stop_scope.cancel()
        return stopping

    def delete(self) -> bool:
        """The stream was deleted: stop pulling from the source, and end the original
        reader with `StreamDeleted` instead of an end of its own.

        Returns:
            True if it was still running (its original reader not told of an end yet).
        """
        running = not self._ended
        self._deleted = True
        self._stop_scope.cancel()
        return running

    def on_task_done(self, task: asyncio.Task[None]) -> None:
        """Done-callback: a task cancelled before it ran must still end its reader."""
        if not self._ended:
            self._ended = True
            self._feed.push(Ended(StreamStatus.FAILED, self._index, _SHUT_DOWN))
            self.fanout.close(None)
            if _telemetry.ENABLED:
                _telemetry.stream_ended("failed")

    async def run(self) -> None:
        writer_task = asyncio.create_task(self.writer.run())
        end = _UNEXPECTED
        cancelled: BaseException | None = None
        try:
            end = await self._pull()
        except asyncio.CancelledError as exc:
            cancelled = exc
            end = Ended(StreamStatus.FAILED, self._index, _SHUT_DOWN)
        finally:
            if self._deleted:
                # Whatever the source did meanwhile: the writer's end is refused by the
                # tombstone, and the original reader ends as every other reader does.
                end = Ended(StreamStatus.FAILED, self._index, StreamDeleted.ERROR)
            # However the source ended, the unit ends: writes finished (never hanging
            # on them, even when shutting down), the writer's task gone, the reader told.
            self.writer.close(end)
            grace = max(self._options.lease, self._options.retry_window) + 2 * LEAST_ATTEMPT
            with anyio.move_on_after(grace, shield=True):
                await asyncio.wait([writer_task])
            if not writer_task.done():
                writer_task.cancel()
                with anyio.CancelScope(shield=True):
                    await asyncio.wait([writer_task])
            # The original reader ends only once the end is stored (one round trip,
            # once per stream): then every reader and `has_existing_stream` see it.
            self._ended = True
            self._feed.push(end)
            self._end_followers(end)
            if _telemetry.ENABLED:
                _telemetry.stream_ended(self._outcome(end))
        if cancelled is not None:
            raise cancelled

    def _outcome(self, end: Ended) -> str:
        """How the stream ended, for ``resumable_stream.streams.ended``."""
        if self._deleted:
            return "deleted"
        if not self.writer.stores:
            return "lost"  # the original reader got it all; no other reader can
        if end.status is StreamStatus.FAILED:
            return "failed"
        # Stopped before its end was stored, as `stop_stream` answered True.
        return "stopped" if self._stop_scope.cancel_called else "done"

    async def _pull(self) -> Ended:
        """Run the source to its end; the end to store. Raises only CancelledError."""
        index = 0
        try:
            try:
                # stop() cancels this scope only; the scope swallows its own cancellation.
                push, add = self._feed.push_chunk, self.writer.add
                followers, fan = self.fanout.feeds, self.fanout.push_chunk
                admit = _Admission(self.stream_id, self._options.max_stream_bytes).admit
                with self._stop_scope:
                    async for item in self._source:
                        chunk, size = admit(item)
                        push(index, chunk)
                        if followers:
                            fan(index, chunk)
                        index = self._index = index + 1
                        if add(chunk, size):
                            await self.writer.wait_for_room()
                end = Ended(StreamStatus.DONE, index)
            finally:
                await self._close_source()
        except StreamTooLarge as exc:
            return self._failed_end(index, exc)
        except Exception as exc:
            if self._stop_scope.cancel_called:
                # Raised while stop() was closing it: its cleanup failed, not the stream.
                logger.warning(
                    "stream %r: its source raised %s while stopping", self.stream_id, describe(exc)
                )
                return Ended(StreamStatus.DONE, index)
            return self._failed_end(index, exc)
        return end

    def _failed_end(self, index: int, exc: BaseException) -> Ended:
        """The end of a stream whose source failed (or was cut at the size cap) at
        ``index``: recorded as the producer's exception, logged, and stored."""
        self.exception = exc
        if isinstance(exc, StreamTooLarge):
            logger.warning("stream %r: cut at chunk %d: %s", self.stream_id, index, exc.error)
            return Ended(StreamStatus.FAILED, index, exc.error, exc)
        logger.warning("stream %r: its source raised %s", self.stream_id, describe(exc))
        return Ended(StreamStatus.FAILED, index, describe(exc), exc)

    async def _close_source(self) -> None:
        await close_source(self._source, self.stream_id)


async def close_source(source: object, stream_id: str) -> None:
    """Close a source (bounded, shielded). Its cleanup raising is logged, not fatal: the
    stream still ends as the source's iteration did."""
    aclose = getattr(source, "aclose", None)
    if aclose is None:
        return
    try:
        with anyio.move_on_after(_CLEANUP, shield=True):
            await aclose()
    except Exception as exc:
        logger.warning("stream %r: its source raised %s while closing", stream_id, describe(exc))


class Intake(enum.Enum):
    """How a pushed stream takes chunks. DIRECT: its caller delivers them to the
    original reader's client itself, so the local feed carries only the end. ATTACHED:
    the feed gets every chunk too (the original reader was handed to the pump).
    CLOSED: no more chunks (finished, cut, stopped or ending)."""

    DIRECT = "direct"
    ATTACHED = "attached"
    CLOSED = "closed"


class Refused(Exception):
    """A pushed stream takes no more chunks: it was stopped, cut, deleted, shut down,
    or its caller said it is complete."""


class PushedSource:
    """The source of a stream whose chunks its caller pushes (`PushedProducer.push`)
    from its own task, instead of a task the producer pulls from: a chunk then costs
    no task switch on the way in.

    Give it to `create_new_resumable_stream` as ``make_stream``; the context binds it
    to the stream's producer (``producer``). ``close`` is what ending the stream early
    (stopped, cut at ``max_stream_bytes``, deleted, shut down) calls to stop the
    caller's task; ``on_end`` is called once the producer has ended (its end stored,
    or storage given up) and told its local feed.
    """

    __slots__ = ("_close", "on_end", "producer")

    def __init__(self, close: Callable[[], Awaitable[None]], on_end: Callable[[], None]) -> None:
        self._close = close
        self.on_end = on_end
        self.producer: PushedProducer | None = None

    def __call__(self) -> PushedSource:
        return self

    async def aclose(self) -> None:
        await self._close()


class PushedProducer(Producer):
    """A producer fed by `push` from its caller's task (see `PushedSource`).

    The stream, its storage and its ends are those of `Producer`; only the way chunks
    come in differs. The local feed gets chunks only once `attach` is called: until
    then the caller delivers them to the original reader's client itself, and the
    feed carries only the end.
    """

    __slots__ = ("_admission", "_done", "_pushed", "intake")

    def __init__(
        self,
        backend: Backend,
        stream_id: str,
        token: str,
        source: PushedSource,
        feed: Subscription,
        options: StreamOptions,
        ttl: float,
        clock: WriteClock | None = None,
    ) -> None:
        super().__init__(
            backend, stream_id, token, source, feed, options, ttl, clock  # type: ignore[arg-type]
        )
        self._pushed = source
        self.intake = Intake.DIRECT
        self._admission = _Admission(stream_id, options.max_stream_bytes)
        self._done: asyncio.Future[BaseException | None] = (
            asyncio.get_running_loop().create_future()
        )

    @property
    def next_index(self) -> int:
        """The index the next pushed chunk gets (the count so far)."""
        return self._index

    def push(self, chunk: Chunk) -> bool:
        """Take ``chunk`` as the stream's next chunk (stored behind, write-behind).

        Returns:
            True if the caller should now wait (``writer.wait_for_room()``): storage
            is ``max_buffered_bytes`` behind.

        Raises:
            Refused: the stream takes no more chunks; this one is not part of it. A
                chunk that breaks ``max_stream_bytes`` (or is no valid chunk) ends the
                stream failed, as a pulled source's would.
        """
        intake = self.intake
        if intake is Intake.CLOSED:
            raise Refused
        try:
            chunk, size = self._admission.admit(chunk)
        except (TypeError, ValueError, StreamTooLarge) as exc:
            self.finish(exc)
            raise Refused from exc
        index = self._index
        if intake is Intake.ATTACHED:
            self._feed.push_chunk(index, chunk)
        if self.fanout.feeds:
            self.fanout.push_chunk(index, chunk)
        self._index = index + 1
        return self.writer.add(chunk, size)

    def attach(self) -> int:
        """DIRECT -> ATTACHED: from now on every chunk also goes to the local feed.

        Returns:
            The index of the first chunk the feed gets.
        """
        if self.intake is Intake.DIRECT:
            self.intake = Intake.ATTACHED
        return self._index

    def _close_intake(self) -> None:
        """-> CLOSED: no more chunks; the stream's last index is final."""
        self.intake = Intake.CLOSED

    def finish(self, error: BaseException | None = None) -> None:
        """The pushed source ended: complete (None) or failed with ``error``. Later
        calls, and pushes, are ignored (refused)."""
        self._close_intake()
        if not self._done.done():
            self._done.set_result(error)

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            self._pushed.on_end()

    def on_task_done(self, task: asyncio.Task[None]) -> None:
        self._close_intake()
        ended = self._ended
        super().on_task_done(task)
        if not ended and task.cancelled():
            self._pushed.on_end()  # cancelled before `run` started: it never called it

    async def _pull(self) -> Ended:
        """Wait for the pushed source's end (or a stop); the end to store."""
        error: BaseException | None = None
        try:
            with self._stop_scope:
                error = await self._done
        finally:
            self._close_intake()  # before the end is decided: its index is final
            await self._close_source()
        if error is None:
            return Ended(StreamStatus.DONE, self._index)
        return self._failed_end(self._index, error)
