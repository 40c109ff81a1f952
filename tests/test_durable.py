"""Choices of our Durable Streams server that the official suite leaves open, on memory
and on Redis, through real uvicorn on loopback: retention (offsets before what a stream
keeps answer 410), bad input and its statuses, the wheel's package data, and every
stored key expiring on Redis.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from importlib import resources

import httpx
import pytest
import redis.asyncio as aioredis

from resumable_stream.durable import DurableStorage, DurableStreamsApp, MemoryStorage, RedisStorage

from .http_servers import LiveServer, serving

pytestmark = pytest.mark.timeout(60)
TEXT = {"content-type": "text/plain"}
RETAINED = 10


@pytest.fixture(params=["memory", "redis"])
def app(request: pytest.FixtureRequest) -> Iterator[tuple[LiveServer, str | None, str]]:
    redis_url = request.getfixturevalue("redis_server").url if request.param == "redis" else None
    prefix = f"ds-test-{uuid.uuid4().hex[:8]}"

    async def make() -> tuple[DurableStreamsApp, object]:
        storage: DurableStorage = (
            RedisStorage.from_url(redis_url, key_prefix=prefix) if redis_url else MemoryStorage()
        )
        durable = DurableStreamsApp(
            storage, path_prefix="/v1/stream/", long_poll_timeout=2.0, max_retained=RETAINED
        )
        return durable, storage.aclose

    with serving("uvicorn", make) as live:  # type: ignore[arg-type]
        yield live, redis_url, prefix


def offset(position: int) -> str:
    return f"{0:016d}_{position:016d}"


async def test_retention_drops_old_data_and_answers_410(
    app: tuple[LiveServer, str | None, str],
) -> None:
    live, redis_url, prefix = app
    path = f"/v1/stream/retained-{uuid.uuid4().hex[:8]}"
    url = f"{live.url}{path}"
    async with httpx.AsyncClient(timeout=10.0) as client:
        assert (await client.put(url, headers=TEXT)).status_code == 201
        for part in (b"aaaaa", b"bbbbb", b"ccccc", b"ddddd"):  # 20 bytes; 10 are kept
            assert (await client.post(url, content=part, headers=TEXT)).status_code == 204
        for lost in ("-1", offset(0), offset(5), offset(9)):
            reply = await client.get(url, params={"offset": lost})
            assert reply.status_code == 410, lost
        for lost in (offset(5),):
            reply = await client.get(url, params={"offset": lost, "live": "long-poll"})
            assert reply.status_code == 410
        kept = await client.get(url, params={"offset": offset(10)})
        assert (kept.status_code, kept.content) == (200, b"cccccddddd")
        assert kept.headers["stream-next-offset"] == offset(20)
        fork = await client.put(
            f"{url}-fork", headers={"stream-forked-from": path, "stream-fork-offset": offset(5)}
        )
        assert fork.status_code == 410
    if redis_url is not None:
        client_redis = aioredis.Redis.from_url(redis_url)
        try:
            items = f"{prefix}:ds:{{{path}}}:i"
            assert await client_redis.zcard(items) == 2  # "ccccc" and "ddddd"
        finally:
            await client_redis.aclose()


@pytest.mark.parametrize(
    ("method", "headers", "params", "status"),
    [
        ("PUT", {"stream-ttl": "1.5"}, {}, 400),
        ("PUT", {"stream-ttl": "10", "stream-expires-at": "2030-01-01T00:00:00Z"}, {}, 400),
        ("PUT", {"stream-expires-at": "tomorrow"}, {}, 400),
        ("PUT", {"stream-fork-offset": offset(0)}, {}, 400),
        ("POST", {"producer-id": "p", "producer-epoch": "0"}, {}, 400),
        ("POST", {"producer-id": "p", "producer-epoch": "-1", "producer-seq": "0"}, {}, 400),
        ("GET", {}, {"offset": "abc"}, 400),
        ("GET", {}, {"offset": offset(99)}, 400),
        ("GET", {}, {"offset": "-1", "live": "forever"}, 400),
        ("GET", {}, {"live": "sse"}, 400),
        ("PATCH", {}, {}, 405),
    ],
)
async def test_bad_input_answers_its_status(
    app: tuple[LiveServer, str | None, str],
    method: str,
    headers: dict[str, str],
    params: dict[str, str],
    status: int,
) -> None:
    live, _, _ = app
    url = f"{live.url}/v1/stream/bad-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(timeout=10.0) as client:
        if method != "PUT":
            assert (await client.put(url, headers=TEXT)).status_code == 201
        reply = await client.request(
            method, url, headers={**TEXT, **headers}, params=params, content=b"x"
        )
        assert reply.status_code == status, reply.text
        assert reply.headers["x-content-type-options"] == "nosniff"


async def test_outside_the_prefix_is_not_a_stream(app: tuple[LiveServer, str | None, str]) -> None:
    live, _, _ = app
    async with httpx.AsyncClient(timeout=10.0) as client:
        assert (await client.put(f"{live.url}/elsewhere", headers=TEXT)).status_code == 404
        assert (await client.put(f"{live.url}/v1/stream/", headers=TEXT)).status_code == 404


def test_scripts_ship_with_the_package() -> None:
    lua = resources.files("resumable_stream.durable") / "lua"
    names = {p.name for p in lua.iterdir()}
    assert {"commit.lua", "read.lua", "touch.lua"} <= names


def test_max_retained_must_keep_something() -> None:
    from resumable_stream import InvalidArgument

    with pytest.raises(InvalidArgument):
        DurableStreamsApp(MemoryStorage(), max_retained=0)


async def test_a_body_cut_short_is_not_appended(app: tuple[LiveServer, str | None, str]) -> None:
    """A client that goes away mid-body leaves the stream as it was (no truncated append)."""
    live, _, _ = app
    path = f"/v1/stream/cut-body-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(timeout=10.0) as client:
        assert (await client.put(f"{live.url}{path}", headers=TEXT)).status_code == 201
        _, writer = await asyncio.open_connection("127.0.0.1", live.port)
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
            "Content-Length: 100\r\n\r\nonly ten b".encode()
        )
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        # A later append on a new connection is stored at position 0: nothing came before.
        done = await client.post(f"{live.url}{path}", content=b"whole", headers=TEXT)
        assert done.status_code == 204
        assert done.headers["stream-next-offset"] == offset(5)
        reply = await client.get(f"{live.url}{path}", params={"offset": "-1"})
        assert reply.content == b"whole"


async def test_sse_keeps_alive_then_ends_after_its_duration() -> None:
    """An idle SSE connection gets comment lines (proxies see bytes), and the server ends
    it after ``sse_duration``; the client reconnects from its last offset."""

    async def make() -> tuple[DurableStreamsApp, object]:
        storage = MemoryStorage()
        durable = DurableStreamsApp(
            storage, path_prefix="/v1/stream/", sse_duration=1.0, sse_keepalive=0.2
        )
        return durable, storage.aclose

    with serving("uvicorn", make) as live:  # type: ignore[arg-type]
        url = f"{live.url}/v1/stream/idle-{uuid.uuid4().hex[:8]}"
        async with httpx.AsyncClient(timeout=10.0) as client:
            assert (await client.put(url, headers=TEXT)).status_code == 201
            reply = await client.get(url, params={"offset": "-1", "live": "sse"})
    assert reply.status_code == 200
    events = reply.text.split("\n\n")
    assert events[0].startswith("event: control")
    assert ": keep-alive" in events[1:]
    assert "streamClosed" not in reply.text  # ended for collapsing, not closed
