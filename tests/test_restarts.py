"""The app process restarted by its server while clients stream (issue 7).

Two real set-ups, each uvicorn in a subprocess on a free loopback port, streams on a
private Redis (``tests/apps/restart_app.py``):

* ``--workers 2``: uvicorn's supervisor restarts a worker that dies. The test kills the
  worker producing a stream with SIGKILL: its client gets the clean prefix, resumes
  against a live worker, and ends with `StreamFailedError` (``ProducerLost``) once the
  lease lapses; never a normal end. Streams of the other worker are untouched.
* ``--reload``: a change to the app's file restarts its worker (SIGTERM, uvicorn's
  graceful shutdown of 1 s, then the context's ``shutdown_grace``). Clients cut by the
  restart resume against the new worker: a stream that its producer finished within the
  grace arrives exactly; one that could not finish ends with `StreamFailedError`
  (``StreamFailed``: shut down) after its clean prefix.

The tests wait for the server's own log lines (a worker died, a reload), polled since no
event crosses the process boundary; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import redis.asyncio as aioredis

from resumable_stream.client import ResumableStreamClient, ResumeFailed, StreamFailedError

from .app_process import ROOT, AppProcess
from .apps.restart_app import chunk_text, message_text
from .servers import RedisServer

pytestmark = pytest.mark.timeout(90)

STEP = 30.0


class ServerProcess(AppProcess):
    """`AppProcess` with uvicorn options of the test's choosing."""

    def __init__(self, target: str, log: IO[bytes], options: list[str], env: dict[str, str]):
        super().__init__(target, log, env=env)
        self.options = options

    def _command(self) -> list[str]:
        return [
            *super()._command()[:-2],  # without --timeout-graceful-shutdown 5
            *self.options,
        ]

    async def wait_log(self, words: str, count: int = 1, timeout: float = STEP) -> None:
        """Until the server's output holds ``words`` ``count`` times (polled: no event
        crosses the process boundary)."""
        deadline = time.monotonic() + timeout
        while self.output().count(words) < count:
            assert time.monotonic() < deadline, f"no {words!r} x{count}:\n{self.output()}"
            await asyncio.sleep(0.05)


class Reading:
    """One client's stream, read to its end in a task."""

    def __init__(self, base_url: str, stream_id: str, mode: str, query: str) -> None:
        self.stream_id = stream_id
        self.mode = mode
        self.client = ResumableStreamClient(
            base_url=base_url, resume_path="/resume/{stream_id}", retry_delay=0.05,
            max_retry_delay=0.5, max_retries=40, timeout=STEP,
        )  # fmt: skip
        self.url = f"/stream/{stream_id}?mode={mode}&{query}"
        self.got: list[str] = []
        self.error: BaseException | None = None
        self.first = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async with self.client.stream("POST", self.url) as messages:
                async for message in messages:
                    self.got.append(message.data)
                    if len(self.got) >= 3:
                        self.first.set()
        except ResumeFailed as exc:
            self.error = exc
        finally:
            self.first.set()

    def expected(self, n: int) -> str:
        if self.mode == "sse":
            return "".join(message_text(self.stream_id, i) for i in range(n))
        return "".join(chunk_text(self.stream_id, i, "text") for i in range(n))

    def is_clean_prefix(self) -> bool:
        """What arrived is the stream's first chunks, each once, in order."""
        text = "".join(self.got)
        unit = len(self.expected(1))
        return len(text) % unit == 0 and text == self.expected(len(text) // unit)


@pytest.fixture
def env(redis_server: RedisServer, key_prefix: str) -> dict[str, str]:
    return {
        "RS_REDIS_URL": redis_server.url, "RS_PREFIX": key_prefix, "RS_LEASE": "1.0",
        "RS_GRACE": "5.0", "PYTHONPATH": str(ROOT),
    }  # fmt: skip


@pytest.fixture
def log() -> Iterator[IO[bytes]]:
    with tempfile.TemporaryFile() as made:
        yield made


async def test_killed_worker_restarted_by_the_supervisor(
    env: dict[str, str], log: IO[bytes], redis_server: RedisServer, key_prefix: str
) -> None:
    server = ServerProcess(
        "tests.apps.restart_app:app", log,
        ["--workers", "2", "--timeout-graceful-shutdown", "1"], env,
    )  # fmt: skip
    redis = aioredis.Redis.from_url(redis_server.url)
    server.start()
    try:
        await server.wait_log("Application startup complete", 2)
        tag = uuid.uuid4().hex[:6]
        # Producers alive and quiet after 20 chunks: a kill lands mid-stream for sure.
        readings = [
            Reading(server.url, f"k{tag}{i}", mode, "n=1000&pace=0.002&hang_at=20")
            for i, mode in enumerate(["sse", "text", "sse", "text"])
        ]
        deadline = time.monotonic() + STEP
        while any(len("".join(r.got)) < len(r.expected(20)) for r in readings):
            assert time.monotonic() < deadline, [r.got for r in readings]
            await asyncio.sleep(0.02)  # the readers' progress: polled, bounded
        pids = {r.stream_id: int(await redis.get(f"{key_prefix}:pid:{r.stream_id}") or 0)
                for r in readings}  # fmt: skip
        victim = pids[readings[0].stream_id]
        os.kill(victim, signal.SIGKILL)  # a worker of the server this test started
        await server.wait_log(f"Child process [{victim}] died")
        # Streams of the killed worker: hung at 20 chunks, they end with the typed
        # failure. Those of the other worker (if any) are hung as well: stop them, so
        # that they end done, not failed.
        survivors = [r for r in readings if pids[r.stream_id] != victim]
        for reading in survivors:
            assert await reading.client.stop() == 202
        await asyncio.wait_for(asyncio.gather(*(r.task for r in readings)), STEP)
        for reading in readings:
            assert reading.is_clean_prefix(), reading.got
            assert "".join(reading.got) == reading.expected(20)
            if pids[reading.stream_id] == victim:
                assert isinstance(reading.error, StreamFailedError), reading.error
                assert reading.error.reason == "ProducerLost"
                assert not reading.client.completed
            else:
                assert reading.error is None
                assert reading.client.completed
        # The supervisor started a new worker: the app serves new streams whole.
        await server.wait_log("Application startup complete", 3)
        after = Reading(server.url, f"a{tag}", "sse", "n=50&pace=0.002")
        await asyncio.wait_for(after.task, STEP)
        assert after.error is None
        assert "".join(after.got) == after.expected(50)
    finally:
        server.stop()
        await redis.aclose()


async def test_reload_restarts_the_app_while_clients_stream(
    env: dict[str, str], log: IO[bytes], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shim = tmp_path / "reloaded_app.py"
    shim.write_text("from tests.apps.restart_app import app  # version 1\n")
    server = ServerProcess(
        "reloaded_app:app", log,
        ["--app-dir", str(tmp_path), "--reload", "--reload-dir", str(tmp_path),
         "--timeout-graceful-shutdown", "1"],
        env,
    )  # fmt: skip
    caplog.set_level(logging.WARNING, logger="resumable_stream.client")
    server.start()
    try:
        await server.wait_log("Application startup complete")
        tag = uuid.uuid4().hex[:6]
        # 4 s answers: in flight when the reload comes, finished within shutdown_grace (5 s).
        finishing = [
            Reading(server.url, f"f{tag}{i}", mode, "n=100&pace=0.04")
            for i, mode in enumerate(["sse", "text", "sse"])
        ]
        # Endless ones: still running when the grace is over, so marked failed.
        endless = [
            Reading(server.url, f"e{tag}{i}", mode, "n=100000&pace=0.01")
            for i, mode in enumerate(["sse", "text"])
        ]
        readings = finishing + endless
        await asyncio.wait_for(asyncio.gather(*(r.first.wait() for r in readings)), STEP)
        shim.write_text("from tests.apps.restart_app import app  # version 2\n")
        await server.wait_log("Reloading")
        await asyncio.wait_for(asyncio.gather(*(r.task for r in readings)), STEP)
        await server.wait_log("Application startup complete", 2)
        for reading in finishing:
            assert reading.error is None, reading.error
            assert reading.client.completed
            assert "".join(reading.got) == reading.expected(100)
        for reading in endless:
            assert isinstance(reading.error, StreamFailedError), reading.error
            assert reading.error.reason == "StreamFailed"
            assert reading.is_clean_prefix()
            assert len(reading.got) > 3
        # The restart cut the clients, and they resumed against the new worker.
        retried = "\n".join(r.getMessage() for r in caplog.records)
        assert any(r.stream_id in retried for r in finishing), retried
        # The new worker serves new streams whole.
        after = Reading(server.url, f"a{tag}", "text", "n=30&pace=0.002")
        await asyncio.wait_for(after.task, STEP)
        assert "".join(after.got) == after.expected(30)
    finally:
        server.stop()
