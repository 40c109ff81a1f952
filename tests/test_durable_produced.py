"""Streams made by ``ctx.resumable_stream(...)`` producers, read through the Durable Streams
app: offsets are chunk positions, the live tail follows the running producer, the stream
reads as closed once done, and a failed stream is closed with ``Stream-Error``.

The app runs under uvicorn on loopback (`tests/http_servers.py`), with the context on the
server's loop; the producer waits on probe events, so the test decides when each chunk
exists. On memory and on the private Redis.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import redis.asyncio as aioredis

from resumable_stream import (
    MemoryBackend,
    ResumableStreamContext,
    create_resumable_stream_context,
)
from resumable_stream.backends import Backend
from resumable_stream.backends.redis import RedisBackend
from resumable_stream.durable import DurableStreamsApp, MemoryStorage

from .conftest import FAST
from .http_servers import LiveServer, Probe, serving

pytestmark = pytest.mark.timeout(60)
PREFIX = "/v1/stream/resumable/"
TIMEOUT = httpx.Timeout(15.0)


@pytest.fixture(params=["memory", "redis"])
def server(request: pytest.FixtureRequest) -> Iterator[LiveServer]:
    redis_url = request.getfixturevalue("redis_server").url if request.param == "redis" else None
    key_prefix = f"rs-durable-{uuid.uuid4().hex[:8]}"
    probe = Probe()

    async def make() -> tuple[DurableStreamsApp, object]:
        client = aioredis.Redis.from_url(redis_url) if redis_url else None
        backend: Backend = (
            RedisBackend(client, key_prefix=key_prefix) if client is not None else MemoryBackend()
        )
        ctx = create_resumable_stream_context(backend, options=FAST)
        probe.notes["ctx"] = ctx
        app = DurableStreamsApp(
            MemoryStorage(),
            path_prefix="/v1/stream/",
            resumable_backend=backend,
            long_poll_timeout=10.0,
        )

        async def cleanup() -> None:
            await ctx.aclose()
            await backend.aclose()
            if client is not None:
                await client.aclose()

        return app, cleanup

    with serving("uvicorn", make, probe) as live:  # type: ignore[arg-type]
        yield live


async def gated(probe: Probe, key: str, parts: list[str], fail: bool) -> AsyncIterator[str]:
    """Yield each part once the test sets ``key:go<i>``; then raise if ``fail``."""
    for i, part in enumerate(parts):
        await probe.event(f"{key}:go{i}").wait()
        yield part
    if fail:
        raise RuntimeError("the model broke")


async def start(server: LiveServer, parts: list[str], *, fail: bool = False) -> str:
    """Start a producer on the server's loop; its id (the original reader is closed)."""
    stream_id = f"s-{uuid.uuid4().hex[:8]}"
    ctx: ResumableStreamContext = server.probe.notes["ctx"]

    async def begin() -> None:
        reader = await ctx.resumable_stream(
            stream_id, lambda: gated(server.probe, stream_id, parts, fail)
        )
        assert reader is not None
        await reader.aclose()  # the producer runs on in the context's task

    await server.run(begin)
    return stream_id


def sse_events(text: str) -> list[tuple[str, str]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        kind, data = "", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if kind:
            events.append((kind, "\n".join(data)))
    return events


async def test_offsets_live_tail_and_close(server: LiveServer) -> None:
    """Offsets are positions in the stored stream; a long-poll at the tail waits for the
    producer's next chunk; once done the stream reads as closed, with no error."""
    stream_id = await start(server, ["hello ", "world"])
    url = f"{server.url}{PREFIX}{stream_id}"
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        head = await client.head(url)
        assert head.status_code == 200
        assert head.headers["stream-next-offset"] == "0000000000000000_0000000000000000"
        assert "stream-closed" not in head.headers
        assert head.headers["content-type"] == "text/plain; charset=utf-8"

        server.probe.event(f"{stream_id}:go0").set()
        first = await client.get(url, params={"offset": "-1", "live": "long-poll"})
        assert first.status_code == 200
        assert first.text == "hello "
        assert "stream-closed" not in first.headers
        offset = first.headers["stream-next-offset"]
        assert offset == "0000000000000000_0000000000000001"

        waiting = asyncio.ensure_future(
            client.get(url, params={"offset": offset, "live": "long-poll"})
        )
        # The chunk exists only once this is set: whenever the long-poll arrived, it
        # can only answer "world" by following the producer.
        server.probe.event(f"{stream_id}:go1").set()
        second = await waiting
        assert second.status_code == 200
        assert second.text == "world"
        offset = second.headers["stream-next-offset"]

        end = await client.get(url, params={"offset": offset, "live": "long-poll"})
        assert end.status_code == 204
        assert end.headers["stream-closed"] == "true"
        assert "stream-error" not in end.headers

        whole = await client.get(url, params={"offset": "-1"})
        assert (whole.status_code, whole.text) == (200, "hello world")
        assert whole.headers["stream-closed"] == "true"

        sse = await client.get(url, params={"offset": "-1", "live": "sse"})
        events = sse_events(sse.text)
        assert "".join(d for k, d in events if k == "data") == "hello world"
        final = json.loads([d for k, d in events if k == "control"][-1])
        assert final["streamClosed"] is True
        assert "streamError" not in final

        # A resume from the middle: the second chunk only.
        middle = await client.get(url, params={"offset": "0000000000000000_0000000000000001"})
        assert middle.text == "world"


async def test_failed_stream_is_closed_with_its_error(server: LiveServer) -> None:
    """A producer whose source raised: its chunks, then a closed stream that says why."""
    stream_id = await start(server, ["partial"], fail=True)
    server.probe.event(f"{stream_id}:go0").set()
    url = f"{server.url}{PREFIX}{stream_id}"
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        offset = "-1"
        body = ""
        for _ in range(10):  # chunk, then the end: two answers, a few more at most
            reply = await client.get(url, params={"offset": offset, "live": "long-poll"})
            if reply.status_code == 200:
                body += reply.text
                offset = reply.headers["stream-next-offset"]
            if reply.headers.get("stream-closed") == "true":
                break
        assert body == "partial"
        assert reply.headers["stream-closed"] == "true"
        assert "the model broke" in reply.headers["stream-error"]

        head = await client.head(url)
        assert head.headers["stream-closed"] == "true"
        assert "the model broke" in head.headers["stream-error"]

        sse = await client.get(url, params={"offset": "-1", "live": "sse"})
        events = sse_events(sse.text)
        assert "".join(d for k, d in events if k == "data") == "partial"
        final = json.loads([d for k, d in events if k == "control"][-1])
        assert final["streamClosed"] is True
        assert "the model broke" in final["streamError"]


async def test_read_only_and_unknown(server: LiveServer) -> None:
    """Producers write these streams: the protocol's writes answer 405; no stream, 404."""
    stream_id = await start(server, ["x"])
    url = f"{server.url}{PREFIX}{stream_id}"
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        for method in ("PUT", "POST", "DELETE"):
            reply = await client.request(method, url, content=b"y")
            assert reply.status_code == 405, method
        assert (
            await client.get(f"{server.url}{PREFIX}nope", params={"offset": "-1"})
        ).status_code == 404
        assert (await client.head(f"{server.url}{PREFIX}nope")).status_code == 404
    server.probe.event(f"{stream_id}:go0").set()
