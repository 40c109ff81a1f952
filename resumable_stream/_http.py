"""HTTP plumbing shared by the ASGI middleware, responses and the resume endpoint.

How an HTTP response is stored as a stream:

* The stream's metadata holds ``{"http": {"status", "headers", "body"}}``: the
  original status line and the headers worth replaying (not ``content-length``,
  hop-by-hop headers, ``set-cookie``, ``date`` or ``location``), and the
  body mode.
* With an ``owner=`` callable, the metadata also holds ``{"owner": <str>}``, the
  owner the stream was bound to when it was made (`OWNER_KEY`, reserved). A stream
  without it (made with no owner, or before owners existed) is readable by anyone.
  Whoever else asks for an owned stream gets the unknown-id answer (`may_access`).
* Body mode ``"sse"`` (``text/event-stream``): one chunk per SSE event, split at
  blank lines whatever the app's chunk boundaries; on the way out every event gets
  ``id: <chunk index>``, so ``Last-Event-ID`` is an index to resume after.
* Body mode ``"text"`` (UTF-8 text types): ``str`` chunks, decoded incrementally, so
  ``?resumeAt=<characters>`` counts characters (Python code points). If the body turns
  out not to be UTF-8, the rest is stored as bytes and counted in bytes.
* Body mode ``"bytes"``: the app's body pieces as they are; ``resumeAt`` counts bytes.

How a resume says that nothing is left (`ended_response`): ``410`` with
``X-Stream-Status: done`` when the stream completed, ``410`` with ``X-Stream-Status:
failed`` and ``X-Stream-Error: <kind>`` (``StreamFailed`` or ``ProducerLost``) when it
failed, ``413`` with ``X-Stream-Status: failed`` and ``X-Stream-Error: StreamTooLarge``
when it was cut at its size limit. Both headers are exposed to browsers (CORS).

How ``X-Stream-Id`` carries an id (`stream_id_header`): header values are latin-1
bytes and an id is any Unicode text, so the header holds the id's UTF-8 bytes
percent-encoded as one URL path segment: letters, digits, ``-._~`` and
``!$&'()*+,;=:@`` as they are, every other byte (``%`` itself, ``/``, ``?``, ``#``,
spaces, non-ASCII) as ``%XX``. The ids the middleware makes are URL-safe, so their
header is the id itself. The value can be put in the resume URL as it is; a client
that wants the id itself percent-decodes it (`parse_stream_id_header`).
"""

from __future__ import annotations

import asyncio
import codecs
import enum
import hmac
import inspect
import logging
import types
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
)
from typing import Any
from urllib.parse import quote, unquote, unquote_to_bytes

import anyio

from ._context import ResumableStreamContext, _unpack_metadata
from ._producer import PushedProducer, PushedSource
from ._reader import ResumableStream
from ._sse import PING, EventSplitter, is_event_stream, is_text, with_id
from ._subscription import Bell
from ._types import Chunk, IndexedChunk

__all__ = [
    "OWNER_KEY",
    "BodyEncoder",
    "Line",
    "LineState",
    "Message",
    "Owner",
    "Receive",
    "Scope",
    "Send",
    "ended_response",
    "http_metadata",
    "may_access",
    "may_access_stream",
    "parse_stream_id_header",
    "path_segments",
    "pump",
    "replay_headers",
    "request_owner",
    "stream_headers",
    "stream_id_header",
]

logger = logging.getLogger("resumable_stream")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Owner = Callable[[Scope], str | Awaitable[str | None] | None]
"""``owner(scope) -> str | None`` (or awaitable): who is asking, say the session's user id."""

OWNER_KEY = "owner"
"""The metadata key that holds a stream's owner (reserved: the HTTP layer sets it)."""

STREAM_ID_HEADER = b"x-stream-id"
STREAM_STATUS_HEADER = b"x-stream-status"  # "done" or "failed" on a 410/413 of a resume
STREAM_ERROR_HEADER = b"x-stream-error"  # the failure's kind: StreamFailed, ProducerLost...

# Headers that describe one connection or one exact body, or must not be replayed to
# another client.
_NOT_REPLAYED = {
    b"content-length",
    b"transfer-encoding",
    b"connection",
    b"keep-alive",
    b"date",
    b"server",
    b"set-cookie",
    b"x-stream-id",
    b"x-stream-status",
    b"x-stream-error",
    b"trailer",
    b"upgrade",
    b"location",  # a resumable response's is its resume URL, set on every answer
}


def header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def body_mode(content_type: str | None) -> str:
    if is_event_stream(content_type):
        return "sse"
    if is_text(content_type):
        return "text"
    return "bytes"


def http_metadata(
    status: int, headers: Iterable[tuple[bytes, bytes]], owner: str | None = None
) -> dict[str, Any]:
    """The metadata that lets a resume reproduce the original's status and headers,
    and names the stream's owner if it has one."""
    kept = [
        [k.decode("latin-1").lower(), v.decode("latin-1")]
        for k, v in headers
        if k.lower() not in _NOT_REPLAYED
    ]
    content_type = header(headers, b"content-type")
    mode = body_mode(None if content_type is None else content_type.decode("latin-1"))
    metadata: dict[str, Any] = {"http": {"status": status, "headers": kept, "body": mode}}
    if owner is not None:
        metadata[OWNER_KEY] = owner
    return metadata


async def request_owner(owner: Owner | None, scope: Scope) -> str | None:
    """Who the request comes from, by the app's ``owner`` callable (None: nobody).

    An empty string counts as None, so an app that answers "" for anonymous visitors
    does not bind their streams to one shared "" owner.

    Raises:
        TypeError: the callable gave something other than a str or None.
    """
    if owner is None:
        return None
    value = owner(scope)
    if inspect.isawaitable(value):
        value = await value
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise TypeError(f"owner() must return a str or None, not {type(value).__name__}")
    return value


def may_access(metadata: Mapping[str, Any] | None, requester: str | None) -> bool:
    """May ``requester`` resume, stop or delete a stream with this metadata?

    Yes if the stream has no owner (none stored, or None); else only its owner, compared
    in constant time so the comparison tells nothing about the stored value. An owner
    value that is not a str (metadata a user wrote by hand) matches nobody.
    """
    stored = None if metadata is None else metadata.get(OWNER_KEY)
    if stored is None:
        return True
    if requester is None or not isinstance(stored, str):
        return False
    # Bytes: compare_digest takes only ASCII str; surrogatepass so no input can raise.
    return hmac.compare_digest(
        stored.encode("utf-8", "surrogatepass"), requester.encode("utf-8", "surrogatepass")
    )


async def may_access_stream(
    context: ResumableStreamContext, stream_id: str, requester: str | None
) -> bool:
    """`may_access` for a stream by id: False also if there is no such stream, so the
    caller answers "unknown" for both and an owned stream is never confirmed.

    Raises:
        BackendUnavailable: storage could not be reached.
    """
    snap = await context.backend.snapshot(stream_id, 0, 0)
    if snap is None:
        return False
    return may_access(_unpack_metadata(snap.metadata), requester)


# RFC 3986 pchar without "%": what a path segment may hold unescaped.
_SEGMENT_SAFE = "!$&'()*+,;=:@~"


def stream_id_header(stream_id: str) -> bytes:
    """The ``X-Stream-Id`` value for ``stream_id``: its UTF-8 percent-encoded as a URL
    path segment (see the module docstring), so any id fits a latin-1 header."""
    return quote(stream_id, safe=_SEGMENT_SAFE).encode("ascii")


def parse_stream_id_header(value: bytes | str) -> str:
    """The id an ``X-Stream-Id`` value names (the inverse of `stream_id_header`).

    Raises:
        ValueError: the value does not decode to UTF-8 text.
    """
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return unquote(text, errors="strict")


def path_segments(scope: MutableMapping[str, Any]) -> list[str]:
    """The request path's segments (a trailing ``/`` ignored), each decoded once.

    ``path`` is decoded by the server already: an encoded ``/`` is a separator there,
    and decoding it again would turn the id ``a%2Fb`` into ``a/b``. So ``raw_path``,
    when the server gives it, is split first and each segment decoded here, strictly.

    Raises:
        ValueError: a segment is not percent-encoded UTF-8.
    """
    raw = scope.get("raw_path")
    if raw:
        parts = bytes(raw).split(b"?", 1)[0].rstrip(b"/").split(b"/")
        return [unquote_to_bytes(part).decode("utf-8") for part in parts]
    return str(scope["path"]).rstrip("/").split("/")


def stream_headers(
    headers: Iterable[tuple[bytes, bytes]],
    stream_id: str,
    mode: str,
    *,
    location: bytes | None = None,
) -> list[tuple[bytes, bytes]]:
    """Response headers for a resumable response: the id, exposed to browsers, the
    resume URL as ``Location`` if there is one (it replaces the app's), and for SSE the
    headers that keep proxies from buffering or caching the stream."""
    dropped = {b"content-length", STREAM_ID_HEADER}
    if location is not None:
        dropped.add(b"location")
    out = [(k, v) for k, v in headers if k.lower() not in dropped]
    out.append((STREAM_ID_HEADER, stream_id_header(stream_id)))
    if location is not None:
        out.append((b"location", location))
    expose = header(out, b"access-control-expose-headers")
    if expose is None:
        out.append((b"access-control-expose-headers", b"X-Stream-Id"))
    elif b"x-stream-id" not in expose.lower() and expose.strip() != b"*":
        out = [(k, v) for k, v in out if k.lower() != b"access-control-expose-headers"]
        out.append((b"access-control-expose-headers", expose + b", X-Stream-Id"))
    if mode == "sse":
        if header(out, b"cache-control") is None:
            out.append((b"cache-control", b"no-cache"))
        if header(out, b"x-accel-buffering") is None:
            out.append((b"x-accel-buffering", b"no"))
    return out


def replay_headers(metadata: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], str]:
    """Status, headers and body mode for a resumed response."""
    http = metadata.get("http")
    if not isinstance(http, dict):
        return 200, [(b"content-type", b"text/plain; charset=utf-8")], "text"
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in http["headers"]]
    return int(http["status"]), headers, str(http["body"])


class BodyEncoder:
    """Turns an app's body pieces into stream chunks for one body mode."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._splitter = EventSplitter() if mode == "sse" else None
        self._decoder = codecs.getincrementaldecoder("utf-8")() if mode == "text" else None
        self._pending = b""  # text bytes not decoded yet (for the fallback to bytes)

    def whole_event(self, data: bytes) -> bool:
        """True if ``data`` is one whole SSE event on its own (LF line ends, nothing
        held from before): then it is its chunk as it is, with no scan. The common
        case, one event per write; what `EventSplitter.feed` would make of it too."""
        splitter = self._splitter
        return (
            splitter is not None
            and not splitter._buf
            and data.endswith(b"\n\n")
            and data.find(b"\n\n") == len(data) - 2
            and data[0] != 0x0A
            and b"\r" not in data
        )

    def feed(self, data: bytes) -> list[Chunk]:
        if not data:
            return []
        if self._splitter is not None:
            return list(self._splitter.feed(data))
        if self._decoder is not None:
            try:
                text = self._decoder.decode(data)
            except UnicodeDecodeError:
                logger.warning("a text response body is not UTF-8; resuming it by bytes")
                self._decoder = None
                pending, self._pending = self._pending + data, b""
                return [pending]
            self._pending = self._decoder.getstate()[0]
            return [text] if text else []
        return [data]

    def flush(self) -> list[Chunk]:
        if self._splitter is not None:
            tail = self._splitter.flush()
            return [tail] if tail else []
        if self._decoder is not None:
            try:
                text = self._decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                return [self._pending] if self._pending else []
            return [text] if text else []
        return []


def encode(item: IndexedChunk, mode: str) -> bytes:
    index, chunk = item
    data = chunk.encode("utf-8") if isinstance(chunk, str) else chunk
    if mode == "sse":
        return with_id(data, index)
    return data


_JOIN = 256  # chunks at most per body message


async def pump(
    reader: ResumableStream,
    send: Send,
    listen_disconnect: Callable[[], Awaitable[None]] | None,
    *,
    mode: str,
    ping_interval: float | None,
    first: IndexedChunk | None = None,
    body: AsyncGenerator[bytes, None] | None = None,
    started: bool = False,
) -> None:
    """Send a stream's chunks as the response body until it ends or the client goes.

    The body writer, the disconnect listener and the SSE pinger run in one task group;
    pings and chunks share a lock so a ping never lands inside an event. ``body``, if
    given, is the body's pieces made from ``reader`` by the caller (which may add pieces
    of its own, as the AI SDK layer does at the end); ``reader`` is still closed here.
    ``started``: a body message went out already (the headers are sent).

    Raises:
        Whatever the reader raises mid-stream (the server then aborts the response,
        so the client sees an incomplete body and resumes).
    """
    # asyncio's lock costs nothing uncontended (anyio's adds a checkpoint per acquire),
    # and the loop's clock is anyio's without a look-up of the running library per call.
    lock = asyncio.Lock()
    clock = asyncio.get_running_loop().time
    last_send = clock()
    error: Exception | None = None

    async def write(body: bytes, more: bool = True) -> None:
        nonlocal last_send
        async with lock:
            await send({"type": "http.response.body", "body": body, "more_body": more})
            last_send = clock()

    async def ping(interval: float, scope: anyio.CancelScope) -> None:
        try:
            while True:
                await anyio.sleep(max(0.0, last_send + interval - clock()))
                if clock() - last_send >= interval:
                    await write(PING)
        except OSError:
            scope.cancel()  # the client went away

    async def listen(scope: anyio.CancelScope) -> None:
        assert listen_disconnect is not None
        await listen_disconnect()
        scope.cancel()

    async with anyio.create_task_group() as tg:
        if listen_disconnect is not None:
            tg.start_soon(listen, tg.cancel_scope)
        if mode == "sse" and ping_interval:
            tg.start_soon(ping, ping_interval, tg.cancel_scope)
        try:
            # An empty body message sends the headers now: ASGI lets a server hold
            # the response start until the first body message (granian does), and
            # a quiet stream may have no chunk for a long while.
            if not started:
                await write(b"")
            if first is not None:
                await write(encode(first, mode))
            if body is None:
                async for item in reader.indexed():
                    more = reader.indexed_nowait(_JOIN)
                    if more:
                        # Chunks that are here already go out in one message: a
                        # send costs the server ~10 us whatever its size.
                        await write(b"".join([encode(i, mode) for i in (item, *more)]))
                    else:
                        await write(encode(item, mode))
            else:
                async for piece in body:
                    await write(piece)
            await write(b"", more=False)
        except OSError:
            pass  # the client went away while we were sending (uvicorn's ClientDisconnected)
        except Exception as exc:
            # Raised after the task group, unwrapped: the server aborts the response
            # and the client sees an incomplete body, so it resumes.
            error = exc
        finally:
            tg.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                if body is not None:
                    await body.aclose()
                await reader.aclose()
    if error is not None:
        raise error


def as_bytes(piece: Any) -> bytes:
    """A body piece (``str``, ``bytes`` or a buffer) as bytes."""
    if type(piece) is bytes:
        return piece
    return piece.encode("utf-8") if isinstance(piece, str) else bytes(piece)


def content_pieces(content: Any) -> AsyncIterable[Any]:
    """The pieces of an async or sync iterable as they come (see `as_bytes`). An
    async iterable is iterated as it is, with no generator in between: that costs
    a frame per piece on the producing task."""
    if hasattr(content, "__aiter__"):
        return content  # type: ignore[no-any-return]
    return _threaded(iter(content))


async def _threaded(iterator: Iterator[Any]) -> AsyncIterator[Any]:
    """A sync iterator's items, each taken in a worker thread (it may block)."""
    done = object()
    while True:
        piece = await anyio.to_thread.run_sync(next, iterator, done)
        if piece is done:
            return
        yield piece


async def first_item(reader: ResumableStream) -> IndexedChunk | None:
    """The next item of ``reader``, or None if it has nothing more."""
    iterator = reader.indexed()
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return None


async def plain_response(
    send: Send, status: int, text: str, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """A short ``text/plain`` answer: errors and statuses of the resume routes."""
    body = text.encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


# Fixed sentences, not the source's exception text: that may hold internals (queries,
# paths, keys) a client must not see, which is also why the AI SDK masks errors.
_ENDED_TEXT = {
    None: "the stream has completed",
    "StreamFailed": "the stream failed before its end",
    "ProducerLost": "the stream failed: its producer is gone (its process stopped)",
    "StreamTooLarge": "the stream was cut at its size limit",
}


async def ended_response(send: Send, failure: str | None) -> None:
    """A resume's answer when nothing is left for the client.

    Args:
        send: the ASGI send.
        failure: None if the stream completed; else the failure's kind, the name of
            the core's exception: ``"StreamFailed"``, ``"ProducerLost"`` or
            ``"StreamTooLarge"`` (answered ``413``, as before).

    A completed stream and a failed one both answer ``410`` (nothing is left either
    way, and clients that predate ``X-Stream-Status`` stop instead of retrying); the
    header tells them apart, so a failure never reads as a normal end.
    """
    status = 413 if failure == "StreamTooLarge" else 410
    headers = [(STREAM_STATUS_HEADER, b"done" if failure is None else b"failed")]
    if failure is not None:
        headers.append((STREAM_ERROR_HEADER, failure.encode("ascii")))
    headers.append((b"access-control-expose-headers", b"X-Stream-Status, X-Stream-Error"))
    await plain_response(send, status, _ENDED_TEXT.get(failure, _ENDED_TEXT["StreamFailed"]),
                         headers)


async def wait_disconnect(receive: Receive) -> None:
    """Return once the client has gone (request body messages are discarded)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _awaited(awaitable: Awaitable[None]) -> None:
    """Any awaitable as a coroutine (a server's send may return one of its own)."""
    await awaitable


_COROUTINE = types.CoroutineType


async def finish_send(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
    """Drive a send that its caller ran up to its first wait (``coro.send(None)`` gave
    ``waiting``: the server holds it back) to its end, as its own task would
    have: wait for what it waits on, then let it go on. Closed if this is cancelled."""
    try:
        while True:
            if waiting is None:
                await asyncio.sleep(0)  # a bare yield: it asked for one loop turn
            elif getattr(waiting, "_asyncio_future_blocking", None) is not None:
                # A future, or an object that passes for one as a task sees it (granian's).
                waiting._asyncio_future_blocking = False  # as a task resets it
                await _settled(waiting)
            else:
                raise RuntimeError(f"a send waited on {waiting!r}, not a future")
            try:
                waiting = coro.send(None)
            except StopIteration:
                return
    except BaseException:
        coro.close()
        raise


async def _settled(future: Any) -> None:
    """Return once ``future`` is done, whatever its outcome (its awaiter reads that).

    Only what a task itself asks of what it awaits: ``add_done_callback``."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def settle(_: object) -> None:
        if not done.done():
            done.set_result(None)

    future.add_done_callback(settle)
    await done


class LineState(enum.Enum):
    """Where the original client's connection of a pushed stream is (`Line`)."""

    DIRECT = "direct"  # the producing task's own send writes each chunk to the connection
    HANDED = "handed"  # a send had to wait: the pump goes on from the local feed
    ENDED = "ended"  # the stream ended while direct: the pump sends its end
    GONE = "gone"  # the client went (or wants no body: HEAD): chunks are only stored


class Line:
    """The original client's connection of a pushed stream (`PushedSource`).

    While the client keeps up, the task that makes the body (the app's, through the
    middleware's ``send``; the explicit response's content) stores each chunk behind
    (`PushedProducer.push`) and writes it to the connection itself, numbered as the
    pump would: one task step per chunk, where the pump costs three. The first send
    that has to wait (the server's write buffer is full: the client reads slower than
    the body comes) hands the connection over (`LineState.HANDED`): the request's task
    finishes that send, then pumps the rest from the local feed, from the next index;
    the producing task only stores from then on, so it is never held up by its
    client. A client that goes leaves the line `GONE`: chunks are stored, errors of
    the connection swallowed. The request's task keeps listening for the disconnect
    and pings a quiet SSE stream, and once the stream ends (its end stored) sends
    that end through the pump, so an error still aborts the response.
    """

    __slots__ = (
        "_bell", "_clock", "_error", "_mode", "_pending", "_send", "last_send",
        "producer", "resume_at", "source", "state",
    )  # fmt: skip

    def __init__(self, send: Send, mode: str, close: Callable[[], Awaitable[None]]) -> None:
        self._send = send
        self._mode = mode
        loop = asyncio.get_running_loop()
        self._clock = loop.time
        self._bell = Bell(loop)
        self.state = LineState.DIRECT
        self.source = PushedSource(close, self._ended)
        self.producer: PushedProducer | None = None  # bound once the stream exists
        self._pending: tuple[Coroutine[Any, Any, None], Any] | None = None
        self._error: Exception | None = None  # the server's send raised (not OSError)
        self.last_send = self._clock()
        self.resume_at = 0  # where the pump goes on

    def bind(self) -> PushedProducer:
        producer = self.source.producer
        assert producer is not None
        self.producer = producer
        return producer

    def write(self, chunks: list[Chunk]) -> bool:
        """Store ``chunks`` and, while direct, send them; True if the caller should
        wait for room (``producer.writer.wait_for_room()``).

        Raises:
            Refused: the stream takes no more chunks (those before the refused one
                are stored and sent).
        """
        producer = self.producer
        assert producer is not None
        wait = False
        if self.state is not LineState.DIRECT:
            for chunk in chunks:
                wait = producer.push(chunk)
            return wait
        start = producer.next_index
        taken = 0
        try:
            for chunk in chunks:
                wait = producer.push(chunk)
                taken += 1
        finally:
            if taken:
                self._direct(self._encode(chunks, start, taken))
        return wait

    def write_event(self, event: bytes) -> bool:
        """`write` of one whole SSE event (`BodyEncoder.whole_event`): its id goes just
        before its blank line, where `with_id` puts it, without looking for it."""
        producer = self.producer
        assert producer is not None
        if self.state is not LineState.DIRECT:
            return producer.push(event)
        index = producer.next_index
        wait = producer.push(event)
        self._direct(b"%sid: %d\n\n" % (event[:-1], index))
        return wait

    def write_piece(self, encoder: BodyEncoder, data: bytes) -> bool:
        """`write` of one body piece that is not the last: a whole SSE event goes as its
        own chunk, unscanned (`write_event`, the common case); anything else as
        ``encoder`` cuts it.

        Raises:
            Refused: as `write`.
        """
        if encoder.whole_event(data):
            return self.write_event(data)
        return self.write(encoder.feed(data))

    def finish(self, error: BaseException | None = None) -> None:
        """The body is complete (None) or failed with ``error``: the stream ends so."""
        assert self.producer is not None
        self.producer.finish(error)

    async def wait_for_room(self) -> None:
        """Until storage is back under ``max_buffered_bytes`` (after `write` said so)."""
        assert self.producer is not None
        await self.producer.writer.wait_for_room()

    def _encode(self, chunks: list[Chunk], start: int, count: int) -> bytes:
        """The wire bytes of ``chunks[:count]``, numbered from ``start`` (as `encode`)."""
        if self._mode == "sse":
            if count == 1:
                return with_id(chunks[0], start)  # type: ignore[arg-type]  # sse: bytes
            return b"".join([with_id(chunks[i], start + i) for i in range(count)])  # type: ignore[arg-type]
        pieces = [c.encode("utf-8") if isinstance(c, str) else c for c in chunks[:count]]
        return pieces[0] if count == 1 else b"".join(pieces)

    def ping(self) -> None:
        if self.state is LineState.DIRECT:
            self._direct(PING)

    def _direct(self, data: bytes) -> None:
        sent = self._send({"type": "http.response.body", "body": data, "more_body": True})
        coro = sent if type(sent) is _COROUTINE else _awaited(sent)
        try:
            # Run the send up to its first wait, in this task: the common case is no
            # wait at all (the server wrote the message to its transport).
            waiting = coro.send(None)
        except StopIteration:
            self.last_send = self._clock()
            return
        except OSError:
            self._gone()
            return
        except Exception as exc:
            self._error = exc
            self._gone()
            return
        # The server waits before it writes (flow control): the client is slower than
        # the body. The rest of this send and everything after go through the pump.
        self._pending = (coro, waiting)
        self._hand_over()

    # -- transitions -------------------------------------------------------------------

    def _hand_over(self) -> None:
        """DIRECT -> HANDED: the local feed takes every chunk from the next one on."""
        assert self.producer is not None
        self.resume_at = self.producer.attach()
        self.state = LineState.HANDED
        self._bell.set()

    def _ended(self) -> None:
        """The producer ended (called by it): DIRECT -> ENDED."""
        if self.state is LineState.DIRECT:
            producer = self.producer
            self.resume_at = 0 if producer is None else producer.next_index
            self.state = LineState.ENDED
        self._bell.set()

    def _gone(self) -> None:
        """DIRECT or HANDED -> GONE: the client went; chunks are only stored (and fed
        to the local feed, if attached) from now on."""
        if self.state is LineState.DIRECT or self.state is LineState.HANDED:
            self.state = LineState.GONE
        self._bell.set()

    def detach(self) -> None:
        """No body for this client (HEAD): store only."""
        self._gone()

    # -- the request's task ----------------------------------------------------------

    async def serve(
        self,
        reader: ResumableStream,
        listen_disconnect: Callable[[], Awaitable[None]] | None,
        *,
        ping_interval: float | None,
    ) -> None:
        """The request's side, once the headers are out: wait while the line is
        direct (listening for the client going, pinging a quiet SSE stream), then
        finish what is left through the pump (or, if the client went, nothing).

        Raises:
            As `pump`; or what the server's send raised on the direct path.
        """
        error: Exception | None = None
        try:
            # One listener for the whole response (the direct phase and the pump's).
            async with anyio.create_task_group() as tg:
                if listen_disconnect is not None:
                    tg.start_soon(self._listen, listen_disconnect, tg.cancel_scope)
                if self._mode == "sse" and ping_interval:
                    tg.start_soon(self._pinger, ping_interval)
                try:
                    await self._follow(reader, ping_interval)
                except Exception as exc:
                    error = exc  # raised after the task group, unwrapped (see `pump`)
                tg.cancel_scope.cancel()
        finally:
            self._gone()  # cancelled or failed: the producing task stops sending
            pending, self._pending = self._pending, None
            if pending is not None:
                pending[0].close()
            with anyio.CancelScope(shield=True):
                await reader.aclose()
        if error is not None:
            raise error

    async def _follow(self, reader: ResumableStream, ping_interval: float | None) -> None:
        """Wait while the line is direct; then the rest of a send that waited, and
        the pump from the next index (nothing if the client went)."""
        bell = self._bell
        while self.state is LineState.DIRECT:
            bell.clear()
            await bell.wait()
        pending, self._pending = self._pending, None
        if pending is not None and self.state is LineState.HANDED:
            try:
                await finish_send(*pending)
            except OSError:
                self._gone()
        if self._error is not None:
            raise self._error
        if self.state is LineState.GONE:
            return
        reader._begin_at(self.resume_at)
        await pump(
            reader, self._send, None, mode=self._mode, ping_interval=ping_interval,
            started=True,
        )  # fmt: skip

    async def _listen(
        self, listen_disconnect: Callable[[], Awaitable[None]], scope: anyio.CancelScope
    ) -> None:
        await listen_disconnect()
        self._gone()
        scope.cancel()

    async def _pinger(self, interval: float) -> None:
        clock = self._clock
        while self.state is LineState.DIRECT:
            await anyio.sleep(max(0.0, self.last_send + interval - clock()))
            if self.state is LineState.DIRECT and clock() - self.last_send >= interval:
                self.ping()
