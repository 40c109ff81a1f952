"""One responder for every resumable response, and the small helpers the HTTP layers share.

A resumable response always goes out the same way (`respond`): the start message with
the stream's headers (``X-Stream-Id``, its ``Location`` if it has a resume URL), then for
``HEAD`` an empty body, else the body pumped from the reader (`pump`). The resume
endpoint, the explicit response, the middleware and the AI SDK routes all call it, so
that a header or the ``HEAD`` rule cannot differ between them. `stream_directly` is the
one fallback when a stream cannot be stored: the body as it is, no id.

``Location`` names a stream's resume URL (relative, same origin) for clients that follow
it after a break (langgraph-sdk's SSE client does: it reconnects there with ``GET`` and
``Last-Event-ID``). The URL carries ``?reconnect=1`` (`RECONNECT_PARAM`), which tells the
resume endpoint that the request comes from a client that holds the original
response's headers: no position means "from the start", and a completed stream with
nothing left answers ``200`` with an empty body, since such clients reconnect after a
cut that fell after the last event and take a ``410`` as an error.
"""

from __future__ import annotations

import inspect
import re
import secrets
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, quote

import anyio

from ._exceptions import InvalidArgument
from ._http import (
    Line,
    Receive,
    Scope,
    Send,
    as_bytes,
    content_pieces,
    pump,
    stream_headers,
    stream_id_header,
    wait_disconnect,
)
from ._reader import ResumableStream
from ._types import IndexedChunk

__all__ = [
    "DEFAULT_PING_INTERVAL",
    "RECONNECT_PARAM",
    "RETRY_AFTER",
    "Authorize",
    "allowed",
    "check_resume_path",
    "method_is_head",
    "new_stream_id",
    "request_location",
    "respond",
    "respond_live",
    "resume_location",
    "stream_directly",
    "wants_delete",
    "wants_reconnect",
]

Authorize = Callable[[Scope, str], bool | Awaitable[bool]]
"""``authorize(scope, stream_id)``: may this request read (or stop) this stream?"""

DEFAULT_PING_INTERVAL = 15.0
RETRY_AFTER = [(b"retry-after", b"1")]
RECONNECT_PARAM = "reconnect"
"""The query parameter a ``Location`` carries (``?reconnect=1``): see the module docstring."""

_PLACEHOLDER = re.compile(r"\{([^}]+)\}")


def new_stream_id() -> str:
    """An unguessable stream id: 128 random bits, URL-safe."""
    return secrets.token_urlsafe(16)


async def allowed(authorize: Authorize | None, scope: Scope, key: str) -> bool:
    """The app's ``authorize(scope, key)`` verdict (sync or async); True without one."""
    if authorize is None:
        return True
    verdict = authorize(scope, key)
    if inspect.isawaitable(verdict):
        verdict = await verdict
    return bool(verdict)


def method_is_head(scope: Scope) -> bool:
    """A ``HEAD`` request: headers only, whatever the body would be."""
    return bool(scope.get("method") == "HEAD")


def _flag(scope: Scope, name: str) -> bool:
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return any(v.lower() in ("1", "true") for v in query.get(name, ()))


def wants_delete(scope: Scope) -> bool:
    """``?delete=1`` (or ``true``) on a ``DELETE``: delete the stream, not only stop it."""
    return _flag(scope, "delete")


def wants_reconnect(scope: Scope) -> bool:
    """``?reconnect=1``: a client reconnecting at the ``Location`` it was given."""
    return _flag(scope, RECONNECT_PARAM)


def check_resume_path(resume_path: str | None) -> str | None:
    """``resume_path`` if it is a usable template (None stays None).

    Raises:
        InvalidArgument: it does not contain ``{stream_id}``.
    """
    if resume_path is not None and "{stream_id}" not in resume_path:
        raise InvalidArgument(f"resume_path must contain '{{stream_id}}', got {resume_path!r}")
    return resume_path


def resume_location(
    template: str | None, stream_id: str, params: Mapping[str, str] | None = None
) -> bytes | None:
    """The ``Location`` of a stream: ``template`` with ``{stream_id}`` (and any other
    ``{name}`` from ``params``, the request path's own parameters) filled in, each
    percent-encoded as a path segment (as ``X-Stream-Id`` is), plus ``?reconnect=1``.

    Returns:
        The header value; None without a template, or if a ``{name}`` has no value
        (no URL is better than a wrong one: clients would follow it).
    """
    if template is None:
        return None
    values = {**(params or {}), "stream_id": stream_id}
    missing = False

    def fill(match: re.Match[str]) -> str:
        nonlocal missing
        value = values.get(match.group(1))
        if value is None:
            missing = True
            return ""
        return stream_id_header(value).decode("ascii")

    path = _PLACEHOLDER.sub(fill, template)
    if missing:
        return None
    return f"{path}?{RECONNECT_PARAM}=1".encode("ascii")


def request_location(scope: Scope) -> bytes:
    """The ``Location`` of a resume: the path this request came in on (as the client
    sent it, without its query), plus ``?reconnect=1``."""
    raw = scope.get("raw_path")
    if raw:
        path = bytes(raw).split(b"?", 1)[0]
    else:
        path = quote(str(scope["path"]), safe="/!$&'()*+,;=:@~").encode("ascii")
    return path + f"?{RECONNECT_PARAM}=1".encode("ascii")


async def respond(
    scope: Scope,
    send: Send,
    reader: ResumableStream,
    *,
    status: int,
    headers: Iterable[tuple[bytes, bytes]],
    stream_id: str,
    mode: str,
    listen_disconnect: Callable[[], Awaitable[None]] | None,
    ping_interval: float | None,
    location: bytes | None = None,
    first: IndexedChunk | None = None,
    body: AsyncGenerator[bytes, None] | None = None,
) -> None:
    """Send a resumable response: its start, then for ``HEAD`` nothing, else its body.

    The reader (and ``body``, if given: pieces the caller makes from the reader) is
    closed in every case; see `pump` for ``first``, ``body`` and what is raised.
    """
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": stream_headers(headers, stream_id, mode, location=location),
        }
    )
    if method_is_head(scope):
        with anyio.CancelScope(shield=True):
            if body is not None:
                await body.aclose()
            await reader.aclose()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    await pump(
        reader,
        send,
        listen_disconnect,
        mode=mode,
        ping_interval=ping_interval,
        first=first,
        body=body,
    )


async def respond_live(
    scope: Scope,
    send: Send,
    reader: ResumableStream,
    line: Line,
    begin: Callable[[], None],
    *,
    status: int,
    headers: Iterable[tuple[bytes, bytes]],
    stream_id: str,
    mode: str,
    listen_disconnect: Callable[[], Awaitable[None]] | None,
    ping_interval: float | None,
    location: bytes | None = None,
) -> None:
    """`respond` for a pushed stream: its start, then the body as ``line`` delivers it
    (see `Line`). ``begin()`` is called once the headers are out (for ``HEAD``, with
    the line detached): from then on the producing task writes to the line.

    The reader is closed in every case.
    """
    head = method_is_head(scope)
    try:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": stream_headers(headers, stream_id, mode, location=location),
            }
        )
        # For HEAD the end; else an empty body message sends the headers now (see `pump`).
        await send({"type": "http.response.body", "body": b"", "more_body": not head})
    except BaseException:
        head = True  # no body for this client either
        raise
    finally:
        if head:
            line.detach()  # the body is stored, not sent
            begin()
            with anyio.CancelScope(shield=True):
                await reader.aclose()
    if head:
        return
    begin()
    await line.serve(reader, listen_disconnect, ping_interval=ping_interval)


async def stream_directly(
    content: Any,
    *,
    status: int,
    headers: list[tuple[bytes, bytes]],
    send: Send,
    receive: Receive,
) -> None:
    """Graceful degradation: a plain streaming response, no id, no storage.

    ``content`` is an async or sync iterable of ``str``/``bytes``. It stops when the
    client goes; an async generator is closed however it ends.
    """
    await send({"type": "http.response.start", "status": status, "headers": headers})
    aclose = getattr(content, "aclose", None)
    try:
        async with anyio.create_task_group() as tg:

            async def listen() -> None:
                await wait_disconnect(receive)
                tg.cancel_scope.cancel()

            tg.start_soon(listen)
            try:
                async for piece in content_pieces(content):
                    body = as_bytes(piece)
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except OSError:
                pass  # the client went away while we were sending
            finally:
                tg.cancel_scope.cancel()
    finally:
        if aclose is not None:
            with anyio.CancelScope(shield=True):
                await aclose()
