"""OpenTelemetry: what one chat, a failed, a stopped, a deleted and a lost stream record,
read back through the SDK's in-memory reader and exporter; and that nothing breaks
without the API.

The SDK providers are handed to the module with `_telemetry.configure`, not set
globally (the API lets a process set its global providers once).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from resumable_stream import (
    MemoryBackend,
    ResumableStreamContext,
    StreamNotFound,
    StreamOptions,
    create_resumable_stream_context,
)
from resumable_stream import _telemetry as telemetry
from resumable_stream.backends import Backend

from .conftest import FAST
from .faulty_backend import Fault, FaultPlan, FaultyBackend

ROOT = Path(__file__).resolve().parent.parent
STEP = 10.0  # bound on any one test's waits, in seconds
CHUNKS = [f"word{i} " for i in range(10)]

Key = tuple[tuple[str, Any], ...]


@dataclass
class Recorded:
    """What the instrumentation recorded, as a user's exporter would see it."""

    metrics: InMemoryMetricReader
    spans: InMemorySpanExporter

    def _points(self, name: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        if data is None:
            return []
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            if scope.scope.name == "resumable_stream"
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]

    def sums(self, name: str) -> dict[Key, int]:
        """A counter's value per attribute set (zeros left out)."""
        return {
            tuple(sorted(p.attributes.items())): p.value for p in self._points(name) if p.value
        }

    def total(self, name: str) -> int:
        return sum(self.sums(name).values())

    def histogram(self, name: str) -> tuple[int, float]:
        """A histogram's (count, sum) over every attribute set."""
        points = self._points(name)
        return sum(p.count for p in points), sum(p.sum for p in points)

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.name == name]


@pytest.fixture
def otel(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorded]:
    metrics = InMemoryMetricReader()
    spans = InMemorySpanExporter()
    meter_provider = MeterProvider(metric_readers=[metrics])
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    monkeypatch.setattr(telemetry, "ENABLED", True)  # whatever the environment says
    telemetry.configure(meter_provider=meter_provider, tracer_provider=tracer_provider)
    yield Recorded(metrics, spans)
    telemetry.configure()
    meter_provider.shutdown()
    tracer_provider.shutdown()


@pytest.fixture
def backend(memory_or_redis: Backend) -> Backend:
    return memory_or_redis


@pytest.fixture
async def ctx(backend: Backend) -> AsyncIterator[ResumableStreamContext]:
    context = create_resumable_stream_context(backend, options=FAST)
    yield context
    await context.aclose()


async def _read(stream: Any) -> list[str]:
    return [chunk async for chunk in stream]


async def chat(ctx: ResumableStreamContext, stream_id: str) -> None:
    """One chat: the answer streams to its original reader and to one follower in
    another process (a second context on the same backend), chunk by chunk (each chunk
    waits until the follower got the one before, so every chunk reaches it live through
    storage); then a client that had 5 chunks resumes after them."""
    follower_has: list[asyncio.Event] = [asyncio.Event() for _ in CHUNKS]
    follower_ready = asyncio.Event()

    async def answer() -> AsyncIterator[str]:
        await follower_ready.wait()
        for i, chunk in enumerate(CHUNKS):
            if i:
                await follower_has[i - 1].wait()
            yield chunk

    async def follow(stream: Any) -> list[str]:
        got = []
        async for chunk in stream:
            follower_has[len(got)].set()
            got.append(chunk)
        return got

    elsewhere = create_resumable_stream_context(ctx.backend, options=FAST)
    try:
        with anyio.fail_after(STEP):
            origin = await ctx.resumable_stream(stream_id, answer)
            assert origin is not None
            follower = await elsewhere.resume_existing_stream(stream_id)
            assert follower is not None
            follower_ready.set()
            got, followed = await asyncio.gather(_read(origin), follow(follower))
            assert got == CHUNKS
            assert followed == CHUNKS
            resumed = await ctx.resume_existing_stream(stream_id, after=4)
            assert resumed is not None
            assert await _read(resumed) == CHUNKS[5:]
    finally:
        await elsewhere.aclose()


async def test_one_chat_records_its_stream_writes_resumes_and_spans(
    ctx: ResumableStreamContext, otel: Recorded
) -> None:
    await chat(ctx, "chat-1")
    assert otel.sums("resumable_stream.streams.started") == {(): 1}
    assert otel.sums("resumable_stream.streams.ended") == {(("outcome", "done"),): 1}
    assert otel.total("resumable_stream.chunks.stored") == len(CHUNKS)
    assert otel.sums("resumable_stream.resumes") == {
        (("mode", "resume"), ("outcome", "reader")): 1,
        (("mode", "after"), ("outcome", "reader")): 1,
    }
    # Chunk i is made only once chunk i - 1 reached the follower, so through storage:
    # one write each for chunks 0 to 8, at least one for chunk 9 and the end.
    writes, seconds = otel.histogram("resumable_stream.write.duration")
    assert writes >= len(CHUNKS)
    assert 0 < seconds < STEP
    lags, lag_seconds = otel.histogram("resumable_stream.follower.lag")
    assert 1 <= lags <= len(CHUNKS)  # a poll's read may deliver a chunk before its event
    assert 0 <= lag_seconds < STEP
    assert otel.sums("resumable_stream.backend.errors") == {}

    (claim,) = otel.named("resumable_stream.claim")
    assert claim.attributes is not None
    assert claim.attributes["resumable_stream.stream_id"] == "chat-1"
    assert claim.attributes["resumable_stream.outcome"] == "created"
    resumes = otel.named("resumable_stream.resume")
    assert sorted((s.attributes or {})["resumable_stream.mode"] for s in resumes) == [
        "after", "resume",
    ]
    assert all((s.attributes or {})["resumable_stream.outcome"] == "reader" for s in resumes)
    assert all(s.status.status_code is StatusCode.UNSET for s in [claim, *resumes])


async def test_resumes_of_finished_missing_and_running_streams(
    ctx: ResumableStreamContext, otel: Recorded
) -> None:
    gate = asyncio.Event()

    async def slow() -> AsyncIterator[str]:
        yield "a"
        await gate.wait()
        yield "b"

    with anyio.fail_after(STEP):
        origin = await ctx.resumable_stream("running", slow)
        assert origin is not None
        joined = await ctx.resumable_stream("running", slow)  # taken: joins it
        assert joined is not None
        gate.set()
        assert await _read(origin) == ["a", "b"]
        assert await _read(joined) == ["a", "b"]
        assert await ctx.resume_existing_stream("running") is None  # done
        with pytest.raises(StreamNotFound):
            await ctx.resume_existing_stream("never-made")
    assert otel.sums("resumable_stream.resumes") == {
        (("mode", "join"), ("outcome", "reader")): 1,
        (("mode", "resume"), ("outcome", "finished")): 1,
        (("mode", "resume"), ("outcome", "not_found")): 1,
    }
    claims = sorted((s.attributes or {})["resumable_stream.outcome"] for s in otel.named(
        "resumable_stream.claim"
    ))
    assert claims == ["created", "running"]
    # A missing stream is an answer (a 404), not an error of ours.
    assert all(
        s.status.status_code is StatusCode.UNSET for s in otel.named("resumable_stream.resume")
    )


async def test_failed_stopped_and_deleted_streams_are_counted_by_outcome(
    ctx: ResumableStreamContext, otel: Recorded
) -> None:
    forever = asyncio.Event()  # never set: the sources below wait to be stopped

    async def fails() -> AsyncIterator[str]:
        yield "a"
        raise RuntimeError("the model went away")

    async def waits() -> AsyncIterator[str]:
        yield "a"
        await forever.wait()
        yield "never"

    with anyio.fail_after(STEP):
        failing = await ctx.create_new_resumable_stream("fails", fails)
        assert failing is not None
        with pytest.raises(RuntimeError):
            await _read(failing)

        stopped = await ctx.create_new_resumable_stream("stopped", waits)
        assert stopped is not None
        assert await stopped.__anext__() == "a"
        assert await ctx.stop_stream("stopped")
        assert await _read(stopped) == []

        deleted = await ctx.create_new_resumable_stream("deleted", waits)
        assert deleted is not None
        assert await deleted.__anext__() == "a"
        assert await ctx.delete_stream("deleted")
        with pytest.raises(Exception, match="deleted"):
            await _read(deleted)
        await _until_ended(otel, 3)
    assert otel.sums("resumable_stream.streams.started") == {(): 3}
    assert otel.sums("resumable_stream.streams.ended") == {
        (("outcome", "failed"),): 1,
        (("outcome", "stopped"),): 1,
        (("outcome", "deleted"),): 1,
    }


async def _until_ended(otel: Recorded, count: int) -> None:
    """The producer counts its end after telling its reader: wait for the count."""
    for _ in range(int(STEP / 0.01)):
        if otel.total("resumable_stream.streams.ended") >= count:
            return
        await asyncio.sleep(0.01)  # polling an observable, not standing in for an event
    raise AssertionError(f"{count} ends not counted within {STEP} s")


async def test_backend_errors_by_kind_and_a_lost_stream(otel: Recorded) -> None:
    """A write that failed once and was retried counts one ``unavailable`` error; a
    write the producer gave up on (no retry window left) counts its own, and the stream
    ends ``lost``. The wrapper has no ``write_soon``: every write is the task's."""
    plan = FaultPlan({("write", 0): Fault.RAISE})
    retrying = StreamOptions(lease=1.0, poll_interval=0.25, shutdown_grace=2.0)
    giving_up = StreamOptions(lease=1.0, poll_interval=0.25, shutdown_grace=2.0, retry_window=0)
    with anyio.fail_after(STEP):
        async with ResumableStreamContext(
            FaultyBackend(MemoryBackend(), plan), options=retrying
        ) as context:
            stream = await context.create_new_resumable_stream("retried", lambda: iter(["a"]))
            assert stream is not None
            assert await _read(stream) == ["a"]
            await _until_ended(otel, 1)
        assert otel.sums("resumable_stream.backend.errors") == {
            (("kind", "unavailable"), ("operation", "write")): 1,
        }
        async with ResumableStreamContext(
            FaultyBackend(MemoryBackend(), plan), options=giving_up
        ) as context:
            lost = await context.create_new_resumable_stream("lost", lambda: iter(["b"]))
            assert lost is not None
            assert await _read(lost) == ["b"]  # the original reader gets it all
            await _until_ended(otel, 2)
    assert otel.sums("resumable_stream.backend.errors") == {
        (("kind", "unavailable"), ("operation", "write")): 2,
    }
    assert otel.sums("resumable_stream.streams.ended") == {
        (("outcome", "done"),): 1,
        (("outcome", "lost"),): 1,
    }
    assert otel.total("resumable_stream.chunks.stored") == 1  # "b" never was


async def test_without_opentelemetry_nothing_is_recorded_and_nothing_breaks(
    ctx: ResumableStreamContext, otel: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(telemetry, "ENABLED", False)  # as without the API installed
    await chat(ctx, "quiet")
    assert otel.total("resumable_stream.streams.started") == 0
    assert otel.histogram("resumable_stream.write.duration") == (0, 0)
    assert otel.spans.get_finished_spans() == ()


async def test_the_api_no_op_providers_turn_every_hook_off_until_configured_again(
    ctx: ResumableStreamContext, otel: Recorded
) -> None:
    """With both of the API's no-op providers (which the API never lets anyone replace
    once set) the first hook turns `ENABLED` off, so the call sites skip from then on;
    other providers handed over later turn it back on."""
    from opentelemetry.metrics import NoOpMeterProvider
    from opentelemetry.trace import NoOpTracerProvider

    telemetry.configure(meter_provider=NoOpMeterProvider(), tracer_provider=NoOpTracerProvider())
    assert telemetry.ENABLED is True  # until a hook has seen the providers
    await chat(ctx, "no-op")
    assert telemetry.ENABLED is False
    metrics = InMemoryMetricReader()
    spans = InMemorySpanExporter()
    meter_provider = MeterProvider(metric_readers=[metrics])
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    try:
        telemetry.configure(meter_provider=meter_provider, tracer_provider=tracer_provider)
        assert telemetry.ENABLED is True
        await chat(ctx, "recorded")
        again = Recorded(metrics, spans)
        assert again.total("resumable_stream.streams.started") == 1
        assert again.histogram("resumable_stream.follower.lag")[0] > 0
        assert len(again.named("resumable_stream.claim")) == 1
    finally:
        meter_provider.shutdown()
        tracer_provider.shutdown()
    assert otel.total("resumable_stream.streams.started") == 0  # the no-op chat: nothing


async def test_a_no_op_meter_with_a_real_tracer_keeps_the_spans(
    ctx: ResumableStreamContext, otel: Recorded
) -> None:
    from opentelemetry.metrics import NoOpMeterProvider

    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    try:
        telemetry.configure(meter_provider=NoOpMeterProvider(), tracer_provider=tracer_provider)
        await chat(ctx, "spans-only")
        assert telemetry.ENABLED is True
        recorded = Recorded(otel.metrics, spans)
        assert [
            s.attributes["resumable_stream.stream_id"]
            for s in recorded.named("resumable_stream.claim")
        ] == ["spans-only"]
        assert len(recorded.named("resumable_stream.resume")) == 2
        assert otel.total("resumable_stream.streams.started") == 0
    finally:
        tracer_provider.shutdown()


def _python(code: str, **env: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
        timeout=60, check=False, env={**os.environ, **env},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip()


_BLOCKED = """
import sys
for name in ("opentelemetry", "opentelemetry.metrics", "opentelemetry.trace"):
    sys.modules[name] = None  # importing any of them raises ImportError
"""

_CHAT = """
import asyncio
from resumable_stream import create_resumable_stream_context
from resumable_stream import _telemetry

async def main():
    async with create_resumable_stream_context() as ctx:
        origin = await ctx.resumable_stream("c", lambda: iter(["a", "b"]))
        follower = await ctx.resume_existing_stream("c", after=-1)
        got = [c async for c in origin], [c async for c in follower]
        assert got == (["a", "b"], ["a", "b"]), got

asyncio.run(main())
print(_telemetry.ENABLED)
"""


def test_the_api_is_found_and_the_environment_switch_turns_it_off() -> None:
    code = "from resumable_stream import _telemetry; print(_telemetry.ENABLED)"
    assert _python(code, RESUMABLE_STREAM_OTEL="1") == "True"
    assert _python(code, RESUMABLE_STREAM_OTEL="0") == "False"
    assert _python(_BLOCKED + code, RESUMABLE_STREAM_OTEL="1") == "False"


def test_an_api_that_is_found_but_fails_to_import_turns_it_off() -> None:
    """Found at import (the flag says on), then unimportable at the first hook: every
    hook turns into a no-op and the chat goes on."""
    code = "from resumable_stream import _telemetry\nassert _telemetry.ENABLED\n"
    assert _python(code + _BLOCKED + _CHAT, RESUMABLE_STREAM_OTEL="1") == "False"


def test_the_demo_prints_a_trace_and_the_metrics_of_one_chat() -> None:
    """examples/telemetry_demo.py, through the SDK's console exporters."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "telemetry_demo.py")],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT), "RESUMABLE_STREAM_OTEL": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "OK: one chat traced and measured" in out
    for name in (
        '"resumable_stream.claim"', '"resumable_stream.resume"', '"chat"',
        '"resumable_stream.streams.started"', '"resumable_stream.streams.ended"',
        '"resumable_stream.chunks.stored"', '"resumable_stream.resumes"',
        '"resumable_stream.write.duration"', '"resumable_stream.follower.lag"',
    ):
        assert f'"name": {name}' in out, name
