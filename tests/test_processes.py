"""Several OS processes on one real redis-server: followers and producers in other
processes, a producer killed with SIGKILL, Redis stopped mid-stream, key expiry.

The second process is ``tests/procs/stream_proc.py``; it reports on stdout one line
per step (STARTED, HALF, JOINED, READY, RESULT ...) and the test waits for those
lines instead of sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from resumable_stream import (
    BackendUnavailable,
    Chunk,
    IndexedChunk,
    ProducerLost,
    ResumableStream,
    ResumableStreamContext,
    ResumableStreamError,
    StreamFailed,
    StreamOptions,
    StreamStatus,
    create_resumable_stream_context,
)

from .procs.stream_proc import GATE_BEFORE_END, chunk_text, digest
from .servers import RedisServer

# retry_window: how long writers and readers retry an unreachable Redis (the give-up
# paths are under test here, so short).
FAST = StreamOptions(lease=1.0, poll_interval=0.25, shutdown_grace=2.0, retry_window=1.0)
SCRIPT = Path(__file__).parent / "procs" / "stream_proc.py"
ROOT = Path(__file__).parent.parent
STEP = 15.0  # bound on any single wait for another process (startup included)
TOTAL = 3000


def expected_text(n: int) -> str:
    return "".join(chunk_text(i) for i in range(n))


class Child:
    """A ``stream_proc.py`` process and its line protocol."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def _stderr(self) -> str:
        assert self.proc.stderr is not None
        try:
            data = await asyncio.wait_for(self.proc.stderr.read(), 5.0)
        except asyncio.TimeoutError:
            return "<stderr not closed>"
        return data.decode(errors="replace")

    async def expect(self, word: str, timeout: float = STEP) -> list[str]:
        """Wait for the next stdout line, which must start with ``word``; its words."""
        assert self.proc.stdout is not None
        try:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"child sent no line within {timeout} s (wanted {word})") from None
        if not raw:
            raise AssertionError(f"child exited before {word}: {await self._stderr()}")
        words = raw.decode().split()
        assert words[:1] == [word], f"wanted {word}, child said {raw!r}"
        return words[1:]

    async def send(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{word}\n".encode())
        await self.proc.stdin.drain()

    async def exit_code(self, timeout: float = STEP) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if code != 0:
            raise AssertionError(f"child exited with {code}: {await self._stderr()}")
        return code

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()  # SIGKILL, this one process (we started it)
        await asyncio.wait_for(self.proc.wait(), STEP)


Spawn = Callable[..., Awaitable[Child]]


@pytest.fixture
async def spawn() -> AsyncIterator[Spawn]:
    """``await spawn(mode, *args)`` starts a child; every child is killed at teardown."""
    children: list[Child] = []
    path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}

    async def start(*args: str) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(SCRIPT), *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        child = Child(proc)
        children.append(child)
        return child

    yield start
    for child in children:
        await child.kill()


async def keys_and_pttls(client: aioredis.Redis, prefix: str) -> dict[str, int]:
    return {
        key.decode(): await client.pttl(key)
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000)
    }


# 1. A follower in another process, both ways round.


@pytest.mark.timeout(30)
async def test_follower_in_another_process(
    redis_server: RedisServer, redis_client: aioredis.Redis, key_prefix: str, spawn: Spawn
) -> None:
    ctx = create_resumable_stream_context(redis_client, key_prefix=key_prefix, options=FAST)
    child: Child = await spawn("follow", redis_server.url, key_prefix, "s")

    async def source() -> AsyncIterator[str]:
        for i in range(TOTAL):
            if i == TOTAL // 2:
                # Halfway: let the child join while the rest is being produced.
                await child.expect("STARTED")
                await child.send("GO")
            if i == TOTAL - GATE_BEFORE_END:
                await child.expect("JOINED")  # so it joined a running stream
            yield chunk_text(i)
            await asyncio.sleep(0)  # a live stream: the writer and pub/sub run in between

    try:
        stream = must(await ctx.create_new_resumable_stream("s", source))
        pairs = await asyncio.wait_for(_indexed(stream), STEP)
        assert [i for i, _ in pairs] == list(range(TOTAL))
        text = "".join(c for _, c in pairs)  # type: ignore[misc]
        assert text == expected_text(TOTAL)
        count, sha = await child.expect("RESULT")
        assert (int(count), sha) == (TOTAL, digest(text))
        await child.exit_code()
    finally:
        await asyncio.wait_for(ctx.aclose(), 10)


@pytest.mark.timeout(30)
async def test_producer_in_another_process(
    redis_server: RedisServer, redis_client: aioredis.Redis, key_prefix: str, spawn: Spawn
) -> None:
    ctx = create_resumable_stream_context(redis_client, key_prefix=key_prefix, options=FAST)
    child: Child = await spawn("produce", redis_server.url, key_prefix, "s", str(TOTAL))
    try:
        await child.expect("HALF")  # the child goes on producing while we join
        stream = await ctx.resume_existing_stream("s")
        assert stream is not None
        await child.send("JOINED")
        pairs = await asyncio.wait_for(_indexed(stream), STEP)
        assert [i for i, _ in pairs] == list(range(TOTAL))
        text = "".join(c for _, c in pairs)  # type: ignore[misc]
        assert text == expected_text(TOTAL)
        count, sha = await child.expect("RESULT")
        assert (int(count), sha) == (TOTAL, digest(text))
        await child.exit_code()
        assert await ctx.get_status("s") is StreamStatus.DONE
    finally:
        await asyncio.wait_for(ctx.aclose(), 10)


async def _indexed(stream: ResumableStream) -> list[tuple[int, Chunk]]:
    return [(i, c) async for i, c in stream.indexed()]


async def _next(it: AsyncIterator[IndexedChunk]) -> IndexedChunk:
    return await it.__anext__()


async def _drain(stream: ResumableStream) -> tuple[list[tuple[int, Chunk]], Exception | None]:
    """Every (index, chunk) until the stream ends, and the error it ended with."""
    got: list[tuple[int, Chunk]] = []
    try:
        async for i, c in stream.indexed():
            got.append((i, c))
    except Exception as exc:
        return got, exc
    return got, None


# 2. The producer's process is killed.


@pytest.mark.timeout(30)
async def test_producer_killed_with_sigkill(
    redis_server: RedisServer, redis_client: aioredis.Redis, key_prefix: str, spawn: Spawn
) -> None:
    n = 50
    ctx = create_resumable_stream_context(redis_client, key_prefix=key_prefix, options=FAST)
    child: Child = await spawn("hang", redis_server.url, key_prefix, "s", str(n))
    try:
        await child.expect("READY")  # n chunks are stored; the producer is stalled, alive
        stream = await ctx.resume_existing_stream("s")
        assert stream is not None
        it = stream.indexed()
        got = [await asyncio.wait_for(it.__anext__(), STEP) for _ in range(n)]
        assert got == [(i, chunk_text(i)) for i in range(n)]

        # While the producer's process lives, its stalled stream outlasts several leases:
        # the other process renews it.
        next_item = asyncio.create_task(_next(it))
        done, _ = await asyncio.wait({next_item}, timeout=FAST.lease * 1.5)
        assert not done, f"the follower ended while the producer lived: {next_item!r}"

        killed_at = time.monotonic()
        child.proc.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(child.proc.wait(), STEP) == -signal.SIGKILL
        # The next thing the follower gets is ProducerLost: no extra chunk, no hang. It
        # comes once the lease (1 s) lapses, at the next poll (0.25 s).
        with pytest.raises(ProducerLost):
            await asyncio.wait_for(next_item, 5.0)
        assert time.monotonic() - killed_at < 5.0

        # A reader that joins after the death replays the stored chunks, then the same.
        late = await ctx.resume_existing_stream("s")
        assert late is not None
        late_got, late_error = await asyncio.wait_for(_drain(late), 5.0)
        assert late_got == got
        assert isinstance(late_error, ProducerLost), repr(late_error)
        # A client that has every stored chunk has nothing left to wait for.
        assert await ctx.resume_existing_stream("s", after=n - 1) is None

        # A dead producer's stream reads as failed and is never taken over.
        assert await ctx.get_status("s") is StreamStatus.FAILED
        assert await ctx.has_existing_stream("s") == "DONE"

        def must_not_run() -> list[str]:
            raise AssertionError("a dead producer's stream must not be restarted")

        assert await ctx.resumable_stream("s", must_not_run) is None

        # Every key left behind expires.
        pttls = await keys_and_pttls(redis_client, key_prefix)
        assert sorted(k.rsplit(":", 1)[1] for k in pttls) == ["chunks", "meta"], pttls
        assert all(p > 0 for p in pttls.values()), pttls
    finally:
        await asyncio.wait_for(ctx.aclose(), 10)


# 3. Redis stops in the middle of a stream.


@pytest.mark.timeout(30)
async def test_redis_stopped_mid_stream(
    own_redis: RedisServer, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="resumable_stream")
    total, stop_after = 300, 100
    client = aioredis.Redis.from_url(own_redis.url)
    producers: list[asyncio.Task[None]] = []
    ctx = create_resumable_stream_context(
        client, key_prefix=key_prefix, options=FAST, wait_until=producers.append
    )

    async def source() -> AsyncIterator[str]:
        for i in range(total):
            yield chunk_text(i)
            await asyncio.sleep(0.01)  # the pace of the stream, not a synchronisation

    follower_got: list[tuple[int, object]] = []
    midway = asyncio.Event()

    async def follow(stream: ResumableStream) -> tuple[BaseException | None, float]:
        try:
            async for pair in stream.indexed():
                follower_got.append(pair)
                if len(follower_got) == stop_after:
                    midway.set()
        except Exception as exc:
            return exc, time.monotonic()
        return None, time.monotonic()

    try:
        original = await ctx.create_new_resumable_stream("s", source)
        assert original is not None
        follower = await ctx.resume_existing_stream("s")
        assert follower is not None
        original_task = asyncio.create_task(_indexed(original))
        follower_task = asyncio.create_task(follow(follower))

        await asyncio.wait_for(midway.wait(), STEP)
        await asyncio.to_thread(own_redis.stop)  # blocks until the server has exited
        stopped_at = time.monotonic()

        # The follower ends with one of the package's errors, soon, after a clean prefix.
        error, ended_at = await asyncio.wait_for(follower_task, 10)
        assert error is not None, "the follower finished although Redis was stopped"
        assert isinstance(error, BackendUnavailable), repr(error)
        assert isinstance(error, ResumableStreamError)
        assert not type(error).__module__.startswith("redis"), repr(error)
        assert ended_at - stopped_at < 5.0
        assert len(follower_got) >= stop_after
        assert follower_got == [(i, chunk_text(i)) for i in range(len(follower_got))]

        # The original reader is fed by the producer itself: it gets everything.
        got = await asyncio.wait_for(original_task, 10)
        assert got == [(i, chunk_text(i)) for i in range(total)]
        # The producer task ends by itself, without an error.
        assert len(producers) == 1
        done, _ = await asyncio.wait(producers, timeout=5)
        assert done == set(producers)
        assert producers[0].exception() is None
        await asyncio.wait_for(ctx.aclose(), 5)

        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert any("cannot store chunks" in r.getMessage() for r in errors), caplog.text
    finally:
        await asyncio.wait_for(ctx.aclose(), 10)
        await client.aclose()


# 4. Every key of an ended stream expires, with the finished TTL.


class Boom(Exception):
    pass


def must(stream: ResumableStream | None) -> ResumableStream:
    assert stream is not None, "expected a stream, got None"
    return stream


async def _ended_stream(ctx: ResumableStreamContext, scenario: str) -> tuple[StreamStatus, int]:
    """Run one stream of ``scenario`` to its end; the status and length it should have."""
    if scenario == "done":
        stream = must(await ctx.create_new_resumable_stream("s", lambda: iter(["a", "b", "c"])))
        assert await _drain(stream) == ([(0, "a"), (1, "b"), (2, "c")], None)
        return StreamStatus.DONE, 3
    if scenario == "done-empty":
        stream = must(await ctx.create_new_resumable_stream("s", lambda: iter([])))
        assert await _drain(stream) == ([], None)
        return StreamStatus.DONE, 0
    if scenario == "done-after-stored":
        # The end rides on a write of no chunks, after every chunk is stored.
        stored = asyncio.Event()

        async def paused() -> AsyncIterator[str]:
            yield "a"
            yield "b"
            await stored.wait()

        stream = must(await ctx.create_new_resumable_stream("s", paused))
        follower = must(await ctx.resume_existing_stream("s"))
        assert [await follower.__anext__(), await follower.__anext__()] == ["a", "b"]
        stored.set()
        assert await _drain(stream) == ([(0, "a"), (1, "b")], None)
        assert await _drain(follower) == ([], None)
        return StreamStatus.DONE, 2
    if scenario == "source-raises":

        async def failing() -> AsyncIterator[str]:
            yield "a"
            raise Boom("no more")

        stream = must(await ctx.create_new_resumable_stream("s", failing))
        got, error = await _drain(stream)
        assert got == [(0, "a")]
        assert isinstance(error, Boom), repr(error)
        got, error = await _drain(must(await ctx.resume_existing_stream("s")))
        assert got == [(0, "a")]
        assert isinstance(error, StreamFailed), repr(error)
        assert error.error == "Boom: no more"
        return StreamStatus.FAILED, 1
    if scenario == "make-stream-raises":

        def broken() -> object:
            raise Boom("cannot start")

        with pytest.raises(Boom):
            await ctx.create_new_resumable_stream("s", broken)
        return StreamStatus.FAILED, 0
    assert scenario == "shut-down"
    never = asyncio.Event()

    async def stalls() -> AsyncIterator[str]:
        yield "a"
        await never.wait()

    stream = must(await ctx.create_new_resumable_stream("s", stalls))
    assert await stream.__anext__() == "a"
    await asyncio.wait_for(ctx.aclose(), 10)  # cancels the producer: the stream fails
    return StreamStatus.FAILED, 1


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "scenario",
    ["done", "done-empty", "done-after-stored", "source-raises", "make-stream-raises", "shut-down"],
)
async def test_every_key_of_an_ended_stream_expires(
    redis_client: aioredis.Redis, key_prefix: str, scenario: str
) -> None:
    ttl, finished_ttl = 3600.0, 60.0
    options = StreamOptions(
        lease=1.0, poll_interval=0.25, finished_ttl=finished_ttl, shutdown_grace=0.0
    )
    ctx = create_resumable_stream_context(
        redis_client, key_prefix=key_prefix, ttl=ttl, options=options
    )
    try:
        status, length = await _ended_stream(ctx, scenario)
        await asyncio.wait_for(ctx.aclose(), 10)  # every producer has finished its writes
        assert await ctx.get_status("s") is status
        assert await redis_client.llen(f"{key_prefix}:{{s}}:chunks") == length
        pttls = await keys_and_pttls(redis_client, key_prefix)
        # No lease once ended; no list without chunks.
        kinds = ["chunks", "meta"] if length else ["meta"]
        assert sorted(k.rsplit(":", 1)[1] for k in pttls) == kinds, pttls
        # -1 would be a key that never expires, -2 one that vanished meanwhile; more
        # than finished_ttl, one that kept the running stream's ttl.
        assert all(0 < p <= finished_ttl * 1000 for p in pttls.values()), pttls
    finally:
        await asyncio.wait_for(ctx.aclose(), 10)


@pytest.mark.timeout(30)
async def test_every_key_of_a_running_stream_expires(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    ttl = 3600.0
    ctx = create_resumable_stream_context(
        redis_client, key_prefix=key_prefix, ttl=ttl, options=FAST
    )
    finish = asyncio.Event()

    async def source() -> AsyncIterator[str]:
        yield "a"
        await finish.wait()

    elsewhere = create_resumable_stream_context(redis_client, key_prefix=key_prefix, options=FAST)
    try:
        stream = must(await ctx.create_new_resumable_stream("s", source))
        # A follower in another process hears of "a" only once it is stored.
        follower = must(await elsewhere.resume_existing_stream("s"))
        assert await follower.__anext__() == "a"
        pttls = await keys_and_pttls(redis_client, key_prefix)
        assert sorted(k.rsplit(":", 1)[1] for k in pttls) == ["chunks", "lease", "meta"], pttls
        assert all(0 < p <= ttl * 1000 for p in pttls.values()), pttls
        assert pttls[f"{key_prefix}:{{s}}:lease"] <= FAST.lease * 1000
        finish.set()
        assert await _drain(stream) == ([(0, "a")], None)
        assert await _drain(follower) == ([], None)
    finally:
        await asyncio.wait_for(elsewhere.aclose(), 10)
        await asyncio.wait_for(ctx.aclose(), 10)
