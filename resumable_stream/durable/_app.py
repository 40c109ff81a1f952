"""The ASGI application: HTTP in, `Service` decisions out, live reads held open.

Design decisions:

* One responder (`_send_reply`) for every whole answer; live answers (long-poll, SSE)
  race their pump against the client's disconnect, so a reader that goes away frees
  its task at once.
* A live read registers its watch before it reads, then waits on it: a commit after
  the read wakes it, and a commit before is in the read. The wait is also bounded by
  ``poll_interval`` (5 s), so a lost notification costs a few seconds, never a hang;
  a subscription that breaks and comes back wakes every reader at once.
* Long-poll waits ``long_poll_timeout`` seconds, then answers 204. SSE connections end
  after ``sse_duration`` seconds (the protocol asks for about a minute, for CDN
  collapsing); the client reconnects from the last ``streamNextOffset``.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import json
import random
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote

from .._exceptions import BackendUnavailable, InvalidArgument
from ..backends import Backend
from ._model import encode_offset, is_text
from ._produced import ProducedStorage
from ._service import (
    AppendRequest,
    BadRequest,
    CreateRequest,
    ProducerHeaders,
    ReadResult,
    Reply,
    Service,
    header_text,
    is_true,
    parse_expires_at,
    parse_ttl,
)
from ._storage import DurableStorage

__all__ = ["DurableStreamsApp"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Cursors count 20-second intervals from 2024-10-09T00:00:00Z (the protocol's default).
CURSOR_EPOCH = 1728432000
CURSOR_INTERVAL = 20
_LINE_BREAK = re.compile(r"\r\n|\r|\n")

_EXPOSED = ", ".join(
    [
        "content-type",
        "etag",
        "location",
        "stream-next-offset",
        "stream-cursor",
        "stream-up-to-date",
        "stream-closed",
        "stream-ttl",
        "stream-expires-at",
        "stream-sse-data-encoding",
        "stream-error",
        "producer-epoch",
        "producer-seq",
        "producer-expected-seq",
        "producer-received-seq",
    ]
)
_ALLOWED_HEADERS = ", ".join(
    [
        "content-type",
        "if-none-match",
        "stream-ttl",
        "stream-expires-at",
        "stream-seq",
        "stream-closed",
        "stream-forked-from",
        "stream-fork-offset",
        "stream-fork-sub-offset",
        "producer-id",
        "producer-epoch",
        "producer-seq",
        "authorization",
    ]
)
_COMMON = [
    (b"x-content-type-options", b"nosniff"),
    (b"cross-origin-resource-policy", b"cross-origin"),
    (b"access-control-allow-origin", b"*"),
    (b"access-control-expose-headers", _EXPOSED.encode()),
]
PUBLIC_CACHE = "public, max-age=60, stale-while-revalidate=300"


def make_cursor(client_cursor: str | None) -> str:
    """The interval number now; past the client's, so cursors never repeat."""
    interval = int((time.time() - CURSOR_EPOCH) // CURSOR_INTERVAL)
    if client_cursor is not None and client_cursor.isdigit() and int(client_cursor) >= interval:
        jitter = random.randint(1, 3600)
        interval = int(client_cursor) + max(1, -(-jitter // CURSOR_INTERVAL))
    return str(interval)


class _Request:
    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            self.headers[name] = f"{self.headers[name]}, {value}" if name in self.headers else value
        self.query: dict[str, list[str]] = {}
        for key, value in parse_qsl(
            scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True
        ):
            self.query.setdefault(key, []).append(value)

    def url(self) -> str:
        """This request's absolute URL, without its query (for ``Location``)."""
        scheme = self.scope.get("scheme", "http")
        host = self.headers.get("host")
        if host is None:
            server = self.scope.get("server") or ("localhost", None)
            host = server[0] if server[1] is None else f"{server[0]}:{server[1]}"
        return f"{scheme}://{host}{quote(self.scope.get('root_path', '') + self.path)}"

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        if not values:
            return None
        if len(values) > 1:
            raise BadRequest(f"{name} given more than once")
        return values[0]


class DurableStreamsApp:
    """The Durable Streams protocol as an ASGI app, over any `DurableStorage`.

    The stream's name is the request path (so ``Stream-Forked-From`` takes a path).

    Args:
        storage: where streams live (`MemoryStorage`, `RedisStorage`, ...).
        path_prefix: only paths under it are streams; others answer 404.
        long_poll_timeout: seconds a long-poll waits before its 204.
        sse_duration: seconds an SSE connection lasts before the server ends it.
        sse_keepalive: seconds of silence after which an SSE connection gets a comment
            line, so that proxies do not close it as idle.
        max_append_bytes: the largest body a PUT or POST may carry (more: 413).
        max_read_bytes: about the most one catch-up response carries.
        poll_interval: seconds a live reader waits at most between re-reads.
        close_storage: close ``storage`` when the app shuts down (lifespan).
        resumable_backend: the backend of a `ResumableStreamContext` (``ctx.backend``):
            its streams, made by ``ctx.resumable_stream(...)`` producers, are readable
            (not writable) at ``resumable_prefix + stream_id``.
        resumable_prefix: where those streams are; default ``path_prefix +
            "resumable/"``.
        on_shutdown: coroutines to await when the app shuts down (lifespan), after
            closing the storage: for example the context's ``aclose``.
        max_retained: positions (bytes; JSON: messages) kept per stream; older data is
            dropped, and reading an offset before what is kept (``-1`` included) answers
            410. None (the default) keeps everything.
    """

    def __init__(
        self,
        storage: DurableStorage,
        *,
        path_prefix: str = "/",
        long_poll_timeout: float = 20.0,
        sse_duration: float = 60.0,
        sse_keepalive: float = 15.0,
        max_append_bytes: int = 16 << 20,
        max_read_bytes: int = 1 << 20,
        poll_interval: float = 5.0,
        close_storage: bool = False,
        resumable_backend: Backend | None = None,
        resumable_prefix: str | None = None,
        on_shutdown: Sequence[Callable[[], Awaitable[object]]] = (),
        max_retained: int | None = None,
    ) -> None:
        if max_retained is not None and max_retained < 1:
            raise InvalidArgument("max_retained must be at least 1")
        self.storage = storage
        self.service = Service(storage, max_read_bytes=max_read_bytes, max_retained=max_retained)
        self.resumable_prefix = (
            resumable_prefix if resumable_prefix is not None else path_prefix + "resumable/"
        )
        self.on_shutdown = list(on_shutdown)
        self.resumable: Service | None = None
        if resumable_backend is not None:
            produced = ProducedStorage(resumable_backend, prefix=self.resumable_prefix)
            self.resumable = Service(produced, max_read_bytes=max_read_bytes)
        self.path_prefix = path_prefix
        self.long_poll_timeout = long_poll_timeout
        self.sse_duration = sse_duration
        self.sse_keepalive = sse_keepalive
        self.max_append_bytes = max_append_bytes
        self.poll_interval = poll_interval
        self.close_storage = close_storage

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request = _Request(scope)
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self._handle(request, receive, tracked)
        except BackendUnavailable as exc:
            if started:
                # Mid-stream (SSE): end it without a closing control event; the client
                # reconnects from its last offset.
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await _send_reply(send, Reply(503, {"retry-after": "1"}, str(exc).encode()))
        except BadRequest as exc:
            await _send_reply(
                send, Reply(400, {"content-type": "text/plain; charset=utf-8"}, str(exc).encode())
            )

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.close_storage:
                    await self.storage.aclose()
                for hook in self.on_shutdown:
                    await hook()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _handle(self, request: _Request, receive: Receive, send: Send) -> None:
        path = request.path
        if not path.startswith(self.path_prefix) or len(path) <= len(self.path_prefix):
            await _send_reply(send, Reply(404, {}, b"not a stream path"))
            return
        method = request.method
        if method == "OPTIONS":
            await _send_reply(send, _preflight())
            return
        if self.resumable is not None and path.startswith(self.resumable_prefix):
            # Streams of ctx.resumable_stream producers: their producer writes them.
            if method in ("GET", "HEAD"):
                await self._read(self.resumable, request, receive, send)
            else:
                await _send_reply(send, Reply(405, {"allow": "GET, HEAD, OPTIONS"}))
            return
        if method in ("GET", "HEAD"):
            await self._read(self.service, request, receive, send)
        elif method == "PUT":
            body = await _read_body(receive, self.max_append_bytes)
            if not isinstance(body, bytes):
                await self._no_body(body, send)
                return
            reply = await self.service.create(path, _create_request(request, body))
            if "location" in reply.headers:
                reply.headers["location"] = request.url()
            await _send_reply(send, reply)
        elif method == "POST":
            body = await _read_body(receive, self.max_append_bytes)
            if not isinstance(body, bytes):
                await self._no_body(body, send)
                return
            await _send_reply(send, await self.service.append(path, _append_request(request, body)))
        elif method == "DELETE":
            await _send_reply(send, await self.service.delete(path))
        else:
            await _send_reply(send, Reply(405, {"allow": "GET, HEAD, PUT, POST, DELETE, OPTIONS"}))

    @staticmethod
    async def _no_body(outcome: _BodyOutcome, send: Send) -> None:
        """A body too large gets its 413; a client gone mid-body gets nothing: a
        truncated body is never appended."""
        if outcome is _BodyOutcome.TOO_LARGE:
            await _send_reply(send, Reply(413, {}, b"body too large"))

    async def _read(
        self, service: Service, request: _Request, receive: Receive, send: Send
    ) -> None:
        if request.method == "HEAD":
            await _send_reply(send, await service.head(request.path), head=True)
            return
        live = request.param("live")
        offset = request.param("offset")
        if offset == "":
            raise BadRequest("empty offset")
        if live not in (None, "long-poll", "sse"):
            raise BadRequest("live must be long-poll or sse")
        if live is not None and offset is None:
            raise BadRequest(f"live={live} needs an offset")
        located = await service.locate(request.path, offset or "-1")
        if isinstance(located, Reply):
            await _send_reply(send, located)
            return
        _, start = located
        if live is None:
            result = await service.read(request.path, start)
            if isinstance(result, Reply):
                await _send_reply(send, result)
                return
            reply = _read_reply(result, now=offset == "now")
            if (
                reply.headers.get("etag") is not None
                and request.headers.get("if-none-match") == reply.headers["etag"]
            ):
                reply = Reply(304, {"etag": reply.headers["etag"]})
            await _send_reply(send, reply)
        elif live == "long-poll":
            cursor = make_cursor(request.param("cursor"))
            await _race_disconnect(
                receive, self._long_poll(service, request.path, start, cursor, send)
            )
        else:
            await _race_disconnect(
                receive, self._sse(service, request.path, start, request.param("cursor"), send)
            )

    async def _long_poll(
        self, service: Service, path: str, start: int, cursor: str, send: Send
    ) -> None:
        deadline = time.monotonic() + self.long_poll_timeout
        async with service.storage.watch(path) as watch:
            while True:
                result = await service.read(path, start)
                if isinstance(result, Reply):
                    await _send_reply(send, result)
                    return
                if result.items:
                    reply = _read_reply(result, now=False)
                    if not result.closed:
                        reply.headers["stream-cursor"] = cursor
                    await _send_reply(send, reply)
                    return
                remaining = deadline - time.monotonic()
                if result.meta.closed or remaining <= 0:
                    headers = {
                        "stream-next-offset": encode_offset(result.meta.tail),
                        "stream-up-to-date": "true",
                        "cache-control": "no-store",
                    }
                    if result.meta.closed:
                        headers["stream-closed"] = "true"
                        if result.meta.error is not None:
                            headers["stream-error"] = header_text(result.meta.error)
                    else:
                        headers["stream-cursor"] = cursor
                    await _send_reply(send, Reply(204, headers))
                    return
                await watch.wait(min(remaining, self.poll_interval))

    async def _sse(
        self, service: Service, path: str, start: int, client_cursor: str | None, send: Send
    ) -> None:
        result = await service.read(path, start)
        if isinstance(result, Reply):
            await _send_reply(send, result)
            return
        text = is_text(result.meta.content_type)
        json_mode = result.meta.json_mode
        headers = [
            (b"content-type", b"text/event-stream"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            *_COMMON,
        ]
        if not text:
            headers.append((b"stream-sse-data-encoding", b"base64"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        deadline = time.monotonic() + self.sse_duration
        position = start
        announced = False

        last_sent = time.monotonic()

        async def emit(chunk: bytes) -> None:
            nonlocal last_sent
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            last_sent = time.monotonic()

        async with service.storage.watch(path) as watch:
            while True:
                if result.items:
                    # One write for the pair: a reader never sees data without its control.
                    await emit(
                        _data_event(result, text=text, json_mode=json_mode)
                        + _control_event(result, make_cursor(client_cursor))
                    )
                    announced = result.up_to_date
                    position = result.end
                    if result.closed:
                        break
                elif result.closed or not announced:
                    await emit(_control_event(result, make_cursor(client_cursor)))
                    announced = True
                    if result.closed:
                        break
                else:
                    now = time.monotonic()
                    remaining = deadline - now
                    if remaining <= 0:
                        break
                    if now - last_sent >= self.sse_keepalive:
                        # A comment: proxies that end idle connections see bytes.
                        await emit(b": keep-alive\n\n")
                    idle = time.monotonic() - last_sent
                    await watch.wait(
                        min(remaining, self.poll_interval, max(0.0, self.sse_keepalive - idle))
                    )
                next_result = await service.read(path, position)
                if isinstance(next_result, Reply):
                    break
                result = next_result
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _data_event(result: ReadResult, *, text: bool, json_mode: bool) -> bytes:
    body = result.body()
    if text:
        payload = body.decode("utf-8", errors="replace")
        lines = [payload] if json_mode else _LINE_BREAK.split(payload)
    else:
        lines = [base64.b64encode(body).decode("ascii")]
    return ("event: data\n" + "".join(map(_data_line, lines)) + "\n").encode()


def _data_line(line: str) -> str:
    """``data:line``; with a space before a line that starts with one, since SSE
    parsers drop one space after the colon."""
    return f"data: {line}\n" if line.startswith(" ") else f"data:{line}\n"


def _control_event(result: ReadResult, cursor: str) -> bytes:
    control: dict[str, Any] = {"streamNextOffset": encode_offset(result.end)}
    if result.closed:
        control["streamClosed"] = True
        control["upToDate"] = True
        if result.meta.error is not None:
            control["streamError"] = result.meta.error
    else:
        control["streamCursor"] = cursor
        if result.up_to_date:
            control["upToDate"] = True
    return f"event: control\ndata:{json.dumps(control, separators=(',', ':'))}\n\n".encode()


def _read_reply(result: ReadResult, *, now: bool) -> Reply:
    meta = result.meta
    headers = {
        "content-type": meta.content_type,
        "stream-next-offset": encode_offset(result.end),
    }
    if result.up_to_date:
        headers["stream-up-to-date"] = "true"
    if result.closed:
        headers["stream-closed"] = "true"
        if meta.error is not None:
            headers["stream-error"] = header_text(meta.error)
    if now:
        headers["cache-control"] = "no-store"
    else:
        closed = ":c" if result.closed else ""
        headers["etag"] = (
            f'"{meta.id}:{encode_offset(result.start)}:{encode_offset(result.end)}{closed}"'
        )
        headers["cache-control"] = PUBLIC_CACHE
    return Reply(200, headers, result.body())


def _preflight() -> Reply:
    return Reply(
        204,
        {
            "access-control-allow-methods": "GET, HEAD, PUT, POST, DELETE, OPTIONS",
            "access-control-allow-headers": _ALLOWED_HEADERS,
            "access-control-max-age": "86400",
        },
    )


def _create_request(request: _Request, body: bytes) -> CreateRequest:
    h = request.headers
    expires_at = h.get("stream-expires-at")
    sub = h.get("stream-fork-sub-offset")
    if sub is not None and (not sub.isdigit() or not sub.isascii()):
        raise BadRequest("Stream-Fork-Sub-Offset must be a non-negative integer")
    if sub is not None and h.get("stream-forked-from") is None:
        raise BadRequest("Stream-Fork-Sub-Offset needs Stream-Forked-From")
    return CreateRequest(
        content_type=h.get("content-type") or None,
        body=body,
        close=is_true(h.get("stream-closed")),
        ttl=parse_ttl(h.get("stream-ttl")),
        expires_at=expires_at,
        expires_at_ms=parse_expires_at(expires_at),
        forked_from=h.get("stream-forked-from"),
        fork_offset=h.get("stream-fork-offset"),
        fork_sub_offset=int(sub) if sub is not None else 0,
    )


def _append_request(request: _Request, body: bytes) -> AppendRequest:
    h = request.headers
    return AppendRequest(
        content_type=h.get("content-type") or None,
        body=body,
        close=is_true(h.get("stream-closed")),
        stream_seq=h.get("stream-seq"),
        producer=ProducerHeaders.parse(
            h.get("producer-id"), h.get("producer-epoch"), h.get("producer-seq")
        ),
    )


class _BodyOutcome(enum.Enum):
    """Why a request body was not read whole."""

    TOO_LARGE = "too large"
    DISCONNECTED = "disconnected"


async def _read_body(receive: Receive, limit: int) -> bytes | _BodyOutcome:
    """The whole request body, or why not (past ``limit`` bytes; the client left)."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return _BodyOutcome.DISCONNECTED
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return _BodyOutcome.TOO_LARGE
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def _send_reply(send: Send, reply: Reply, *, head: bool = False) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()]
    headers.extend(_COMMON)
    if not head:
        headers.append((b"content-length", str(len(reply.body)).encode()))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else reply.body})


async def _race_disconnect(receive: Receive, pump: Awaitable[None]) -> None:
    """Run ``pump`` until it ends or the client disconnects, whichever comes first."""

    async def listen() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return

    work = asyncio.ensure_future(pump)
    listener = asyncio.ensure_future(listen())
    try:
        await asyncio.wait({work, listener}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work, listener):
            task.cancel()
        await asyncio.gather(work, listener, return_exceptions=True)
    if work.done() and not work.cancelled() and work.exception() is not None:
        raise work.exception()  # type: ignore[misc]
