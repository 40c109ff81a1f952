"""A FastAPI chat app for the HTTP tests, with resumable streams in every flavour.

* ``/api/chat/{agent}/{key}`` (GET and POST): plain FastAPI endpoints; the app is
  wrapped in `ResumableStreamMiddleware` for ``POST /api/chat/{agent_id}/{thread_id}``,
  so their streaming responses become resumable. ``/api/other/{agent}/{key}`` serves
  the very same handlers on a path the middleware does not handle: the reference for
  "passed through untouched".
* ``/explicit/{key}``: `resumable_stream.starlette.ResumableStreamingResponse` with a
  ``BackgroundTask``.
* ``/raw/{key}``: the framework-free `resumable_stream.asgi.ResumableStreamResponse`,
  from a bare ASGI callable routed with Starlette's ``Route``.
* Resume endpoints: the middleware's ``/api/chat/resume/{stream_id}``; a
  `ResumeEndpoint` as a Starlette ``Route("/resume/{stream_id}", ...)``; and one under
  ``Mount("/mounted/resume", ...)``.

Bodies are fixed (below) and non-ASCII; handlers yield them in pieces of odd sizes that
cut through UTF-8 sequences and SSE line ends. ``?gate=<byte offset>`` parks the
handler at that offset until the test sets the probe event ``"<key>:go"`` (it sets
``"<key>:paused"`` on arrival), so a test knows exactly what was produced when it acts.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qs

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.routing import Mount, Route

from resumable_stream import ResumableStreamContext
from resumable_stream.asgi import (
    ResumableStreamMiddleware,
    ResumableStreamResponse,
    ResumeEndpoint,
)
from resumable_stream.starlette import ResumableStreamingResponse

from ..http_servers import Probe

Handler = TypeVar("Handler", bound=Callable[..., Any])

# -- the bodies ---------------------------------------------------------------------------

EVENTS: list[dict[str, Any]] = [
    {"i": i, "delta": f"token {i}: Grüße, 世界 ✓ 😀" + "·" * (i % 4)} for i in range(12)
]
SSE_BODY = b"".join(
    b"data: " + json.dumps(event, ensure_ascii=False).encode() + b"\n\n" for event in EVENTS
)  # = b"".join(map(sse_event, EVENTS))
TEXT = "".join(f"Zeile {i}: Grüße aus Köln — 世界 🚀 naïve café\n" for i in range(40))
TEXT_BODY = TEXT.encode()
NDJSON_LINES: list[dict[str, Any]] = [
    {"i": i, "text": "ünïcödé ✓ 😀 " * (1 + i % 3)} for i in range(30)
]
NDJSON_BODY = b"".join(
    json.dumps(line, ensure_ascii=False).encode() + b"\n" for line in NDJSON_LINES
)
JSON_DOC = {"thread": "t", "messages": ["héllo", "wörld ✓"]}
CONFLICT_BODY = "conflict: this thread is busy ✗\n".encode()

SPLIT_SIZES = (1, 7, 3, 13, 2, 29, 5, 11, 17)


def sse_event(event: dict[str, Any]) -> bytes:
    """One event as the app writes it (no id: the resumable layer adds those)."""
    return b"data: " + json.dumps(event, ensure_ascii=False).encode() + b"\n\n"


def _event_end(k: int) -> int:
    """Byte offset just past the first ``k`` events of SSE_BODY."""
    return sum(len(sse_event(e)) for e in EVENTS[:k])


def _inside_a_character(body: bytes, near: int) -> int:
    """The first offset >= ``near`` that falls inside a multi-byte UTF-8 sequence."""
    offset = near
    while body[offset] & 0xC0 != 0x80:
        offset += 1
    return offset


SSE_EVENTS_BEFORE_GATE = 5
SSE_GATE = _event_end(SSE_EVENTS_BEFORE_GATE) + 9  # in the middle of event 5
TEXT_GATE = _inside_a_character(TEXT_BODY, len(TEXT_BODY) * 2 // 5)
NDJSON_GATE = _inside_a_character(NDJSON_BODY, len(NDJSON_BODY) // 3)
assert SSE_BODY[_event_end(SSE_EVENTS_BEFORE_GATE) - 2 :].startswith(b"\n\ndata: ")


def odd_pieces(body: bytes) -> list[bytes]:
    """``body`` cut into pieces of odd sizes (through characters and line ends)."""
    pieces: list[bytes] = []
    offset = 0
    for size in itertools.cycle(SPLIT_SIZES):
        if offset >= len(body):
            return pieces
        pieces.append(body[offset : offset + size])
        offset += size
    raise AssertionError("unreachable")


async def scripted(
    probe: Probe, key: str, body: bytes, gate: int | None, request: Request | None = None
) -> AsyncIterator[bytes]:
    """Yield ``body`` in odd pieces; park at ``gate`` until the test says go.

    With ``request``, ask ``request.is_disconnected()`` before every piece after the
    gate and note whether it ever said True (``"<key>:saw_disconnect"``); note
    ``"<key>:exit"`` = how the generator ended ("completed", or the exception).
    """
    head = odd_pieces(body if gate is None else body[:gate])
    tail = [] if gate is None else odd_pieces(body[gate:])
    probe.notes[f"{key}:saw_disconnect"] = False
    try:
        for piece in head:
            yield piece
        if gate is not None:
            probe.event(f"{key}:paused").set()
            await probe.event(f"{key}:go").wait()
        for piece in tail:
            if request is not None and await request.is_disconnected():
                probe.notes[f"{key}:saw_disconnect"] = True
            yield piece
        probe.notes[f"{key}:exit"] = "completed"
    except BaseException as exc:
        probe.notes[f"{key}:exit"] = type(exc).__name__
        raise
    finally:
        probe.event(f"{key}:produced").set()


def _deny(scope: Any) -> bool:
    return any(name == b"x-test-deny" for name, _ in scope.get("headers") or [])


async def authorize(scope: Any, stream_id: str) -> bool:
    """Readers are refused if they send ``X-Test-Deny`` (an async hook, on purpose)."""
    return not _deny(scope)


class DisconnectSpy:
    """Outermost layer: sets ``"disconnect:<path>"`` when the server reports the
    client's disconnect for that request, i.e. the cut reached the server."""

    def __init__(self, app: Any, probe: Probe) -> None:
        self.app = app
        self.probe = probe

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]

        async def spying_receive() -> Any:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.probe.event(f"disconnect:{path}").set()
            return message

        await self.app(scope, spying_receive, send)


class RawNdjson:
    """A bare ASGI callable answering with the framework-free `ResumableStreamResponse`.

    Starlette's ``Route`` treats an endpoint that is not a function as an ASGI app.
    """

    def __init__(self, ctx: ResumableStreamContext | None, probe: Probe) -> None:
        self.ctx = ctx
        self.probe = probe

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        key = scope["path_params"]["key"]
        query = parse_qs(scope["query_string"].decode())
        gate = int(query["gate"][0]) if "gate" in query else None
        response = ResumableStreamResponse(
            lambda: scripted(self.probe, key, NDJSON_BODY, gate),
            context=self.ctx,
            media_type="application/x-ndjson",
            headers={"x-raw": "yes"},
        )
        self.probe.notes[f"{key}:stream_id"] = response.stream_id
        await response(scope, receive, send)


def build_app(
    ctx: ResumableStreamContext | None, probe: Probe, *, ping_interval: float | None = 0.2
) -> Any:
    """The whole app: FastAPI + routes, in the middleware, in the disconnect spy."""
    api = FastAPI()

    def both(agent: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            for prefix in ("/api/chat", "/api/other"):
                api.add_api_route(f"{prefix}/{agent}/{{key}}", handler, methods=["GET", "POST"])
            return handler

        return register

    @both("sse")
    async def sse(key: str, gate: int | None = None) -> StreamingResponse:
        return StreamingResponse(
            scripted(probe, key, SSE_BODY, gate), media_type="text/event-stream"
        )

    @both("text")
    async def text(key: str, gate: int | None = None) -> StreamingResponse:
        return StreamingResponse(
            scripted(probe, key, TEXT_BODY, gate), media_type="text/plain; charset=utf-8"
        )

    @both("ndjson")
    async def ndjson(key: str, gate: int | None = None) -> StreamingResponse:
        # 201 and the app's own headers: a resume must replay them.
        return StreamingResponse(
            scripted(probe, key, NDJSON_BODY, gate),
            status_code=201,
            media_type="application/x-ndjson",
            headers={"X-App-Header": "kept", "Access-Control-Expose-Headers": "X-App-Header"},
        )

    @both("custom-id")
    async def custom_id(key: str, gate: int | None = None, id: str | None = None) -> Any:
        # The app names the stream (say, after its thread) with an X-Stream-Id header.
        return StreamingResponse(
            scripted(probe, key, TEXT_BODY, gate),
            media_type="text/plain; charset=utf-8",
            headers={"X-Stream-Id": id or f"custom-{key}"},
        )

    @both("watch")
    async def watch(key: str, request: Request, gate: int | None = None) -> StreamingResponse:
        return StreamingResponse(
            scripted(probe, key, SSE_BODY, gate, request), media_type="text/event-stream"
        )

    @both("json")
    async def json_doc(key: str) -> JSONResponse:
        return JSONResponse(JSON_DOC)

    @both("missing")
    async def missing(key: str) -> None:
        raise HTTPException(status_code=404, detail=f"no thread {key} ✗")

    @both("conflict")
    async def conflict(key: str) -> StreamingResponse:
        pieces = odd_pieces(CONFLICT_BODY)

        async def body() -> AsyncIterator[bytes]:
            for piece in pieces:
                yield piece

        return StreamingResponse(body(), status_code=409, media_type="text/plain; charset=utf-8")

    @api.post("/explicit/{key}")
    async def explicit(key: str, gate: int | None = None) -> ResumableStreamingResponse:
        async def background() -> None:
            probe.event(f"{key}:background").set()

        response = ResumableStreamingResponse(
            scripted(probe, key, SSE_BODY, gate),
            context=ctx,
            media_type="text/event-stream",
            background=BackgroundTask(background),
            ping_interval=ping_interval,
        )
        probe.notes[f"{key}:stream_id"] = response.stream_id
        return response

    api.router.routes.append(Route("/raw/{key}", endpoint=RawNdjson(ctx, probe), methods=["POST"]))
    api.router.routes.append(
        Route(
            "/resume/{stream_id}",
            endpoint=ResumeEndpoint(ctx, authorize=authorize, ping_interval=ping_interval),
            methods=["GET", "DELETE"],
        )
    )
    api.router.routes.append(
        Mount(
            "/mounted/resume",
            app=ResumeEndpoint(ctx, authorize=authorize, ping_interval=ping_interval),
        )
    )
    wrapped = ResumableStreamMiddleware(
        api,
        ctx,
        path="/api/chat/{agent_id}/{thread_id}",
        authorize=authorize,
        ping_interval=ping_interval,
    )
    return DisconnectSpy(wrapped, probe)
