"""The ASGI layer over real HTTP: real servers on loopback, driven by httpx.

Every test runs under uvicorn (uvloop + httptools), hypercorn (asyncio + h11) and
granian (embedded, Rust HTTP), each in a thread with its own event loop (see
``tests/http_servers.py``); the important ones run over both the memory backend and a
real Redis. The app is ``tests/apps/chat.py``: FastAPI endpoints wrapped in
`ResumableStreamMiddleware`, `ResumableStreamingResponse` with a background task, the
framework-free `ResumableStreamResponse`, and `ResumeEndpoint` mounted two ways. Both
work: ``Route("/resume/{stream_id}", endpoint=ResumeEndpoint(ctx), methods=["GET",
"DELETE"])`` (Starlette treats a non-function endpoint as an ASGI app and gives it the
id in ``path_params``; list the methods, HEAD comes with GET; without ``methods`` every
method reaches the endpoint, which answers 405 itself) and ``Mount("/mounted/resume",
app=ResumeEndpoint(ctx))`` (no path parameter: the endpoint takes the last path segment).

Coordination is by events, never by sleeping: handlers park at a byte offset
(``?gate=``) until the test sets ``"<key>:go"``; the outermost layer of the app sets
``"disconnect:<path>"`` when the server reports a client's disconnect. The only loops
that poll are waits for a stream's stored status (bounded).
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import contextlib
import dataclasses
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from resumable_stream import (
    InvalidArgument,
    MemoryBackend,
    ResumableStreamContext,
    StreamOptions,
    StreamStatus,
    create_resumable_stream_context,
)
from resumable_stream._responder import resume_location
from resumable_stream.asgi import ResumableStreamMiddleware, ResumableStreamResponse
from resumable_stream.backends.redis import RedisBackend
from resumable_stream.starlette import ResumableStreamingResponse

from .apps.chat import (
    CONFLICT_BODY,
    EVENTS,
    JSON_DOC,
    NDJSON_BODY,
    NDJSON_GATE,
    SSE_BODY,
    SSE_EVENTS_BEFORE_GATE,
    SSE_GATE,
    TEXT_BODY,
    TEXT_GATE,
    build_app,
)
from .http_servers import SERVER_KINDS, LiveServer, Probe, serving
from .servers import RedisServer

pytestmark = pytest.mark.timeout(60)

FAST = StreamOptions(lease=1.0, poll_interval=0.25, shutdown_grace=2.0)
STEP = 10.0  # bound on any single wait in a test
PING_INTERVAL = 0.2
K = SSE_EVENTS_BEFORE_GATE  # events a client has when the SSE handler is parked
ALL_IDS = list(range(len(EVENTS)))


# -- the app and its server -----------------------------------------------------------------


class Stack:
    """The app, its context and backend; `make` runs on the server's loop."""

    def __init__(
        self,
        backend: str,
        *,
        redis_url: str | None = None,
        key_prefix: str | None = None,
        redis_retries: int = 0,
        options: StreamOptions = FAST,
    ) -> None:
        self.backend = backend
        self.options = options
        self.redis_url = redis_url
        self.key_prefix = key_prefix
        self.redis_retries = redis_retries
        self.probe = Probe()
        self.ctx: ResumableStreamContext | None = None

    async def make(self) -> tuple[Any, Callable[[], Any]]:
        client: aioredis.Redis | None = None
        backend: Any = None
        if self.backend == "memory":
            backend = MemoryBackend()
        elif self.backend == "redis":
            assert self.redis_url is not None
            assert self.key_prefix is not None
            # from_url makes a client with no retry policy (redis-py gives its connections
            # Retry(NoBackoff(), 0)), as tests/conftest.py does; a test that restarts
            # Redis asks for retries, or the first command on every connection pooled
            # before the restart fails ("Connection closed by server").
            retry = Retry(NoBackoff(), self.redis_retries) if self.redis_retries else None
            client = aioredis.Redis.from_url(self.redis_url, retry=retry)
            backend = RedisBackend(client, key_prefix=self.key_prefix)
        if backend is not None:
            self.ctx = create_resumable_stream_context(backend, options=self.options)

        async def cleanup() -> None:
            if self.ctx is not None:
                await self.ctx.aclose()
            if backend is not None:
                await backend.aclose()
            if client is not None:
                await client.aclose()

        return build_app(self.ctx, self.probe, ping_interval=PING_INTERVAL), cleanup


@dataclass
class Site:
    server: LiveServer
    stack: Stack

    @property
    def probe(self) -> Probe:
        return self.stack.probe

    @property
    def ctx(self) -> ResumableStreamContext:
        assert self.stack.ctx is not None
        return self.stack.ctx

    async def status(self, stream_id: str) -> StreamStatus | None:
        return await self.server.run(lambda: self.ctx.get_status(stream_id))

    async def wait_status(self, stream_id: str, wanted: StreamStatus) -> None:
        with anyio.fail_after(STEP):
            # The stored status: no event crosses from the backend into the test.
            while await self.status(stream_id) is not wanted:  # noqa: ASYNC110
                await asyncio.sleep(0.02)

    async def wait(self, name: str) -> None:
        with anyio.fail_after(STEP):
            await self.probe.event(name).wait()

    def go(self, key: str) -> None:
        self.probe.event(f"{key}:go").set()


@contextlib.contextmanager
def make_site(
    kind: str,
    backend: str,
    redis_url: str | None = None,
    key_prefix: str | None = None,
    redis_retries: int = 0,
    options: StreamOptions = FAST,
) -> Iterator[Site]:
    stack = Stack(
        backend,
        redis_url=redis_url,
        key_prefix=key_prefix,
        redis_retries=redis_retries,
        options=options,
    )
    with serving(kind, stack.make, stack.probe) as server:
        yield Site(server, stack)


SITES = [(kind, backend) for kind in SERVER_KINDS for backend in ("memory", "redis")]


@pytest.fixture(scope="module", params=SITES, ids=[f"{k}-{b}" for k, b in SITES])
def site(request: pytest.FixtureRequest) -> Iterator[Site]:
    """The chat app under one server, on one backend (a fresh Redis key prefix)."""
    kind, backend = request.param
    url = None
    if backend == "redis":
        url = request.getfixturevalue("redis_server").url
    with make_site(kind, backend, url, f"http-{uuid.uuid4().hex[:12]}") as made:
        yield made


@pytest.fixture(scope="module", params=SERVER_KINDS)
def memory_site(request: pytest.FixtureRequest) -> Iterator[Site]:
    """The chat app on the memory backend, for tests where the backend does not matter."""
    with make_site(request.param, "memory") as made:
        yield made


@pytest.fixture(scope="module", params=SERVER_KINDS)
def contextless_site(request: pytest.FixtureRequest) -> Iterator[Site]:
    """The chat app with ``context=None`` everywhere."""
    with make_site(request.param, "none") as made:
        yield made


def client_for(site: Site) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=site.server.url, timeout=STEP, trust_env=False)


@pytest.fixture
async def http(site: Site) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(site) as client:
        yield client


@pytest.fixture
async def memory_http(memory_site: Site) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(memory_site) as client:
        yield client


def new_key() -> str:
    return uuid.uuid4().hex[:16]


# -- reading responses ----------------------------------------------------------------------


class SSEParser:
    """Splits an event stream into blocks; every block must be one whole event or a ping."""

    def __init__(self) -> None:
        self.buffer = b""
        self.events: list[tuple[int, Any]] = []
        self.pings = 0
        self.order: list[str] = []  # "event" / "ping", as they came

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while b"\n\n" in self.buffer:
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            self._block(block)

    def _block(self, block: bytes) -> None:
        lines = block.split(b"\n")
        if all(line.startswith(b":") for line in lines):
            assert block == b": ping", f"unexpected comment block {block!r}"
            self.pings += 1
            self.order.append("ping")
            return
        assert not any(line.startswith(b":") for line in lines), f"ping inside {block!r}"
        data: list[bytes] = []
        ids: list[bytes] = []
        for line in lines:
            name, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if name == b"data":
                data.append(value)
            elif name == b"id":
                ids.append(value)
            else:
                raise AssertionError(f"unexpected field in {block!r}")
        assert len(ids) == 1, f"want exactly one id in {block!r}"
        self.events.append((int(ids[0]), json.loads(b"\n".join(data))))
        self.order.append("event")

    @property
    def ids(self) -> list[int]:
        return [i for i, _ in self.events]

    @property
    def data(self) -> list[Any]:
        return [d for _, d in self.events]


class BodyReader:
    """Reads a streamed response incrementally (raw bytes, and SSE events if any)."""

    def __init__(self, response: httpx.Response, *, parse_sse: bool = True) -> None:
        self.response = response
        self.parse_sse = parse_sse
        self._chunks = response.aiter_raw()
        self.raw = bytearray()
        self.sse = SSEParser()
        self.ended = False

    async def more(self) -> bool:
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            self.ended = True
            return False
        self.raw += chunk
        if self.parse_sse:
            self.sse.feed(chunk)
        return True

    async def until(self, predicate: Callable[[BodyReader], bool]) -> None:
        with anyio.fail_after(STEP):
            while not predicate(self):
                if not await self.more():
                    raise AssertionError(f"the body ended early: {bytes(self.raw)[-200:]!r}")

    async def to_end(self) -> bytes:
        with anyio.fail_after(STEP):
            while await self.more():
                pass
        return bytes(self.raw)

    def text(self) -> str:
        """The complete characters received (a split UTF-8 sequence at the end is left out)."""
        return codecs.getincrementaldecoder("utf-8")().decode(bytes(self.raw))


async def get_all(client: httpx.AsyncClient, method: str, url: str, **kw: Any) -> httpx.Response:
    with anyio.fail_after(STEP):
        return await client.request(method, url, **kw)


def events_of(body: bytes) -> SSEParser:
    parser = SSEParser()
    parser.feed(body)
    assert parser.buffer == b"", f"an incomplete event at the end: {parser.buffer!r}"
    return parser


def events_of_plain(body: bytes) -> list[Any]:
    """The data of an event stream that carries no ids (passed through untouched)."""
    blocks = body.split(b"\n\n")
    assert blocks[-1] == b""
    return [json.loads(block.removeprefix(b"data: ")) for block in blocks[:-1]]


def resume_url(stream_id: str, via: str = "middleware") -> str:
    prefix = {"middleware": "/api/chat/resume", "route": "/resume", "mount": "/mounted/resume"}
    return f"{prefix[via]}/{stream_id}"


# -- what the servers are -------------------------------------------------------------------


async def test_servers_run_as_configured(site: Site, http: httpx.AsyncClient) -> None:
    response = await get_all(http, "POST", f"/api/chat/json/{new_key()}")
    server_header = response.headers.get("server", "")
    if site.server.kind == "uvicorn":
        assert server_header == "uvicorn"
        assert site.server.loop_type.startswith("uvloop")
    elif site.server.kind == "hypercorn":
        assert server_header.startswith("hypercorn")
        assert site.server.loop_type.startswith("asyncio")
    else:
        assert server_header == "granian"
    assert response.http_version == "HTTP/1.1"


# -- 1. cut mid-stream, resume from the position -------------------------------------------


@pytest.mark.parametrize("via", ["middleware", "route", "mount"])
async def test_sse_cut_and_resume_with_last_event_id(
    site: Site, http: httpx.AsyncClient, via: str
) -> None:
    """Cut the original, resume, cut the resumed response too, resume again."""
    key = new_key()
    path = f"/api/chat/sse/{key}"
    async with http.stream("POST", path, params={"gate": SSE_GATE}) as response:
        assert response.status_code == 200
        stream_id = response.headers["x-stream-id"]
        first = BodyReader(response)
        await first.until(lambda r: len(r.sse.events) >= 2)  # anywhere before the gate
    # Leaving the block closed the connection mid-body: the server sees the cut.
    await site.wait(f"disconnect:{path}")

    resume_path = resume_url(stream_id, via)
    async with http.stream(
        "GET", resume_path, headers={"Last-Event-ID": str(first.sse.ids[-1])}
    ) as resumed:
        assert resumed.status_code == 200
        assert resumed.headers["content-type"].startswith("text/event-stream")
        assert resumed.headers["x-stream-id"] == stream_id
        second = BodyReader(resumed)
        await second.until(lambda r: len(first.sse.events) + len(r.sse.events) >= K)
    await site.wait(f"disconnect:{resume_path}")  # a resumed response's cut, too

    so_far = first.sse.ids + second.sse.ids
    assert so_far == list(range(K))  # all that was produced before the gate, once each
    async with http.stream("GET", resume_path, headers={"Last-Event-ID": str(so_far[-1])}) as again:
        assert again.status_code == 200
        third = BodyReader(again)
        site.go(key)  # the producer was parked all along: this resume follows it live
        await third.to_end()
    assert third.sse.buffer == b""
    assert so_far + third.sse.ids == ALL_IDS  # consecutive chunk indices
    assert first.sse.data + second.sse.data + third.sse.data == EVENTS


TEXT_CASES = {
    # agent: (path, body, gate, status)
    "text": ("/api/chat/text/{key}", TEXT_BODY, TEXT_GATE, 200),
    "ndjson": ("/api/chat/ndjson/{key}", NDJSON_BODY, NDJSON_GATE, 201),
    "raw": ("/raw/{key}", NDJSON_BODY, NDJSON_GATE, 200),  # ResumableStreamResponse
}


@pytest.mark.parametrize("agent", list(TEXT_CASES))
async def test_text_cut_and_resume_with_resume_at(
    site: Site, http: httpx.AsyncClient, agent: str
) -> None:
    template, body, gate, status = TEXT_CASES[agent]
    key = new_key()
    path = template.format(key=key)
    produced = body[:gate].decode("utf-8", errors="ignore")  # the gate splits a character
    async with http.stream("POST", path, params={"gate": gate}) as response:
        assert response.status_code == status
        stream_id = response.headers["x-stream-id"]
        first = BodyReader(response)
        await first.until(lambda r: len(r.raw) >= len(produced.encode()))
    await site.wait(f"disconnect:{path}")
    if agent == "raw":
        assert site.probe.notes[f"{key}:stream_id"] == stream_id
    received = first.text()
    assert received == produced

    async with http.stream(
        "GET", resume_url(stream_id), params={"resumeAt": str(len(received))}
    ) as resumed:
        assert resumed.status_code == status
        rest = BodyReader(resumed)
        site.go(key)
        tail = await rest.to_end()
    assert received.encode() + tail == body  # byte for byte


# -- 2. a second client follows the same stream --------------------------------------------


async def test_second_client_follows_sse_concurrently(site: Site, http: httpx.AsyncClient) -> None:
    key = new_key()
    async with http.stream("POST", f"/api/chat/sse/{key}", params={"gate": SSE_GATE}) as a:
        stream_id = a.headers["x-stream-id"]
        first = BodyReader(a)
        await first.until(lambda r: len(r.sse.events) >= K)
        async with client_for(site) as other, other.stream("GET", resume_url(stream_id)) as b:
            assert b.status_code == 200
            second = BodyReader(b)
            await second.until(lambda r: len(r.sse.events) >= K)  # replayed from the start
            site.go(key)
            await first.to_end()
            await second.to_end()
    for reader in (first, second):
        assert reader.sse.ids == ALL_IDS
        assert reader.sse.data == EVENTS
        assert reader.sse.buffer == b""


async def test_second_client_follows_text_concurrently(site: Site, http: httpx.AsyncClient) -> None:
    key = new_key()
    async with http.stream("POST", f"/api/chat/text/{key}", params={"gate": TEXT_GATE}) as a:
        stream_id = a.headers["x-stream-id"]
        first = BodyReader(a)
        async with client_for(site) as other, other.stream("GET", resume_url(stream_id)) as b:
            second = BodyReader(b)
            await second.until(lambda r: len(r.raw) > 0)
            site.go(key)
            assert await first.to_end() == TEXT_BODY
            assert await second.to_end() == TEXT_BODY


# -- 3. the producer finishes while nobody is connected -------------------------------------


async def test_sse_finished_while_away(site: Site, http: httpx.AsyncClient) -> None:
    key = new_key()
    path = f"/api/chat/sse/{key}"
    async with http.stream("POST", path, params={"gate": SSE_GATE}) as response:
        stream_id = response.headers["x-stream-id"]
        first = BodyReader(response)
        await first.until(lambda r: len(r.sse.events) >= K)
    await site.wait(f"disconnect:{path}")
    site.go(key)
    await site.wait_status(stream_id, StreamStatus.DONE)
    assert site.probe.notes[f"{key}:exit"] == "completed"

    with_position = await get_all(
        http, "GET", resume_url(stream_id), headers={"Last-Event-ID": str(K - 1)}
    )
    assert with_position.status_code == 200
    tail = events_of(with_position.content)
    assert tail.ids == list(range(K, len(EVENTS)))
    assert first.sse.data + tail.data == EVENTS

    without_position = await get_all(http, "GET", resume_url(stream_id))
    assert without_position.status_code == 410


async def test_text_finished_while_away(site: Site, http: httpx.AsyncClient) -> None:
    key = new_key()
    path = f"/api/chat/text/{key}"
    async with http.stream("POST", path, params={"gate": TEXT_GATE}) as response:
        stream_id = response.headers["x-stream-id"]
        first = BodyReader(response)
        await first.until(lambda r: len(r.raw) >= 100)  # cut anywhere before the gate
    await site.wait(f"disconnect:{path}")
    site.go(key)
    await site.wait_status(stream_id, StreamStatus.DONE)
    received = first.text()
    tail = await get_all(http, "GET", resume_url(stream_id), params={"resumeAt": len(received)})
    assert tail.status_code == 200
    assert received.encode() + tail.content == TEXT_BODY
    assert (await get_all(http, "GET", resume_url(stream_id))).status_code == 410


# -- 4. the error answers --------------------------------------------------------------------


async def finished_stream(site: Site, http: httpx.AsyncClient, agent: str) -> str:
    response = await get_all(http, "POST", f"/api/chat/{agent}/{new_key()}")
    assert response.status_code in (200, 201)
    stream_id = response.headers["x-stream-id"]
    await site.wait_status(stream_id, StreamStatus.DONE)
    return stream_id


async def test_resume_when_the_client_has_everything_is_410(
    site: Site, http: httpx.AsyncClient
) -> None:
    sse_id = await finished_stream(site, http, "sse")
    last = await get_all(
        http, "GET", resume_url(sse_id), headers={"Last-Event-ID": str(len(EVENTS) - 1)}
    )
    assert last.status_code == 410
    before_last = await get_all(
        http, "GET", resume_url(sse_id), headers={"Last-Event-ID": str(len(EVENTS) - 2)}
    )
    assert before_last.status_code == 200
    assert events_of(before_last.content).ids == [len(EVENTS) - 1]

    text_id = await finished_stream(site, http, "text")
    everything = await get_all(
        http, "GET", resume_url(text_id), params={"resumeAt": len(TEXT_BODY.decode())}
    )
    assert everything.status_code == 410
    beyond = await get_all(http, "GET", resume_url(text_id), params={"resumeAt": 10**9})
    assert beyond.status_code == 410


async def test_unknown_stream_is_404(site: Site, http: httpx.AsyncClient) -> None:
    for via in ("middleware", "route", "mount"):
        unknown = resume_url(f"never-made-{new_key()}", via)
        assert (await get_all(http, "GET", unknown)).status_code == 404
        with_id = await get_all(http, "GET", unknown, headers={"Last-Event-ID": "3"})
        assert with_id.status_code == 404
        assert (await get_all(http, "DELETE", unknown)).status_code == 404
    too_long = resume_url("x" * 300)  # not a valid stream id at all
    assert (await get_all(http, "GET", too_long)).status_code == 404
    # Other methods: ResumeEndpoint answers 405 itself (the middleware's path, and a
    # Mount, pass every method); the Route lists GET and DELETE, so Starlette does.
    for via in ("middleware", "route", "mount"):
        post = await get_all(http, "POST", resume_url(f"never-made-{new_key()}", via))
        assert post.status_code == 405
        assert "DELETE" in post.headers["allow"]


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({"Last-Event-ID": "abc"}, ""),
        ({"Last-Event-ID": "-2"}, ""),  # -1 is "from the start"
        ({"Last-Event-ID": "1.5"}, ""),
        ({"Last-Event-ID": "9" * 30}, ""),
        ({}, "?resumeAt=abc"),
        ({}, "?resumeAt=-3"),
        ({}, "?resumeAt=1.5"),
        ({}, "?resumeAt=%EF%BC%91"),  # a full-width digit one: a digit, but not ASCII
        ({"Last-Event-ID": "1"}, "?resumeAt=3"),  # both
    ],
    ids=[
        "id-abc",
        "id-negative",
        "id-float",
        "id-huge",
        "at-abc",
        "at-negative",
        "at-float",
        "at-fullwidth",
        "both",
    ],
)
async def test_bad_position_is_400(
    memory_site: Site, memory_http: httpx.AsyncClient, headers: dict[str, str], query: str
) -> None:
    stream_id = await finished_stream(memory_site, memory_http, "text")
    response = await get_all(memory_http, "GET", resume_url(stream_id) + query, headers=headers)
    assert response.status_code == 400, response.text


async def test_resume_at_on_an_event_stream_is_400(
    memory_site: Site, memory_http: httpx.AsyncClient
) -> None:
    stream_id = await finished_stream(memory_site, memory_http, "sse")
    response = await get_all(memory_http, "GET", resume_url(stream_id), params={"resumeAt": 5})
    assert response.status_code == 400


async def test_authorize_refusing_is_403(site: Site, http: httpx.AsyncClient) -> None:
    stream_id = await finished_stream(site, http, "text")
    deny = {"X-Test-Deny": "1"}
    for via in ("middleware", "route", "mount"):
        url = resume_url(stream_id, via)
        assert (await get_all(http, "GET", url, headers=deny)).status_code == 403
        assert (await get_all(http, "DELETE", url, headers=deny)).status_code == 403
        assert (await get_all(http, "GET", url, params={"resumeAt": 3})).status_code == 200


async def test_no_context_is_503_and_streams_pass_through(contextless_site: Site) -> None:
    site = contextless_site
    async with client_for(site) as http:
        for via in ("middleware", "route", "mount"):
            for method in ("GET", "DELETE"):
                response = await get_all(http, method, resume_url("some-stream", via))
                assert response.status_code == 503
        plain = await get_all(http, "POST", f"/api/chat/text/{new_key()}")
        assert plain.status_code == 200
        assert "x-stream-id" not in plain.headers
        assert plain.content == TEXT_BODY

        key = new_key()
        explicit = await get_all(http, "POST", f"/explicit/{key}")
        assert explicit.status_code == 200
        assert "x-stream-id" not in explicit.headers
        assert explicit.content == SSE_BODY  # no ids either: there is nothing to resume
        await site.wait(f"{key}:background")

        raw = await get_all(http, "POST", f"/raw/{new_key()}")
        assert raw.status_code == 200
        assert "x-stream-id" not in raw.headers
        assert raw.content == NDJSON_BODY


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.mark.parametrize("kind", SERVER_KINDS)
async def test_redis_down(kind: str, private_redis: RedisServer) -> None:
    """Redis stopped mid-stream: the original response completes, a follower's body is
    cut short; then resumes (and DELETE) are 503 and new streams stream normally without
    X-Stream-Id; after a restart, streams are resumable again."""
    # Every call to a stopped Redis is retried for retry_window before it gives up:
    # a short window keeps this test to seconds without changing what it checks.
    options = dataclasses.replace(FAST, retry_window=1.0)
    site_made = make_site(
        kind, "redis", private_redis.url, f"down-{new_key()}", redis_retries=2, options=options
    )
    with site_made as site:
        async with client_for(site) as http:
            key = new_key()
            async with http.stream(
                "POST", f"/api/chat/sse/{key}", params={"gate": SSE_GATE}
            ) as response:
                stream_id = response.headers["x-stream-id"]
                reader = BodyReader(response)
                await reader.until(lambda r: len(r.sse.events) >= K)
                async with (
                    client_for(site) as other,
                    other.stream("GET", resume_url(stream_id)) as follow,
                ):
                    follower = BodyReader(follow)
                    await follower.until(lambda r: len(r.sse.events) >= K)
                    private_redis.stop()
                    site.go(key)
                    await reader.to_end()
                    # The follower (fed by the producer in this process until its
                    # writes fail for good) has its body cut short, not ended as if
                    # complete, so its client knows to resume later.
                    with pytest.raises(httpx.TransportError):
                        await follower.to_end()
            assert reader.sse.ids == ALL_IDS
            assert reader.sse.data == EVENTS
            got = len(follower.sse.ids)
            assert got >= K  # maybe all of them: what matters is the cut, not a clean end
            assert follower.sse.ids == ALL_IDS[:got]
            assert follower.sse.data == EVENTS[:got]

            resumed = await get_all(
                http, "GET", resume_url(stream_id), headers={"Last-Event-ID": "1"}
            )
            assert resumed.status_code == 503
            assert (await get_all(http, "DELETE", resume_url(stream_id))).status_code == 503

            for agent, body in (("text", TEXT_BODY), ("sse", None)):
                degraded = await get_all(http, "POST", f"/api/chat/{agent}/{new_key()}")
                assert degraded.status_code == 200
                assert "x-stream-id" not in degraded.headers
                if body is not None:
                    assert degraded.content == body
                else:
                    assert events_of_plain(degraded.content) == EVENTS

            private_redis.start()
            again = await get_all(http, "POST", f"/api/chat/text/{new_key()}")
            assert again.content == TEXT_BODY
            again_id = again.headers["x-stream-id"]
            await site.wait_status(again_id, StreamStatus.DONE)
            tail = await get_all(http, "GET", resume_url(again_id), params={"resumeAt": 10})
            assert tail.status_code == 200
            assert TEXT_BODY.decode()[:10].encode() + tail.content == TEXT_BODY


# -- 5. the app never sees the disconnect ---------------------------------------------------


async def test_app_never_sees_the_disconnect(site: Site, http: httpx.AsyncClient) -> None:
    key = new_key()
    path = f"/api/chat/watch/{key}"
    async with http.stream("POST", path, params={"gate": SSE_GATE}) as response:
        stream_id = response.headers["x-stream-id"]
        await BodyReader(response).until(lambda r: len(r.sse.events) >= K)
    await site.wait(f"disconnect:{path}")  # the server has told the middleware
    site.go(key)  # now the handler asks request.is_disconnected() before every piece
    await site.wait(f"{key}:produced")
    assert site.probe.notes[f"{key}:exit"] == "completed"
    assert site.probe.notes[f"{key}:saw_disconnect"] is False
    await site.wait_status(stream_id, StreamStatus.DONE)
    everything = await get_all(http, "GET", resume_url(stream_id), headers={"Last-Event-ID": "0"})
    assert events_of(everything.content).ids == ALL_IDS[1:]


async def test_control_an_unhandled_path_sees_the_disconnect(
    site: Site, http: httpx.AsyncClient
) -> None:
    """The same handler outside the middleware's path does see the cut (Starlette
    cancels it): the probe in the test above can tell."""
    key = new_key()
    path = f"/api/other/watch/{key}"
    async with http.stream("POST", path, params={"gate": SSE_GATE}) as response:
        assert "x-stream-id" not in response.headers
        reader = BodyReader(response, parse_sse=False)  # the app's events carry no ids
        await reader.until(lambda r: len(r.raw) >= SSE_GATE)
    await site.wait(f"disconnect:{path}")
    await site.wait(f"{key}:produced")  # set on the way out, however it ended
    assert site.probe.notes[f"{key}:exit"] != "completed"


# -- 6. what passes through untouched --------------------------------------------------------


COMPARED_HEADERS = ("content-type", "content-length", "x-stream-id", "cache-control")


@pytest.mark.parametrize(("agent", "status"), [("json", 200), ("missing", 404), ("conflict", 409)])
async def test_pass_through_untouched(
    site: Site, http: httpx.AsyncClient, agent: str, status: int
) -> None:
    key = new_key()
    handled = await get_all(http, "POST", f"/api/chat/{agent}/{key}")
    reference = await get_all(http, "POST", f"/api/other/{agent}/{key}")  # no middleware path
    assert handled.status_code == reference.status_code == status
    assert handled.content == reference.content
    assert "x-stream-id" not in handled.headers
    for name in COMPARED_HEADERS:
        assert handled.headers.get(name) == reference.headers.get(name), name
    if agent == "json":
        assert handled.json() == JSON_DOC
        assert handled.headers["content-length"] == str(len(handled.content))
    if agent == "conflict":
        assert handled.content == CONFLICT_BODY


async def test_paths_and_methods_not_handled_pass_through(
    site: Site, http: httpx.AsyncClient
) -> None:
    other = await get_all(http, "POST", f"/api/other/text/{new_key()}")
    get = await get_all(http, "GET", f"/api/chat/text/{new_key()}")  # the middleware takes POST
    for response in (other, get):
        assert response.status_code == 200
        assert "x-stream-id" not in response.headers
        assert response.content == TEXT_BODY


# -- 7. headers ------------------------------------------------------------------------------


def exposed(response: httpx.Response) -> list[str]:
    return [h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")]


async def test_headers_of_original_and_resumed_responses(
    site: Site, http: httpx.AsyncClient
) -> None:
    sse = await get_all(http, "POST", f"/api/chat/sse/{new_key()}")
    assert sse.status_code == 200
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", sse.headers["x-stream-id"])
    assert "x-stream-id" in exposed(sse)
    assert sse.headers["cache-control"] == "no-cache"
    assert sse.headers["x-accel-buffering"] == "no"
    assert sse.headers["content-type"].startswith("text/event-stream")
    assert "content-length" not in sse.headers
    sse_id = sse.headers["x-stream-id"]
    assert sse.headers["location"] == f"/api/chat/resume/{sse_id}?reconnect=1"

    ndjson = await get_all(http, "POST", f"/api/chat/ndjson/{new_key()}")
    assert ndjson.status_code == 201
    assert ndjson.headers["x-app-header"] == "kept"
    assert exposed(ndjson) == ["x-app-header", "x-stream-id"]  # the app's list, extended
    assert "x-accel-buffering" not in ndjson.headers

    for original, position in (
        (sse, {"headers": {"Last-Event-ID": "0"}}),
        (ndjson, {"params": {"resumeAt": 1}}),
    ):
        stream_id = original.headers["x-stream-id"]
        await site.wait_status(stream_id, StreamStatus.DONE)
        for via in ("middleware", "route", "mount"):
            resumed = await get_all(http, "GET", resume_url(stream_id, via), **position)
            assert resumed.status_code == original.status_code
            assert resumed.headers["content-type"] == original.headers["content-type"]
            assert resumed.headers["x-stream-id"] == stream_id
            assert resumed.headers["location"] == f"{resume_url(stream_id, via)}?reconnect=1"
            assert "x-stream-id" in exposed(resumed)
            assert "content-length" not in resumed.headers
            if original is sse:
                assert resumed.headers["cache-control"] == "no-cache"
                assert resumed.headers["x-accel-buffering"] == "no"
                assert events_of(resumed.content).ids == ALL_IDS[1:]
            else:
                assert resumed.headers["x-app-header"] == "kept"
                assert exposed(resumed) == ["x-app-header", "x-stream-id"]
                assert resumed.content == NDJSON_BODY[1:]

        head = await get_all(http, "HEAD", resume_url(stream_id), **position)
        assert head.status_code == original.status_code
        assert head.headers["x-stream-id"] == stream_id
        assert head.headers["location"] == f"{resume_url(stream_id)}?reconnect=1"
        assert head.content == b""


async def test_headers_go_out_before_the_first_chunk(site: Site, http: httpx.AsyncClient) -> None:
    """ASGI lets a server hold the response start until the first body message (granian
    does): a resumable response must not leave a quiet stream's client without even
    its status and X-Stream-Id. Regression test: granian hung here before the fix."""
    key = new_key()
    # gate=0: the producer is parked before its first piece (NDJSON: no pings either).
    async with http.stream("POST", f"/raw/{key}", params={"gate": 0}) as original:
        assert original.status_code == 200
        stream_id = original.headers["x-stream-id"]
        async with client_for(site) as other, other.stream("GET", resume_url(stream_id)) as b:
            assert b.status_code == 200
            assert b.headers["x-stream-id"] == stream_id
            assert not site.probe.event(f"{key}:go").is_set()
            site.go(key)
            assert await BodyReader(b).to_end() == NDJSON_BODY
        assert await BodyReader(original).to_end() == NDJSON_BODY


async def test_app_supplied_stream_id(site: Site, http: httpx.AsyncClient) -> None:
    key = new_key()
    response = await get_all(http, "POST", f"/api/chat/custom-id/{key}")
    assert response.headers["x-stream-id"] == f"custom-{key}"
    assert response.content == TEXT_BODY
    await site.wait_status(f"custom-{key}", StreamStatus.DONE)
    tail = await get_all(http, "GET", resume_url(f"custom-{key}"), params={"resumeAt": 5})
    assert TEXT_BODY.decode()[:5].encode() + tail.content == TEXT_BODY


async def test_app_supplied_stream_id_that_is_taken(site: Site, http: httpx.AsyncClient) -> None:
    """A second response naming a stream that exists (running, or finished) is not
    stored: it passes through, and must not carry the X-Stream-Id of the other stream,
    which a client would then resume (and get the other stream's body)."""
    taken = f"taken-{new_key()}"
    first_key = new_key()
    async with http.stream(
        "POST", f"/api/chat/custom-id/{first_key}", params={"gate": 10, "id": taken}
    ) as running:
        assert running.headers["x-stream-id"] == taken
        while_running = await get_all(
            http, "POST", f"/api/chat/custom-id/{new_key()}", params={"id": taken}
        )
        assert while_running.status_code == 200
        assert while_running.content == TEXT_BODY
        assert "x-stream-id" not in while_running.headers
        assert "location" not in while_running.headers  # not stored: no resume URL
        site.go(first_key)
        assert await BodyReader(running).to_end() == TEXT_BODY
    await site.wait_status(taken, StreamStatus.DONE)
    after = await get_all(http, "POST", f"/api/chat/custom-id/{new_key()}", params={"id": taken})
    assert after.status_code == 200
    assert after.content == TEXT_BODY
    assert "x-stream-id" not in after.headers


# -- ResumableStreamingResponse with a background task --------------------------------------


async def test_explicit_response_runs_background_task(site: Site, http: httpx.AsyncClient) -> None:
    key = new_key()
    response = await get_all(http, "POST", f"/explicit/{key}")
    assert response.status_code == 200
    stream_id = response.headers["x-stream-id"]
    assert "location" not in response.headers  # no resume_path given: no resume URL
    assert stream_id == site.probe.notes[f"{key}:stream_id"]
    assert response.headers["cache-control"] == "no-cache"
    parsed = events_of(response.content)
    assert parsed.ids == ALL_IDS
    assert parsed.data == EVENTS
    await site.wait(f"{key}:background")
    await site.wait_status(stream_id, StreamStatus.DONE)
    tail = await get_all(http, "GET", resume_url(stream_id), headers={"Last-Event-ID": "3"})
    assert events_of(tail.content).ids == ALL_IDS[4:]


async def test_explicit_response_cut_and_resume(site: Site, http: httpx.AsyncClient) -> None:
    """The background task runs when the response ends, here at the cut, while the stream
    itself runs on (as Starlette runs it after a disconnect)."""
    key = new_key()
    path = f"/explicit/{key}"
    async with http.stream("POST", path, params={"gate": SSE_GATE}) as response:
        stream_id = response.headers["x-stream-id"]
        first = BodyReader(response)
        await first.until(lambda r: len(r.sse.events) >= K)
    await site.wait(f"disconnect:{path}")
    await site.wait(f"{key}:background")
    assert await site.status(stream_id) is StreamStatus.RUNNING
    site.go(key)
    await site.wait_status(stream_id, StreamStatus.DONE)
    rest = await get_all(
        http, "GET", resume_url(stream_id, "route"), headers={"Last-Event-ID": str(K - 1)}
    )
    assert first.sse.ids + events_of(rest.content).ids == ALL_IDS
    assert first.sse.data + events_of(rest.content).data == EVENTS


# -- 8. SSE pings ----------------------------------------------------------------------------


async def test_sse_pings_between_events(site: Site, http: httpx.AsyncClient) -> None:
    key = new_key()
    async with http.stream("POST", f"/api/chat/sse/{key}", params={"gate": SSE_GATE}) as a:
        stream_id = a.headers["x-stream-id"]
        first = BodyReader(a)
        await first.until(lambda r: len(r.sse.events) >= K)
        async with (
            client_for(site) as other,
            other.stream("GET", resume_url(stream_id), headers={"Last-Event-ID": "2"}) as b,
        ):
            second = BodyReader(b)
            await second.until(lambda r: len(r.sse.events) >= K - 3)
            # The producer is parked: both connections get pings (every 0.2 s).
            await first.until(lambda r: r.sse.pings >= 2)
            await second.until(lambda r: r.sse.pings >= 2)
            site.go(key)
            await first.to_end()
            await second.to_end()
    # Every block parsed as a whole event or a whole ping (SSEParser asserts it).
    assert first.sse.ids == ALL_IDS
    assert first.sse.data == EVENTS
    assert second.sse.ids == ALL_IDS[3:]
    assert second.sse.data == EVENTS[3:]
    for reader in (first, second):
        assert reader.sse.buffer == b""
        assert reader.sse.order.index("ping") > reader.sse.order.index("event")
        assert reader.sse.order[-1] == "event"


# -- 9. stop ---------------------------------------------------------------------------------


async def test_delete_stops_the_stream(site: Site, http: httpx.AsyncClient) -> None:
    key = new_key()
    async with http.stream("POST", f"/api/chat/sse/{key}", params={"gate": SSE_GATE}) as a:
        stream_id = a.headers["x-stream-id"]
        original = BodyReader(a)
        await original.until(lambda r: len(r.sse.events) >= K)
        async with client_for(site) as other, other.stream("GET", resume_url(stream_id)) as b:
            follower = BodyReader(b)
            await follower.until(lambda r: len(r.sse.events) >= K)
            stop = await get_all(http, "DELETE", resume_url(stream_id))
            assert stop.status_code == 202
            # Both bodies end cleanly (a broken chunked body would raise here).
            await original.to_end()
            await follower.to_end()
    for reader in (original, follower):
        assert reader.sse.ids == list(range(K))
        assert reader.sse.buffer == b""
    await site.wait_status(stream_id, StreamStatus.DONE)
    assert (await get_all(http, "DELETE", resume_url(stream_id))).status_code == 410
    assert (await get_all(http, "GET", resume_url(stream_id))).status_code == 410
    site.go(key)  # let the parked handler finish (into the void)

    finished = await finished_stream(site, http, "text")
    assert (await get_all(http, "DELETE", resume_url(finished, "route"))).status_code == 410
    assert (await get_all(http, "DELETE", resume_url(f"nope-{new_key()}"))).status_code == 404


# -- 10. stream ids --------------------------------------------------------------------------


async def test_generated_stream_ids_are_random(
    memory_site: Site, memory_http: httpx.AsyncClient
) -> None:
    ids: list[str] = []

    async def one() -> None:
        response = await get_all(memory_http, "POST", f"/api/chat/text/{new_key()}")
        assert response.content == TEXT_BODY
        ids.append(response.headers["x-stream-id"])

    for _ in range(4):
        async with anyio.create_task_group() as tg:
            for _ in range(16):
                tg.start_soon(one)
    assert len(ids) == 64
    assert len(set(ids)) == len(ids)
    for stream_id in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", stream_id), stream_id
        assert len(base64.urlsafe_b64decode(stream_id + "==")) >= 16  # >= 128 random bits
    # Every position of the alphabet is used: the ids are not, say, hex in disguise.
    assert len(set("".join(ids))) > 40


# -- arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize("resume_path", ["/resume", "/resume/{id}", ""])
async def test_a_resume_path_without_its_stream_id_is_refused(resume_path: str) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
        raise AssertionError("never called")

    ctx = create_resumable_stream_context(MemoryBackend())
    try:
        with pytest.raises(InvalidArgument, match="stream_id"):
            ResumableStreamMiddleware(app, ctx, path="/chat", resume_path=resume_path)
        with pytest.raises(InvalidArgument, match="stream_id"):
            ResumableStreamResponse([b"x"], context=ctx, resume_path=resume_path)
        with pytest.raises(InvalidArgument, match="stream_id"):
            ResumableStreamingResponse([b"x"], context=ctx, resume_path=resume_path)
    finally:
        await ctx.aclose()


def test_location_fills_the_resume_path() -> None:
    """`{name}`s come from the request path; an id is percent-encoded as X-Stream-Id is;
    a name with no value gives no Location at all rather than a wrong one."""
    assert resume_location("/r/{stream_id}", "chat-日本") == (
        b"/r/chat-%E6%97%A5%E6%9C%AC?reconnect=1"
    )
    assert resume_location("/t/{thread}/r/{stream_id}", "a b", {"thread": "t/1"}) == (
        b"/t/t%2F1/r/a%20b?reconnect=1"
    )
    assert resume_location("/t/{thread}/r/{stream_id}", "x") is None
    assert resume_location(None, "x") is None
