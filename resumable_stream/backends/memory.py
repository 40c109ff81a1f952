"""In-process backend: the same contract as Redis, for one process.

Good for the demo, single-process apps and tests. Writes are applied and announced
synchronously (no await between storing and announcing), so the backend invariants
hold trivially. Expired streams are dropped lazily on access and by a sweep that runs
at most once per second on `claim`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .._exceptions import StreamDeleted
from .._subscription import Subscription
from .._types import Appended, Chunk, Ended, Snapshot, StreamStatus
from ._protocol import StaleProducer

__all__ = ["MemoryBackend"]


@dataclass
class _Entry:
    token: str
    expires_at: float
    lease_until: float
    status: StreamStatus = StreamStatus.RUNNING
    error: str | None = None
    chunks: list[Chunk] = field(default_factory=list)
    metadata: bytes = b""
    stop: bool = False


class MemoryBackend:
    """Streams kept in this process's memory; lost when it exits."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._subscribers: dict[str, set[Subscription]] = {}
        self._tombstones: dict[str, float] = {}  # deleted ids -> when the tombstone expires
        self._next_sweep = 0.0

    def _get(self, stream_id: str, now: float) -> _Entry | None:
        entry = self._entries.get(stream_id)
        if entry is not None and entry.expires_at <= now:
            del self._entries[stream_id]
            return None
        return entry

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        for stream_id in [k for k, e in self._entries.items() if e.expires_at <= now]:
            del self._entries[stream_id]
        for stream_id in [k for k, until in self._tombstones.items() if until <= now]:
            del self._tombstones[stream_id]

    def _tombstoned(self, stream_id: str, now: float) -> bool:
        until = self._tombstones.get(stream_id)
        if until is not None and until <= now:
            del self._tombstones[stream_id]
            return False
        return until is not None

    async def claim(
        self, stream_id: str, token: str, *, ttl: float, lease: float, metadata: bytes = b""
    ) -> StreamStatus | None:
        now = time.monotonic()
        self._sweep(now)
        if self._tombstoned(stream_id, now):
            return StreamStatus.FAILED  # deleted moments ago: finished, to a claim
        entry = self._get(stream_id, now)
        if entry is not None:
            if entry.status is StreamStatus.RUNNING and entry.token == token:
                # This very claim, retried (its reply was lost): the caller produces.
                entry.lease_until = now + lease
                entry.expires_at = now + ttl
                return None
            orphaned = entry.status is StreamStatus.RUNNING and entry.lease_until <= now
            if entry.chunks or not orphaned:
                return entry.status  # as stored: the core judges a lapsed lease
            # Running, stored nothing, lease lapsed (an orphaned claim): taken over as a
            # fresh stream (see `Backend.claim`).
        self._entries[stream_id] = _Entry(
            token, expires_at=now + ttl, lease_until=now + lease, metadata=metadata
        )
        return None

    async def write(
        self,
        stream_id: str,
        token: str,
        start: int,
        chunks: Sequence[Chunk],
        *,
        end: Ended | None,
        ttl: float,
        finished_ttl: float,
        lease: float,
    ) -> bool:
        return self._write(
            stream_id, token, start, chunks, end=end, ttl=ttl, finished_ttl=finished_ttl,
            lease=lease,
        )

    def write_soon(
        self,
        stream_id: str,
        token: str,
        start: int,
        chunks: Sequence[Chunk],
        *,
        end: Ended | None,
        ttl: float,
        finished_ttl: float,
        lease: float,
    ) -> asyncio.Future[bool]:
        """`write`, done at once; the future holds its result (see `Backend`)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        try:
            future.set_result(
                self._write(
                    stream_id, token, start, chunks, end=end, ttl=ttl,
                    finished_ttl=finished_ttl, lease=lease,
                )
            )
        except StaleProducer as exc:
            future.set_exception(exc)
        return future

    def _write(
        self,
        stream_id: str,
        token: str,
        start: int,
        chunks: Sequence[Chunk],
        *,
        end: Ended | None,
        ttl: float,
        finished_ttl: float,
        lease: float,
    ) -> bool:
        now = time.monotonic()
        entry = self._get(stream_id, now)
        if entry is None and self._tombstoned(stream_id, now):
            raise StaleProducer(f"stream {stream_id!r} was deleted", deleted=True)
        if entry is None or entry.token != token or entry.status is not StreamStatus.RUNNING:
            raise StaleProducer(f"not the producer of running stream {stream_id!r}")
        if start != len(entry.chunks):
            raise StaleProducer(f"write at {start} but {len(entry.chunks)} chunks are stored")
        entry.chunks.extend(chunks)
        entry.expires_at = now + ttl
        entry.lease_until = now + lease
        if end is not None:
            entry.status = end.status
            entry.error = end.error
            entry.expires_at = now + finished_ttl
        subscribers = self._subscribers.get(stream_id, ())
        if chunks:
            appended = Appended(start, tuple(chunks))
            for sub in subscribers:
                sub.push(appended)
        if end is not None:
            ended = Ended(end.status, len(entry.chunks), end.error)
            for sub in subscribers:
                sub.push(ended)
        return entry.stop

    async def snapshot(self, stream_id: str, start: int, limit: int) -> Snapshot | None:
        now = time.monotonic()
        entry = self._get(stream_id, now)
        if entry is None:
            return None
        return Snapshot(
            status=entry.status,
            length=len(entry.chunks),
            chunks=entry.chunks[start : start + limit],
            lease_alive=entry.lease_until > now,
            error=entry.error,
            metadata=entry.metadata,
        )

    async def request_stop(self, stream_id: str) -> bool:
        entry = self._get(stream_id, time.monotonic())
        if entry is None or entry.status is not StreamStatus.RUNNING:
            return False
        entry.stop = True
        return True

    async def delete(self, stream_id: str, *, ttl: float) -> bool:
        """Drop the stream, keep a tombstone for ``ttl`` seconds (see `Deletes`)."""
        now = time.monotonic()
        entry = self._get(stream_id, now)
        if entry is None:
            return False
        del self._entries[stream_id]
        self._tombstones[stream_id] = now + ttl
        ended = Ended(StreamStatus.FAILED, 0, StreamDeleted.ERROR)
        for sub in self._subscribers.get(stream_id, ()):
            sub.push(ended)
        return True

    async def deleted(self, stream_id: str) -> bool:
        return self._tombstoned(stream_id, time.monotonic())

    async def status(self, stream_id: str) -> StreamStatus | None:
        now = time.monotonic()
        entry = self._get(stream_id, now)
        return None if entry is None else self._status(entry, now)

    @staticmethod
    def _status(entry: _Entry, now: float) -> StreamStatus:
        if entry.status is StreamStatus.RUNNING and entry.lease_until <= now:
            return StreamStatus.FAILED  # the producer stopped renewing its lease
        return entry.status

    async def subscribe(self, stream_id: str, *, max_buffered_bytes: int) -> Subscription:
        sub = Subscription(
            stream_id, max_buffered_bytes=max_buffered_bytes, on_close=self._unsubscribe
        )
        self._subscribers.setdefault(stream_id, set()).add(sub)
        return sub

    async def _unsubscribe(self, sub: Subscription) -> None:
        subs = self._subscribers.get(sub.key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscribers[sub.key]

    async def aclose(self) -> None:
        for subs in list(self._subscribers.values()):
            for sub in list(subs):
                await sub.aclose()
        self._subscribers.clear()
