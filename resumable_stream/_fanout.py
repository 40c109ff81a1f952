"""Followers in the producer's own context, fed by the producer.

A follower in the process that runs the stream's producer does not need Redis for the
live tail: the producer hands it each chunk as it hands it to the original reader. On
joining, it is handed the chunks not stored yet (the write in flight and the pending
ones), and reads the rest from storage as any follower does: storage holds at least
every chunk before those, so nothing falls between the two, and the merge drops what
both give.

The end reaches these followers from the producer only once it is stored. In every
other case (storage refused for good, the stream deleted, the producer cancelled) they
are told to re-read: the stored record and the lease verdict decide how they end, as
they do for every other reader.
"""

from __future__ import annotations

import enum

from ._subscription import LocalFeed, Subscription
from ._types import Appended, Chunk, Ended

__all__ = ["Fanout", "FanoutState"]


class FanoutState(enum.Enum):
    OPEN = "open"  # the producer runs: followers join and get every chunk
    CLOSED = "closed"  # the producer ended: its followers were told; nobody joins


class Fanout:
    """One producer's local followers."""

    __slots__ = ("feeds", "state")

    def __init__(self) -> None:
        # Mutated in place, never replaced: the producer holds it for its hot path.
        self.feeds: list[Subscription] = []
        self.state = FanoutState.OPEN

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
            feed.push_chunk(index, chunk)

    def close(self, stored_end: Ended | None) -> None:
        """The producer ended: give its followers the end it stored, or (None) have
        them re-read storage. Once; nobody joins afterwards."""
        if self.state is FanoutState.CLOSED:
            return
        self.state = FanoutState.CLOSED
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
