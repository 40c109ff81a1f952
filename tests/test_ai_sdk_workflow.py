"""The AI SDK's ``WorkflowChatTransport`` against ``examples/ai_sdk_app.py``, through cuts.

Node runs ``tests/ai_sdk/workflow.mjs``: the ``ai`` package's ``AbstractChat`` (what
``useChat``'s ``Chat`` extends) with ``@ai-sdk/workflow``'s ``WorkflowChatTransport``,
pinned in ``tests/ai_sdk/package.json`` (``npm ci``; ``scripts/test`` does it), on the
global fetch. The app runs under uvicorn in subprocesses on loopback: one process on
the memory backend, and two on a private Redis (the POST goes to one, every reconnect
to the other). Between them, `EventCutProxy` closes connections mid-body at points
counted in SSE events and bytes, 1 to 3 per answer: the transport must reconnect by
itself (``GET /api/chat/{runId}/stream?startIndex=N``) and hand the chat every chunk
of the answer exactly once, in order, ending with ``finish``. ``DefaultChatTransport``
(``useChat``'s resume, ``tests/ai_sdk/harness.mjs``) goes through the same proxy at the
end.

Without node (>= 18) or its packages these tests skip, unless
``RESUMABLE_STREAM_REQUIRE_BROWSER=1`` (CI sets it): then they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from .servers import RedisServer
from .test_ai_sdk_client import CLIENT_DIR, REQUIRE, app_process, example, serve
from .test_example_apps import node_version

HARNESS = CLIENT_DIR / "workflow.mjs"
DELAY = "0.01"  # seconds per word: an answer streams for about half a second
HEAD = 3  # start, start-step, text-start: the chunks before the first word

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", autouse=True)
def _client_installed() -> None:
    missing = None
    if node_version() < 18:
        missing = "needs node >= 18 (fetch, web streams)"
    elif not (CLIENT_DIR / "node_modules" / "@ai-sdk" / "workflow" / "package.json").is_file():
        missing = "@ai-sdk/workflow is not installed: (cd tests/ai_sdk && npm ci)"
    if missing is not None:
        if REQUIRE:
            pytest.fail(f"RESUMABLE_STREAM_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)


# -- a proxy that cuts at counted points ----------------------------------------------------------

Cut = tuple[int, int]
"""(events, extra): close after this many whole SSE events, then ``extra`` more bytes."""


@dataclass
class CutMade:
    connection: int
    events: int
    extra: int


@dataclass
class EventCutProxy:
    """A loopback proxy, one listening port per target, that cuts response bodies.

    Each new connection (on any port) takes the next entry of ``cuts``; past the end of
    the list, connections pass whole. A cut forwards the response head whole, then the
    body up to ``extra`` bytes past the end of its ``events``-th SSE event (a blank line:
    the chunked framing uses CRLF, so only events make one), then closes the client side
    after those bytes were written (FIN: the client sees them all, then a body cut
    short) and aborts the server side. The points are counted, so every run cuts at the
    same ones; nothing waits on a clock.
    """

    targets: list[int]
    cuts: list[Cut]
    ports: list[int] = field(default_factory=list)
    made: list[CutMade] = field(default_factory=list)
    connections: int = 0
    _servers: list[asyncio.Server] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def __aenter__(self) -> EventCutProxy:
        for target in self.targets:
            server = await asyncio.start_server(
                lambda r, w, t=target: self._handle(r, w, t), "127.0.0.1", 0
            )
            self._servers.append(server)
            self.ports.append(server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        for server in self._servers:
            await server.wait_closed()

    def url(self, which: int) -> str:
        return f"http://127.0.0.1:{self.ports[which]}"

    async def _handle(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, target: int
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        number = self.connections
        self.connections += 1
        cut = self.cuts[number] if number < len(self.cuts) else None
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_w.transport.abort()
            self._tasks.discard(task)
            return
        upstream = asyncio.create_task(self._pipe(client_r, server_w))
        try:
            if await self._downstream(server_r, client_w, cut):
                assert cut is not None
                self.made.append(CutMade(number, *cut))
                client_w.close()  # FIN after what was written
                with contextlib.suppress(OSError):
                    await asyncio.wait_for(client_w.wait_closed(), 5)
        except asyncio.CancelledError:
            pass  # the proxy is shutting down
        finally:
            upstream.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await upstream
            client_w.transport.abort()
            server_w.transport.abort()
            self._tasks.discard(task)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()

    @staticmethod
    async def _downstream(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cut: Cut | None
    ) -> bool:
        """Forward the response; True if it was cut."""
        head = b""
        body = b""  # the body so far, while a cut is pending
        in_body = False
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if not in_body:
                    head += data
                    end = head.find(b"\r\n\r\n")
                    if end < 0:
                        writer.write(data)
                        await writer.drain()
                        continue
                    in_body = True
                    data = head[end + 4 :]
                    writer.write(head[: end + 4])
                if cut is None:
                    writer.write(data)
                    await writer.drain()
                    continue
                sent = len(body)
                body += data
                at = _cut_offset(body, cut)
                if at is None:
                    writer.write(data)
                    await writer.drain()
                    continue
                writer.write(body[sent:at])
                await writer.drain()
                return True
        return False


def _cut_offset(body: bytes, cut: Cut) -> int | None:
    """Where in ``body`` the cut falls, None if not within it yet."""
    events, extra = cut
    position = 0
    for _ in range(events):
        found = body.find(b"\n\n", position)
        if found < 0:
            return None
        position = found + 2
    at = position + extra
    return at if at <= len(body) else None


# -- the app under uvicorn, and the harness -------------------------------------------------------


@dataclass
class Apps:
    """Where the POST goes (``send``) and where reconnects and stops go (``resume``)."""

    send_port: int
    resume_port: int

    @property
    def direct(self) -> str:
        return f"http://127.0.0.1:{self.resume_port}"


@pytest.fixture(scope="module", params=["one process", "two processes on Redis"])
def apps(request: pytest.FixtureRequest) -> Iterator[Apps]:
    env = {"AI_SDK_DELAY": DELAY}
    with tempfile.TemporaryFile() as log_a, tempfile.TemporaryFile() as log_b:
        target = "examples.ai_sdk_app:app"
        if request.param == "one process":
            first = app_process(target, log_a)
            first.env.update(env)
            with serve(first) as (app,):
                yield Apps(app.port, app.port)
        else:
            redis: RedisServer = request.getfixturevalue("redis_server")
            pair = [app_process(target, log, redis.url) for log in (log_a, log_b)]
            for app in pair:
                app.env.update(env)
            with serve(*pair) as (a, b):
                yield Apps(a.port, b.port)


async def run(proxy: EventCutProxy, scenario: str, **config: Any) -> dict[str, Any]:
    """One harness scenario on a new chat, through ``proxy``; its result."""
    config = {
        "scenario": scenario,
        "chatId": f"chat-{uuid.uuid4().hex[:12]}",
        "send": proxy.url(0),
        "resume": proxy.url(len(proxy.ports) - 1),
        "text": "Tell me about resumable streams",
        "timeoutMs": 20_000,
        **config,
    }
    node = await asyncio.create_subprocess_exec(
        "node", str(HARNESS), json.dumps(config), cwd=CLIENT_DIR,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(node.communicate(), 40)
    finally:
        if node.returncode is None:
            node.kill()
            await node.wait()
    assert node.returncode == 0, f"{err.decode()}\n{out.decode()}"
    result: dict[str, Any] = json.loads(out)
    result["stderr"] = err.decode()
    return result


def expected_types(text: str) -> list[str]:
    words = example().words(example().answer_for(text))
    return [
        "start", "start-step", "text-start", *["text-delta"] * len(words),
        "text-end", "finish-step", "finish",
    ]  # fmt: skip


async def stored_answer(apps: Apps, run_id: str) -> list[dict[str, Any]]:
    """The whole answer as the server has it, read without the proxy from chunk 0."""
    async with httpx.AsyncClient(base_url=apps.direct, timeout=10, trust_env=False) as http:
        response = await http.get(f"/api/chat/{run_id}/stream", params={"startIndex": 0})
    assert response.status_code == 200
    assert response.headers["x-workflow-run-id"] == run_id
    data = [
        line[len("data: ") :] for line in response.text.split("\n") if line.startswith("data: ")
    ]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def assistant_text(tab: dict[str, Any]) -> str:
    (answer,) = [m for m in tab["messages"] if m["role"] == "assistant"]  # never a second one
    return "".join(p.get("text", "") for p in answer["parts"] if p["type"] == "text")


# -- the cuts -------------------------------------------------------------------------------------

CUTS: dict[str, list[Cut]] = {
    "POST mid-event": [(HEAD + 2, 7)],
    "POST at an event boundary": [(HEAD + 6, 0)],
    "POST before any event, then a reconnect": [(0, 0), (HEAD + 1, 11)],
    "POST and two reconnects in a row": [(HEAD + 3, 20), (2, 0), (5, 3)],
    "POST near the end, reconnect twice": [(HEAD + 30, 5), (1, 2), (1, 0)],
}


@pytest.mark.parametrize("send_chat_id", [False, True], ids=["no chat id", "chat id in body"])
@pytest.mark.parametrize("name", list(CUTS))
async def test_every_chunk_once_in_order_through_cuts(
    apps: Apps, name: str, send_chat_id: bool
) -> None:
    cuts = CUTS[name]
    text = f"Cut me: {name}"
    async with EventCutProxy([apps.send_port, apps.resume_port], cuts) as proxy:
        result = await run(proxy, "send", text=text, sendChatId=send_chat_id)
    assert [(c.events, c.extra) for c in proxy.made] == cuts  # every cut landed
    tab = result["tab"]
    assert (tab["status"], tab["error"], tab["errors"]) == ("ready", None, [])
    log = result["log"]
    post, *gets = log
    run_id = post["runId"]
    assert (post["method"], post["status"]) == ("POST", 200)
    assert run_id
    # One reconnect per cut, each from the chunks the transport had: the data events of
    # the responses before it ([DONE] is no chunk).
    assert len(gets) == len(cuts)
    had = 0
    for before, get in zip(log, gets, strict=False):
        had += sum(1 for data in before["events"] if data != "[DONE]")
        assert get["path"] == f"/api/chat/{run_id}/stream?startIndex={had}"
        assert get["status"] == 200
        assert get["runId"] == run_id
    assert all(entry["end"].startswith("broken") for entry in log[:-1])
    assert log[-1]["end"] == "complete"
    # Every chunk exactly once, in order, ending with finish: what the chat got is the
    # stored answer, chunk for chunk.
    whole = await stored_answer(apps, run_id)
    assert [c["type"] for c in whole] == expected_types(text)
    assert result["seen"] == whole
    assert whole[-1] == {"type": "finish", "finishReason": "stop"}
    assert assistant_text(tab) == example().answer_for(text)
    print(f"{name}: {len(proxy.made)} cuts survived, {len(whole)} chunks checked")


async def test_negative_start_index_reads_from_the_tail(apps: Apps) -> None:
    """``startIndex=-k``: the last k chunks, and the tail index for the transport."""
    async with EventCutProxy([apps.send_port], []) as proxy:
        result = await run(proxy, "send", text="the tail")
    run_id = result["log"][0]["runId"]
    whole = await stored_answer(apps, run_id)
    async with httpx.AsyncClient(base_url=apps.direct, timeout=10, trust_env=False) as http:
        tail = await http.get(f"/api/chat/{run_id}/stream", params={"startIndex": -3})
        beyond = await http.get(f"/api/chat/{run_id}/stream", params={"startIndex": -999})
        past = await http.get(f"/api/chat/{run_id}/stream", params={"startIndex": 999})
        unknown = await http.get("/api/chat/no-such-run/stream", params={"startIndex": 0})
        bad = await http.get(f"/api/chat/{run_id}/stream", params={"startIndex": "x"})
    assert tail.headers["x-workflow-stream-tail-index"] == str(len(whole) - 1)
    data = [ln[6:] for ln in tail.text.split("\n") if ln.startswith("data: ")]
    assert [json.loads(d) for d in data[:-1]] == whole[-3:]
    assert data[-1] == "[DONE]"
    assert beyond.headers["x-workflow-stream-tail-index"] == str(len(whole) - 1)
    assert beyond.text.count("data: ") == len(whole) + 1  # from the first chunk
    assert past.status_code == 200
    assert [ln for ln in past.text.split("\n") if ln.startswith("data: ")] == ["data: [DONE]"]
    assert (unknown.status_code, bad.status_code) == (404, 400)


@pytest.mark.parametrize("send_chat_id", [False, True], ids=["by run id", "by chat id"])
async def test_stop_route_with_the_real_transport(apps: Apps, send_chat_id: bool) -> None:
    text = "Stop me, workflow"
    stop_after = HEAD + 4
    async with EventCutProxy([apps.send_port, apps.resume_port], []) as proxy:
        result = await run(proxy, "stop", text=text, stopAfter=stop_after, sendChatId=send_chat_id)
    tab = result["tab"]
    # The answer ends on its own ending (text-end, abort, finish): no reconnect, no error.
    assert (tab["status"], tab["error"], tab["errors"]) == ("ready", None, [])
    assert [e["method"] for e in result["log"]] == ["POST"]
    assert result["stop"] == {"status": 200, "body": {"success": True, "stopped": True}}
    assert result["again"] == {"status": 200, "body": {"success": True, "stopped": False}}
    seen = result["seen"]
    assert [c["type"] for c in seen[-3:]] == ["text-end", "abort", "finish"]
    assert len(seen) > stop_after
    said = assistant_text(tab)
    assert example().answer_for(text).startswith(said)
    assert len(said) < len(example().answer_for(text))
    # What was written is kept: the run replays it, with the same ending.
    run_id = result["log"][0]["runId"]
    assert await stored_answer(apps, run_id) == seen
    # The chat has no active answer any more (useChat's resume: 204).
    async with httpx.AsyncClient(base_url=apps.direct, timeout=10, trust_env=False) as http:
        for some_id in (result["chatId"], run_id):
            assert (await http.get(f"/api/chat/{some_id}/stream")).status_code == 204


async def test_a_new_page_resumes_the_running_answer_by_chat_id(apps: Apps) -> None:
    """The first page's chat stops reading (a closed tab: the answer goes on); a new
    page of the chat resumes it by chat id, from chunk 0, and gets all of it."""
    text = "Reload me, " + "the answer goes on while nobody reads it; " * 4  # a long echo
    async with EventCutProxy([apps.send_port, apps.resume_port], []) as proxy:
        result = await run(proxy, "reload", text=text, sendChatId=True, closeAfter=HEAD + 1)
    first, tab = result["first"], result["tab"]
    assert (first["status"], first["error"]) == ("ready", None)  # a disconnect, no error
    assert (tab["status"], tab["error"], tab["errors"]) == ("ready", None, [])
    post, get = result["log"]
    run_id = post["runId"]
    assert get["path"] == f"/api/chat/{result['chatId']}/stream?startIndex=0"
    assert (get["status"], get["runId"], get["end"]) == (200, run_id, "complete")
    whole = await stored_answer(apps, run_id)
    assert [c["type"] for c in whole] == expected_types(text)
    assert result["seen"] == whole
    assert result["firstSeen"] == whole[: len(result["firstSeen"])]
    assert assistant_text(tab) == example().answer_for(text)


async def test_the_tail_by_run_id_through_a_cut(apps: Apps) -> None:
    """``initialStartIndex: -2`` on a finished answer: the transport reads the tail
    index, and after a cut asks on from the absolute chunk it reached."""
    async with EventCutProxy([apps.resume_port], [(1, 3)]) as proxy:
        result = await run(
            proxy, "tail", text="the end of it", initialStartIndex=-2,
            send=f"http://127.0.0.1:{apps.send_port}",  # the POST without the proxy
        )  # fmt: skip
    assert [(c.events, c.extra) for c in proxy.made] == [(1, 3)]
    post, cut, rest = result["log"]
    run_id = post["runId"]
    whole = await stored_answer(apps, run_id)
    assert result["firstSeen"] == whole
    assert (cut["path"], cut["tailIndex"]) == (
        f"/api/chat/{run_id}/stream?startIndex=-2", str(len(whole) - 1)
    )
    assert cut["end"].startswith("broken")
    assert rest["path"] == f"/api/chat/{run_id}/stream?startIndex={len(whole) - 1}"
    assert rest["end"] == "complete"
    assert result["seen"] == whole[-2:] == [{"type": "finish-step"}, whole[-1]]
    assert result["tab"]["status"] == "ready"


# -- DefaultChatTransport (useChat's resume) through the same proxy ------------------------------

LONG = "Cut me, and resume me; " * 8  # a long echo: the answer runs for about 0.7 s
DEFAULT_CUTS: dict[str, Cut] = {
    "before any event": (0, 0),
    "mid-event": (HEAD + 2, 9),
    "at an event boundary": (HEAD + 8, 0),
}


@pytest.mark.parametrize("name", list(DEFAULT_CUTS))
async def test_default_transport_resumes_after_a_proxy_cut(apps: Apps, name: str) -> None:
    """``DefaultChatTransport`` (tests/ai_sdk/harness.mjs, its own fetch uncut): the
    proxy cuts the POST early, the same chat's ``resumeStream()`` (``GET
    /api/chat/{id}/stream``, on the other process) replays the answer from ``start``."""
    cut = DEFAULT_CUTS[name]
    async with EventCutProxy([apps.send_port, apps.resume_port], [cut]) as proxy:
        config = {
            "scenario": "cut", "chatId": f"chat-{uuid.uuid4().hex[:12]}", "text": LONG,
            "send": proxy.url(0), "resume": proxy.url(1), "stop": proxy.url(1),
            "cutAfter": None, "timeoutMs": 20_000,
        }  # fmt: skip
        node = await asyncio.create_subprocess_exec(
            "node", str(CLIENT_DIR / "harness.mjs"), json.dumps(config), cwd=CLIENT_DIR,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(node.communicate(), 40)
        assert node.returncode == 0, err.decode()
    assert [(c.events, c.extra) for c in proxy.made] == [cut]
    result = json.loads(out)
    post, get = result["log"]
    assert (post["method"], len(post["events"])) == ("POST", cut[0])
    assert result["atCut"]["status"] == "error"  # the broken body, as the SDK saw it
    assert (get["method"], get["status"]) == ("GET", 200)
    replay = [json.loads(d) for d in get["events"] if d != "[DONE]"]
    assert [c["type"] for c in replay] == expected_types(LONG)
    assert get["events"][: cut[0]] == post["events"]
    tab = result["tab"]
    assert (tab["status"], tab["error"]) == ("ready", None)
    assert assistant_text(tab) == example().answer_for(LONG)
    assert tab["messages"][-1]["id"] == replay[0]["messageId"]
    print(f"default transport, {name}: 1 cut survived, {len(replay)} chunks checked")
