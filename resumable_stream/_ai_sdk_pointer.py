"""Per chat, the id of its active answer's stream, kept in the context's own backend.

Behind `resumable_stream.ai_sdk` (its module docstring says how the register works).
"""

from __future__ import annotations

import logging

from .backends._protocol import Backend, StaleProducer

logger = logging.getLogger("resumable_stream")

_POINTER_TOKEN = "resumable-stream ai-sdk chat pointer"  # a name, not a secret
_POINTER_PREFIX = "ai-sdk:chat:"
_POINTER_TRIES = 16  # appends lost to other writers before giving up (a few per answer)
_TAIL_PAGE = 64


class ActiveStreams:
    """Per chat, the id of its active stream, in the backend (see `resumable_stream.ai_sdk`).

    Built only on the backend contract: ``claim`` creates the log once (atomically),
    ``write`` appends at an expected index (refused if another process appended first),
    ``snapshot`` reads its length and tail.
    """

    def __init__(self, backend: Backend, ttl: float) -> None:
        self._backend = backend
        self._ttl = ttl

    async def get(self, chat_id: str) -> str | None:
        """The chat's active stream id, or None (never set, cleared, or expired)."""
        last = await self._last(_POINTER_PREFIX + chat_id)
        if last is None or not last[1]:
            return None
        return last[1]

    async def set(self, chat_id: str, stream_id: str) -> str | None:
        """Make ``stream_id`` the chat's active stream; return the one it replaced."""
        _, previous = await self._append(chat_id, stream_id, only_if=None)
        return previous or None

    async def clear(self, chat_id: str, stream_id: str) -> bool:
        """Clear the pointer if it still names ``stream_id``; False if it names another."""
        applied, _ = await self._append(chat_id, "", only_if=stream_id)
        return applied

    async def restore(self, chat_id: str, stream_id: str, previous: str | None) -> bool:
        """Undo `set` (its stream was never made), unless another has replaced it since."""
        applied, _ = await self._append(chat_id, previous or "", only_if=stream_id)
        return applied

    async def _last(self, key: str) -> tuple[int, str] | None:
        """The log's length and last entry, or None if there is no log.

        Two reads: the length, then the tail from the last entry on (one atomic read, so
        if entries were appended in between, its last chunk is the newest one).
        """
        start, limit = 0, 0
        seen: tuple[int, str] | None = None
        for _ in range(_POINTER_TRIES):
            snap = await self._backend.snapshot(key, start, limit)
            if snap is None:
                return None
            if snap.length == 0:
                return 0, ""
            if snap.chunks:
                entry = snap.chunks[-1]
                seen = start + len(snap.chunks), entry if isinstance(entry, str) else entry.decode()
                if seen[0] >= snap.length:
                    return seen
            start, limit = snap.length - 1, _TAIL_PAGE
        return seen  # more than a page appended between every two reads: a recent value

    async def _append(
        self, chat_id: str, value: str, *, only_if: str | None
    ) -> tuple[bool, str]:
        """Append ``value`` (if the last entry is ``only_if``, when given).

        Returns:
            Whether the pointer now holds ``value`` by this call, and the entry it held
            before ("" for none).
        """
        key = _POINTER_PREFIX + chat_id
        ttl = self._ttl
        for _ in range(_POINTER_TRIES):
            last = await self._last(key)
            if last is None:
                if only_if is not None:
                    return False, ""  # nothing to change (expired)
                # The lease is the ttl: the log never reads as a stream whose producer died.
                if await self._backend.claim(key, _POINTER_TOKEN, ttl=ttl, lease=ttl) is not None:
                    continue  # another process made it first: read it again
                length, current = 0, ""
            else:
                length, current = last
                if only_if is not None and current != only_if:
                    return False, current
                if current == value:
                    return True, current
            try:
                await self._backend.write(
                    key, _POINTER_TOKEN, length, [value],
                    end=None, ttl=ttl, finished_ttl=ttl, lease=ttl,
                )  # fmt: skip
            except StaleProducer:
                continue  # another process appended first: decide again on the new tail
            return True, current
        logger.warning("chat %r: the active-stream pointer could not be updated", chat_id)
        return False, ""


