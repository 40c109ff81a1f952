# /// script
# requires-python = ">=3.10"
# dependencies = ["resumable-streams", "starlette", "uvicorn[standard]"]
# ///
"""A resumable NDJSON endpoint with plain Starlette and `ResumableStreamMiddleware`.

``POST /api/chat/{agent_id}/{thread_id}`` streams the answer as NDJSON, one line per
word (``{"type":"text-delta","delta":"..."}``) and a last ``{"type":"finish"}`` line.
The endpoint is an ordinary ``StreamingResponse``; the middleware stores it, adds
``X-Stream-Id`` and serves ``GET /api/chat/resume/{stream_id}``. NDJSON is not an event
stream, so a client resumes by position: ``?resumeAt=<characters received>`` (the body
is ASCII here, so characters are bytes). The cut may fall inside a line: the resumed
body continues it exactly where the first one stopped.

Run it from a checkout (streams live in memory; set ``REDIS_URL`` to use Redis)::

    python examples/starlette_app.py [--host 127.0.0.1] [--port 8000] [--delay 0.05]
    uvicorn examples.starlette_app:app              # CHAT_DELAY=0.2 sets the delay

With curl: start, cut after half a second, resume from the characters received::

    curl -sN -D head -X POST http://127.0.0.1:8000/api/chat/a1/t1 \\
         -H 'content-type: application/json' \\
         -d '{"messages": [{"role": "user", "content": "Hello"}]}' --max-time 0.5 | tee part
    ID=$(grep -i '^x-stream-id:' head | cut -d' ' -f2 | tr -d '\\r')
    curl -sN "http://127.0.0.1:8000/api/chat/resume/$ID?resumeAt=$(wc -c < part)"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

try:
    import resumable_stream
except ImportError:  # run from a checkout without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import resumable_stream

from resumable_stream.asgi import ResumableStreamMiddleware

DELAY = float(os.environ.get("CHAT_DELAY", "0.05"))
"""Seconds between two lines (``--delay``, or ``CHAT_DELAY``)."""


def answer_for(text: str) -> str:
    """The fake agent's whole answer to ``text``."""
    text = " ".join(text.split())[:200] or "nothing"
    return (
        f"Starlette here, answering {text!r} in NDJSON. Each line is one JSON object; "
        "resume with resumeAt, the number of characters you already have, even if "
        "the connection dropped in the middle of a line."
    )


def ndjson(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":")) + "\n"  # ASCII: characters == bytes


async def fake_agent(text: str) -> AsyncIterator[str]:
    words = answer_for(text).split(" ")
    for i, word in enumerate(words):
        await asyncio.sleep(DELAY)
        yield ndjson({"type": "text-delta", "delta": word if i == 0 else " " + word})
    yield ndjson({"type": "finish"})


async def chat(request: Request) -> Response:
    try:
        body = await request.json()
        messages = body["messages"]
        last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    except (ValueError, KeyError, TypeError):
        return PlainTextResponse('expected {"messages": [{"role", "content"}]}', 400)
    return StreamingResponse(fake_agent(str(last)), media_type="application/x-ndjson")


ctx = resumable_stream.create_resumable_stream_context(None)  # REDIS_URL, else memory


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    await ctx.aclose()


app = Starlette(
    routes=[Route("/api/chat/{agent_id}/{thread_id}", chat, methods=["POST"])],
    middleware=[
        Middleware(
            ResumableStreamMiddleware,
            ctx,
            path="/api/chat/{agent_id}/{thread_id}",
            resume_path="/api/chat/resume/{stream_id}",
        )
    ],
    lifespan=lifespan,
)


def main(argv: Sequence[str] | None = None) -> int:
    global DELAY
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--delay", type=float, default=DELAY, help="seconds between lines")
    args = parser.parse_args(argv)
    DELAY = args.delay

    import uvicorn

    print(f"Starlette NDJSON example on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
