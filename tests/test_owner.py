"""``owner=``: a stream is bound to the owner of the request that made it.

Every test serves its app with uvicorn on loopback and talks to it with httpx, on the
memory backend and on a real Redis. The owner comes from an ``X-User`` header (or a
``session`` cookie), standing in for a session. Whoever is not the owner, anonymous
visitors included, must get exactly what an unknown id gets: the same status, the
same headers (all of them but ``date``) and the same body, so that nothing tells them
the stream exists.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

import resumable_stream
from resumable_stream import (
    MemoryBackend,
    ResumableStreamContext,
    StreamOptions,
    create_resumable_stream_context,
)
from resumable_stream._http import http_metadata
from resumable_stream.asgi import ResumableStreamMiddleware, ResumeEndpoint
from resumable_stream.client import ResumableStreamClient, ResumeFailed

from .conftest import FAST
from .http_servers import Probe, serving

STEP = 10.0  # bound on any single wait
ALICE = {"x-user": "alice"}
BOB = {"x-user": "bob"}
NOBODY: dict[str, str] = {}
INTRUDERS = {"bob": BOB, "anonymous": NOBODY}
MADE_UP = "made-up-id"

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
Cleanup = Callable[[], Awaitable[None]]
MakeContext = Callable[[StreamOptions], Awaitable[tuple[ResumableStreamContext, Cleanup]]]


def user(scope: Mapping[str, Any]) -> str | None:
    """The test's stand-in for a session: ``X-User``, else a ``session`` cookie."""
    for key, value in scope.get("headers") or []:
        if key == b"x-user":
            return bytes(value).decode()
        if key == b"cookie":
            for part in bytes(value).decode().split(";"):
                name, _, found = part.strip().partition("=")
                if name == "session":
                    return found
    return None


async def async_user(scope: Mapping[str, Any]) -> str | None:
    await asyncio.sleep(0)  # a real one would look the session up
    return user(scope)


@pytest.fixture(params=["memory", "redis"])
def make_context(request: pytest.FixtureRequest, key_prefix: str) -> MakeContext:
    """Makes the app's context on the server's loop (memory, or a real Redis)."""
    redis_url = request.getfixturevalue("redis_server").url if request.param == "redis" else None

    async def make(options: StreamOptions) -> tuple[ResumableStreamContext, Cleanup]:
        if redis_url is None:
            ctx = create_resumable_stream_context(MemoryBackend(), options=options)

            async def cleanup() -> None:
                await ctx.aclose()

            return ctx, cleanup
        client = aioredis.Redis.from_url(redis_url)
        ctx = create_resumable_stream_context(client, key_prefix=key_prefix, options=options)

        async def close_both() -> None:
            await ctx.aclose()
            await client.aclose()

        return ctx, close_both

    return make


def _answer(response: httpx.Response) -> Answer:
    """What a client can see of an answer; ``date`` is the only header allowed to differ."""
    headers = [(k.lower(), v) for k, v in response.headers.raw if k.lower() != b"date"]
    return response.status_code, headers, response.content


async def _ask(
    http: httpx.AsyncClient, method: str, path: str, headers: Mapping[str, str], **extra: Any
) -> Answer:
    return _answer(await http.request(method, path, headers=dict(headers), **extra))


# The requests an intruder may try on a stream: resume (with and without a position),
# stop, delete.
ASKS: dict[str, tuple[str, dict[str, Any]]] = {
    "resume": ("GET", {}),
    "resume after 0": ("GET", {"extra_headers": {"last-event-id": "0"}}),
    "stop": ("DELETE", {}),
    "delete": ("DELETE", {"params": {"delete": "1"}}),
}


async def _assert_hidden(http: httpx.AsyncClient, base: str, stream_id: str) -> None:
    """Every intruder's every request on ``stream_id`` is answered as for a made-up id."""
    for who, headers in INTRUDERS.items():
        for what, (method, spec) in ASKS.items():
            sent = {**headers, **spec.get("extra_headers", {})}
            params = spec.get("params")
            unknown = await _ask(http, method, f"{base}/{MADE_UP}", sent, params=params)
            assert unknown[0] == 404, (who, what, unknown)
            theirs = await _ask(http, method, f"{base}/{stream_id}", sent, params=params)
            assert theirs == unknown, (who, what)


class _Body:
    """A streamed response body read in steps, each bounded in time."""

    def __init__(self, response: httpx.Response) -> None:
        self._pieces = response.aiter_raw()
        self.seen = b""

    async def until(self, needle: bytes) -> None:
        async def read() -> None:
            async for piece in self._pieces:
                self.seen += piece
                if needle in self.seen:
                    return
            raise AssertionError(f"{needle!r} never came: {self.seen!r}")

        await asyncio.wait_for(read(), STEP)

    async def rest(self) -> bytes:
        async def read() -> None:
            async for piece in self._pieces:
                self.seen += piece

        await asyncio.wait_for(read(), STEP)
        return self.seen


# -- the middleware ---------------------------------------------------------------------------


async def _not_found(send: Any) -> None:
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _gated_sse_app(probe: Probe) -> Callable[..., Awaitable[None]]:
    """An event stream: ``one``, then ``two`` once the test sets ``go``."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != "/chat":  # the server's start-up probe, say
            await _not_found(send)
            return
        while (await receive()).get("more_body", False):
            pass
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"data: one\n\n", "more_body": True})
        await probe.event("go").wait()
        await send({"type": "http.response.body", "body": b"data: two\n\n", "more_body": False})

    return app


async def test_middleware_hides_a_stream_from_everyone_but_its_owner(
    make_context: MakeContext,
) -> None:
    probe = Probe()

    async def make() -> tuple[Any, Cleanup]:
        ctx, cleanup = await make_context(FAST)
        app = ResumableStreamMiddleware(
            _gated_sse_app(probe), ctx, path="/chat", resume_path="/resume/{stream_id}",
            owner=user, allow_delete=True,
        )  # fmt: skip
        return app, cleanup

    with serving("uvicorn", make, probe) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=STEP) as http:
            async with http.stream("POST", "/chat", headers=ALICE) as made:
                assert made.status_code == 200
                stream_id = made.headers["x-stream-id"]
                await _Body(made).until(b"data: one")
            # Running: bob and anonymous see no stream, whatever they ask.
            await _assert_hidden(http, "/resume", stream_id)
            # Alice resumes, and stops it (nobody else's stop or delete touched it).
            async with http.stream("GET", f"/resume/{stream_id}", headers=ALICE) as mine:
                assert mine.status_code == 200
                body = _Body(mine)
                await body.until(b"data: one")
                stop = await http.delete(f"/resume/{stream_id}", headers=ALICE)
                assert stop.status_code == 202
                await body.rest()  # ends: the stream was stopped
            # Ended: still hidden (a 410 with X-Stream-Status would confirm it).
            await _assert_hidden(http, "/resume", stream_id)
            ended = await http.get(f"/resume/{stream_id}", headers=ALICE)
            assert (ended.status_code, ended.headers["x-stream-status"]) == (410, "done")
            deleted = await http.delete(f"/resume/{stream_id}?delete=1", headers=ALICE)
            assert deleted.status_code == 204
            assert (await http.get(f"/resume/{stream_id}", headers=ALICE)).status_code == 404


async def test_unowned_and_older_streams_stay_readable_by_anyone(
    make_context: MakeContext,
) -> None:
    """No owner at creation (anonymous), or a stream stored before owners existed."""
    probe = Probe()
    probe.event("go").set()
    holder: dict[str, ResumableStreamContext] = {}

    async def make() -> tuple[Any, Cleanup]:
        ctx, cleanup = await make_context(FAST)
        holder["ctx"] = ctx
        app = ResumableStreamMiddleware(
            _gated_sse_app(probe), ctx, path="/chat", resume_path="/resume/{stream_id}",
            owner=user,
        )  # fmt: skip
        return app, cleanup

    text = [(b"content-type", b"text/plain; charset=utf-8")]

    async def older() -> None:
        # What the HTTP layer stored before this change: no "owner" key.
        stream = await holder["ctx"].resumable_stream(
            "older", lambda: iter(["hello"]), metadata=http_metadata(200, text)
        )
        assert stream is not None
        assert [c async for c in stream] == ["hello"]

    with serving("uvicorn", make, probe) as server:
        await server.run(older)
        async with httpx.AsyncClient(base_url=server.url, timeout=STEP) as http:
            made = await http.post("/chat")  # anonymous: not bound to anyone
            assert made.status_code == 200
            stream_id = made.headers["x-stream-id"]
            for headers in (ALICE, BOB, NOBODY):
                again = await http.get(f"/resume/{stream_id}", headers={**headers,
                                                                       "last-event-id": "0"})
                assert (again.status_code, again.text) == (200, "data: two\nid: 1\n\n")
                old = await http.get("/resume/older", params={"resumeAt": "0"}, headers=headers)
                assert (old.status_code, old.text) == (200, "hello")


async def test_owner_is_stored_beside_the_metadata_users_read(make_context: MakeContext) -> None:
    """``stream.metadata`` keeps its ``http`` entry as it was; ``owner`` is added."""
    probe = Probe()
    probe.event("go").set()
    holder: dict[str, ResumableStreamContext] = {}

    async def make() -> tuple[Any, Cleanup]:
        ctx, cleanup = await make_context(FAST)
        holder["ctx"] = ctx
        app = ResumableStreamMiddleware(
            _gated_sse_app(probe), ctx, path="/chat", resume_path="/resume/{stream_id}",
            owner=user,
        )  # fmt: skip
        return app, cleanup

    with serving("uvicorn", make, probe) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=STEP) as http:
            made = await http.post("/chat", headers=ALICE)
            stream_id = made.headers["x-stream-id"]

        async def metadata() -> dict[str, Any]:
            stream = await holder["ctx"].resume_existing_stream(stream_id, after=-1)
            assert stream is not None
            await stream.aclose()
            return dict(stream.metadata)

        found = await server.run(metadata)
    expected = http_metadata(200, [(b"content-type", b"text/event-stream")])
    assert found == {**expected, "owner": "alice"}


def test_owner_comparison_rules() -> None:
    from resumable_stream._http import may_access

    assert may_access(None, None)
    assert may_access({"http": {}}, "bob")
    assert may_access({"owner": None}, None)
    assert may_access({"owner": "alice"}, "alice")
    assert not may_access({"owner": "alice"}, "bob")
    assert not may_access({"owner": "alice"}, None)
    assert not may_access({"owner": "alice"}, "alice ")
    assert may_access({"owner": "日本"}, "日本")
    assert not may_access({"owner": "日本"}, "日")
    assert not may_access({"owner": 5}, "5")  # hand-written, not a str: nobody's


# -- ResumeEndpoint with the Starlette response ---------------------------------------------


async def test_resume_endpoint_and_response(make_context: MakeContext) -> None:
    """`ResumableStreamingResponse(owner=)` makes, `ResumeEndpoint(owner=)` serves; an
    async owner callable; at ``max_followers`` only the owner learns of the 503."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Route

    from resumable_stream.starlette import ResumableStreamingResponse

    probe = Probe()
    options = dataclasses.replace(FAST, max_followers=1)

    async def make() -> tuple[Any, Cleanup]:
        ctx, cleanup = await make_context(options)

        async def content() -> AsyncIterator[str]:
            yield "data: one\n\n"
            await probe.event("go").wait()
            yield "data: two\n\n"

        async def start(request: Request) -> ResumableStreamingResponse:
            return ResumableStreamingResponse(
                content, context=ctx, media_type="text/event-stream", owner=async_user
            )

        endpoint = ResumeEndpoint(ctx, owner=async_user, allow_delete=True)
        app = Starlette(
            routes=[
                Route("/start", start, methods=["POST"]),
                Route("/resume/{stream_id}", endpoint, methods=["GET", "DELETE"]),
            ]
        )
        return app, cleanup

    with serving("uvicorn", make, probe) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=STEP) as http:
            async with http.stream("POST", "/start", headers=ALICE) as made:
                stream_id = made.headers["x-stream-id"]
                await _Body(made).until(b"data: one")
            await _assert_hidden(http, "/resume", stream_id)
            async with http.stream("GET", f"/resume/{stream_id}", headers=ALICE) as mine:
                assert mine.status_code == 200
                body = _Body(mine)
                await body.until(b"data: one")
                # The one follower slot is taken: alice is told, bob sees no stream.
                full = await http.get(f"/resume/{stream_id}", headers=ALICE)
                assert full.status_code == 503
                for headers in INTRUDERS.values():
                    unknown = await _ask(http, "GET", f"/resume/{MADE_UP}", headers)
                    assert await _ask(http, "GET", f"/resume/{stream_id}", headers) == unknown
                probe.event("go").set()
                rest = await body.rest()
                assert b"data: two" in rest
            await _assert_hidden(http, "/resume", stream_id)
            after = await http.get(f"/resume/{stream_id}", headers={**ALICE, "last-event-id": "1"})
            assert (after.status_code, after.headers["x-stream-status"]) == (410, "done")


# -- ChatStreams --------------------------------------------------------------------------------

CHAT_ASKS: list[tuple[str, dict[str, str] | None]] = [
    ("GET", None), ("DELETE", None), ("DELETE", {"delete": "1"}),
]  # fmt: skip


async def test_chat_streams_hide_an_answer_from_everyone_but_its_owner(
    make_context: MakeContext,
) -> None:
    """Another owner's ``GET``/``DELETE`` of a chat gets what a chat with no answer gets
    (``204``), byte for byte."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    from resumable_stream.ai_sdk import ChatRequest, ChatStreams

    probe = Probe()

    async def make() -> tuple[Any, Cleanup]:
        ctx, cleanup = await make_context(FAST)

        async def answer(request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
            yield {"type": "text-start", "id": "t"}
            yield {"type": "text-delta", "id": "t", "delta": "hi"}
            await probe.event("go").wait()
            yield {"type": "text-end", "id": "t"}

        chats = ChatStreams(ctx, answer, owner=async_user, allow_delete=True)
        app = Starlette(
            routes=[
                Route("/api/chat", chats.chat_endpoint, methods=["POST"]),
                Route("/api/chat/{chat_id}/stream", chats.stream_endpoint,
                      methods=["GET", "DELETE"]),
            ]
        )  # fmt: skip
        return app, cleanup

    request = {"id": "c1", "messages": [{"id": "u1", "role": "user", "parts": []}]}
    with serving("uvicorn", make, probe) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=STEP) as http:
            async with http.stream("POST", "/api/chat", json=request, headers=ALICE) as made:
                assert made.status_code == 200
                await _Body(made).until(b'"delta":"hi"')
            for who, headers in INTRUDERS.items():
                for method, params in CHAT_ASKS:
                    unknown = await _ask(
                        http, method, "/api/chat/no-such-chat/stream", headers, params=params
                    )
                    assert unknown[0] == 204, (who, method, params)
                    theirs = await _ask(http, method, "/api/chat/c1/stream", headers, params=params)
                    assert theirs == unknown, (who, method, params)
            async with http.stream("GET", "/api/chat/c1/stream", headers=ALICE) as mine:
                assert mine.status_code == 200
                body = _Body(mine)
                await body.until(b'"delta":"hi"')
                stop = await http.delete("/api/chat/c1/stream", headers=ALICE)
                assert stop.status_code == 202
                rest = await body.rest()
                assert b'"type":"abort"' in rest


# -- the clients ----------------------------------------------------------------------------


def _text_app() -> Callable[..., Awaitable[None]]:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != "/chat":  # the server's start-up probe, say
            await _not_found(send)
            return
        while (await receive()).get("more_body", False):
            pass
        headers = [(b"content-type", b"text/plain; charset=utf-8")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"hello ", "more_body": True})
        await send({"type": "http.response.body", "body": b"world", "more_body": False})

    return app


async def test_python_client_sends_its_headers_and_cookies_on_resumes(
    make_context: MakeContext,
) -> None:
    async def make() -> tuple[Any, Cleanup]:
        ctx, cleanup = await make_context(FAST)
        app = ResumableStreamMiddleware(
            _text_app(), ctx, path="/chat", resume_path="/resume/{stream_id}", owner=user
        )
        return app, cleanup

    async def read(client: ResumableStreamClient, stream_id: str) -> str:
        async with client.follow(stream_id, resume_at=0) as messages:
            return "".join([m.data async for m in messages])

    with serving("uvicorn", make) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=STEP) as http:
            stream_id = (await http.post("/chat", headers=ALICE)).headers["x-stream-id"]
        path = "/resume/{stream_id}"
        by_header = ResumableStreamClient(base_url=server.url, headers=ALICE, resume_path=path)
        assert await read(by_header, stream_id) == "hello world"
        async with httpx.AsyncClient(base_url=server.url, cookies={"session": "alice"}) as http:
            by_cookie = ResumableStreamClient(client=http, resume_path=path)
            assert await read(by_cookie, stream_id) == "hello world"
        stranger = ResumableStreamClient(base_url=server.url, headers=BOB, resume_path=path)
        with pytest.raises(ResumeFailed) as refused:
            await read(stranger, stream_id)
        assert refused.value.status == 404


# The installed package's file (in CI the tests run against the wheel, not the checkout).
BROWSER_CLIENT = Path(resumable_stream.__file__).parent / "static" / "resumable-stream.js"

# A scripted fetch: the first answer breaks mid-stream, every resume is recorded.
NODE_SCRIPT = r"""
const m = await import(process.argv[2]);
const enc = new TextEncoder();
const broken = () => {
  let sent = false;  // one event, then the connection breaks
  const body = new ReadableStream({ pull(c) {
    if (sent) c.error(new TypeError("cut"));
    else { sent = true; c.enqueue(enc.encode("data: a\nid: 0\n\n")); }
  } });
  return new Response(body, { headers: { "content-type": "text/event-stream",
                                         "x-stream-id": "s1" } });
};
const done = () => new Response("x", { status: 410, headers: { "x-stream-status": "done" } });
const seen = [];
const client = (answers) => new m.ResumableStreamClient({
  storageKey: null, retryDelay: 1, logger: null,
  fetch: async (url, init) => {
    const h = new Headers(init.headers);
    seen.push({ url, method: init.method, credentials: init.credentials ?? null,
                user: h.get("x-user"), type: h.get("content-type"), last: h.get("last-event-id"),
                accept: h.get("accept") });
    return answers.shift()();
  },
});
const auth = { credentials: "include", headers: { "X-User": "alice" } };
await client([broken, done]).start("/start", { q: 1 }, auth);
await client([done]).resume("s2", null, auth);
console.log(JSON.stringify(seen));
"""


def test_browser_client_resumes_with_the_first_requests_credentials_and_headers(
    tmp_path: Path,
) -> None:
    """Unit level, in node (the Chromium suite is tests/test_browser.py)."""
    script = tmp_path / "check.mjs"
    script.write_text(NODE_SCRIPT)
    result = subprocess.run(
        ["node", str(script), BROWSER_CLIENT.as_uri()],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    start, resumed, direct = seen
    assert (start["method"], start["credentials"], start["user"]) == ("POST", "include", "alice")
    assert start["type"] == "application/json"
    for call in (resumed, direct):
        assert (call["method"], call["credentials"], call["user"]) == ("GET", "include", "alice")
        assert call["type"] is None  # a GET has no body: no content-type, no preflight
        assert call["accept"] == "text/event-stream, */*"
    assert (resumed["url"], resumed["last"]) == ("/api/chat/resume/s1", "0")
    assert direct["url"] == "/api/chat/resume/s2?resumeAt=0"
