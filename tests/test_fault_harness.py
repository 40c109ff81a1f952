"""The fault harness of issue 16: hypothesis draws a small plan of faults (at backend
calls and around the user's source), one stream runs under it with readers joining at
various points, and the run is checked against the library's promise.

The invariants, each a distinct exception type so that hypothesis reports (and
shrinks) each one on its own:

* `BadPrefix`: every reader got a prefix of the producer's chunks with the producer's
  indices, each once, in order.
* `BadEnd`: a follower ends normally only if the stored stream is DONE and it got all of
  it, else with a typed error (a `ResumableStreamError`); the original reader (fed
  locally, it goes on when storage fails) ends normally only if the source completed
  and it got the source's whole output, else with a typed error or the source's own.
* `Hang`: no read waits longer than `READ_TIMEOUT`; the producer unit and `aclose()` end.
* `StillRunning`: once the producer unit ended, nothing writes for the stream any more,
  the stored status is not RUNNING with a live lease, and ``running_streams == 0``.
* `BadStorage`: a DONE stream holds exactly the producer's chunks; any other holds a
  prefix of them.
* `PoisonedId`: `resumable_stream(id)` never answers None ("finished") for a stream whose
  record stored nothing and has no producer (a lost claim).
* `LeakedTask`: no task outlives `aclose()` (the backend's own shared tasks until its
  own `aclose`).
* `NoTTL`: on Redis, every key of the stream has a TTL.
* `LeakedSubscription`: no subscription outlives its readers.

The source is paced by the test through events (`Source`), never by sleeps; the only
sleeps are the injected delays. Each example runs in its own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from resumable_stream import (
    Backend,
    MemoryBackend,
    ResumableStream,
    ResumableStreamContext,
    ResumableStreamError,
    StreamOptions,
    StreamStatus,
)
from resumable_stream._keys import StreamKeys
from resumable_stream._producer import PushedProducer, PushedSource, Refused
from resumable_stream.backends.redis import RedisBackend

from .faulty_backend import KINDS, Fault, FaultPlan, FaultyBackend, faulty
from .servers import RedisServer

OPTIONS = StreamOptions(
    lease=0.3, poll_interval=0.1, retry_window=0.5, write_interval=0.002, shutdown_grace=0.5
)
TTL = 30.0
DELAY = OPTIONS.lease * 1.5  # an injected delay: past the lease
# Generous: the longest legitimate wait is a producer finishing its writes after a
# delay past the lease, within max(lease, retry_window) + 1 s, or aclose's grace.
READ_TIMEOUT = 4.0
STEP_TIMEOUT = 4.0
STREAM_ID = "s"



@pytest.fixture(autouse=True)
def _quiet_logs() -> Iterator[None]:
    """Injected faults log by design: quiet here, restored for the tests that follow."""
    logger = logging.getLogger("resumable_stream")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


def text(i: int) -> str:
    """Chunk ``i``: unique and 6 bytes, so a gap, a duplicate or a shift shows."""
    return f"{i:05d}|"


# -- invariants ----------------------------------------------------------------------


class Violation(AssertionError):
    """An invariant of the promise does not hold (subclass per invariant)."""


class BadPrefix(Violation):
    pass


class BadEnd(Violation):
    pass


class Hang(Violation):
    pass


class StillRunning(Violation):
    pass


class BadStorage(Violation):
    pass


class PoisonedId(Violation):
    pass


class LeakedTask(Violation):
    pass


class NoTTL(Violation):
    pass


class LeakedSubscription(Violation):
    pass


# -- the scenario -----------------------------------------------------------------------


@dataclass(frozen=True)
class Join:
    """A follower that joins before chunk ``point`` is released (``point == chunks + 1``:
    after the end), in this process or another, from the start or after an index."""

    point: int
    remote: bool
    after: int | None  # None: resume_existing_stream(id); else after=


@dataclass(frozen=True)
class Scenario:
    """One run: the faults, the source's shape, the followers and the stop."""

    plan: FaultPlan
    chunks: int
    body: tuple[str, int] | None  # ("raise" | "hang" | "cancel", before chunk k)
    cleanup_raises: bool
    cap_at: int | None  # max_stream_bytes cuts the stream at this chunk
    stop: tuple[int, bool] | None  # stop_stream before chunk k, (k, from the other process)
    joins: tuple[Join, ...]
    paced: bool = True  # wait for each chunk's write before the next (else they batch)


FAULTS_FOR = {kind: list(Fault) for kind in KINDS}
for _faults in FAULTS_FOR.values():
    _faults.remove(Fault.HOLD)  # for directed tests only


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    chunks = draw(st.integers(0, 6))
    entries = draw(
        st.lists(
            st.sampled_from(KINDS).flatmap(
                lambda kind: st.tuples(
                    st.just(kind), st.integers(0, 4), st.sampled_from(FAULTS_FOR[kind])
                )
            ),
            max_size=4,
        )
    )
    plan = FaultPlan({(kind, n): fault for kind, n, fault in entries}, delay=DELAY)
    body = draw(
        st.none() | st.tuples(st.sampled_from(["raise", "hang", "cancel"]), st.integers(0, chunks))
    )
    cap_at = draw(st.none() | st.integers(0, max(chunks - 1, 0)))
    if chunks == 0:
        cap_at = None
    stop = draw(st.none() | st.tuples(st.integers(0, chunks), st.booleans()))
    joins = []
    for _ in range(draw(st.integers(0, 3))):
        point = draw(st.integers(0, chunks + 1))
        after = draw(st.none() | st.integers(-1, max(point - 1, -1)))
        joins.append(Join(point, draw(st.booleans()), after))
    return Scenario(
        plan, chunks, body, draw(st.booleans()), cap_at, stop,
        tuple(sorted(joins, key=lambda j: j.point)), draw(st.booleans()),
    )


class SourceError(Exception):
    """The user's source raised in its body."""


class CleanupError(Exception):
    """The user's source raised in its cleanup (``finally``)."""


class Source:
    """The user's source, paced by the test: it takes one permit per chunk (and one for
    its end), and says when it waits for the next (``turn``)."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.permits: asyncio.Queue[None] = asyncio.Queue()
        self.turn = asyncio.Event()
        self.hanging = asyncio.Event()
        self.finished = asyncio.Event()
        self.yielded = 0
        self.completed = False  # ran to its end without raising in its body
        self.raised = False  # raised in its body (an error, or CancelledError)
        self.stopped = False  # the test asked for a stop_stream
        self.started = 0

    def __call__(self) -> AsyncIterator[str]:
        self.started += 1
        return self._run()

    async def _take(self) -> None:
        self.turn.set()
        await self.permits.get()
        self.turn.clear()

    async def _fault(self, k: int) -> None:
        body = self.scenario.body
        if body is None or body[1] != k:
            return
        if body[0] != "hang":
            self.raised = True
        if body[0] == "raise":
            raise SourceError(f"the source raised before chunk {k}")
        if body[0] == "cancel":
            raise asyncio.CancelledError()  # something inside the source was cancelled
        self.hanging.set()
        await asyncio.Event().wait()  # hangs until cancelled (stop, shutdown)

    async def _run(self) -> AsyncIterator[str]:
        try:
            for i in range(self.scenario.chunks):
                await self._take()
                await self._fault(i)
                self.yielded += 1
                yield text(i)
            await self._take()
            await self._fault(self.scenario.chunks)
            self.completed = True
        finally:
            self.finished.set()
            if self.scenario.cleanup_raises:
                raise CleanupError("the source's cleanup raised")


@dataclass
class Outcome:
    """What one reader got: its chunks (index, chunk), then how it ended."""

    name: str
    start: int
    remote: bool = False
    opened: str = "pending"  # "reader" | "none" | "error" | "cancelled" | "hang"
    got: list[tuple[int, Any]] = field(default_factory=list)
    end: str = "pending"  # "normal" | "error" | "cancelled" | "hang"
    error: BaseException | None = None
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # the open returned

    def __repr__(self) -> str:
        err = f" {type(self.error).__name__}: {self.error}" if self.error else ""
        return (
            f"<{self.name} from {self.start}: opened {self.opened}, {len(self.got)} chunks, "
            f"end {self.end}{err}>"
        )


async def read(outcome: Outcome, opening: Any) -> None:
    """Open a reader with ``opening`` and read it to its end, each step bounded."""
    stream: ResumableStream | None = None
    try:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                try:
                    stream = await opening
                finally:
                    outcome.settled.set()
        except TimeoutError:
            outcome.opened = "hang"
            return
        except asyncio.CancelledError:
            outcome.opened = "cancelled"
            _uncancel()
            return
        except Exception as exc:
            outcome.opened, outcome.error = "error", exc
            return
        if stream is None:
            outcome.opened = "none"
            return
        outcome.opened = "reader"
        items = stream.indexed()
        while True:
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    index, chunk = await items.__anext__()
            except StopAsyncIteration:
                outcome.end = "normal"
                return
            except TimeoutError:
                outcome.end = "hang"
                return
            except asyncio.CancelledError:
                outcome.end = "cancelled"
                _uncancel()
                return
            except Exception as exc:
                outcome.end, outcome.error = "error", exc
                return
            outcome.got.append((index, chunk))
    finally:
        if stream is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(READ_TIMEOUT):
                    await stream.aclose()


def _uncancel() -> None:
    """The reader's task was cancelled by an injected fault: it records that and ends."""
    task = asyncio.current_task()
    assert task is not None
    task.uncancel()


# -- one run ------------------------------------------------------------------------------


@dataclass
class Run:
    scenario: Scenario
    backend: FaultyBackend
    inner: Backend
    redis: aioredis.Redis | None
    prefix: str
    source: Source
    producers: list[asyncio.Task[None]] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pushed: bool = False  # the source's chunks are pushed by a task of their own (`Pusher`)
    ctx: Any = None  # the producing context
    other: Any = None  # a second context on the same storage: another process

    def fail(self, kind: type[Violation], message: str) -> None:
        self.violations.append(kind(message))


async def wait_any(*aws: Any, timeout: float) -> bool:
    """Wait until one of ``aws`` is done; False on timeout."""
    ours = [asyncio.ensure_future(a) for a in aws if not isinstance(a, asyncio.Future)]
    theirs = [a for a in aws if isinstance(a, asyncio.Future)]
    try:
        done, _ = await asyncio.wait(
            ours + theirs, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        return bool(done)
    finally:
        for f in ours:
            f.cancel()
        if ours:
            await asyncio.wait(ours)


def _backend_task(task: asyncio.Task[Any]) -> bool:
    """A task the backend shares between streams (lives until the backend's aclose)."""
    name = getattr(task.get_coro(), "__qualname__", "")
    return name.startswith(("_Batcher.", "PubSubHub."))


class Pusher:
    """The scenario's source as a caller that pushes its chunks (the shape of the HTTP
    direct path: the app's task stores each chunk through `PushedProducer.push`) rather
    than a source the producer pulls. The feed is attached from the first chunk, so the
    original reader reads it as it reads a pulled stream's."""

    def __init__(self, source: Source) -> None:
        self._source = source
        self.task: asyncio.Task[None] | None = None
        self.pushed = PushedSource(self._close, lambda: None)

    def start(self) -> asyncio.Task[None]:
        producer = self.pushed.producer
        assert producer is not None
        producer.attach()
        self.task = asyncio.create_task(self._run(producer))
        return self.task

    async def _run(self, producer: PushedProducer) -> None:
        chunks = self._source()
        try:
            async for chunk in chunks:
                if producer.push(chunk):
                    await producer.writer.wait_for_room()
        except Refused:
            return  # stopped, cut or shut down: the producer ends the stream
        except asyncio.CancelledError as exc:
            producer.finish(exc)  # the caller's task was cancelled
            raise
        except Exception as exc:
            producer.finish(exc)  # the caller's task failed
            return
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
        producer.finish()

    async def _close(self) -> None:
        """The producer ends the stream early: stop the pushing task."""
        task = self.task
        if task is None or task.done():
            return
        task.cancel()
        await asyncio.wait([task])


async def run_scenario(
    scenario: Scenario,
    kind: str,
    redis_url: str | None,
    *,
    pushed: bool = False,
) -> Run:
    main = asyncio.current_task()
    before = asyncio.all_tasks()
    loop_errors: list[str] = []
    asyncio.get_running_loop().set_exception_handler(
        lambda _, context: loop_errors.append(
            f"{context.get('message')}: {context.get('exception')!r}"
        )
    )
    prefix = f"fh-{uuid.uuid4().hex[:10]}"
    client: aioredis.Redis | None = None
    if kind == "memory":
        inner: Backend = MemoryBackend()
    else:
        assert redis_url is not None
        client = aioredis.Redis.from_url(redis_url)
        inner = RedisBackend(client, key_prefix=prefix)
    backend = faulty(inner, scenario.plan)
    source = Source(scenario)
    run = Run(scenario, backend, inner, client, prefix, source, pushed=pushed)
    try:
        await drive(run)
        await check_after(run, before, main)
    finally:
        # Errors that reached the loop's handler: nobody saw them (a callback's, a
        # task's never retrieved); not an invariant, but they tell why one broke.
        run.notes.extend(f"loop error: {e}" for e in loop_errors)
        backend.enabled = False
        with contextlib.suppress(Exception):
            await asyncio.wait_for(backend.aclose(), 10)
        if client is not None:
            await client.aclose()
    return run


def options_for(scenario: Scenario) -> StreamOptions:
    if scenario.cap_at is None:
        return OPTIONS
    # Chunks are 6 bytes: chunk cap_at passes the cap.
    return StreamOptions(**{**OPTIONS.__dict__, "max_stream_bytes": 6 * scenario.cap_at + 3})


async def drive(run: Run) -> None:
    """Run the scenario: the original reader, the source's chunks one by one, the
    followers and the stop at their points, then the end of every reader."""
    sc, backend, source = run.scenario, run.backend, run.source
    options = options_for(sc)
    ctx = ResumableStreamContext(backend, ttl=TTL, options=options, wait_until=run.producers.append)
    other = ResumableStreamContext(backend, ttl=TTL, options=options)
    run.ctx, run.other = ctx, other
    readers: list[asyncio.Task[None]] = []

    def start_reader(outcome: Outcome, opening: Any) -> None:
        task = asyncio.create_task(read(outcome, opening))
        backend.user_task(task)
        readers.append(task)
        run.outcomes.append(outcome)

    original = Outcome("original", 0)
    opened = asyncio.Event()

    pusher = Pusher(source) if run.pushed else None

    async def open_original() -> ResumableStream | None:
        try:
            if pusher is None:
                return await ctx.resumable_stream(STREAM_ID, source)
            stream = await ctx.resumable_stream(STREAM_ID, pusher.pushed)
            if stream is not None:
                backend.user_task(pusher.start())
            return stream
        finally:
            opened.set()

    start_reader(original, open_original())
    if not await wait_any(opened.wait(), timeout=STEP_TIMEOUT):
        run.fail(Hang, "the original reader's resumable_stream() did not return")

    def producer_done() -> bool:
        return bool(run.producers) and run.producers[0].done()

    stopped = False
    joins = list(sc.joins)
    for point in range(sc.chunks + 2):
        while joins and joins[0].point == point:
            join = joins.pop(0)
            c = other if join.remote else ctx
            if join.after is None:
                outcome = Outcome(f"join@{point}{'r' if join.remote else ''}", 0, join.remote)
                start_reader(outcome, c.resume_existing_stream(STREAM_ID))
            else:
                outcome = Outcome(f"after{join.after}@{point}{'r' if join.remote else ''}",
                                  join.after + 1, join.remote)
                start_reader(outcome, c.resume_existing_stream(STREAM_ID, after=join.after))
            # The follower joins at this point: wait until its open returned.
            await wait_any(outcome.settled.wait(), timeout=READ_TIMEOUT + 1)
        if point > sc.chunks or not run.producers or stopped:
            continue
        # Wait until the source waits for its next permit (or the producer ended).
        waits = [
            source.turn.wait(), source.hanging.wait(), source.finished.wait(), run.producers[0]
        ]
        if not await wait_any(*waits, timeout=STEP_TIMEOUT):
            run.fail(Hang, f"the producer did not come back for chunk {point}")
            break
        if producer_done() or source.hanging.is_set() or source.finished.is_set():
            continue
        if sc.stop is not None and sc.stop[0] == point:
            source.stopped = True  # asked for: it may land even if the call failed
            c = other if sc.stop[1] else ctx
            try:
                await asyncio.wait_for(c.stop_stream(STREAM_ID), STEP_TIMEOUT)
            except ResumableStreamError:
                pass  # refused, or its reply lost: the source goes on (or stops later)
            else:
                stopped = True
                continue
        source.permits.put_nowait(None)
        if sc.paced and point < sc.chunks:
            # Let the write clock write this chunk on its own (a broken or backing-off
            # writer may not write: then go on after the lease).
            await backend.next_write(STREAM_ID, OPTIONS.lease)
    # A source that hangs with nobody to stop it ends at shutdown (aclose's grace).
    closing: asyncio.Task[None] | None = None
    if run.producers and not run.producers[0].done():
        waits = [source.hanging.wait(), source.finished.wait(), run.producers[0]]
        await wait_any(*waits, timeout=STEP_TIMEOUT)
        if source.hanging.is_set() and not stopped:
            closing = asyncio.create_task(ctx.aclose())
    _, pending = await asyncio.wait(readers, timeout=READ_TIMEOUT * 4)
    if pending:
        run.fail(Hang, f"readers never finished: {[o for o in run.outcomes if o.end == 'pending']}")
        for task in pending:
            task.cancel()
        await asyncio.wait(pending)
    if closing is not None:
        await asyncio.wait([closing], timeout=STEP_TIMEOUT)
    pushing = pusher.task if pusher is not None else None
    if pushing is not None and not (await asyncio.wait([pushing], timeout=STEP_TIMEOUT))[0]:
        run.fail(Hang, "the pushing task never ended")
        pushing.cancel()


async def check_after(
    run: Run, before: set[asyncio.Task[Any]], main: asyncio.Task[Any] | None
) -> None:
    sc, backend, inner, source = run.scenario, run.backend, run.inner, run.source
    ctx: ResumableStreamContext = run.ctx
    other: ResumableStreamContext = run.other
    loop = asyncio.get_running_loop()
    # The producer unit ends (a hung source is cancelled by aclose, after its grace).
    ended_at: float | None = None
    if run.producers:
        task = run.producers[0]
        await asyncio.wait([task], timeout=STEP_TIMEOUT)
        if not task.done():
            close = asyncio.create_task(ctx.aclose())
            await asyncio.wait([task, close], timeout=STEP_TIMEOUT)
        if not task.done():
            run.fail(Hang, "the producer task never ended, not even at aclose()")
        else:
            ended_at = loop.time()
    backend.enabled = False  # what follows looks, it does not test
    produced = source.yielded if sc.cap_at is None else min(source.yielded, sc.cap_at)
    # Nothing writes once the producer unit has ended; then the stored status.
    if ended_at is not None:
        late = await backend.next_write(STREAM_ID, OPTIONS.lease * 1.2)
        if late is not None:
            run.fail(
                StillRunning,
                f"a {late.kind} call {late.at - ended_at:.3f} s after the producer ended",
            )
        snap = await inner.snapshot(STREAM_ID, 0, 0)
        if snap is not None and snap.status is StreamStatus.RUNNING and snap.lease_alive:
            run.fail(StillRunning, "status RUNNING with a live lease after the producer ended")
    for c, name in ((ctx, "ctx"), (other, "other")):
        if c.running_streams != 0 and (ended_at is not None or not run.producers):
            run.fail(StillRunning, f"{name}.running_streams == {c.running_streams} after the end")
    # What is stored.
    stored = await inner.snapshot(STREAM_ID, 0, 10_000)
    run.notes.append(f"stored: {stored!r}; source yielded {source.yielded}, produced {produced}, "
         f"completed {source.completed}")
    if stored is not None:
        expected = [text(i) for i in range(stored.length)]
        if list(stored.chunks) != expected:
            run.fail(
                BadStorage, f"stored chunks {list(stored.chunks)} are not the producer's prefix"
            )
        if stored.length > produced:
            run.fail(BadStorage, f"{stored.length} chunks stored, the producer made {produced}")
        if stored.status is StreamStatus.DONE and stored.length != produced:
            run.fail(BadStorage, f"DONE with {stored.length} chunks; the producer made {produced}")
    check_readers(run, stored, produced)
    await check_poisoned(run, stored)
    # No task outlives aclose (the backend's shared tasks until its own aclose).
    for c in (ctx, other):
        try:
            await asyncio.wait_for(c.aclose(), STEP_TIMEOUT)
        except TimeoutError:
            run.fail(Hang, "ctx.aclose() did not return")
    await backend.drain()
    left = {t for t in asyncio.all_tasks() - before if t is not main and not t.done()}
    stray = [t for t in left if not _backend_task(t)]
    if stray:
        run.fail(LeakedTask, f"tasks alive after aclose(): {[t.get_coro() for t in stray]}")
    # Subscriptions and TTLs, before the backend closes.
    await check_subscriptions(run)
    if run.redis is not None:
        for key in await run.redis.keys(f"{run.prefix}:*"):
            ttl = await run.redis.pttl(key)
            if ttl == -1:
                run.fail(NoTTL, f"key {key!r} has no TTL")
    await inner.aclose()
    left = {t for t in asyncio.all_tasks() - before if t is not main and not t.done()}
    if left:
        coros = [t.get_coro() for t in left]
        run.fail(LeakedTask, f"tasks alive after the backend's aclose(): {coros}")


def check_readers(run: Run, stored: Any, produced: int) -> None:
    sc, source = run.scenario, run.source
    length = stored.length if stored is not None else 0
    done = stored is not None and stored.status is StreamStatus.DONE
    for o in run.outcomes:
        expected = [(i, text(i)) for i in range(o.start, o.start + len(o.got))]
        if o.got != expected:
            run.fail(BadPrefix, f"{o!r} got {o.got}")
            continue
        if "hang" in (o.opened, o.end):
            run.fail(Hang, f"{o!r} hung")
            continue
        if o.opened in ("error",) and not isinstance(o.error, ResumableStreamError):
            run.fail(BadEnd, f"{o!r}: untyped error at open")
        if o.opened != "reader":
            if o.opened == "none" and o.name.startswith("join") and not done:
                # resume_existing_stream(id) answers None only for a finished (DONE) stream.
                run.fail(BadEnd, f"{o!r}: None, but the stream is {stored and stored.status}")
            continue
        end = o.start + len(o.got)
        if o.name == "original":
            whole = o.got == [(i, text(i)) for i in range(produced)]
            cut = sc.cap_at is not None and source.yielded > sc.cap_at
            clean = (source.completed or source.stopped) and not (source.raised or cut)
            if o.end == "normal" and not (whole and clean):
                run.fail(BadEnd, f"{o!r}: a normal end, but the source did not complete "
                         f"with {produced} chunks (completed {source.completed})")
            if o.end == "error" and not isinstance(
                o.error, (ResumableStreamError, SourceError, CleanupError)
            ):
                run.fail(BadEnd, f"{o!r}: untyped error")
            continue
        # A resume after an index the stream never reached (the client claims more
        # than was stored) has nothing to get: it starts, and ends, past the end.
        if o.end == "normal" and not (done and end >= length):
            run.fail(BadEnd, f"{o!r}: a normal end at {end}, but the stored stream is "
                     f"{stored and stored.status} with {length} chunks")
        if o.end == "error" and not isinstance(o.error, ResumableStreamError):
            run.fail(BadEnd, f"{o!r}: untyped error")


async def check_poisoned(run: Run, stored: Any) -> None:
    """A late `resumable_stream(id)` never says "finished" for a record that stored
    nothing and whose producer is gone (a lost claim)."""
    orphan = (
        stored is not None and stored.length == 0 and stored.status is StreamStatus.RUNNING
        and not stored.lease_alive and not run.producers
    )
    if not orphan:
        return
    late = ResumableStreamContext(run.backend, ttl=TTL, options=OPTIONS)
    again = Source(Scenario(FaultPlan(), 0, None, False, None, None, ()))
    again.permits.put_nowait(None)
    try:
        try:
            stream = await asyncio.wait_for(late.resumable_stream(STREAM_ID, again), STEP_TIMEOUT)
        except ResumableStreamError:
            return  # a typed error: allowed
        if stream is None:
            run.fail(PoisonedId, "resumable_stream(id) answers None for an orphaned claim "
                     "that stored nothing")
            return
        outcome = Outcome("late", 0)
        await read(outcome, _ready(stream))
    finally:
        await asyncio.wait_for(late.aclose(), STEP_TIMEOUT)


async def _ready(stream: ResumableStream) -> ResumableStream:
    return stream


async def check_subscriptions(run: Run) -> None:
    inner = run.inner
    if isinstance(inner, MemoryBackend):
        subs = inner._subscribers.get(STREAM_ID)
        if subs:
            run.fail(LeakedSubscription, f"{len(subs)} subscriptions left on the memory backend")
    elif isinstance(inner, RedisBackend):
        channel = StreamKeys(run.prefix, STREAM_ID).events.encode()
        record = inner._hub._channels.get(channel)
        if record is not None and record.subscribers:
            run.fail(LeakedSubscription, f"{len(record.subscribers)} subscriptions left in the hub")


def verdict(run: Run) -> None:
    for line in run.notes:
        note(line)
    note(f"outcomes: {run.outcomes}")
    note(f"calls: {[(c.kind, c.n, c.fault and c.fault.name) for c in run.backend.calls]}")
    if run.violations:
        for v in run.violations:
            note(f"violation {type(v).__name__}: {v}")
        raise run.violations[0]


# -- the property ------------------------------------------------------------------------------


def harness_settings(examples: int, *, shrink: bool) -> settings:
    """Derandomized (the same examples each run), no database. The default run does not
    shrink (a failure there is reported as drawn); ``-m slow`` shrinks."""
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        phases=phases,
        print_blob=False,
    )




@pytest.fixture(scope="module")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@harness_settings(25, shrink=False)
@given(scenario=scenarios())
def test_harness_memory(scenario: Scenario) -> None:
    verdict(asyncio.run(run_scenario(scenario, "memory", None)))


@harness_settings(25, shrink=False)
@given(scenario=scenarios())
def test_harness_redis(redis_url: str, scenario: Scenario) -> None:
    verdict(asyncio.run(run_scenario(scenario, "redis", redis_url)))


# The same plans with the chunks pushed by the caller's task (the HTTP direct path).


@harness_settings(15, shrink=False)
@given(scenario=scenarios())
def test_harness_memory_pushed(scenario: Scenario) -> None:
    verdict(asyncio.run(run_scenario(scenario, "memory", None, pushed=True)))


@harness_settings(15, shrink=False)
@given(scenario=scenarios())
def test_harness_redis_pushed(redis_url: str, scenario: Scenario) -> None:
    verdict(asyncio.run(run_scenario(scenario, "redis", redis_url, pushed=True)))


@pytest.mark.slow
@pytest.mark.timeout(1800)
@harness_settings(300, shrink=True)
@given(scenario=scenarios())
def test_harness_pushed_long(redis_url: str, scenario: Scenario) -> None:
    verdict(asyncio.run(run_scenario(scenario, "redis", redis_url, pushed=True)))


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 300 plans with shrinking: far past the default 120 s
@harness_settings(300, shrink=True)
@given(scenario=scenarios())
def test_harness_memory_long(scenario: Scenario) -> None:
    verdict(asyncio.run(run_scenario(scenario, "memory", None)))


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 300 plans with shrinking: far past the default 120 s
@harness_settings(300, shrink=True)
@given(scenario=scenarios())
def test_harness_redis_long(redis_url: str, scenario: Scenario) -> None:
    verdict(asyncio.run(run_scenario(scenario, "redis", redis_url)))


# -- directed regression tests, one per known fault of issue 16 ------------------------------


@contextlib.asynccontextmanager
async def directed(
    kind: str, redis_url: str | None, plan: FaultPlan, options: StreamOptions = OPTIONS
) -> AsyncIterator[tuple[FaultyBackend, ResumableStreamContext, list[asyncio.Task[None]]]]:
    """A context on a faulty wrapper over a fresh backend; closed (bounded) at the end."""
    client: aioredis.Redis | None = None
    if kind == "memory":
        inner: Backend = MemoryBackend()
    else:
        assert redis_url is not None
        client = aioredis.Redis.from_url(redis_url)
        inner = RedisBackend(client, key_prefix=f"fh-{uuid.uuid4().hex[:10]}")
    backend = faulty(inner, plan)
    producers: list[asyncio.Task[None]] = []
    ctx = ResumableStreamContext(backend, ttl=TTL, options=options, wait_until=producers.append)
    try:
        yield backend, ctx, producers
    finally:
        backend.enabled = False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.aclose(), STEP_TIMEOUT)
        # A writer that outlived its producer (fault 2) must not outlive the test.
        writers = [
            task for task in asyncio.all_tasks()
            if getattr(task.get_coro(), "__qualname__", "") == "_Writer.run"
        ]
        for task in writers:
            task.cancel()
        if writers:
            await asyncio.wait(writers)
        for task in producers:  # a producer that raised (fault 2): seen here, not logged
            if task.done() and not task.cancelled():
                task.exception()
        await asyncio.wait_for(backend.aclose(), STEP_TIMEOUT)
        if client is not None:
            await client.aclose()


async def read_outcome(name: str, stream: ResumableStream | None) -> Outcome:
    outcome = Outcome(name, 0)
    await read(outcome, _ready(stream))  # type: ignore[arg-type]
    return outcome


async def chunks_of(items: list[str]) -> AsyncIterator[str]:
    for item in items:
        yield item


BACKEND_KINDS = ["memory", "redis"]


@pytest.fixture(params=BACKEND_KINDS)
def backend_kind(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    if request.param == "memory":
        return "memory", None
    server: RedisServer = request.getfixturevalue("redis_server")
    return "redis", server.url


async def _batch_fails(kind: str, url: str | None, plan: FaultPlan, items: list[str]) -> None:
    """``items[1:]`` come as one batch after ``items[0]`` was written, and the source
    ends only once that batch's write was started (from the write clock's timer, not
    with the end): the stream fails with a typed error, or every chunk is stored; never
    a DONE stream short of chunks."""
    async with directed(kind, url, plan) as (backend, ctx, producers):
        gates = [asyncio.Event(), asyncio.Event()]

        async def source() -> AsyncIterator[str]:
            yield items[0]
            await gates[0].wait()
            for item in items[1:]:
                yield item
            await gates[1].wait()

        # Watchers start before the calls they wait for (tasks run in order).
        first = asyncio.create_task(backend.next_call(("write_soon", "write"), "s", STEP_TIMEOUT))
        stream = await ctx.resumable_stream("s", source)
        assert stream is not None
        follower = await ctx.resume_existing_stream("s", after=-1)
        reads = [
            asyncio.create_task(read_outcome("original", stream)),
            asyncio.create_task(read_outcome("follower", follower)),
        ]
        assert await first is not None  # items[0] went out
        second = asyncio.create_task(backend.next_call(("write_soon", "write"), "s", STEP_TIMEOUT))
        gates[0].set()
        assert await second is not None  # the batch's write was started
        gates[1].set()
        _, follow = await asyncio.gather(*reads)
        await asyncio.wait(producers, timeout=STEP_TIMEOUT)
        snap = await backend.inner.snapshot("s", 0, 100)
        assert snap is not None
        if snap.status is StreamStatus.DONE:
            assert list(snap.chunks) == items, f"DONE with {snap.chunks}"
        assert follow.got == list(enumerate(items))[: len(follow.got)], follow.got
        if follow.end == "normal":
            assert [c for _, c in follow.got] == items, follow
        else:
            assert isinstance(follow.error, ResumableStreamError), follow
        late = await ctx.resume_existing_stream("s", after=0)
        if late is not None:
            rest = await read_outcome("late", late)
            assert rest.end != "normal" or [c for _, c in rest.got] == items[1:], rest


LONE_SURROGATE = ["a", "\ud800", "b"]


async def test_fault1_lone_surrogate_chunk_memory() -> None:
    """Fault 1 on memory: it stores ``str`` chunks as they are, so this passes today; it
    guards the rewrite (whatever it decides for lone surrogates, never DONE short)."""
    await _batch_fails("memory", None, FaultPlan(), LONE_SURROGATE)


async def test_fault1_lone_surrogate_chunk_redis(redis_server: RedisServer) -> None:
    """Fault 1 on Redis: msgpack cannot encode the chunk, `write_soon` raises in the
    write clock's timer, the batch vanishes and the stream ends DONE without it."""
    await _batch_fails("redis", redis_server.url, FaultPlan(), LONE_SURROGATE)


async def test_fault1_write_soon_raising_synchronously_memory() -> None:
    """Fault 1's mechanism on memory: `write_soon` raises before returning (as it does on
    Redis for an unencodable chunk); the batch must not vanish from a DONE stream."""
    plan = FaultPlan({("write_soon", 1): Fault.RAISE_SYNC})
    await _batch_fails("memory", None, plan, [text(0), text(1), text(2)])


class ClosingIterator:
    """A source object (an SDK's stream) whose ``aclose`` raises."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.sent = 0
        self.waiting = asyncio.Event()

    def __aiter__(self) -> ClosingIterator:
        return self

    async def __anext__(self) -> str:
        if self.sent:
            self.waiting.set()
            await self.gate.wait()
        self.sent += 1
        return text(self.sent - 1)

    async def aclose(self) -> None:
        raise CleanupError("aclose raised")


async def _ends_for_good(
    backend: FaultyBackend, ctx: ResumableStreamContext, producers: list[asyncio.Task[None]]
) -> None:
    """Fault 2's expectation: the unit ends, the status is final, nothing renews."""
    assert producers, "no producer started"
    await asyncio.wait(producers, timeout=STEP_TIMEOUT)
    assert producers[0].done()
    assert ctx.running_streams == 0
    late = await backend.next_write("s", OPTIONS.lease * 1.2)
    assert late is None, f"a {late.kind} call after the producer ended"
    status = await backend.inner.status("s")
    assert status in (StreamStatus.DONE, StreamStatus.FAILED)
    snap = await backend.inner.snapshot("s", 0, 0)
    assert snap is not None
    assert snap.status is not StreamStatus.RUNNING, snap


async def test_fault2_cleanup_raises_after_a_size_cut(backend_kind: tuple[str, str | None]) -> None:
    """The producer cuts the stream at ``max_stream_bytes`` and closes the source, whose
    ``finally`` raises: today the writer renews forever and the status stays RUNNING."""
    options = StreamOptions(**{**OPTIONS.__dict__, "max_stream_bytes": 9})
    async with directed(*backend_kind, FaultPlan(), options) as (backend, ctx, producers):

        async def source() -> AsyncIterator[str]:
            try:
                yield text(0)
                yield text(1)  # passes the cap
            finally:
                raise CleanupError("cleanup raised")

        stream = await ctx.resumable_stream("s", source)
        original = await read_outcome("original", stream)
        assert original.end == "error"
        await _ends_for_good(backend, ctx, producers)


async def test_fault2_cleanup_raises_after_stop_stream(
    backend_kind: tuple[str, str | None],
) -> None:
    """`ctx.stop_stream` closes a source object whose ``aclose`` raises: today the writer
    renews forever and the status stays RUNNING."""
    async with directed(*backend_kind, FaultPlan()) as (backend, ctx, producers):
        source = ClosingIterator()
        stream = await ctx.resumable_stream("s", lambda: source)
        reading = asyncio.create_task(read_outcome("original", stream))
        await asyncio.wait_for(source.waiting.wait(), STEP_TIMEOUT)
        assert await ctx.stop_stream("s")
        await reading
        await _ends_for_good(backend, ctx, producers)


async def test_fault4_caller_cancelled_while_its_claim_is_on_the_wire(
    backend_kind: tuple[str, str | None],
) -> None:
    """The claim lands, its caller is cancelled: once the lease lapsed the id must produce
    again or give a typed error, never None ("finished") for a stream that stored nothing."""
    plan = FaultPlan({("claim", 0): Fault.CANCEL})
    async with directed(*backend_kind, plan) as (backend, ctx, producers):
        first = ControlledChunks(["x"])
        claiming = asyncio.create_task(ctx.resumable_stream("s", first))
        backend.user_task(claiming)
        with pytest.raises(asyncio.CancelledError):
            await claiming
        await backend.drain()  # the claim landed
        assert first.started == 0
        assert not producers
        # A follower proves the lease lapsed (it ends with ProducerLost): no sleep.
        await until_no_producer(ctx)
        again = ControlledChunks(["y"])
        try:
            stream = await ctx.resumable_stream("s", again)
        except ResumableStreamError:
            return  # a typed error: allowed
        assert stream is not None, "None: the id is poisoned for its whole TTL"
        outcome = await read_outcome("again", stream)
        assert (outcome.end == "normal" and outcome.got == [(0, "y")]) or outcome.end == "error"


async def until_no_producer(ctx: ResumableStreamContext) -> None:
    """Wait, as a follower does, until the stream "s" has no live producer: the follower
    ends with a typed error (ProducerLost), or there is nothing to follow."""
    try:
        probe = await ctx.resume_existing_stream("s", after=-1)
    except ResumableStreamError:
        return
    if probe is not None:
        outcome = await read_outcome("probe", probe)
        assert outcome.end == "error", outcome


class ControlledChunks:
    """``make_stream`` for a fixed list of chunks, counting its calls."""

    def __init__(self, items: list[str]) -> None:
        self.items = items
        self.started = 0

    def __call__(self) -> AsyncIterator[str]:
        self.started += 1
        return chunks_of(self.items)


async def test_fault5_resume_after_a_position_confirms_a_lapse() -> None:
    """A live producer's loop stalls past its lease once; a resume with ``after=`` in
    another process during the lapse must confirm it as followers do (a poll_interval
    later), not answer None, and the stream then completes for it."""
    inner = MemoryBackend()
    producing = faulty(inner, FaultPlan({("renew", 0): Fault.HOLD}))
    elsewhere = faulty(inner, FaultPlan())
    ctx = ResumableStreamContext(producing, ttl=TTL, options=OPTIONS)
    other = ResumableStreamContext(elsewhere, ttl=TTL, options=OPTIONS)
    gate = asyncio.Event()

    async def source() -> AsyncIterator[str]:
        yield text(0)
        await gate.wait()
        yield text(1)

    try:
        stream = await ctx.resumable_stream("s", source)
        original = asyncio.create_task(read_outcome("original", stream))
        await asyncio.wait_for(producing.held("renew", 0).wait(), STEP_TIMEOUT)
        # The producer is stalled: a follower elsewhere proves the lease lapsed.
        probe = await read_outcome("probe", await other.resume_existing_stream("s", after=0))
        assert probe.end == "error", probe
        # The watcher task starts before the resume's (tasks run in order).
        looked = asyncio.create_task(elsewhere.next_call(("snapshot",), "s", STEP_TIMEOUT))
        resuming = asyncio.create_task(other.resume_existing_stream("s", after=0))
        assert await looked is not None  # the resume saw the lapse once...
        producing.release("renew", 0)  # ...and the producer's loop comes back at once
        resumed = await asyncio.wait_for(resuming, STEP_TIMEOUT)
        assert resumed is not None, "None (410) for a live stream after one lapsed look"
        gate.set()
        rest = await read_outcome("resumed", resumed)
        assert rest.got == [(1, text(1))], rest
        assert rest.end == "normal", rest
        await original
    finally:
        producing.release("renew", 0)
        gate.set()
        await asyncio.wait_for(ctx.aclose(), STEP_TIMEOUT)
        await asyncio.wait_for(other.aclose(), STEP_TIMEOUT)
        await inner.aclose()
