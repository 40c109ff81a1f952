# /// script
# requires-python = ">=3.10"
# dependencies = ["resumable-streams[upstash,starlette]", "uvicorn[standard]"]
# ///
"""A resumable endpoint for a serverless function: Upstash over REST, and every producer
finished before the function returns.

A serverless platform (Vercel Functions, AWS Lambda, Cloud Run scaled to zero) freezes or
stops the function once the request it serves has returned. The producer of a resumable
stream runs in a task of its own, so that it finishes the answer even when the client
went away mid-stream; that is the point of resuming. On a frozen function it would stop
half way, and readers elsewhere would end with ``ProducerLost``.

``wait_until`` is how the context tells the host about that task: here it records the
task in the current request, and `FinishProducers`, the outermost ASGI middleware, keeps
the request open after the response until the producers it started have written their
last chunk (bounded by ``FINISH_TIMEOUT``, which must stay below the platform's own
limit, such as Vercel's ``maxDuration``). The client has its answer, or has gone; only
the function's invocation lasts longer.

Configure it with the two values Upstash gives you (or Vercel KV's ``KV_REST_API_URL`` /
``KV_REST_API_TOKEN``)::

    export UPSTASH_REDIS_REST_URL=https://<db>.upstash.io UPSTASH_REDIS_REST_TOKEN=<token>
    uvicorn examples.serverless.app:app

    curl -sN -D head -X POST http://127.0.0.1:8000/api/answer --max-time 0.3
    ID=$(grep -i '^x-stream-id:' head | cut -d' ' -f2 | tr -d '\\r')
    curl -sN "http://127.0.0.1:8000/api/answer/resume/$ID"   # the rest, from any instance
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

try:
    import resumable_stream
except ImportError:  # run from a checkout without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import resumable_stream

from resumable_stream.asgi import ResumableStreamMiddleware

DELAY = float(os.environ.get("ANSWER_DELAY", "0.02"))  # seconds between two words
FINISH_TIMEOUT = 50.0  # seconds a request may wait for its producers after the response
ANSWER = " ".join(f"word{i}" for i in range(40))

# The producer tasks started while serving the current request (None outside one).
_started: ContextVar[list[asyncio.Task[None]] | None] = ContextVar("started", default=None)


def wait_until(task: asyncio.Task[None]) -> None:
    """Called by the context with each producer task it starts (the npm ``waitUntil``)."""
    started = _started.get()
    if started is not None:
        started.append(task)


class FinishProducers:
    """ASGI middleware: return from a request only once the producers it started are done."""

    def __init__(self, app: Any, *, timeout: float = FINISH_TIMEOUT) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started: list[asyncio.Task[None]] = []
        token = _started.set(started)
        try:
            await self.app(scope, receive, send)
        finally:
            _started.reset(token)
            if started:
                # The response is sent (or its client is gone); the function stays up
                # until the last chunk is stored.
                await asyncio.wait(started, timeout=self.timeout)


ctx = resumable_stream.create_resumable_stream_context(None, wait_until=wait_until)


async def words() -> AsyncIterator[str]:
    for i, word in enumerate(ANSWER.split(" ")):
        await asyncio.sleep(DELAY)  # an LLM's pace
        yield word if i == 0 else " " + word


async def answer(request: Request) -> StreamingResponse:
    return StreamingResponse(words(), media_type="text/plain")


app = FinishProducers(
    ResumableStreamMiddleware(
        Starlette(routes=[Route("/api/answer", answer, methods=["POST"])]),
        ctx,
        path="/api/answer",
        resume_path="/api/answer/resume/{stream_id}",
    )
)
