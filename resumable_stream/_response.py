"""`ResumableStreamResponse`: an explicit ASGI response whose body is a resumable stream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import anyio

from ._context import ResumableStreamContext
from ._exceptions import BackendUnavailable, StreamAlreadyExists, TooManyStreams
from ._http import (
    BodyEncoder,
    Line,
    Owner,
    Receive,
    Scope,
    Send,
    as_bytes,
    body_mode,
    content_pieces,
    header,
    http_metadata,
    request_owner,
    wait_disconnect,
)
from ._http import plain_response as _plain
from ._keys import validate_stream_id
from ._producer import Refused
from ._responder import (
    DEFAULT_PING_INTERVAL,
    RETRY_AFTER,
    check_resume_path,
    new_stream_id,
    respond_live,
    resume_location,
    stream_directly,
)

__all__ = ["ResumableStreamResponse"]

logger = logging.getLogger("resumable_stream")

_CANCEL_GRACE = 1.0  # seconds a cancelled content gets for its own cleanup
# Content tasks running: the loop keeps only weak references to tasks.
_feeding: set[asyncio.Task[None]] = set()


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
        resume_path: where your `ResumeEndpoint` serves this stream, with
            ``{stream_id}`` (``/resume/{stream_id}``): the response then names its
            resume URL in ``Location``, which clients such as langgraph-sdk follow
            after a break. None (the default) sends no ``Location``: only you know
            where the endpoint is mounted, and a wrong URL would be followed.

    Raises:
        InvalidArgument: ``resume_path`` does not contain ``{stream_id}``.
        InvalidStreamId: ``stream_id`` cannot be stored.
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
        resume_path: str | None = None,
    ) -> None:
        self.content = content
        self.context = context
        self.stream_id = validate_stream_id(stream_id) if stream_id else new_stream_id()
        self.status_code = status_code
        self.raw_headers = _raw_headers(headers, media_type)
        self.ping_interval = ping_interval
        self.owner = owner
        self.resume_path = check_resume_path(resume_path)

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
        feeding: list[asyncio.Task[None]] = []  # the task that iterates the content

        async def stop() -> None:
            """The producer's close of its source: an early end cancels the content's
            iteration and waits for it (bounded); a complete one has nothing to stop."""
            for task in feeding:
                if not task.done():
                    task.cancel()
                    with anyio.move_on_after(_CANCEL_GRACE, shield=True):
                        await asyncio.wait([task])

        line = Line(send, mode, stop)
        if self.context is not None:
            owner = await request_owner(self.owner, scope)
            try:
                reader = await self.context.create_new_resumable_stream(
                    self.stream_id,
                    line.source,
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
            await stream_directly(
                self._content(),
                status=self.status_code,
                headers=self.raw_headers,
                send=send,
                receive=receive,
            )
            return
        line.bind()

        async def feed() -> None:
            """The content, in a task of its own (it outlives the request), through the
            line: stored, and sent directly while the client keeps up."""
            encoder = BodyEncoder(mode)
            try:
                async for piece in content_pieces(self._content()):
                    try:
                        wait = line.write_piece(encoder, as_bytes(piece))
                    except Refused:
                        return  # the stream ended early: `stop` cancels us
                    if wait:
                        await line.wait_for_room()
                try:
                    line.write(encoder.flush())
                except Refused:
                    return
                line.finish()
            except Exception as exc:
                line.finish(exc)

        def begin() -> None:
            task = asyncio.create_task(feed(), name=f"resumable-stream content {self.stream_id}")
            feeding.append(task)
            _feeding.add(task)
            task.add_done_callback(_feeding.discard)

        await respond_live(
            scope,
            send,
            reader,
            line,
            begin,
            status=self.status_code,
            headers=self.raw_headers,
            stream_id=self.stream_id,
            mode=mode,
            listen_disconnect=lambda: wait_disconnect(receive),
            ping_interval=self.ping_interval,
            location=resume_location(self.resume_path, self.stream_id),
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
