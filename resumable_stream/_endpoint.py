"""The resume endpoint: ``GET`` resumes a stream, ``DELETE`` stops (or deletes) it.

Its contract (statuses, headers, positions) is in the `resumable_stream.asgi` docstring.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qs

from ._context import ResumableStreamContext, _unpack_metadata
from ._exceptions import (
    BackendUnavailable,
    InvalidArgument,
    InvalidStreamId,
    ProducerLost,
    StreamFailed,
    StreamNotFound,
    StreamTooLarge,
    TooManyFollowers,
)
from ._http import (
    Message,
    Owner,
    Receive,
    Scope,
    Send,
    ended_response,
    first_item,
    header,
    may_access,
    may_access_stream,
    path_segments,
    replay_headers,
    request_owner,
    stream_headers,
    wait_disconnect,
)
from ._http import plain_response as _plain
from ._keys import validate_stream_id
from ._responder import (
    DEFAULT_PING_INTERVAL,
    RETRY_AFTER,
    Authorize,
    allowed,
    request_location,
    respond,
    wants_delete,
    wants_reconnect,
)
from ._sse import parse_last_event_id
from ._types import StreamStatus

__all__ = ["ResumeEndpoint"]

logger = logging.getLogger("resumable_stream")

_ALLOW = [(b"allow", b"GET, HEAD, DELETE")]


class ResumeEndpoint:
    """The resume endpoint as an ASGI app: ``GET`` resumes, ``DELETE`` stops, and
    ``DELETE ?delete=1`` deletes (with ``allow_delete``).

    The stream id comes from ``scope["path_params"][path_param]`` (Starlette, FastAPI
    and Litestar routing set it) or else from the last segment of the path.

    Args:
        context: the context streams live in; None answers ``503`` (not configured).
        authorize: ``authorize(scope, stream_id) -> bool`` (or awaitable); False gives ``403``.
        ping_interval: seconds of silence before an SSE comment ping; None disables.
        path_param: the name of the path parameter holding the id.
        allow_delete: serve ``DELETE ?delete=1``: delete the stream (``204``; ``404``
            unknown). Off by default: then that request gets ``405`` and a plain
            ``DELETE`` still only stops.
        owner: ``owner(scope) -> str | None`` (or awaitable): who asks. A stream bound
            to an owner answers anyone else (or None) as an unknown id does (``404``).
            Without it, owners are not checked.
    """

    def __init__(
        self,
        context: ResumableStreamContext | None,
        *,
        authorize: Authorize | None = None,
        ping_interval: float | None = DEFAULT_PING_INTERVAL,
        path_param: str = "stream_id",
        allow_delete: bool = False,
        owner: Owner | None = None,
    ) -> None:
        self.context = context
        self.authorize = authorize
        self.ping_interval = ping_interval
        self.path_param = path_param
        self.allow_delete = allow_delete
        self.owner = owner

    def _stream_id(self, scope: Scope) -> str:
        """The id the request names: the router's path parameter, else the last path
        segment, percent-decoded exactly once (`path_segments`), so an id holding
        ``%`` or an encoded ``/`` resolves too.

        Raises:
            InvalidStreamId: the segment is not percent-encoded UTF-8.
        """
        params = scope.get("path_params") or {}
        value = params.get(self.path_param)
        if value is not None:
            return str(value)
        try:
            return path_segments(scope)[-1]
        except ValueError:
            raise InvalidStreamId("the stream id in the path is not UTF-8") from None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError("ResumeEndpoint serves HTTP only")
        method = scope["method"]
        if method not in ("GET", "HEAD", "DELETE"):
            await _plain(send, 405, "method not allowed", _ALLOW)
            return
        purge = method == "DELETE" and wants_delete(scope)
        if purge and not self.allow_delete:
            # Before anything else: an endpoint that does not delete says so to everyone.
            await _plain(send, 405, "deleting streams is not enabled here (allow_delete)", _ALLOW)
            return
        if self.context is None:
            await _plain(send, 503, "resumable streams are not configured")
            return
        try:
            stream_id = validate_stream_id(self._stream_id(scope))
        except InvalidStreamId:
            await _plain(send, 404, "no such stream")
            return
        if not await allowed(self.authorize, scope, stream_id):
            await _plain(send, 403, "forbidden")
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        requester = await request_owner(self.owner, scope)
        try:
            if method == "DELETE" and not await self._may(stream_id, requester):
                await _plain(send, 404, "no such stream")  # what an unknown id gets
            elif purge:
                await self._delete(stream_id, tracked)
            elif method == "DELETE":
                await self._stop(stream_id, tracked)
            else:
                await self._resume(scope, receive, tracked, stream_id, requester)
        except BackendUnavailable as exc:
            if started:
                raise  # mid-body: the server aborts it and the client resumes later
            logger.warning("resume of %r: backend unavailable (%s)", stream_id, exc)
            await _plain(send, 503, "stream storage is unavailable")

    async def _may(self, stream_id: str, requester: str | None) -> bool:
        """Without ``owner=``, anyone may; with it, see `may_access_stream` (False for
        an unknown stream too, whose answer is the same ``404``)."""
        assert self.context is not None
        return self.owner is None or await may_access_stream(self.context, stream_id, requester)

    async def _stop(self, stream_id: str, send: Send) -> None:
        assert self.context is not None
        if await self.context.stop_stream(stream_id):
            await _plain(send, 202, "stopping")
        elif (status := await self.context.get_status(stream_id)) is None:
            await _plain(send, 404, "no such stream")
        else:
            done = b"done" if status is StreamStatus.DONE else b"failed"
            await _plain(send, 410, "the stream has already ended", [(b"x-stream-status", done)])

    async def _delete(self, stream_id: str, send: Send) -> None:
        assert self.context is not None
        if await self.context.delete_stream(stream_id):
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await _plain(send, 404, "no such stream")

    async def _resume(
        self, scope: Scope, receive: Receive, send: Send, stream_id: str, requester: str | None
    ) -> None:
        assert self.context is not None
        headers = scope.get("headers") or []
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        try:
            raw_id = header(headers, b"last-event-id")
            after = parse_last_event_id(None if raw_id is None else raw_id.decode("latin-1"))
            resume_at = _resume_at(query)
        except ValueError as exc:
            await _plain(send, 400, str(exc))
            return
        if after is not None and resume_at is not None:
            await _plain(send, 400, "give Last-Event-ID or resumeAt, not both")
            return
        reconnect = wants_reconnect(scope)
        if reconnect and after is None and resume_at is None:
            # At a Location: the client has the original's headers but no event yet.
            after = -1
        try:
            if after is not None:
                reader = await self.context.resume_existing_stream(stream_id, after=after)
            elif resume_at is not None:
                reader = await self.context.resume_existing_stream(stream_id, resume_at, after=-1)
            else:
                reader = await self.context.resume_existing_stream(stream_id)
        except StreamNotFound:
            await _plain(send, 404, "no such stream")
            return
        except TooManyFollowers:
            # A 503 would confirm the stream: only to whoever may read it.
            if await self._may(stream_id, requester):
                await _plain(send, 503, "too many readers of this stream", RETRY_AFTER)
            else:
                await _plain(send, 404, "no such stream")
            return
        if reader is None:
            if not await self._may(stream_id, requester):
                await _plain(send, 404, "no such stream")  # and not how it ended
                return
            # Nothing left: say how it ended (a failure must never read as an end).
            await self._ended(
                scope, send, stream_id, known_done=after is None and resume_at is None
            )
            return
        if self.owner is not None and not may_access(reader.metadata, requester):
            # Checked on the reader's own metadata, read with its first chunks: the
            # usual resume costs no extra round trip.
            await reader.aclose()
            await _plain(send, 404, "no such stream")
            return
        status, replay, mode = replay_headers(dict(reader.metadata))
        if resume_at and mode == "sse":
            # resumeAt=0 is allowed: "from the start" for a client that has no event yet.
            await reader.aclose()
            await _plain(send, 400, "resume an event stream with Last-Event-ID, not resumeAt")
            return
        first = None
        if reader.status is not StreamStatus.RUNNING:
            # Everything is stored: find out whether anything is left before answering.
            failure: str | None = None
            try:
                first = await first_item(reader)
            except StreamTooLarge:
                failure = "StreamTooLarge"
            except StreamFailed:
                failure = "StreamFailed"
            except ProducerLost:
                failure = "ProducerLost"
            if first is None:
                await reader.aclose()
                if failure is None and reconnect:
                    await _nothing_left(scope, send, stream_id, dict(reader.metadata))
                else:
                    await ended_response(send, failure)
                return
        await respond(
            scope,
            send,
            reader,
            status=status,
            headers=replay,
            stream_id=stream_id,
            mode=mode,
            listen_disconnect=lambda: wait_disconnect(receive),
            ping_interval=self.ping_interval,
            location=request_location(scope),
            first=first,
        )

    async def _ended(self, scope: Scope, send: Send, stream_id: str, *, known_done: bool) -> None:
        """Answer for a stream that ended with nothing left for this client.

        ``resume_existing_stream`` returns None for "ended, nothing after your position"
        without saying how; one more snapshot (no chunk) tells. An ended status never
        changes, so it cannot disagree with what the reader saw; a running stream whose
        lease lapsed is the one case the snapshot still reports as running.
        """
        assert self.context is not None
        if known_done:  # without a position, None means "done" only
            await ended_response(send, None)
            return
        snap = await self.context.backend.snapshot(stream_id, 0, 0)
        if snap is None:  # expired in between
            await _plain(send, 404, "no such stream")
        elif snap.status is StreamStatus.DONE:
            if wants_reconnect(scope):
                await _nothing_left(scope, send, stream_id, _unpack_metadata(snap.metadata))
            else:
                await ended_response(send, None)
        elif snap.status is StreamStatus.RUNNING:
            await ended_response(send, "ProducerLost")
        elif snap.error and snap.error.startswith(StreamTooLarge.PREFIX):
            await ended_response(send, "StreamTooLarge")
        else:
            await ended_response(send, "StreamFailed")


async def _nothing_left(
    scope: Scope, send: Send, stream_id: str, metadata: dict[str, Any] | None
) -> None:
    """A reconnect (``?reconnect=1``) to a completed stream the client has whole: the
    original's status and headers with an empty body, marked ``X-Stream-Status: done``.

    A client that follows ``Location`` reconnects after any cut, even one after the
    last event, and treats a ``410`` as an error; for it a clean empty end is the truth.
    """
    status, replay, mode = replay_headers(metadata or {})
    headers = stream_headers(replay, stream_id, mode, location=request_location(scope))
    headers.append((b"x-stream-status", b"done"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _resume_at(query: dict[str, list[str]]) -> int | None:
    """The ``?resumeAt=`` position, or None without one.

    Raises:
        InvalidArgument: not a decimal number of characters (a ``400``).
    """
    values = query.get("resumeAt")
    if not values:
        return None
    value = values[-1].strip()
    if not value.isdigit() or not value.isascii() or len(value) > 20:
        raise InvalidArgument(
            f"resumeAt must be a number of characters >= 0, got {values[-1]!r}"
        )
    return int(value)
