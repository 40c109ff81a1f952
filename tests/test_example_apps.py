"""The HTTP examples under a real uvicorn: start a stream, cut the connection, resume.

Each app runs in a subprocess (``python -m uvicorn examples.<app>:app``) on a free
loopback port, with ``REDIS_URL``/``KV_URL`` removed (streams in memory) and a short
per-word delay, so a cut lands while the agent is still writing.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from .app_process import AppProcess

ROOT = Path(__file__).resolve().parent.parent
DELAY = "0.02"  # seconds per word in the apps: a 30-word answer streams for ~0.6 s
TIMEOUT = httpx.Timeout(10.0)

pytestmark = pytest.mark.timeout(60)


def serve(target: str, server_kind: str = "uvicorn") -> Iterator[str]:
    with tempfile.TemporaryFile() as log:
        server = AppProcess(target, log, env={"CHAT_DELAY": DELAY}, server=server_kind)
        server.start()
        try:
            yield server.url
        finally:
            server.stop()
        # Cut connections and resumes leave no error behind in the server.
        assert "Traceback" not in server.output(), server.output()


@pytest.fixture(scope="module")
def chat_url() -> Iterator[str]:
    yield from serve("examples.chat_app:app")


@pytest.fixture(scope="module")
def starlette_url() -> Iterator[str]:
    yield from serve("examples.starlette_app:app")


@pytest.fixture(scope="module")
def litestar_url() -> Iterator[str]:
    yield from serve("examples.litestar_app:app")


def example(name: str) -> ModuleType:
    """An example module, for its ``answer_for`` (importing one starts no server)."""
    return importlib.import_module(f"examples.{name}")


def chat_body(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "threadId": "thread-1"}


# -- a small SSE client ---------------------------------------------------------------------


@dataclass
class Event:
    id: str | None = None
    event: str = "message"
    data: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(self.data)


def events(response: httpx.Response) -> Iterator[Event]:
    """The events of an SSE body as they arrive (comments such as pings skipped)."""
    current = Event()
    for line in response.iter_lines():
        if not line:
            if current.data:
                yield current
            current = Event()
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            current.data.append(value)
        elif name == "id":
            current.id = value
        elif name == "event":
            current.event = value


def read_events(client: httpx.Client, method: str, url: str, limit: int | None = None,
                **kwargs: Any) -> tuple[httpx.Response, list[Event]]:  # fmt: skip
    """Up to ``limit`` events, then the connection is closed (cut) if more remain."""
    got: list[Event] = []
    with client.stream(method, url, **kwargs) as response:
        if response.status_code == 200:
            for item in events(response):
                got.append(item)
                if limit is not None and len(got) >= limit:
                    break
        else:
            response.read()
    return response, got


def check_ids(got: list[Event]) -> None:
    """Every event has the id of its index: no gap, no duplicate."""
    assert [item.id for item in got] == [str(i) for i in range(len(got))]


# -- FastAPI chat app -----------------------------------------------------------------------


def chat_text(got: list[Event]) -> str:
    assert got[-1].text == "[DONE]"
    deltas = [json.loads(item.text) for item in got[:-1]]
    assert all(d["type"] == "text-delta" for d in deltas)
    return "".join(d["delta"] for d in deltas)


def test_chat_cut_and_resume_with_last_event_id(chat_url: str) -> None:
    message = "Please resume me after a cut"
    answer = example("chat_app").answer_for(message)
    with httpx.Client(base_url=chat_url, timeout=TIMEOUT) as client:
        response, first = read_events(
            client, "POST", "/api/chat/agent-1/thread-1", limit=4, json=chat_body(message)
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["access-control-expose-headers"] == "X-Stream-Id"
    stream_id = response.headers["x-stream-id"]
    assert len(first) == 4
    # The first client is gone (its connection closed); a new one takes the rest.
    with httpx.Client(base_url=chat_url, timeout=TIMEOUT) as client:
        response, rest = read_events(
            client, "GET", f"/api/chat/resume/{stream_id}",
            headers={"Last-Event-ID": first[-1].id or ""},
        )  # fmt: skip
    assert response.status_code == 200
    assert response.headers["x-stream-id"] == stream_id
    assert rest, "nothing after the cut"
    check_ids(first + rest)
    assert chat_text(first + rest) == answer


def test_chat_finished_stream(chat_url: str) -> None:
    message = "Read me to the end"
    answer = example("chat_app").answer_for(message)
    with httpx.Client(base_url=chat_url, timeout=TIMEOUT) as client:
        response, whole = read_events(client, "POST", "/api/chat/a/t", json=chat_body(message))
        assert response.status_code == 200
        stream_id = response.headers["x-stream-id"]
        check_ids(whole)
        assert chat_text(whole) == answer
        resume = f"/api/chat/resume/{stream_id}"
        # Finished, no position: 410. With the last id: nothing left, 410 too.
        assert client.get(resume).status_code == 410
        last = whole[-1].id or ""
        assert client.get(resume, headers={"Last-Event-ID": last}).status_code == 410
        # With an earlier position, the tail of the finished stream.
        response, tail = read_events(client, "GET", resume, headers={"Last-Event-ID": "1"})
        assert response.status_code == 200
        assert [item.id for item in tail] == [item.id for item in whole[2:]]
        assert chat_text(whole[:2] + tail) == answer


def test_chat_errors(chat_url: str) -> None:
    with httpx.Client(base_url=chat_url, timeout=TIMEOUT) as client:
        assert client.get("/api/chat/resume/no-such-stream").status_code == 404
        # The resume path is not taken for a chat with agent "resume".
        assert client.post("/api/chat/resume/x", json=chat_body("hi")).status_code == 405
        response, _ = read_events(client, "POST", "/api/chat/a/t", limit=1, json=chat_body("hi"))
        resume = f"/api/chat/resume/{response.headers['x-stream-id']}"
        assert client.get(resume, headers={"Last-Event-ID": "abc"}).status_code == 400
        assert client.get(resume, params={"resumeAt": "3"}).status_code == 400  # SSE
        # A bad request body is the app's 422, passed through, not a stream.
        bad = client.post("/api/chat/a/t", json={"messages": "nope"})
        assert bad.status_code == 422
        assert "x-stream-id" not in bad.headers


def test_chat_stop_with_delete(chat_url: str) -> None:
    message = " ".join(["long"] * 40)  # an answer of about 70 words: ~1.4 s
    answer = example("chat_app").answer_for(message)
    with httpx.Client(base_url=chat_url, timeout=TIMEOUT) as client:
        with client.stream("POST", "/api/chat/a/t", json=chat_body(message)) as response:
            stream_id = response.headers["x-stream-id"]
            received = events(response)
            next(received)
            stopped = client.delete(f"/api/chat/resume/{stream_id}")
            assert stopped.status_code == 202
            got = list(received)  # the stream ends early, cleanly, without [DONE]
        assert all(item.text != "[DONE]" for item in got)
        assert 1 + len(got) < len(answer.split(" "))
        assert client.get(f"/api/chat/resume/{stream_id}").status_code == 410
        assert client.delete(f"/api/chat/resume/{stream_id}").status_code == 410
        assert client.delete("/api/chat/resume/no-such-stream").status_code == 404


def test_chat_page(chat_url: str) -> None:
    response = httpx.get(f"{chat_url}/", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "<form" in page
    assert "Cut connection" in page
    # The page runs on the package's browser client, served by the app itself.
    assert '<script type="module">' in page
    assert 'from "/_resumable/resumable-stream.js"' in page
    assert "ResumableStreamClient.saved()" in page  # a reload resumes
    module = httpx.get(f"{chat_url}/_resumable/resumable-stream.js", timeout=TIMEOUT)
    assert module.status_code == 200
    assert module.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "export class ResumableStreamClient" in module.text


NODE_HARNESS = r"""
import { ResumableStreamClient } from "./resumable-stream.mjs";
const base = process.argv[2];
const ids = [], lines = [];
let text = "", dropped = false;
const client = new ResumableStreamClient({
  fetch: (url, init) => fetch(base + url, init),
  retryDelay: 50,
  logger: { info: (m) => lines.push(m), warn: (m) => lines.push(m), debug() {}, error() {} },
  onMessage(data, event) {
    ids.push(event.id);
    if (data !== "[DONE]") text += JSON.parse(data).delta;
    if (ids.length === 3 && !dropped) dropped = client.dropConnection();  // cut mid-answer
  },
});
const result = await client.start("/api/chat/demo-agent/thread-node",
                                  { messages: [{ role: "user", content: "Hi from node" }] });
console.log(JSON.stringify({ result, ids, text, lines, dropped }));
"""


def node_version() -> int:
    node = shutil.which("node")
    if node is None:
        return 0
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10)
    found = re.match(r"v(\d+)", out.stdout)
    return int(found.group(1)) if found else 0


@pytest.mark.skipif(node_version() < 18, reason="needs node >= 18 (fetch, web streams)")
def test_chat_page_client_resumes_in_node(chat_url: str, tmp_path: Path) -> None:
    """The page's client module, as the app serves it, run by node: send, cut, resume."""
    module = httpx.get(f"{chat_url}/_resumable/resumable-stream.js", timeout=TIMEOUT)
    (tmp_path / "resumable-stream.mjs").write_bytes(module.content)
    harness = tmp_path / "page.mjs"
    harness.write_text(NODE_HARNESS)
    run = subprocess.run(
        ["node", str(harness), chat_url], capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    answer = example("chat_app").answer_for("Hi from node")
    assert result["dropped"], result
    assert result["result"]["status"] == "complete", result
    assert result["text"] == answer  # every word exactly once
    assert result["ids"] == [str(i) for i in range(len(answer.split(" ")) + 1)]  # and [DONE]
    stream_id = result["result"]["streamId"]
    assert any(f"stream {stream_id}: resumed after event 2" in line for line in result["lines"])


# -- Starlette NDJSON app --------------------------------------------------------------------


def test_starlette_cut_and_resume_at(starlette_url: str) -> None:
    message = "NDJSON, cut in the middle of a line"
    answer = example("starlette_app").answer_for(message)
    cut = 50  # characters: inside the second line
    with httpx.Client(base_url=starlette_url, timeout=TIMEOUT) as client:
        received = ""
        with client.stream("POST", "/api/chat/a/t", json=chat_body(message)) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("application/x-ndjson")
            stream_id = response.headers["x-stream-id"]
            for text in response.iter_text():
                received += text
                if len(received) >= cut:
                    break
        received = received[:cut]  # as if the connection dropped right there
        assert not received.endswith("\n")
    with httpx.Client(base_url=starlette_url, timeout=TIMEOUT) as client:
        resume = f"/api/chat/resume/{stream_id}"
        rest = client.get(resume, params={"resumeAt": str(len(received))})
        assert rest.status_code == 200
        assert rest.headers["x-stream-id"] == stream_id
        body = received + rest.text
        lines = [json.loads(line) for line in body.splitlines()]
        assert lines[-1] == {"type": "finish"}
        assert "".join(line["delta"] for line in lines[:-1]) == answer
        assert body.endswith("\n")
        # Finished: no position is 410, a position at the end is 410, unknown is 404.
        assert client.get(resume).status_code == 410
        assert client.get(resume, params={"resumeAt": str(len(body))}).status_code == 410
        assert client.get("/api/chat/resume/no-such-stream").status_code == 404


# -- Litestar explicit-response app ----------------------------------------------------------


def test_litestar_cut_and_resume_with_last_event_id(litestar_url: str) -> None:
    message = "Litestar, cut me"
    answer = example("litestar_app").answer_for(message)
    with httpx.Client(base_url=litestar_url, timeout=TIMEOUT) as client:
        response, first = read_events(
            client, "POST", "/api/chat/agent-1/thread-1", limit=3, json=chat_body(message)
        )
    assert response.status_code == 200  # the response's own status, not @post's 201
    stream_id = response.headers["x-stream-id"]
    with httpx.Client(base_url=litestar_url, timeout=TIMEOUT) as client:
        resume = f"/api/chat/resume/{stream_id}"
        response, rest = read_events(
            client, "GET", resume, headers={"Last-Event-ID": first[-1].id or ""}
        )
        assert response.status_code == 200
        got = first + rest
        check_ids(got)
        assert [item.event for item in got] == ["delta"] * (len(got) - 1) + ["done"]
        assert "".join(json.loads(item.text)["text"] for item in got[:-1]) == answer
        assert client.get(resume).status_code == 410
        assert client.get("/api/chat/resume/no-such-stream").status_code == 404
