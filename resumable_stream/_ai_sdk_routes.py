"""`ChatStreams`: the AI SDK's chat routes around an app's handler, with resumable answers.

Behind `resumable_stream.ai_sdk` (its module docstring describes the routes).
"""

from __future__ import annotations

import inspect
import json
import logging
import secrets
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any

import anyio

from ._ai_sdk_chunks import (
    DEFAULT_ERROR_TEXT,
    DONE,
    DONE_BYTES,
    UI_MESSAGE_STREAM_HEADERS,
    OpenParts,
    UIMessageChunk,
    encode_chunk,
    failed_ending,
    start_chunk,
    stopped_ending,
    ui_chunks,
)
from ._ai_sdk_http import (
    BadStartIndex,
    ClientGone,
    Endpoint,
    json_response,
    no_content,
    path_id,
    read_body,
    start_index,
    valid_chat_id,
)
from ._ai_sdk_pointer import ActiveStreams
from ._ai_sdk_requests import ChatHandler, ChatRequest, ChatStop, OnStop
from ._context import ResumableStreamContext
from ._exceptions import (
    BackendUnavailable,
    InvalidArgument,
    InvalidStreamId,
    ProducerLost,
    ResumableStreamError,
    StreamDeleted,
    StreamFailed,
    StreamNotFound,
    describe,
)
from ._http import (
    Owner,
    Receive,
    Scope,
    Send,
    http_metadata,
    may_access,
    may_access_stream,
    request_owner,
)
from ._http import plain_response as _plain
from ._http import wait_disconnect as _disconnected
from ._reader import ResumableStream
from ._responder import (
    DEFAULT_PING_INTERVAL,
    Authorize,
    allowed,
    new_stream_id,
    respond,
    stream_directly,
    wants_delete,
)
from ._sse import with_id
from ._types import StreamStatus

logger = logging.getLogger("resumable_stream")

CHAT_KEY = "ai_sdk_chat"
"""Metadata key of a chat answer's stream: the chat's id (it also marks the stream as
one of `ChatStreams`, the only ones its routes serve by run id)."""
RUN_ID_HEADER = b"x-workflow-run-id"
TAIL_INDEX_HEADER = b"x-workflow-stream-tail-index"
_EXPOSE = (b"access-control-expose-headers", b"X-Workflow-Run-Id, X-Workflow-Stream-Tail-Index")


class _StopRefused(Exception):
    """The stop request's body is not what the route takes (a ``400``)."""


# -- the routes -----------------------------------------------------------------------------------


class ChatStreams:
    """The AI SDK's chat routes around an app's handler, with resumable answers.

    Serve ``chat_endpoint`` for ``POST {api}``, ``stream_endpoint`` for ``GET`` and
    ``DELETE`` on ``{api}/{id}/stream`` and ``stop_endpoint`` for ``POST
    {api}/{id}/stop`` (ASGI apps: Starlette and FastAPI take them as ``Route``
    endpoints, Litestar handlers can return them)::

        chats = ChatStreams(ctx, answer)
        app.add_route("/api/chat", chats.chat_endpoint, methods=["POST"])
        app.add_route("/api/chat/{chat_id}/stream", chats.stream_endpoint,
                      methods=["GET", "DELETE"])
        app.add_route("/api/chat/{chat_id}/stop", chats.stop_endpoint, methods=["POST"])

    Both of the AI SDK's transports work on these routes: ``DefaultChatTransport``
    (``useChat({ resume: true })``) and ``WorkflowChatTransport``.

    Args:
        context: where answers are stored (Redis for more than one process).
        handler: ``handler(request: ChatRequest)`` gives the answer's chunks (see
            `ChatHandler`; `text_chunks` wraps a plain text stream).
        authorize: ``authorize(scope, chat_id) -> bool`` (or awaitable), asked on every
            route; False answers ``403``.
        on_error: ``on_error(exc) -> str``: the ``errorText`` the client gets when the
            handler raises or the stream fails; "An error occurred." by default.
        generate_message_id: makes the ids of new assistant messages.
        ping_interval: seconds of silence before a ``: ping`` comment; None disables.
        pointer_ttl: seconds a chat's active-stream pointer lives after its last change
            (the context's ``ttl`` by default).
        max_body_bytes: a larger ``POST`` body gets ``413``.
        path_param: the path parameter holding the chat id (else the path segment before
            ``/stream`` or ``/stop`` is used).
        allow_delete: serve ``DELETE {api}/{chat_id}/stream?delete=1`` (`delete`, then
            ``204``); off by default, when it answers ``405``.
        owner: ``owner(scope) -> str | None`` (or awaitable): bind each answer to the
            owner of its ``POST``; a ``GET``, stop or ``DELETE`` of it by anyone else (or
            by None) is answered as for a chat with no active answer.
        on_stop: ``on_stop(stop: ChatStop)`` (or awaitable), called by the stop route
            once the answer is stopped: where an app saves the client's partial message.

    Raises:
        InvalidArgument: ``pointer_ttl`` or ``max_body_bytes`` is not positive.
    """

    def __init__(
        self,
        context: ResumableStreamContext,
        handler: ChatHandler,
        *,
        authorize: Authorize | None = None,
        on_error: Callable[[BaseException], str] | None = None,
        generate_message_id: Callable[[], str] | None = None,
        ping_interval: float | None = DEFAULT_PING_INTERVAL,
        pointer_ttl: float | None = None,
        max_body_bytes: int = 16 * 1024 * 1024,
        path_param: str = "chat_id",
        allow_delete: bool = False,
        owner: Owner | None = None,
        on_stop: OnStop | None = None,
    ) -> None:
        if pointer_ttl is not None and not pointer_ttl > 0:
            raise InvalidArgument(f"pointer_ttl must be > 0 seconds, got {pointer_ttl!r}")
        if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or (
            max_body_bytes <= 0
        ):
            raise InvalidArgument(f"max_body_bytes must be an int > 0, got {max_body_bytes!r}")
        self.context = context
        self.handler = handler
        self.authorize = authorize
        self.on_error = on_error
        self.generate_message_id = generate_message_id or _new_message_id
        self.ping_interval = ping_interval
        self.max_body_bytes = max_body_bytes
        self.path_param = path_param
        self.allow_delete = allow_delete
        self.owner = owner
        self.on_stop = on_stop
        self._active = ActiveStreams(context.backend, pointer_ttl or context.ttl)
        self.chat_endpoint = Endpoint(self._serve_chat)
        """ASGI app for ``POST {api}``."""
        self.stream_endpoint = Endpoint(self._serve_stream)
        """ASGI app for ``GET`` (resume) and ``DELETE`` (stop) on ``{api}/{id}/stream``."""
        self.stop_endpoint = Endpoint(self._serve_stop)
        """ASGI app for ``POST {api}/{id}/stop``, the stop route of the AI SDK's docs."""

    # -- for the app ----------------------------------------------------------------------

    async def active_stream_id(self, chat_id: str) -> str | None:
        """The id of the chat's running answer, or None.

        Raises:
            BackendUnavailable: storage could not be reached.
        """
        stream_id = await self._active.get(chat_id)
        if (
            stream_id is None
            or await self.context.get_status(stream_id) is not StreamStatus.RUNNING
        ):
            return None
        return stream_id

    async def stop(self, chat_id: str) -> bool:
        """Stop the chat's running answer, from any process.

        The pointer is cleared first, so a resume from now on answers ``204``; the
        producer (here or in another process) stops at its next write, and every reader
        gets ``text-end`` for open parts, ``abort``, ``finish`` and ``[DONE]``. What was
        written stays stored: a ``GET ...?startIndex=0`` by its run id replays it.

        Returns:
            True if an answer was running, False if there was none.

        Raises:
            BackendUnavailable: storage could not be reached.
        """
        stream_id = await self._active.get(chat_id)
        if stream_id is None:
            return False
        return await self._stop(chat_id, stream_id)

    async def _stop(self, chat_id: str, stream_id: str) -> bool:
        await self._active.clear(chat_id, stream_id)  # only if it still names this one
        return await self.context.stop_stream(stream_id)

    async def delete(self, chat_id: str) -> bool:
        """Delete the chat's active answer from storage (a user deleted the chat).

        The pointer is cleared first, then the stream deleted with
        `ResumableStreamContext.delete_stream`: its producer stops wherever it runs, every
        reader's response ends with an ``error`` chunk, ``finish`` and ``[DONE]``, and a
        resume answers ``204``. Answers that already ended are no longer tracked by the
        chat; they expire with their ``finished_ttl``.

        Returns:
            True if the chat had an active answer (it is deleted now), False if not.

        Raises:
            TypeError: the context's backend cannot delete.
            BackendUnavailable: storage could not be reached.
        """
        stream_id = await self._active.get(chat_id)
        if stream_id is None:
            return False
        return await self._delete(chat_id, stream_id)

    async def _delete(self, chat_id: str, stream_id: str) -> bool:
        await self._active.clear(chat_id, stream_id)
        return await self.context.delete_stream(stream_id)

    async def _may(self, stream_id: str, requester: str | None) -> bool:
        """Without ``owner=``, anyone may; with it, only the answer's owner (False for
        an unknown stream too: both answer as a chat with no active answer)."""
        return self.owner is None or await may_access_stream(self.context, stream_id, requester)

    # -- POST {api} -------------------------------------------------------------------------

    async def _serve_chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") != "POST":
            await _plain(send, 405, "method not allowed", [(b"allow", b"POST")])
            return
        try:
            raw = await read_body(receive, self.max_body_bytes)
        except ClientGone:
            return
        if raw is None:
            await _plain(send, 413, "the request body is too large")
            return
        try:
            body = json.loads(raw)
        except ValueError:
            await _plain(send, 400, "the body must be JSON")
            return
        chat_id = body.get("id") if isinstance(body, dict) else None
        messages = body.get("messages", []) if isinstance(body, dict) else None
        if not isinstance(messages, list) or (chat_id is not None and not valid_chat_id(chat_id)):
            await _plain(send, 400, "the body needs the chat's messages (and a valid id, if any)")
            return
        assert isinstance(body, dict)
        stream_id = new_stream_id()
        if chat_id is None:  # WorkflowChatTransport's body: the answer is a chat of its own
            chat_id = stream_id
        assert isinstance(chat_id, str)
        if not await allowed(self.authorize, scope, chat_id):
            await _plain(send, 403, "forbidden")
            return
        trigger, message_id = body.get("trigger"), body.get("messageId")
        request = ChatRequest(
            id=chat_id,
            messages=messages,
            trigger=trigger if isinstance(trigger, str) else None,
            message_id=message_id if isinstance(message_id, str) else None,
            response_message_id=_continued_id(messages) or self.generate_message_id(),
            body=body,
            scope=scope,
            run_id=stream_id,
        )
        headers = _ui_headers()
        owner = await request_owner(self.owner, scope)
        previous: str | None = None
        try:
            # Before the stream exists, so that this set always precedes the stream's
            # clear (a resume in between finds no stream yet: 204).
            previous = await self._active.set(chat_id, stream_id)
        except BackendUnavailable as exc:
            logger.warning("chat %r: its active stream was not recorded (%s)", chat_id, exc)
        try:
            reader = await self.context.create_new_resumable_stream(
                stream_id,
                lambda: self._stored_events(request, stream_id),
                metadata={**http_metadata(200, headers, owner), CHAT_KEY: chat_id},
            )
        except BackendUnavailable as exc:
            logger.warning("chat %r is not resumable (%s); streaming it directly", chat_id, exc)
            reader = None
        except ResumableStreamError as exc:  # TooManyStreams here, or shutting down
            logger.warning("chat %r: no stream started (%s)", chat_id, describe(exc))
            await self._restore(chat_id, stream_id, previous)
            await _plain(send, 503, "too many streams", [(b"retry-after", b"1")])
            return
        if reader is None:  # a fresh random id: only the backend being down gets here
            await self._restore(chat_id, stream_id, previous)
            # Without storage the handler stops when the client goes.
            await stream_directly(
                self._events(request), status=200, headers=_run_headers(headers, stream_id),
                send=send, receive=receive,
            )  # fmt: skip
            return
        await respond(
            scope, send, reader, status=200, headers=_run_headers(headers, stream_id),
            stream_id=stream_id, mode="sse", listen_disconnect=lambda: _disconnected(receive),
            ping_interval=self.ping_interval, body=self._response_body(reader),
        )  # fmt: skip

    async def _restore(self, chat_id: str, stream_id: str, previous: str | None) -> None:
        """The stream was not made: the chat's answer before it (if any) is active again."""
        try:
            await self._active.restore(chat_id, stream_id, previous)
        except BackendUnavailable as exc:
            logger.warning("chat %r: its active stream was not restored (%s)", chat_id, exc)

    async def _events(self, request: ChatRequest) -> AsyncGenerator[str, None]:
        """The stored stream: one SSE event per chunk, ending with ``[DONE]``."""
        started = False
        try:
            source = self.handler(request)
            if inspect.isawaitable(source):
                source = await source
            async with aclosing(ui_chunks(source)) as chunks:
                async for chunk in chunks:
                    if not started:
                        started = True
                        if chunk["type"] != "start":
                            yield encode_chunk(start_chunk(request.response_message_id))
                        elif chunk.get("messageId") is None:
                            chunk["messageId"] = request.response_message_id
                    yield encode_chunk(chunk)
        except Exception as exc:
            logger.warning("chat %r: its handler raised %s", request.id, describe(exc))
            for ending in failed_ending(self._error_text(exc)):
                yield encode_chunk(ending)
        yield DONE

    async def _stored_events(
        self, request: ChatRequest, stream_id: str
    ) -> AsyncGenerator[str, None]:
        """`_events`, then the pointer cleared, however the stream ends (the producer
        cancels this generator when it is stopped or shut down, or closes it)."""
        try:
            async with aclosing(self._events(request)) as events:
                async for event in events:
                    yield event
        finally:
            with anyio.move_on_after(5.0, shield=True):
                try:
                    await self._active.clear(request.id, stream_id)
                except Exception as exc:  # it expires with its ttl; resumes check the stream
                    logger.warning(
                        "chat %r: its active stream was not cleared (%s)", request.id, describe(exc)
                    )

    async def _response_body(
        self, reader: ResumableStream, start: int = 0
    ) -> AsyncGenerator[bytes, None]:
        """The answer from its chunk ``start`` on, ``[DONE]`` last.

        ``reader`` reads the stored stream from its first chunk (stored chunk N is UI
        chunk N); a stored stream without ``[DONE]`` gets the ending of a stopped or a
        failed answer (see the module docstring), numbered on after the stored chunks,
        so that every response, whatever chunk it starts from, is a piece of one answer.
        """
        parts = OpenParts()
        done: int | None = None  # the index of the stored [DONE]
        count = 0  # stored chunks before [DONE]
        ending: list[UIMessageChunk] = []
        try:
            async for index, chunk in reader.indexed():
                event = chunk.encode("utf-8") if isinstance(chunk, str) else chunk
                if event == DONE_BYTES:
                    done = index
                    continue
                parts.see(event)
                count = index + 1
                if index >= start:
                    yield with_id(event, index)
        except (StreamFailed, ProducerLost, StreamDeleted) as exc:
            if done is None:
                ending = failed_ending(self._error_text(exc))
        else:
            if done is None:  # stopped: the producer ended the stream where it was
                ending = stopped_ending(parts)
        if done is not None:
            yield with_id(DONE_BYTES, done)
            return
        for offset, closing in enumerate(ending):
            if count + offset >= start:
                yield encode_chunk(closing).encode("utf-8")
        yield DONE_BYTES

    # -- GET / DELETE {api}/{id}/stream ---------------------------------------------------------

    async def _serve_stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method")
        if method not in ("GET", "HEAD", "DELETE"):
            await _plain(send, 405, "method not allowed", [(b"allow", b"GET, HEAD, DELETE")])
            return
        purge = method == "DELETE" and wants_delete(scope)
        if purge and not self.allow_delete:
            await _plain(
                send, 405, "deleting chats is not enabled here (allow_delete)",
                [(b"allow", b"GET, HEAD, DELETE")],
            )  # fmt: skip
            return
        chat_id = path_id(scope, self.path_param, "stream")
        if chat_id is None:
            await _plain(send, 404, "no such chat")
            return
        start: int | None = None
        if method != "DELETE":
            try:
                start = start_index(scope)
            except BadStartIndex:
                await _plain(send, 400, "startIndex must be an integer")
                return
        requester = await request_owner(self.owner, scope)
        try:
            if start is not None:  # WorkflowChatTransport: by run id (or chat), from a chunk
                await self._replay(scope, receive, send, chat_id, requester, start)
                return
            if not await allowed(self.authorize, scope, chat_id):
                await _plain(send, 403, "forbidden")
                return
            if method == "DELETE":
                stream_id = await self._active.get(chat_id)
                if stream_id is None or not await self._may(stream_id, requester):
                    await no_content(send)  # no answer, or not this requester's
                    return
                if purge:
                    await self._delete(chat_id, stream_id)
                    await no_content(send)  # deleted, or nothing to delete: gone either way
                elif await self._stop(chat_id, stream_id):
                    await _plain(send, 202, "stopping")
                else:
                    await no_content(send)  # no answer running
                return
            await self._resume(scope, receive, send, chat_id, requester)
        except BackendUnavailable as exc:
            logger.warning("chat %r: storage unavailable (%s)", chat_id, exc)
            await _plain(send, 503, "stream storage is unavailable", [(b"retry-after", b"1")])

    async def _resume(
        self, scope: Scope, receive: Receive, send: Send, chat_id: str, requester: str | None
    ) -> None:
        """useChat's resume: the chat's running answer from its first chunk, else 204."""
        stream_id = await self._active.get(chat_id)
        reader = None
        if stream_id is not None:
            try:
                reader = await self.context.resume_existing_stream(stream_id)
            except StreamNotFound:
                reader = None  # expired
            except BackendUnavailable:
                raise
            except ResumableStreamError as exc:  # TooManyFollowers of it here
                if not await self._may(stream_id, requester):
                    await no_content(send)  # a 503 would confirm another's answer
                    return
                logger.warning("chat %r: not resumed (%s)", chat_id, describe(exc))
                await _plain(send, 503, "too many readers", [(b"retry-after", b"1")])
                return
        if reader is None:
            await no_content(send)  # no answer running: nothing, or it finished
            return
        assert stream_id is not None
        if self.owner is not None and not may_access(reader.metadata, requester):
            await reader.aclose()
            await no_content(send)  # another's answer reads as none at all
            return
        if reader.status is not StreamStatus.RUNNING:  # its producer died: no active stream
            await reader.aclose()
            await no_content(send)
            return
        await self._send_answer(scope, receive, send, reader, stream_id, 0, _ui_headers())

    async def _replay(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        some_id: str,
        requester: str | None,
        start: int,
    ) -> None:
        """WorkflowChatTransport's reconnect: the answer from chunk ``start`` (from the
        tail if negative), running or ended; ``404`` if there is none to read (never
        ``204``: the transport reads an empty ``200`` as a break and asks again)."""
        try:
            found = await self._open_answer(some_id)
        except BackendUnavailable:
            raise
        except ResumableStreamError as exc:  # TooManyFollowers
            logger.warning("answer %r: not replayed (%s)", some_id, describe(exc))
            await _plain(send, 503, "too many readers", [(b"retry-after", b"1")])
            return
        if found is None:
            code, text = (404, "no such answer")
            if not await allowed(self.authorize, scope, some_id):
                code, text = (403, "forbidden")
            await _plain(send, code, text)
            return
        chat_id, stream_id, reader = found
        if not await allowed(self.authorize, scope, chat_id):
            await reader.aclose()
            await _plain(send, 403, "forbidden")
            return
        if self.owner is not None and not may_access(reader.metadata, requester):
            await reader.aclose()
            await _plain(send, 404, "no such answer")  # as for an unknown one
            return
        headers = _ui_headers()
        if start < 0:
            try:
                count = await self._stored_count(stream_id)
            except BaseException:
                await reader.aclose()
                raise
            start = max(0, count + start)
            headers.append((TAIL_INDEX_HEADER, str(count - 1).encode("ascii")))
        await self._send_answer(scope, receive, send, reader, stream_id, start, headers)

    async def _open_answer(self, some_id: str) -> tuple[str, str, ResumableStream] | None:
        """The chat, stream id and a reader from the first chunk of the answer ``some_id``
        names: a chat's active answer, else a chat answer's stream by its run id."""
        active = await self._active.get(some_id)
        candidates = [some_id] if active is None or active == some_id else [active, some_id]
        for stream_id in candidates:
            try:
                reader = await self.context.resume_existing_stream(stream_id, after=-1)
            except (StreamNotFound, InvalidStreamId):
                continue
            if reader is None:
                continue  # ended with nothing stored
            chat = reader.metadata.get(CHAT_KEY)
            if not isinstance(chat, str):
                await reader.aclose()  # not a chat answer: not served here
                continue
            return chat, stream_id, reader
        return None

    async def _stored_count(self, stream_id: str) -> int:
        """How many UI chunks the stream holds now (its stored ``[DONE]`` aside)."""
        backend = self.context.backend
        snap = await backend.snapshot(stream_id, 0, 0)
        if snap is None or snap.length == 0:
            return 0
        last = await backend.snapshot(stream_id, snap.length - 1, 1)
        if last is not None and last.chunks:
            chunk = last.chunks[-1]
            if (chunk.encode("utf-8") if isinstance(chunk, str) else chunk) == DONE_BYTES:
                return snap.length - 1
        return snap.length

    async def _send_answer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        reader: ResumableStream,
        stream_id: str,
        start: int,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        await respond(
            scope, send, reader, status=200, headers=_run_headers(headers, stream_id),
            stream_id=stream_id, mode="sse", listen_disconnect=lambda: _disconnected(receive),
            ping_interval=self.ping_interval, body=self._response_body(reader, start),
        )  # fmt: skip

    # -- POST {api}/{id}/stop ---------------------------------------------------------------------

    async def _serve_stop(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The AI SDK docs' stop route: stop the answer, keep what was written, and
        clear the chat's active stream only if it still names the stopped one."""
        if scope.get("method") != "POST":
            await _plain(send, 405, "method not allowed", [(b"allow", b"POST")])
            return
        some_id = path_id(scope, self.path_param, "stop")
        if some_id is None:
            await _plain(send, 404, "no such chat")
            return
        try:
            raw = await read_body(receive, self.max_body_bytes)
        except ClientGone:
            return
        if raw is None:
            await _plain(send, 413, "the request body is too large")
            return
        try:
            expected, message = _stop_body(raw)
        except _StopRefused as exc:
            await _plain(send, 400, str(exc))
            return
        requester = await request_owner(self.owner, scope)
        try:
            found = await self._stoppable(some_id)
            chat_id = found[0] if found is not None else some_id
            if not await allowed(self.authorize, scope, chat_id):
                await _plain(send, 403, "forbidden")
                return
            if (
                found is None
                or not await self._may(found[1], requester)
                or (expected is not None and expected != found[1])  # a stale stop
            ):
                await json_response(send, 200, {"success": True, "stopped": False})
                return
            stream_id = found[1]
            stopped = await self._stop(chat_id, stream_id)
        except BackendUnavailable as exc:
            logger.warning("chat %r: storage unavailable (%s)", some_id, exc)
            await _plain(send, 503, "stream storage is unavailable", [(b"retry-after", b"1")])
            return
        if self.on_stop is not None:
            try:
                done = self.on_stop(ChatStop(chat_id, stream_id, stopped, message, scope))
                if inspect.isawaitable(done):
                    await done
            except Exception as exc:
                logger.warning("chat %r: on_stop raised %s", chat_id, describe(exc))
                await _plain(send, 500, "the answer was stopped; saving it failed")
                return
        await json_response(send, 200, {"success": True, "stopped": stopped})

    async def _stoppable(self, some_id: str) -> tuple[str, str] | None:
        """(chat id, stream id) of the answer a stop names: the chat's active one, else
        a running chat answer by its run id."""
        active = await self._active.get(some_id)
        if active is not None:
            return some_id, active
        try:
            reader = await self.context.resume_existing_stream(some_id)
        except (StreamNotFound, InvalidStreamId):
            return None
        if reader is None:
            return None  # it ended: nothing to stop
        chat = reader.metadata.get(CHAT_KEY)
        await reader.aclose()
        return (chat, some_id) if isinstance(chat, str) else None

    def _error_text(self, exc: BaseException) -> str:
        if self.on_error is None:
            return DEFAULT_ERROR_TEXT
        try:
            return str(self.on_error(exc))
        except Exception as hook_error:
            logger.warning("on_error raised %s", describe(hook_error))
            return DEFAULT_ERROR_TEXT


# -- small helpers --------------------------------------------------------------------------------


def _ui_headers() -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in UI_MESSAGE_STREAM_HEADERS.items()]


def _run_headers(headers: list[tuple[bytes, bytes]], stream_id: str) -> list[tuple[bytes, bytes]]:
    """``headers`` with the run id `WorkflowChatTransport` needs, exposed to browsers.

    Stream ids made here are URL-safe base64, so the value needs no encoding.
    """
    return [*headers, (RUN_ID_HEADER, stream_id.encode("ascii")), _EXPOSE]


def _stop_body(raw: bytes) -> tuple[str | None, dict[str, Any] | None]:
    """The stop request's ``activeStreamId`` and ``assistantMessage`` (an empty body is
    ``{}``, as the AI SDK docs' route takes it).

    Raises:
        _StopRefused: not a JSON object, or a field of the wrong type.
    """
    if not raw.strip():
        return None, None
    try:
        body = json.loads(raw)
    except ValueError:
        raise _StopRefused("the body must be JSON") from None
    if not isinstance(body, dict):
        raise _StopRefused("the body must be a JSON object")
    expected, message = body.get("activeStreamId"), body.get("assistantMessage")
    if expected is not None and not isinstance(expected, str):
        raise _StopRefused("activeStreamId must be a string")
    if message is not None and not isinstance(message, dict):
        raise _StopRefused("assistantMessage must be an object")
    return expected, message


def _new_message_id() -> str:
    return f"msg-{secrets.token_urlsafe(12)}"


def _continued_id(messages: list[Any]) -> str | None:
    """The id of the assistant message a request continues (tool results, approvals):
    the AI SDK's server does the same, so the answer extends that message."""
    last = messages[-1] if messages else None
    if isinstance(last, dict) and last.get("role") == "assistant":
        message_id = last.get("id")
        if isinstance(message_id, str) and message_id:
            return message_id
    return None
