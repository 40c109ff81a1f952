"""Faults under a running stream (issue 7): Redis restarted on the same port, with and
without persistence, and a subscriber Redis drops for overflowing its pub/sub buffer.

Each test owns its redis-server. Every wait is bounded; the pace of a source is its
workload (a model's tokens come at a pace), never a synchronisation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from resumable_stream import (
    BackendUnavailable,
    Chunk,
    ResumableStream,
    ResumableStreamContext,
    StreamFailed,
    StreamNotFound,
    StreamOptions,
    StreamStatus,
    create_resumable_stream_context,
)
from resumable_stream._producer import STORAGE_LOST

from .servers import RedisServer
from .tcp_proxy import FaultProxy

STEP = 15.0
ROOT = Path(__file__).parent.parent


def text(i: int) -> str:
    return f"{i:05d}|"


class Reading:
    """One reader's chunks (with their indices), then maybe an error."""

    def __init__(self, half_at: int = 0) -> None:
        self.got: list[tuple[int, Chunk]] = []
        self.error: BaseException | None = None
        self.half = asyncio.Event()
        self.half_at = half_at

    async def run(self, stream: ResumableStream | None) -> Reading:
        assert stream is not None
        try:
            async for index, chunk in stream.indexed():
                self.got.append((index, chunk))
                if len(self.got) == self.half_at:
                    self.half.set()
        except Exception as exc:  # judged by the test: typed or not
            self.error = exc
        return self

    def whole(self, total: int) -> bool:
        return self.error is None and self.got == [(i, text(i)) for i in range(total)]

    def clean_prefix(self) -> bool:
        return self.got == [(i, text(i)) for i in range(len(self.got))]


async def paced(total: int, pace: float) -> AsyncIterator[str]:
    for i in range(total):
        if i:
            await asyncio.sleep(pace)  # the source's pace: its workload
        yield text(i)


def start(servers: list[RedisServer], *args: str) -> RedisServer:
    server = RedisServer(*args)
    servers.append(server)
    server.start()
    return server


OPTIONS = StreamOptions(lease=2.0, poll_interval=0.25, shutdown_grace=2.0, retry_window=5.0)


async def restarted_mid_stream(
    server: RedisServer, key_prefix: str, total: int = 400, pace: float = 0.005
) -> tuple[ResumableStreamContext, aioredis.Redis, Reading, list[Reading], asyncio.Task[None]]:
    """A paced stream with two followers; Redis restarts when the original reader is
    half way. Returns after every reader ended (bounded)."""
    client = aioredis.Redis.from_url(server.url)
    producers: list[asyncio.Task[None]] = []
    ctx = create_resumable_stream_context(
        client, key_prefix=key_prefix, options=OPTIONS, wait_until=producers.append
    )
    original = Reading(half_at=total // 2)
    stream = await ctx.create_new_resumable_stream("s", lambda: paced(total, pace))
    reads = [asyncio.create_task(original.run(stream))]
    followers = [Reading(), Reading()]
    for follower in followers:
        reads.append(
            asyncio.create_task(follower.run(await ctx.resume_existing_stream("s", after=-1)))
        )
    await asyncio.wait_for(original.half.wait(), STEP)

    def restart() -> None:
        server.stop()  # waits for the process to exit
        server.start()  # same port, same directory

    await asyncio.to_thread(restart)
    await asyncio.wait_for(asyncio.gather(*reads), STEP)
    return ctx, client, original, followers, producers[0]


@pytest.mark.timeout(40)
async def test_redis_restart_with_persistence_loses_nothing(
    redis_factory: list[RedisServer], key_prefix: str
) -> None:
    # AOF with fsync on every write: the stream's keys survive the restart.
    server = start(redis_factory, "--appendonly", "yes", "--appendfsync", "always")
    total = 400
    ctx, client, original, followers, producer = await restarted_mid_stream(
        server, key_prefix, total
    )
    try:
        assert original.whole(total), original.error
        # The producer wrote on once Redis was back: the stored stream is whole.
        await asyncio.wait_for(producer, STEP)
        assert await ctx.get_status("s") is StreamStatus.DONE
        late = await Reading().run(await ctx.resume_existing_stream("s", after=-1))
        assert late.whole(total), late.error
        # Followers retried for retry_window: each continued exactly.
        for follower in followers:
            assert follower.whole(total), (len(follower.got), follower.error)
    finally:
        await asyncio.wait_for(ctx.aclose(), STEP)
        await client.aclose()


@pytest.mark.timeout(40)
async def test_redis_restart_without_persistence_marks_the_stream_failed(
    redis_factory: list[RedisServer], key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="resumable_stream")
    server = start(redis_factory)  # no persistence: the restart loses every key
    total = 400
    ctx, client, original, followers, producer = await restarted_mid_stream(
        server, key_prefix, total
    )
    try:
        # The original reader is fed by the producer: it gets everything.
        assert original.whole(total), original.error
        await asyncio.wait_for(producer, STEP)
        assert producer.exception() is None
        # The producer found the keys gone and stored a failed record in their place.
        assert await ctx.get_status("s") is StreamStatus.FAILED
        snap = await ctx.backend.snapshot("s", 0, 10)
        assert snap is not None
        assert (snap.length, snap.error) == (0, STORAGE_LOST)
        # Followers: a clean prefix, then a typed error, never a silent gap or a hang.
        for follower in followers:
            assert follower.clean_prefix()
            assert len(follower.got) < total
            assert isinstance(follower.error, (StreamFailed, StreamNotFound)), follower.error
        # A client resuming from a position gets nothing (the HTTP layer: 410); one
        # without a position gets the typed error.
        assert await ctx.resume_existing_stream("s", after=total // 2) is None
        assert await ctx.resume_existing_stream("s", after=-1) is None
        late = await Reading().run(await ctx.resume_existing_stream("s"))
        assert late.got == []
        assert isinstance(late.error, StreamFailed)
        assert "storage lost" in str(late.error)
        assert any("lost its stored chunks" in r.getMessage() for r in caplog.records)
        # The tombstone expires like any ended stream.
        pttls = [await client.pttl(k) async for k in client.scan_iter(f"{key_prefix}:*")]
        assert pttls
        assert all(p > 0 for p in pttls), pttls
    finally:
        await asyncio.wait_for(ctx.aclose(), STEP)
        await client.aclose()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("path", ["task", "tick"])
async def test_retried_write_that_landed_is_not_a_refusal(key_prefix: str, path: str) -> None:
    """A write applied by the backend whose reply was lost (a cut after the command ran)
    is retried; the retry is refused (the index moved on), and the producer must see
    that its own first try landed instead of giving the stream up. Both for writes the
    writer task makes and for those started from the write clock (``write_soon``)."""
    from resumable_stream import MemoryBackend

    class LostReplies(MemoryBackend):
        def __init__(self) -> None:
            super().__init__()
            self.lost = 0

        async def write(self, *args: object, **kwargs: object) -> bool:
            await super().write(*args, **kwargs)  # type: ignore[arg-type]
            self.lost += 1  # every write is applied, then its reply is lost
            raise BackendUnavailable("the reply was lost")

        def write_soon(self, *args: object, **kwargs: object) -> asyncio.Future[bool]:
            applied = super().write_soon(*args, **kwargs)  # type: ignore[arg-type]
            assert applied.result() is False
            self.lost += 1
            lost: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            lost.set_exception(BackendUnavailable("the reply was lost"))
            return lost

    if path == "task":
        LostReplies.write_soon = None  # type: ignore[assignment,method-assign]
    backend = LostReplies()
    ctx = create_resumable_stream_context(backend, options=OPTIONS)
    try:
        async def source() -> AsyncIterator[str]:
            for i in range(50):
                if i == 25:
                    await asyncio.sleep(0.05)  # a pause in the source: two writes
                yield text(i)

        stream = await ctx.create_new_resumable_stream("s", source)
        assert (await Reading().run(stream)).whole(50)
        late = await Reading().run(await ctx.resume_existing_stream("s", after=-1))
        assert late.whole(50), late.error
        assert backend.lost >= 2  # some chunks, then the end
        assert await ctx.get_status("s") is StreamStatus.DONE
    finally:
        await ctx.aclose()


# -- a follower Redis drops for overflowing its pub/sub output buffer ------------------------


@pytest.mark.timeout(60)
async def test_stopped_follower_dropped_by_redis_catches_up_exactly(
    redis_factory: list[RedisServer], key_prefix: str
) -> None:
    """A follower process that reads nothing (SIGSTOP) while the producer writes 4 MB:
    Redis drops its pub/sub connection at the lowered output buffer limit; the
    producer is not slowed; once resumed (SIGCONT) the follower recovers from the list
    and gets every chunk exactly once."""
    server = start(redis_factory, "--client-output-buffer-limit", "pubsub 256kb 64kb 1")
    client = aioredis.Redis.from_url(server.url)
    ctx = create_resumable_stream_context(client, key_prefix=key_prefix, options=OPTIONS)
    total, size = 4000, 1000  # 4 MB
    script = ROOT / "tests" / "procs" / "stream_proc.py"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    gate = asyncio.Event()

    async def source() -> AsyncIterator[str]:
        await gate.wait()
        for i in range(total):
            yield chunk(i, size)
            if i % 50 == 0:
                await asyncio.sleep(0)  # let the event loop breathe, as real I/O does

    proc = None
    try:
        original = await ctx.create_new_resumable_stream("s", source)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), "follow", server.url, key_prefix, "s",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env,
        )
        assert proc.stdout is not None
        assert proc.stdin is not None
        line = await asyncio.wait_for(proc.stdout.readline(), STEP)
        assert line.split()[:1] == [b"STARTED"], line
        proc.stdin.write(b"GO\n")
        await proc.stdin.drain()
        line = await asyncio.wait_for(proc.stdout.readline(), STEP)
        assert line.split()[:1] == [b"JOINED"], line
        assert len(await client.client_list(_type="pubsub")) == 1  # the follower's
        os.kill(proc.pid, signal.SIGSTOP)  # this one process, which we started
        loop = asyncio.get_running_loop()
        began = loop.time()
        gate.set()
        assert original is not None
        got = [c async for c in original]
        elapsed = loop.time() - began
        assert len(got) == total
        # Redis dropped the stopped follower's pub/sub connection at the buffer limit.
        assert not await client.client_list(_type="pubsub")
        os.kill(proc.pid, signal.SIGCONT)
        line = await asyncio.wait_for(proc.stdout.readline(), STEP)
        words = line.decode().split()
        assert words[:1] == ["RESULT"], (line, await proc.stderr.read())  # type: ignore[union-attr]
        assert words[1:3] == [str(total), expected_digest(total, size)], words
        assert elapsed < 10.0, elapsed  # the stopped follower did not hold the producer back
    finally:
        if proc is not None and proc.returncode is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            await proc.wait()
        await asyncio.wait_for(ctx.aclose(), STEP)
        await client.aclose()


def chunk(i: int, size: int) -> str:
    head = f"{i:06d}:"
    return head + "x" * (size - len(head))


def expected_digest(total: int, size: int) -> str:
    from .procs.stream_proc import digest

    return digest("".join(chunk(i, size) for i in range(total)))


# -- keys lost under memory pressure (what eviction does, done by hand: deterministic) ------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("lost", ["meta", "chunks"])
async def test_evicted_keys_fail_the_stream_never_a_silent_hole(
    redis_client: aioredis.Redis, key_prefix: str, lost: str
) -> None:
    ctx = create_resumable_stream_context(redis_client, key_prefix=key_prefix, options=OPTIONS)
    total = 200
    try:
        original = Reading(half_at=total // 2)
        stream = await ctx.create_new_resumable_stream("s", lambda: paced(total, 0.005))
        reading = asyncio.create_task(original.run(stream))
        follower = Reading()
        following = asyncio.create_task(follower.run(await ctx.resume_existing_stream("s")))
        await asyncio.wait_for(original.half.wait(), STEP)
        await redis_client.delete(f"{key_prefix}:{{s}}:{lost}")  # as an eviction would
        await asyncio.wait_for(asyncio.gather(reading, following), STEP)
        assert original.whole(total)
        assert follower.clean_prefix()
        assert len(follower.got) < total
        assert isinstance(follower.error, (StreamFailed, StreamNotFound)), follower.error
        assert await ctx.get_status("s") is StreamStatus.FAILED
        snap = await ctx.backend.snapshot("s", 0, 0)
        assert snap is not None
        assert snap.error == STORAGE_LOST
    finally:
        await asyncio.wait_for(ctx.aclose(), STEP)


# -- a stalled (half-open) connection between a follower's process and Redis ---------------


@pytest.mark.timeout(30)
async def test_stalled_pubsub_connection_follower_still_gets_everything_exactly(
    redis_server: RedisServer, key_prefix: str
) -> None:
    """Redis' replies on a follower's pub/sub connection stop (half-open): it keeps
    re-reading the list every ``poll_interval`` and gets every chunk exactly once."""
    direct = aioredis.Redis.from_url(redis_server.url)
    producer = create_resumable_stream_context(direct, key_prefix=key_prefix, options=OPTIONS)
    async with FaultProxy(redis_server.port) as proxy:
        proxied = aioredis.Redis(host="127.0.0.1", port=proxy.port)
        follower_ctx = create_resumable_stream_context(
            proxied, key_prefix=key_prefix, options=OPTIONS
        )
        total = 300
        try:
            original = Reading(half_at=total // 3)
            stream = await producer.create_new_resumable_stream("s", lambda: paced(total, 0.005))
            reading = asyncio.create_task(original.run(stream))
            follower = Reading()
            following = asyncio.create_task(
                follower.run(await follower_ctx.resume_existing_stream("s", after=-1))
            )
            await asyncio.wait_for(original.half.wait(), STEP)
            proxy.stall(lambda c: c.subscribed)  # the pub/sub link goes half-open
            await asyncio.wait_for(asyncio.gather(reading, following), STEP)
            assert original.whole(total)
            assert follower.whole(total), (len(follower.got), follower.error)
        finally:
            await asyncio.wait_for(follower_ctx.aclose(), STEP)
            await asyncio.wait_for(producer.aclose(), STEP)
            await proxied.aclose()
            await direct.aclose()


@pytest.mark.timeout(30)
async def test_black_holed_redis_ends_a_follower_with_a_typed_error(
    redis_server: RedisServer, key_prefix: str
) -> None:
    """Every connection of the follower's process goes silent. With a socket timeout on
    its client (redis-py has none by default: set one), the follower ends with
    `BackendUnavailable` after a clean prefix, within the client's timeouts and
    ``retry_window`` (each recovery attempt is bounded by the window, since the backend's
    own subscribe waits up to 10 s for a confirmation); the producer, on its own
    connection, is not affected."""
    direct = aioredis.Redis.from_url(redis_server.url)
    producer = create_resumable_stream_context(direct, key_prefix=key_prefix, options=OPTIONS)
    short = StreamOptions(lease=2.0, poll_interval=0.25, retry_window=1.0)
    async with FaultProxy(redis_server.port) as proxy:
        # redis-py 8 retries a timed-out command 3 times with backoff (about 9 s here);
        # no retries, so the library's own bound shows.
        proxied = aioredis.Redis(
            host="127.0.0.1", port=proxy.port, socket_timeout=0.5, socket_connect_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
        )
        follower_ctx = create_resumable_stream_context(
            proxied, key_prefix=key_prefix, options=short
        )
        total = 400
        try:
            original = Reading(half_at=total // 4)
            stream = await producer.create_new_resumable_stream("s", lambda: paced(total, 0.005))
            reading = asyncio.create_task(original.run(stream))
            follower = Reading()
            following = asyncio.create_task(
                follower.run(await follower_ctx.resume_existing_stream("s", after=-1))
            )
            await asyncio.wait_for(original.half.wait(), STEP)
            proxy.stall_new = True  # a black hole: new connections too
            proxy.stall()
            loop = asyncio.get_running_loop()
            stalled_at = loop.time()
            await asyncio.wait_for(following, STEP)  # ends: no hang
            # poll_interval, one socket timeout, then at most retry_window (1 s).
            assert loop.time() - stalled_at < 4.0
            assert follower.clean_prefix()
            assert isinstance(follower.error, BackendUnavailable), follower.error
            await asyncio.wait_for(reading, STEP)
            assert original.whole(total)
            late = await Reading().run(await producer.resume_existing_stream("s", after=-1))
            assert late.whole(total)  # the stream itself is whole in Redis
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(follower_ctx.aclose(), STEP)
            await asyncio.wait_for(producer.aclose(), STEP)
            await proxied.aclose()
            await direct.aclose()
