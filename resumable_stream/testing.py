"""The backend contract as checks a backend written outside this package can run.

Each check is an ``async`` function taking a fresh `Backend`; it raises
`AssertionError` with a message that names what the backend got wrong. Nothing here
imports pytest. Run them all with `check_backend`::

    import asyncio
    from resumable_stream.testing import check_backend

    asyncio.run(check_backend(lambda: MyBackend(...)))

or one test per check, under pytest (with an asyncio plugin)::

    @pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
    async def test_contract(check):
        backend = MyBackend(...)
        try:
            await check(backend)
        finally:
            await backend.aclose()

The checks use stream ids of their own (random), so a shared database is fine. Some
wait for a lease or an expiry to lapse (leases of 0.2 s, about a second at most each):
a lease has no event to wait on, so they poll the backend, bounded in time.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import Awaitable, Callable, Sequence

from ._types import Appended, Chunk, Ended, Resync, Snapshot, StreamStatus
from .backends._protocol import Backend, Deletes, StaleProducer, WritesSoon

__all__ = ["CHECKS", "BackendFactory", "Check", "check_backend"]

Check = Callable[[Backend], Awaitable[None]]
"""One check: an async function of a fresh backend that raises `AssertionError`."""

BackendFactory = Callable[[], "Backend | Awaitable[Backend]"]
"""Makes a fresh backend (or an awaitable of one) for each check."""

_TTL = 60.0
_LEASE = 30.0
_SHORT = 0.2  # a lease or ttl the checks wait out
_PATIENCE = 5.0  # seconds any one wait may take before the check fails
_BUDGET = 1 << 20


def _sid(what: str) -> str:
    return f"contract-{what}-{uuid.uuid4().hex[:10]}"


async def _write(
    backend: Backend,
    stream_id: str,
    token: str,
    start: int,
    chunks: Sequence[Chunk],
    end: Ended | None = None,
    *,
    ttl: float = _TTL,
    finished_ttl: float = _TTL,
    lease: float = _LEASE,
) -> bool:
    return await backend.write(
        stream_id, token, start, chunks, end=end, ttl=ttl, finished_ttl=finished_ttl,
        lease=lease,
    )


async def _refused(what: str, write: Awaitable[bool]) -> None:
    try:
        await write
    except StaleProducer:
        return
    raise AssertionError(f"{what}: the write was accepted, expected StaleProducer")


async def _snap(backend: Backend, stream_id: str, start: int = 0, limit: int = 1000) -> Snapshot:
    snap = await backend.snapshot(stream_id, start, limit)
    assert snap is not None, f"snapshot({stream_id!r}) is None: the record is missing"
    return snap


async def _until(what: str, probe: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``probe`` until it holds (a lapse or an expiry, which no event announces)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _PATIENCE
    while not await probe():
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not within {_PATIENCE:g} s")
        await asyncio.sleep(0.02)  # polling a clock-driven expiry, not synchronisation


async def _lapse(backend: Backend, stream_id: str) -> None:
    async def lapsed() -> bool:
        return not (await _snap(backend, stream_id, 0, 0)).lease_alive

    await _until(f"the lease of {stream_id!r} ({_SHORT:g} s) lapses", lapsed)


# -- claims --------------------------------------------------------------------------


async def check_claim_is_atomic(backend: Backend) -> None:
    """Of concurrent claims with distinct tokens exactly one wins; the others see RUNNING."""
    sid = _sid("atomic")
    results = await asyncio.gather(
        *(backend.claim(sid, f"token-{n}", ttl=_TTL, lease=_LEASE) for n in range(10))
    )
    winners = [n for n, r in enumerate(results) if r is None]
    assert len(winners) == 1, f"{len(winners)} of 10 concurrent claims won: {results}"
    others = {r for r in results if r is not None}
    assert others == {StreamStatus.RUNNING}, f"the losing claims answered {others}"


async def check_claim_is_idempotent(backend: Backend) -> None:
    """A claim retried with its own token (its reply was lost) makes it the producer."""
    sid = _sid("idempotent")
    assert await backend.claim(sid, "mine", ttl=_TTL, lease=_LEASE, metadata=b"m") is None
    again = await backend.claim(sid, "mine", ttl=_TTL, lease=_LEASE, metadata=b"m")
    assert again is None, f"a retried claim with the same token answered {again}"
    other = await backend.claim(sid, "theirs", ttl=_TTL, lease=_LEASE)
    assert other is StreamStatus.RUNNING, f"another token's claim answered {other}"
    assert await _write(backend, sid, "mine", 0, ["a"]) is False
    assert list((await _snap(backend, sid)).chunks) == ["a"]


async def check_claim_reports_ended_streams(backend: Backend) -> None:
    """A stream that ended with chunks stays: DONE or FAILED as stored, never taken over."""
    for status in (StreamStatus.DONE, StreamStatus.FAILED):
        sid = _sid(status.value)
        assert await backend.claim(sid, "first", ttl=_TTL, lease=_LEASE) is None
        end = Ended(status, 1, "boom" if status is StreamStatus.FAILED else None)
        await _write(backend, sid, "first", 0, ["a"], end)
        got = await backend.claim(sid, "second", ttl=_TTL, lease=_LEASE)
        assert got is status, f"a claim of a {status.value} stream answered {got}"
        snap = await _snap(backend, sid)
        assert (snap.status, list(snap.chunks)) == (status, ["a"]), f"the record changed: {snap}"
    sid = _sid("empty-done")
    assert await backend.claim(sid, "first", ttl=_TTL, lease=_LEASE) is None
    await _write(backend, sid, "first", 0, [], Ended(StreamStatus.DONE, 0))
    got = await backend.claim(sid, "second", ttl=_TTL, lease=_LEASE)
    assert got is StreamStatus.DONE, f"a claim of an empty DONE stream answered {got}"


async def check_claim_keeps_an_empty_failed_stream(backend: Backend) -> None:
    """A FAILED stream is never taken over, even one that stored nothing (a "storage
    lost" marker keeps its id from being produced twice)."""
    sid = _sid("failed-empty")
    assert await backend.claim(sid, "old", ttl=_TTL, lease=_LEASE, metadata=b"old") is None
    await _write(backend, sid, "old", 0, [], Ended(StreamStatus.FAILED, 0, "storage lost"))
    got = await backend.claim(sid, "new", ttl=_TTL, lease=_LEASE, metadata=b"new")
    assert got is StreamStatus.FAILED, f"a claim of a failed stream with no chunks answered {got}"
    snap = await _snap(backend, sid)
    kept = (snap.status, snap.length, snap.error, snap.metadata)
    assert kept == (StreamStatus.FAILED, 0, "storage lost", b"old"), f"not kept: {snap}"


async def check_claim_takes_over_an_empty_lapsed_stream(backend: Backend) -> None:
    """A RUNNING stream with no chunks whose lease lapsed (an orphaned claim) is taken
    over; one whose lease lapsed after storing chunks is reported RUNNING, as stored."""
    empty, used = _sid("lapsed-empty"), _sid("lapsed-used")
    assert await backend.claim(empty, "old", ttl=_TTL, lease=_SHORT) is None
    assert await backend.claim(used, "old", ttl=_TTL, lease=_LEASE) is None
    await _write(backend, used, "old", 0, ["a"], lease=_SHORT)
    await _lapse(backend, empty)
    await _lapse(backend, used)
    got = await backend.claim(empty, "new", ttl=_TTL, lease=_LEASE, metadata=b"n")
    assert got is None, f"a claim of an orphaned empty stream answered {got}"
    snap = await _snap(backend, empty)
    assert (snap.status, snap.lease_alive, snap.metadata) == (StreamStatus.RUNNING, True, b"n")
    got = await backend.claim(used, "new", ttl=_TTL, lease=_LEASE)
    assert got is StreamStatus.RUNNING, (
        f"a claim of a lapsed stream holding chunks answered {got}: expected RUNNING as "
        "stored (the core judges leases), and never a take-over"
    )
    assert list((await _snap(backend, used)).chunks) == ["a"]


# -- writes, snapshots, stop ---------------------------------------------------------


async def check_writes_append_in_order(backend: Backend) -> None:
    """Writes append at the stored length, keep each chunk's type, and end the stream;
    snapshots read ranges of them."""
    sid = _sid("order")
    assert await backend.snapshot(sid, 0, 10) is None, "a stream nobody claimed exists"
    assert await backend.claim(sid, "t", ttl=_TTL, lease=_LEASE, metadata=b"\x00meta") is None
    assert await _write(backend, sid, "t", 0, ["a", b"\x00\xff"]) is False
    assert await _write(backend, sid, "t", 2, []) is False  # a renewal
    assert await _write(backend, sid, "t", 2, ["c"]) is False
    snap = await _snap(backend, sid)
    assert (snap.status, snap.length) == (StreamStatus.RUNNING, 3), snap
    assert list(snap.chunks) == ["a", b"\x00\xff", "c"], f"chunks as stored: {snap.chunks!r}"
    assert snap.metadata == b"\x00meta", f"metadata as stored: {snap.metadata!r}"
    assert list((await _snap(backend, sid, 1, 1)).chunks) == [b"\x00\xff"]
    assert list((await _snap(backend, sid, 0, 0)).chunks) == [], "limit 0 read chunks"
    assert list((await _snap(backend, sid, 5, 10)).chunks) == [], "a range past the end"
    await _write(backend, sid, "t", 3, ["d"], Ended(StreamStatus.FAILED, 4, "broke"))
    snap = await _snap(backend, sid)
    assert (snap.status, snap.length, snap.error) == (StreamStatus.FAILED, 4, "broke"), snap


async def check_writes_are_refused_when_stale(backend: Backend) -> None:
    """A write at another index than the stored length, by another token, to an ended
    stream or to no stream raises `StaleProducer` and stores nothing."""
    sid = _sid("stale")
    await _refused("a write to no stream", _write(backend, sid, "t", 0, ["a"]))
    assert await backend.claim(sid, "t", ttl=_TTL, lease=_LEASE) is None
    await _write(backend, sid, "t", 0, ["a"])
    await _refused("a write at 0 over 1 stored chunk", _write(backend, sid, "t", 0, ["x"]))
    await _refused("a write at 2 past 1 stored chunk", _write(backend, sid, "t", 2, ["x"]))
    await _refused("another token's write", _write(backend, sid, "other", 1, ["x"]))
    await _write(backend, sid, "t", 1, [], Ended(StreamStatus.DONE, 1))
    await _refused("a write after the end", _write(backend, sid, "t", 1, ["x"]))
    snap = await _snap(backend, sid)
    assert (snap.status, list(snap.chunks)) == (StreamStatus.DONE, ["a"]), snap


async def check_request_stop(backend: Backend) -> None:
    """`request_stop` flags a running stream; its producer's next write reports it."""
    sid = _sid("stop")
    assert await backend.request_stop(sid) is False, "stopped a stream that does not exist"
    assert await backend.claim(sid, "t", ttl=_TTL, lease=_LEASE) is None
    assert await _write(backend, sid, "t", 0, ["a"]) is False
    assert await backend.request_stop(sid) is True
    assert await _write(backend, sid, "t", 1, ["b"]) is True, "the write missed the stop flag"
    assert await _write(backend, sid, "t", 2, []) is True, "the renewal missed the stop flag"
    await _write(backend, sid, "t", 2, [], Ended(StreamStatus.DONE, 2))
    assert await backend.request_stop(sid) is False, "stopped a stream that ended"


async def check_write_soon(backend: Backend) -> None:
    """If the backend is a `WritesSoon`: writes started one after another, without
    awaiting, are applied in order and resolve as `write` would."""
    if not isinstance(backend, WritesSoon):
        return
    sid = _sid("soon")
    assert await backend.claim(sid, "t", ttl=_TTL, lease=_LEASE) is None
    futures = []
    for n in range(3):
        future = backend.write_soon(
            sid, "t", n, [f"c{n}"], end=None, ttl=_TTL, finished_ttl=_TTL, lease=_LEASE
        )
        if future is None:
            await _write(backend, sid, "t", n, [f"c{n}"])
        else:
            futures.append(future)
    assert all(r is False for r in await asyncio.gather(*futures))
    assert list((await _snap(backend, sid)).chunks) == ["c0", "c1", "c2"]
    stale = backend.write_soon(
        sid, "t", 0, ["x"], end=None, ttl=_TTL, finished_ttl=_TTL, lease=_LEASE
    )
    if stale is not None:
        await _refused("write_soon at a stale index", stale)


# -- expiry ----------------------------------------------------------------------------


async def check_delete(backend: Backend) -> None:
    """If the backend is a `Deletes`: a deleted stream reads as absent, refuses its
    producer as deleted, answers FAILED to a claim while its tombstone lasts, tells
    subscribers it ended, and a second delete finds nothing."""
    if not isinstance(backend, Deletes):
        return
    sid = _sid("delete")
    assert await backend.claim(sid, "t", ttl=_TTL, lease=_LEASE) is None
    await _write(backend, sid, "t", 0, ["a", "b"])
    feed = await backend.subscribe(sid, max_buffered_bytes=_BUDGET)
    try:
        assert await backend.delete(sid, ttl=_TTL) is True, "delete of a stream answered False"
        assert await backend.snapshot(sid, 0, 10) is None, "a deleted stream is still read"
        assert await backend.deleted(sid) is True, "deleted() is False after a delete"
        refusal: StaleProducer | None = None
        try:
            await _write(backend, sid, "t", 2, ["c"])
        except StaleProducer as exc:
            refusal = exc
        assert refusal is not None, "the producer of a deleted stream could still write"
        assert refusal.deleted, f"the producer's refusal does not say deleted: {refusal!r}"
        got = await backend.claim(sid, "new", ttl=_TTL, lease=_LEASE)
        assert got is StreamStatus.FAILED, f"a claim during the tombstone answered {got}"
        # Subscribers are told: an end, or a resync after which storage reads as absent.
        event = await feed.get(_PATIENCE)
        told = isinstance(event, Ended) or (
            isinstance(event, Resync) and await backend.snapshot(sid, 0, 0) is None
        )
        assert told, f"subscribers were told {event!r}, not an end"
        assert await backend.delete(sid, ttl=_TTL) is False, "a second delete answered True"
        other = _sid("never")
        assert await backend.delete(other, ttl=_TTL) is False, "delete of no stream: True"
        assert await backend.deleted(other) is False, "deleted() of no stream is True"
    finally:
        await feed.aclose()


async def check_records_expire(backend: Backend) -> None:
    """A running record lives ``ttl`` past its last write, an ended one ``finished_ttl``;
    a take-over sets the new claim's ``ttl``."""
    running, ended, taken = _sid("ttl-running"), _sid("ttl-ended"), _sid("ttl-taken")
    assert await backend.claim(running, "t", ttl=_SHORT, lease=_SHORT) is None
    assert await backend.claim(ended, "t", ttl=_TTL, lease=_LEASE) is None
    await _write(backend, ended, "t", 0, ["a"], Ended(StreamStatus.DONE, 1), finished_ttl=_SHORT)
    assert await backend.claim(taken, "old", ttl=_TTL, lease=_LEASE) is None
    await _write(backend, taken, "old", 0, [], lease=0)  # released: lapsed at once
    assert await backend.claim(taken, "new", ttl=_SHORT, lease=_SHORT) is None
    for sid in (running, ended, taken):

        async def gone(sid: str = sid) -> bool:
            return await backend.snapshot(sid, 0, 0) is None

        await _until(f"{sid!r} expires after {_SHORT:g} s", gone)


# -- the live feed ---------------------------------------------------------------------


async def check_subscribe_before_read(backend: Backend) -> None:
    """Every write completed after `subscribe` returned reaches the subscriber: as
    `Appended` and `Ended` events, or as a `Resync` after which storage holds it."""
    sid = _sid("feed")
    assert await backend.claim(sid, "t", ttl=_TTL, lease=_LEASE) is None
    sub = await backend.subscribe(sid, max_buffered_bytes=_BUDGET)
    try:
        await _write(backend, sid, "t", 0, ["a", b"b"])
        await _write(backend, sid, "t", 2, ["c"], Ended(StreamStatus.DONE, 3))
        seen: list[Chunk | None] = [None] * 3
        end: Ended | None = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _PATIENCE
        while end is None or None in seen:
            left = deadline - loop.time()
            event = await sub.get(left) if left > 0 else None
            if event is None:
                raise AssertionError(
                    f"the subscriber saw chunks {seen} and end {end} within {_PATIENCE:g} s"
                )
            if isinstance(event, Appended):
                assert type(event.start) is int, f"a start that is not an int: {event}"
                assert event.start >= 0, f"a negative start: {event}"
                for n, chunk in enumerate(event.chunks, event.start):
                    assert n < 3, f"an announced chunk past the end: {event}"
                    seen[n] = chunk
            elif isinstance(event, Ended):
                assert (event.status, event.length) == (StreamStatus.DONE, 3), event
                end = event
            elif isinstance(event, Resync):
                snap = await _snap(backend, sid)
                for n, chunk in enumerate(snap.chunks):
                    seen[n] = chunk
                if snap.status is not StreamStatus.RUNNING:
                    end = Ended(snap.status, snap.length, snap.error)
            else:
                raise AssertionError(f"not a live event: {event!r}")
        assert seen == ["a", b"b", "c"], f"announced chunks, in order and type: {seen!r}"
    finally:
        await sub.aclose()


CHECKS: tuple[Check, ...] = (
    check_claim_is_atomic,
    check_claim_is_idempotent,
    check_claim_reports_ended_streams,
    check_claim_keeps_an_empty_failed_stream,
    check_claim_takes_over_an_empty_lapsed_stream,
    check_writes_append_in_order,
    check_writes_are_refused_when_stale,
    check_request_stop,
    check_write_soon,
    check_delete,
    check_records_expire,
    check_subscribe_before_read,
)
"""Every check, in an order that reads as the contract (claims first)."""


async def check_backend(
    make_backend: BackendFactory, *, checks: Sequence[Check] = CHECKS
) -> None:
    """Run ``checks`` (all by default), each on a fresh backend that is closed after it.

    Args:
        make_backend: makes a backend (a plain or an async function).
        checks: the checks to run.

    Raises:
        AssertionError: the first check that failed, its name in the message.
    """
    for check in checks:
        made = make_backend()
        backend: Backend = await made if inspect.isawaitable(made) else made
        try:
            await check(backend)
        except AssertionError as exc:
            raise AssertionError(f"{check.__name__}: {exc}") from exc
        finally:
            await backend.aclose()
