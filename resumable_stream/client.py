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

Where it resumes: the ``Location`` of the last streaming (``2xx``) answer if the server
sent one (resolved against that answer's URL; a ``Location`` on another origin is
refused, logged, and the template used instead), else ``resume_path``. With
``base_url`` set, httpx joins ``resume_path`` onto it as before; without, it is resolved
(`urllib.parse.urljoin`) against the URL that answered the start, so a client started
with an absolute URL resumes on the same origin. Bad arguments raise `InvalidArgument`
(a ``ValueError``).
"""

from __future__ import annotations

import codecs
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urljoin

import anyio

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "resumable_stream.client needs httpx: pip install 'resumable-streams[client]'"
    ) from exc

from ._exceptions import InvalidArgument, ResumableStreamError
from ._sse import EventDecoder, is_event_stream

__all__ = ["ResumableStreamClient", "ResumeFailed", "StreamFailedError", "StreamMessage"]

logger = logging.getLogger("resumable_stream.client")

_FINAL = {403, 404}
_RETRY = {502, 503, 504}
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    """Scheme, host and port (the default port spelled out): what "same origin" compares."""
    return url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme)


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
        resume_path: the resume endpoint, with ``{stream_id}``: a path (joined onto
            ``base_url`` if set, else resolved against the URL the stream started
            at) or an absolute URL. A same-origin ``Location`` sent by the server
            takes its place.
        base_url, headers, timeout: for the httpx client made when ``client`` is None.
        client: an ``httpx.AsyncClient`` to use (not closed by this object).

    Raises:
        InvalidArgument: a negative ``max_retries``, ``retry_delay`` or
            ``max_retry_delay``, or a ``resume_path`` without ``{stream_id}``.
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
        if max_retries < 0 or retry_delay < 0 or max_retry_delay < 0:
            raise InvalidArgument("max_retries, retry_delay and max_retry_delay must be >= 0")
        if "{stream_id}" not in resume_path:
            raise InvalidArgument("resume_path must contain '{stream_id}'")
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
        # The absolute URL that answered the last start: resume_path is resolved
        # against it when there is no base_url. Kept for `follow` on the same client.
        self._started_at: httpx.URL | None = None
        # The server's same-origin Location for this stream, absolute: resumes go there.
        self._location: httpx.URL | None = None

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
        """Ask the server to stop the stream's producer (``DELETE``); returns the status.

        The ``DELETE`` goes to ``resume_path`` (our server's stop route), never to a
        ``Location``: a third-party server's resume URL may give ``DELETE`` another meaning.

        Raises:
            ResumeFailed: no stream id is known.
            InvalidArgument: as `follow`, the stop URL is not absolute.
        """
        if self.stream_id is None:
            raise ResumeFailed("no stream to stop", status=None, stream_id=None)
        async with self._http() as http:
            response = await http.delete(self._checked(http, self._template_url(http)))
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
        """Like `stream`, for a stream that already exists.

        It resumes at ``resume_path``: joined onto ``base_url``, else resolved against
        the URL the last `stream` of this client started at, unless it is absolute.

        Raises:
            InvalidArgument: an empty ``stream_id``, a negative ``resume_at``, or no way
                to make the resume URL absolute (no ``base_url``, no earlier start, a
                relative ``resume_path``) for the httpx client this object makes.
        """
        if not stream_id:
            raise InvalidArgument("stream_id must be a non-empty str")
        if resume_at is not None and resume_at < 0:
            raise InvalidArgument(f"resume_at must be >= 0, got {resume_at}")
        self.stream_id = stream_id
        self.last_event_id = last_event_id
        self.characters = resume_at or 0
        known = last_event_id is not None or resume_at is not None
        self.sse = (last_event_id is not None) if known else None
        self._location = None  # a Location belongs to the response that sent it
        async with self._http() as http:
            self._checked(http, self._template_url(http))
            yield self._messages(http, None)

    @asynccontextmanager
    async def _http(self) -> AsyncIterator[httpx.AsyncClient]:
        if self._client is not None:
            yield self._client
        else:
            args = {k: v for k, v in self._client_args.items() if v is not None}
            async with httpx.AsyncClient(**args) as http:
                yield http

    def _template_url(self, http: httpx.AsyncClient) -> httpx.URL:
        """``resume_path`` for this stream, made absolute where it can be.

        With a ``base_url`` the path stays relative: httpx joins it onto the base (keeping
        the base's own path prefix, which `urljoin` would drop). Without one it is
        resolved against the URL that answered the start, so the resume goes to the
        origin the stream came from.
        """
        assert self.stream_id is not None
        path = self.resume_path.replace("{stream_id}", quote(self.stream_id, safe=""))
        if http.base_url.is_absolute_url or self._started_at is None:
            return httpx.URL(path)
        return httpx.URL(urljoin(str(self._started_at), path))

    def _resume_url(self, http: httpx.AsyncClient) -> httpx.URL:
        """The server's Location if it sent one, else the template, with the position.

        The position goes into the query with ``copy_set_param``: httpx's ``params=``
        would replace a query the Location already has.
        """
        url = self._location if self._location is not None else self._template_url(http)
        for name, value in self._position_params().items():
            url = url.copy_set_param(name, value)
        return url

    def _checked(self, http: httpx.AsyncClient, url: httpx.URL) -> httpx.URL:
        """``url``, or `InvalidArgument` if the httpx client we made could never send it.

        A client passed in may have a transport that takes relative URLs (an
        ``ASGITransport``), so only ours is checked.
        """
        if self._client is None and not http.base_url.is_absolute_url and (
            not url.is_absolute_url
        ):
            raise InvalidArgument(
                f"cannot resume at {url}: give base_url, an absolute resume_path, or start "
                "the stream with this client from an absolute URL"
            )
        return url

    def _take_location(self, response: httpx.Response) -> None:
        """Resume at the response's ``Location`` from now on, if it names one on its origin.

        Cross-origin targets are refused: following them would send this stream's
        position (and the client's default headers) to a host the caller never chose.
        """
        raw = response.headers.get("location")
        if not raw:
            return
        target = httpx.URL(urljoin(str(response.url), raw))
        if not target.is_absolute_url or _origin(target) != _origin(response.url):
            self._location = None
            logger.warning(
                "stream %s: refused the Location %s (not on the origin of %s); "
                "resuming at resume_path", self.stream_id, raw, response.url,
            )
            return
        self._location = target

    async def _messages(
        self, http: httpx.AsyncClient, first: tuple[str, str, dict[str, Any]] | None
    ) -> AsyncIterator[StreamMessage]:
        self.completed = False
        self.attempts = 0
        retry_ms: int | None = None
        if first is not None:
            self._started_at = None
            self._location = None
        while True:
            if first is not None:
                method, url, request = first
                first = None
                logger.info("starting a stream: %s %s", method, url)
                builder = http.build_request(method, url, **request)
                starting = True
            else:
                builder = http.build_request(
                    "GET", self._resume_url(http), headers=self._position_headers()
                )
                starting = False
            try:
                response = await http.send(builder, stream=True)
            except httpx.TransportError as exc:
                if starting or not self._resumable():
                    raise ResumeFailed(
                        f"could not start the stream: {exc}", status=None, stream_id=None
                    ) from exc
                retry_ms = await self._backoff(f"network error: {exc}", retry_ms, None)
                continue
            try:
                status = response.status_code
                if starting:
                    if response.url.is_absolute_url:
                        self._started_at = response.url
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
                if 200 <= status < 300:
                    self._take_location(response)
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
                    if not self._resumable():
                        raise ResumeFailed(
                            "the connection broke and the server sent no X-Stream-Id "
                            "nor Location",
                            status=status, stream_id=None,
                        ) from exc
                    retry_ms = await self._backoff(f"connection broke: {exc}", retry_ms, None)
            finally:
                await response.aclose()

    def _resumable(self) -> bool:
        """A resume URL is known: a stream id for the template, or a Location."""
        return self.stream_id is not None or self._location is not None

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
