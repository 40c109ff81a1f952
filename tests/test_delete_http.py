"""`ChatStreams` deleting a running chat over real HTTP (uvicorn on loopback).

``DELETE {api}/{chatId}/stream?delete=1`` with ``allow_delete=True`` on a chat whose
answer is still being produced: ``204``; every live reader's response (the ``POST``
that made the answer, and a ``GET`` resume) ends with an ``error`` chunk and ``[DONE]``;
the app's generator is closed; a later resume answers ``204`` and the context finds
nothing under the stream's id; on Redis every key left behind expires.

On Redis the delete also comes from a second server (another context, as another
process would have), so the producer learns of it only from storage.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from resumable_stream import (
    MemoryBackend,
    ResumableStreamContext,
    StreamNotFound,
    create_resumable_stream_context,
)

from .conftest import FAST
from .http_servers import LiveServer, Probe, serving
from .servers import RedisServer

STEP = 10.0  # bound on any single wait
# A failed answer ends with an error chunk, then a finish with reason "error" (the
# workflow transport stops reconnecting only at a finish), then [DONE].
ERROR_END = (
    b'data: {"type":"error","errorText":"An error occurred."}\n\n'
    b'data: {"type":"finish","finishReason":"error"}\n\n'
)
DONE = b"data: [DONE]\n\n"
REQUEST = {"id": "c1", "messages": [{"id": "u1", "role": "user", "parts": []}]}
Cleanup = Callable[[], Awaitable[None]]


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


class _App:
    """One server's app: a context (memory, or a Redis client of its own) and the
    chat routes, made on the server's loop."""

    def __init__(self, probe: Probe, backend: Any) -> None:
        self.probe = probe
        self.backend = backend  # a MemoryBackend to share, or a Redis URL
        self.ctx: ResumableStreamContext | None = None

    async def make(self, key_prefix: str) -> tuple[Any, Cleanup]:
        from starlette.applications import Starlette
        from starlette.routing import Route

        from resumable_stream.ai_sdk import ChatRequest, ChatStreams

        client = None
        if isinstance(self.backend, str):
            client = aioredis.Redis.from_url(self.backend)
            ctx = create_resumable_stream_context(client, key_prefix=key_prefix, options=FAST)
        else:
            ctx = create_resumable_stream_context(self.backend, options=FAST)
        self.ctx = ctx
        probe = self.probe

        async def answer(request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
            try:
                yield {"type": "text-start", "id": "t"}
                yield {"type": "text-delta", "id": "t", "delta": "hi"}
                await probe.event("go").wait()  # set only at the end of the test
                yield {"type": "text-delta", "id": "t", "delta": " never stored"}
                yield {"type": "text-end", "id": "t"}
            finally:
                probe.event("closed").set()

        chats = ChatStreams(ctx, answer, allow_delete=True)
        app = Starlette(
            routes=[
                Route("/api/chat", chats.chat_endpoint, methods=["POST"]),
                Route("/api/chat/{chat_id}/stream", chats.stream_endpoint,
                      methods=["GET", "DELETE"]),
            ]
        )  # fmt: skip

        async def cleanup() -> None:
            await ctx.aclose()
            if client is not None:
                await client.aclose()

        return app, cleanup


async def _keys_without_ttl(url: str, prefix: str) -> tuple[list[bytes], list[bytes]]:
    client = aioredis.Redis.from_url(url)
    try:
        keys = sorted([k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)])
        forever = [k for k in keys if await client.pttl(k) == -1]
    finally:
        await client.aclose()
    return keys, forever


@pytest.mark.parametrize(
    ("kind", "deleter"),
    [("memory", "same"), ("redis", "same"), ("redis", "other")],
    ids=["memory", "redis", "redis-other-server"],
)
async def test_running_chat_deleted_over_http(
    request: pytest.FixtureRequest, key_prefix: str, kind: str, deleter: str
) -> None:
    url: str | None = None
    if kind == "redis":
        server_fixture: RedisServer = request.getfixturevalue("redis_server")
        url = server_fixture.url
    shared: Any = url if url is not None else MemoryBackend()
    probe = Probe()  # the producing server's: its "closed" is the generator's end
    producing = _App(probe, shared)
    with ExitStack() as servers:
        first = servers.enter_context(serving("uvicorn", lambda: producing.make(key_prefix), probe))
        second: LiveServer = first
        other_app = producing
        if deleter == "other":
            other_app = _App(Probe(), shared)
            second = servers.enter_context(
                serving("uvicorn", lambda: other_app.make(key_prefix), other_app.probe)
            )
        async with (
            httpx.AsyncClient(base_url=first.url, timeout=STEP) as made_here,
            httpx.AsyncClient(base_url=second.url, timeout=STEP) as there,
        ):
            async with made_here.stream("POST", "/api/chat", json=REQUEST) as made:
                assert made.status_code == 200
                stream_id = made.headers["x-stream-id"]
                original = _Body(made)
                await original.until(b'"delta":"hi"')
                async with there.stream("GET", "/api/chat/c1/stream") as resumed:
                    assert resumed.status_code == 200
                    follower = _Body(resumed)
                    await follower.until(b'"delta":"hi"')

                    gone = await there.delete("/api/chat/c1/stream", params={"delete": "1"})
                    assert (gone.status_code, gone.content) == (204, b"")

                    # Every live reader ends with the documented error, then [DONE].
                    for body in (await follower.rest(), await original.rest()):
                        assert body.endswith(ERROR_END + DONE), body[-300:]
                        assert b"never stored" not in body
                        assert b'"type":"abort"' not in body  # a delete, not a stop
                        assert body.count(DONE) == 1
            # The app's generator was closed (the producer stopped pulling it).
            await asyncio.wait_for(probe.event("closed").wait(), STEP)

            # Nothing to resume, from either server, and nothing left to delete.
            for http in (made_here, there):
                again = await http.get("/api/chat/c1/stream")
                assert (again.status_code, again.content) == (204, b"")
                deleted_again = await http.delete("/api/chat/c1/stream", params={"delete": "1"})
                assert deleted_again.status_code == 204
                stopped = await http.delete("/api/chat/c1/stream")
                assert stopped.status_code == 204  # no active answer to stop

            async def nothing_under_the_id(ctx: ResumableStreamContext) -> None:
                with pytest.raises(StreamNotFound):
                    await ctx.resume_existing_stream(stream_id)
                assert await ctx.get_status(stream_id) is None
                assert ctx.running_streams == 0

            for server, app in ((first, producing), (second, other_app)):
                assert app.ctx is not None
                ctx = app.ctx
                await server.run(lambda ctx=ctx: nothing_under_the_id(ctx))  # type: ignore[misc]

    if url is not None:
        keys, forever = await _keys_without_ttl(url, key_prefix)
        assert keys, "the tombstone and the chat's pointer are expected"
        assert forever == [], keys
