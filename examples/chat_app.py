# /// script
# requires-python = ">=3.10"
# dependencies = ["resumable-streams", "fastapi", "uvicorn[standard]"]
# ///
"""A resumable chat endpoint with FastAPI: a fake agent, an SSE answer, a resume route.

The app answers ``POST /api/chat/{agent_id}/{thread_id}`` with an event stream
(``data: {"type":"text-delta","delta":"..."}`` per word, then ``data: [DONE]``).
`ResumableStreamMiddleware` stores the answer as a resumable stream, adds the
``X-Stream-Id`` header and an ``id:`` to every event, and serves
``GET /api/chat/resume/{stream_id}``. ``GET /`` is a small page to try it in a browser,
built on the package's browser client (``resumable_stream.browser``, mounted at
``/_resumable``): a "Cut connection" button drops the connection mid-answer and the client
resumes it; reloading the page mid-answer resumes it too. The agent is fake: no model, no
network.

Run it from a checkout. Streams live in this process's memory, so run one process; set
``REDIS_URL`` to use Redis, and then any number of workers or hosts::

    pip install -e . fastapi 'uvicorn[standard]'
    python examples/chat_app.py                      # http://127.0.0.1:8000
    python examples/chat_app.py --port 8001 --delay 0.2
    uvicorn examples.chat_app:app                    # CHAT_DELAY=0.2 sets the delay

or ``./scripts/demo``, or ``uv run --with-editable . examples/chat_app.py``.

With curl: start, cut after half a second (``--max-time``), resume after the last id::

    curl -sN -D head -X POST http://127.0.0.1:8000/api/chat/a1/t1 \\
         -H 'content-type: application/json' \\
         -d '{"messages": [{"role": "user", "content": "Hello"}]}' --max-time 0.5 | tee part
    ID=$(grep -i '^x-stream-id:' head | cut -d' ' -f2 | tr -d '\\r')
    LAST=$(grep '^id:' part | tail -n1 | cut -d' ' -f2)
    curl -sN "http://127.0.0.1:8000/api/chat/resume/$ID" -H "Last-Event-ID: $LAST"
    curl -si "http://127.0.0.1:8000/api/chat/resume/$ID"   # no position: 410 once finished
    curl -si -X DELETE "http://127.0.0.1:8000/api/chat/resume/$ID"  # stop it: 202 (or 410)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import zlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, StreamingResponse
from pydantic import BaseModel

try:
    import resumable_stream
except ImportError:  # run from a checkout without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import resumable_stream

from resumable_stream.asgi import ResumableStreamMiddleware
from resumable_stream.browser import browser_client_app

DELAY = float(os.environ.get("CHAT_DELAY", "0.05"))
"""Seconds between two words of an answer (``--delay``, or ``CHAT_DELAY``)."""

CANNED = (
    "A resumable stream stores every chunk as it is produced, so a reader that drops "
    "can come back and pick up right after the last event it saw.",
    "The agent keeps writing while nobody listens: the answer is finished in the "
    "background and any tab, in any process with Redis, can read it again.",
    "Press the disconnect button while I am talking: the words you miss are replayed "
    "from storage the moment you resume, and none of them twice.",
)


class Message(BaseModel):
    role: str
    content: str


class ChatRequest(BaseModel):
    messages: list[Message]
    threadId: str | None = None  # the client's JSON field name


def answer_for(text: str) -> str:
    """The fake agent's whole answer to ``text``: an echo plus a canned reply."""
    text = " ".join(text.split())[:200] or "nothing"
    return f'You said: "{text}". ' + CANNED[zlib.crc32(text.encode("utf-8")) % len(CANNED)]


def words(text: str) -> list[str]:
    """The answer as deltas: each word with the space before it (none for the first)."""
    parts = text.split(" ")
    return [parts[0]] + [" " + word for word in parts[1:]]


def sse(data: str) -> str:
    return f"data: {data}\n\n"


async def fake_agent(text: str) -> AsyncIterator[str]:
    """Stands in for a model: the answer as SSE text deltas, one word per ``DELAY``."""
    for delta in words(answer_for(text)):
        await asyncio.sleep(DELAY)
        yield sse(json.dumps({"type": "text-delta", "delta": delta}, separators=(",", ":")))
    yield sse("[DONE]")


ctx = resumable_stream.create_resumable_stream_context(None)  # Redis, Upstash or memory


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await ctx.aclose()  # lets running answers finish (for a few seconds)


app = FastAPI(title="resumable chat", lifespan=lifespan)
app.add_middleware(
    ResumableStreamMiddleware,
    ctx,
    path="/api/chat/{agent_id}/{thread_id}",
    resume_path="/api/chat/resume/{stream_id}",
)


@app.post("/api/chat/{agent_id}/{thread_id}")
async def chat(agent_id: str, thread_id: str, request: ChatRequest) -> StreamingResponse:
    last = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
    return StreamingResponse(fake_agent(last), media_type="text/event-stream")


app.mount("/_resumable", browser_client_app())  # the browser client, as ES modules


@app.get("/", response_class=HTMLResponse)
async def page() -> str:
    return PAGE


# The page uses the package's browser client (resumable_stream/static/resumable-stream.js,
# served at /_resumable/ above). Query parameters tune it: ?retryDelay=<ms>&maxRetries=<n>.
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Resumable chat</title>
<style>
body { font: 16px/1.5 system-ui, sans-serif; max-width: 42rem; margin: 2rem auto; }
#out { white-space: pre-wrap; border: 1px solid #ccc; padding: .5rem; min-height: 5rem; }
#status { color: #666; }  #sid { font-family: monospace; }
#log { font: 12px/1.4 monospace; color: #555; }
#log .warn { color: #b00; }
</style></head><body data-state="idle">
<h1>Resumable chat</h1>
<form id="form"><input id="msg" size="40" value="Hello, agent!" required>
<button id="send">Send</button></form>
<p><button id="cut" disabled>Cut connection</button> <span id="status">idle</span></p>
<p>Stream id: <span id="sid">-</span></p>
<div id="out"></div>
<h2>Connection log</h2>
<ol id="log"></ol>
<script type="module">
import { ResumableStreamClient } from "/_resumable/resumable-stream.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const TRANSCRIPT = "chat-demo:transcript";  // the answer so far, to show after a reload
let text = "";
const ids = [];  // the event ids delivered, in order: each must come exactly once

function note(message, level) {
  const item = Object.assign(document.createElement("li"), {textContent: message});
  if (level) item.className = level;
  $("log").append(item);
}
// The client logs to the console; this logger also shows its lines on the page.
const logger = {
  info: (m) => { console.info(m); note(m); },
  warn: (m) => { console.warn(m); note(m, "warn"); },
  debug: (m) => console.debug(m),
  error: (...args) => console.error(...args),
};
function setState(state, message) {
  document.body.dataset.state = state;
  $("status").textContent = message;
  $("cut").disabled = !(state === "streaming");
}
function save(streamId) {
  sessionStorage.setItem(TRANSCRIPT, JSON.stringify({streamId, text, ids}));
}

const client = new ResumableStreamClient({
  onMessage(data, event) {
    if (event && event.id) ids.push(event.id);
    if (data !== "[DONE]") text += JSON.parse(data).delta;
    $("out").textContent = text;
    save(client.streamId);
    if (document.body.dataset.state !== "streaming") setState("streaming", "streaming");
  },
  onComplete() { setState("done", "done"); },
  onError(error) {
    const status = error.status ? " " + error.status : "";
    setState("error", `error: ${error.name}${status}: ${error.message}`);
  },
  onStreamId(id) { $("sid").textContent = id; },
  onRetry({attempt, maxRetries, delay}) {
    setState("reconnecting", `reconnecting: attempt ${attempt}/${maxRetries} in ${delay} ms`);
  },
  maxRetries: Number(params.get("maxRetries") || 5),
  retryDelay: Number(params.get("retryDelay") || 1000),
  logger,
});
window.chat = {client, ids, get text() { return text; }};  // for tests and the console

$("form").onsubmit = async (e) => {
  e.preventDefault();
  const thread = "thread-" + Math.random().toString(36).slice(2);
  text = ""; ids.length = 0;
  $("out").textContent = ""; $("sid").textContent = "-";
  setState("streaming", "waiting for the answer");
  await client.start("/api/chat/demo-agent/" + thread,
                     {messages: [{role: "user", content: $("msg").value}], threadId: thread});
};

$("cut").onclick = () => {
  if (client.dropConnection()) note("connection cut by the button", "warn");
};

// After a reload: show the answer so far, and resume an unfinished stream.
const shown = JSON.parse(sessionStorage.getItem(TRANSCRIPT) || "null");
const saved = ResumableStreamClient.saved();
if (shown) {
  text = shown.text; ids.push(...shown.ids);
  $("out").textContent = text; $("sid").textContent = shown.streamId || "-";
}
if (saved) {
  setState("streaming", "resuming after a reload");
  if (!shown || shown.streamId !== saved.streamId) {
    text = ""; ids.length = 0;
    client.resume(saved.streamId, null);  // from the start: the answer so far is unknown
  } else {
    client.resume(saved.streamId);  // after the last event delivered before the reload
  }
} else if (shown) {
  setState("done", "done");
}
</script></body></html>
"""


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
    backend = type(ctx.backend).__name__
    print(f"Resumable chat on http://{host}:{args.port} (streams in {backend})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
