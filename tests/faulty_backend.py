"""A backend wrapper that injects faults into every call, for the fault harness (issue 16).

`faulty(inner, plan)` wraps a real backend (`MemoryBackend`, `RedisBackend`) and
delegates every call to it, except where ``plan`` says that the n-th call of a kind
goes wrong. The faults are the ones a real deployment sees:

* ``RAISE_SYNC``: the method raises before it returns, without awaiting (for
  ``write_soon``: an unencodable chunk, as msgpack does); nothing is applied.
* ``RAISE``: the call fails after an await with `BackendUnavailable`; nothing applied.
* ``LOST_REPLY``: the call is applied on the inner backend, then the caller gets
  `BackendUnavailable`, as a connection cut after the request went out would do.
* ``CANCEL``: the call goes out (it is applied) and the caller's task is cancelled while
  it is on the wire. Only tasks the test marks as the user's (`user_task`) are
  cancelled; in the library's own tasks (the writer) the fault acts as ``LOST_REPLY``.
  For ``write_soon`` the returned future is cancelled instead.
* ``DELAY``: the call waits ``plan.delay`` seconds (set it past the lease), then goes
  through: a stalled event loop or a slow link.
* ``HOLD``: the call waits until the test calls `release` (directed tests).

Call kinds: ``claim``, ``write`` (chunks or an end), ``renew`` (a write of no chunks
and no end: a lease renewal), ``write_soon``, ``snapshot``, ``subscribe``,
``request_stop``, ``status``. Calls are counted per kind from 0, over every stream.
The wrapper logs every call (`calls`), so a test can see what the core did and when.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from resumable_stream import Backend, BackendUnavailable, StreamStatus
from resumable_stream._subscription import Subscription
from resumable_stream._types import Chunk, Ended, Snapshot
from resumable_stream.backends._protocol import WritesSoon

__all__ = [
    "KINDS",
    "Call",
    "Fault",
    "FaultPlan",
    "FaultyBackend",
    "FaultyWritesSoonBackend",
    "InjectedError",
    "faulty",
]

T = TypeVar("T")

KINDS = (
    "claim", "write", "renew", "write_soon", "snapshot", "subscribe", "request_stop", "status"
)


class Fault(enum.Enum):
    """What goes wrong with one call (module docstring)."""

    RAISE_SYNC = "raise_sync"
    RAISE = "raise"
    LOST_REPLY = "lost_reply"
    CANCEL = "cancel"
    DELAY = "delay"
    HOLD = "hold"


class InjectedError(Exception):
    """A synchronous failure no retry fixes (what msgpack raises for a lone surrogate)."""


@dataclass(frozen=True)
class FaultPlan:
    """Which call goes wrong: ``faults[(kind, n)]`` for the n-th call of ``kind``."""

    faults: Mapping[tuple[str, int], Fault] = field(default_factory=dict)
    delay: float = 0.5

    def __repr__(self) -> str:
        items = ", ".join(f"({k!r}, {n}): Fault.{f.name}" for (k, n), f in self.faults.items())
        return f"FaultPlan({{{items}}}, delay={self.delay})"


@dataclass(frozen=True)
class Call:
    """One call the core made: its kind, its number within the kind, the stream, the
    fault injected (None if none) and when (loop time, at the call)."""

    kind: str
    n: int
    stream_id: str
    fault: Fault | None
    at: float


def _unavailable(kind: str, n: int, why: str) -> BackendUnavailable:
    return BackendUnavailable(f"injected: {why} ({kind} #{n})")


class FaultyBackend:
    """`Backend` over ``inner``, with the faults of ``plan`` (module docstring)."""

    def __init__(self, inner: Backend, plan: FaultPlan) -> None:
        self.inner = inner
        self.plan = plan
        self.enabled = True
        self.calls: list[Call] = []
        self._counts: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._user_tasks: set[asyncio.Task[Any]] = set()
        self._wire: set[asyncio.Task[Any]] = set()  # calls still out for a cancelled caller
        self._holds: dict[tuple[str, int], asyncio.Event] = {}
        self._held: dict[tuple[str, int], asyncio.Event] = {}
        self._called: asyncio.Event | None = None

    # -- the test's side ---------------------------------------------------------

    def user_task(self, task: asyncio.Task[Any]) -> None:
        """Mark ``task`` as the user's: ``CANCEL`` faults cancel it."""
        self._user_tasks.add(task)

    def held(self, kind: str, n: int) -> asyncio.Event:
        """Set once the ``HOLD`` call (kind, n) is waiting."""
        return self._held.setdefault((kind, n), asyncio.Event())

    def release(self, kind: str, n: int) -> None:
        """Let the ``HOLD`` call (kind, n) go on."""
        self._holds.setdefault((kind, n), asyncio.Event()).set()

    def writes_since(self, stream_id: str, at: float) -> list[Call]:
        """Write-path calls (write, renew, write_soon) for ``stream_id`` made at or after ``at``."""
        kinds = ("write", "renew", "write_soon")
        return [
            c for c in self.calls if c.stream_id == stream_id and c.kind in kinds and c.at >= at
        ]

    async def next_write(self, stream_id: str, timeout: float) -> Call | None:
        """Wait up to ``timeout`` for a new write-path call for ``stream_id``; None if none.

        For "nothing writes any more": the absence of a call is the success path."""
        return await self.next_call(("write", "renew", "write_soon"), stream_id, timeout)

    async def next_call(
        self, kinds: Sequence[str], stream_id: str, timeout: float
    ) -> Call | None:
        """Wait up to ``timeout`` for a new call of one of ``kinds`` for ``stream_id``
        (made after this call started); None if none came."""
        loop = asyncio.get_running_loop()
        seen = len(self.calls)
        deadline = loop.time() + timeout
        while True:
            for call in self.calls[seen:]:
                if call.stream_id == stream_id and call.kind in kinds:
                    return call
            seen = len(self.calls)
            left = deadline - loop.time()
            if left <= 0:
                return None
            self._called = self._called or asyncio.Event()
            self._called.clear()
            try:
                await asyncio.wait_for(self._called.wait(), left)
            except TimeoutError:
                return None

    async def drain(self) -> None:
        """Wait for the calls still out on behalf of cancelled callers."""
        if self._wire:
            await asyncio.wait(set(self._wire))

    # -- fault machinery -----------------------------------------------------------

    def _next(self, kind: str, stream_id: str) -> tuple[int, Fault | None]:
        n = self._counts[kind]
        self._counts[kind] = n + 1
        fault = self.plan.faults.get((kind, n)) if self.enabled else None
        self.calls.append(Call(kind, n, stream_id, fault, asyncio.get_running_loop().time()))
        if self._called is not None:
            self._called.set()
        return n, fault

    async def _wait(self, kind: str, n: int, fault: Fault) -> None:
        if fault is Fault.DELAY:
            await asyncio.sleep(self.plan.delay)  # the injected delay itself
        elif fault is Fault.HOLD:
            self.held(kind, n).set()
            await self._holds.setdefault((kind, n), asyncio.Event()).wait()

    def _cancellable(self) -> bool:
        task = asyncio.current_task()
        return task is not None and task in self._user_tasks

    async def _run(
        self,
        kind: str,
        stream_id: str,
        call: Callable[[], Awaitable[T]],
        discard: Callable[[T], Awaitable[None]] | None = None,
    ) -> T:
        """One async call under its fault. ``discard`` releases what an applied call
        returned that its caller will never see (a subscription)."""
        n, fault = self._next(kind, stream_id)
        if fault is None:
            return await call()
        if fault is Fault.RAISE_SYNC:
            raise _unavailable(kind, n, "refused before any await")
        if fault is Fault.RAISE:
            await asyncio.sleep(0)
            raise _unavailable(kind, n, "connection refused")
        if fault in (Fault.DELAY, Fault.HOLD):
            await self._wait(kind, n, fault)
            return await call()
        if fault is Fault.CANCEL and self._cancellable():
            wire = asyncio.ensure_future(call())
            self._wire.add(wire)
            wire.add_done_callback(self._wire.discard)
            if discard is not None:
                wire.add_done_callback(lambda f: self._discard_later(f, discard))
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            await asyncio.sleep(0)  # the cancellation lands here, with the call on the wire
            raise AssertionError("unreachable: the task was cancelled")
        # LOST_REPLY (and CANCEL in the library's own tasks): applied, reply lost.
        result = await call()
        if discard is not None:
            await discard(result)
        raise _unavailable(kind, n, "reply lost")

    def _discard_later(
        self, future: asyncio.Future[Any], discard: Callable[[Any], Awaitable[None]]
    ) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        closing = asyncio.ensure_future(discard(future.result()))
        self._wire.add(closing)
        closing.add_done_callback(self._wire.discard)

    # -- Backend ---------------------------------------------------------------------

    async def claim(
        self, stream_id: str, token: str, *, ttl: float, lease: float, metadata: bytes = b""
    ) -> StreamStatus | None:
        return await self._run(
            "claim", stream_id,
            lambda: self.inner.claim(stream_id, token, ttl=ttl, lease=lease, metadata=metadata),
        )

    async def write(
        self,
        stream_id: str,
        token: str,
        start: int,
        chunks: Sequence[Chunk],
        *,
        end: Ended | None,
        ttl: float,
        finished_ttl: float,
        lease: float,
    ) -> bool:
        kind = "renew" if not chunks and end is None else "write"
        return await self._run(
            kind, stream_id,
            lambda: self.inner.write(
                stream_id, token, start, chunks, end=end, ttl=ttl,
                finished_ttl=finished_ttl, lease=lease,
            ),
        )

    async def snapshot(self, stream_id: str, start: int, limit: int) -> Snapshot | None:
        return await self._run(
            "snapshot", stream_id, lambda: self.inner.snapshot(stream_id, start, limit)
        )

    async def request_stop(self, stream_id: str) -> bool:
        return await self._run(
            "request_stop", stream_id, lambda: self.inner.request_stop(stream_id)
        )

    async def status(self, stream_id: str) -> StreamStatus | None:
        return await self._run("status", stream_id, lambda: self.inner.status(stream_id))

    async def subscribe(self, stream_id: str, *, max_buffered_bytes: int) -> Subscription:
        return await self._run(
            "subscribe", stream_id,
            lambda: self.inner.subscribe(stream_id, max_buffered_bytes=max_buffered_bytes),
            discard=_close_subscription,
        )

    async def aclose(self) -> None:
        await self.drain()
        await self.inner.aclose()


async def _close_subscription(sub: Subscription) -> None:
    await sub.aclose()


class FaultyWritesSoonBackend(FaultyBackend):
    """`FaultyBackend` over a backend that has ``write_soon`` (it has it too)."""

    def write_soon(
        self,
        stream_id: str,
        token: str,
        start: int,
        chunks: Sequence[Chunk],
        *,
        end: Ended | None,
        ttl: float,
        finished_ttl: float,
        lease: float,
    ) -> asyncio.Future[bool] | None:
        inner = self.inner
        assert isinstance(inner, WritesSoon)
        n, fault = self._next("write_soon", stream_id)

        def start_inner() -> asyncio.Future[bool] | None:
            return inner.write_soon(
                stream_id, token, start, chunks, end=end, ttl=ttl,
                finished_ttl=finished_ttl, lease=lease,
            )

        if fault is None:
            return start_inner()
        if fault is Fault.RAISE_SYNC:
            raise InjectedError(f"injected: cannot encode the batch (write_soon #{n})")
        loop = asyncio.get_running_loop()
        result: asyncio.Future[bool] = loop.create_future()
        if fault is Fault.RAISE:
            loop.call_soon(_fail, result, _unavailable("write_soon", n, "connection refused"))
            return result
        if fault in (Fault.DELAY, Fault.HOLD):
            # A timer (or the test's release), not a task: writes started this way stay
            # in the order they were started, as the protocol wants.
            def later() -> None:
                inner_future = start_inner()
                if inner_future is None:
                    _fail(result, _unavailable("write_soon", n, "declined after a delay"))
                else:
                    inner_future.add_done_callback(lambda f: _chain(f, result))

            if fault is Fault.DELAY:
                loop.call_later(self.plan.delay, later)
            else:
                self.held("write_soon", n).set()
                hold = self._holds.setdefault(("write_soon", n), asyncio.Event())
                waiter = asyncio.ensure_future(hold.wait())
                self._wire.add(waiter)
                waiter.add_done_callback(self._wire.discard)
                waiter.add_done_callback(lambda _: later())
            return result
        inner_future = start_inner()
        if inner_future is None:
            return None
        if fault is Fault.CANCEL:
            inner_future.add_done_callback(lambda _: result.cancel())
        else:  # LOST_REPLY: applied, the caller hears of a cut
            inner_future.add_done_callback(
                lambda _: _fail(result, _unavailable("write_soon", n, "reply lost"))
            )
        return result


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _chain(source: asyncio.Future[Any], target: asyncio.Future[Any]) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif (error := source.exception()) is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())


def faulty(inner: Backend, plan: FaultPlan) -> FaultyBackend:
    """Wrap ``inner``; the wrapper has ``write_soon`` exactly when ``inner`` has it."""
    if isinstance(inner, WritesSoon):
        return FaultyWritesSoonBackend(inner, plan)
    return FaultyBackend(inner, plan)
