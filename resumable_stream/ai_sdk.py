"""Resumable chats for the Vercel AI SDK: what ``useChat({ resume: true })`` needs.

The AI SDK's ``DefaultChatTransport`` (``ai`` 5 and 6, UI message stream protocol v1)
talks to two routes, and `ChatStreams` serves both around the app's own generator of
UI message chunks:

* ``POST {api}`` with ``{id, messages, trigger, messageId, ...}``: the answer as SSE,
  ``data: <chunk JSON>`` per chunk and ``data: [DONE]`` at the end, with the protocol's
  headers (`UI_MESSAGE_STREAM_HEADERS`). The answer is stored as a resumable stream,
  and the chat's *active stream* is recorded for ``GET``.
* ``GET {api}/{chatId}/stream`` (the transport's ``reconnectToStream``): ``204`` if the
  chat has no active stream, else ``200`` with the active stream **from its first
  chunk**, then live to its end: the client rebuilds the message from the ``start``
  chunk, so a replay of the tail only would break it.
* ``DELETE {api}/{chatId}/stream`` (ours, for a stop button): stops the active stream
  from any process with `ResumableStreamContext.stop_stream`; every reader's response
  then ends with ``text-end`` for the text still open, an ``abort`` chunk and
  ``[DONE]``, and a later ``GET`` answers ``204``. With ``allow_delete=True``,
  ``DELETE {api}/{chatId}/stream?delete=1`` deletes the active answer's stream instead
  (`ChatStreams.delete`): ``204``; without the opt-in it gets ``405``.
* With ``owner=``, each answer's stream is bound to the owner of the ``POST`` that made
  it; a ``GET`` or ``DELETE`` by anyone else (or by nobody) gets exactly what a chat with
  no active answer gets (``204``), so an answer is never confirmed to another user.

Decisions worth knowing:

* **The active-stream pointer** lives in the context's own backend, as a tiny stream
  named ``ai-sdk:chat:<chatId>`` used as a register: an append-only log of stream ids
  ("" once cleared) whose last entry is the value. Every process appends with one
  well-known token, so the backend's atomic append-at-index (the contract's invariant
  2) makes it a compare-and-set: a write that lost a race is refused and retried. It
  expires ``pointer_ttl`` seconds after its last write (the context's ``ttl`` by
  default) and grows by two short entries per answer. A ``POST`` sets it once its stream
  exists and before answering; the stream's end (done, failed, stopped) clears it only if
  it still names that stream, so a newer ``POST`` of the same chat is never cleared by an
  older one. ``GET`` also checks the stream itself, so a pointer left behind by a dead
  process answers ``204`` too.
* **Message ids**: the ``start`` chunk always carries a ``messageId`` (the app's, or
  one made here: the id of the assistant message being continued, else a new one), so a
  client that resumes replaces its partial message instead of appending a second copy.
* **The end of every response is well-formed**: the stored stream ends with
  ``[DONE]``; an app whose generator raises gets an ``error`` chunk (its text from
  ``on_error``, "An error occurred." by default, as the AI SDK masks errors) and
  ``[DONE]``; a stopped stream (stored without ``[DONE]``, since the producer stops
  pulling at once) gets ``text-end``/``reasoning-end`` for the parts still open,
  ``abort`` and ``[DONE]`` added on the way out, the same for every reader; a stream
  that failed in storage or lost its producer gets ``error`` and ``[DONE]``. Only a
  backend that goes away mid-response aborts the response, so the client retries.
* SSE events carry ``id:`` lines and quiet streams get ``: ping`` comments, as
  everywhere in this package; the AI SDK's parser (``eventsource-parser``) follows the
  SSE spec and ignores both. The ``X-Stream-Id`` header names the stored stream, so the
  generic `resumable_stream.asgi.ResumeEndpoint` can serve it too.
* If the backend is down when a ``POST`` comes, the answer streams without being
  stored (a warning is logged): the chat works, it just cannot be resumed. At
  ``max_streams`` a ``POST`` gets ``503`` (``Retry-After: 1``) and the chat's running
  answer, if any, stays its active stream; at ``max_followers`` a ``GET`` gets ``503``; an
  answer cut at ``max_stream_bytes`` ends with an ``error`` chunk.
"""

from __future__ import annotations

import inspect
import json
import logging
import secrets
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Callable,
    Mapping,
)
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio

from ._context import ResumableStreamContext
from ._exceptions import (
    BackendUnavailable,
    InvalidArgument,
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
    path_segments,
    pump,
    request_owner,
    stream_headers,
)
from ._http import plain_response as _plain
from ._http import wait_disconnect as _disconnected
from ._reader import ResumableStream
from ._sse import EventDecoder, with_id
from ._types import StreamStatus
from .asgi import DEFAULT_PING_INTERVAL, Authorize, new_stream_id, wants_delete
from .backends._protocol import Backend, StaleProducer

__all__ = [
    "DONE",
    "UI_MESSAGE_STREAM_HEADERS",
    "ChatHandler",
    "ChatRequest",
    "ChatStreams",
    "FinishReason",
    "UIMessageChunk",
    "abort_chunk",
    "encode_chunk",
    "error_chunk",
    "finish_chunk",
    "finish_step_chunk",
    "start_chunk",
    "start_step_chunk",
    "text_chunks",
    "text_delta_chunk",
    "text_end_chunk",
    "text_start_chunk",
]

logger = logging.getLogger("resumable_stream")

UIMessageChunk = dict[str, Any]
"""One chunk of the UI message stream protocol, as a JSON-ready dict with a ``type``."""

FinishReason = Literal["stop", "length", "content-filter", "tool-calls", "error", "other"]
"""Why a model stopped, as the ``finish`` chunk's ``finishReason`` says it."""

UI_MESSAGE_STREAM_HEADERS: Mapping[str, str] = {
    "content-type": "text/event-stream",
    "cache-control": "no-cache",
    "x-vercel-ai-ui-message-stream": "v1",
    "x-accel-buffering": "no",
}
"""The headers of a UI message stream response (the AI SDK's own, less ``connection``,
which is the server's business, and forbidden in HTTP/2)."""

DONE = "data: [DONE]\n\n"
"""The event that ends a UI message stream."""

_DONE_BYTES = DONE.encode("ascii")
DEFAULT_ERROR_TEXT = "An error occurred."
STOPPED = "stopped"
"""The ``reason`` of the ``abort`` chunk that ends a stopped stream."""

# -- chunk builders ---------------------------------------------------------------------------


def start_chunk(message_id: str | None = None, *, metadata: Any = None) -> UIMessageChunk:
    """``start``: a new assistant message (``messageId`` names it, for resumes)."""
    chunk: UIMessageChunk = {"type": "start"}
    if message_id is not None:
        chunk["messageId"] = message_id
    if metadata is not None:
        chunk["messageMetadata"] = metadata
    return chunk


def start_step_chunk() -> UIMessageChunk:
    """``start-step``: one model call begins (the client adds a ``step-start`` part)."""
    return {"type": "start-step"}


def text_start_chunk(id: str) -> UIMessageChunk:
    """``text-start``: a text part named ``id`` begins."""
    return {"type": "text-start", "id": id}


def text_delta_chunk(id: str, delta: str) -> UIMessageChunk:
    """``text-delta``: ``delta`` is appended to the text part ``id``."""
    return {"type": "text-delta", "id": id, "delta": delta}


def text_end_chunk(id: str) -> UIMessageChunk:
    """``text-end``: the text part ``id`` is complete."""
    return {"type": "text-end", "id": id}


def finish_step_chunk() -> UIMessageChunk:
    """``finish-step``: the model call ends."""
    return {"type": "finish-step"}


def finish_chunk(
    finish_reason: FinishReason | None = None, *, metadata: Any = None
) -> UIMessageChunk:
    """``finish``: the assistant message is complete."""
    chunk: UIMessageChunk = {"type": "finish"}
    if finish_reason is not None:
        chunk["finishReason"] = finish_reason
    if metadata is not None:
        chunk["messageMetadata"] = metadata
    return chunk


def error_chunk(error_text: str) -> UIMessageChunk:
    """``error``: the client's ``onError`` gets ``Error(error_text)``; its status is "error"."""
    return {"type": "error", "errorText": error_text}


def abort_chunk(reason: str | None = None) -> UIMessageChunk:
    """``abort``: the answer was stopped before its end."""
    chunk: UIMessageChunk = {"type": "abort"}
    if reason is not None:
        chunk["reason"] = reason
    return chunk


def encode_chunk(chunk: Mapping[str, Any]) -> str:
    """One SSE event: ``data: <compact JSON>`` and a blank line (JSON has no raw newline)."""
    return f"data: {json.dumps(chunk, separators=(',', ':'), ensure_ascii=False)}\n\n"


async def text_chunks(
    deltas: AsyncIterable[str | None],
    *,
    message_id: str | None = None,
    text_id: str = "text-1",
    finish_reason: FinishReason | None = "stop",
) -> AsyncGenerator[UIMessageChunk, None]:
    """The UI message chunks of a plain text answer, from its text deltas.

    ``start``, ``start-step``, ``text-start``, one ``text-delta`` per non-empty delta
    (OpenAI-style streams send empty ones and ``None``), ``text-end``, ``finish-step``
    and ``finish``: what the AI SDK's own text transport makes of a text stream.

    Args:
        deltas: the model's text pieces, in order.
        message_id: for the ``start`` chunk; `ChatStreams` fills it in if None.
        text_id: the text part's id.
        finish_reason: for the ``finish`` chunk.

    Raises:
        Exception: whatever ``deltas`` raises (`ChatStreams` turns it into an ``error``
            chunk).
    """
    yield start_chunk(message_id)
    yield start_step_chunk()
    yield text_start_chunk(text_id)
    async for delta in deltas:
        if delta:
            yield text_delta_chunk(text_id, delta)
    yield text_end_chunk(text_id)
    yield finish_step_chunk()
    yield finish_chunk(finish_reason)


# -- the request the app's handler gets ---------------------------------------------------------


@dataclass(frozen=True)
class ChatRequest:
    """A ``POST {api}`` request of ``DefaultChatTransport``, as the app's handler sees it.

    Attributes:
        id: the chat's id.
        messages: the chat's UI messages, as sent (dicts with ``id``, ``role``, ``parts``).
        trigger: ``"submit-message"`` or ``"regenerate-message"`` (None if absent).
        message_id: the request's ``messageId`` (the message to regenerate or replace).
        response_message_id: the id the answer's ``start`` chunk carries (unless the
            handler's own ``start`` chunk names one): store the answer under it.
        body: the whole JSON body, with any fields the transport's ``body`` option adds.
        scope: the ASGI scope (headers, client, path...).
    """

    id: str
    messages: list[dict[str, Any]]
    trigger: str | None
    message_id: str | None
    response_message_id: str
    body: dict[str, Any] = field(repr=False)
    scope: Scope = field(repr=False)

    @property
    def last_user_text(self) -> str:
        """The text parts of the last user message, joined ("" if there is none)."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                parts = message.get("parts") or []
                return "".join(
                    str(p.get("text", "")) for p in parts
                    if isinstance(p, dict) and p.get("type") == "text"
                )  # fmt: skip
        return ""


ChatHandler = Callable[
    [ChatRequest],
    AsyncIterable[Mapping[str, Any] | str] | Awaitable[AsyncIterable[Mapping[str, Any] | str]],
]
"""``handler(request)``: the answer, as an async iterable of UI message chunks (dicts)
or of SSE text (``data: ...`` events, split anywhere); an ``async def`` returning one
works too. ``[DONE]`` is added for it (one it yields is dropped)."""


# -- the active-stream pointer ------------------------------------------------------------------

_POINTER_TOKEN = "resumable-stream ai-sdk chat pointer"  # a name, not a secret
_POINTER_PREFIX = "ai-sdk:chat:"
_POINTER_TRIES = 16  # appends lost to other writers before giving up (a few per answer)
_TAIL_PAGE = 64
MAX_CHAT_ID_LENGTH = 200


class _ActiveStreams:
    """Per chat, the id of its active stream, in the backend (see the module docstring).

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


# -- chunks in, SSE out -------------------------------------------------------------------------


def _checked(chunk: object) -> UIMessageChunk:
    if not isinstance(chunk, Mapping) or not isinstance(chunk.get("type"), str):
        raise TypeError(f"a UI message chunk is a dict with a str 'type', not {chunk!r:.80}")
    return dict(chunk)


async def _ui_chunks(
    source: AsyncIterable[Mapping[str, Any] | str],
) -> AsyncGenerator[UIMessageChunk, None]:
    """The handler's output as chunk dicts: dicts as they are, SSE text parsed.

    The handler's generator is closed when this one is, so its ``finally`` runs at once
    (a stopped or cut stream stops pulling from it).
    """
    decoder = EventDecoder()
    try:
        async for item in source:
            if isinstance(item, Mapping):
                yield _checked(item)
            elif isinstance(item, str):
                for event in decoder.feed(item):
                    if event.data != "[DONE]":
                        yield _checked(json.loads(event.data))
            else:
                kind = type(item).__name__
                raise TypeError(f"a chat handler yields dicts or SSE text, not {kind}")
        for event in decoder.feed("\n\n"):  # a last event without its blank line
            if event.data != "[DONE]":
                yield _checked(json.loads(event.data))
    finally:
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()


_PART_ENDS = {"text-start": "text-end", "reasoning-start": "reasoning-end"}


class _OpenParts:
    """The text and reasoning parts a response has started and not ended, in order."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, str], None] = {}

    def see(self, event: bytes) -> None:
        if not event.startswith(b"data: {"):
            return
        try:
            chunk = json.loads(event[len(b"data: ") :])
        except ValueError:
            return
        kind, part = chunk.get("type"), chunk.get("id")
        if not isinstance(part, str):
            return
        if kind in _PART_ENDS:
            self._open[(_PART_ENDS[kind], part)] = None
        elif kind in ("text-end", "reasoning-end"):
            self._open.pop((kind, part), None)

    def closing_chunks(self) -> list[UIMessageChunk]:
        return [{"type": kind, "id": part} for kind, part in self._open]


# -- the routes -----------------------------------------------------------------------------------


class ChatStreams:
    """The AI SDK's chat routes around an app's handler, with resumable answers.

    Serve ``chat_endpoint`` for ``POST {api}`` and ``stream_endpoint`` for ``GET`` and
    ``DELETE`` on ``{api}/{chat_id}/stream`` (both are ASGI apps: Starlette and FastAPI
    take them as ``Route`` endpoints, Litestar handlers can return them)::

        chats = ChatStreams(ctx, answer)
        app.add_route("/api/chat", chats.chat_endpoint, methods=["POST"])
        app.add_route("/api/chat/{chat_id}/stream", chats.stream_endpoint,
                      methods=["GET", "DELETE"])

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
            ``/stream`` is used).
        allow_delete: serve ``DELETE {api}/{chat_id}/stream?delete=1`` (`delete`, then
            ``204``); off by default, when it answers ``405``.
        owner: ``owner(scope) -> str | None`` (or awaitable): bind each answer to the
            owner of its ``POST``; a ``GET`` or ``DELETE`` of it by anyone else (or by
            None) answers ``204``, as for a chat with no active answer.
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
    ) -> None:
        if pointer_ttl is not None and not pointer_ttl > 0:
            raise InvalidArgument("pointer_ttl must be > 0 seconds")
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
        self._active = _ActiveStreams(context.backend, pointer_ttl or context.ttl)
        self.chat_endpoint = _Endpoint(self._serve_chat)
        """ASGI app for ``POST {api}``."""
        self.stream_endpoint = _Endpoint(self._serve_stream)
        """ASGI app for ``GET`` (resume) and ``DELETE`` (stop) on ``{api}/{chat_id}/stream``."""

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
        gets ``text-end`` for open parts, ``abort`` and ``[DONE]``.

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
        await self._active.clear(chat_id, stream_id)
        return await self.context.stop_stream(stream_id)

    async def delete(self, chat_id: str) -> bool:
        """Delete the chat's active answer from storage (a user deleted the chat).

        The pointer is cleared first, then the stream deleted with
        `ResumableStreamContext.delete_stream`: its producer stops wherever it runs, every
        reader's response ends with an ``error`` chunk and ``[DONE]``, and a resume
        answers ``204``. Answers that already ended are no longer tracked by the chat;
        they expire with their ``finished_ttl``.

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
            raw = await _read_body(receive, self.max_body_bytes)
        except _ClientGone:
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
        if not _valid_chat_id(chat_id) or not isinstance(messages, list):
            await _plain(send, 400, "the body needs the chat's id and its messages")
            return
        assert isinstance(body, dict)
        assert isinstance(chat_id, str)
        if not await _allowed(self.authorize, scope, chat_id):
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
        )
        headers = [(k.encode(), v.encode()) for k, v in UI_MESSAGE_STREAM_HEADERS.items()]
        owner = await request_owner(self.owner, scope)
        stream_id = new_stream_id()
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
                metadata=http_metadata(200, headers, owner),
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
            await self._stream_directly(request, headers, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": stream_headers(headers, stream_id, "sse"),
            }
        )
        await pump(
            reader, send, lambda: _disconnected(receive),
            mode="sse", ping_interval=self.ping_interval, body=self._response_body(reader),
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
            async with aclosing(_ui_chunks(source)) as chunks:
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
            yield encode_chunk(error_chunk(self._error_text(exc)))
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

    async def _response_body(self, reader: ResumableStream) -> AsyncGenerator[bytes, None]:
        """The stored events with their ids, plus a proper end if the stored stream has
        none (see the module docstring)."""
        parts = _OpenParts()
        done = False
        tail: list[UIMessageChunk] = []
        try:
            async for index, chunk in reader.indexed():
                event = chunk.encode("utf-8") if isinstance(chunk, str) else chunk
                if event == _DONE_BYTES:
                    done = True
                else:
                    parts.see(event)
                yield with_id(event, index)
        except (StreamFailed, ProducerLost, StreamDeleted) as exc:
            if not done:
                tail = [error_chunk(self._error_text(exc))]
        else:
            if not done:  # stopped: the producer ended the stream where it was
                tail = [*parts.closing_chunks(), abort_chunk(STOPPED)]
        if tail:
            for ending in tail:
                yield encode_chunk(ending).encode("utf-8")
            yield _DONE_BYTES

    async def _stream_directly(
        self, request: ChatRequest, headers: list[tuple[bytes, bytes]], receive: Receive, send: Send
    ) -> None:
        """The answer without storage: the handler stops when the client goes."""
        await send({"type": "http.response.start", "status": 200, "headers": headers})

        async def watch(scope: anyio.CancelScope) -> None:
            await _disconnected(receive)
            scope.cancel()

        async with anyio.create_task_group() as tg, aclosing(self._events(request)) as events:
            tg.start_soon(watch, tg.cancel_scope)
            try:
                async for event in events:
                    body = event.encode("utf-8")
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except OSError:
                pass  # the client went away while we were sending
            finally:
                tg.cancel_scope.cancel()

    # -- GET / DELETE {api}/{chat_id}/stream ------------------------------------------------------

    def _chat_id(self, scope: Scope) -> str | None:
        params = scope.get("path_params") or {}
        value = params.get(self.path_param)
        if value is None:
            try:
                segments = path_segments(scope)  # decoded once: a chat id may hold "%"
            except ValueError:
                return None  # not UTF-8: no chat has that id
            if len(segments) >= 2 and segments[-1] == "stream":
                value = segments[-2]
        return value if _valid_chat_id(value) else None

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
        chat_id = self._chat_id(scope)
        if chat_id is None:
            await _plain(send, 404, "no such chat")
            return
        if not await _allowed(self.authorize, scope, chat_id):
            await _plain(send, 403, "forbidden")
            return
        requester = await request_owner(self.owner, scope)
        try:
            if method == "DELETE":
                stream_id = await self._active.get(chat_id)
                if stream_id is None or not await self._may(stream_id, requester):
                    await _no_content(send)  # no answer, or not this requester's
                    return
                if purge:
                    await self._delete(chat_id, stream_id)
                    await _no_content(send)  # deleted, or nothing to delete: gone either way
                elif await self._stop(chat_id, stream_id):
                    await _plain(send, 202, "stopping")
                else:
                    await _no_content(send)  # no answer running
                return
            await self._resume(scope, receive, send, chat_id, requester)
        except BackendUnavailable as exc:
            logger.warning("chat %r: storage unavailable (%s)", chat_id, exc)
            await _plain(send, 503, "stream storage is unavailable", [(b"retry-after", b"1")])

    async def _resume(
        self, scope: Scope, receive: Receive, send: Send, chat_id: str, requester: str | None
    ) -> None:
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
                    await _no_content(send)  # a 503 would confirm another's answer
                    return
                logger.warning("chat %r: not resumed (%s)", chat_id, describe(exc))
                await _plain(send, 503, "too many readers", [(b"retry-after", b"1")])
                return
        if reader is None:
            await _no_content(send)  # no answer running: nothing, or it finished
            return
        assert stream_id is not None
        if self.owner is not None and not may_access(reader.metadata, requester):
            await reader.aclose()
            await _no_content(send)  # another's answer reads as none at all
            return
        if reader.status is not StreamStatus.RUNNING:  # its producer died: no active stream
            await reader.aclose()
            await _no_content(send)
            return
        headers = [(k.encode(), v.encode()) for k, v in UI_MESSAGE_STREAM_HEADERS.items()]
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": stream_headers(headers, stream_id, "sse"),
            }
        )
        if _is_head(scope):
            await reader.aclose()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await pump(
            reader, send, lambda: _disconnected(receive),
            mode="sse", ping_interval=self.ping_interval, body=self._response_body(reader),
        )  # fmt: skip

    def _error_text(self, exc: BaseException) -> str:
        if self.on_error is None:
            return DEFAULT_ERROR_TEXT
        try:
            return str(self.on_error(exc))
        except Exception as hook_error:
            logger.warning("on_error raised %s", describe(hook_error))
            return DEFAULT_ERROR_TEXT


class _Endpoint:
    """An ASGI app calling one coroutine: Starlette takes a bound method for a
    request/response function, so the routes are objects of their own."""

    __slots__ = ("_serve",)

    def __init__(self, serve: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self._serve = serve

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError("the AI SDK chat routes serve HTTP only")
        await self._serve(scope, receive, send)


# -- small helpers --------------------------------------------------------------------------------


def _new_message_id() -> str:
    return f"msg-{secrets.token_urlsafe(12)}"


def _valid_chat_id(value: object) -> bool:
    """A non-empty str of at most `MAX_CHAT_ID_LENGTH` that is valid text: a lone
    surrogate (``json.loads`` hands them out) names no key, so it is a ``400``."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_CHAT_ID_LENGTH:
        return False
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


def _continued_id(messages: list[Any]) -> str | None:
    """The id of the assistant message a request continues (tool results, approvals):
    the AI SDK's server does the same, so the answer extends that message."""
    last = messages[-1] if messages else None
    if isinstance(last, dict) and last.get("role") == "assistant":
        message_id = last.get("id")
        if isinstance(message_id, str) and message_id:
            return message_id
    return None


def _is_head(scope: Scope) -> bool:
    return bool(scope.get("method") == "HEAD")


async def _allowed(authorize: Authorize | None, scope: Scope, chat_id: str) -> bool:
    if authorize is None:
        return True
    verdict = authorize(scope, chat_id)
    if inspect.isawaitable(verdict):
        verdict = await verdict
    return bool(verdict)


class _ClientGone(Exception):
    """The client disconnected before its request body was read."""


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None if it is larger than ``limit`` bytes."""
    pieces: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        if message["type"] != "http.request":
            continue
        piece = message.get("body", b"")
        size += len(piece)
        if size > limit:
            return None
        pieces.append(piece)
        if not message.get("more_body", False):
            return b"".join(pieces)


async def _no_content(send: Send) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
