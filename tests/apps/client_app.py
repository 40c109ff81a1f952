"""Endpoints for the client tests: long SSE, text and NDJSON answers, made resumable."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from resumable_stream import ResumableStreamContext
from resumable_stream.asgi import ResumableStreamMiddleware

WORDS = [f"wörd{i}·{'😀' if i % 7 == 0 else ''}" for i in range(300)]
TEXT = "".join(f"{w} " for w in WORDS)
NDJSON = "".join(
    json.dumps({"i": i, "w": w}, ensure_ascii=False) + "\n" for i, w in enumerate(WORDS)
)


async def _paced(pieces: list[str]) -> AsyncIterator[str]:
    for i, piece in enumerate(pieces):
        yield piece
        if i % 10 == 0:
            await asyncio.sleep(0.001)  # a live stream: resumes join it mid-way


async def sse(request: Request) -> StreamingResponse:
    await request.body()
    pieces = [f"data: {json.dumps({'w': w}, ensure_ascii=False)}\n\n" for w in WORDS]
    return StreamingResponse(_paced(pieces), media_type="text/event-stream")


async def text(request: Request) -> StreamingResponse:
    await request.body()
    return StreamingResponse(_paced([f"{w} " for w in WORDS]), media_type="text/plain")


async def ndjson(request: Request) -> StreamingResponse:
    await request.body()
    lines = [json.dumps({"i": i, "w": w}, ensure_ascii=False) + "\n" for i, w in enumerate(WORDS)]
    return StreamingResponse(_paced(lines), media_type="application/x-ndjson")


def build(ctx: ResumableStreamContext | None) -> ResumableStreamMiddleware:
    app = Starlette(
        routes=[
            Route("/api/chat/sse/{key}", sse, methods=["POST"]),
            Route("/api/chat/text/{key}", text, methods=["POST"]),
            Route("/api/chat/ndjson/{key}", ndjson, methods=["POST"]),
        ]
    )
    return ResumableStreamMiddleware(app, ctx, path="/api/chat/{kind}/{key}", ping_interval=None)
