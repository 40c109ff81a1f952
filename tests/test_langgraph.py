"""The LangGraph SDK's own SSE client reads our streams through connection cuts.

``langgraph_sdk.get_client(url=...).http.stream(...)`` is what LangGraph apps use to
read agent streams (``client.runs.stream(...)`` calls it). After a transport error it
reconnects by itself to the ``Location`` the response named, with ``GET`` and
``Last-Event-ID``, up to 5 times in a row with a backoff from 1 s (so every cut here
costs about a second: the cut tests are few). The
app is LangGraph-shaped: ``event: metadata``, ``event: values`` with JSON data, ``event:
end``, behind `ResumableStreamMiddleware`, from a `ResumableStreamingResponse`, and
resumed through `ResumeEndpoint`; it runs under uvicorn on loopback, and the client
reads it through `CuttingProxy` (tests/tcp_proxy.py), which aborts a connection after a
fixed number of body bytes. Every test checks that every event arrives once, in order,
with its id, and how many cuts there were.

Cut points are fixed byte budgets. The body is far longer than the budgets together
(``VALUES`` events of about 150 bytes against budgets of a few hundred), so every
budget is spent and the number of cuts is exact. A gated app (``?gate=``) parks after
its first events until the test has received them, so the reconnects follow a running
stream; ungated, the stream is complete by the time the client is back (1 s later) and
the resume replays it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import langgraph_sdk
import pytest
import redis.asyncio as aioredis
from langgraph_sdk import get_client
from langgraph_sdk.schema import StreamPart
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from resumable_stream import (
    MemoryBackend,
    ResumableStreamContext,
    StreamOptions,
    StreamStatus,
    create_resumable_stream_context,
)
from resumable_stream.asgi import ResumableStreamMiddleware, ResumeEndpoint
from resumable_stream.backends.redis import RedisBackend
from resumable_stream.starlette import ResumableStreamingResponse

from .http_servers import LiveServer, Probe, serving
from .tcp_proxy import CuttingProxy

pytestmark = pytest.mark.timeout(90)

FAST = StreamOptions(lease=1.0, poll_interval=0.25, shutdown_grace=2.0)
STEP = 30.0  # bound on one whole read: five reconnects back off 1 + 2 + 4 + 5 + 5 s at most
VALUES = 40

# -- the LangGraph-shaped bodies ------------------------------------------------------------


def run_events(run_id: str) -> list[tuple[str, Any]]:
    """What the client must see, as ``(event, data)``: metadata, the values, end."""
    values = [
        {"messages": [{"type": "ai", "content": f"Schritt {i}: Grüße, 世界 ✓" + "·" * (i % 5)}],
         "step": i}
        for i in range(VALUES)
    ]  # fmt: skip
    return [
        ("metadata", {"run_id": run_id, "attempt": 1}),
        *(("values", value) for value in values),
        ("end", None),
    ]


def wire(event: str, data: Any) -> bytes:
    """One event as a LangGraph server writes it; ``end`` carries no data line."""
    if data is None:
        return f"event: {event}\n\n".encode()
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def run_id_of(body: Any) -> str:
    key = body.get("input", {}).get("key") if isinstance(body, dict) else None
    return str(key or "run")


async def run_body(
    probe: Probe, run_id: str, gate: int | None, fail_after: int | None
) -> AsyncIterator[bytes]:
    """The run's events; parks after ``gate`` of them until the test says go, raises
    after ``fail_after`` of them (a graph that fails mid-run)."""
    for i, (event, data) in enumerate(run_events(run_id)):
        if i == gate:
            probe.event(f"{run_id}:paused").set()
            await probe.event(f"{run_id}:go").wait()
        if i == fail_after:
            raise RuntimeError("the graph failed")
        yield wire(event, data)


def _int(value: str | None) -> int | None:
    return None if value is None else int(value)


def build_app(ctx: ResumableStreamContext, probe: Probe) -> Any:
    async def runs_stream(request: Request) -> Response:
        """``POST /threads/{thread_id}/runs/stream``: a plain StreamingResponse; the
        middleware makes it resumable."""
        body = await request.json()
        return StreamingResponse(
            run_body(
                probe, run_id_of(body), _int(request.query_params.get("gate")),
                _int(request.query_params.get("fail")),
            ),
            media_type="text/event-stream",
        )  # fmt: skip

    async def explicit_stream(request: Request) -> Response:
        """``POST /explicit/runs/stream``: the explicit response, naming its resume URL."""
        body = await request.json()
        return ResumableStreamingResponse(
            run_body(probe, run_id_of(body), _int(request.query_params.get("gate")), None),
            context=ctx,
            media_type="text/event-stream",
            ping_interval=None,
            resume_path="/resume/{stream_id}",
        )

    app = Starlette(
        routes=[
            Route("/threads/{thread_id}/runs/stream", runs_stream, methods=["POST"]),
            Route("/explicit/runs/stream", explicit_stream, methods=["POST"]),
            Route(
                "/resume/{stream_id}",
                endpoint=ResumeEndpoint(ctx, ping_interval=None),
                methods=["GET", "DELETE"],
            ),
        ]
    )
    return ResumableStreamMiddleware(
        app,
        ctx,
        path="/threads/{thread_id}/runs/stream",
        resume_path="/threads/{thread_id}/runs/resume/{stream_id}",
        ping_interval=None,
    )


# -- the server ------------------------------------------------------------------------------


@dataclass
class Site:
    server: LiveServer
    probe: Probe
    holder: dict[str, ResumableStreamContext]

    @property
    def url(self) -> str:
        return self.server.url

    async def wait_status(self, stream_id: str, wanted: StreamStatus) -> None:
        ctx = self.holder["ctx"]
        with anyio.fail_after(10):
            # The stored status: no event crosses from the backend into the test.
            while await self.server.run(lambda: ctx.get_status(stream_id)) is not wanted:  # noqa: ASYNC110
                await asyncio.sleep(0.02)


@contextlib.contextmanager
def make_site(backend: str, redis_url: str | None) -> Iterator[Site]:
    probe = Probe()
    holder: dict[str, ResumableStreamContext] = {}

    async def make() -> tuple[Any, Callable[[], Any]]:
        client = None
        if backend == "redis":
            assert redis_url is not None
            client = aioredis.Redis.from_url(redis_url)
            store: Any = RedisBackend(client, key_prefix=f"lg-{uuid.uuid4().hex[:12]}")
        else:
            store = MemoryBackend()
        ctx = holder["ctx"] = create_resumable_stream_context(store, options=FAST)

        async def cleanup() -> None:
            await ctx.aclose()
            await store.aclose()
            if client is not None:
                await client.aclose()

        return build_app(ctx, probe), cleanup

    with serving("uvicorn", make, probe) as server:
        yield Site(server, probe, holder)


@pytest.fixture(scope="module", params=["memory", "redis"])
def site(request: pytest.FixtureRequest) -> Iterator[Site]:
    url = request.getfixturevalue("redis_server").url if request.param == "redis" else None
    with make_site(request.param, url) as made:
        yield made


@dataclass
class Tally:
    """What the SDK reads checked, for the figures printed at the end of the module."""

    reads: int = 0
    cuts: int = 0
    events: int = 0

    def add(self, proxy: CuttingProxy, parts: list[StreamPart]) -> None:
        self.reads += 1
        self.cuts += proxy.cuts
        self.events += len(parts)


@pytest.fixture(scope="module")
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    figures = Tally()
    yield figures
    plugins = request.config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")
    if reporter is None or capture is None or not figures.reads:
        return
    with capture.global_and_fixture_disabled():  # into the CI log, past the capture
        reporter.write_line(
            f"\nlanggraph-sdk {langgraph_sdk.__version__}: {figures.reads} reads, "
            f"{figures.cuts} cuts survived, {figures.events} events checked "
            "(each once, in order)"
        )


def budgets(*cuts: int) -> Callable[[], int | None]:
    """Connection i may carry ``cuts[i]`` body bytes; the rest carry everything."""
    left = iter(cuts)
    return lambda: next(left, None)


def seen(parts: list[StreamPart]) -> list[tuple[str, Any]]:
    return [(part.event, part.data) for part in parts]


def ids(parts: list[StreamPart]) -> list[str | None]:
    return [part.id for part in parts]


async def read_run(
    proxy: CuttingProxy,
    path: str,
    *,
    method: str = "POST",
    json_body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    on_part: Callable[[list[StreamPart]], None] | None = None,
    into: list[StreamPart] | None = None,
) -> list[StreamPart]:
    """Everything the LangGraph SDK's stream yields, through the proxy (also appended
    to ``into``, which keeps them if the stream raises)."""
    client = get_client(url=proxy.url, api_key=None, timeout=10.0)
    parts: list[StreamPart] = [] if into is None else into
    try:
        with anyio.fail_after(STEP):
            async for part in client.http.stream(path, method, json=json_body, headers=headers):
                parts.append(part)
                if on_part is not None:
                    on_part(parts)
    finally:
        await client.aclose()
    return parts


def new_run() -> str:
    return f"run-{uuid.uuid4().hex[:12]}"


# -- the SDK through cuts ----------------------------------------------------------------------

GATE = 12  # events produced before the gated app parks: about 1.8 kB, more than any budget
CUTS = {1: (400,), 2: (400, 500), 3: (400, 500, 600)}


@pytest.mark.parametrize("cuts", sorted(CUTS), ids=lambda n: f"{n}-cuts")
async def test_sdk_follows_a_running_stream_through_cuts(
    site: Site, cuts: int, tally: Tally
) -> None:
    """The middleware's response, cut 1 to 3 times while the run is still going: each
    reconnect (at the Location, with Last-Event-ID) picks up after the last event."""
    run_id = new_run()
    go = site.probe.event(f"{run_id}:go")

    def release(parts: list[StreamPart]) -> None:
        if len(parts) >= GATE:
            go.set()  # the client has everything before the gate: the run goes on, live

    async with CuttingProxy(site.server.port, budgets(*CUTS[cuts])) as proxy:
        parts = await read_run(
            proxy, f"/threads/t-1/runs/stream?gate={GATE}",
            json_body={"input": {"key": run_id}}, on_part=release,
        )  # fmt: skip
    assert seen(parts) == run_events(run_id)  # every event once, in order
    assert ids(parts) == [str(i) for i in range(VALUES + 2)]
    assert proxy.cuts == cuts
    assert proxy.connections == cuts + 1
    tally.add(proxy, parts)


async def test_sdk_runs_stream_through_cuts(site: Site, tally: Tally) -> None:
    """The call LangGraph apps make, ``client.runs.stream(thread, assistant, input=...)``,
    which POSTs to ``/threads/{thread_id}/runs/stream`` and reads with ``http.stream``."""
    run_id = new_run()
    go = site.probe.event(f"{run_id}:go")
    parts: list[StreamPart] = []
    async with CuttingProxy(site.server.port, budgets(400, 500)) as proxy:
        client = get_client(url=proxy.url, api_key=None, timeout=10.0)
        try:
            with anyio.fail_after(STEP):
                async for part in client.runs.stream(
                    "t-8", "agent", input={"key": run_id}, params={"gate": GATE}
                ):
                    parts.append(part)
                    if len(parts) >= GATE:
                        go.set()
        finally:
            await client.aclose()
    assert seen(parts) == run_events(run_id)
    assert ids(parts) == [str(i) for i in range(VALUES + 2)]
    assert proxy.cuts == 2
    tally.add(proxy, parts)


async def test_sdk_replays_a_finished_stream_through_cuts(site: Site, tally: Tally) -> None:
    """Ungated: the run has ended when the client is back; the resumes replay it from
    storage, each cut again."""
    run_id = new_run()
    async with CuttingProxy(site.server.port, budgets(300, 700)) as proxy:
        parts = await read_run(
            proxy, "/threads/t-2/runs/stream", json_body={"input": {"key": run_id}}
        )
    assert seen(parts) == run_events(run_id)
    assert ids(parts) == [str(i) for i in range(VALUES + 2)]
    assert proxy.cuts == 2
    tally.add(proxy, parts)


async def test_sdk_cut_before_the_first_event(site: Site, tally: Tally) -> None:
    """Cut right after the headers: the client has the Location but no event, so it
    reconnects without Last-Event-ID; at a Location that means from the start (the run
    has ended meanwhile: a bare resume URL would answer 410)."""
    run_id = new_run()
    async with CuttingProxy(site.server.port, budgets(0)) as proxy:
        with pytest.warns(UserWarning, match="without a Last-Event-ID"):
            parts = await read_run(
                proxy, "/threads/t-3/runs/stream", json_body={"input": {"key": run_id}}
            )
    assert seen(parts) == run_events(run_id)
    assert ids(parts) == [str(i) for i in range(VALUES + 2)]
    assert proxy.cuts == 1
    tally.add(proxy, parts)


async def finished_run(site: Site, thread: str) -> tuple[str, str, str]:
    """A completed run made over plain HTTP: its run id, stream id and Location."""
    run_id = new_run()
    async with httpx.AsyncClient(base_url=site.url, trust_env=False, timeout=10) as http:
        response = await http.post(
            f"/threads/{thread}/runs/stream", json={"input": {"key": run_id}}
        )
    assert response.status_code == 200
    stream_id = response.headers["x-stream-id"]
    await site.wait_status(stream_id, StreamStatus.DONE)
    return run_id, stream_id, response.headers["location"]


async def raw_get_body(port: int, target: str, headers: dict[str, str]) -> bytes:
    """The body bytes of a GET as they are on the wire (chunked framing included)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        with anyio.fail_after(10):
            raw = await reader.read()  # to EOF: Connection: close
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body


async def test_sdk_cut_after_the_last_event(site: Site, tally: Tally) -> None:
    """A cut after the last event but before the body's end: the client has every
    event yet sees a transport error and reconnects with the last id. A Location
    answers that with an empty 200 (a bare resume URL answers 410, which the SDK
    raises as an error although nothing is missing)."""
    run_id, _, location = await finished_run(site, "t-4")
    after = 20
    headers = {"Last-Event-ID": str(after)}
    # A finished stream's replay is the same bytes every time: measure it, then cut
    # the SDK's read of it just before the chunked body's terminator.
    body = await raw_get_body(site.server.port, location, headers)
    assert body.endswith(b"\r\n0\r\n\r\n")
    async with CuttingProxy(site.server.port, budgets(len(body) - 5)) as proxy:
        parts = await read_run(proxy, location, method="GET", headers=headers)
    assert seen(parts) == run_events(run_id)[after + 1 :]
    assert ids(parts) == [str(i) for i in range(after + 1, VALUES + 2)]
    assert proxy.cuts == 1
    assert proxy.connections == 2
    tally.add(proxy, parts)
    async with httpx.AsyncClient(base_url=site.url, trust_env=False, timeout=10) as http:
        last = {"Last-Event-ID": str(VALUES + 1)}
        bare = await http.get(location.split("?")[0], headers=last)
        again = await http.get(location, headers=last)
    assert bare.status_code == 410
    assert (again.status_code, again.content) == (200, b"")
    assert again.headers["x-stream-status"] == "done"


async def test_sdk_reads_the_explicit_response_through_cuts(site: Site, tally: Tally) -> None:
    """`ResumableStreamingResponse(resume_path=...)` names its resume URL too."""
    run_id = new_run()
    go = site.probe.event(f"{run_id}:go")

    def release(parts: list[StreamPart]) -> None:
        if len(parts) >= GATE:
            go.set()

    async with CuttingProxy(site.server.port, budgets(400, 500)) as proxy:
        parts = await read_run(
            proxy, f"/explicit/runs/stream?gate={GATE}",
            json_body={"input": {"key": run_id}}, on_part=release,
        )  # fmt: skip
    assert seen(parts) == run_events(run_id)
    assert ids(parts) == [str(i) for i in range(VALUES + 2)]
    assert proxy.cuts == 2
    tally.add(proxy, parts)


async def test_sdk_gets_a_failed_run_as_an_error_after_its_prefix(site: Site, tally: Tally) -> None:
    """A run that fails mid-stream: the response is aborted (never ended cleanly), the
    SDK reconnects and gets 410 with X-Stream-Status: failed, which it raises. The
    events before the failure arrive once each; nothing reads as a normal end."""
    run_id = new_run()
    fail_after = 15
    parts: list[StreamPart] = []
    async with CuttingProxy(site.server.port, budgets()) as proxy:
        with pytest.raises(httpx.HTTPStatusError) as failed:
            await read_run(
                proxy, f"/threads/t-5/runs/stream?fail={fail_after}",
                json_body={"input": {"key": run_id}}, into=parts,
            )  # fmt: skip
    assert failed.value.response.status_code == 410
    assert failed.value.response.headers["x-stream-status"] == "failed"
    assert failed.value.response.headers["x-stream-error"] == "StreamFailed"
    assert seen(parts) == run_events(run_id)[:fail_after]
    assert ids(parts) == [str(i) for i in range(fail_after)]
    assert proxy.cuts == 0  # the server aborted the response: no cut of ours
    # The original, then the resume that answers 410 (one more if a resumed answer
    # carried the last events and was aborted too: still each event once).
    assert proxy.connections >= 2
    tally.add(proxy, parts)


# -- what the SDK relies on, over plain HTTP -------------------------------------------------


async def test_every_resumable_response_names_its_resume_url(site: Site) -> None:
    run_id, stream_id, location = await finished_run(site, "t-6")
    assert location == f"/threads/t-6/runs/resume/{stream_id}?reconnect=1"
    async with httpx.AsyncClient(base_url=site.url, trust_env=False, timeout=10) as http:
        resumed = await http.get(location, headers={"Last-Event-ID": "3"})
        assert resumed.status_code == 200
        assert resumed.headers["location"] == location  # the resume endpoint's own path
        route = await http.get(f"/resume/{stream_id}", headers={"Last-Event-ID": "3"})
        assert route.headers["location"] == f"/resume/{stream_id}?reconnect=1"
        assert route.content == resumed.content
        head = await http.head(f"/resume/{stream_id}", headers={"Last-Event-ID": "3"})
        assert (head.status_code, head.content) == (200, b"")
        assert head.headers["location"] == f"/resume/{stream_id}?reconnect=1"
        explicit = await http.post("/explicit/runs/stream", json={"input": {"key": run_id}})
        explicit_id = explicit.headers["x-stream-id"]
        assert explicit.headers["location"] == f"/resume/{explicit_id}?reconnect=1"
        # No position at a Location: from the start, even once the stream has ended
        # (a bare resume URL keeps the npm package's answer for that: 410).
        from_start = await http.get(location)
        assert from_start.status_code == 200
        bare = await http.get(f"/resume/{stream_id}")
        assert bare.status_code == 410
        minus_one = await http.get(f"/resume/{stream_id}", headers={"Last-Event-ID": "-1"})
        assert minus_one.status_code == 200
    assert minus_one.content == from_start.content
    events = [b for b in from_start.content.split(b"\n\n") if b]
    assert len(events) == VALUES + 2
    assert events[0].startswith(b"event: metadata\n")


def with_our_id(block: bytes, index: int) -> bytes:
    """``block`` as a resume must send it: unchanged but for ``id: <index>`` added
    before its final blank line (written out here, not taken from the package)."""
    eol = b"\r\n" if block.endswith(b"\r\n\r\n") else b"\n"
    return block[: -len(eol)] + b"id: " + str(index).encode() + b"\n" + eol


async def test_event_fields_round_trip_exactly(site: Site) -> None:
    """The middleware stores the app's body bytes; a resume from a Last-Event-ID in
    the middle replays the events after it byte for byte, ``event:`` lines included."""
    run_id, _, location = await finished_run(site, "t-7")
    blocks = [wire(event, data) for event, data in run_events(run_id)]
    async with httpx.AsyncClient(base_url=site.url, trust_env=False, timeout=10) as http:
        for after in (0, 17, VALUES):
            resumed = await http.get(location, headers={"Last-Event-ID": str(after)})
            assert resumed.status_code == 200
            expected = b"".join(
                with_our_id(block, i) for i, block in enumerate(blocks) if i > after
            )
            assert resumed.content == expected
