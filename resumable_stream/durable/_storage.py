"""The storage contract of the Durable Streams server, and its in-memory store.

The protocol logic (``_service.py``) is written once over four primitives, so every
store behaves the same:

1. ``load(path)``: the stream's metadata (with its ``version``), or None.
2. ``read(path, start, max_items)``: metadata and the items overlapping
   ``[start, tail)``, read in one atomic step (the items always match the metadata).
3. ``commit(path, expected_version, meta, items, expected_id=...)``: compare-and-set.
   Only if the stored version is ``expected_version`` (0: no stream there) and, for an
   existing stream, its id is ``expected_id`` (a stream re-created under the path
   starts its versions again) does it store ``meta`` (or
   remove the stream, for None), add ``items``, drop the items that end before the one
   holding ``meta.first`` (retention), set the expiry, and then announce the change to
   every watcher, in every process. Otherwise it returns False and the caller
   reloads and decides again. This one atomic step is what keeps appends exactly once
   and in order, and producers fenced, across processes.
4. ``watch(path)``: registered before a read, woken by any later commit of that path.

Expiry: a stream with ``Stream-Expires-At`` ends then; one with ``Stream-TTL`` ends
``ttl`` seconds after its last read or write (`touch` renews it; ``HEAD`` does not);
others live for the store's ``retention`` (None: forever, memory only).
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ._model import Item, StreamMeta

__all__ = ["DurableStorage", "MemoryStorage", "Watch", "expiry_ms"]


def expiry_ms(meta: StreamMeta, now_ms: int, retention: float | None) -> int | None:
    """When ``meta``'s stream expires if touched now (ms since the epoch), or None."""
    if meta.expires_at_ms is not None:
        return meta.expires_at_ms
    if meta.ttl is not None:
        return now_ms + meta.ttl * 1000
    if retention is None:
        return None
    return now_ms + int(retention * 1000)


class Watch(Protocol):
    """A registration for changes of one stream."""

    async def wait(self, timeout: float) -> bool:
        """Wait until a commit of the stream after registration, at most ``timeout``
        seconds. Returns False on timeout. May wake without a change (re-check)."""
        ...


@runtime_checkable
class DurableStorage(Protocol):
    """Where streams live (see the module docstring for the invariants)."""

    async def load(self, path: str) -> StreamMeta | None: ...

    async def read(
        self, path: str, start: int, max_items: int
    ) -> tuple[StreamMeta | None, list[Item]]: ...

    async def commit(
        self,
        path: str,
        expected_version: int,
        meta: StreamMeta | None,
        items: Sequence[Item] = (),
        *,
        expected_id: str = "",
    ) -> bool: ...

    async def touch(self, path: str, meta: StreamMeta) -> None: ...

    def watch(self, path: str) -> AbstractAsyncContextManager[Watch]: ...

    async def aclose(self) -> None: ...


class _Waiter:
    def __init__(self) -> None:
        self._event = asyncio.Event()

    def wake(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except asyncio.TimeoutError:  # TimeoutError from 3.11 on
            return False
        self._event.clear()
        return True


class Watchers:
    """Waiters by path, for one process: woken by the local store or a feed."""

    def __init__(self) -> None:
        self._by_path: dict[str, set[_Waiter]] = {}

    @asynccontextmanager
    async def watch(self, path: str) -> AsyncIterator[Watch]:
        waiter = _Waiter()
        self._by_path.setdefault(path, set()).add(waiter)
        try:
            yield waiter
        finally:
            waiters = self._by_path.get(path)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._by_path[path]

    def wake(self, path: str) -> None:
        for waiter in self._by_path.get(path, ()):
            waiter.wake()

    def wake_all(self) -> None:
        for waiters in self._by_path.values():
            for waiter in waiters:
                waiter.wake()


@dataclass
class _Entry:
    meta: StreamMeta
    items: list[Item] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    deadline_ms: int | None = None


class MemoryStorage:
    """Streams in this process's memory: for one process, tests and development.

    Args:
        retention: seconds a stream with neither TTL nor expiry lives after its last
            read or write; None (the default) keeps it until deleted.
    """

    def __init__(self, *, retention: float | None = None) -> None:
        self._streams: dict[str, _Entry] = {}
        self._watchers = Watchers()
        self._retention = retention

    def _entry(self, path: str) -> _Entry | None:
        entry = self._streams.get(path)
        if entry is None:
            return None
        if entry.deadline_ms is not None and entry.deadline_ms <= _now_ms():
            del self._streams[path]
            return None
        return entry

    async def load(self, path: str) -> StreamMeta | None:
        entry = self._entry(path)
        return None if entry is None else entry.meta.copy()

    async def read(
        self, path: str, start: int, max_items: int
    ) -> tuple[StreamMeta | None, list[Item]]:
        entry = self._entry(path)
        if entry is None:
            return None, []
        # The item holding ``start``: the last one starting at or before it.
        i = max(0, bisect.bisect_right(entry.starts, start) - 1)
        return entry.meta.copy(), entry.items[i : i + max_items]

    async def commit(
        self,
        path: str,
        expected_version: int,
        meta: StreamMeta | None,
        items: Sequence[Item] = (),
        *,
        expected_id: str = "",
    ) -> bool:
        entry = self._entry(path)
        if (0 if entry is None else entry.meta.version) != expected_version:
            return False
        if entry is not None and entry.meta.id != expected_id:
            return False  # another stream under this path, at the same version
        if meta is None:
            self._streams.pop(path, None)
        else:
            meta = meta.copy()
            meta.version = expected_version + 1
            if entry is None:
                entry = self._streams[path] = _Entry(meta)
            entry.meta = meta
            entry.items.extend(items)
            entry.starts.extend(item.start for item in items)
            if meta.first > 0:
                # Retention: keep the item holding ``first`` and everything after it.
                keep = max(0, bisect.bisect_right(entry.starts, meta.first) - 1)
                if keep:
                    del entry.items[:keep]
                    del entry.starts[:keep]
            entry.deadline_ms = expiry_ms(meta, _now_ms(), self._retention)
        self._watchers.wake(path)
        return True

    async def touch(self, path: str, meta: StreamMeta) -> None:
        entry = self._entry(path)
        if entry is not None and entry.meta.id == meta.id:
            entry.deadline_ms = expiry_ms(entry.meta, _now_ms(), self._retention)

    def watch(self, path: str) -> AbstractAsyncContextManager[Watch]:
        return self._watchers.watch(path)

    async def aclose(self) -> None:
        self._watchers.wake_all()


def _now_ms() -> int:
    return int(time.time() * 1000)
