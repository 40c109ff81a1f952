# /// script
# requires-python = ">=3.10"
# dependencies = ["resumable-streams", "litestar", "uvicorn[standard]"]
# ///
"""A resumable SSE endpoint with Litestar, using the explicit response (no middleware).

Litestar sends whatever ASGI app a handler returns, as it is, when the handler's return
annotation is an ASGI app class (one with an ``async def __call__``) or
``litestar.types.ASGIApp``: so ``-> ResumableStreamResponse`` just works, and the resume
route is a handler for ``GET`` and ``DELETE`` that returns the one `ResumeEndpoint`
(Litestar has put ``stream_id`` in ``scope["path_params"]`` by then). Not an ``@asgi``
handler: in Litestar 2.25 one with a path parameter fails every HTTP request with a
500 (a ``KeyError`` in its router); ``@asgi("/api/chat/resume", is_mount=True)`` works,
the endpoint then takes the id from the last path segment.

``POST /api/chat/{agent_id}/{thread_id}`` streams named SSE events,
``event: delta`` (``data: {"text": "..."}``) per word and a final ``event: done``;
every event gets an ``id:``, so a client resumes with ``Last-Event-ID``.

Run it from a checkout (streams live in memory; set ``REDIS_URL`` to use Redis)::

    python examples/litestar_app.py [--host 127.0.0.1] [--port 8000] [--delay 0.05]
    uvicorn examples.litestar_app:app               # CHAT_DELAY=0.2 sets the delay

With curl: start, cut after half a second, resume after the last id::

    curl -sN -D head -X POST http://127.0.0.1:8000/api/chat/a1/t1 \\
         -H 'content-type: application/json' \\
         -d '{"messages": [{"role": "user", "content": "Hello"}]}' --max-time 0.5 | tee part
    ID=$(grep -i '^x-stream-id:' head | cut -d' ' -f2 | tr -d '\\r')
    LAST=$(grep '^id:' part | tail -n1 | cut -d' ' -f2)
    curl -sN "http://127.0.0.1:8000/api/chat/resume/$ID" -H "Last-Event-ID: $LAST"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from litestar import HttpMethod, Litestar, post, route
from litestar.enums import RequestEncodingType
from litestar.params import Body

try:
    import resumable_stream
except ImportError:  # run from a checkout without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import resumable_stream

from resumable_stream.asgi import ResumableStreamResponse, ResumeEndpoint

DELAY = float(os.environ.get("CHAT_DELAY", "0.05"))
"""Seconds between two events (``--delay``, or ``CHAT_DELAY``)."""


@dataclass
class Message:
    role: str
    content: str


@dataclass
class ChatRequest:
    messages: list[Message]
    threadId: str | None = None  # the client's JSON field name


def answer_for(text: str) -> str:
    """The fake agent's whole answer to ``text``."""
    text = " ".join(text.split())[:200] or "nothing"
    return (
        f"Litestar here: {text} -> this answer is a ResumableStreamResponse returned "
        "from an ordinary handler, and it resumes from any event id."
    )


def event(name: str, data: object) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def fake_agent(text: str) -> AsyncIterator[str]:
    words = answer_for(text).split(" ")
    for i, word in enumerate(words):
        await asyncio.sleep(DELAY)
        yield event("delta", {"text": word if i == 0 else " " + word})
    yield event("done", {})


ctx = resumable_stream.create_resumable_stream_context(None)  # REDIS_URL, else memory
resume_endpoint = ResumeEndpoint(ctx)


@post("/api/chat/{agent_id:str}/{thread_id:str}")
async def chat(
    data: Annotated[ChatRequest, Body(media_type=RequestEncodingType.JSON)],
) -> ResumableStreamResponse:
    last = next((m.content for m in reversed(data.messages) if m.role == "user"), "")
    # The id is known now (response.stream_id): store it with the thread if you like.
    return ResumableStreamResponse(fake_agent(last), context=ctx, media_type="text/event-stream")


@route(
    "/api/chat/resume/{stream_id:str}",
    http_method=[HttpMethod.GET, HttpMethod.DELETE],
    status_code=200,  # else DELETE defaults to 204, which Litestar refuses for a body
)
async def resume() -> ResumeEndpoint:
    return resume_endpoint  # GET resumes (Last-Event-ID), DELETE stops the stream


app = Litestar(route_handlers=[chat, resume], on_shutdown=[ctx.aclose])


def main(argv: Sequence[str] | None = None) -> int:
    global DELAY
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--delay", type=float, default=DELAY, help="seconds between events")
    args = parser.parse_args(argv)
    DELAY = args.delay

    import uvicorn

    print(f"Litestar SSE example on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
