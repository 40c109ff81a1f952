"""Durable Streams on Upstash's REST API, through the loopback stand-in
(``tests/upstash_standin.py``, over the session's redis-server): a short check in the
default run (append, read, a long-poll woken through the streaming subscribe, a stream
written over REST read over TCP), and the official conformance suite under ``-m slow``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from resumable_stream.durable import DurableStreamsApp, RedisStorage, UpstashStorage

from .http_servers import LiveServer, serving
from .servers import RedisServer
from .test_durable_conformance import LONG_POLL_SECONDS, REQUIRE, run_suite, suite_missing
from .upstash_standin import UpstashStandin

pytestmark = pytest.mark.timeout(400)


@pytest.fixture
def prefix() -> str:
    return f"ds-upstash-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def upstash_app(upstash_standin: UpstashStandin, prefix: str) -> Iterator[LiveServer]:
    async def make() -> tuple[DurableStreamsApp, object]:
        storage = UpstashStorage(upstash_standin.url, upstash_standin.token, key_prefix=prefix)
        app = DurableStreamsApp(
            storage, path_prefix="/v1/stream/", long_poll_timeout=LONG_POLL_SECONDS
        )
        return app, storage.aclose

    with serving("uvicorn", make) as live:  # type: ignore[arg-type]
        yield live


async def test_upstash_append_read_wake(
    upstash_app: LiveServer, redis_server: RedisServer, prefix: str
) -> None:
    path = f"/v1/stream/upstash-{uuid.uuid4().hex[:8]}"
    base = f"{upstash_app.url}{path}"
    binary = bytes(range(256))
    async with httpx.AsyncClient(timeout=httpx.Timeout(15.0)) as client:
        created = await client.put(
            base, headers={"content-type": "application/octet-stream"}, content=binary
        )
        assert created.status_code == 201
        waiting = asyncio.ensure_future(
            client.get(
                base, params={"offset": created.headers["stream-next-offset"], "live": "long-poll"}
            )
        )
        appended = await client.post(
            base, content=b"\x00\xff", headers={"content-type": "application/octet-stream"}
        )
        assert appended.status_code == 204
        woken = await waiting
        assert (woken.status_code, woken.content) == (200, b"\x00\xff")
        whole = await client.get(base, params={"offset": "-1"})
        assert whole.content == binary + b"\x00\xff"
    # The same keys over TCP: one database, served both ways.
    client_tcp = aioredis.Redis.from_url(redis_server.url)
    tcp = RedisStorage(client_tcp, key_prefix=prefix)
    try:
        meta, items = await tcp.read(path, 0, 10)
        assert meta is not None
        assert b"".join(i.data for i in items) == binary + b"\x00\xff"
    finally:
        await tcp.aclose()
        await client_tcp.aclose()


@pytest.mark.slow
def test_conformance_upstash(upstash_app: LiveServer, tmp_path: Path) -> None:
    missing = suite_missing()
    if missing is not None:
        if REQUIRE:
            pytest.fail(f"RESUMABLE_STREAM_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    counts = run_suite(upstash_app.url, tmp_path / "report.json")
    print(f"conformance on Upstash REST (stand-in): {counts}")
    assert counts["total"] >= 338, counts
    assert counts["failed"] == 0, counts
    assert counts["passed"] + counts["skipped"] == counts["total"]
