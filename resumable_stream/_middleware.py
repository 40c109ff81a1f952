"""`ResumableStreamMiddleware`: an app's streaming responses become resumable streams.

What it does for the app, and what the app sees, is in the `resumable_stream.asgi`
docstring; how one request goes through it is `_Call`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

import anyio

from ._context import ResumableStreamContext
from ._endpoint import ResumeEndpoint
from ._exceptions import (
    BackendUnavailable,
    InvalidStreamId,
    StreamAlreadyExists,
    TooManyStreams,
)
from ._http import (
    BodyEncoder,
    Line,
    Message,
    Owner,
    Receive,
    Scope,
    Send,
    body_mode,
    header,
    http_metadata,
    request_owner,
)
from ._http import plain_response as _plain
from ._keys import validate_stream_id
from ._producer import Refused
from ._responder import (
    DEFAULT_PING_INTERVAL,
    RETRY_AFTER,
    Authorize,
    check_resume_path,
    new_stream_id,
    respond_live,
    resume_location,
)
from ._subscription import Bell

__all__ = ["APP_CANCEL_GRACE", "ASGIApp", "ResumableStreamMiddleware"]

logger = logging.getLogger("resumable_stream")

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
"""Any ASGI application: what the middleware wraps and what the helpers are."""


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
    body wait to be stored. While the client keeps up, that ``send`` writes each event
    to the connection itself, numbered, and stores it behind; a client that falls
    behind is handed to a pump from the stream's local feed, so it never holds the
    app back (see `resumable_stream._http.Line`).

    Args:
        app: the ASGI app to wrap.
        context: the context streams live in; None disables resumability (responses
            pass through; the resume endpoint answers ``503``).
        path: the requests to handle, as a path pattern (``/api/chat/{agent}/{thread}``)
            or a predicate on the ASGI scope.
        methods: the methods to handle with a path pattern (default POST).
        resume_path: where to serve the resume endpoint; must contain ``{stream_id}``
            (and may hold other ``{name}`` parameters of ``path``). Every resumable
            response names its resume URL here in ``Location``. None serves none.
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
        self._path_regex = None if callable(path) else _compile(path)
        if callable(path):
            self._match: Callable[[Scope], bool] = path
        else:
            regex = _compile(path)
            self._match = lambda scope: (
                scope["method"] in self.methods and regex.match(scope["path"]) is not None
            )
        self.resume_path = check_resume_path(resume_path)
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

    def location(self, scope: Scope, stream_id: str) -> bytes | None:
        """The resume URL of a stream this request made, for its ``Location``: the
        ``{name}`` parameters of ``resume_path`` come from the request's path."""
        found = None if self._path_regex is None else self._path_regex.match(scope["path"])
        params = {} if found is None else found.groupdict()
        return resume_location(self.resume_path, stream_id, params)


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
    """The app's response messages on their way to the request's task, until it has
    decided what the response is (a resumable one then takes the app's body straight
    to its `Line`, and takes what is held here first).

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

    def drain(self) -> list[Message]:
        """Take every message held, in order."""
        messages = list(self._messages)
        self._messages.clear()
        self.buffered = 0
        return messages

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
    producer, through its source's close (`close_body`): stopping the stream, cutting it
    at ``max_stream_bytes`` or closing the context cancels the app and waits for it. A
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
        # A resumable response: the app's body goes to the line, split by the encoder.
        self.line: Line | None = None
        self.encoder: BodyEncoder | None = None
        self.body_done = False  # the app's body is complete (what follows is dropped)

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

    async def app_send(self, message: Message) -> None:
        """The app's ``send``: to the outbox until the response is decided; for a
        resumable response, then straight to its `Line` (stored, and sent while the
        client keeps up), in the app's own task."""
        line = self.line
        if line is None:
            await self.outbox.put(message)
            return
        if self.body_done or message["type"] != "http.response.body":
            return  # after the body's end (background work), or not a body message
        final = not message.get("more_body", False)
        encoder = self.encoder
        assert encoder is not None
        data = message.get("body", b"")
        if not final:
            try:
                wait = line.write_piece(encoder, data)
            except Refused:
                return  # the stream ended early: its producer stops this app
            if wait:
                await line.wait_for_room()
            return
        self.body_done = True
        try:
            line.write(encoder.feed(data) + encoder.flush())
        except Refused:
            return
        line.finish()

    def app_ended(self) -> None:
        """The app returned (or raised) with a resumable response under way."""
        line = self.line
        assert line is not None
        if self.body_done:
            return
        self.body_done = True
        if self.app_error is None and self.encoder is not None:
            try:
                line.write(self.encoder.flush())
            except Refused:
                return
        line.finish(self.app_error)

    async def run_app(self) -> None:
        try:
            await self.middleware.app(self.scope, self.app_receive, self.app_send)
        except BaseException as exc:
            self.app_error = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            if self.line is None:
                self.outbox.put_nowait(_APP_DONE)
            else:
                self.app_ended()

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
        line = Line(self.send, mode, self.close_body)
        reader = None
        try:
            owner = await request_owner(self.middleware.owner, self.scope)
            reader = await self.context.create_new_resumable_stream(
                stream_id, line.source, metadata=http_metadata(start["status"], headers, owner)
            )
        except TooManyStreams:
            # Another request took the last place while the app was starting.
            await _plain(self.send, 503, "too many streams", RETRY_AFTER)
            return
        except (BackendUnavailable, StreamAlreadyExists) as exc:
            logger.warning("stream %r is not resumable (%s); passing it through", stream_id, exc)
        if reader is None:
            # Not stored, so no id: an app-supplied id names some other stream (running
            # or finished) that a client would resume instead of this one.
            unnamed = [(k, v) for k, v in headers if k.lower() != b"x-stream-id"]
            await self.pass_through({**start, "headers": unnamed}, first)
            return
        line.bind()
        self.released = True  # the producer owns the app now, through `close_body`
        pending = [first] if first is not None else []

        def begin() -> None:
            """From here on the app's body goes to the line (no await in between: the
            messages held meanwhile go first, in order)."""
            self.encoder = BodyEncoder(mode)
            held = [*pending, *self.outbox.drain()]
            self.outbox.close()  # wakes an app waiting for room; it sends to the line next
            self.line = line
            for message in held:
                if message is _APP_DONE:
                    self.app_ended()
                    break
                if self.body_done:
                    break
                if message.get("type") != "http.response.body":
                    continue
                final = not message.get("more_body", False)
                chunks = self.encoder.feed(message.get("body", b""))
                if final:
                    self.body_done = True
                    chunks += self.encoder.flush()
                try:
                    line.write(chunks)
                except Refused:
                    break
                if final:
                    line.finish()

        await respond_live(
            self.scope,
            self.send,
            reader,
            line,
            begin,
            status=start["status"],
            headers=headers,
            stream_id=stream_id,
            mode=mode,
            listen_disconnect=self.listen_disconnect,
            ping_interval=self.middleware.ping_interval,
            location=self.middleware.location(self.scope, stream_id),
        )

    async def close_body(self) -> None:
        """The producer's close of its source: however the stream ends, the app is
        cancelled and awaited here, unless its body is complete (it may run on:
        background work)."""
        if self.body_done:
            self.outbox.close()
        else:
            self.body_done = True
            await self.stop_app()

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
