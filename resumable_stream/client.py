"""A client that resumes by itself, on httpx (the ``client`` extra).

It starts a stream (usually a POST), remembers the ``X-Stream-Id`` the server sends,
and when the connection breaks it asks the resume endpoint for the rest, from the
exact position it reached: the last SSE event id (``Last-Event-ID``), else the number
of characters it delivered (``?resumeAt=``). So the messages it delivers are the
server's, each exactly once.

Two ways to use it::

    client = ResumableStreamClient(base_url="http://127.0.0.1:8000")
    async with client.stream("POST", "/api/chat/a/t", json={...}) as messages:
        async for message in messages:
            print(message)

    # or, like the TypeScript original, with callbacks:
    client = ResumableStreamClient(on_message=print, on_complete=done, max_retries=5)
    await client.start("/api/chat/a/t", json={...})

A message is the ``data`` of an SSE event (``StreamMessage.event`` names its type),
or a piece of text for other bodies. Retries: network errors, incomplete bodies and
``503`` are retried up to ``max_retries`` times in a row, ``retry_delay`` apart with
exponential backoff and jitter (the SSE ``retry:`` field replaces ``retry_delay``);
the budget resets whenever a message arrives. ``404`` and ``403`` are final
(`ResumeFailed`). A resume's ``410`` means nothing is left: a normal end, unless it
carries ``X-Stream-Status: failed`` (the stream failed on the server: its source
raised, its producer's process died, its storage was lost), which raises
`StreamFailedError`, as does a resume's ``413`` (the stream was cut at its size limit).
A response cut because its stream failed is aborted by the server, never ended, so
the client resumes and gets that failure: a failed stream never reads as complete.
"""

from __future__ import annotations

import codecs
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import anyio

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "resumable_stream.client needs httpx: pip install 'resumable-streams[client]'"
    ) from exc

from ._exceptions import ResumableStreamError
from ._sse import EventDecoder, is_event_stream

__all__ = ["ResumableStreamClient", "ResumeFailed", "StreamFailedError", "StreamMessage"]

logger = logging.getLogger("resumable_stream.client")

_FINAL = {403, 404}
_RETRY = {502, 503, 504}


@dataclass(frozen=True)
class StreamMessage:
    """One message: an SSE event's data (``event`` and ``id`` set), or body text."""

    data: str
    event: str | None = None
    id: str | None = None


class ResumeFailed(ResumableStreamError):
    """The stream cannot be (re)started: a final status, or the retries ran out.

    Attributes:
        status: the HTTP status of the last answer, or None after network errors.
        stream_id: the stream's id if the server sent one.
    """

    def __init__(self, message: str, *, status: int | None, stream_id: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.stream_id = stream_id


class StreamFailedError(ResumeFailed):
    """The stream failed on the server; everything delivered before it is its clean prefix.

    The server-side error text is not sent (it may hold the app's internals); the
    server's log has it.

    Attributes:
        reason: the failure's kind, the name of the server's exception:
            ``"StreamFailed"`` (the producer's source raised, the stream's storage was
            lost, or its process shut down before it ended), ``"ProducerLost"`` (the
            producer's process died) or ``"StreamTooLarge"`` (cut at
            ``max_stream_bytes``; the status is then ``413``).
        status: ``410`` or ``413``.
        stream_id: the stream's id.
    """

    def __init__(self, message: str, *, reason: str, status: int, stream_id: str | None) -> None:
        super().__init__(message, status=status, stream_id=stream_id)
        self.reason = reason


class _Interrupted(Exception):
    """The connection broke mid-body; resume."""


class ResumableStreamClient:
    """Start a stream and follow it to its end across broken connections.

    Args:
        on_message, on_error, on_complete: callbacks for `start` and `resume`
            (sync or async); ``on_message`` gets each message's data.
        max_retries: attempts in a row without progress before giving up.
        retry_delay: seconds before the first retry; doubles per attempt (with
            jitter) up to ``max_retry_delay``.
        resume_path: the resume endpoint, with ``{stream_id}``.
        base_url, headers, timeout: for the httpx client made when ``client`` is None.
        client: an ``httpx.AsyncClient`` to use (not closed by this object).
    """

    def __init__(
        self,
        *,
        on_message: Callable[[str], Any] | None = None,
        on_error: Callable[[BaseException], Any] | None = None,
        on_complete: Callable[[], Any] | None = None,
        max_retries: int = 5,
        retry_delay: float = 2.0,
        max_retry_delay: float = 30.0,
        resume_path: str = "/api/chat/resume/{stream_id}",
        base_url: str = "",
        headers: dict[str, str] | None = None,
        timeout: float | None = 30.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if max_retries < 0 or retry_delay < 0:
            raise ValueError("max_retries and retry_delay must be >= 0")
        if "{stream_id}" not in resume_path:
            raise ValueError("resume_path must contain '{stream_id}'")
        self.on_message = on_message
        self.on_error = on_error
        self.on_complete = on_complete
        self.max_retries = max_retries
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.resume_path = resume_path
        self._client = client
        self._client_args: dict[str, Any] = {
            "base_url": base_url, "headers": headers, "timeout": timeout,
        }
        self.stream_id: str | None = None
        self.last_event_id: str | None = None
        self.characters = 0  # characters delivered, for non-SSE bodies
        self.sse: bool | None = None
        self.attempts = 0  # retries in a row without progress
        self.completed = False
        self._retry_hint: int | None = None  # the SSE retry: field, in ms
        self._scope: anyio.CancelScope | None = None

    # -- the callback form ----------------------------------------------------------------

    async def start(self, url: str, *, method: str = "POST", **request: Any) -> None:
        """Start a stream and deliver it to the callbacks until it ends.

        ``request`` goes to httpx (``json=``, ``content=``, ``headers=``...). Errors
        go to ``on_error`` (and are not raised) if it is set, else they are raised.
        """
        await self._run(self.stream(method, url, **request))

    async def resume(self, stream_id: str, *, last_event_id: str | None = None,
                     resume_at: int | None = None) -> None:
        """Follow an existing stream (say, after a page reload) with the callbacks."""
        await self._run(self.follow(stream_id, last_event_id=last_event_id, resume_at=resume_at))

    def abort(self) -> None:
        """Stop reading (the server's producer keeps going; see `stop` for that)."""
        if self._scope is not None:
            self._scope.cancel()

    async def stop(self) -> int:
        """Ask the server to stop the stream's producer (``DELETE``); returns the status."""
        if self.stream_id is None:
            raise ResumeFailed("no stream to stop", status=None, stream_id=None)
        async with self._http() as http:
            response = await http.delete(self._resume_url())
            return response.status_code

    async def _run(self, form: Any) -> None:
        with anyio.CancelScope() as scope:
            self._scope = scope
            try:
                async with form as messages:
                    async for message in messages:
                        await _call(self.on_message, message.data)
                        if scope.cancel_called:
                            return  # aborted: deliver nothing more, even if buffered
                await _call(self.on_complete)
            except Exception as exc:
                if self.on_error is None:
                    raise
                await _call(self.on_error, exc)
            finally:
                self._scope = None

    # -- the iterator form ----------------------------------------------------------------

    @asynccontextmanager
    async def stream(
        self, method: str, url: str, **request: Any
    ) -> AsyncIterator[AsyncIterator[StreamMessage]]:
        """``async with client.stream("POST", url, json=...) as messages:``."""
        async with self._http() as http:
            yield self._messages(http, (method, url, request))

    @asynccontextmanager
    async def follow(
        self, stream_id: str, *, last_event_id: str | None = None, resume_at: int | None = None
    ) -> AsyncIterator[AsyncIterator[StreamMessage]]:
        """Like `stream`, for a stream that already exists."""
        self.stream_id = stream_id
        self.last_event_id = last_event_id
        self.characters = resume_at or 0
        known = last_event_id is not None or resume_at is not None
        self.sse = (last_event_id is not None) if known else None
        async with self._http() as http:
            yield self._messages(http, None)

    @asynccontextmanager
    async def _http(self) -> AsyncIterator[httpx.AsyncClient]:
        if self._client is not None:
            yield self._client
        else:
            args = {k: v for k, v in self._client_args.items() if v is not None}
            async with httpx.AsyncClient(**args) as http:
                yield http

    def _resume_url(self) -> str:
        assert self.stream_id is not None
        return self.resume_path.replace("{stream_id}", quote(self.stream_id, safe=""))

    async def _messages(
        self, http: httpx.AsyncClient, first: tuple[str, str, dict[str, Any]] | None
    ) -> AsyncIterator[StreamMessage]:
        self.completed = False
        self.attempts = 0
        retry_ms: int | None = None
        while True:
            if first is not None:
                method, url, request = first
                first = None
                logger.info("starting a stream: %s %s", method, url)
                builder = http.build_request(method, url, **request)
                starting = True
            else:
                builder = http.build_request(
                    "GET", self._resume_url(), headers=self._position_headers(),
                    params=self._position_params(),
                )
                starting = False
            try:
                response = await http.send(builder, stream=True)
            except httpx.TransportError as exc:
                if starting or self.stream_id is None:
                    raise ResumeFailed(
                        f"could not start the stream: {exc}", status=None, stream_id=None
                    ) from exc
                retry_ms = await self._backoff(f"network error: {exc}", retry_ms, None)
                continue
            try:
                status = response.status_code
                if starting:
                    raw = response.headers.get("x-stream-id")
                    # The header holds the id percent-encoded (UTF-8): decode it once.
                    self.stream_id = unquote(raw, errors="strict") if raw else raw
                    if self.stream_id:
                        logger.info("stream id %s", self.stream_id)
                if not starting and (status == 413 or (
                    status == 410 and response.headers.get("x-stream-status") == "failed"
                )):
                    raise await self._failure(response)
                if status == 410 and not starting:
                    logger.info("stream %s: nothing left (410): complete", self.stream_id)
                    self.completed = True
                    return
                if status >= 400:
                    await response.aread()
                    if starting or status in _FINAL or status not in _RETRY:
                        raise ResumeFailed(
                            f"{'start' if starting else 'resume'} failed with {status}: "
                            f"{response.text[:200]}",
                            status=status, stream_id=self.stream_id,
                        )
                    retry_ms = await self._backoff(f"status {status}", retry_ms, status)
                    continue
                if self.sse is None:
                    self.sse = is_event_stream(response.headers.get("content-type"))
                try:
                    async for message in self._body(response):
                        self.attempts = 0  # progress resets the retry budget
                        yield message
                    self.completed = True
                    return
                except _Interrupted as exc:
                    retry_ms = self._retry_hint or retry_ms
                    if self.stream_id is None:
                        raise ResumeFailed(
                            "the connection broke and the server sent no X-Stream-Id",
                            status=status, stream_id=None,
                        ) from exc
                    retry_ms = await self._backoff(f"connection broke: {exc}", retry_ms, None)
            finally:
                await response.aclose()

    async def _failure(self, response: httpx.Response) -> StreamFailedError:
        """The typed error for a resume's ``410 failed`` or ``413``."""
        await response.aread()
        default = "StreamTooLarge" if response.status_code == 413 else "StreamFailed"
        reason = response.headers.get("x-stream-error") or default
        logger.warning(
            "stream %s: failed on the server (%s, %d)", self.stream_id, reason,
            response.status_code,
        )
        return StreamFailedError(
            f"stream {self.stream_id} failed ({reason}): {response.text[:200]}",
            reason=reason, status=response.status_code, stream_id=self.stream_id,
        )

    async def _body(self, response: httpx.Response) -> AsyncIterator[StreamMessage]:
        decoder = EventDecoder() if self.sse else None
        text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            async for raw in response.aiter_raw():
                piece = text.decode(raw)
                if decoder is None:
                    if piece:
                        self.characters += len(piece)
                        yield StreamMessage(piece)
                    continue
                for event in decoder.feed(piece):
                    if decoder.retry is not None:
                        self._retry_hint = decoder.retry
                    self.last_event_id = event.id
                    yield StreamMessage(event.data, event.event, event.id)
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise _Interrupted(str(exc) or type(exc).__name__) from exc

    def _position_headers(self) -> dict[str, str]:
        if self.sse and self.last_event_id is not None:
            return {"Last-Event-ID": self.last_event_id}
        return {}

    def _position_params(self) -> dict[str, str]:
        if self.sse and self.last_event_id is not None:
            return {}
        # Non-SSE bodies resume by characters; an SSE client with no event yet asks
        # for the whole stream with resumeAt=0.
        return {"resumeAt": str(self.characters if not self.sse else 0)}

    async def _backoff(self, why: str, retry_ms: int | None, status: int | None) -> int | None:
        self.attempts += 1
        if self.attempts > self.max_retries:
            raise ResumeFailed(
                f"gave up after {self.max_retries} retries ({why})",
                status=status, stream_id=self.stream_id,
            )
        base = retry_ms / 1000 if retry_ms is not None else self.retry_delay
        delay = min(self.max_retry_delay, base * 2 ** (self.attempts - 1))
        delay *= random.uniform(0.5, 1.0)  # jitter: clients cut together do not retry together
        logger.warning(
            "stream %s: %s; retry %d/%d in %.2f s",
            self.stream_id, why, self.attempts, self.max_retries, delay,
        )
        await anyio.sleep(delay)
        return retry_ms


async def _call(callback: Callable[..., Any] | None, *args: Any) -> None:
    if callback is None:
        return
    result = callback(*args)
    if isinstance(result, Awaitable):
        await result
