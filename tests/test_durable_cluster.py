"""The official Durable Streams conformance suite on Redis Cluster (``-m slow``), and a
short check in the default run that a stream's keys stay in one slot and a long-poll is
woken across the cluster's pub/sub.

The app (``DurableStreamsApp`` on ``RedisStorage`` over a ``RedisCluster`` client) runs
under uvicorn on loopback in this process (`tests/http_servers.py`), on the private
3-master cluster of the session.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio.cluster import RedisCluster

from resumable_stream.durable import DurableStreamsApp, RedisStorage

from .cluster_servers import PrivateCluster
from .http_servers import LiveServer, serving
from .test_durable_conformance import LONG_POLL_SECONDS, REQUIRE, run_suite, suite_missing

pytestmark = pytest.mark.timeout(400)


@pytest.fixture
def cluster_app(redis_cluster: PrivateCluster) -> Iterator[LiveServer]:
    async def make() -> tuple[DurableStreamsApp, object]:
        client = RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0])
        storage = RedisStorage(client, key_prefix=f"ds-cluster-{uuid.uuid4().hex[:8]}")
        app = DurableStreamsApp(
            storage, path_prefix="/v1/stream/", long_poll_timeout=LONG_POLL_SECONDS
        )

        async def cleanup() -> None:
            await storage.aclose()
            await client.aclose()

        return app, cleanup

    with serving("uvicorn", make) as live:  # type: ignore[arg-type]
        yield live


async def test_cluster_append_read_and_wake(cluster_app: LiveServer) -> None:
    base = f"{cluster_app.url}/v1/stream/cluster-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(timeout=httpx.Timeout(15.0)) as client:
        created = await client.put(base, headers={"content-type": "text/plain"}, content=b"a")
        assert created.status_code == 201
        waiting = asyncio.ensure_future(
            client.get(
                base, params={"offset": created.headers["stream-next-offset"], "live": "long-poll"}
            )
        )
        appended = await client.post(base, content=b"b", headers={"content-type": "text/plain"})
        assert appended.status_code == 204
        woken = await waiting
        assert (woken.status_code, woken.text) == (200, "b")
        whole = await client.get(base, params={"offset": "-1"})
        assert whole.text == "ab"


@pytest.mark.slow
def test_conformance_cluster(cluster_app: LiveServer, tmp_path: Path) -> None:
    missing = suite_missing()
    if missing is not None:
        if REQUIRE:
            pytest.fail(f"RESUMABLE_STREAM_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    counts = run_suite(cluster_app.url, tmp_path / "report.json")
    print(f"conformance on Redis Cluster: {counts}")
    assert counts["total"] >= 338, counts
    assert counts["failed"] == 0, counts
    assert counts["passed"] + counts["skipped"] == counts["total"]
