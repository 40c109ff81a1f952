"""Faults of the middleware and the resume endpoint, through a real uvicorn on loopback.

* Stopping a stream (``DELETE`` on its resume URL, ``ctx.stop_stream``), cutting it at
  ``max_stream_bytes`` or closing the context cancels the wrapped app and waits for its
  own cleanup: before, the app generated on to its end (billing an LLM the while).
* The app's ``send`` waits while the middleware holds ``max_buffered_bytes`` of its
  body: before, an app faster than storage piled everything up in memory.
* Stream ids: a lone surrogate is an `InvalidStreamId`; ids holding ``%`` resolve
  through the endpoint's fallback (a ``Mount``); ids outside latin-1 travel in
  ``X-Stream-Id`` percent-encoded, and the header is the resume URL's segment as is.

The apps are bare ASGI callables (below) that report through a `Probe`: a count of
what they produced, and events for "started" and "finally ran". Waits are on events
or on stored state, each bounded by ``STEP``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest
import redis.asyncio as aioredis
from starlette.routing import Mount, Router

from resumable_stream import (
    Chunk,
    InvalidStreamId,
    MemoryBackend,
    ResumableStreamContext,
    StreamOptions,
    StreamStatus,
    create_resumable_stream_context,
)
from resumable_stream._types import Ended
from resumable_stream.ai_sdk import ChatRequest, ChatStreams, text_chunks
from resumable_stream.asgi import ResumableStreamMiddleware, ResumeEndpoint
from resumable_stream.backends.redis import RedisBackend

from .http_servers import CrossLoopEvent, Probe, serving

pytestmark = pytest.mark.timeout(60)

STEP = 10.0  # bound on any single wait
FAST = StreamOptions(lease=1.0, poll_interval=0.25, shutdown_grace=0.5)
PACE = 0.002  # seconds between the endless app's events: the workload, not a wait
ENDLESS_CAP = 100_000  # "forever": 200 s at PACE, far past any wait of a test
PIECE = 1024  # bytes per message of the flooding app
FLOOD_TOTAL = 2 << 20  # what it sends in all
WRITE_DELAY = 0.004  # seconds each write of the slow storage takes: the workload


# -- storage that takes its time --------------------------------------------------------


class SlowBackend(MemoryBackend):
    """A memory backend whose every write takes ``WRITE_DELAY``; counts stored bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.stored_bytes = 0

    async def write(
        self,
        stream_id: str,
        token: str,
        start: int,
        chunks: Sequence[Chunk],
        *,
        end: Ended | None,
        ttl: float,
        finished_ttl: float,
        lease: float,
    ) -> bool:
        await asyncio.sleep(WRITE_DELAY)
        stop = await super().write(
            stream_id, token, start, chunks, end=end, ttl=ttl, finished_ttl=finished_ttl,
            lease=lease,
        )
        self.stored_bytes += sum(len(c) for c in chunks)  # bytes chunks: a byte each
        return stop

    def write_soon(
        self,
        stream_id: str,
        token: str,
        start: int,
        chunks: Sequence[Chunk],
        *,
        end: Ended | None,
        ttl: float,
        finished_ttl: float,
        lease: float,
    ) -> asyncio.Future[bool]:
        return asyncio.ensure_future(
            self.write(
                stream_id, token, start, chunks, end=end, ttl=ttl,
                finished_ttl=finished_ttl, lease=lease,
            )
        )


# -- the apps -----------------------------------------------------------------------------


def key_of(scope: Any) -> str:
    return str(scope["path"]).rstrip("/").rsplit("/", 1)[-1]


async def read_request(receive: Callable[[], Awaitable[Any]]) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


def build_app(
    ctx: ResumableStreamContext, probe: Probe, backend: MemoryBackend
) -> Callable[..., Awaitable[None]]:
    """``/endless/<key>`` (SSE until cancelled), ``/flood/<key>`` (bytes as fast as it
    may), ``/named/<key>`` (text; its id is ``probe.notes["id:<key>"]``), and
    `ResumeEndpoint` under ``Mount("/mounted/resume")`` (the id from the path)."""
    notes = probe.notes
    mounted = Router(routes=[Mount("/mounted/resume", app=ResumeEndpoint(ctx))])

    async def endless(scope: Any, receive: Any, send: Any) -> None:
        key = key_of(scope)
        await read_request(receive)
        count = 0
        notes[f"{key}:count"] = 0
        headers = [(b"content-type", b"text/event-stream")]
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            while count < ENDLESS_CAP:
                event = b"data: %d\n\n" % count
                await send({"type": "http.response.body", "body": event, "more_body": True})
                count += 1
                notes[f"{key}:count"] = count
                if count == 5:
                    probe.event(f"{key}:started").set()
                await asyncio.sleep(PACE)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            notes[f"{key}:cancelled"] = True
            raise
        finally:
            notes[f"{key}:final"] = count
            probe.event(f"{key}:finally").set()

    async def flood(scope: Any, receive: Any, send: Any) -> None:
        key = key_of(scope)
        await read_request(receive)
        headers = [(b"content-type", b"application/octet-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        sent = gap = 0
        for i in range(FLOOD_TOTAL // PIECE):
            piece = bytes([i % 256]) * PIECE
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            sent += PIECE
            # Sent (accepted by send) but not stored: what waits in memory somewhere.
            gap = max(gap, sent - getattr(backend, "stored_bytes", 0))
        notes[f"{key}:gap"] = gap
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        probe.event(f"{key}:sent").set()

    async def named(scope: Any, receive: Any, send: Any) -> None:
        await read_request(receive)
        headers = [(b"content-type", b"text/plain; charset=utf-8")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for piece in (b"hello, ", b"resumable ", "w\u00f6rld".encode()):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def app(scope: Any, receive: Any, send: Any) -> None:
        path = str(scope.get("path", ""))
        for prefix, handler in (("/endless/", endless), ("/flood/", flood), ("/named/", named)):
            if path.startswith(prefix):
                await handler(scope, receive, send)
                return
        await mounted(scope, receive, send)

    def handled(scope: Any) -> bool:
        return scope["method"] == "POST" and str(scope["path"]).startswith(
            ("/endless/", "/flood/", "/named/")
        )

    def chosen_id(scope: Any) -> str | None:
        found = notes.get(f"id:{key_of(scope)}")
        return None if found is None else str(found)

    return ResumableStreamMiddleware(
        app, ctx, path=handled, resume_path="/resume/{stream_id}", stream_id=chosen_id,
        ping_interval=None,
    )


# -- the server ---------------------------------------------------------------------------


@dataclass
class Site:
    url: str
    probe: Probe
    holder: dict[str, Any]
    run: Callable[..., Awaitable[Any]]

    @property
    def ctx(self) -> ResumableStreamContext:
        ctx: ResumableStreamContext = self.holder["ctx"]
        return ctx

    @property
    def backend(self) -> MemoryBackend:
        backend: MemoryBackend = self.holder["backend"]
        return backend

    async def wait(self, name: str) -> None:
        with anyio.fail_after(STEP):
            await self.probe.event(name).wait()

    async def wait_status(self, stream_id: str, wanted: StreamStatus) -> None:
        with anyio.fail_after(STEP):
            # The stored status: no event crosses from the backend into the test.
            while await self.run(lambda: self.ctx.get_status(stream_id)) is not wanted:  # noqa: ASYNC110
                await asyncio.sleep(0.02)


@contextlib.contextmanager
def site(
    options: StreamOptions = FAST, backend: Callable[[], MemoryBackend] = MemoryBackend
) -> Iterator[Site]:
    probe = Probe()
    holder: dict[str, Any] = {}

    async def make() -> tuple[Any, Callable[[], Awaitable[None]]]:
        made = holder["backend"] = backend()
        ctx = holder["ctx"] = create_resumable_stream_context(made, options=options)

        async def cleanup() -> None:
            await ctx.aclose()
            await made.aclose()

        return build_app(ctx, probe, made), cleanup

    with serving("uvicorn", make, probe) as server:
        yield Site(server.url, probe, holder, server.run)


@contextlib.asynccontextmanager
async def client(at: Site) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=at.url, timeout=STEP, trust_env=False) as made:
        yield made


def new_key() -> str:
    return uuid.uuid4().hex[:16]


async def read_to_end(response: httpx.Response) -> bytes:
    with anyio.fail_after(STEP):
        return b"".join([part async for part in response.aiter_raw()])


# -- fault 6: stop stops the app ------------------------------------------------------------


@pytest.mark.parametrize("how", ["delete", "stop_stream"])
async def test_stop_cancels_the_app(how: str) -> None:
    with site() as at:
        key = new_key()
        async with client(at) as http, http.stream("POST", f"/endless/{key}") as response:
            stream_id = response.headers["x-stream-id"]
            await at.wait(f"{key}:started")
            if how == "delete":
                stopped = await http.delete(f"/resume/{stream_id}")
                assert stopped.status_code == 202
            else:
                assert await at.run(lambda: at.ctx.stop_stream(stream_id)) is True
            produced_at_stop = at.probe.notes[f"{key}:count"]
            # The app's own cleanup runs, promptly: it was cancelled, not left running.
            await at.wait(f"{key}:finally")
            assert at.probe.notes.get(f"{key}:cancelled") is True
            # At most the event in the making when the cancellation reached the app.
            assert at.probe.notes[f"{key}:final"] - produced_at_stop <= 3
            body = await read_to_end(response)  # ends cleanly: a stopped stream is done
        await at.wait_status(stream_id, StreamStatus.DONE)
        assert body.count(b"data: ") >= 5


async def test_size_cap_cancels_the_app() -> None:
    with site(StreamOptions(lease=1.0, poll_interval=0.25, max_stream_bytes=2000)) as at:
        key = new_key()
        async with client(at) as http, http.stream("POST", f"/endless/{key}") as response:
            stream_id = response.headers["x-stream-id"]
            with contextlib.suppress(httpx.HTTPError):  # the cut aborts the body
                await read_to_end(response)
            await at.wait(f"{key}:finally")
        assert at.probe.notes.get(f"{key}:cancelled") is True
        assert await at.run(lambda: at.ctx.get_status(stream_id)) is StreamStatus.FAILED


async def test_closing_the_context_cancels_and_awaits_the_app() -> None:
    with site() as at:
        key = new_key()
        async with client(at) as http, http.stream("POST", f"/endless/{key}") as response:
            assert response.headers["x-stream-id"]
            await at.wait(f"{key}:started")
            await at.run(lambda: at.ctx.aclose(), timeout=STEP)
            # aclose() returned: the app's cleanup has already run, nothing is left going.
            assert at.probe.event(f"{key}:finally").is_set()
            assert at.probe.notes.get(f"{key}:cancelled") is True


# -- fault 6: the app's send waits when the middleware's budget is full ---------------------


@pytest.mark.parametrize("reading", ["client-reads", "client-reads-late"])
async def test_an_app_faster_than_storage_is_held_back(reading: str) -> None:
    budget = 32 << 10
    options = StreamOptions(
        lease=1.0, poll_interval=0.25, max_buffered_bytes=budget, max_batch_bytes=16 << 10,
        reader_buffer_bytes=64 << 10,
    )
    with site(options, SlowBackend) as at:
        key = new_key()
        async with client(at) as http, http.stream("POST", f"/flood/{key}") as response:
            stream_id = response.headers["x-stream-id"]
            if reading == "client-reads-late":
                await at.wait(f"{key}:sent")
            body = await read_to_end(response)
        await at.wait(f"{key}:sent")
        expected = b"".join(bytes([i % 256]) * PIECE for i in range(FLOOD_TOTAL // PIECE))
        assert body == expected
        # Sent but not stored, at its worst: the middleware's budget, the producer's
        # (max_buffered_bytes, one chunk over), the batch in flight (about 80 KiB
        # measured), with a budget of slack. Unbounded, it was all of it (2 MiB).
        gap = at.probe.notes[f"{key}:gap"]
        assert gap <= 3 * budget + (16 << 10), gap
        await at.wait_status(stream_id, StreamStatus.DONE)
        async with client(at) as http:
            resumed = await http.get(f"/resume/{stream_id}", params={"resumeAt": 0})
        assert resumed.status_code == 200
        assert resumed.content == expected


# -- stream ids -------------------------------------------------------------------------------


async def test_a_lone_surrogate_is_an_invalid_stream_id() -> None:
    async def source() -> AsyncIterator[str]:
        yield "x"

    async with create_resumable_stream_context(MemoryBackend(), options=FAST) as ctx:
        for bad in ("a\ud800", "\udcff", "chat-\udfff-1"):
            with pytest.raises(InvalidStreamId):
                await ctx.resumable_stream(bad, source)
            with pytest.raises(InvalidStreamId):
                await ctx.create_new_resumable_stream(bad, source)
            with pytest.raises(InvalidStreamId):
                await ctx.resume_existing_stream(bad)
            with pytest.raises(InvalidStreamId):
                await ctx.stop_stream(bad)
            with pytest.raises(InvalidStreamId):
                await ctx.get_status(bad)
        assert ctx.running_streams == 0


async def test_a_lone_surrogate_through_http() -> None:
    with site() as at:
        key = new_key()
        at.probe.notes[f"id:{key}"] = "a\ud800"  # chosen by the app's stream_id hook
        async with client(at) as http:
            made = await http.post(f"/named/{key}")
            # Not storable, so not resumable: the app's response, whole, without an id.
            assert made.status_code == 200
            assert made.content == "hello, resumable w\u00f6rld".encode()
            assert "x-stream-id" not in made.headers
            # Percent-encoded bytes that are not UTF-8 (a lone surrogate's, or none at
            # all) name no stream: 404, never a 500.
            for segment in ("a%ED%A0%80", "a%ff", "%C0%AF"):
                for url in (f"/resume/{segment}", f"/mounted/resume/{segment}"):
                    for method in ("GET", "DELETE"):
                        answer = await http.request(method, url)
                        assert answer.status_code == 404, (method, url, answer.text)


ODD_IDS = ["50%off", "a%2Fb", "x%41y", "100%", "chat-\u65e5\u672c", "\U0001f600 ok", "q?x#y"]


@pytest.mark.parametrize("stream_id", ODD_IDS)
async def test_odd_ids_round_trip_by_the_advertised_url(stream_id: str) -> None:
    with site() as at:
        key = new_key()
        at.probe.notes[f"id:{key}"] = stream_id
        async with client(at) as http:
            made = await http.post(f"/named/{key}")
            assert made.status_code == 200
            whole = made.content
            assert whole == "hello, resumable w\u00f6rld".encode()
            # The id itself, percent-encoded once into the URL: the endpoint's fallback
            # (under a Mount, from the path) decodes it once, never twice.
            segment = quote(stream_id, safe="")
            for prefix in ("/resume/", "/mounted/resume/"):
                resumed = await http.get(prefix + segment, params={"resumeAt": 0})
                assert resumed.status_code == 200, (prefix, resumed.text)
                assert resumed.content == whole
            advertised = made.headers["x-stream-id"]
            assert advertised.isascii()  # any id fits a latin-1 header
            assert httpx.URL(f"/resume/{advertised}").path == f"/resume/{stream_id}"
            for prefix in ("/resume/", "/mounted/resume/"):
                # The header's value is the URL's segment as it is.
                resumed = await http.get(prefix + advertised, params={"resumeAt": 0})
                assert resumed.status_code == 200, (prefix, resumed.text)
                assert resumed.content == whole
                assert resumed.headers["x-stream-id"] == advertised
                # A resume names itself as the client sent it (raw_path: never the
                # decoded path, where "a%2Fb" would become two segments).
                assert resumed.headers["location"] == f"{prefix}{advertised}?reconnect=1"
            # The Location is the same URL; with no position there, from the start.
            location = made.headers["location"]
            assert location == f"/resume/{advertised}?reconnect=1"
            from_location = await http.get(location)
            assert (from_location.status_code, from_location.content) == (200, whole)
            assert (await http.delete(f"/mounted/resume/{advertised}")).status_code == 410
            assert (await http.get(f"/mounted/resume/{advertised}")).status_code == 410
        assert await at.run(lambda: at.ctx.get_status(stream_id)) is StreamStatus.DONE


# -- the AI SDK routes: the same ids, by chat --------------------------------------------------


@contextlib.contextmanager
def chat_site(redis_url: str | None = None, gate: CrossLoopEvent | None = None) -> Iterator[str]:
    """`ChatStreams` on memory (or Redis at ``redis_url``) with ``stream_endpoint``
    reached without a path parameter (the chat id comes from the path segment before
    ``/stream``). Its answer waits at ``gate`` (if given) after its first delta."""

    async def make() -> tuple[Any, Callable[[], Awaitable[None]]]:
        client = None if redis_url is None else aioredis.Redis.from_url(redis_url)
        made: Any = (
            MemoryBackend() if client is None
            else RedisBackend(client, key_prefix=f"faults-{new_key()}")
        )
        ctx = create_resumable_stream_context(made, options=FAST)

        async def answer(request: ChatRequest) -> AsyncIterator[Any]:
            async def deltas() -> AsyncIterator[str]:
                yield f"echo: {request.last_user_text}"
                if gate is not None:
                    await gate.wait()
                yield " (the end)"

            async for chunk in text_chunks(deltas()):
                yield chunk

        chats = ChatStreams(ctx, answer, ping_interval=None)

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["path"] == "/api/chat":
                await chats.chat_endpoint(scope, receive, send)
            else:
                await chats.stream_endpoint(scope, receive, send)

        async def cleanup() -> None:
            await ctx.aclose()
            await made.aclose()
            if client is not None:
                await client.aclose()  # the backend takes the client, not owns it

        return app, cleanup

    with serving("uvicorn", make) as server:
        yield server.url


def chat_body(chat_id: str) -> bytes:
    """JSON by hand: a lone surrogate is legal JSON (an escape) that httpx cannot encode."""
    message = {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "Hi"}]}
    return json.dumps({"id": chat_id, "messages": [message], "trigger": "submit-message"}).encode()


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_chat_id_with_a_lone_surrogate_is_a_400(
    backend: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("redis_server").url if backend == "redis" else None
    with chat_site(url) as base:
        async with httpx.AsyncClient(base_url=base, timeout=STEP, trust_env=False) as http:
            answer = await http.post(
                "/api/chat", content=chat_body("a\ud800"),
                headers={"content-type": "application/json"},
            )
            assert answer.status_code == 400, answer.text
            resumed = await http.get("/api/chat/a%ED%A0%80/stream")
            assert resumed.status_code == 404


@pytest.mark.parametrize("chat_id", ["a%2Fb", "x%41y", "50%off", "chat-\u65e5\u672c"])
async def test_chat_ids_with_percent_resume_by_the_path(chat_id: str) -> None:
    gate = CrossLoopEvent()
    with chat_site(None, gate) as base:
        async with httpx.AsyncClient(base_url=base, timeout=STEP, trust_env=False) as http:
            body = chat_body(chat_id)
            headers = {"content-type": "application/json"}
            async with http.stream("POST", "/api/chat", content=body, headers=headers) as a:
                assert a.status_code == 200
                seen = b""
                with anyio.fail_after(STEP):
                    async for part in a.aiter_raw():
                        seen += part
                        if b"echo: Hi" in seen:
                            break
                # Running: the chat's id, decoded once from the path, finds its answer
                # (any other id is 204, "no answer running").
                url = f"/api/chat/{quote(chat_id, safe='')}/stream"
                async with http.stream("GET", url) as resumed:
                    assert resumed.status_code == 200
                    gate.set()
                    whole = await read_to_end(resumed)
                assert b"echo: Hi" in whole
                assert b"(the end)" in whole
