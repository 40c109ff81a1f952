"""Backend faults of issue 16: claims that poison an id, a half-open connection that
stalls every stream, `aclose` that strands calls, garbage on a channel that tears down
the shared pub/sub link, and a write that cannot be encoded.

Every wait is bounded. Where a call must stay pending (a stalled link), the test checks
that it did not finish within a short bound and then ends it; nothing sleeps in place
of an event.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator

import msgpack
import pytest
import redis.asyncio as aioredis

from resumable_stream import (
    BackendUnavailable,
    InvalidArgument,
    StreamOptions,
    StreamStatus,
    create_resumable_stream_context,
)
from resumable_stream._keys import StreamKeys
from resumable_stream.backends import Appended, Ended, Resync
from resumable_stream.backends.cluster import RedisClusterBackend
from resumable_stream.backends.redis import RedisBackend, decode_event

from .servers import RedisServer
from .tcp_proxy import FaultProxy, ProxiedConnection
from .test_faults import Reading, paced

STEP = 15.0
SLACK = 1.5  # on top of a computed bound, for a 2-core machine shared with other runs
TTL, LEASE = 60.0, 30.0


def storage(connection: ProxiedConnection) -> bool:
    """Not a pub/sub connection: one of the pool's (claims, writes, snapshots)."""
    return not connection.subscribed


async def write(backend: RedisBackend, sid: str, start: int, chunks: list[str]) -> bool:
    return await backend.write(
        sid, "t", start, chunks, end=None, ttl=TTL, finished_ttl=TTL, lease=LEASE
    )


# -- claims: every key keeps a TTL ----------------------------------------------------


async def test_claims_leave_no_key_without_a_ttl(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    backend = RedisBackend(redis_client, key_prefix=key_prefix)
    try:
        # A take-over of a released claim (a write of no chunks with lease 0)...
        assert await backend.claim("failed", "old", ttl=TTL, lease=LEASE) is None
        await backend.write(
            "failed", "old", 0, [], end=None, ttl=TTL, finished_ttl=TTL, lease=0,
        )
        assert await backend.claim("failed", "new", ttl=TTL, lease=LEASE) is None
        # ...of an orphaned claim whose lease lapsed...
        assert await backend.claim("orphan", "old", ttl=TTL, lease=0.05) is None
        for _ in range(250):  # a lease has no event to wait on: poll, bounded
            snap = await backend.snapshot("orphan", 0, 0)
            assert snap is not None
            if not snap.lease_alive:
                break
            await asyncio.sleep(0.02)
        assert await backend.claim("orphan", "new", ttl=TTL, lease=LEASE) is None
        # ...and a retried claim of a stream holding chunks.
        assert await backend.claim("retried", "t", ttl=TTL, lease=LEASE) is None
        await write(backend, "retried", 0, ["a"])
        assert await backend.claim("retried", "t", ttl=TTL, lease=LEASE) is None
        keys = [key async for key in redis_client.scan_iter(match=f"{key_prefix}*")]
        assert len(keys) == 7  # 3 meta, 3 leases, 1 list
        for key in keys:
            ttl = await redis_client.pttl(key)
            assert 0 < ttl <= TTL * 1000, (key, ttl)
    finally:
        await backend.aclose()


# -- command_timeout ----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, "2", True, None])
async def test_command_timeout_must_be_a_positive_number(
    redis_client: aioredis.Redis, bad: object
) -> None:
    with pytest.raises(InvalidArgument, match="command_timeout"):
        RedisBackend(redis_client, command_timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="command_timeout"):
        RedisBackend.from_url("redis://127.0.0.1:1", command_timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="command_timeout"):
        RedisClusterBackend.from_url(
            "redis://127.0.0.1:1", command_timeout=bad  # type: ignore[arg-type]
        )


@pytest.fixture
async def proxy(redis_server: RedisServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(redis_server.port) as made:
        yield made


@pytest.mark.timeout(60)
async def test_a_stalled_pipeline_fails_within_command_timeout_and_the_next_goes_on(
    proxy: FaultProxy, key_prefix: str
) -> None:
    """Fault 3: the pipeline's connection goes half-open. The write on it fails with
    `BackendUnavailable` within about ``command_timeout`` (it used to wait for ever),
    the connection is dropped, and the next write goes out on a fresh one."""
    timeout = 0.5
    client = aioredis.Redis(host="127.0.0.1", port=proxy.port)
    backend = RedisBackend(client, key_prefix=key_prefix, command_timeout=timeout)
    loop = asyncio.get_running_loop()
    try:
        for sid in ("a", "b"):
            assert await backend.claim(sid, "t", ttl=TTL, lease=LEASE) is None
        assert proxy.stall(storage) == 1  # the pool's only connection
        stalled = proxy.open()[0]
        began = loop.time()
        with pytest.raises(BackendUnavailable, match="command_timeout"):
            await asyncio.wait_for(write(backend, "a", 0, ["x"]), timeout + STEP)
        assert loop.time() - began < timeout + SLACK
        await proxy.wait_for(lambda: stalled.closed, STEP)  # dropped, never reused
        began = loop.time()
        assert await asyncio.wait_for(write(backend, "b", 0, ["y"]), STEP) is False
        assert loop.time() - began < timeout + SLACK
        # The timed-out write never reached Redis (the stall swallowed it): a retry at
        # the same index lands; had it landed, the index check would refuse the retry.
        assert await write(backend, "a", 0, ["x"]) is False
        snap = await backend.snapshot("a", 0, 10)
        assert snap is not None
        assert list(snap.chunks) == ["x"]
    finally:
        await backend.aclose()
        await client.aclose()


@pytest.mark.timeout(60)
async def test_a_stalled_snapshot_fails_within_command_timeout(
    proxy: FaultProxy, key_prefix: str
) -> None:
    """Fault 3, outside the pipeline: a snapshot (and a stop) on a half-open pooled
    connection fails within about ``command_timeout``."""
    timeout = 0.5
    client = aioredis.Redis(host="127.0.0.1", port=proxy.port)
    backend = RedisBackend(client, key_prefix=key_prefix, command_timeout=timeout)
    loop = asyncio.get_running_loop()
    try:
        assert await backend.claim("s", "t", ttl=TTL, lease=LEASE) is None
        for call in (backend.snapshot("s", 0, 10), backend.request_stop("s")):
            assert await backend.snapshot("s", 0, 0) is not None  # one healthy connection
            assert proxy.stall(storage) == 1
            stalled = next(c for c in proxy.open() if c.stalled)
            began = loop.time()
            with pytest.raises(BackendUnavailable, match="command_timeout"):
                await asyncio.wait_for(call, timeout + STEP)
            assert loop.time() - began < timeout + SLACK
            await proxy.wait_for(lambda c=stalled: c.closed, STEP)  # dropped, never reused
        assert await asyncio.wait_for(backend.snapshot("s", 0, 0), STEP) is not None
    finally:
        await backend.aclose()
        await client.aclose()


@pytest.mark.timeout(60)
async def test_a_stream_through_a_link_that_stalls_once_ends_done_with_every_chunk(
    proxy: FaultProxy, key_prefix: str
) -> None:
    """Fault 3, end to end: the producer's connection goes half-open half way through
    a stream. The write times out, the producer retries within ``retry_window`` on a
    fresh connection, and the stream ends DONE with every chunk, for the original
    reader, a follower and storage alike."""
    total = 200
    client = aioredis.Redis(host="127.0.0.1", port=proxy.port)
    backend = RedisBackend(client, key_prefix=key_prefix, command_timeout=0.3)
    options = StreamOptions(lease=2.0, poll_interval=0.25, shutdown_grace=2.0, retry_window=5.0)
    producers: list[asyncio.Task[None]] = []
    ctx = create_resumable_stream_context(backend, options=options, wait_until=producers.append)
    try:
        original = Reading(half_at=total // 2)
        stream = await ctx.create_new_resumable_stream("s", lambda: paced(total, 0.005))
        reading = asyncio.create_task(original.run(stream))
        follower = Reading()
        following = asyncio.create_task(follower.run(await ctx.resume_existing_stream("s")))
        await asyncio.wait_for(original.half.wait(), STEP)
        assert proxy.stall(storage) >= 1
        await asyncio.wait_for(asyncio.gather(reading, following), STEP)
        await asyncio.wait_for(asyncio.gather(*producers), STEP)
        assert original.whole(total), (original.error, len(original.got))
        assert follower.whole(total), (follower.error, len(follower.got))
        snap = await backend.snapshot("s", 0, total + 1)
        assert snap is not None
        assert (snap.status, snap.length) == (StreamStatus.DONE, total)
        assert sum(c.stalled and c.closed for c in proxy.opened) >= 1  # the stall was met
    finally:
        await ctx.aclose()
        await backend.aclose()
        await client.aclose()


# -- aclose fails what is in flight -------------------------------------------------------


@pytest.mark.timeout(60)
async def test_aclose_fails_the_pipeline_on_the_wire_and_the_queue(
    proxy: FaultProxy, key_prefix: str
) -> None:
    """Fault 9: calls on a stalled pipeline (no deadline to end them: a long
    ``command_timeout``) and calls queued behind it all get `BackendUnavailable`
    promptly when the backend closes; they used to wait for ever."""
    client = aioredis.Redis(host="127.0.0.1", port=proxy.port)
    backend = RedisBackend(client, key_prefix=key_prefix, command_timeout=60.0)
    try:
        for sid in ("a", "b", "c"):
            assert await backend.claim(sid, "t", ttl=TTL, lease=LEASE) is None
        assert proxy.stall(storage) == 1
        on_wire = asyncio.create_task(write(backend, "a", 0, ["x"]))
        done, _ = await asyncio.wait({on_wire}, timeout=0.3)
        assert not done  # stalled on the wire (nothing can answer it)
        queued = [
            asyncio.create_task(write(backend, "b", 0, ["y"])),
            asyncio.create_task(write(backend, "c", 0, [])),  # a renewal
            asyncio.create_task(backend.claim("d", "t", ttl=TTL, lease=LEASE)),
        ]
        loop = asyncio.get_running_loop()
        began = loop.time()
        await asyncio.wait_for(backend.aclose(), STEP)
        results = await asyncio.wait_for(
            asyncio.gather(on_wire, *queued, return_exceptions=True), STEP
        )
        assert loop.time() - began < SLACK
        for result in results:
            assert isinstance(result, BackendUnavailable), results
    finally:
        await backend.aclose()
        await client.aclose()


@pytest.mark.timeout(60)
async def test_a_claim_racing_the_context_close_fails_promptly(
    proxy: FaultProxy, key_prefix: str
) -> None:
    """Fault 9 as a user meets it: `resumable_stream()` whose claim is on a stalled
    connection while ``ctx.aclose()`` runs raises `BackendUnavailable` at once, long
    before ``command_timeout``."""
    client = aioredis.Redis(host="127.0.0.1", port=proxy.port)
    ctx = create_resumable_stream_context(client, key_prefix=key_prefix)  # owns its backend
    try:
        assert await ctx.has_existing_stream("warm") is None  # a pooled connection
        assert proxy.stall(storage) == 1
        claim = asyncio.create_task(ctx.resumable_stream("s", lambda: iter(["a"])))
        done, _ = await asyncio.wait({claim}, timeout=0.3)
        assert not done
        loop = asyncio.get_running_loop()
        began = loop.time()
        await asyncio.wait_for(ctx.aclose(), STEP)
        with pytest.raises(BackendUnavailable):
            await asyncio.wait_for(claim, STEP)
        assert loop.time() - began < 1.0  # command_timeout is 2 s by default
    finally:
        await ctx.aclose()
        await client.aclose()


@pytest.mark.timeout(60)
async def test_aclose_fails_subscribes_waiting_for_a_link_or_a_confirmation(
    proxy: FaultProxy, key_prefix: str
) -> None:
    """Fault 9 on the pub/sub side: a subscribe whose confirmation is lost on a stalled
    link, and one whose link is still connecting through a black hole, both fail with
    `BackendUnavailable` as soon as the backend closes, and no link is left open."""
    client = aioredis.Redis(host="127.0.0.1", port=proxy.port)
    backend = RedisBackend(client, key_prefix=key_prefix)
    loop = asyncio.get_running_loop()
    try:
        first = await asyncio.wait_for(backend.subscribe("a", max_buffered_bytes=1 << 20), STEP)
        assert proxy.stall(lambda c: c.subscribed) == 1
        waiting = asyncio.create_task(backend.subscribe("b", max_buffered_bytes=1 << 20))
        done, _ = await asyncio.wait({waiting}, timeout=0.3)
        assert not done
        began = loop.time()
        await asyncio.wait_for(backend.aclose(), STEP)
        with pytest.raises(BackendUnavailable):
            await asyncio.wait_for(waiting, STEP)
        with pytest.raises(BackendUnavailable):
            await asyncio.wait_for(first.get(None), STEP)
        assert loop.time() - began < 1.0  # the health interval is 3 s
        # A new link, through a black hole: the handshake never completes.
        proxy.stall_new = True
        connecting = asyncio.create_task(backend.subscribe("c", max_buffered_bytes=1 << 20))
        done, _ = await asyncio.wait({connecting}, timeout=0.3)
        assert not done
        began = loop.time()
        await asyncio.wait_for(backend.aclose(), STEP)
        with pytest.raises(BackendUnavailable, match="closed"):
            await asyncio.wait_for(connecting, STEP)
        assert loop.time() - began < 1.0
        await proxy.wait_for(lambda: not any(c.subscribed for c in proxy.open()), STEP)
    finally:
        await backend.aclose()
        await client.aclose()


# -- garbage on a channel --------------------------------------------------------------

P = msgpack.packb
GARBAGE = [
    b"\xc1",  # not msgpack
    b"",
    P(7),  # an unknown kind
    P("0") + P(0) + P("c"),  # a kind of the wrong type
    P(0) + P("x") + P("c"),  # a start that is not an int
    P(0) + P(-1) + P("c"),  # a negative start
    P(0) + P(True) + P("c"),  # a bool is no index
    P(0) + P(3),  # an append of nothing
    P(0) + P(3) + P([1, 2]),  # a chunk that is neither str nor bytes
    P(1) + P("running") + P(3) + P(""),  # an end that is no end
    P(1) + P("bogus") + P(3) + P(""),
    P(1) + P("done") + P("3") + P(""),  # a length that is not an int
    P(1) + P("done") + P(3) + P(5),  # an error that is not text
    P(1) + P("done") + P(3),  # truncated
    P(1) + P("done") + P(3) + P("") + P("extra"),
]


@pytest.mark.parametrize("garbage", GARBAGE)
def test_decode_event_refuses_what_write_lua_never_writes(garbage: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - msgpack's errors and ours, all ValueErrors
        decode_event(garbage)


def test_decode_event_reads_what_write_lua_writes() -> None:
    assert decode_event(P(0) + P(4) + P("a") + P(b"b")) == Appended(4, ("a", b"b"))
    assert decode_event(P(1) + P("done") + P(3) + P("")) == Ended(StreamStatus.DONE, 3)
    failed = Ended(StreamStatus.FAILED, 0, "boom")
    assert decode_event(P(1) + P("failed") + P(0) + P("boom")) == failed


@pytest.mark.timeout(60)
async def test_garbage_on_a_channel_is_dropped_and_the_link_kept(
    redis_client: aioredis.Redis, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Fault 10: undecodable messages (and well-formed ones with bad contents) on one
    stream's channel are dropped and logged once; readers of that stream and of another
    keep following on the same connection, with no `Resync`."""
    backend = RedisBackend(redis_client, key_prefix=key_prefix)
    try:
        sub_a = await backend.subscribe("a", max_buffered_bytes=1 << 20)
        sub_b = await backend.subscribe("b", max_buffered_bytes=1 << 20)
        links = [c["id"] for c in await redis_client.client_list(_type="pubsub")]
        assert len(links) == 1
        channel_a = StreamKeys(key_prefix, "a").events
        channel_b = StreamKeys(key_prefix, "b").events
        with caplog.at_level(logging.WARNING, logger="resumable_stream"):
            for n, garbage in enumerate(GARBAGE):
                await redis_client.publish(channel_a, garbage)
                # A good message after each bad one, on both channels: in order, so a
                # dropped link or a Resync would show up right here.
                await redis_client.publish(channel_a, P(0) + P(n) + P("ok"))
                await redis_client.publish(channel_b, P(0) + P(n) + P("ok"))
                for sub in (sub_a, sub_b):
                    event = await asyncio.wait_for(sub.get(None), STEP)
                    assert event == Appended(n, ("ok",)), (garbage, event)
        for sub in (sub_a, sub_b):
            assert sub.idle()
            assert not isinstance(await sub.get(0.05), Resync)
        dropped = [r for r in caplog.records if "undecodable" in r.getMessage()]
        assert len(dropped) == 1, [r.getMessage() for r in dropped]  # rate-limited
        assert channel_a in dropped[0].getMessage()
        after = [c["id"] for c in await redis_client.client_list(_type="pubsub")]
        assert after == links  # the same link
    finally:
        await backend.aclose()


# -- a chunk msgpack cannot encode ------------------------------------------------------


async def test_an_unencodable_chunk_raises_before_anything_is_queued(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    """A str with a lone surrogate (``json.loads`` hands those out) cannot be msgpack
    encoded: `write_soon` raises at once with nothing queued, `write` raises the same
    type, and the next write at the same index stores what it should."""
    backend = RedisBackend(redis_client, key_prefix=key_prefix)
    try:
        assert await backend.claim("s", "t", ttl=TTL, lease=LEASE) is None
        with pytest.raises(UnicodeEncodeError):
            backend.write_soon(
                "s", "t", 0, ["ok", "\ud800"], end=None, ttl=TTL, finished_ttl=TTL, lease=LEASE
            )
        with pytest.raises(UnicodeEncodeError):
            await write(backend, "s", 0, ["\udfff"])
        with pytest.raises(UnicodeEncodeError):
            await backend.write(
                "s", "t", 0, ["\ud800"], end=Ended(StreamStatus.DONE, 1),
                ttl=TTL, finished_ttl=TTL, lease=LEASE,
            )
        soon = backend.write_soon(
            "s", "t", 0, ["good"], end=None, ttl=TTL, finished_ttl=TTL, lease=LEASE
        )
        assert soon is not None
        assert await asyncio.wait_for(soon, STEP) is False  # index 0: nothing landed before
        await backend.write(
            "s", "t", 1, ["end"], end=Ended(StreamStatus.DONE, 2),
            ttl=TTL, finished_ttl=TTL, lease=LEASE,
        )
        snap = await backend.snapshot("s", 0, 10)
        assert snap is not None
        assert (snap.status, list(snap.chunks)) == (StreamStatus.DONE, ["good", "end"])
    finally:
        await backend.aclose()
