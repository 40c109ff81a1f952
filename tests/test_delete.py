"""`ctx.delete_stream`: a running or finished stream removed from every backend.

Two contexts on one backend stand for two processes: the producer runs in one and the
other deletes, so the producer learns of it only from storage (its next write or
renewal is refused by the tombstone).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from resumable_stream import (
    MemoryBackend,
    ResumableStreamContext,
    StreamDeleted,
    StreamNotFound,
    StreamOptions,
    create_resumable_stream_context,
)
from resumable_stream.asgi import ResumeEndpoint
from resumable_stream.backends import Backend
from resumable_stream.backends.cluster import RedisClusterBackend
from resumable_stream.backends.redis import RedisBackend

from .conftest import FAST
from .helpers import ControlledSource
from .http_servers import serving
from .servers import RedisServer

STEP = 10.0  # bound on any single wait
TOMBSTONE = 4 * FAST.lease + FAST.retry_window  # what delete_stream leaves, in seconds


async def _until(check: Callable[[], bool], what: str) -> None:
    """Poll a condition a user can observe (bounded in count and time)."""
    for _ in range(int(STEP / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)  # polling an observable, not standing in for an event
    raise AssertionError(f"not within {STEP} s: {what}")


async def _first(stream: Any) -> str:
    return str(await asyncio.wait_for(stream.__anext__(), STEP))


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass


async def _raises_deleted(stream: Any) -> None:
    with pytest.raises(StreamDeleted):
        await asyncio.wait_for(_drain(stream), STEP)


@pytest.mark.parametrize("then", ["idle", "write"])
async def test_running_stream_deleted_from_another_context(backend: Backend, then: str) -> None:
    producer_ctx = create_resumable_stream_context(backend, options=FAST)
    other = create_resumable_stream_context(backend, options=FAST)
    source = ControlledSource()
    try:
        original = await producer_ctx.resumable_stream("chat", source)
        assert original is not None
        source.write("a")
        assert await _first(original) == "a"
        follower = await other.resume_existing_stream("chat")
        assert follower is not None
        assert await _first(follower) == "a"

        assert await other.delete_stream("chat") is True
        if then == "write":
            source.write("b")  # refused by the tombstone: the producer stops there
        await _raises_deleted(follower)
        await _raises_deleted(original)
        await _until(lambda: producer_ctx.running_streams == 0, "the producer stops")

        # Not resurrected (no "storage lost" marker, no renewal), for either context.
        assert await backend.snapshot("chat", 0, 0) is None
        with pytest.raises(StreamNotFound):
            await other.resume_existing_stream("chat")
        assert await producer_ctx.get_status("chat") is None
        # While the tombstone lasts the id reads as finished to a claim: not made again.
        assert await other.resumable_stream("chat", ControlledSource()) is None
        assert await backend.snapshot("chat", 0, 0) is None
        assert await other.delete_stream("chat") is False
    finally:
        await producer_ctx.aclose()
        await other.aclose()


async def test_local_producer_deleted(ctx: ResumableStreamContext) -> None:
    source = ControlledSource()
    original = await ctx.resumable_stream("local", source)
    assert original is not None
    source.write("a")
    assert await _first(original) == "a"
    follower = await ctx.resume_existing_stream("local")
    assert follower is not None
    assert await ctx.delete_stream("local") is True
    await _raises_deleted(original)
    await _raises_deleted(follower)
    await _until(lambda: ctx.running_streams == 0, "the producer stops")
    assert await ctx.backend.snapshot("local", 0, 0) is None


async def test_finished_stream_deleted(ctx: ResumableStreamContext) -> None:
    stream = await ctx.resumable_stream("done", lambda: iter(["x", "y"]))
    assert stream is not None
    assert [c async for c in stream] == ["x", "y"]
    assert await ctx.delete_stream("done") is True
    with pytest.raises(StreamNotFound):
        await ctx.resume_existing_stream("done")
    with pytest.raises(StreamNotFound):
        await ctx.resume_existing_stream("done", after=0)
    assert await ctx.has_existing_stream("done") is None
    assert await ctx.delete_stream("done") is False
    assert await ctx.delete_stream("never-made") is False


async def test_tombstone_expires_and_the_id_is_free() -> None:
    options = StreamOptions(lease=0.05, poll_interval=0.05, retry_window=0.0)
    async with create_resumable_stream_context(MemoryBackend(), options=options) as ctx:
        stream = await ctx.resumable_stream("again", lambda: iter(["1"]))
        assert stream is not None
        assert [c async for c in stream] == ["1"]
        assert await ctx.delete_stream("again") is True
        assert await ctx.resumable_stream("again", lambda: iter(["2"])) is None
        await asyncio.sleep(4 * 0.05 + 0.05)  # the tombstone's own expiry, in real time
        fresh = await ctx.resumable_stream("again", lambda: iter(["2"]))
        assert fresh is not None
        assert [c async for c in fresh] == ["2"]


class _NoDelete:
    """A backend without `Deletes` (the contract's methods only, delegated)."""

    def __init__(self, inner: MemoryBackend) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name in ("delete", "deleted"):
            raise AttributeError(name)
        return getattr(self._inner, name)


async def test_backend_without_delete_is_refused() -> None:
    backend: Any = _NoDelete(MemoryBackend())
    ctx = ResumableStreamContext(backend, options=FAST)
    with pytest.raises(TypeError, match="cannot delete"):
        await ctx.delete_stream("x")


# -- what is left in Redis ------------------------------------------------------------------


async def _keys_left(
    make: Callable[[], Awaitable[tuple[Backend, Callable[[str], Awaitable[list[bytes]]], Any]]],
) -> None:
    backend, scan, raw = await make()
    ctx = create_resumable_stream_context(backend, options=FAST)
    try:
        source = ControlledSource()
        stream = await ctx.resumable_stream("keys", source)
        assert stream is not None
        source.write("a")
        assert await _first(stream) == "a"
        prefix = backend.key_prefix  # type: ignore[attr-defined]
        await _until_async(lambda: scan(prefix), lambda keys: len(keys) >= 2)
        assert await ctx.delete_stream("keys") is True
        await _raises_deleted(stream)
        keys = await scan(prefix)
        assert [k.decode() for k in keys] == [f"{prefix}:{{keys}}:meta"]  # the tombstone only
        assert await raw.hgetall(keys[0]) == {b"status": b"deleted"}
        pttl = await raw.pttl(keys[0])
        assert 0 < pttl <= TOMBSTONE * 1000
    finally:
        await ctx.aclose()
        await backend.aclose()


async def _until_async(
    read: Callable[[], Awaitable[list[bytes]]], check: Callable[[list[bytes]], bool]
) -> None:
    for _ in range(int(STEP / 0.01)):
        if check(await read()):
            return
        await asyncio.sleep(0.01)  # waiting for the write-behind, observed in Redis
    raise AssertionError("keys never appeared")


async def test_keys_left_on_redis(redis_client: aioredis.Redis, key_prefix: str) -> None:
    async def make() -> tuple[Backend, Callable[[str], Awaitable[list[bytes]]], Any]:
        async def scan(prefix: str) -> list[bytes]:
            return sorted([k async for k in redis_client.scan_iter(match=f"{prefix}:*")])

        return RedisBackend(redis_client, key_prefix=key_prefix), scan, redis_client

    await _keys_left(make)


async def test_keys_left_on_upstash(
    upstash_standin: Any, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    from resumable_stream.backends.upstash import UpstashBackend

    async def make() -> tuple[Backend, Callable[[str], Awaitable[list[bytes]]], Any]:
        async def scan(prefix: str) -> list[bytes]:
            return sorted([k async for k in redis_client.scan_iter(match=f"{prefix}:*")])

        backend = UpstashBackend(upstash_standin.url, upstash_standin.token, key_prefix=key_prefix)
        return backend, scan, redis_client

    await _keys_left(make)


async def test_keys_left_on_cluster(cluster_client: RedisCluster, key_prefix: str) -> None:
    async def make() -> tuple[Backend, Callable[[str], Awaitable[list[bytes]]], Any]:
        async def scan(prefix: str) -> list[bytes]:
            keys: list[bytes] = []
            for node in cluster_client.get_primaries():
                node_client = aioredis.Redis(host=node.host, port=node.port)
                try:
                    keys += [k async for k in node_client.scan_iter(match=f"{prefix}:*")]
                finally:
                    await node_client.aclose()
            return sorted(keys)

        return RedisClusterBackend(cluster_client, key_prefix=key_prefix), scan, cluster_client

    await _keys_left(make)


# -- over HTTP --------------------------------------------------------------------------------


@pytest.mark.parametrize("allow", [True, False])
async def test_delete_over_http(redis_server: RedisServer, key_prefix: str, allow: bool) -> None:
    holder: dict[str, ResumableStreamContext] = {}

    async def make() -> tuple[Any, Callable[[], Awaitable[None]]]:
        client = aioredis.Redis.from_url(redis_server.url)
        ctx = create_resumable_stream_context(client, key_prefix=key_prefix, options=FAST)
        holder["ctx"] = ctx
        endpoint = ResumeEndpoint(ctx, allow_delete=allow)

        async def cleanup() -> None:
            await ctx.aclose()
            await client.aclose()

        return endpoint, cleanup

    with serving("uvicorn", make) as server:

        async def finished() -> None:
            stream = await holder["ctx"].resumable_stream("web", lambda: iter(["x"]))
            assert stream is not None
            assert [c async for c in stream] == ["x"]

        await server.run(finished)
        async with httpx.AsyncClient(base_url=server.url, timeout=STEP) as http:
            answer = await http.delete("/resume/web", params={"delete": "1"})
            if allow:
                assert answer.status_code == 204
                assert (await http.get("/resume/web")).status_code == 404
                again = await http.delete("/resume/web", params={"delete": "1"})
                assert again.status_code == 404
            else:
                assert answer.status_code == 405
                assert "DELETE" in answer.headers["allow"]
                # Nothing changed (a finished stream, not an unknown one: 410, not 404);
                # a plain DELETE still means stop (410: already ended).
                kept = await http.get("/resume/web")
                assert (kept.status_code, kept.headers["x-stream-status"]) == (410, "done")
                assert (await http.delete("/resume/web")).status_code == 410


async def test_chat_streams_delete(key_prefix: str) -> None:
    from resumable_stream.ai_sdk import ChatStreams

    gate = asyncio.Event()

    async def answer(request: Any) -> AsyncIterator[dict[str, Any]]:
        yield {"type": "text-start", "id": "t"}
        yield {"type": "text-delta", "id": "t", "delta": "hi"}
        await gate.wait()

    async with create_resumable_stream_context(MemoryBackend(), options=FAST) as ctx:
        for allow in (False, True):
            chats = ChatStreams(ctx, answer, allow_delete=allow)
            transport = httpx.ASGITransport(app=chats.stream_endpoint)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                refused = await http.delete("/api/chat/c1/stream", params={"delete": "1"})
                assert refused.status_code == (204 if allow else 405)
        assert await ChatStreams(ctx, answer).delete("nothing") is False
        gate.set()
