"""Framework-free ASGI helpers: resumable responses, a middleware and a resume endpoint.

* `ResumableStreamMiddleware` wraps any ASGI app. For the requests it is told to
  handle, the app's streaming response becomes the producer of a resumable stream: the
  client gets the body plus an ``X-Stream-Id`` header, and the app keeps running to the
  end even if the client disconnects (it never sees the disconnect). Stopping the
  stream (``DELETE``, ``ctx.stop_stream``), a cut at
  ``max_stream_bytes`` or closing the context cancels the app (its ``finally`` runs;
  the middleware waits up to ``APP_CANCEL_GRACE`` for it). The app's ``send`` waits
  while ``max_buffered_bytes`` of its body wait for the producer, so an app faster
  than storage is held back instead of filling memory. It also serves the resume
  endpoint.
* `ResumableStreamResponse` is an ASGI response for code that wants to be explicit.
* `ResumeEndpoint` is the resume endpoint as a mountable ASGI app.

Resume contract (``GET`` on the resume path): ``200`` with the stream from the
requested position; ``404`` unknown or expired; ``410`` ended with nothing left for
this client, with ``X-Stream-Status: done`` if it completed or ``X-Stream-Status:
failed`` plus ``X-Stream-Error: StreamFailed`` (the producer's source raised, storage
was lost, or it was shut down) or ``ProducerLost`` (its process died) if it failed;
``413`` (``X-Stream-Status: failed``, ``X-Stream-Error: StreamTooLarge``) the stream
was cut at ``max_stream_bytes`` and the client has everything stored before the cut;
a ``200`` whose stream fails mid-body is aborted, never ended cleanly, so the client
resumes and gets the failure; ``400`` a bad position; ``403`` refused by
``authorize``; ``503`` no backend configured, the backend unreachable, or
``max_followers`` readers of this stream already in this process (with
``Retry-After: 1``). The position is ``Last-Event-ID``
(the index of the last SSE event received) or ``?resumeAt=<characters>`` for other
bodies (an SSE client with no event yet sends ``?resumeAt=0``). A client that gives a
position gets the tail of a stream that finished while it was away. ``DELETE`` on the
same path stops the stream's producer (``202``). ``DELETE`` with ``?delete=1`` deletes
the stream instead (`ResumableStreamContext.delete_stream`), only where the app opted
in with ``allow_delete=True``: ``204`` deleted, ``404`` unknown; without the opt-in it
is refused with ``405`` and nothing changes.

Owners (``owner=``, on the middleware, `ResumeEndpoint` and `ResumableStreamResponse`):
``owner(scope) -> str | None`` says who a request comes from. A stream is bound to the
owner of the request that made it, stored in its metadata under ``"owner"`` (a reserved
key). A resume, stop or delete of an owned stream by anyone else, or by nobody (None),
gets exactly what an unknown id gets (``404``, same body and headers), so the stream's
existence is never confirmed to them; owners are compared in constant time. A stream
made with no owner (None, or no ``owner=``) is readable by anyone, as are streams made
before owners existed. Only an endpoint given ``owner=`` checks: give whatever serves
resumes the same callable as whatever makes the streams (the middleware does both).

Resource caps (`StreamOptions`): a request that would start a stream beyond
``max_streams`` gets ``503`` with ``Retry-After: 1`` before the app runs, and nothing
is stored (503, not 429: the limit is the process's, not the client's rate). A stream
that passes ``max_stream_bytes`` is cut: the response in flight is aborted after the
last stored chunk (never ended cleanly, so no client mistakes it for complete), and
resumes get the stored rest, then ``413``. A body piece larger than
``max_batch_bytes`` is one chunk, stored whole; headers and request bodies are the
server's to limit (uvicorn answers oversized headers itself).

Decisions worth knowing: ids the middleware makes are 128-bit random
(``secrets.token_urlsafe(16)``); the app may supply its own with an ``X-Stream-Id``
response header (taken as it is, latin-1) or the ``stream_id`` hook (any text, no
``/``). The ``X-Stream-Id`` we send is the id's UTF-8, percent-encoded as a URL path
segment (``chat-日本`` is ``chat-%E6%97%A5%E6%9C%AC``, ``50%off`` is ``50%25off``;
random ids are unchanged): header values are latin-1, and the value goes into the
resume URL as it is. The resume endpoint decodes the id from the path once.
Non-2xx responses, responses with a ``Content-Length`` and responses whose whole body
comes in one message pass through untouched. If the backend is down when a stream
starts, the response streams normally without ``X-Stream-Id`` and a warning is logged.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

import anyio

from ._context import ResumableStreamContext
from ._exceptions import (
    BackendUnavailable,
    InvalidArgument,
    InvalidStreamId,
    ProducerLost,
    StreamAlreadyExists,
    StreamFailed,
    StreamNotFound,
    StreamTooLarge,
    TooManyFollowers,
    TooManyStreams,
)
from ._http import (
    BodyEncoder,
    Message,
    Owner,
    Receive,
    Scope,
    Send,
    body_mode,
    ended_response,
    first_item,
    header,
    http_metadata,
    iterate_content,
    may_access,
    may_access_stream,
    path_segments,
    pump,
    replay_headers,
    request_owner,
    stream_headers,
)
from ._http import (
    plain_response as _plain,
)
from ._http import wait_disconnect as _disconnected
from ._keys import validate_stream_id
from ._sse import parse_last_event_id
from ._subscription import Bell
from ._types import StreamStatus

__all__ = [
    "ASGIApp",
    "Authorize",
    "Owner",
    "ResumableStreamMiddleware",
    "ResumableStreamResponse",
    "ResumeEndpoint",
    "new_stream_id",
]

logger = logging.getLogger("resumable_stream")

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
"""Any ASGI application: what the middleware wraps and what the helpers are."""
Authorize = Callable[[Scope, str], bool | Awaitable[bool]]
"""``authorize(scope, stream_id)``: may this request read (or stop) this stream?"""

DEFAULT_PING_INTERVAL = 15.0
RETRY_AFTER = [(b"retry-after", b"1")]


def new_stream_id() -> str:
    """An unguessable stream id: 128 random bits, URL-safe."""
    return secrets.token_urlsafe(16)


async def _allowed(authorize: Authorize | None, scope: Scope, stream_id: str) -> bool:
    if authorize is None:
        return True
    verdict = authorize(scope, stream_id)
    if inspect.isawaitable(verdict):
        verdict = await verdict
    return bool(verdict)


# -- the resume endpoint ------------------------------------------------------------------


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
            await _plain(send, 405, "method not allowed", [(b"allow", b"GET, HEAD, DELETE")])
            return
        purge = method == "DELETE" and wants_delete(scope)
        if purge and not self.allow_delete:
            # Before anything else: an endpoint that does not delete says so to everyone.
            await _plain(
                send, 405, "deleting streams is not enabled here (allow_delete)",
                [(b"allow", b"GET, HEAD, DELETE")],
            )  # fmt: skip
            return
        if self.context is None:
            await _plain(send, 503, "resumable streams are not configured")
            return
        try:
            stream_id = validate_stream_id(self._stream_id(scope))
        except InvalidStreamId:
            await _plain(send, 404, "no such stream")
            return
        if not await _allowed(self.authorize, scope, stream_id):
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
            await self._ended(send, stream_id, known_done=after is None and resume_at is None)
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
                await ended_response(send, failure)
                return
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": stream_headers(replay, stream_id, mode),
            }
        )
        if method_is_head(scope):
            await reader.aclose()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await pump(
            reader,
            send,
            lambda: _disconnected(receive),
            mode=mode,
            ping_interval=self.ping_interval,
            first=first,
        )

    async def _ended(self, send: Send, stream_id: str, *, known_done: bool) -> None:
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
            await ended_response(send, None)
        elif snap.status is StreamStatus.RUNNING:
            await ended_response(send, "ProducerLost")
        elif snap.error and snap.error.startswith(StreamTooLarge.PREFIX):
            await ended_response(send, "StreamTooLarge")
        else:
            await ended_response(send, "StreamFailed")


def method_is_head(scope: Scope) -> bool:
    return bool(scope.get("method") == "HEAD")


def wants_delete(scope: Scope) -> bool:
    """``?delete=1`` (or ``true``) on a ``DELETE``: delete the stream, not only stop it."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return any(v.lower() in ("1", "true") for v in query.get("delete", ()))


def _resume_at(query: dict[str, list[str]]) -> int | None:
    values = query.get("resumeAt")
    if not values:
        return None
    value = values[-1].strip()
    if not value.isdigit() or not value.isascii() or len(value) > 20:
        raise ValueError(f"resumeAt must be a number of characters >= 0, got {values[-1]!r}")
    return int(value)


# -- an explicit response -----------------------------------------------------------------


class ResumableStreamResponse:
    """An ASGI response whose body is a resumable stream.

    Args:
        content: an async or sync iterable of ``str``/``bytes``, or a zero-argument
            callable returning one (called only if the stream can be stored).
        context: where the stream lives; None streams without resumability.
        stream_id: defaults to `new_stream_id()`; read it back as ``.stream_id``.
        status_code, headers, media_type: as in Starlette's ``StreamingResponse``.
        ping_interval: seconds of silence before an SSE comment ping; None disables.
        owner: ``owner(scope) -> str | None`` (or awaitable): the stream is bound to
            the owner of the request it answers (None: readable by anyone). Give the
            resume endpoint the same callable.
    """

    def __init__(
        self,
        content: Any,
        *,
        context: ResumableStreamContext | None,
        stream_id: str | None = None,
        status_code: int = 200,
        headers: Iterable[tuple[bytes, bytes]] | dict[str, str] | None = None,
        media_type: str | None = None,
        ping_interval: float | None = DEFAULT_PING_INTERVAL,
        owner: Owner | None = None,
    ) -> None:
        self.content = content
        self.context = context
        self.stream_id = validate_stream_id(stream_id) if stream_id else new_stream_id()
        self.status_code = status_code
        self.raw_headers = _raw_headers(headers, media_type)
        self.ping_interval = ping_interval
        self.owner = owner

    def _content(self) -> Any:
        content = self.content
        if (
            callable(content)
            and not hasattr(content, "__aiter__")
            and not hasattr(content, "__iter__")
        ):
            content = content()
        return content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = header(self.raw_headers, b"content-type")
        mode = body_mode(None if content_type is None else content_type.decode("latin-1"))
        reader = None
        if self.context is not None:
            encoder = BodyEncoder(mode)

            async def chunks() -> Any:
                async for piece in iterate_content(self._content()):
                    for chunk in encoder.feed(piece):
                        yield chunk
                for chunk in encoder.flush():
                    yield chunk

            owner = await request_owner(self.owner, scope)
            try:
                reader = await self.context.create_new_resumable_stream(
                    self.stream_id,
                    chunks,
                    metadata=http_metadata(self.status_code, self.raw_headers, owner),
                )
            except TooManyStreams:
                await _plain(send, 503, "too many streams", RETRY_AFTER)
                return
            except (BackendUnavailable, StreamAlreadyExists) as exc:
                logger.warning(
                    "stream %r is not resumable (%s); streaming it directly", self.stream_id, exc
                )
        if reader is None:
            await _stream_directly(
                self._content(), self.status_code, self.raw_headers, send, receive
            )
            return
        await send(
            {
                "type": "http.response.start",
                "status": self.status_code,
                "headers": stream_headers(self.raw_headers, self.stream_id, mode),
            }
        )
        await pump(
            reader,
            send,
            lambda: _disconnected(receive),
            mode=mode,
            ping_interval=self.ping_interval,
        )


def _raw_headers(
    headers: Iterable[tuple[bytes, bytes]] | dict[str, str] | None, media_type: str | None
) -> list[tuple[bytes, bytes]]:
    if headers is None:
        raw: list[tuple[bytes, bytes]] = []
    elif isinstance(headers, dict):
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    else:
        raw = [(k.lower(), v) for k, v in headers]
    if media_type is not None and header(raw, b"content-type") is None:
        if media_type.startswith("text/") and "charset" not in media_type:
            media_type += "; charset=utf-8"
        raw.append((b"content-type", media_type.encode("latin-1")))
    return raw


async def _stream_directly(
    content: Any, status: int, headers: list[tuple[bytes, bytes]], send: Send, receive: Receive
) -> None:
    """Graceful degradation: a plain streaming response, no id, no storage."""
    await send({"type": "http.response.start", "status": status, "headers": headers})
    async with anyio.create_task_group() as tg:

        async def listen() -> None:
            await _disconnected(receive)
            tg.cancel_scope.cancel()

        tg.start_soon(listen)
        try:
            async for piece in iterate_content(content):
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass
        finally:
            tg.cancel_scope.cancel()


# -- the middleware -----------------------------------------------------------------------


def _compile(pattern: str) -> re.Pattern[str]:
    """``/api/chat/{agent_id}/{thread_id}`` -> a regex with named groups."""
    parts = re.split(r"(\{[^}]+\})", pattern)
    regex = "".join(f"(?P<{p[1:-1]}>[^/]+)" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(f"^{regex}/?$")


class ResumableStreamMiddleware:
    """Make an app's streaming endpoints resumable without touching their code.

    The app runs in a task of its own, so it outlives the client's connection. It is
    cancelled when its stream is stopped, cut at ``max_stream_bytes`` or shut down with
    the context; its ``send`` waits while ``StreamOptions.max_buffered_bytes`` of its
    body (plus 64 bytes per message) wait for the producer.

    Args:
        app: the ASGI app to wrap.
        context: the context streams live in; None disables resumability (responses
            pass through; the resume endpoint answers ``503``).
        path: the requests to handle, as a path pattern (``/api/chat/{agent}/{thread}``)
            or a predicate on the ASGI scope.
        methods: the methods to handle with a path pattern (default POST).
        resume_path: where to serve the resume endpoint; must contain ``{stream_id}``.
            None serves none.
        stream_id: ``stream_id(scope) -> str | None`` to choose the id of a stream;
            otherwise the app's ``X-Stream-Id`` response header, else a random id.
            An id that cannot be stored (a lone surrogate, a ``/``, too long) makes
            the response pass through, not resumable.
        authorize: passed to the resume endpoint.
        ping_interval: seconds of silence before an SSE comment ping; None disables.
        allow_delete: the resume endpoint serves ``DELETE ?delete=1`` (see
            `ResumeEndpoint`).
        owner: ``owner(scope) -> str | None`` (or awaitable): each stream is bound to
            the owner of the request that made it, and the resume endpoint answers
            anyone else as it answers an unknown id (see `ResumeEndpoint`).
    """

    def __init__(
        self,
        app: ASGIApp,
        context: ResumableStreamContext | None,
        *,
        path: str | Callable[[Scope], bool],
        methods: Iterable[str] = ("POST",),
        resume_path: str | None = "/api/chat/resume/{stream_id}",
        stream_id: Callable[[Scope], str | None] | None = None,
        authorize: Authorize | None = None,
        ping_interval: float | None = DEFAULT_PING_INTERVAL,
        allow_delete: bool = False,
        owner: Owner | None = None,
    ) -> None:
        self.app = app
        self.context = context
        self.methods = {m.upper() for m in methods}
        if callable(path):
            self._match: Callable[[Scope], bool] = path
        else:
            regex = _compile(path)
            self._match = lambda scope: (
                scope["method"] in self.methods and regex.match(scope["path"]) is not None
            )
        if resume_path is not None and "{stream_id}" not in resume_path:
            raise InvalidArgument("resume_path must contain '{stream_id}'")
        self._resume_regex = None if resume_path is None else _compile(resume_path)
        self.endpoint = ResumeEndpoint(
            context, authorize=authorize, ping_interval=ping_interval,
            allow_delete=allow_delete, owner=owner,
        )  # fmt: skip
        self.owner = owner
        self.stream_id = stream_id
        self.ping_interval = ping_interval
        self._apps: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._resume_regex is not None:
            found = self._resume_regex.match(scope["path"])
            if found is not None:
                scope = {
                    **scope,
                    "path_params": {**scope.get("path_params", {}), **found.groupdict()},
                }
                await self.endpoint(scope, receive, send)
                return
        if self.context is None or not self._match(scope):
            await self.app(scope, receive, send)
            return
        if self.context.at_capacity():
            # Refused before the app runs: no work is started and nothing is stored.
            await _plain(send, 503, "too many streams", RETRY_AFTER)
            return
        await _Call(self, self.context, scope, receive, send).run()


_APP_DONE: Message = {"type": "resumable_stream.app_done"}
# Bytes charged per message on top of its body, so that a flood of empty messages is
# bounded too (about what a small dict costs).
_MESSAGE_COST = 64
APP_CANCEL_GRACE = 1.0
"""Seconds a cancelled app gets to run its own cleanup (``finally``, ``except
CancelledError``) before the middleware stops waiting for it."""


def _cost(message: Message) -> int:
    return len(message.get("body", b"")) + _MESSAGE_COST


class _Outbox:
    """The app's response messages on their way to the request's task or the producer.

    One reader; `put` is the app's ``send``. It waits while more than ``limit`` bytes
    are held, so an app that outpaces storage (or a slow client) is held back in its
    own ``send`` rather than piling its output up in memory: the producer holds back
    any source the same way, one step later. A message is accepted before `put`
    waits, so one larger than ``limit`` still goes through. Once closed, messages are
    dropped and `put` never waits.
    """

    __slots__ = ("_arrived", "_closed", "_limit", "_messages", "_room", "buffered")

    def __init__(self, limit: int) -> None:
        self._messages: deque[Message] = deque()
        # A Bell for the one reader (rung per message); an Event for room, since an
        # app may send from more than one task.
        self._arrived = Bell()
        self._room = asyncio.Event()
        self._limit = limit
        self._closed = False
        self.buffered = 0  # body bytes held, plus _MESSAGE_COST per message

    def put_nowait(self, message: Message) -> None:
        if self._closed:
            return
        self._messages.append(message)
        self.buffered += _cost(message)
        self._arrived.set()

    async def put(self, message: Message) -> None:
        if self._closed:
            return
        # put_nowait inlined: this is the app's send, called for every message.
        self._messages.append(message)
        self.buffered += len(message.get("body", b"")) + _MESSAGE_COST
        self._arrived.set()
        while self.buffered > self._limit and not self._closed:
            self._room.clear()
            await self._room.wait()

    async def get(self) -> Message:
        messages = self._messages
        while not messages:
            self._arrived.clear()
            await self._arrived.wait()
        message = messages.popleft()
        self.buffered -= len(message.get("body", b"")) + _MESSAGE_COST
        if self.buffered <= self._limit and not self._room.is_set():
            self._room.set()
        return message

    def close(self) -> None:
        """Drop what is held and whatever comes later; wake a waiting `put`."""
        self._closed = True
        self._messages.clear()
        self.buffered = 0
        self._room.set()


class _Call:
    """One request through the middleware: the app runs in a task of its own.

    Who owns the app's task (and so cancels it if it must end early): this request's
    task until it decides what the response is; then, for a resumable response, the
    producer, through the body it pulls (`body`): stopping the stream, cutting it at
    ``max_stream_bytes`` or closing the context cancels the app and waits for it. A
    response passed through is relayed until it is complete or the client has gone;
    the app then runs on to its own end (background tasks), as it would unwrapped.
    """

    def __init__(
        self,
        middleware: ResumableStreamMiddleware,
        context: ResumableStreamContext,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        self.middleware = middleware
        self.context = context
        self.scope = scope
        self.receive = receive
        self.send = send
        self.outbox = _Outbox(context.options.max_buffered_bytes)
        self.task: asyncio.Task[None] | None = None
        self.released = False  # the request's task no longer owns the app
        self.body_read = asyncio.Event()  # the whole request body has been received
        self.disconnected = asyncio.Event()
        self.reveal = asyncio.Event()  # set when the response passes through untouched
        self.app_error: BaseException | None = None
        # The real `receive` has one reader at a time (the app, or our disconnect
        # listener); request messages the listener reads are kept here for the app.
        self.pull_lock = asyncio.Lock()
        self.for_app: asyncio.Queue[Message] = asyncio.Queue()

    async def pull(self) -> Message:
        """One message from the real `receive`, noting what it tells us."""
        message = await self.receive()
        if message["type"] == "http.disconnect":
            self.disconnected.set()
            self.body_read.set()
        elif not message.get("more_body", False):
            self.body_read.set()
        return message

    async def app_receive(self) -> Message:
        if self.for_app.empty() and not self.body_read.is_set():
            async with self.pull_lock:
                if self.for_app.empty() and not self.body_read.is_set():
                    message = await self.pull()
                    if message["type"] == "http.disconnect":
                        # Before the request is complete there is nothing to resume:
                        # the disconnect is real for the app too.
                        self.reveal.set()
                    return message
        if not self.for_app.empty():
            return self.for_app.get_nowait()
        # The request is fully read: the app only ever waits for a disconnect here.
        # It sees one only if its response passes through untouched; a resumable
        # response's app runs on, unaware, to the end of its body.
        await self.disconnected.wait()
        await self.reveal.wait()
        return {"type": "http.disconnect"}

    async def run_app(self) -> None:
        try:
            await self.middleware.app(self.scope, self.app_receive, self.outbox.put)
        except BaseException as exc:
            self.app_error = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            self.outbox.put_nowait(_APP_DONE)

    async def stop_app(self) -> None:
        """Cancel the app and give its own cleanup up to `APP_CANCEL_GRACE` to run.

        Shielded: it runs while the producer (or this request) is being cancelled.
        """
        self.outbox.close()
        task = self.task
        if task is None or task.done():
            return
        task.cancel()
        with anyio.move_on_after(APP_CANCEL_GRACE, shield=True):
            await asyncio.wait([task])
        if not task.done():
            logger.warning(
                "%s %s: the app ignored its cancellation for %.1f s; it is left to finish",
                self.scope.get("method"), self.scope.get("path"), APP_CANCEL_GRACE,
            )

    async def listen_disconnect(self) -> None:
        """Return once the client has gone.

        It listens only once the request body has been read: granian (2.8) answers a
        first ``receive()`` made after the response started with a spurious
        ``http.disconnect`` under load. An app that never reads its request body
        therefore leaves the disconnect unnoticed; the pump then stops at the first
        failed send or at the end of the stream, which costs only CPU.
        """
        await self.body_read.wait()
        while not self.disconnected.is_set():
            async with self.pull_lock:
                if self.disconnected.is_set():
                    break
                message = await self.pull()
            if message["type"] == "http.request":
                self.for_app.put_nowait(message)

    async def next_message(self) -> Message:
        message = await self.outbox.get()
        if message is _APP_DONE and self.app_error is not None:
            raise self.app_error
        return message

    async def run(self) -> None:
        task = self.task = asyncio.create_task(self.run_app())
        self.middleware._apps.add(task)
        task.add_done_callback(self.middleware._apps.discard)
        try:
            await self.respond()
        finally:
            if not self.released:
                # Refused, failed or cancelled before anyone else took the app on.
                await self.stop_app()

    async def respond(self) -> None:
        start = await self.next_message()
        if start is _APP_DONE or start.get("type") != "http.response.start":
            await self.pass_through(start, None)
            return
        headers = [(bytes(k), bytes(v)) for k, v in start.get("headers", [])]
        content_type = header(headers, b"content-type")
        mode = body_mode(None if content_type is None else content_type.decode("latin-1"))
        first: Message | None = None
        if not 200 <= start["status"] < 300 or header(headers, b"content-length") is not None:
            await self.pass_through(start, None)
            return
        if mode != "sse":
            # Only a body that comes in more than one message is a stream. An event
            # stream is one by its type: its headers go out before its first event.
            first = await self.next_message()
            if first.get("type") != "http.response.body" or not first.get("more_body", False):
                await self.pass_through(start, first)
                return
        try:
            stream_id = self.choose_id(headers)
        except InvalidStreamId as exc:
            # An app-supplied id we cannot store (too long, say): the response is still
            # the app's, whole, just not resumable. Never a 500 for it.
            logger.warning("the app's stream id is unusable (%s); passing it through", exc)
            unnamed = [(k, v) for k, v in headers if k.lower() != b"x-stream-id"]
            await self.pass_through({**start, "headers": unnamed}, first)
            return
        encoder = BodyEncoder(mode)

        async def body() -> Any:
            """The producer's source. However it ends early (stopped, cut at its size
            limit, the context closing), the app is cancelled and awaited here."""
            finished = False  # the app's body is complete: it may run on (background work)
            try:
                if first is not None:
                    for chunk in encoder.feed(first.get("body", b"")):
                        yield chunk
                while True:
                    message = await self.next_message()
                    if message is _APP_DONE:
                        break
                    if message["type"] != "http.response.body":
                        continue
                    for chunk in encoder.feed(message.get("body", b"")):
                        yield chunk
                    if not message.get("more_body", False):
                        break
                finished = True
                for chunk in encoder.flush():
                    yield chunk
            finally:
                if finished:
                    self.outbox.close()  # anything the app sends after its end is dropped
                else:
                    await self.stop_app()

        reader = None
        try:
            owner = await request_owner(self.middleware.owner, self.scope)
            reader = await self.context.create_new_resumable_stream(
                stream_id, body, metadata=http_metadata(start["status"], headers, owner)
            )
        except TooManyStreams:
            # Another request took the last place while the app was starting.
            await _plain(self.send, 503, "too many streams", RETRY_AFTER)
            return
        except (BackendUnavailable, StreamAlreadyExists) as exc:
            logger.warning("stream %r is not resumable (%s); passing it through", stream_id, exc)
        if reader is None:
            # Not stored, so no id: an app-supplied one names some other stream (running
            # or finished) that a client would resume instead of this one.
            unnamed = [(k, v) for k, v in headers if k.lower() != b"x-stream-id"]
            await self.pass_through({**start, "headers": unnamed}, first)
            return
        self.released = True  # the producer owns the app now, through `body`
        await self.send(
            {
                "type": "http.response.start",
                "status": start["status"],
                "headers": stream_headers(headers, stream_id, mode),
            }
        )
        await pump(
            reader,
            self.send,
            self.listen_disconnect,
            mode=mode,
            ping_interval=self.middleware.ping_interval,
        )

    def choose_id(self, headers: list[tuple[bytes, bytes]]) -> str:
        chosen = (
            None if self.middleware.stream_id is None else self.middleware.stream_id(self.scope)
        )
        if chosen is None:
            supplied = header(headers, b"x-stream-id")
            chosen = None if supplied is None else supplied.decode("latin-1")
        if not chosen:
            return new_stream_id()
        if "/" in chosen:
            # The resume path could never match it (servers decode %2F into the path).
            raise InvalidStreamId(f"a stream id served over HTTP cannot hold '/': {chosen!r}")
        return validate_stream_id(chosen)

    async def pass_through(self, start: Message, first: Message | None) -> None:
        """The app's response as it is, and the app sees the client's disconnect.

        Once the response is complete or the client has gone, the app runs on to its
        own end (it sees the disconnect); what it sends then is dropped.
        """
        self.reveal.set()
        listener = asyncio.create_task(self.listen_disconnect())
        try:
            message = start
            pending = [first] if first is not None else []
            while message is not _APP_DONE:
                await self.send(message)
                if message.get("type") == "http.response.body" and not message.get(
                    "more_body", False
                ):
                    break
                message = pending.pop() if pending else await self.next_message()
        except OSError:
            pass  # the client went away while we were sending
        finally:
            listener.cancel()
        self.released = True
        self.outbox.close()
