"""The one place that decides whether a stream's producer is lost.

Backends report facts (a snapshot: status, stored length, whether the lease is
held); this module turns them into a verdict, the same one for every caller: a
follower, a resume with a position, `get_status`, a claim that found the id taken.

A lapsed lease is not yet a lost producer. A process whose event loop stalls (a
full GC pass over 10,000 streams, a burst of CPU work) renews late, and a verdict
taken on one observation would end the readers of a live stream. So a lapse is
*confirmed*: the producer is lost only if its lease is still lapsed at least
``poll_interval`` after it was first seen lapsed, with no chunk stored in between.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ._types import Snapshot, StreamStatus

__all__ = ["LeaseWatch", "Liveness", "judge", "settle"]


class Liveness(enum.Enum):
    """What the facts say about a stream's producer."""

    ENDED = "ended"  # done or failed: there is no producer to judge
    ALIVE = "alive"  # running, and the lease is held (or the producer runs here)
    LAPSED = "lapsed"  # running, lease lapsed: not confirmed yet
    LOST = "lost"  # running, lease lapsed and confirmed so: nobody will end it


@dataclass(frozen=True, slots=True)
class Lapse:
    """When a lapsed lease was first seen, and the stored length then."""

    length: int
    at: float


def judge(
    snap: Snapshot,
    *,
    here: bool,
    first: Lapse | None,
    now: float,
    confirm_after: float,
) -> tuple[Liveness, Lapse | None]:
    """The verdict on ``snap``, pure: no I/O, no clock of its own.

    Args:
        snap: what the backend read.
        here: the producer runs in this process and still stores (first-hand
            knowledge outranks the lease).
        first: the lapse seen earlier, if any (from the previous call's result).
        now: the caller's clock (loop time).
        confirm_after: how long a lapse must last to be confirmed (``poll_interval``).

    Returns:
        The verdict and the lapse to pass as ``first`` next time (None unless LAPSED).
    """
    if snap.status is not StreamStatus.RUNNING:
        return Liveness.ENDED, None
    if snap.lease_alive or here:
        return Liveness.ALIVE, None
    if first is None or snap.length > first.length:
        # First seen lapsed, or the producer stored something since: it lived then.
        return Liveness.LAPSED, Lapse(snap.length, now)
    if now - first.at >= confirm_after:
        return Liveness.LOST, None
    return Liveness.LAPSED, first


class LeaseWatch:
    """`judge` over successive snapshots of one stream (a reader holds one)."""

    __slots__ = ("_confirm_after", "_first", "_here")

    def __init__(self, confirm_after: float, here: Callable[[], bool]) -> None:
        self._confirm_after = confirm_after
        self._here = here
        self._first: Lapse | None = None

    def observe(self, snap: Snapshot) -> Liveness:
        verdict, self._first = judge(
            snap,
            here=self._here(),
            first=self._first,
            now=asyncio.get_running_loop().time(),
            confirm_after=self._confirm_after,
        )
        return verdict

    def progress(self) -> None:
        """A live chunk arrived: the producer lives, forget any lapse seen."""
        self._first = None


async def settle(
    snap: Snapshot,
    watch: LeaseWatch,
    reread: Callable[[], Awaitable[Snapshot | None]],
    confirm_after: float,
) -> tuple[Snapshot | None, Liveness]:
    """For a caller that must answer now: re-read until the verdict is not LAPSED.

    A lapse costs the caller one ``confirm_after`` wait (and only a lapse: a stream
    with a live producer or an end answers at once). Returns the last snapshot (None
    if the stream vanished meanwhile) and its verdict.
    """
    verdict = watch.observe(snap)
    current: Snapshot | None = snap
    while verdict is Liveness.LAPSED:
        await asyncio.sleep(confirm_after)  # the confirmation interval itself
        current = await reread()
        if current is None:
            return None, Liveness.ENDED
        verdict = watch.observe(current)
    return current, verdict
