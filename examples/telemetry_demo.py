# /// script
# requires-python = ">=3.10"
# dependencies = ["resumable-streams[otel]", "opentelemetry-sdk"]
# ///
"""Print the trace and the metrics of one chat, as OpenTelemetry's console exporters do.

One chat in memory: an answer streams to its original reader and to a follower (a
second tab); the first reader drops after five chunks and resumes after the last one
it got. The application's own span (``chat``) is the parent of the library's
``resumable_stream.claim`` and ``resumable_stream.resume`` spans, so they form one
trace; the metrics follow, exported once at the end.

Run it from a checkout::

    pip install -e '.[otel]' opentelemetry-sdk && python examples/telemetry_demo.py

or, with uv, ``uv run --with-editable . examples/telemetry_demo.py``. It exits 1 if a
reader did not get what it should.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

try:
    from resumable_stream import create_resumable_stream_context
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from resumable_stream import create_resumable_stream_context

ANSWER = "Resumable streams keep an answer going when the reader goes away."


def configure() -> MeterProvider:
    """Global providers, as an application sets them at startup (before or after
    importing resumable_stream: either works)."""
    resource = Resource.create({"service.name": "telemetry-demo"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    # Exported once, at shutdown: an interval longer than the demo.
    reader = PeriodicExportingMetricReader(ConsoleMetricExporter(), export_interval_millis=60_000)
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    metrics.set_meter_provider(meter_provider)
    return meter_provider


async def chat() -> bool:
    """One chat; True if every reader got exactly what it should."""
    answer = [word + " " for word in ANSWER.split(" ")]
    follower_ready = asyncio.Event()

    async def model() -> AsyncIterator[str]:
        await follower_ready.wait()
        for word in answer:
            await asyncio.sleep(0.005)  # a model's pace between tokens
            yield word

    tracer = trace.get_tracer("telemetry-demo")
    async with create_resumable_stream_context() as ctx:  # in memory: no REDIS_URL
        with tracer.start_as_current_span("chat"):
            origin = await ctx.resumable_stream("chat-42", model)
            follower = await ctx.resume_existing_stream("chat-42")  # a second tab
            assert origin is not None
            assert follower is not None
            follower_ready.set()
            got: list[str] = []
            async for chunk in origin:
                got.append(chunk)
                if len(got) == 5:
                    break  # the first reader drops
            await origin.aclose()
            resumed = await ctx.resume_existing_stream("chat-42", after=len(got) - 1)
            assert resumed is not None
            rest = [chunk async for chunk in resumed]
            followed = [chunk async for chunk in follower]
    return got + rest == answer and followed == answer


def main() -> int:
    meter_provider = configure()
    ok = asyncio.run(chat())
    meter_provider.shutdown()  # exports the metrics once
    trace.get_tracer_provider().shutdown()  # type: ignore[attr-defined]
    print("OK: one chat traced and measured" if ok else "FAIL: a reader got the wrong chunks")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
