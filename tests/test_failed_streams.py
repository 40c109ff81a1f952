"""A failed stream never reads as a normal end over HTTP (issue 7).

The resume endpoint answers ``410`` both for a completed stream and a failed one with
nothing left for the client; ``X-Stream-Status`` (``done``/``failed``) and
``X-Stream-Error`` (the failure's kind) tell them apart. These tests drive the ASGI
endpoint by hand over memory and a real Redis; the clients' side, through uvicorn, is
in ``test_client.py``, ``test_browser.py`` and ``test_restarts.py``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import redis.asyncio as aioredis

from resumable_stream import (
    Backend,
    MemoryBackend,
    ProducerLost,
    ResumableStreamContext,
    StreamOptions,
    StreamStatus,
    StreamTooLarge,
    create_resumable_stream_context,
)
from resumable_stream.asgi import ResumableStreamMiddleware
from resumable_stream.client import ResumableStreamClient, ResumeFailed, StreamFailedError

from .apps.restart_app import build, chunk_text, message_text
from .asgi_driver import Reply, request
from .helpers import ControlledSource, read_all, until_stored
from .http_servers import LiveServer, serving
from .servers import RedisServer
from .tcp_proxy import CuttingProxy, random_budgets

pytestmark = pytest.mark.timeout(30)

STEP = 10.0
OPTIONS = StreamOptions(lease=0.5, poll_interval=0.25, shutdown_grace=2.0)


@pytest.fixture
def backend(memory_or_redis: Backend) -> Backend:
    return memory_or_redis


@pytest.fixture
async def ctx(backend: Backend) -> AsyncIterator[ResumableStreamContext]:
    context = create_resumable_stream_context(backend, options=OPTIONS)
    yield context
    await context.aclose()


def endpoint(ctx: ResumableStreamContext) -> ResumableStreamMiddleware:
    async def nothing(scope: object, receive: object, send: object) -> None:
        raise AssertionError("only the resume endpoint is asked")

    return ResumableStreamMiddleware(nothing, ctx, path="/chat/{id}", resume_path="/r/{stream_id}")


async def resume(
    ctx: ResumableStreamContext,
    stream_id: str,
    *,
    query: bytes = b"",
    last_event_id: str | None = None,
    method: str = "GET",
) -> Reply:
    headers = [] if last_event_id is None else [(b"last-event-id", last_event_id.encode())]
    return await asyncio.wait_for(
        request(endpoint(ctx), method, f"/r/{stream_id}", query=query, headers=headers), STEP
    )


def ended(reply: Reply) -> tuple[int | None, bytes | None, bytes | None]:
    return reply.status, reply.header(b"x-stream-status"), reply.header(b"x-stream-error")


async def failed_stream(ctx: ResumableStreamContext, stream_id: str) -> None:
    """A text stream of "ab" whose source then raised."""
    source = ControlledSource()
    reader = await ctx.create_new_resumable_stream(
        stream_id, source, metadata={"http": {"status": 200, "headers": [], "body": "text"}}
    )
    source.write("a")
    source.write("b")
    source.fail(RuntimeError("secret connection string"))
    with pytest.raises(RuntimeError):
        await read_all(reader)


async def test_completed_stream_is_410_done(ctx: ResumableStreamContext) -> None:
    source = ControlledSource()
    reader = await ctx.create_new_resumable_stream("ok", source)
    source.write("ab")
    source.close()
    assert await read_all(reader) == "ab"
    assert ended(await resume(ctx, "ok")) == (410, b"done", None)
    assert ended(await resume(ctx, "ok", query=b"resumeAt=2")) == (410, b"done", None)
    assert ended(await resume(ctx, "ok", last_event_id="0")) == (410, b"done", None)
    assert ended(await resume(ctx, "ok", method="DELETE"))[:2] == (410, b"done")


async def test_failed_stream_is_410_failed(ctx: ResumableStreamContext) -> None:
    await failed_stream(ctx, "bad")
    # Everything stored, then an aborted body: never a clean end.
    whole = await resume(ctx, "bad", query=b"resumeAt=0")
    assert (whole.status, whole.body, whole.complete) == (200, b"ab", False)
    # Nothing left: 410, marked failed, by every way of asking.
    for reply in (
        await resume(ctx, "bad", query=b"resumeAt=2"),
        await resume(ctx, "bad", query=b"resumeAt=9"),
        await resume(ctx, "bad", last_event_id="1"),
    ):
        assert ended(reply) == (410, b"failed", b"StreamFailed"), reply
        # A fixed sentence: the source's exception text stays on the server.
        assert reply.body == b"the stream failed before its end"
        expose = reply.header(b"access-control-expose-headers") or b""
        assert b"X-Stream-Status" in expose
    assert ended(await resume(ctx, "bad", method="DELETE"))[:2] == (410, b"failed")


async def test_lost_producer_is_410_failed(ctx: ResumableStreamContext, backend: Backend) -> None:
    # A producer that claimed the stream, wrote one chunk and died (no more writes).
    assert await backend.claim("lost", "dead-token", ttl=60, lease=OPTIONS.lease) is None
    await backend.write(
        "lost", "dead-token", 0, ["a"], end=None, ttl=60, finished_ttl=60, lease=OPTIONS.lease
    )
    deadline = time.monotonic() + STEP
    while await backend.status("lost") is not StreamStatus.FAILED:  # the lease lapses
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)  # no event crosses a lease's expiry
    reply = await resume(ctx, "lost", query=b"resumeAt=1")
    assert ended(reply) == (410, b"failed", b"ProducerLost")
    assert b"producer is gone" in reply.body
    # From the start: the stored prefix, then an aborted body.
    whole = await resume(ctx, "lost", query=b"resumeAt=0")
    assert (whole.status, whole.body, whole.complete) == (200, b"a", False)


async def test_cut_stream_at_the_end_is_413_with_any_position(backend: Backend) -> None:
    ctx = create_resumable_stream_context(
        backend, options=StreamOptions(lease=0.5, poll_interval=0.25, max_stream_bytes=4)
    )
    try:
        source = ControlledSource()
        reader = await ctx.create_new_resumable_stream(
            "big", source, metadata={"http": {"status": 200, "headers": [], "body": "sse"}}
        )
        source.write("data: 1\n\n")  # over the cap by itself: cut before anything
        with pytest.raises(StreamTooLarge):
            await read_all(reader)
        # Last-Event-ID past the end used to read as a normal end (410).
        for reply in (
            await resume(ctx, "big", last_event_id="0"),
            await resume(ctx, "big", query=b"resumeAt=0"),
        ):
            assert ended(reply) == (413, b"failed", b"StreamTooLarge"), reply
    finally:
        await ctx.aclose()


async def test_unknown_stream_is_still_404(ctx: ResumableStreamContext) -> None:
    reply = await resume(ctx, "never", query=b"resumeAt=3")
    assert ended(reply) == (404, None, None)


# -- the Python client through a real uvicorn ------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    async def make() -> tuple[object, object]:
        ctx = create_resumable_stream_context(MemoryBackend(), options=OPTIONS)
        return build(ctx), ctx.aclose

    with serving("uvicorn", make) as live:  # type: ignore[arg-type]
        yield live


async def read_with_client(
    client: ResumableStreamClient, url: str
) -> tuple[list[str], BaseException | None]:
    got: list[str] = []
    try:
        async with client.stream("POST", url) as messages:
            async for message in messages:
                got.append(message.data)
    except ResumeFailed as exc:
        return got, exc
    return got, None


@pytest.mark.parametrize("mode", ["sse", "text"])
async def test_client_gets_the_clean_prefix_then_the_typed_failure(
    server: LiveServer, mode: str
) -> None:
    """The source raises after 30 chunks: the response is aborted, the client resumes,
    gets nothing more and a 410 marked failed: `StreamFailedError`, never a complete."""
    sid = f"f{mode}{uuid.uuid4().hex[:8]}"
    client = ResumableStreamClient(base_url=server.url, resume_path="/resume/{stream_id}",
                                   retry_delay=0.01, max_retries=5)  # fmt: skip
    got, error = await asyncio.wait_for(
        read_with_client(client, f"/stream/{sid}?n=100&pace=0.001&mode={mode}&fail_at=30"), STEP
    )
    assert isinstance(error, StreamFailedError), error
    assert (error.reason, error.status, error.stream_id) == ("StreamFailed", 410, sid)
    assert "secret" not in str(error)
    assert not client.completed
    expected = [message_text(sid, i) if mode == "sse" else chunk_text(sid, i, mode)
                for i in range(30)]  # fmt: skip
    assert "".join(got) == "".join(expected)  # the clean prefix: no gap, no duplicate


async def test_client_through_cuts_still_ends_in_the_failure(server: LiveServer) -> None:
    """Cut at random as well: every resume continues exactly, the last one is the 410."""
    for seed in range(5):
        sid = f"fc{seed}{uuid.uuid4().hex[:8]}"
        size = 30 * len(chunk_text(sid, 0, "sse")) + 30 * 8
        async with CuttingProxy(server.port, random_budgets(seed, size)) as proxy:
            client = ResumableStreamClient(base_url=proxy.url, resume_path="/resume/{stream_id}",
                                           retry_delay=0.005, max_retries=10)  # fmt: skip
            got, error = await asyncio.wait_for(
                read_with_client(client, f"/stream/{sid}?n=100&pace=0.001&mode=sse&fail_at=30"),
                STEP,
            )
        assert isinstance(error, StreamFailedError), (seed, error)
        assert got == [message_text(sid, i) for i in range(30)], seed


async def test_completed_stream_still_ends_normally(server: LiveServer) -> None:
    sid = f"ok{uuid.uuid4().hex[:8]}"
    client = ResumableStreamClient(base_url=server.url, resume_path="/resume/{stream_id}")
    got, error = await asyncio.wait_for(read_with_client(client, f"/stream/{sid}?n=5&mode=sse"),
                                        STEP)  # fmt: skip
    assert error is None
    assert got == [message_text(sid, i) for i in range(5)]
    # Asked again from its last event: nothing left, a 410 marked done: a normal end.
    again = ResumableStreamClient(base_url=server.url, resume_path="/resume/{stream_id}")
    async with again.follow(sid, last_event_id="4") as messages:
        assert [m async for m in messages] == []
    assert again.completed
    async with httpx.AsyncClient(base_url=server.url) as http:
        answer = await http.get(f"/resume/{sid}", headers={"Last-Event-ID": "4"})
    assert (answer.status_code, answer.headers["x-stream-status"]) == (410, "done")


async def test_callbacks_get_the_failure(server: LiveServer) -> None:
    sid = f"cb{uuid.uuid4().hex[:8]}"
    errors: list[BaseException] = []
    completed: list[bool] = []
    client = ResumableStreamClient(
        base_url=server.url, resume_path="/resume/{stream_id}", retry_delay=0.01,
        on_error=errors.append, on_complete=lambda: completed.append(True),
    )  # fmt: skip
    await asyncio.wait_for(client.start(f"/stream/{sid}?n=10&mode=text&fail_at=3"), STEP)
    assert completed == []
    assert [type(e) for e in errors] == [StreamFailedError]


# -- a lapsed lease in the producer's own process (found by the full soak) --------------------


async def test_local_followers_outlive_a_lapsed_lease_of_a_live_producer(
    redis_server: RedisServer, key_prefix: str
) -> None:
    """The 1,000-stream soak on two shared cores: event-loop turns of seconds let leases
    lapse while their producers ran, and followers in the producers' own process ended
    with `ProducerLost`, which clients then saw as failed streams. A context knows its own
    producers are alive: its followers go on; another process's still go by the lease."""
    client = aioredis.Redis.from_url(redis_server.url)
    # A long lease: renewed every 10 s, so the deleted key stays gone during the test.
    options = StreamOptions(lease=30.0, poll_interval=0.1)
    here = create_resumable_stream_context(client, key_prefix=key_prefix, options=options)
    elsewhere = create_resumable_stream_context(client, key_prefix=key_prefix, options=options)
    source = ControlledSource()
    try:
        original = await here.create_new_resumable_stream("busy", source)
        source.write("a")
        assert await original.__anext__() == "a"
        local = await here.resume_existing_stream("busy")
        assert local is not None
        assert await asyncio.wait_for(local.__anext__(), STEP) == "a"
        await until_stored(here.backend, "busy", 1)  # else its write renews the lease
        following = asyncio.create_task(read_all(local))  # it polls while it waits
        # The lease lapses as an overloaded loop would let it (no renewal in time).
        assert await client.delete(f"{key_prefix}:{{busy}}:lease") == 1
        # Another process's follower concludes the producer is gone, as documented...
        remote = await elsewhere.resume_existing_stream("busy")
        assert remote is not None
        with pytest.raises(ProducerLost):
            await asyncio.wait_for(read_all(remote), STEP)
        # ...while the local one, past several polls of the lapsed lease, gets the rest.
        for _ in range(3):  # each poll re-reads storage and sees the lease gone
            snap = await here.backend.snapshot("busy", 0, 0)
            assert snap is not None
            assert not snap.lease_alive
            await asyncio.sleep(options.poll_interval)  # the follower's polls: its workload
        assert not following.done()
        source.write("b")
        source.close()
        assert await asyncio.wait_for(following, STEP) == "b"
        assert await read_all(original) == "b"
        # A resume from a position in this process is served, not a ProducerLost 410.
        assert await here.resume_existing_stream("busy", after=1) is None  # done now
        assert await here.get_status("busy") is StreamStatus.DONE
    finally:
        await here.aclose()
        await elsewhere.aclose()
        await client.aclose()
