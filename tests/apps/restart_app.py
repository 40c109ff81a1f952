"""An app for the failed-stream and restart tests: ``uvicorn tests.apps.restart_app:app``.

``POST /stream/{id}?n=<chunks>&pace=<seconds>&mode=sse|text`` streams ``n`` chunks
(`chunk_text`) through `ResumableStreamMiddleware`; ``fail_at=<k>`` makes the source raise
after ``k`` chunks, ``hang_at=<k>`` makes it wait forever after ``k`` (a producer alive but
quiet, for a test to kill its process). ``GET /resume/{id}`` resumes; ``/_resumable/`` serves
the browser client and ``/`` a blank page for it.

In a process of its own the context lives on Redis (``RS_REDIS_URL``, ``RS_PREFIX``;
``RS_LEASE`` and ``RS_GRACE`` set the lease and ``shutdown_grace``) and is closed in the
lifespan shutdown. Each stream's first request records its worker's pid under
``<prefix>:pid:<id>`` (with a TTL), so a test can kill the process that produces it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import redis.asyncio as aioredis

from resumable_stream import ResumableStreamContext, StreamOptions, create_resumable_stream_context
from resumable_stream.asgi import ResumableStreamMiddleware
from resumable_stream.browser import browser_client_app

Scope = MutableMapping[str, Any]
ASGI = Callable[[Scope, Any, Any], Awaitable[None]]


def chunk_text(stream_id: str, i: int, mode: str) -> str:
    """Chunk ``i`` of a stream: unique, so a gap or a duplicate shows."""
    text = f"{stream_id}:{i:04d}|"
    return f"data: {text}\n\n" if mode == "sse" else text


def message_text(stream_id: str, i: int) -> str:
    """What a client delivers for chunk ``i`` of an SSE stream (the event's data)."""
    return f"{stream_id}:{i:04d}|"


def stream_id_of(scope: Scope) -> str:
    return str(scope["path"]).rstrip("/").rsplit("/", 1)[-1]


def make_endpoint(redis: aioredis.Redis | None, prefix: str) -> ASGI:
    async def endpoint(scope: Scope, receive: Any, send: Any) -> None:
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
        n = int(query.get("n", "20"))
        pace = float(query.get("pace", "0.01"))
        mode = query.get("mode", "text")
        fail_at = int(query["fail_at"]) if "fail_at" in query else None
        hang_at = int(query["hang_at"]) if "hang_at" in query else None
        stream_id = stream_id_of(scope)
        if redis is not None:
            await redis.set(f"{prefix}:pid:{stream_id}", os.getpid(), ex=120)
        content_type = b"text/event-stream" if mode == "sse" else b"text/plain; charset=utf-8"
        await send(
            {"type": "http.response.start", "status": 200,
             "headers": [(b"content-type", content_type)]}
        )  # fmt: skip
        for i in range(n):
            if i == fail_at:
                raise RuntimeError("the model broke (secret detail)")
            if i == hang_at:
                await asyncio.Event().wait()  # alive and quiet until the process dies
            if i:
                await asyncio.sleep(pace)  # the answer's pace: its workload
            body = chunk_text(stream_id, i, mode).encode()
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return endpoint


PAGE = b"<!doctype html><html><head><meta charset='utf-8'></head><body></body></html>"


def build(
    ctx: ResumableStreamContext | None, redis: aioredis.Redis | None = None, prefix: str = ""
) -> ASGI:
    """The routes around one context (also used in-thread by the tests, on memory)."""
    streams = ResumableStreamMiddleware(
        make_endpoint(redis, prefix), ctx, path="/stream/{id}", stream_id=stream_id_of,
        resume_path="/resume/{stream_id}", ping_interval=None,
    )  # fmt: skip
    client_files = browser_client_app()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] == "http" and path.startswith("/_resumable/"):
            scope = {**scope, "root_path": "/_resumable", "path": path[len("/_resumable"):]}
            await client_files(scope, receive, send)
        elif scope["type"] == "http" and path == "/":
            await send(
                {"type": "http.response.start", "status": 200,
                 "headers": [(b"content-type", b"text/html; charset=utf-8")]}
            )  # fmt: skip
            await send({"type": "http.response.body", "body": PAGE})
        else:
            await streams(scope, receive, send)

    return app


class App:
    """The app in a process of its own: the context on Redis, made in the lifespan."""

    def __init__(self) -> None:
        self.routes: ASGI | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        assert self.routes is not None
        await self.routes(scope, receive, send)

    async def lifespan(self, receive: Any, send: Any) -> None:
        ctx: ResumableStreamContext | None = None
        client: aioredis.Redis | None = None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                client = aioredis.Redis.from_url(os.environ["RS_REDIS_URL"])
                prefix = os.environ["RS_PREFIX"]
                options = StreamOptions(
                    lease=float(os.environ.get("RS_LEASE", "1.0")), poll_interval=0.25,
                    shutdown_grace=float(os.environ.get("RS_GRACE", "2.0")),
                )  # fmt: skip
                ctx = create_resumable_stream_context(client, key_prefix=prefix, options=options)
                self.routes = build(ctx, client, prefix)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if ctx is not None:
                    await ctx.aclose()  # finish or mark failed, within shutdown_grace
                if client is not None:
                    await client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


app = App()
