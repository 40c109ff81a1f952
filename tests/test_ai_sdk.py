"""`resumable_stream.ai_sdk` without the JavaScript client: chunks, the active-stream
pointer, and the routes over real HTTP (uvicorn in a thread, memory and Redis).

The handler is scripted by the request body (``"script"``) and parks at gates the test
opens (probe events ``"<chat>:paused"`` / ``"<chat>:go"``), so every test knows what was
produced when it acts; nothing waits by sleeping. The real AI SDK client is in
``tests/test_ai_sdk_client.py``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pytest
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.routing import Route

from resumable_stream import (
    BackendUnavailable,
    InvalidArgument,
    MemoryBackend,
    ProducerLost,
    StreamFailed,
    StreamOptions,
    StreamStatus,
    create_resumable_stream_context,
)
from resumable_stream._ai_sdk_chunks import ui_chunks as _ui_chunks
from resumable_stream._ai_sdk_pointer import ActiveStreams as _ActiveStreams
from resumable_stream._keys import StreamKeys
from resumable_stream.ai_sdk import (
    DONE,
    UI_MESSAGE_STREAM_HEADERS,
    ChatRequest,
    ChatStop,
    ChatStreams,
    abort_chunk,
    encode_chunk,
    error_chunk,
    finish_chunk,
    start_chunk,
    text_chunks,
    text_delta_chunk,
    text_end_chunk,
    text_start_chunk,
)
from resumable_stream.backends import Backend
from resumable_stream.backends.redis import RedisBackend

from .http_servers import LiveServer, Probe, serving
from .servers import RedisServer

pytestmark = pytest.mark.timeout(60)

STEP = 10.0  # bound on any single wait


# -- chunks ---------------------------------------------------------------------------------------


def test_chunk_builders_match_the_protocol() -> None:
    # The shapes of `uiMessageChunkSchema` in the `ai` package (5.x to 7.x).
    assert start_chunk() == {"type": "start"}
    assert start_chunk("m1", metadata={"a": 1}) == {
        "type": "start", "messageId": "m1", "messageMetadata": {"a": 1}
    }  # fmt: skip
    assert text_start_chunk("t") == {"type": "text-start", "id": "t"}
    assert text_delta_chunk("t", "Hi") == {"type": "text-delta", "id": "t", "delta": "Hi"}
    assert text_end_chunk("t") == {"type": "text-end", "id": "t"}
    assert finish_chunk() == {"type": "finish"}
    assert finish_chunk("length") == {"type": "finish", "finishReason": "length"}
    assert error_chunk("boom") == {"type": "error", "errorText": "boom"}
    assert abort_chunk() == {"type": "abort"}
    assert abort_chunk("stopped") == {"type": "abort", "reason": "stopped"}
    assert encode_chunk({"type": "text-delta", "id": "t", "delta": "é\n"}) == (
        'data: {"type":"text-delta","id":"t","delta":"é\\n"}\n\n'
    )
    assert DONE == "data: [DONE]\n\n"
    assert dict(UI_MESSAGE_STREAM_HEADERS) == {
        "content-type": "text/event-stream",
        "cache-control": "no-cache",
        "x-vercel-ai-ui-message-stream": "v1",
        "x-accel-buffering": "no",
    }


async def test_text_chunks_from_openai_style_deltas() -> None:
    async def deltas() -> AsyncIterator[str | None]:
        for delta in ["", "Hel", None, "lo"]:
            yield delta

    got = [chunk async for chunk in text_chunks(deltas(), message_id="m")]
    assert got == [
        {"type": "start", "messageId": "m"},
        {"type": "start-step"},
        {"type": "text-start", "id": "text-1"},
        {"type": "text-delta", "id": "text-1", "delta": "Hel"},
        {"type": "text-delta", "id": "text-1", "delta": "lo"},
        {"type": "text-end", "id": "text-1"},
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "stop"},
    ]


async def test_handler_output_as_dicts_or_sse_text_split_anywhere() -> None:
    text = encode_chunk({"type": "start"}) + encode_chunk({"type": "text-start", "id": "a"}) + DONE

    async def source() -> AsyncIterator[Any]:
        yield {"type": "data-x", "data": 1}
        for i in range(0, len(text), 7):  # cuts through lines and events
            yield text[i : i + 7]
        yield 'data: {"type":"finish"}'  # the last event without its blank line

    got = [chunk async for chunk in _ui_chunks(source())]
    assert got == [
        {"type": "data-x", "data": 1},
        {"type": "start"},
        {"type": "text-start", "id": "a"},
        {"type": "finish"},
    ]


@pytest.mark.parametrize("bad", [42, {"no": "type"}, "data: [1, 2]\n\n"])
async def test_handler_output_that_is_no_chunk(bad: Any) -> None:
    async def source() -> AsyncIterator[Any]:
        yield bad

    with pytest.raises(TypeError):
        _ = [chunk async for chunk in _ui_chunks(source())]


def test_last_user_text() -> None:
    request = ChatRequest(
        id="c", trigger=None, message_id=None, response_message_id="r", body={}, scope={},
        messages=[
            {"role": "user", "parts": [{"type": "text", "text": "old"}]},
            {"role": "assistant", "parts": [{"type": "text", "text": "answer"}]},
            {"role": "user", "parts": [{"type": "file"}, {"type": "text", "text": "a"},
                                       {"type": "text", "text": "b"}]},
        ],
    )  # fmt: skip
    assert request.last_user_text == "ab"


# -- the active-stream pointer --------------------------------------------------------------------


@pytest.fixture(params=["memory", "fakeredis", "redis"])
async def pointer_backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    prefix = f"ai-{uuid.uuid4().hex[:12]}"
    client: Any = None
    if request.param == "memory":
        backend: Backend = MemoryBackend()
    elif request.param == "fakeredis":
        import fakeredis

        client = fakeredis.FakeAsyncRedis()
        backend = RedisBackend(client, key_prefix=prefix)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        client = aioredis.Redis.from_url(server.url)
        backend = RedisBackend(client, key_prefix=prefix)
    yield backend
    await backend.aclose()
    if client is not None:
        await client.aclose()


async def test_pointer_set_replace_and_clear(pointer_backend: Backend) -> None:
    active = _ActiveStreams(pointer_backend, ttl=60.0)
    assert await active.get("chat") is None
    assert not await active.clear("chat", "s1")  # nothing to clear
    assert await active.set("chat", "s1") is None
    assert await active.get("chat") == "s1"
    assert await active.set("chat", "s2") == "s1"  # a new answer replaces it
    assert not await active.clear("chat", "s1")  # the old answer's end leaves it alone
    assert await active.get("chat") == "s2"
    assert await active.clear("chat", "s2")
    assert await active.get("chat") is None
    assert await active.get("other chat") is None
    # A set whose stream was never made is undone, unless replaced meanwhile.
    assert await active.set("chat", "s3") is None
    assert await active.set("chat", "s4") == "s3"
    assert await active.restore("chat", "s4", "s3")
    assert await active.get("chat") == "s3"
    assert await active.set("chat", "s5") == "s3"
    assert not await active.restore("chat", "s4", "s3")
    assert await active.get("chat") == "s5"


async def test_pointer_writes_from_many_tasks_are_never_lost(pointer_backend: Backend) -> None:
    """Racing appends: every one lands exactly once (a refused one is retried)."""
    writers = [_ActiveStreams(pointer_backend, ttl=60.0) for _ in range(12)]
    replaced = await asyncio.gather(*(w.set("busy", f"s{i}") for i, w in enumerate(writers)))
    assert replaced.count(None) == 1  # each saw the one before it: one saw none
    snap = await pointer_backend.snapshot("ai-sdk:chat:busy", 0, 100)
    assert snap is not None
    assert sorted(snap.chunks) == sorted(f"s{i}" for i in range(12))
    assert await writers[0].get("busy") == snap.chunks[-1]


async def test_pointer_expires_with_its_ttl(redis_server: RedisServer) -> None:
    prefix = f"ai-{uuid.uuid4().hex[:12]}"
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        active = _ActiveStreams(RedisBackend(client, key_prefix=prefix), ttl=30.0)
        await active.set("chat", "s1")
        keys = StreamKeys(prefix, "ai-sdk:chat:chat")
        for key in (keys.meta, keys.chunks, keys.lease):
            assert 0 < await client.pttl(key) <= 30_000
    finally:
        await client.aclose()


# -- the routes, over HTTP ------------------------------------------------------------------------


def script_handler(probe: Probe) -> Any:
    """The app's handler, scripted by ``request.body["script"]``."""

    async def gate(chat_id: str) -> None:
        probe.event(f"{chat_id}:paused").set()
        await probe.event(f"{chat_id}:go").wait()

    async def answer(request: ChatRequest) -> AsyncIterator[Any]:
        script = request.body.get("script", "gated")
        name = request.body.get("gate", request.id)
        if script == "gated":  # "Hello", a gate, then " world" and the end

            async def deltas() -> AsyncIterator[str]:
                yield "Hello"
                await gate(name)
                yield " world"

            async for chunk in text_chunks(deltas()):
                yield chunk
        elif script == "raise":
            yield start_chunk()
            yield text_start_chunk("t")
            yield text_delta_chunk("t", "Hel")
            raise RuntimeError("the model broke")
        elif script == "sse":  # already-encoded SSE, no start chunk, its own [DONE]
            yield encode_chunk(text_start_chunk("t"))[:9]
            yield encode_chunk(text_start_chunk("t"))[9:] + encode_chunk(text_delta_chunk("t", "x"))
            yield encode_chunk(text_end_chunk("t")) + DONE
        elif script == "long":  # past a small max_stream_bytes
            yield start_chunk()
            yield text_start_chunk("t")
            yield text_delta_chunk("t", request.body["text"])
            yield text_end_chunk("t")
        elif script == "own-id":
            yield start_chunk("my-own-id")
            yield finish_chunk()
        elif script == "bad":
            yield start_chunk()
            yield 42
        else:
            raise AssertionError(script)

    return answer


def on_error(exc: BaseException) -> str:
    return f"sorry: {exc}"


class Site:
    def __init__(self, server: LiveServer, probe: Probe) -> None:
        self.server = server
        self.probe = probe
        self.chats: ChatStreams | None = None
        self.stops: list[ChatStop] = []

    async def wait(self, name: str) -> None:
        with anyio.fail_after(STEP):
            await self.probe.event(name).wait()

    def go(self, chat_id: str) -> None:
        self.probe.event(f"{chat_id}:go").set()


def make_site(
    backend_kind: str, redis_url: str | None, options: StreamOptions | None = None
) -> Iterator[Site]:
    probe = Probe()
    holder: dict[str, Any] = {}
    stops: list[ChatStop] = []

    async def make() -> tuple[Any, Any]:
        client = None
        if backend_kind == "memory":
            backend: Any = MemoryBackend()
        else:
            assert redis_url is not None
            client = aioredis.Redis.from_url(redis_url)
            backend = RedisBackend(client, key_prefix=f"ai-http-{uuid.uuid4().hex[:12]}")
        ctx = create_resumable_stream_context(backend, options=options)

        def authorize(scope: Any, chat_id: str) -> bool:
            return not chat_id.startswith("forbidden")

        chats = ChatStreams(
            ctx, script_handler(probe), authorize=authorize, on_error=on_error,
            ping_interval=0.2, max_body_bytes=10_000, on_stop=stops.append,
        )  # fmt: skip
        holder["chats"] = chats
        app = Starlette(
            routes=[
                Route("/api/chat", chats.chat_endpoint, methods=["POST"]),
                Route("/api/chat/{chat_id}/stream", chats.stream_endpoint,
                      methods=["GET", "DELETE"]),
                Route("/api/chat/{chat_id}/stop", chats.stop_endpoint, methods=["POST"]),
            ]
        )  # fmt: skip

        async def cleanup() -> None:
            await ctx.aclose()
            await backend.aclose()
            if client is not None:
                await client.aclose()

        return app, cleanup

    with serving("uvicorn", make, probe) as server:
        site = Site(server, probe)
        site.chats = holder["chats"]
        site.stops = stops
        yield site


@pytest.fixture(scope="module", params=["memory", "redis"])
def site(request: pytest.FixtureRequest) -> Iterator[Site]:
    url = request.getfixturevalue("redis_server").url if request.param == "redis" else None
    yield from make_site(request.param, url)


@pytest.fixture
async def http(site: Site) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=site.server.url, timeout=STEP, trust_env=False) as c:
        yield c


def new_chat() -> str:
    return f"chat-{uuid.uuid4().hex[:12]}"


def body_for(chat_id: str, script: str = "gated", **extra: Any) -> dict[str, Any]:
    message = {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "Hi"}]}
    return {"id": chat_id, "messages": [message], "trigger": "submit-message",
            "script": script, **extra}  # fmt: skip


class Events:
    """A UI message stream response read incrementally: event data as they come."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        self.data: list[str] = []
        self.ids: list[int] = []
        self.ended = False

    async def next(self) -> str | None:
        with anyio.fail_after(STEP):
            data: list[str] = []
            async for line in self._lines:
                if line.startswith("data: "):
                    data.append(line[6:])
                elif line.startswith("id: "):
                    self.ids.append(int(line[4:]))
                elif line == "" and data:
                    self.data.append("\n".join(data))
                    return self.data[-1]
            self.ended = True
            return None

    async def until(self, text: str) -> None:
        while (item := await self.next()) is not None:
            if text in item:
                return
        raise AssertionError(f"the stream ended without {text!r}: {self.data}")

    async def rest(self) -> list[str]:
        while await self.next() is not None:
            pass
        return self.data

    @property
    def chunks(self) -> list[Any]:
        return [json.loads(d) for d in self.data if d != "[DONE]"]


async def read_all(
    http: httpx.AsyncClient, method: str, url: str, **kw: Any
) -> tuple[httpx.Response, Events]:
    async with http.stream(method, url, **kw) as response:
        events = Events(response)
        if response.status_code == 200:
            await events.rest()
        else:
            await response.aread()
    return response, events


GATED_TYPES = [
    "start", "start-step", "text-start", "text-delta", "text-delta", "text-end",
    "finish-step", "finish",
]  # fmt: skip


async def test_send_then_resume_from_the_start_then_204(
    site: Site, http: httpx.AsyncClient
) -> None:
    chat = new_chat()
    async with http.stream("POST", "/api/chat", json=body_for(chat)) as response:
        assert response.status_code == 200
        for name, value in UI_MESSAGE_STREAM_HEADERS.items():
            assert response.headers[name] == value
        assert response.headers["x-stream-id"]
        first = Events(response)
        await site.wait(f"{chat}:paused")
        await first.until("Hello")
        # A resume while it runs: from the first chunk, then live to the end.
        async with http.stream("GET", f"/api/chat/{chat}/stream") as resumed:
            assert resumed.status_code == 200
            assert resumed.headers["x-vercel-ai-ui-message-stream"] == "v1"
            assert resumed.headers["x-stream-id"] == response.headers["x-stream-id"]
            again = Events(resumed)
            await again.until("Hello")
            assert again.data == first.data
            site.go(chat)
            await again.rest()
        await first.rest()
    assert first.data == again.data
    assert first.data[-1] == "[DONE]"
    assert [c["type"] for c in first.chunks] == GATED_TYPES
    assert first.chunks[0]["messageId"].startswith("msg-")
    assert first.ids == list(range(len(first.data)))
    # Finished: nothing is active any more.
    response, _ = await read_all(http, "GET", f"/api/chat/{chat}/stream")
    assert response.status_code == 204
    assert response.content == b""
    assert site.chats is not None
    assert await site.server.run(lambda: site.chats.active_stream_id(chat)) is None  # type: ignore[union-attr]


async def test_resume_of_an_unknown_chat_is_204(http: httpx.AsyncClient) -> None:
    for method in ("GET", "HEAD"):
        response = await http.request(method, f"/api/chat/{new_chat()}/stream")
        assert response.status_code == 204


async def test_stop_ends_every_reader_properly(site: Site, http: httpx.AsyncClient) -> None:
    chat = new_chat()
    async with http.stream("POST", "/api/chat", json=body_for(chat)) as response:
        first = Events(response)
        await site.wait(f"{chat}:paused")
        await first.until("Hello")
        async with http.stream("GET", f"/api/chat/{chat}/stream") as resumed:
            follower = Events(resumed)
            await follower.until("Hello")
            stopped = await http.delete(f"/api/chat/{chat}/stream")
            assert stopped.status_code == 202
            await follower.rest()
        await first.rest()
    for events in (first, follower):
        # The open text part is ended, then abort, finish and [DONE]: no " world".
        kinds = [c["type"] for c in events.chunks][-4:]
        assert kinds == ["text-delta", "text-end", "abort", "finish"]
        assert events.chunks[-1] == {"type": "finish"}
        assert events.chunks[-2] == {"type": "abort", "reason": "stopped"}
        assert events.chunks[-3] == {"type": "text-end", "id": "text-1"}
        assert events.data[-1] == "[DONE]"
        assert "world" not in "".join(events.data)
    response, _ = await read_all(http, "GET", f"/api/chat/{chat}/stream")
    assert response.status_code == 204
    assert (await http.delete(f"/api/chat/{chat}/stream")).status_code == 204


async def active_id(http: httpx.AsyncClient, chat: str) -> str | None:
    """The stream a resume of ``chat`` serves now (None for 204), asked with ``HEAD``: the
    server closes its reader before it answers, so no follower outlives the call."""
    resumed = await http.head(f"/api/chat/{chat}/stream")
    if resumed.status_code == 204:
        return None
    assert resumed.status_code == 200
    return resumed.headers["x-stream-id"]


async def test_a_new_post_replaces_the_active_stream(site: Site, http: httpx.AsyncClient) -> None:
    chat = new_chat()
    old_gate, new_gate = f"{chat}-old", f"{chat}-new"
    async with http.stream("POST", "/api/chat", json=body_for(chat, gate=old_gate)) as old:
        await site.wait(f"{old_gate}:paused")
        assert await active_id(http, chat) == old.headers["x-stream-id"]
        async with http.stream("POST", "/api/chat", json=body_for(chat, gate=new_gate)) as new:
            await site.wait(f"{new_gate}:paused")
            new_id = new.headers["x-stream-id"]
            assert await active_id(http, chat) == new_id
            # The old answer ends first: its end leaves the new answer's pointer alone.
            site.go(old_gate)
            await Events(old).rest()
            assert await active_id(http, chat) == new_id
            site.go(new_gate)
            await Events(new).rest()
    assert await active_id(http, chat) is None


async def test_a_newer_answer_that_finished_leaves_none_active(
    site: Site, http: httpx.AsyncClient
) -> None:
    chat = new_chat()
    async with http.stream("POST", "/api/chat", json=body_for(chat)) as first:
        await site.wait(f"{chat}:paused")
        _, events = await read_all(http, "POST", "/api/chat", json=body_for(chat, "own-id"))
        assert events.chunks[0] == {"type": "start", "messageId": "my-own-id"}  # the app's id
        # The newer answer replaced the pointer, then cleared it when it finished.
        assert await active_id(http, chat) is None
        site.go(chat)
        await Events(first).rest()


async def test_handler_error_becomes_an_error_chunk(http: httpx.AsyncClient) -> None:
    chat = new_chat()
    response, events = await read_all(http, "POST", "/api/chat", json=body_for(chat, "raise"))
    assert response.status_code == 200
    assert events.chunks[-2:] == [
        {"type": "error", "errorText": "sorry: the model broke"},
        {"type": "finish", "finishReason": "error"},
    ]
    assert events.data[-1] == "[DONE]"
    assert (await http.get(f"/api/chat/{chat}/stream")).status_code == 204
    _, bad = await read_all(http, "POST", "/api/chat", json=body_for(new_chat(), "bad"))
    assert bad.chunks[-2]["type"] == "error"
    assert bad.chunks[-2]["errorText"].startswith("sorry: a chat handler yields dicts")


async def test_sse_text_handler_gets_a_start_with_the_message_id(http: httpx.AsyncClient) -> None:
    _, events = await read_all(http, "POST", "/api/chat", json=body_for(new_chat(), "sse"))
    assert [c["type"] for c in events.chunks] == ["start", "text-start", "text-delta", "text-end"]
    assert events.chunks[0]["messageId"].startswith("msg-")
    assert events.data.count("[DONE]") == 1
    assert events.data[-1] == "[DONE]"


async def test_continuation_keeps_the_assistant_message_id(http: httpx.AsyncClient) -> None:
    body = body_for(new_chat(), "own-id")
    body["script"] = "sse"
    body["messages"].append({"id": "a-7", "role": "assistant", "parts": []})
    _, events = await read_all(http, "POST", "/api/chat", json=body)
    assert events.chunks[0] == {"type": "start", "messageId": "a-7"}


async def test_refusals(http: httpx.AsyncClient) -> None:
    forbidden = "forbidden-chat"
    assert (await http.post("/api/chat", json=body_for(forbidden))).status_code == 403
    assert (await http.get(f"/api/chat/{forbidden}/stream")).status_code == 403
    assert (await http.delete(f"/api/chat/{forbidden}/stream")).status_code == 403
    assert (await http.post("/api/chat", content=b"{not json")).status_code == 400
    assert (await http.post("/api/chat", json={"id": 7, "messages": []})).status_code == 400
    assert (await http.post("/api/chat", json=[])).status_code == 400
    assert (await http.post("/api/chat", json={"id": "x", "messages": "no"})).status_code == 400
    assert (await http.post("/api/chat", json={"id": "x" * 201})).status_code == 400
    huge = body_for(new_chat(), padding="x" * 20_000)
    assert (await http.post("/api/chat", json=huge)).status_code == 413


async def test_backend_down_streams_without_storing() -> None:
    class Down(MemoryBackend):
        async def claim(self, *args: Any, **kwargs: Any) -> Any:
            raise BackendUnavailable("down")

        async def snapshot(self, *args: Any, **kwargs: Any) -> Any:
            raise BackendUnavailable("down")

    ctx = create_resumable_stream_context(Down())

    async def answer(request: ChatRequest) -> AsyncIterator[Any]:
        async for chunk in text_chunks(_one("Hi")):
            yield chunk

    chats = ChatStreams(ctx, answer)
    app = Starlette(
        routes=[
            Route("/api/chat", chats.chat_endpoint, methods=["POST"]),
            Route("/api/chat/{chat_id}/stream", chats.stream_endpoint),
        ]
    )

    async def make() -> tuple[Any, Any]:
        return app, ctx.aclose

    with serving("uvicorn", make) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=STEP, trust_env=False) as http:
            response, events = await read_all(http, "POST", "/api/chat", json=body_for("c"))
            assert response.status_code == 200
            assert "x-stream-id" not in response.headers
            assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
            assert [c["type"] for c in events.chunks][:4] == [
                "start", "start-step", "text-start", "text-delta"
            ]  # fmt: skip
            assert events.data[-1] == "[DONE]"
            resumed = await http.get("/api/chat/c/stream")
            assert resumed.status_code == 503


async def _one(text: str) -> AsyncIterator[str]:
    yield text


class FakeReader:
    """Stands in for a stored stream's reader that fails after its chunks."""

    def __init__(self, chunks: list[str], error: BaseException | None) -> None:
        self.chunks = chunks
        self.error = error

    async def _items(self) -> AsyncIterator[tuple[int, str]]:
        for index, chunk in enumerate(self.chunks):
            yield index, chunk
        if self.error is not None:
            raise self.error

    def indexed(self) -> AsyncIterator[tuple[int, str]]:
        return self._items()


@pytest.mark.parametrize(
    ("error", "tail"),
    [
        (
            None,
            ['{"type":"text-end","id":"t"}', '{"type":"abort","reason":"stopped"}',
             '{"type":"finish"}'],
        ),
        (
            StreamFailed("s", "lost"),
            ['{"type":"error","errorText":"sorry: lost"}',
             '{"type":"finish","finishReason":"error"}'],
        ),
        (
            ProducerLost("s"),
            ['{"type":"error","errorText":"An error occurred."}',
             '{"type":"finish","finishReason":"error"}'],
        ),
    ],
)
async def test_response_ends_properly_whatever_the_stored_end(
    error: BaseException | None, tail: list[str]
) -> None:
    stored = [
        encode_chunk(start_chunk("m")),
        encode_chunk(text_start_chunk("t")),
        encode_chunk(text_start_chunk("done")),
        encode_chunk(text_end_chunk("done")),
    ]

    def describe(exc: BaseException) -> str:
        if isinstance(exc, StreamFailed):
            return f"sorry: {exc.error}"
        raise AssertionError("the hook fails: the default text is used")

    ctx = create_resumable_stream_context(MemoryBackend())
    chats = ChatStreams(ctx, script_handler(Probe()), on_error=describe)
    body = [piece async for piece in chats._response_body(FakeReader(stored, error))]  # type: ignore[arg-type]
    text = b"".join(body).decode()
    events = [block for block in text.split("\n\n") if block]
    assert events[: len(stored)] == [
        f"{s.rstrip()}\nid: {i}" for i, s in enumerate(stored)
    ]  # every stored event, with its id
    assert [e.removeprefix("data: ") for e in events[len(stored) :]] == [*tail, "[DONE]"]


async def test_a_complete_stored_stream_gets_nothing_added() -> None:
    stored = [encode_chunk(start_chunk("m")), DONE]
    chats = ChatStreams(create_resumable_stream_context(MemoryBackend()), script_handler(Probe()))
    body = [piece async for piece in chats._response_body(FakeReader(stored, None))]  # type: ignore[arg-type]
    assert len(body) == 2
    assert body[-1] == b"data: [DONE]\nid: 1\n\n"


async def test_active_stream_id_and_stop_from_the_app() -> None:
    async with create_resumable_stream_context(MemoryBackend()) as ctx:
        gate = asyncio.Event()
        cleaned_up = asyncio.Event()

        async def answer(request: ChatRequest) -> AsyncIterator[Any]:
            try:
                yield start_chunk()
                await gate.wait()
                yield finish_chunk()
            finally:
                cleaned_up.set()  # a stopped answer's handler still runs its cleanup

        chats = ChatStreams(ctx, answer)
        assert await chats.active_stream_id("c") is None
        assert not await chats.stop("c")
        request = ChatRequest(id="c", messages=[], trigger=None, message_id=None,
                              response_message_id="m", body={}, scope={})  # fmt: skip
        await chats._active.set("c", "s")
        reader = await ctx.create_new_resumable_stream(
            "s", lambda: chats._stored_events(request, "s")
        )
        assert reader is not None
        assert await chats.active_stream_id("c") == "s"
        assert await chats.stop("c")
        chunks = [c async for c in reader]
        assert chunks == [encode_chunk(start_chunk("m"))]  # stopped: no [DONE] stored
        assert await ctx.get_status("s") is StreamStatus.DONE
        assert cleaned_up.is_set()
        assert await chats.active_stream_id("c") is None
        assert not await chats.stop("c")


async def test_async_def_handler_returning_chunks() -> None:
    async def answer(request: ChatRequest) -> AsyncIterator[Any]:
        return text_chunks(_one(request.last_user_text), message_id="given")

    chats = ChatStreams(create_resumable_stream_context(MemoryBackend()), answer)
    request = ChatRequest(
        id="c", trigger=None, message_id=None, response_message_id="m", body={}, scope={},
        messages=[{"role": "user", "parts": [{"type": "text", "text": "Hi"}]}],
    )  # fmt: skip
    events = [event async for event in chats._events(request)]
    assert events[0] == encode_chunk(start_chunk("given"))
    assert encode_chunk(text_delta_chunk("text-1", "Hi")) in events
    assert events[-1] == DONE


# -- resource caps --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def capped() -> Iterator[Site]:
    """One answer at a time, one follower per answer, answers of at most 300 bytes."""
    options = StreamOptions(max_streams=1, max_followers=1, max_stream_bytes=300)
    yield from make_site("memory", None, options)


async def test_capacity_refusal_keeps_the_running_answer_active(capped: Site) -> None:
    chat = new_chat()
    async with httpx.AsyncClient(base_url=capped.server.url, timeout=STEP, trust_env=False) as http:
        async with http.stream("POST", "/api/chat", json=body_for(chat)) as running:
            try:
                await capped.wait(f"{chat}:paused")
                running_id = running.headers["x-stream-id"]
                # Another answer for the same chat while full: 503; the first stays active.
                refused = await http.post("/api/chat", json=body_for(chat))
                assert refused.status_code == 503
                assert refused.headers["retry-after"] == "1"
                assert await active_id(http, chat) == running_id
                # One follower at a time: a second concurrent resume gets 503 too.
                async with http.stream("GET", f"/api/chat/{chat}/stream") as follower:
                    assert follower.status_code == 200
                    second = await http.get(f"/api/chat/{chat}/stream")
                    assert second.status_code == 503
            finally:
                capped.go(chat)  # never leave the one place taken for the next test
            await Events(running).rest()
        assert await active_id(http, chat) is None


async def test_an_answer_past_its_size_cap_ends_with_an_error_chunk(capped: Site) -> None:
    chat = new_chat()
    long_text = "x" * 400
    async with httpx.AsyncClient(base_url=capped.server.url, timeout=STEP, trust_env=False) as http:
        response, events = await read_all(
            http, "POST", "/api/chat", json=body_for(chat, "long", text=long_text)
        )
        assert response.status_code == 200
        assert [c["type"] for c in events.chunks[-2:]] == ["error", "finish"]
        assert "300" in events.chunks[-2]["errorText"]  # on_error saw StreamTooLarge
        assert events.data[-1] == "[DONE]"
        assert long_text not in "".join(events.data)
        assert await active_id(http, chat) is None


# -- WorkflowChatTransport's routes and the stop route ---------------------------------------------


async def test_a_body_without_chat_id_is_a_chat_named_by_its_run_id(
    site: Site, http: httpx.AsyncClient
) -> None:
    body = body_for("unused", gate="no-id")
    del body["id"]
    async with http.stream("POST", "/api/chat", json=body) as response:
        run_id = response.headers["x-workflow-run-id"]
        assert run_id == response.headers["x-stream-id"]
        assert "x-workflow-run-id" in response.headers["access-control-expose-headers"].lower()
        first = Events(response)
        await first.until("Hello")
        await site.wait("no-id:paused")
        # useChat's resume by that id: its active answer, from the start.
        assert await active_id(http, run_id) == run_id
        # From a chunk on, live: the rest of the answer, numbered as stored.
        async with http.stream("GET", f"/api/chat/{run_id}/stream?startIndex=2") as later:
            assert later.status_code == 200
            assert later.headers["x-workflow-run-id"] == run_id
            follower = Events(later)
            await follower.until("Hello")
            site.go("no-id")
            await follower.rest()
        await first.rest()
    assert [c["type"] for c in first.chunks] == GATED_TYPES
    assert follower.chunks == first.chunks[2:]
    assert follower.ids == list(range(2, len(first.data)))  # [DONE] has its id too
    # After the end: replayed by run id still, and none active any more.
    _, again = await read_all(http, "GET", f"/api/chat/{run_id}/stream?startIndex=5")
    assert again.chunks == first.chunks[5:]
    assert await active_id(http, run_id) is None


async def test_stop_route(site: Site, http: httpx.AsyncClient) -> None:
    chat = new_chat()
    async with http.stream("POST", "/api/chat", json=body_for(chat)) as response:
        run_id = response.headers["x-workflow-run-id"]
        events = Events(response)
        await site.wait(f"{chat}:paused")
        await events.until("Hello")
        # A stale stop (it names another answer) changes nothing.
        stale = await http.post(f"/api/chat/{chat}/stop", json={"activeStreamId": "older"})
        assert stale.json() == {"success": True, "stopped": False}
        assert await active_id(http, chat) == run_id
        partial = {"id": "a1", "role": "assistant", "parts": [{"type": "text", "text": "Hello"}]}
        stop = await http.post(
            f"/api/chat/{chat}/stop", json={"activeStreamId": run_id, "assistantMessage": partial}
        )
        assert (stop.status_code, stop.json()) == (200, {"success": True, "stopped": True})
        await events.rest()
    assert [c["type"] for c in events.chunks][-3:] == ["text-end", "abort", "finish"]
    assert await active_id(http, chat) is None
    (seen,) = [s for s in site.stops if s.chat_id == chat]
    assert (seen.stream_id, seen.stopped, seen.assistant_message) == (run_id, True, partial)
    # What was written is kept, with the same ending.
    _, replay = await read_all(http, "GET", f"/api/chat/{run_id}/stream?startIndex=0")
    assert replay.chunks == events.chunks
    # Nothing left: an empty body is {}; a stop by the run id finds it ended too.
    for some_id in (chat, run_id):
        again = await http.post(f"/api/chat/{some_id}/stop")
        assert again.json() == {"success": True, "stopped": False}


async def test_stop_by_run_id_leaves_a_newer_answer_active(
    site: Site, http: httpx.AsyncClient
) -> None:
    chat = new_chat()
    old_gate, new_gate = f"{chat}-old", f"{chat}-new"
    async with http.stream("POST", "/api/chat", json=body_for(chat, gate=old_gate)) as old:
        await site.wait(f"{old_gate}:paused")
        old_id = old.headers["x-workflow-run-id"]
        async with http.stream("POST", "/api/chat", json=body_for(chat, gate=new_gate)) as new:
            await site.wait(f"{new_gate}:paused")
            new_id = new.headers["x-workflow-run-id"]
            stop = await http.post(f"/api/chat/{old_id}/stop")
            assert stop.json() == {"success": True, "stopped": True}
            old_events = await Events(old).rest()
            assert await active_id(http, chat) == new_id  # not cleared: not the stopped one
            site.go(new_gate)
            await Events(new).rest()
    assert old_events[-2:] == ['{"type":"finish"}', "[DONE]"]
    (seen,) = [s for s in site.stops if s.stream_id == old_id]
    assert (seen.chat_id, seen.assistant_message) == (chat, None)


async def test_stop_and_replay_refusals(http: httpx.AsyncClient) -> None:
    chat = new_chat()
    assert (await http.get(f"/api/chat/{chat}/stop")).status_code == 405
    for bad in (b"{no", b"[]", b'{"activeStreamId": 3}', b'{"assistantMessage": "x"}'):
        assert (await http.post(f"/api/chat/{chat}/stop", content=bad)).status_code == 400
    assert (await http.post("/api/chat/forbidden-x/stop")).status_code == 403
    big = b'{"x": "' + b"y" * 20_000 + b'"}'
    assert (await http.post(f"/api/chat/{chat}/stop", content=big)).status_code == 413
    for start in ("1.5", "", "--1", "1e3"):
        got = await http.get(f"/api/chat/{chat}/stream", params={"startIndex": start})
        assert got.status_code == 400, start
    assert (await http.get(f"/api/chat/{chat}/stream?startIndex=0")).status_code == 404
    assert (await http.get("/api/chat/forbidden-x/stream?startIndex=0")).status_code == 403
    # The pointer register is a stream of the backend, but no chat answer: not served.
    pointer = f"ai-sdk:chat:{chat}"
    assert (await http.get(f"/api/chat/{pointer}/stream?startIndex=0")).status_code == 404


def test_bad_arguments_are_invalid_argument() -> None:
    ctx = create_resumable_stream_context(MemoryBackend())
    for kwargs in ({"pointer_ttl": 0}, {"pointer_ttl": -1.0}, {"max_body_bytes": 0}):
        with pytest.raises(InvalidArgument):
            ChatStreams(ctx, script_handler(Probe()), **kwargs)


async def test_run_routes_hide_an_answer_from_everyone_but_its_owner() -> None:
    """With ``owner=``, another user's replay by run id or chat id reads as no answer
    (``404``, as an unknown id), and their stop stops nothing."""
    probe = Probe()

    async def make() -> tuple[Any, Any]:
        ctx = create_resumable_stream_context(MemoryBackend())

        def user(scope: Any) -> str | None:
            value = dict(scope["headers"]).get(b"x-user")
            return value.decode() if value else None

        chats = ChatStreams(ctx, script_handler(probe), owner=user)
        app = Starlette(
            routes=[
                Route("/api/chat", chats.chat_endpoint, methods=["POST"]),
                Route("/api/chat/{chat_id}/stream", chats.stream_endpoint, methods=["GET"]),
                Route("/api/chat/{chat_id}/stop", chats.stop_endpoint, methods=["POST"]),
            ]
        )  # fmt: skip
        return app, ctx.aclose

    alice, bob = {"x-user": "alice"}, {"x-user": "bob"}
    chat = new_chat()
    with serving("uvicorn", make, probe) as server:
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=STEP, trust_env=False) as http,
            http.stream("POST", "/api/chat", json=body_for(chat), headers=alice) as made,
        ):
            run_id = made.headers["x-workflow-run-id"]
            events = Events(made)
            await events.until("Hello")
            unknown = await http.get("/api/chat/nothing/stream?startIndex=0", headers=bob)
            assert unknown.status_code == 404
            for who in (bob, {}):
                for some_id in (run_id, chat):
                    theirs = await http.get(
                        f"/api/chat/{some_id}/stream?startIndex=0", headers=who
                    )
                    assert (theirs.status_code, theirs.text) == (404, unknown.text)
                    stop = await http.post(f"/api/chat/{some_id}/stop", headers=who)
                    assert stop.json() == {"success": True, "stopped": False}
            mine = await http.post(f"/api/chat/{run_id}/stop", headers=alice)
            assert mine.json() == {"success": True, "stopped": True}
            await events.rest()
    assert [c["type"] for c in events.chunks][-3:] == ["text-end", "abort", "finish"]
