"""A bounded queue of live events for one reader.

Backends push events into it from their dispatcher; the reader pulls. When the
reader falls behind by more than its budget, the queued events are dropped and the
reader is told to `Resync` (re-read from storage): a slow reader costs bounded memory
and never slows the producer or the dispatcher.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from ._types import Appended, Chunk, Event, Resync

__all__ = ["RESYNC", "Bell", "Subscription"]

RESYNC = Resync()


class Bell:
    """A cheaper `asyncio.Event` for one waiter at a time, rung once per chunk.

    `set` is the producer's hot path (called for every chunk): it costs one
    attribute check unless a task is actually waiting.
    """

    __slots__ = ("_is_set", "_waiter")

    def __init__(self) -> None:
        self._is_set = False
        self._waiter: asyncio.Future[None] | None = None

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
        if self._is_set:
            return
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None


def _event_size(event: Event) -> int:
    if isinstance(event, Appended):
        return sum(map(len, event.chunks)) + 16 * len(event.chunks)
    return 16


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
        self._events: deque[Event] = deque()
        self._size = 0
        self._limit = max_buffered_bytes
        self._overflowed = False
        self._error: BaseException | None = None
        self._wakeup = Bell()
        self._on_close = on_close
        # The last queued Appended, still growable by push_chunk (None once taken).
        self._tail: list[Chunk] | None = None
        self._tail_end = -1
        self.closed = False

    def push(self, event: Event) -> None:
        """Queue ``event`` without blocking; on overflow drop all and ask for a resync."""
        if self.closed:
            return
        size = _event_size(event)
        if self._size + size > self._limit and self._events:
            self._overflow()
        else:
            self._events.append(event)
            self._size += size
            self._tail = None
        self._wakeup.set()

    def push_chunk(self, index: int, chunk: Chunk) -> None:
        """Queue one chunk; consecutive chunks share one event (the producer's fast path)."""
        if self.closed:
            return
        size = len(chunk) + 16
        if self._size + size > self._limit and self._events:
            self._overflow()
        elif self._tail is not None and self._tail_end == index:
            # The reader has not taken the tail event yet: grow it in place.
            self._tail.append(chunk)
            self._tail_end = index + 1
            self._size += size
        else:
            tail = [chunk]
            self._events.append(Appended(index, tail))
            self._size += size
            self._tail = tail
            self._tail_end = index + 1
        self._wakeup.set()

    def _overflow(self) -> None:
        self._events.clear()
        self._size = 0
        self._tail = None
        self._overflowed = True

    def fail(self, error: BaseException) -> None:
        """The live feed is gone (connection lost); `get` raises ``error`` once drained."""
        self._error = error
        self._wakeup.set()

    async def get(self, timeout: float | None) -> Event | None:
        """Next event, `RESYNC` after an overflow, or None if ``timeout`` passed first.

        Raises:
            BaseException: whatever `fail` was given, once no event is left.
        """
        while True:
            if self._overflowed:
                self._overflowed = False
                return RESYNC
            if self._events:
                event = self._events.popleft()
                if self._events:
                    self._size -= _event_size(event)
                else:
                    self._size = 0
                    self._tail = None  # the reader owns it now: never grow it again
                return event
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            self._wakeup.clear()
            if timeout is None:
                await self._wakeup.wait()
                continue
            # A timer that sets the same event is cheaper than wait_for's extra task.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            timer = loop.call_at(deadline, self._wakeup.set)
            try:
                await self._wakeup.wait()
            finally:
                timer.cancel()
            if not (self._events or self._overflowed or self._error) and loop.time() >= deadline:
                return None

    def idle(self) -> bool:
        """Nothing to take: no event, no overflow, no error."""
        return not (self._events or self._overflowed or self._error is not None)

    async def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until something can be taken (`get` would not wait); False if
        ``timeout`` passed first."""
        if timeout is None:
            while self.idle():
                self._wakeup.clear()
                await self._wakeup.wait()
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.idle():
            if loop.time() >= deadline:
                return False
            self._wakeup.clear()
            timer = loop.call_at(deadline, self._wakeup.set)
            try:
                await self._wakeup.wait()
            finally:
                timer.cancel()
        return True

    def take_at(self, index: int) -> Sequence[Chunk] | None:
        """The chunks of the next event if it is an `Appended` starting at ``index``
        (the reader's fast path, without waiting); None for anything else."""
        events = self._events
        if not events or self._overflowed:
            return None
        event = events[0]
        if type(event) is not Appended or event.start != index:
            return None
        events.popleft()
        if events:
            self._size -= _event_size(event)
        else:
            self._size = 0
            self._tail = None
        return event.chunks

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._events.clear()
        if self._on_close is not None:
            await self._on_close(self)
