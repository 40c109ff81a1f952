"""Followers in the producer's own context, fed by the producer.

A follower in the process that runs the stream's producer does not need Redis for the
live tail: the producer hands it each chunk as it hands it to the original reader. On
joining, it is handed the chunks not stored yet (the write in flight and the pending
ones), and reads the rest from storage as any follower does: storage holds at least
every chunk before those, so nothing falls between the two, and the merge drops what
both give.

A fast producer does not wake its followers once per chunk: each chunk is queued to
every feed at once, but the feeds are rung at most once per `RING_INTERVAL` (the
first chunk after a quiet spell rings at once), so a follower takes several chunks
per wake-up where the producer yields chunk after chunk, as a follower through
storage takes a whole write's batch.

The end reaches these followers from the producer only once it is stored. In every
other case (storage refused for good, the stream deleted, the producer cancelled) they
are told to re-read: the stored record and the lease verdict decide how they end, as
they do for every other reader.
"""

from __future__ import annotations

import asyncio
import enum

from ._subscription import LocalFeed, Subscription
from ._types import Appended, Chunk, Ended

__all__ = ["RING_INTERVAL", "Fanout", "FanoutState"]

# Seconds between two wake-ups of the followers. A wake-up per chunk per follower cost
# 3x the CPU per delivered chunk of followers through storage (W2: 10 followers of a
# producer that yields to the loop between chunks), and cut the producer's rate to a
# third. Half a millisecond adds at most that to a follower's lag, a third of what a
# follower through storage waits for (the write clock's tick, a round trip); a quarter
# was too short to gather more than one chunk per wake-up there.
RING_INTERVAL = 0.0005


class FanoutState(enum.Enum):
    OPEN = "open"  # the producer runs: followers join and get every chunk
    CLOSED = "closed"  # the producer ended: its followers were told; nobody joins


class Fanout:
    """One producer's local followers."""

    __slots__ = ("_loop", "_next_ring", "_ring", "feeds", "state")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Mutated in place, never replaced: the producer holds it for its hot path.
        self.feeds: list[Subscription] = []
        self.state = FanoutState.OPEN
        self._loop = loop  # the producer's
        self._next_ring = 0.0  # the loop time before which a ring waits for its timer
        self._ring: asyncio.TimerHandle | None = None  # the pending ring, if any

    def join(
        self, key: str, max_buffered_bytes: int, stored: int, unlanded: list[Chunk]
    ) -> LocalFeed | None:
        """A feed that gets every chunk from index ``stored`` on (``unlanded`` first,
        a list the feed keeps), or None if the producer ended: then the caller
        subscribes to the backend."""
        if self.state is FanoutState.CLOSED:
            return None
        feed = LocalFeed(key, max_buffered_bytes=max_buffered_bytes, on_close=self._leave)
        if unlanded:
            feed.push(Appended(stored, unlanded))
        self.feeds.append(feed)
        return feed

    def push_chunk(self, index: int, chunk: Chunk) -> None:
        for feed in self.feeds:
            feed.queue_chunk(index, chunk)
        if self._ring is not None:
            return  # rung when its timer fires
        now = self._loop.time()
        if now >= self._next_ring:
            self._next_ring = now + RING_INTERVAL
            self._ring_all()
        else:
            self._ring = self._loop.call_at(self._next_ring, self._ring_due)

    def _ring_due(self) -> None:
        self._ring = None
        self._next_ring = self._loop.time() + RING_INTERVAL
        self._ring_all()

    def _ring_all(self) -> None:
        for feed in self.feeds:
            feed.ring()

    def close(self, stored_end: Ended | None) -> None:
        """The producer ended: give its followers the end it stored, or (None) have
        them re-read storage. Once; nobody joins afterwards."""
        if self.state is FanoutState.CLOSED:
            return
        self.state = FanoutState.CLOSED
        if self._ring is not None:
            self._ring.cancel()  # the end (or the resync) below rings every feed
            self._ring = None
        feeds = list(self.feeds)
        self.feeds.clear()
        for feed in feeds:
            if stored_end is None:
                feed.resync()
            else:
                # Followers fail as other processes' do (StreamFailed), never with the
                # source's own exception object: that is the original reader's.
                feed.push(Ended(stored_end.status, stored_end.length, stored_end.error))

    async def _leave(self, feed: Subscription) -> None:
        if feed in self.feeds:
            self.feeds.remove(feed)
