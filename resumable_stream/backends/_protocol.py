"""The contract between the core and a storage backend.

A backend stores, per stream id: a status (running / done / failed), the producer's
token and lease, and the list of chunks; and it announces every write to subscribers.
The replay-then-follow merge lives in the core (``_reader.py``); a backend only has
to keep these invariants:

1. ``claim`` is atomic: of any number of concurrent calls for one id with distinct
   tokens, across processes, exactly one returns None (it became the producer). It is
   idempotent by token, and a running record that stored nothing under a lapsed lease
   is taken over (see `Backend.claim`).
2. ``write`` is atomic and ordered: it appends ``chunks`` at index ``start`` (it
   refuses with `StaleProducer` unless ``start`` equals the stored length, the token
   is the producer's and the stream is running), optionally ends the stream, and only
   then announces `Appended` (then `Ended`) to subscribers. A reader that saw a
   message therefore finds its chunks in storage.
3. ``subscribe`` returns only once the subscription is active: any write that
   completes after it returns is announced to it. (Redis: after the server's
   ``subscribe`` confirmation.) If the feed may have missed messages (reconnect),
   the backend pushes `Resync`; if it is lost for good, it calls ``fail``.
4. ``snapshot`` reads status, length, lease and a range in one atomic step, so a
   "done" status always comes with every chunk of the stream. Backends report these
   facts; the core takes every verdict from them (`ctx.get_status`, a lost producer),
   so a backend needs no ``status()`` of its own (ours keep one for their users).
5. ``request_stop`` sets a flag that every later ``write`` of that stream reports.
6. Every stored record expires: ``ttl`` while running (renewed by each write),
   ``finished_ttl`` once ended; the lease expires ``lease`` seconds after the last write.

`resumable_stream.testing` checks these invariants against any backend.

Optionally, a backend may offer ``write_soon(...)`` with `write`'s arguments, which
starts the write at once, without a task, and returns a future that resolves as
`write` would (or None: "not now, use `write`"). The producer then writes from its
write clock's timer, and its task sleeps unless it renews, retries or ends; writes
started this way must be applied in the order they were started. `MemoryBackend`
and `RedisBackend` (through its pipelines) have it.

Optionally, a backend may delete streams (`Deletes`): every backend of this package
does. A deleted stream leaves a tombstone for a short while (``ttl`` seconds), so that
its producer, wherever it runs, is refused with ``StaleProducer(deleted=True)`` and
stops instead of taking the id for a "storage lost" marker; meanwhile a claim of the
id answers FAILED (a finished stream) and a snapshot None (no stream). Once the
tombstone expires, the id is free.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from .._exceptions import ResumableStreamError
from .._subscription import Subscription
from .._types import Chunk, Ended, Snapshot, StreamStatus

__all__ = ["Backend", "Deletes", "StaleProducer", "WritesSoon"]


class StaleProducer(ResumableStreamError):
    """A write was refused: the caller is no longer this stream's producer.

    Attributes:
        deleted: the stream was deleted (its tombstone refused the write): the producer
            stops and nobody re-creates the id.
    """

    def __init__(self, message: str, *, deleted: bool = False) -> None:
        super().__init__(message)
        self.deleted = deleted


@runtime_checkable
class Backend(Protocol):
    """Storage and announcements for streams. Durations are float seconds."""

    async def claim(
        self, stream_id: str, token: str, *, ttl: float, lease: float, metadata: bytes = b""
    ) -> StreamStatus | None:
        """Create the stream as running under ``token``, with opaque ``metadata``.

        Claims are idempotent by token, and a record that stored nothing never
        blocks the id:

        * a record running under this very ``token`` (a retry of a claim whose reply
          was lost) makes the caller its producer again: its lease and expiry are
          renewed, nothing else changes;
        * a RUNNING record with no chunk stored and its lease lapsed (an orphaned
          claim: its caller went away, or released it with a write of no chunks and
          ``lease=0``) is taken over: reset as a fresh running stream under ``token``
          (new lease, ``ttl`` and ``metadata``; stop flag cleared). Nothing was
          stored, so no reader holds any part of it. A FAILED record is never taken
          over (a "storage lost" marker keeps its id from being produced twice);
        * anything else is left as it is and its status reported as stored: RUNNING
          even if the lease lapsed (the core judges leases, in ``_lease.py``).

        Returns:
            None if the caller is now the producer; otherwise the stored status.
        """
        ...

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
        """Append ``chunks`` at ``start``, renew the lease, and end the stream if ``end``.

        An empty ``chunks`` with no ``end`` only renews the lease.

        Returns:
            True if `request_stop` was called for this stream: the producer should stop.

        Raises:
            StaleProducer: ``token`` does not own the stream, it has ended, or
                ``start`` is not the stored length.
        """
        ...

    async def snapshot(self, stream_id: str, start: int, limit: int) -> Snapshot | None:
        """Status, metadata and at most ``limit`` chunks from ``start``; None if no such
        stream. ``limit`` 0 reads no chunk."""
        ...

    async def request_stop(self, stream_id: str) -> bool:
        """Flag a running stream so that its producer stops at its next write.

        Returns:
            True if the stream was running.
        """
        ...

    async def subscribe(self, stream_id: str, *, max_buffered_bytes: int) -> Subscription:
        """Start receiving live events for ``stream_id`` (see invariant 3)."""
        ...

    async def aclose(self) -> None:
        """Release connections and tasks the backend owns (not the user's client)."""
        ...


@runtime_checkable
class WritesSoon(Protocol):
    """Optional: a backend that can start a write without a task of its own.

    The producer checks ``isinstance(backend, WritesSoon)``. `write_soon` takes
    `Backend.write`'s arguments and either returns a future that resolves as `write`
    would (writes started this way are applied in the order they were started), or
    None: "not now, use `write`". It may raise synchronously (an unencodable chunk):
    then nothing was sent.
    """

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
    ) -> asyncio.Future[bool] | None: ...


@runtime_checkable
class Deletes(Protocol):
    """Optional: a backend that can delete a stream (`ctx.delete_stream` needs it)."""

    async def delete(self, stream_id: str, *, ttl: float) -> bool:
        """Remove every stored key of the stream, atomically, and leave a tombstone that
        expires after ``ttl`` seconds; then announce `Ended` (FAILED, length 0, error
        ``StreamDeleted.ERROR``) to its subscribers.

        While the tombstone lasts, `Backend.write` refuses the stream's producer with
        ``StaleProducer(deleted=True)``, `Backend.claim` answers FAILED and
        `Backend.snapshot` None. Nothing is done (and nothing announced) for an id with
        no stream, or one deleted already.

        Returns:
            True if a stream was there.
        """
        ...

    async def deleted(self, stream_id: str) -> bool:
        """True while the tombstone of a deleted stream lasts: how a reader whose
        re-read finds nothing tells a deletion from an expiry."""
        ...
