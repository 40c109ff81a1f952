"""Hostile and odd input through the HTTP layer (issue 7), fuzzed with Hypothesis.

Requests are driven by hand (``tests/asgi_driver.py``: the app's own ``receive`` and
``send``, in the test's loop: fast, and it sees aborts and hangs), over the memory
backend and a real Redis; a few go through a real uvicorn. Every request must get a
documented status (never a 500, never a hang), a refused request must not create a
key, and a body must come back byte for byte: as the original response and as a
resume from the start.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

import httpx
import msgpack
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from resumable_stream import (
    MemoryBackend,
    ResumableStreamContext,
    ResumableStreamError,
    StreamOptions,
    create_resumable_stream_context,
)
from resumable_stream._http import parse_stream_id_header
from resumable_stream.asgi import ResumableStreamMiddleware, ResumableStreamResponse
from resumable_stream.backends.redis import RedisBackend

from .asgi_driver import Reply, request
from .http_servers import LiveServer
from .servers import RedisServer

pytestmark = pytest.mark.timeout(90)
T = TypeVar("T")

STEP = 10.0
DOCUMENTED = {200, 202, 400, 403, 404, 405, 410, 413, 503}
CONTENT_TYPES = [b"text/plain; charset=utf-8", b"text/event-stream", b"application/octet-stream"]
OPTIONS = StreamOptions(lease=1.0, poll_interval=0.25, shutdown_grace=2.0)


async def maker(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    """Streams what the request body (msgpack) asks: ``{"type", "pieces", "id"}``."""
    if scope["method"] != "POST" or not str(scope["path"]).startswith("/make/"):
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    raw = b""
    while True:
        message = await receive()
        raw += message.get("body", b"")
        if not message.get("more_body", False):
            break
    order = msgpack.unpackb(raw)
    headers = [(b"content-type", order["type"])]
    if order.get("id") is not None:
        headers.append((b"x-stream-id", order["id"]))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for piece in order["pieces"]:
        await send({"type": "http.response.body", "body": piece, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def deny(scope: MutableMapping[str, Any], stream_id: str) -> bool:
    return not stream_id.startswith("deny")


class Site:
    """The app, its context, and a way to list the keys it stored."""

    def __init__(self, kind: str, redis_server: RedisServer | None) -> None:
        self.kind = kind
        self.prefix = f"fuzz-{uuid.uuid4().hex[:10]}"
        self.client: aioredis.Redis | None = None
        if kind == "redis":
            assert redis_server is not None
            self.client = aioredis.Redis.from_url(redis_server.url)
            self.backend: Any = RedisBackend(self.client, key_prefix=self.prefix)
        else:
            self.backend = MemoryBackend()
        self.ctx: ResumableStreamContext = create_resumable_stream_context(
            self.backend, options=OPTIONS
        )
        self.app = ResumableStreamMiddleware(
            maker, self.ctx, path="/make/{name}", resume_path="/resume/{stream_id}",
            authorize=deny,
        )

    async def keys(self) -> set[str]:
        if self.client is None:
            return set(self.backend._entries)
        return {k.decode() async for k in self.client.scan_iter(f"{self.prefix}:*", count=1000)}

    async def make(
        self, pieces: list[bytes], content_type: bytes, stream_id: bytes | None = None
    ) -> Reply:
        body = msgpack.packb({"type": content_type, "pieces": pieces, "id": stream_id})
        return await asyncio.wait_for(
            request(self.app, "POST", f"/make/{uuid.uuid4().hex}", body=body), STEP
        )

    async def close(self) -> None:
        await self.ctx.aclose()
        await self.backend.aclose()
        if self.client is not None:
            await self.client.aclose()


def check_reply(reply: Reply) -> None:
    assert reply.status in DOCUMENTED, (reply.status, reply.body[:200])
    if reply.error is not None:
        # Only a stream's own typed end may abort a body (the server then cuts it).
        assert reply.status == 200
        assert isinstance(reply.error, ResumableStreamError), repr(reply.error)
    else:
        assert reply.complete


def check_resumed_from_start(runner: Runner, site: Site, stream_id: str, reply: Reply) -> None:
    """A resume of ``stream_id`` from its start gives back ``reply``'s body, byte for
    byte, ids and all (or a 410, if nothing was stored to resume)."""
    resumed = runner.run(
        asyncio.wait_for(
            request(site.app, "GET", f"/resume/{stream_id}", query=b"resumeAt=0"), STEP
        )
    )
    check_reply(resumed)
    if resumed.status == 410:
        assert not reply.body.strip(b"\r\n")  # nothing was stored to resume
    else:
        assert resumed.status == 200
        assert resumed.body == reply.body


@pytest.fixture(params=["memory", "redis"])
def site_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Runner:
    """One event loop for all of a test's examples (``asyncio.Runner`` is 3.11+)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Awaitable[T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


def run_site(
    kind: str, redis_server: RedisServer, body: Callable[[Runner, Site], None]
) -> None:
    """One event loop and one site for all of a test's examples."""
    runner = Runner()
    try:
        site = runner.run(_make_site(kind, redis_server))
        try:
            body(runner, site)
        finally:
            runner.run(site.close())
    finally:
        runner.close()


async def _make_site(kind: str, redis_server: RedisServer) -> Site:
    return Site(kind, redis_server)  # made on the runner's loop


# -- resume requests: ids, positions, methods, header sizes ----------------------------------

ids = st.one_of(
    st.sampled_from(["done", "deny-done", "empty", ""]),
    st.text(max_size=300).filter(lambda s: "/" not in s),
)
positions = st.one_of(
    st.none(),
    st.binary(max_size=40),
    st.integers(-5, 10**25).map(lambda n: str(n).encode()),
    st.sampled_from([b"-1", b"0", b"2", b"3", b" 1", b"1e3", b"\xff", b"0x1"]),
)
queries = st.one_of(
    st.just(b""),
    st.binary(max_size=60),
    st.integers(-5, 10**25).map(lambda n: b"resumeAt=%d" % n),
    st.sampled_from([b"resumeAt=", b"resumeAt=0", b"resumeAt=4&resumeAt=x", b"resumeAt=%ff"]),
)


def test_resume_requests_get_documented_statuses(
    site_kind: str, redis_server: RedisServer
) -> None:
    def body(runner: Runner, site: Site) -> None:
        # Streams to hit: a done one, one authorize refuses, an empty one.
        for name, pieces in (("done", [b"a", b"b"]), ("deny-done", [b"c", b"d"]), ("empty", [])):
            runner.run(site.make(pieces, CONTENT_TYPES[0], name.encode()))
        before = runner.run(site.keys())

        @settings(
            max_examples=150 if site_kind == "memory" else 60, deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(
            method=st.sampled_from(["GET", "HEAD", "DELETE", "POST", "PUT"]),
            stream_id=ids,
            last_event_id=positions,
            query=queries,
            padding=st.integers(0, 70_000),
        )
        def check(
            method: str, stream_id: str, last_event_id: bytes | None, query: bytes, padding: int
        ) -> None:
            headers = [(b"x-padding", b"p" * padding)]
            if last_event_id is not None:
                headers.append((b"last-event-id", last_event_id))
            reply = runner.run(
                asyncio.wait_for(
                    request(
                        site.app, method, f"/resume/{stream_id}", headers=headers, query=query
                    ),
                    STEP,
                )
            )
            check_reply(reply)
            if stream_id.startswith("deny") and reply.status != 404:
                assert reply.status in (403, 405), reply.status  # every method is checked
            assert runner.run(site.keys()) == before  # no request created a key

        check()

    run_site(site_kind, redis_server, body)


# -- new streams: chunk types and sizes, invalid UTF-8, app-chosen ids -----------------------

pieces_strategy = st.lists(
    st.one_of(
        st.just(b""),
        st.binary(max_size=3000),
        st.text(max_size=500).map(lambda s: s.encode("utf-8")),
        st.sampled_from([b"\xff\xfe", b"\xe2\x82", b"data: x\n\n", b"\n\n", b"\r\n\r\n"]),
    ),
    max_size=12,
)


def test_new_streams_round_trip_byte_for_byte(site_kind: str, redis_server: RedisServer) -> None:
    def body(runner: Runner, site: Site) -> None:
        @settings(
            max_examples=120 if site_kind == "memory" else 50, deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @example(pieces=[b"a", b"b"], content_type=CONTENT_TYPES[0], app_id=b"i" * 300)
        @example(pieces=[b"a", b"b"], content_type=CONTENT_TYPES[1], app_id=b"\xff{}%")
        @given(
            pieces=pieces_strategy,
            content_type=st.sampled_from(CONTENT_TYPES),
            app_id=st.one_of(st.none(), st.binary(min_size=0, max_size=300)),
        )
        def check(pieces: list[bytes], content_type: bytes, app_id: bytes | None) -> None:
            keys_before = runner.run(site.keys())
            reply = runner.run(site.make(pieces, content_type, app_id))
            check_reply(reply)
            assert reply.status == 200
            stream_id = reply.header(b"x-stream-id")
            whole = b"".join(pieces)
            if content_type != b"text/event-stream":
                assert reply.body == whole  # never altered, whatever the bytes
            # A body of one message passes through untouched (the app's own headers
            # included); an event stream or a body in several messages is stored.
            if not pieces and content_type != b"text/event-stream":
                assert runner.run(site.keys()) == keys_before  # nothing written for it
                return
            if stream_id is None:
                # The app chose the id of a stream that exists (an earlier example):
                # passed through without an id, and nothing written.
                assert app_id
                assert runner.run(site.keys()) == keys_before
                return
            # The header is the id percent-encoded; the ASGI path is decoded.
            check_resumed_from_start(runner, site, parse_stream_id_header(stream_id), reply)

        check()

    run_site(site_kind, redis_server, body)


def as_kind(piece: bytes, kind: str) -> Any:
    """``piece`` as a body piece of another type: what an app may yield."""
    if kind == "str":
        try:
            return piece.decode("utf-8")
        except UnicodeDecodeError:
            return piece
    return {"bytes": bytes, "bytearray": bytearray, "memoryview": memoryview}[kind](piece)


def test_an_explicit_response_streams_what_the_middleware_streams(
    site_kind: str, redis_server: RedisServer
) -> None:
    """The explicit response takes str, bytes and buffers, from an async or a sync
    iterable: its body is the middleware's for the same pieces, and so is its resume."""

    def body(runner: Runner, site: Site) -> None:
        @settings(
            max_examples=80 if site_kind == "memory" else 30, deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @example(pieces=[b"data: a\n\n", b"data: b\n\n"], kinds=["str"] * 12, sync=False,
                 content_type=CONTENT_TYPES[1])
        @example(pieces=[b"data: a\n", b"\ndata: b\r\n\r\n", b"data: c\n\n"],
                 kinds=["bytes", "memoryview", "bytearray"] * 4, sync=True,
                 content_type=CONTENT_TYPES[1])
        @given(
            pieces=pieces_strategy,
            kinds=st.lists(st.sampled_from(["bytes", "bytearray", "memoryview", "str"]),
                           min_size=12, max_size=12),
            sync=st.booleans(),
            content_type=st.sampled_from(CONTENT_TYPES),
        )
        def check(pieces: list[bytes], kinds: list[str], sync: bool, content_type: bytes) -> None:
            kinds = kinds[: len(pieces)]
            typed = [as_kind(piece, kind) for piece, kind in zip(pieces, kinds, strict=True)]

            async def pieces_async() -> Any:
                for piece in typed:
                    yield piece

            response = ResumableStreamResponse(
                typed if sync else pieces_async(), context=site.ctx,
                headers=[(b"content-type", content_type)],
            )
            reply = runner.run(asyncio.wait_for(request(response, "GET", "/explicit"), STEP))
            check_reply(reply)
            assert reply.status == 200
            if content_type == b"text/event-stream":
                made = runner.run(site.make(pieces, content_type))
                assert reply.body == made.body  # the same events, numbered alike
            else:
                assert reply.body == b"".join(pieces)
            check_resumed_from_start(runner, site, response.stream_id, reply)

        check()

    run_site(site_kind, redis_server, body)


@pytest.mark.timeout(60)
def test_a_ten_megabyte_chunk(redis_server: RedisServer) -> None:
    def body(runner: Runner, site: Site) -> None:
        big = bytes(range(256)) * (10 * 4096)  # 10 MiB, every byte value
        for content_type in (CONTENT_TYPES[2], CONTENT_TYPES[0]):
            reply = runner.run(site.make([b"head", big, b"tail"], content_type))
            check_reply(reply)
            assert reply.body == b"head" + big + b"tail"
            stream_id = reply.header(b"x-stream-id")
            assert stream_id is not None
            resumed = runner.run(
                request(
                    site.app, "GET", f"/resume/{parse_stream_id_header(stream_id)}",
                    query=b"resumeAt=2",
                )
            )
            check_reply(resumed)
            assert resumed.body == reply.body[2:]

    run_site("redis", redis_server, body)


# -- a few through a real uvicorn: what the server itself parses -----------------------------


async def test_odd_requests_through_uvicorn(redis_server: RedisServer) -> None:
    holder: dict[str, Site] = {}

    async def make_app() -> tuple[Any, Callable[[], Awaitable[None]]]:
        site = holder["site"] = Site("redis", redis_server)
        return site.app, site.close

    server = LiveServer("uvicorn", make_app)
    await asyncio.to_thread(server.start)
    try:
        site = holder["site"]
        made = await server.run(lambda: site.make([b"x", b"y"], CONTENT_TYPES[0], b"known"))
        assert made.status == 200
        before = await server.run(site.keys)
        async with httpx.AsyncClient(base_url=server.url, timeout=STEP) as http:
            cases: list[tuple[str, str, dict[str, str], set[int]]] = [
                ("GET", "/resume/%ff%fe", {}, {404}),
                ("GET", "/resume/" + "a" * 5000, {}, {404, 414}),
                ("GET", "/resume/known", {"last-event-id": "9" * 50}, {400, 410}),
                ("GET", "/resume/known", {"last-event-id": "-7"}, {400}),
                ("GET", "/resume/known?resumeAt=-1", {}, {400}),
                ("GET", "/resume/known?resumeAt=1", {}, {200}),
                ("GET", "/resume/known", {"x-big": "h" * 100_000}, {410, 400, 413, 431}),
                ("DELETE", "/resume/%7Bknown%7D", {}, {404}),
                ("PATCH", "/resume/known", {}, {405}),
            ]
            for method, path, headers, allowed in cases:
                try:
                    response = await http.request(method, path, headers=headers)
                except httpx.RemoteProtocolError:
                    # uvicorn (h11/httptools) closes on headers beyond its limit.
                    assert "x-big" in headers
                    continue
                assert response.status_code in allowed, (method, path, response.status_code)
        assert await server.run(site.keys) == before
    finally:
        await asyncio.to_thread(server.stop)
