"""The Python client against each example app, through a proxy that cuts connections."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from resumable_stream.client import ResumableStreamClient, StreamMessage

from .tcp_proxy import CuttingProxy
from .test_example_apps import chat_body, serve

pytestmark = pytest.mark.timeout(120)

APPS = ["examples.chat_app:app", "examples.starlette_app:app", "examples.litestar_app:app"]


@pytest.fixture(scope="module", params=APPS)
def app_url(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from serve(request.param)


@pytest.fixture(scope="module", params=APPS)
def hypercorn_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The same apps under hypercorn: all three frameworks under both servers."""
    yield from serve(request.param, "hypercorn")


async def run(base_url: str, *, path: str) -> list[StreamMessage]:
    client = ResumableStreamClient(base_url=base_url, retry_delay=0.005, max_retries=10)
    async with client.stream("POST", path, json=chat_body("hello there")) as messages:
        got = [m async for m in messages]
    assert client.completed
    return got


@pytest.mark.parametrize("seed", range(3))
async def test_client_gets_the_answer_exactly_once(app_url: str, seed: int) -> None:
    reference = await asyncio.wait_for(run(app_url, path="/api/chat/agent/ref"), 60)
    assert reference
    rng = random.Random(seed)
    port = urlsplit(app_url).port
    assert port is not None
    async with CuttingProxy(port, lambda: rng.randrange(0, 400)) as proxy:
        got = await asyncio.wait_for(run(proxy.url, path=f"/api/chat/agent/t{seed}"), 60)
        assert proxy.cuts >= 1
    if reference[0].event is None:  # text bodies: compare the text, not its pieces
        assert "".join(m.data for m in got) == "".join(m.data for m in reference)
    else:
        assert [(m.event, m.data) for m in got] == [(m.event, m.data) for m in reference]
        assert [m.id for m in got] == [str(i) for i in range(len(got))]


async def test_client_under_hypercorn(hypercorn_url: str) -> None:
    await test_client_gets_the_answer_exactly_once(hypercorn_url, 7)
