"""The Starlette (and FastAPI) flavour of `ResumableStreamResponse`.

FastAPI handlers must return a ``starlette.responses.Response`` for FastAPI to pass it
through (and to run its ``background`` tasks); this subclass is that, with the body
served by the framework-free `resumable_stream.asgi.ResumableStreamResponse`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

try:
    from starlette.background import BackgroundTask
    from starlette.responses import Response
    from starlette.types import Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "resumable_stream.starlette needs Starlette: pip install 'resumable-streams[starlette]'"
    ) from exc

from ._context import ResumableStreamContext
from ._http import Owner
from ._keys import validate_stream_id
from ._responder import DEFAULT_PING_INTERVAL, check_resume_path, new_stream_id
from ._response import ResumableStreamResponse

__all__ = ["ResumableStreamingResponse"]


class ResumableStreamingResponse(Response):
    """Like ``StreamingResponse``, but the body is stored as a resumable stream.

    The response carries ``X-Stream-Id``; ``response.stream_id`` is known as soon as
    the response is made, so a handler can record it (say, with the chat thread).

    Args:
        content: an async or sync iterable of ``str``/``bytes``, or a zero-argument
            callable returning one.
        context: where the stream lives; None streams without resumability.
        stream_id: defaults to a random 128-bit id.
        status_code, headers, media_type, background: as for ``StreamingResponse``.
        ping_interval: seconds of silence before an SSE comment ping; None disables.
        owner: ``owner(scope) -> str | None`` (or awaitable): bind the stream to the
            request's owner (see `resumable_stream.asgi.ResumableStreamResponse`).
        resume_path: where your `resumable_stream.asgi.ResumeEndpoint` serves the
            stream (``/resume/{stream_id}``): named in the response's ``Location``.
            None sends no ``Location``.

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
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
        background: BackgroundTask | None = None,
        ping_interval: float | None = DEFAULT_PING_INTERVAL,
        owner: Owner | None = None,
        resume_path: str | None = None,
    ) -> None:
        self.content = content
        self.context = context
        self.stream_id = validate_stream_id(stream_id) if stream_id else new_stream_id()
        self.status_code = status_code
        self.media_type = self.media_type if media_type is None else media_type
        self.background = background
        self.ping_interval = ping_interval
        self.owner = owner
        self.resume_path = check_resume_path(resume_path)
        self.init_headers(headers)
        # Starlette adds a content-length for bodies it knows; a stream has none.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = ResumableStreamResponse(
            self.content,
            context=self.context,
            stream_id=self.stream_id,
            status_code=self.status_code,
            headers=self.raw_headers,
            ping_interval=self.ping_interval,
            owner=self.owner,
            resume_path=self.resume_path,
        )
        await response(scope, receive, send)
        if self.background is not None:
            await self.background()
