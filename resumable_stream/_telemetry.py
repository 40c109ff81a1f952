"""OpenTelemetry metrics and spans, optional: without ``opentelemetry-api`` every hook
is a no-op.

Install the ``otel`` extra and configure an SDK as usual (a ``MeterProvider`` and a
``TracerProvider``, set globally); the meter and the tracer are both named
``resumable_stream``. ``RESUMABLE_STREAM_OTEL=0`` in the environment turns all of it off
even where the API is installed (read once, at import).

Design decisions:

* Call sites test `ENABLED` (a module attribute, so that tests can switch it) before
  they call a hook: a process without the API pays one attribute check per write, per
  batch a reader hands out, per claim and per resume, and nothing per chunk.
* ``opentelemetry`` is imported at the first hook, not with the package, and the
  instruments are taken from the global providers then. The API's proxies forward to a
  provider set later, so configuring the SDK after importing us works.
* The API's no-op providers (``NoOpMeterProvider``, ``NoOpTracerProvider``), once set,
  cannot be replaced (the API sets a global provider once), so the first hook that
  finds both turns `ENABLED` off: from then on the call sites skip, as with
  ``RESUMABLE_STREAM_OTEL=0``. A no-op API call costs two Python calls (the class's
  ``add`` and its ``super().add``), about 5,400 instructions for a write's two, which
  was a few percent of a chunk in memory. With only the meter provider a no-op one,
  the metric hooks return at once and the spans go on.
* Metrics carry only low-cardinality attributes (``outcome``, ``kind``, ``operation``,
  ``mode``); a stream id appears on spans only (``resumable_stream.stream_id``).
* ``resumable_stream.follower.lag`` is what one process can measure honestly without
  clocks shared with the producer: the seconds from the moment a follower takes a live
  ``Appended`` event off its subscription to the moment it hands out that event's first
  chunk. Microseconds when the event continues the stream; the round trip of a re-read
  when it shows a gap (a missed or late message). It leaves out pub/sub transit and the
  producer's write-behind, and the original reader (fed in-process) is not a follower.
* ``resumable_stream.streams.ended`` is counted by the producer, once per stream, when
  its end is stored: ``done``, ``stopped`` (``stop_stream``), ``deleted``
  (``delete_stream``), ``failed`` (the source raised, was cut at ``max_stream_bytes``,
  or was shut down) or ``lost`` (storage refused or stayed unreachable: readers in
  other processes get an error). A process that dies counts nothing, so across a fleet
  ``started - ended`` is the streams running plus those lost with their process.
"""

from __future__ import annotations

import enum
import functools
import importlib.util
import os
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, Concatenate, ParamSpec, TypeVar

from ._exceptions import BackendUnavailable, StreamNotFound
from .backends._protocol import StaleProducer

__all__ = [
    "ENABLED",
    "NAME",
    "backend_error",
    "configure",
    "follower_lag",
    "resume_span",
    "claim_span",
    "stream_ended",
    "stream_started",
    "write_landed",
]

NAME = "resumable_stream"
ENV = "RESUMABLE_STREAM_OTEL"

# Seconds: from a fast local write (100 us) to a retry window's worth.
_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)


def _wanted() -> bool:
    """The API is importable and the environment does not turn us off."""
    if os.environ.get(ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        return importlib.util.find_spec("opentelemetry.metrics") is not None
    except (ImportError, ValueError):  # a parent that is no package, a broken install
        return False


ENABLED: bool = _wanted()
"""True if the hooks record: checked by every call site before it calls one."""


class _Instruments:
    """The meter's instruments and the tracer, made once per provider."""

    __slots__ = (
        "chunks_stored",
        "ended",
        "errors",
        "lag",
        "metrics",
        "resumes",
        "started",
        "tracer",
        "traces",
        "write_duration",
    )

    def __init__(self, meter_provider: Any, tracer_provider: Any) -> None:
        from opentelemetry import metrics, trace

        meters = meter_provider or metrics.get_meter_provider()
        tracers = tracer_provider or trace.get_tracer_provider()
        self.metrics = not isinstance(meters, metrics.NoOpMeterProvider)
        """False: the meter records nothing, the metric hooks return at once."""
        self.traces = not isinstance(tracers, trace.NoOpTracerProvider)
        meter = meters.get_meter(NAME)
        self.tracer = tracers.get_tracer(NAME)
        self.started = meter.create_counter(
            "resumable_stream.streams.started", "{stream}", "Streams whose producer started"
        )
        self.ended = meter.create_counter(
            "resumable_stream.streams.ended", "{stream}",
            "Streams whose producer ended, by outcome: done, failed, stopped, lost, deleted",
        )
        self.chunks_stored = meter.create_counter(
            "resumable_stream.chunks.stored", "{chunk}", "Chunks written to the backend"
        )
        self.resumes = meter.create_counter(
            "resumable_stream.resumes", "{resume}",
            "Readers opened on an existing stream, by outcome: reader, finished, "
            "not_found, error, cancelled",
        )
        self.errors = meter.create_counter(
            "resumable_stream.backend.errors", "{error}",
            "Failed backend calls, by kind (unavailable, refused, error) and operation",
        )
        self.write_duration = _histogram(
            meter, "resumable_stream.write.duration",
            "Seconds from a backend write going out to its reply (the try that landed)",
        )
        self.lag = _histogram(
            meter, "resumable_stream.follower.lag",
            "Seconds from a follower taking a live event off its feed to handing out its "
            "first chunk",
        )


def _histogram(meter: Any, name: str, description: str) -> Any:
    try:
        return meter.create_histogram(
            name, "s", description, explicit_bucket_boundaries_advisory=_BUCKETS
        )
    except TypeError:  # opentelemetry-api < 1.23: no advisory buckets
        return meter.create_histogram(name, "s", description)


_instruments: _Instruments | None = None
_providers: tuple[Any, Any] = (None, None)
_off_for_noop = False  # ENABLED was turned off because both providers are no-ops


def _get() -> _Instruments | None:
    global ENABLED, _instruments, _off_for_noop
    made = _instruments
    if made is None:
        try:
            made = _instruments = _Instruments(*_providers)
        except ImportError:  # found at import, but it does not import: stay off
            ENABLED = False
            return None
        if not (made.metrics or made.traces):
            ENABLED = False  # no-op providers, set for good: skip at the call sites
            _off_for_noop = True
    return made


def configure(*, meter_provider: Any = None, tracer_provider: Any = None) -> None:
    """Record to these providers instead of the global ones (None: the global one).

    For tests and for applications that keep their providers out of the globals; the
    instruments are made again at the next hook.
    """
    global ENABLED, _instruments, _providers, _off_for_noop
    _providers = (meter_provider, tracer_provider)
    _instruments = None
    if _off_for_noop:  # the providers that turned it off are no longer ours
        ENABLED = True
        _off_for_noop = False


# -- hooks: call them only if ENABLED ------------------------------------------------------


def stream_started() -> None:
    made = _instruments or _get()
    if made is not None and made.metrics:
        made.started.add(1)


def stream_ended(outcome: str) -> None:
    made = _instruments or _get()
    if made is not None and made.metrics:
        made.ended.add(1, {"outcome": outcome})


def write_landed(chunks: int, seconds: float) -> None:
    """One backend write landed, with ``chunks`` chunks (0: a lease renewal or the end)."""
    made = _instruments or _get()
    if made is not None and made.metrics:
        if chunks:
            made.chunks_stored.add(chunks)
        made.write_duration.record(seconds)


def backend_error(error: BaseException, operation: str) -> None:
    """A backend call failed (retried or not): ``operation`` is write, claim or read."""
    made = _instruments or _get()
    if made is not None and made.metrics:
        made.errors.add(1, {"kind": error_kind(error), "operation": operation})


def error_kind(error: BaseException) -> str:
    """``unavailable`` (unreachable, timed out: a retry may fix it), ``refused`` (the
    backend fenced the write off: another producer, or the stream vanished), or
    ``error`` (anything else: a script error, an unencodable chunk)."""
    if isinstance(error, StaleProducer):
        return "refused"
    if isinstance(error, (BackendUnavailable, OSError, TimeoutError)):
        return "unavailable"
    return "error"


def follower_lag(seconds: float) -> None:
    made = _instruments or _get()
    if made is not None and made.metrics:
        made.lag.record(seconds)


# -- spans -----------------------------------------------------------------------------------

_P = ParamSpec("_P")
_R = TypeVar("_R")
_S = TypeVar("_S")
_Method = Callable[Concatenate[_S, str, _P], Coroutine[Any, Any, _R]]


@contextmanager
def _span(name: str, stream_id: str, **attributes: Any) -> Iterator[Any]:
    made = _instruments or _get()
    if made is None or not made.traces:
        yield None
        return
    attributes["resumable_stream.stream_id"] = stream_id
    # Exceptions are recorded by the callers: StreamNotFound is an answer, not an error.
    with made.tracer.start_as_current_span(
        name, attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as span:
        yield span


def _failed(span: Any, exc: BaseException) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def claim_span(method: _Method[_S, _P, _R]) -> _Method[_S, _P, _R]:
    """Wrap ``ResumableStreamContext._claim`` in a ``resumable_stream.claim`` span whose
    ``resumable_stream.outcome`` is ``created`` (a reader of a new stream) or the
    status of the stream found in its place (``running``, ``done``, ``failed``)."""

    @functools.wraps(method)
    async def traced(self: _S, stream_id: str, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        if not ENABLED:
            return await method(self, stream_id, *args, **kwargs)
        with _span("resumable_stream.claim", stream_id) as span:
            if span is None:
                return await method(self, stream_id, *args, **kwargs)
            try:
                result = await method(self, stream_id, *args, **kwargs)
            except Exception as exc:
                span.set_attribute("resumable_stream.outcome", "error")
                _failed(span, exc)
                raise
            found = result.value if isinstance(result, enum.Enum) else "created"
            span.set_attribute("resumable_stream.outcome", found)
            return result

    return traced


def resume_span(method: _Method[_S, _P, _R]) -> _Method[_S, _P, _R]:
    """Wrap ``ResumableStreamContext._follow`` in a ``resumable_stream.resume`` span and
    count it in ``resumable_stream.resumes`` by ``outcome`` (``reader``, ``finished``:
    None, ``not_found``, ``error``, ``cancelled``) and ``mode`` (``join``: the stream
    ``resumable_stream()`` found running; ``resume``; ``after``: with a position)."""

    @functools.wraps(method)
    async def traced(self: _S, stream_id: str, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        if not ENABLED:
            return await method(self, stream_id, *args, **kwargs)
        mode = str(kwargs.get("mode", ""))
        with _span("resumable_stream.resume", stream_id, **{"resumable_stream.mode": mode}) as span:
            outcome = "error"
            try:
                result = await method(self, stream_id, *args, **kwargs)
                outcome = "finished" if result is None else "reader"
                return result
            except StreamNotFound:
                outcome = "not_found"
                raise
            except Exception as exc:
                if span is not None:
                    _failed(span, exc)
                raise
            except BaseException:
                outcome = "cancelled"
                raise
            finally:
                made = _instruments or _get()
                if made is not None and made.metrics:
                    made.resumes.add(1, {"outcome": outcome, "mode": mode})
                if span is not None:
                    span.set_attribute("resumable_stream.outcome", outcome)

    return traced
