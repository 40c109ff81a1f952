"""Where the Python client resumes: the start's origin, the server's Location, bad arguments.

A real uvicorn serves the client test app, wrapped in `LocationApp`, which records every
request that reaches it and can name a resume URL in a ``Location`` header (as
LangGraph-style servers do). The client talks to it through a `CuttingProxy` whose
budgets cut the first two connections mid-body at fixed byte counts, so each test
resumes exactly twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from resumable_stream import InvalidArgument, MemoryBackend, create_resumable_stream_context
from resumable_stream._sse import parse_last_event_id
from resumable_stream.browser import client_source
from resumable_stream.client import ResumableStreamClient

from .apps.client_app import TEXT, WORDS, build
from .http_servers import LiveServer, serving
from .tcp_proxy import CuttingProxy

pytestmark = pytest.mark.timeout(120)

Scope = dict[str, Any]
Message = dict[str, Any]
ASGIApp = Callable[..., Awaitable[None]]

SSE_DATA = [json.dumps({"w": w}, ensure_ascii=False) for w in WORDS]
EXPECTED = {"sse": SSE_DATA, "text": [TEXT]}
RESUME = "/api/chat/resume/"  # the middleware's resume route (the client's default)
ALT = "/alt/resume/"  # a second route to it, only ever named by a Location
CUTS = [1000, 1500]  # body bytes of the first two connections; the rest run whole


@dataclass
class Hit:
    """One request that reached the server."""

    path: str
    query: str
    last_event_id: str | None


@dataclass
class LocationApp:
    """The app under test plus a ``Location`` on every streaming answer, if ``mode`` says.

    ``mode``: ``None`` (no Location), ``"relative"`` (``/alt/resume/<id>?via=location``),
    ``"absolute"`` (the same on the request's own origin, from its ``Host``), or a
    cross-origin one: ``"other-port"`` (the server's own port, not the proxy's),
    ``"other-host"`` (``localhost`` for ``127.0.0.1``), ``"other-scheme"`` (``https``).
    Requests to ``/alt/resume/<id>`` are served by the resume route.
    """

    inner: ASGIApp
    mode: str | None = None
    hits: list[Hit] = field(default_factory=list)

    def location(self, scope: Scope, stream_id: str) -> str:
        path = f"{ALT}{stream_id}?via=location"
        host = dict(scope["headers"]).get(b"host", b"").decode()
        port = scope["server"][1]
        return {
            "relative": path,
            "absolute": f"http://{host}{path}",
            "other-port": f"http://127.0.0.1:{port}{path}",
            "other-host": f"http://{host.replace('127.0.0.1', 'localhost')}{path}",
            "other-scheme": f"https://{host}{path}",
        }[self.mode or ""]

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        headers = dict(scope["headers"])
        raw_id = headers.get(b"last-event-id")
        self.hits.append(Hit(
            scope["path"], scope["query_string"].decode(),
            None if raw_id is None else raw_id.decode(),
        ))
        path = scope["path"]
        resumed = ""
        if path.startswith(ALT):
            resumed = path[len(ALT):]
            path = RESUME + resumed
            scope = dict(scope, path=path, raw_path=path.encode())
        elif path.startswith(RESUME):
            resumed = path[len(RESUME):]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start" and self.mode and message["status"] == 200:
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"location"]
                stream_id = dict(kept).get(b"x-stream-id", resumed.encode()).decode()
                if stream_id:
                    kept.append((b"location", self.location(scope, stream_id).encode()))
                message = dict(message, headers=kept)
            await send(message)

        await self.inner(scope, receive, sending)

    def resumes(self, prefix: str) -> list[Hit]:
        return [hit for hit in self.hits if hit.path.startswith(prefix)]


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[LiveServer, LocationApp]]:
    holder: list[LocationApp] = []

    async def make() -> tuple[object, object]:
        ctx = create_resumable_stream_context(MemoryBackend())
        app = LocationApp(build(ctx))
        holder.append(app)
        return app, ctx.aclose

    with serving("uvicorn", make) as server:  # type: ignore[arg-type]
        yield server, holder[0]


@pytest.fixture
def app(live: tuple[LiveServer, LocationApp]) -> Iterator[LocationApp]:
    live[1].hits.clear()
    yield live[1]
    live[1].mode = None


@pytest.fixture
def server(live: tuple[LiveServer, LocationApp]) -> LiveServer:
    return live[0]


def two_cuts() -> Callable[[], int | None]:
    budgets = iter(CUTS)
    return lambda: next(budgets, None)


def path(kind: str) -> str:
    return f"/api/chat/{kind}/{uuid.uuid4().hex[:10]}"


async def collect(client: ResumableStreamClient, url: str) -> list[str]:
    async with client.stream("POST", url, json={"messages": []}) as messages:
        got = [m.data async for m in messages]
    return ["".join(got)] if not client.sse else got


def check_positions(kind: str, hits: list[Hit]) -> None:
    """Each resume named where the client was: Last-Event-ID, or resumeAt for text."""
    for hit in hits:
        if kind == "sse":
            assert hit.last_event_id is not None, hit
            assert hit.last_event_id.isdigit(), hit
        else:
            assert "resumeAt=" in hit.query, hit
            assert hit.last_event_id is None, hit


# -- 1. an absolute start URL, no base_url: resume on the same origin ---------------------


@pytest.mark.parametrize("kind", ["sse", "text"])
async def test_absolute_url_resumes_on_its_origin(
    server: LiveServer, app: LocationApp, kind: str
) -> None:
    async with CuttingProxy(server.port, two_cuts()) as proxy:
        client = ResumableStreamClient(retry_delay=0.001, max_retries=3)
        got = await asyncio.wait_for(collect(client, proxy.url + path(kind)), 60)
        assert proxy.cuts == len(CUTS)
    assert got == EXPECTED[kind]  # every event, each once, in order
    assert client.completed
    resumes = app.resumes(RESUME)
    assert len(resumes) == len(CUTS)  # both through the proxy: the start's origin
    check_positions(kind, resumes)


async def test_stop_goes_to_the_start_origin(server: LiveServer, app: LocationApp) -> None:
    client = ResumableStreamClient()
    async with client.stream("POST", server.url + path("sse"), json={}) as messages:
        async for message in messages:
            if message.id == "4":
                break
    # 202 stopped, or 410 if the short answer ended first: either way our resume route
    # on the start's origin answered (the old client raised UnsupportedProtocol).
    assert await client.stop() in (202, 410)
    assert [hit.path for hit in app.resumes(RESUME)] == [f"{RESUME}{client.stream_id}"]


# -- 2. the server's Location is followed ---------------------------------------------------


@pytest.mark.parametrize("kind", ["sse", "text"])
@pytest.mark.parametrize("mode", ["relative", "absolute"])
@pytest.mark.parametrize("with_base_url", [True, False])
async def test_location_is_followed(
    server: LiveServer, app: LocationApp, kind: str, mode: str, with_base_url: bool
) -> None:
    app.mode = mode
    async with CuttingProxy(server.port, two_cuts()) as proxy:
        client = ResumableStreamClient(
            base_url=proxy.url if with_base_url else "", retry_delay=0.001, max_retries=3
        )
        start = path(kind) if with_base_url else proxy.url + path(kind)
        got = await asyncio.wait_for(collect(client, start), 60)
        assert proxy.cuts == len(CUTS)
    assert got == EXPECTED[kind]
    assert app.resumes(RESUME) == []  # never the template
    followed = app.resumes(ALT)
    assert len(followed) == len(CUTS)
    assert all("via=location" in hit.query for hit in followed)  # its query kept
    check_positions(kind, followed)


# -- a cross-origin Location is refused -----------------------------------------------------


@pytest.mark.parametrize("mode", ["other-port", "other-host", "other-scheme"])
async def test_cross_origin_location_is_refused(
    server: LiveServer, app: LocationApp, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    app.mode = mode
    caplog.set_level(logging.WARNING, "resumable_stream.client")
    async with CuttingProxy(server.port, two_cuts()) as proxy:
        client = ResumableStreamClient(retry_delay=0.001, max_retries=3)
        got = await asyncio.wait_for(collect(client, proxy.url + path("sse")), 60)
        assert proxy.cuts == len(CUTS)
    assert got == SSE_DATA
    assert app.resumes(ALT) == []  # the other origin never saw a request
    resumes = app.resumes(RESUME)  # the template, on the start's origin
    assert len(resumes) == len(CUTS)
    check_positions("sse", resumes)
    refusals = [r for r in caplog.records if "refused the Location" in r.getMessage()]
    assert len(refusals) == len(CUTS) + 1  # the start's answer and each resume's


# -- 3. bad arguments raise InvalidArgument -------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"max_retries": -1},
        {"retry_delay": -0.5},
        {"max_retry_delay": -1.0},
        {"resume_path": "/api/chat/resume"},
    ],
)
def test_bad_options(options: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        ResumableStreamClient(**options)


async def test_follow_needs_an_absolute_resume_url(server: LiveServer, app: LocationApp) -> None:
    # Made by the client itself, its httpx client can only send absolute URLs.
    with pytest.raises(InvalidArgument, match="base_url"):
        async with ResumableStreamClient(max_retries=0).follow("some-id", last_event_id="1"):
            pass
    with pytest.raises(InvalidArgument):
        async with ResumableStreamClient(base_url=server.url).follow("some-id", resume_at=-1):
            pass
    with pytest.raises(InvalidArgument):
        async with ResumableStreamClient(base_url=server.url).follow(""):
            pass
    # An absolute resume_path needs nothing else.
    first = ResumableStreamClient(base_url=server.url)
    async with first.stream("POST", path("sse"), json={}) as messages:
        head = [m.data async for m in messages]
    assert first.stream_id is not None
    second = ResumableStreamClient(resume_path=server.url + RESUME + "{stream_id}")
    async with second.follow(first.stream_id, last_event_id="9") as messages:
        tail = [m.data async for m in messages]
    assert head == SSE_DATA
    assert tail == SSE_DATA[10:]


def test_package_arguments() -> None:
    with pytest.raises(InvalidArgument):
        client_source("no-such-file.js")
    with pytest.raises(InvalidArgument):
        parse_last_event_id("twelve")
    with pytest.raises(InvalidArgument):
        parse_last_event_id("9" * 100)
