"""The Python client against a real uvicorn, through a proxy that cuts connections."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import httpx
import pytest

from resumable_stream import MemoryBackend, create_resumable_stream_context
from resumable_stream.client import ResumableStreamClient, ResumeFailed

from .apps.client_app import NDJSON, TEXT, WORDS, build
from .http_servers import LiveServer, serving
from .tcp_proxy import CuttingProxy, random_budgets

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    async def make() -> tuple[object, object]:
        ctx = create_resumable_stream_context(MemoryBackend())
        return build(ctx), ctx.aclose

    with serving("uvicorn", make) as live:  # type: ignore[arg-type]
        yield live


@pytest.fixture(scope="module")
def unconfigured() -> Iterator[LiveServer]:
    async def make() -> tuple[object, object]:
        async def nothing() -> None:
            return None

        return build(None), nothing

    with serving("uvicorn", make) as live:  # type: ignore[arg-type]
        yield live


def key() -> str:
    return uuid.uuid4().hex[:10]


async def collect(client: ResumableStreamClient, url: str) -> list[str]:
    async with client.stream("POST", url, json={"messages": []}) as messages:
        return [m.data async for m in messages]


SSE_DATA = [json.dumps({"w": w}, ensure_ascii=False) for w in WORDS]
SSE_BODY_SIZE = sum(len(f"data: {d}\nid: {i}\n\n".encode()) for i, d in enumerate(SSE_DATA))


@pytest.mark.parametrize("seed", range(25))
async def test_sse_exactly_once_through_random_cuts(server: LiveServer, seed: int) -> None:
    async with CuttingProxy(server.port, random_budgets(seed, SSE_BODY_SIZE)) as proxy:
        client = ResumableStreamClient(base_url=proxy.url, retry_delay=0.005, max_retries=8)
        got = await asyncio.wait_for(collect(client, f"/api/chat/sse/{key()}"), 60)
    assert got == SSE_DATA
    assert client.completed


@pytest.mark.parametrize("seed", range(15))
@pytest.mark.parametrize(("kind", "expected"), [("text", TEXT), ("ndjson", NDJSON)])
async def test_text_exactly_once_through_random_cuts(
    server: LiveServer, seed: int, kind: str, expected: str
) -> None:
    size = len(expected.encode())
    async with CuttingProxy(server.port, random_budgets(1000 + seed, size)) as proxy:
        client = ResumableStreamClient(base_url=proxy.url, retry_delay=0.005, max_retries=8)
        got = await asyncio.wait_for(collect(client, f"/api/chat/{kind}/{key()}"), 60)
    assert "".join(got) == expected


async def test_cuts_do_happen(server: LiveServer) -> None:
    """The proxy really cuts: otherwise the tests above would prove nothing."""
    async with CuttingProxy(server.port, lambda: 500) as proxy:
        client = ResumableStreamClient(base_url=proxy.url, retry_delay=0.001, max_retries=100)
        got = await asyncio.wait_for(collect(client, f"/api/chat/sse/{key()}"), 60)
        assert proxy.cuts >= SSE_BODY_SIZE // 500 - 1
    assert got == SSE_DATA


async def test_retry_budget_resets_after_progress(server: LiveServer) -> None:
    # Every connection is cut, far more often than max_retries, yet each brings news.
    async with CuttingProxy(server.port, lambda: 500) as proxy:
        client = ResumableStreamClient(base_url=proxy.url, retry_delay=0.001, max_retries=2)
        got = await asyncio.wait_for(collect(client, f"/api/chat/text/{key()}"), 60)
        assert proxy.cuts > 2
    assert "".join(got) == TEXT


async def test_gives_up_without_progress(server: LiveServer) -> None:
    budgets = iter([300] + [0] * 100)
    async with CuttingProxy(server.port, lambda: next(budgets)) as proxy:
        client = ResumableStreamClient(base_url=proxy.url, retry_delay=0.001, max_retries=3)
        with pytest.raises(ResumeFailed, match="gave up after 3 retries") as info:
            await asyncio.wait_for(collect(client, f"/api/chat/sse/{key()}"), 60)
    assert info.value.stream_id == client.stream_id is not None


async def test_callbacks_like_the_typescript_client(server: LiveServer) -> None:
    messages: list[str] = []
    done = asyncio.Event()
    errors: list[BaseException] = []
    client = ResumableStreamClient(
        on_message=messages.append, on_complete=done.set, on_error=errors.append,
        base_url=server.url, retry_delay=0.01,
    )
    await client.start(f"/api/chat/sse/{key()}", json={"messages": []})
    assert done.is_set()
    assert errors == []
    assert messages == SSE_DATA


async def test_resume_by_id_after_a_reload(server: LiveServer) -> None:
    """A new client (a reloaded page) resumes from a remembered id and position."""
    first = ResumableStreamClient(base_url=server.url)
    got: list[str] = []
    async with first.stream("POST", f"/api/chat/sse/{key()}", json={}) as messages:
        async for message in messages:
            got.append(message.data)
            if len(got) == 10:
                break
    assert first.stream_id is not None
    assert first.last_event_id == "9"
    second = ResumableStreamClient(base_url=server.url)
    async with second.follow(first.stream_id, last_event_id=first.last_event_id) as messages:
        got += [m.data async for m in messages]
    assert got == SSE_DATA
    # Everything received: a third resume from the end is a normal, empty end (410).
    third = ResumableStreamClient(base_url=server.url)
    async with third.follow(first.stream_id, last_event_id=str(len(WORDS) - 1)) as messages:
        assert [m async for m in messages] == []
    assert third.completed


async def test_unknown_stream_is_final(server: LiveServer) -> None:
    errors: list[BaseException] = []
    client = ResumableStreamClient(base_url=server.url, on_error=errors.append)
    await client.resume("no-such-stream", last_event_id="3")
    assert len(errors) == 1
    assert isinstance(errors[0], ResumeFailed)
    assert errors[0].status == 404


async def test_503_is_retried_then_reported(unconfigured: LiveServer) -> None:
    client = ResumableStreamClient(base_url=unconfigured.url, retry_delay=0.001, max_retries=2)
    errors: list[BaseException] = []
    client.on_error = errors.append
    await client.resume("some-id", last_event_id="1")
    (error,) = errors
    assert isinstance(error, ResumeFailed)
    assert error.status == 503
    assert client.attempts == 3


async def test_abort_stops_reading(server: LiveServer) -> None:
    got: list[str] = []
    client = ResumableStreamClient(base_url=server.url)

    def on_message(data: str) -> None:
        got.append(data)
        if len(got) == 5:
            client.abort()

    client.on_message = on_message
    await client.start(f"/api/chat/sse/{key()}", json={})
    assert got == SSE_DATA[:5]


def test_command_line(server: LiveServer) -> None:
    url = f"{server.url}/api/chat/sse/{key()}"
    done = subprocess.run(
        [sys.executable, "-m", "resumable_stream", url, "--json", "{}", "-q"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == SSE_DATA
    assert "complete" in done.stderr


def test_command_line_resume(server: LiveServer) -> None:
    stream_id = httpx.post(f"{server.url}/api/chat/text/{key()}", timeout=30).headers["x-stream-id"]
    done = subprocess.run(
        # --stream-id=ID: a random id may start with "-", which argparse would take
        # for an option if it stood on its own.
        [sys.executable, "-m", "resumable_stream", server.url, f"--stream-id={stream_id}",
         "--resume-at", "100", "-q"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == TEXT[100:]
    missing = subprocess.run(
        [sys.executable, "-m", "resumable_stream", server.url, "--stream-id", "nope",
         "--last-event-id", "2", "-q"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert missing.returncode == 1
    assert "404" in missing.stderr


