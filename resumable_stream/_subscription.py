"""A bounded queue of live events for one reader.

Backends push events into it from their dispatcher; the reader pulls. When the
reader falls behind by more than its budget (UTF-8 bytes of the chunks queued, plus a
little per chunk), the queued events are dropped and the reader is told to `Resync`
(re-read from storage): a slow reader costs bounded memory and never slows the
producer or the dispatcher.

A reader dropped without `aclose` (garbage collected) closes its subscription with
`close_nowait`, which the garbage collector may call anywhere, even from another
thread: it only marks the subscription closed and hands the backend's release to the
subscription's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from ._types import Appended, Chunk, Event, Resync

__all__ = ["RESYNC", "Bell", "LocalFeed", "Subscription", "chunk_bytes", "event_size"]

logger = logging.getLogger("resumable_stream")

RESYNC = Resync()

# Releases started by `close_nowait`, held here until they finish: the loop keeps only
# weak references to tasks.
_releasing: set[asyncio.Future[None]] = set()


class Bell:
    """A cheaper `asyncio.Event` for one waiter at a time, rung once per chunk.

    `set` is the producer's hot path (called for every chunk): it costs one
    attribute check unless a task is actually waiting.
    """

    __slots__ = ("_is_set", "_loop", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._is_set = False
        self._waiter: asyncio.Future[None] | None = None
        # The owner's loop, if it knows it: `asyncio.get_running_loop()` costs a
        # getpid() system call on Python 3.11, and a bell rings once per chunk.
        self._loop = loop

    def set(self) -> None:
        if not self._is_set:
            self._is_set = True
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._is_set = False

    def is_set(self) -> bool:
        return self._is_set

    async def wait(self) -> None:
        waiter = self.waiter()
        if waiter is not None:
            await waiter

    def waiter(self) -> asyncio.Future[None] | None:
        """The future that `set` completes, to await directly (None if set already):
        a hot wait then costs no coroutine of its own. Awaited by one task at a time;
        cancelling that task cancels it, and `set` skips a future already done."""
        if self._is_set:
            return None
        loop = self._loop
        if loop is None:
            loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        return waiter


def chunk_bytes(chunk: Chunk) -> int:
    """``chunk``'s size in UTF-8 bytes (what it costs on the wire and in storage).

    ASCII text, the common case, is measured without encoding it; a lone surrogate
    counts as the three bytes ``surrogatepass`` gives it.
    """
    if type(chunk) is str and not chunk.isascii():
        return len(chunk.encode("utf-8", "surrogatepass"))
    return len(chunk)


def event_size(event: Event) -> int:
    """What ``event`` counts against a reader's budget: its chunks' UTF-8 bytes plus 16
    per chunk (an end or a resync: 16)."""
    if isinstance(event, Appended):
        return sum(map(chunk_bytes, event.chunks)) + 16 * len(event.chunks)
    return 16


def _released(task: asyncio.Future[None]) -> None:
    _releasing.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.debug("releasing a dropped subscription failed: %r", task.exception())


class Subscription:
    """Live events of one stream for one reader.

    Created by a backend's ``subscribe()`` inside a running event loop. Backends call
    `push` (or `push_chunk`) and `fail`; the reader calls `get` and `aclose`.
    """

    def __init__(
        self,
        key: str,
        *,
        max_buffered_bytes: int,
        on_close: Callable[[Subscription], Awaitable[None]] | None = None,
    ) -> None:
        self.key = key  # what the backend subscribed to (stream id or channel)
        # Each queued event, then its size as it was pushed (so that a reader behind
        # does not re-measure what it takes): one deque, where two cost 760 bytes more
        # per reader.
        self._queue: deque[Any] = deque()
        self._size = 0
        self._limit = max_buffered_bytes
        self._overflowed = False
        self._error: BaseException | None = None
        self._on_close = on_close
        # The last queued Appended, still growable by push_chunk (None once taken).
        self._tail: list[Chunk] | None = None
        self._tail_end = -1
        # The poll deadline's timer (see `wait`): armed once, re-armed only when it
        # fires early, never cancelled per wait.
        self._timer: asyncio.TimerHandle | None = None
        self._until: float | None = None  # the deadline of the wait under way
        self.closed = False
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # made outside a loop (a test): close_nowait releases nothing
            self._loop = None
        self._wakeup = Bell(self._loop)

    def push(self, event: Event, size: int | None = None) -> None:
        """Queue ``event`` without blocking; on overflow drop all and ask for a resync.

        ``size`` is what it counts against the budget (`event_size` if None): a
        backend that hands one event to many readers measures it once.
        """
        if self.closed:
            return
        if size is None:
            size = event_size(event)
        queue = self._queue
        if self._size + size > self._limit and queue:
            self._overflow()
        else:
            queue.append(event)
            queue.append(size)
            self._size += size
            self._tail = None
        self._wakeup.set()

    def push_chunk(self, index: int, chunk: Chunk) -> None:
        """Queue one chunk; consecutive chunks share one event (the producer's fast path)."""
        self.queue_chunk(index, chunk)
        self._wakeup.set()

    def queue_chunk(self, index: int, chunk: Chunk) -> None:
        """`push_chunk` without waking the reader: the caller rings `ring` soon."""
        if self.closed:
            return
        size = chunk_bytes(chunk) + 16
        queue = self._queue
        if self._size + size > self._limit and queue:
            self._overflow()
        elif self._tail is not None and self._tail_end == index:
            # The reader has not taken the tail event yet: grow it in place.
            self._tail.append(chunk)
            self._tail_end = index + 1
            queue[-1] += size  # the tail event's size
            self._size += size
        else:
            tail = [chunk]
            queue.append(Appended(index, tail))
            queue.append(size)
            self._size += size
            self._tail = tail
            self._tail_end = index + 1

    def ring(self) -> None:
        """Wake the reader for what `queue_chunk` queued."""
        self._wakeup.set()

    def _overflow(self) -> None:
        self._queue.clear()
        self._size = 0
        self._tail = None
        self._overflowed = True

    def resync(self) -> None:
        """Drop what is queued and tell the reader to re-read from storage."""
        if self.closed:
            return
        self._overflow()
        self._wakeup.set()

    def fail(self, error: BaseException) -> None:
        """The live feed is gone (connection lost); `get` raises ``error`` once drained."""
        self._error = error
        self._wakeup.set()

    def get_nowait(self) -> Event | None:
        """The next event, `RESYNC` after an overflow, or None if there is none yet.

        Raises:
            BaseException: whatever `fail` was given, once no event is left.
        """
        if self._overflowed:
            self._overflowed = False
            return RESYNC
        queue = self._queue
        if queue:
            event: Event = queue.popleft()
            size: int = queue.popleft()
            if queue:
                self._size -= size
            else:
                self._size = 0
                self._tail = None  # the reader owns it now: never grow it again
            return event
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return None

    async def wait(self, deadline: float | None = None) -> bool:
        """Wait until `get_nowait` has something (or the subscription is closed);
        False if the loop's clock reached ``deadline`` first.

        Cancelling it takes nothing: the event stays for the next call.
        """
        wakeup = self._wakeup
        if deadline is None:
            while True:
                waiter = self.waiter()
                if waiter is None:
                    return True
                await waiter
        loop = self._loop
        if loop is None:
            loop = asyncio.get_running_loop()
        while self.idle() and not self.closed:
            if loop.time() >= deadline:
                return False
            wakeup.clear()
            # One timer that outlives the wait: a follower waits once per message with
            # a deadline a poll_interval away, and a timer set and cancelled each time
            # costs 2-5 us in uvloop. One set earlier than this deadline re-arms itself
            # when it fires; one set later (a deadline moved closer) is replaced.
            timer = self._timer
            if timer is None or timer.when() > deadline:
                if timer is not None:
                    timer.cancel()
                self._timer = loop.call_at(deadline, self._on_timer)
            self._until = deadline
            try:
                await wakeup.wait()
            finally:
                self._until = None
        return True

    def waiter(self) -> asyncio.Future[None] | None:
        """`wait` without a deadline, for a hot loop: None if `get_nowait` has something
        (or the subscription is closed), else a future to await directly (completed
        when that may have changed; call again after it). No coroutine per wait."""
        if not self.idle() or self.closed:
            return None
        wakeup = self._wakeup
        wakeup.clear()
        return wakeup.waiter()

    def _on_timer(self) -> None:
        """The poll timer fired: ring the bell if a wait's deadline has come, re-arm for
        the deadline of a wait still under way, or rest until the next wait."""
        self._timer = None
        until = self._until
        if until is None or self.closed:
            return
        loop = self._loop or asyncio.get_running_loop()
        if loop.time() >= until:
            self._wakeup.set()
        else:
            self._timer = loop.call_at(until, self._on_timer)

    async def get(self, timeout: float | None) -> Event | None:
        """Next event, `RESYNC` after an overflow, or None if ``timeout`` passed first.

        Raises:
            BaseException: whatever `fail` was given, once no event is left.
        """
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        while True:
            event = self.get_nowait()
            if event is not None:
                return event
            if not await self.wait(deadline) or self.closed:
                return None

    def idle(self) -> bool:
        """Nothing to take: no event, no overflow, no error."""
        return not (self._queue or self._overflowed or self._error is not None)

    def _close(self) -> bool:
        """Mark closed and drop the queue; False if it was closed already."""
        if self.closed:
            return False
        self.closed = True
        self._queue.clear()
        self._size = 0
        self._tail = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wakeup.set()  # a reader waiting in `wait` returns
        return True

    async def aclose(self) -> None:
        """Close and tell the backend (unsubscribe); a second call does nothing."""
        if self._close() and self._on_close is not None:
            await self._on_close(self)

    def close_nowait(self) -> None:
        """Close now and have the backend told soon, in this subscription's loop.

        Safe from a finalizer: in any thread, inside or outside the loop, or after the
        loop closed (then there is nothing left to tell).
        """
        if not self._close() or self._on_close is None:
            return
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._start_release)

    def release_soon(self) -> asyncio.Future[None] | None:
        """Close now and tell the backend in a task of its own (in the running loop),
        which a cancelled caller does not interrupt; returns it, or None if there is
        nothing to tell (closed already, or no backend to tell)."""
        if not self._close() or self._on_close is None:
            return None
        return self._start_release()

    def _start_release(self) -> asyncio.Future[None]:
        assert self._on_close is not None
        task = asyncio.ensure_future(self._on_close(self))
        _releasing.add(task)
        task.add_done_callback(_released)
        return task


class LocalFeed(Subscription):
    """A feed the producer in this process fills itself, ahead of storage.

    Its chunks come before they are stored, so a `RESYNC` from it cannot be answered
    by re-reading storage alone (the chunks not stored yet would be missing until they
    land): its reader moves to the backend's subscription instead.
    """
