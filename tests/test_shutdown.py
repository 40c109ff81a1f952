"""Graceful shutdown (issue 7): an app process under uvicorn gets SIGTERM with streams in
flight. A stream that ends within the grace period is delivered whole; one that does
not is marked failed (stored chunks kept). Clients then resume against a new app
process on the same Redis and get exactly the rest; nothing is lost, nothing doubled.

The app is ``tests/apps/shutdown_app.py``; the test waits for uvicorn's startup line
and for the process to exit, never for a time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from resumable_stream import (
    ResumableStreamContext,
    StreamFailed,
    StreamOptions,
    StreamStatus,
    create_resumable_stream_context,
)

from .apps.shutdown_app import chunk
from .servers import RedisServer, free_port

ROOT = Path(__file__).parent.parent
STEP = 15.0
GRACEFUL = 2  # uvicorn's --timeout-graceful-shutdown
GRACE = 0.5  # the context's shutdown_grace, after uvicorn's


class AppProcess:
    def __init__(self, redis_url: str, prefix: str) -> None:
        self.port = free_port()
        self.redis_url = redis_url
        self.prefix = prefix
        self.proc: asyncio.subprocess.Process | None = None
        self.log: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        env = {
            **os.environ, "PYTHONPATH": str(ROOT), "RS_REDIS_URL": self.redis_url,
            "RS_PREFIX": self.prefix, "RS_GRACE": str(GRACE),
        }
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "uvicorn", "tests.apps.shutdown_app:app",
            "--host", "127.0.0.1", "--port", str(self.port), "--lifespan", "on",
            "--timeout-graceful-shutdown", str(GRACEFUL), "--log-level", "info",
            cwd=ROOT, env=env, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        )
        await self.expect("Uvicorn running on")

    async def expect(self, words: str) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        while True:
            line = await asyncio.wait_for(self.proc.stderr.readline(), STEP)
            assert line, f"the app exited before {words!r}: {self.log}"
            self.log.append(line.decode(errors="replace").rstrip())
            if words in self.log[-1]:
                return

    async def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)  # this one process, which we started
        assert self.proc.stderr is not None
        rest = await asyncio.wait_for(self.proc.stderr.read(), STEP)
        self.log.extend(rest.decode(errors="replace").splitlines())
        return await asyncio.wait_for(self.proc.wait(), STEP)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


class Download:
    """One client's text of one stream, over any number of requests."""

    def __init__(self) -> None:
        self.text = ""
        self.first = asyncio.Event()
        self.complete = False
        self.statuses: list[int] = []

    async def read(self, http: httpx.AsyncClient, method: str, url: str, **kw: object) -> None:
        try:
            async with http.stream(method, url, **kw) as response:  # type: ignore[arg-type]
                self.statuses.append(response.status_code)
                if response.status_code != 200:
                    return
                async for piece in response.aiter_text():
                    self.text += piece
                    self.first.set()
            self.complete = True
        except httpx.HTTPError:
            pass  # the connection was cut: the client resumes


async def stored_text(
    ctx: ResumableStreamContext, stream_id: str
) -> tuple[str, BaseException | None]:
    reader = await ctx.resume_existing_stream(stream_id)
    assert reader is not None
    stored = ""
    try:
        async for piece in reader:
            stored += str(piece)
    except Exception as exc:
        return stored, exc
    return stored, None


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.mark.timeout(60)
async def test_sigterm_finishes_or_fails_streams_and_a_new_process_resumes(
    redis_server: RedisServer, key_prefix: str
) -> None:
    short_n, long_n = 20, 100_000
    first = AppProcess(redis_server.url, key_prefix)
    second = AppProcess(redis_server.url, key_prefix)
    client = aioredis.Redis.from_url(redis_server.url)
    ctx = create_resumable_stream_context(
        client, key_prefix=key_prefix, options=StreamOptions(lease=2.0, poll_interval=0.25)
    )
    try:
        await first.start()
        short, long = Download(), Download()
        async with httpx.AsyncClient(timeout=STEP) as http:
            reads = [
                asyncio.create_task(
                    short.read(http, "POST", f"{first.url}/stream/short?n={short_n}&pace=0.05")
                ),
                asyncio.create_task(
                    long.read(http, "POST", f"{first.url}/stream/long?n={long_n}&pace=0.01")
                ),
            ]
            await asyncio.wait_for(asyncio.gather(short.first.wait(), long.first.wait()), STEP)
            code = await first.terminate()
            await asyncio.wait_for(asyncio.gather(*reads), STEP)
        # uvicorn re-raises the signal once shut down: -SIGTERM is its clean exit.
        assert code in (0, -signal.SIGTERM), first.log
        assert any("Application shutdown complete" in line for line in first.log), first.log
        # The short stream ended within uvicorn's graceful period: delivered whole.
        full_short = "".join(chunk(i) for i in range(short_n))
        assert short.complete
        assert short.text == full_short
        assert await ctx.get_status("short") is StreamStatus.DONE
        # The long one was cut and then marked failed by the context's aclose().
        assert not long.complete
        assert await ctx.get_status("long") is StreamStatus.FAILED
        stored, error = await stored_text(ctx, "long")
        assert isinstance(error, StreamFailed)
        assert "shut down" in str(error)
        assert stored.startswith(long.text)  # the client got a clean prefix
        assert stored == "".join(chunk(i) for i in range(len(stored) // 6))
        # Every key left behind expires.
        pttls = [await client.pttl(k) async for k in client.scan_iter(f"{key_prefix}:*")]
        assert pttls
        assert all(p > 0 for p in pttls), pttls

        # A new app process on the same Redis serves the resumes.
        await second.start()
        async with httpx.AsyncClient(timeout=STEP) as http:
            # The long stream's client resumes from what it has: it gets exactly the
            # stored rest; the failed end aborts that response, and its next resume
            # finds nothing more (410).
            while True:
                before = len(long.text)
                await long.read(http, "GET", f"{second.url}/resume/long?resumeAt={before}")
                if long.statuses[-1] == 410:
                    break
                assert long.statuses[-1] == 200, long.statuses
                assert len(long.text) > before or long.complete is False
                assert len(long.statuses) < 10, long.statuses
            assert long.text == stored
            # The short stream resumes from a position like any other.
            tail = Download()
            await tail.read(http, "GET", f"{second.url}/resume/short?resumeAt=30")
            assert tail.text == full_short[30:]
            assert tail.complete
            done = Download()
            await done.read(http, "GET", f"{second.url}/resume/short?resumeAt={len(full_short)}")
            assert done.statuses == [410]
        assert await second.terminate() in (0, -signal.SIGTERM)
    finally:
        await first.kill()
        await second.kill()
        await ctx.aclose()
        await client.aclose()
