# /// script
# requires-python = ">=3.10"
# dependencies = ["resumable-streams", "fastapi", "uvicorn[standard]"]
# ///
"""A chat backend for the Vercel AI SDK's ``useChat({ resume: true })`` and its
``WorkflowChatTransport``, with a fake model.

`resumable_stream.ai_sdk.ChatStreams` serves the routes both transports call, at their
defaults: ``POST /api/chat`` streams the answer (UI message stream protocol v1) and
stores it, with its run id in ``x-workflow-run-id``; ``GET /api/chat/{id}/stream``
resumes the chat's running answer from its start (``204`` when there is none), and with
``?startIndex=N`` replays the answer (``id`` a run id or a chat id) from its chunk N,
which is how ``WorkflowChatTransport`` reconnects by itself after a break;
``POST /api/chat/{id}/stop`` (the AI SDK docs' stop route) and the older
``DELETE /api/chat/{id}/stream`` stop it, from any process.
The model is fake: it echoes the last user message, then a canned reply, one word every
``AI_SDK_DELAY`` seconds (0.05 by default). A message containing "please fail" makes it
raise after a few words: the client gets an ``error`` chunk.

The same routes in three frameworks, one module:

* ``app``: FastAPI (``python examples/ai_sdk_app.py`` or ``uvicorn examples.ai_sdk_app:app``);
* ``starlette_app``: Starlette (``uvicorn examples.ai_sdk_app:starlette_app``);
* ``create_litestar_app()``: Litestar
  (``uvicorn --factory examples.ai_sdk_app:create_litestar_app``).

Answers live in this process's memory: run one process. Set ``REDIS_URL`` to use Redis,
and then run any number of workers or hosts (a ``POST`` on one, a resume on another).

With curl (the front end is a stock ``useChat``; see the README's "AI SDK" section)::

    curl -sN http://127.0.0.1:8000/api/chat -H 'content-type: application/json' \\
         -d '{"id": "c1", "messages": [{"id": "m1", "role": "user",
              "parts": [{"type": "text", "text": "Hello"}]}]}' --max-time 0.5   # cut
    curl -sN http://127.0.0.1:8000/api/chat/c1/stream            # from the start, then live
    curl -sN 'http://127.0.0.1:8000/api/chat/c1/stream?startIndex=5'  # from chunk 5
    curl -s -X POST http://127.0.0.1:8000/api/chat/c1/stop       # {"success":true,"stopped":true}
    curl -si http://127.0.0.1:8000/api/chat/c1/stream            # 204: nothing running
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import zlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.routing import Route

try:
    import resumable_stream
except ImportError:  # run from a checkout without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import resumable_stream

from resumable_stream.ai_sdk import ChatRequest, ChatStreams, text_chunks

DELAY = float(os.environ.get("AI_SDK_DELAY", "0.05"))
"""Seconds between two words of an answer (``--delay``, or ``AI_SDK_DELAY``)."""

FAIL_TRIGGER = "please fail"
FAIL_AFTER = 3  # words the failing model says before it raises

CANNED = (
    "Every chunk of this answer is stored as it is written, so a reload, a second tab "
    "or a dropped connection picks the whole message up again from its first word.",
    "The answer keeps being written while nobody listens, and any process that shares "
    "the same Redis can replay it from the start and follow it to the end.",
    "Press stop and every open tab sees the answer end cleanly; resuming afterwards "
    "finds nothing running, exactly as if the answer had finished.",
)


class ModelError(RuntimeError):
    """What the fake model raises when asked to fail."""


def answer_for(text: str) -> str:
    """The fake model's whole answer to ``text``: an echo plus a canned reply."""
    text = " ".join(text.split())[:200] or "nothing"
    return f'You said: "{text}". ' + CANNED[zlib.crc32(text.encode("utf-8")) % len(CANNED)]


def words(text: str) -> list[str]:
    """The answer as text deltas: each word with the space before it (none for the first)."""
    parts = text.split(" ")
    return [parts[0]] + [" " + word for word in parts[1:]]


async def fake_model(prompt: str) -> AsyncIterator[str]:
    """Stands in for an OpenAI-style token stream: one word per ``DELAY`` seconds."""
    for n, delta in enumerate(words(answer_for(prompt))):
        if FAIL_TRIGGER in prompt and n == FAIL_AFTER:
            raise ModelError("the model failed mid-answer, as asked")
        await asyncio.sleep(DELAY)
        yield delta


def answer(request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
    """The chat handler: the model's text deltas as UI message chunks.

    ``request.response_message_id`` is the assistant message's id; a real app would store
    the finished answer under it (after the last chunk, in this generator).
    """
    return text_chunks(fake_model(request.last_user_text))


def on_error(exc: BaseException) -> str:
    """The ``errorText`` the client sees (the default hides the exception: it may leak)."""
    if isinstance(exc, ModelError):
        return f"model error: {exc}"
    return "An error occurred."


ctx = resumable_stream.create_resumable_stream_context(None)  # REDIS_URL, else memory
chats = ChatStreams(ctx, answer, on_error=on_error)
# In a real app: authorize=lambda scope, chat_id: <the user of this request owns chat_id>


# -- FastAPI --------------------------------------------------------------------------------------


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    yield
    await ctx.aclose()  # lets running answers finish (for a few seconds)


app = FastAPI(title="AI SDK chat", lifespan=lifespan)
app.add_route("/api/chat", chats.chat_endpoint, methods=["POST"])
app.add_route("/api/chat/{chat_id}/stream", chats.stream_endpoint, methods=["GET", "DELETE"])
app.add_route("/api/chat/{chat_id}/stop", chats.stop_endpoint, methods=["POST"])


@app.get("/api/chat/{chat_id}/active")
async def active(chat_id: str) -> dict[str, str | None]:
    """The app side of the same helper: is an answer running for this chat?"""
    return {"streamId": await chats.active_stream_id(chat_id)}


# -- Starlette ------------------------------------------------------------------------------------

starlette_app = Starlette(
    routes=[
        Route("/api/chat", chats.chat_endpoint, methods=["POST"]),
        Route("/api/chat/{chat_id}/stream", chats.stream_endpoint, methods=["GET", "DELETE"]),
        Route("/api/chat/{chat_id}/stop", chats.stop_endpoint, methods=["POST"]),
    ],
    lifespan=lifespan,
)


# -- Litestar -------------------------------------------------------------------------------------


def create_litestar_app() -> Any:
    """The Litestar app (imported here: Litestar is optional for this example).

    Litestar sends an ASGI app that a handler returns as it is (annotate the handler
    ``-> ASGIApp``), and a handler that takes no ``data`` leaves the request body unread,
    for the endpoint to read.
    """
    from litestar import HttpMethod, Litestar, post, route
    from litestar.types import ASGIApp

    @post("/api/chat")
    async def send_messages() -> ASGIApp:
        return chats.chat_endpoint

    @route(
        "/api/chat/{chat_id:str}/stream",
        http_method=[HttpMethod.GET, HttpMethod.DELETE],
        status_code=200,  # else DELETE defaults to 204, which Litestar refuses for a body
    )
    async def reconnect_or_stop() -> ASGIApp:
        return chats.stream_endpoint

    @post("/api/chat/{chat_id:str}/stop", status_code=200)
    async def stop() -> ASGIApp:
        return chats.stop_endpoint

    return Litestar(
        route_handlers=[send_messages, reconnect_or_stop, stop], on_shutdown=[ctx.aclose]
    )


def main(argv: Sequence[str] | None = None) -> int:
    global DELAY
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="default 8000")
    parser.add_argument(
        "--delay", type=float, default=DELAY, help=f"seconds between words (default {DELAY})"
    )
    args = parser.parse_args(argv)
    if not 0 <= args.delay <= 5:
        parser.error("--delay must be between 0 and 5 seconds")
    DELAY = args.delay

    import uvicorn

    host = f"[{args.host}]" if ":" in args.host else args.host
    backend = "Redis" if os.environ.get("REDIS_URL") or os.environ.get("KV_URL") else "memory"
    print(f"AI SDK chat backend on http://{host}:{args.port} (answers in {backend})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
