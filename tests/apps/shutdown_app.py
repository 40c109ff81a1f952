"""An app process for the shutdown tests, served by ``uvicorn tests.apps.shutdown_app:app``.

``POST /stream/{id}?n=<chunks>&pace=<seconds>`` streams ``n`` text chunks (``00000|``,
``00001|`` ...) through `ResumableStreamMiddleware`; ``GET /resume/{id}`` resumes.
The context lives on Redis (``RS_REDIS_URL``, ``RS_PREFIX``) and is closed in the
lifespan shutdown, which lets producers finish for ``RS_GRACE`` seconds and then marks
the rest failed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import parse_qs

import redis.asyncio as aioredis

from resumable_stream import ResumableStreamContext, StreamOptions, create_resumable_stream_context
from resumable_stream.asgi import ResumableStreamMiddleware


def chunk(i: int) -> str:
    return f"{i:05d}|"


class Holder:
    ctx: ResumableStreamContext | None = None
    client: aioredis.Redis | None = None


holder = Holder()


async def endpoint(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    query = parse_qs(scope.get("query_string", b"").decode())
    n = int(query.get("n", ["10"])[0])
    pace = float(query.get("pace", ["0.01"])[0])
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain; charset=utf-8")],
        }
    )
    for i in range(n):
        if i:
            await asyncio.sleep(pace)  # the pace of the answer: its workload
        await send({"type": "http.response.body", "body": chunk(i).encode(), "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def stream_id(scope: MutableMapping[str, Any]) -> str:
    return str(scope["path"]).rstrip("/").rsplit("/", 1)[-1]


class App:
    def __init__(self) -> None:
        self.wrapped: ResumableStreamMiddleware | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        assert self.wrapped is not None
        await self.wrapped(scope, receive, send)

    async def lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                holder.client = aioredis.Redis.from_url(os.environ["RS_REDIS_URL"])
                options = StreamOptions(
                    lease=2.0, poll_interval=0.25, shutdown_grace=float(os.environ["RS_GRACE"])
                )
                holder.ctx = create_resumable_stream_context(
                    holder.client, key_prefix=os.environ["RS_PREFIX"], options=options
                )
                self.wrapped = ResumableStreamMiddleware(
                    endpoint, holder.ctx, path="/stream/{id}", stream_id=stream_id,
                    resume_path="/resume/{stream_id}",
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if holder.ctx is not None:
                    await holder.ctx.aclose()  # finish or mark failed, within the grace
                if holder.client is not None:
                    await holder.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


app = App()
