"""Value types shared by the core and the backends."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "Appended",
    "Chunk",
    "Ended",
    "Event",
    "IndexedChunk",
    "Resync",
    "Snapshot",
    "StreamStatus",
]

Chunk = str | bytes
"""One piece of a stream, as the producer yielded it (its type is kept)."""


class StreamStatus(str, enum.Enum):
    """Where a stream is in its life."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class IndexedChunk(NamedTuple):
    """A chunk with its position in the stream (0-based; the SSE event id)."""

    index: int  # type: ignore[assignment]  # shadows tuple.index, on purpose: it reads best
    data: Chunk


@dataclass(frozen=True)
class Appended:
    """Live event: ``chunks`` were stored at ``start``, ``start + 1``, ..."""

    start: int
    chunks: Sequence[Chunk]


@dataclass(frozen=True)
class Ended:
    """Live event: the stream ended with ``length`` chunks in all.

    ``exception`` is only set in the producing process, so that the original reader
    re-raises the very exception its source raised.
    """

    status: StreamStatus
    length: int
    error: str | None = None
    exception: BaseException | None = None


class Resync:
    """Live event: messages may have been missed; re-read the stored chunks."""

    __slots__ = ()


Event = Appended | Ended | Resync


@dataclass(frozen=True)
class Snapshot:
    """What a backend read atomically: the state and a range of stored chunks.

    ``chunks`` starts at the index the reader asked for; ``length`` is the number of
    chunks stored in all, so ``length > start + len(chunks)`` means "read more".
    ``lease_alive`` is False when a running stream's producer stopped renewing.
    """

    status: StreamStatus
    length: int
    chunks: Sequence[Chunk]
    lease_alive: bool = True
    error: str | None = None
    metadata: bytes = b""
