"""The retry window every caller of the backend shares (claims, writes, recovery).

A call that meets an unreachable backend is tried again with a growing pause, for up
to ``retry_window`` seconds in all; each try has a deadline of its own, so a half-open
connection that never answers cannot hold a try forever.
"""

from __future__ import annotations

import asyncio

__all__ = ["LEAST_ATTEMPT", "RetryWindow"]

LEAST_ATTEMPT = 1.0  # seconds one try may take even at the end of the window
_FIRST_PAUSE = 0.05
_LONGEST_PAUSE = 1.0


class RetryWindow:
    """How long the next try may take, and the pause before it (made in a loop)."""

    __slots__ = ("_deadline", "_loop", "_pause")

    def __init__(self, window: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._deadline = self._loop.time() + window
        self._pause = _FIRST_PAUSE

    def attempt(self) -> float:
        """Seconds the next try may take: what is left of the window, at least
        `LEAST_ATTEMPT`."""
        return max(self._deadline - self._loop.time(), LEAST_ATTEMPT)

    def exhausted(self) -> bool:
        """True if the window has no room for another pause and try."""
        return self._loop.time() + self._pause > self._deadline

    async def pause(self) -> None:
        """Back off before the next try (a pause between retries, not a wait for an
        event): 50 ms, doubling up to 1 s."""
        await asyncio.sleep(self._pause)
        self._pause = min(self._pause * 2, _LONGEST_PAUSE)
