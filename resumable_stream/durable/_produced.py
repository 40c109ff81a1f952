"""Streams of ``ctx.resumable_stream(...)`` producers, read through the Durable Streams API.

A read-only `DurableStorage` over a backend of the core (`resumable_stream.Backend`:
memory, Redis, Cluster, Upstash), through its public contract: ``snapshot`` for the
stored chunks, ``subscribe`` for the live tail.

* Positions are chunk indexes: offset ``..._0000000000000003`` is the fourth chunk, so a
  client's offset is a position in the stored stream, valid in every process.
* A running stream is open; its live tail follows the producer (long-poll, SSE).
* A stream that ended DONE reads as closed: EOF after its last chunk.
* A stream that FAILED (its source raised, its producer was lost, or it was stopped)
  also reads as closed, so no client waits forever, and says why in an extension
  header, ``Stream-Error: <reason>`` (on HEAD, and on the GET or long-poll answer
  that reaches the end), and as ``streamError`` in the final SSE control event.
  Clients that know nothing of it see a clean EOF; clients that check it tell a
  finished stream from a broken one. (The protocol allows extension headers and
  fields, section 11.1; it has no failed state of its own.)
* Content type: ``metadata["content_type"]`` if the producer set it, else
  ``text/plain; charset=utf-8``. ``str`` chunks are sent as UTF-8.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import msgpack

from .._subscription import Subscription
from .._types import Snapshot, StreamStatus
from ..backends import Backend
from ._model import Item, StreamMeta
from ._storage import Watch

__all__ = ["ProducedStorage"]

DEFAULT_CONTENT_TYPE = "text/plain; charset=utf-8"
FEED_BYTES = 1 << 20  # live events a reader may have queued before it re-reads


class _SubscriptionWatch:
    """A `Watch` over a backend subscription: any event means "re-read"."""

    def __init__(self, subscription: Subscription) -> None:
        self._subscription = subscription

    async def wait(self, timeout: float) -> bool:
        try:
            event = await self._subscription.get(timeout)
        except Exception:
            # The live feed was lost: re-read now; later waits last their timeout
            # (the reader's poll interval), so the tail degrades to polling.
            return True
        if event is None:
            return False
        while True:  # one re-read covers every queued event
            try:
                if self._subscription.get_nowait() is None:
                    break
            except Exception:
                break
        return True


class ProducedStorage:
    """Read-only access to the streams a `ResumableStreamContext` produces on ``backend``.

    Args:
        backend: the context's backend (``ctx.backend``).
        prefix: the path prefix that names these streams: ``prefix + stream_id``.
    """

    def __init__(self, backend: Backend, *, prefix: str) -> None:
        self.backend = backend
        self.prefix = prefix

    def stream_id(self, path: str) -> str:
        return path[len(self.prefix) :]

    def _meta(self, stream_id: str, snap: Snapshot) -> StreamMeta:
        content_type = DEFAULT_CONTENT_TYPE
        if snap.metadata:
            try:
                unpacked: Any = msgpack.unpackb(snap.metadata, raw=False)
            except ValueError:
                unpacked = None
            if isinstance(unpacked, dict) and isinstance(unpacked.get("content_type"), str):
                content_type = unpacked["content_type"]
        error: str | None = None
        if snap.status is StreamStatus.FAILED:
            error = snap.error or "failed"
        elif snap.status is StreamStatus.RUNNING and not snap.lease_alive:
            error = "producer lost"
        return StreamMeta(
            content_type=content_type,
            id="rs" + hashlib.sha256(stream_id.encode()).hexdigest()[:14],
            tail=snap.length,
            closed=snap.status is not StreamStatus.RUNNING or error is not None,
            chunked=True,
            read_only=True,
            error=error,
        )

    async def load(self, path: str) -> StreamMeta | None:
        meta, _ = await self.read(path, 0, 0)
        return meta

    async def read(
        self, path: str, start: int, max_items: int
    ) -> tuple[StreamMeta | None, list[Item]]:
        stream_id = self.stream_id(path)
        if not stream_id:
            return None, []
        snap = await self.backend.snapshot(stream_id, start, max_items)
        if snap is None:
            return None, []
        items = []
        for i, chunk in enumerate(snap.chunks):
            data = chunk.encode("utf-8", "surrogatepass") if isinstance(chunk, str) else chunk
            items.append(Item(start + i, data, start + i + 1))
        return self._meta(stream_id, snap), items

    async def commit(
        self,
        path: str,
        expected_version: int,
        meta: StreamMeta | None,
        items: Sequence[Item] = (),
        *,
        expected_id: str = "",
    ) -> bool:
        raise PermissionError("streams of resumable_stream producers are read-only here")

    async def touch(self, path: str, meta: StreamMeta) -> None:
        return None

    def watch(self, path: str) -> AbstractAsyncContextManager[Watch]:
        return self._watch(path)

    @asynccontextmanager
    async def _watch(self, path: str) -> AsyncIterator[Watch]:
        # subscribe() returns once the subscription is active (the backend contract):
        # any chunk written after it wakes this watch.
        subscription = await self.backend.subscribe(
            self.stream_id(path), max_buffered_bytes=FEED_BYTES
        )
        try:
            yield _SubscriptionWatch(subscription)
        finally:
            await subscription.aclose()

    async def aclose(self) -> None:
        return None
