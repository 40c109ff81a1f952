"""The Redis wire code, written once (``backends/_wire.py``) and shared by the TCP, the
cluster and the REST backends: what each puts on the wire must be the same bytes."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from resumable_stream import Chunk, StreamStatus
from resumable_stream._keys import StreamKeys
from resumable_stream.backends import Backend, Ended, StaleProducer, WritesSoon
from resumable_stream.backends._wire import lease_ms, ms
from resumable_stream.backends.cluster import RedisClusterBackend
from resumable_stream.backends.redis import RedisBackend
from resumable_stream.backends.upstash import UpstashBackend

from .upstash_standin import UpstashStandin

TTL, LEASE = 60.0, 30.0
STEP = 10.0  # seconds any one wait here may take


def test_durations_in_milliseconds() -> None:
    assert [ms(s) for s in (0, 0.0001, 0.0019, 1.5, 60)] == [1, 1, 1, 1500, 60_000]
    # A lease of 0 (or less) is a released claim: write.lua deletes the lease now.
    assert [lease_ms(s) for s in (0, -1.0, 0.0001, 2.0)] == [0, 0, 1, 2000]


def test_the_wire_needs_no_redis_driver() -> None:
    """The REST backend shares the wire code and needs only httpx (its extra)."""
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "import resumable_stream.backends._wire\n"
        "import resumable_stream.backends.upstash\n"
        "assert not any(name.startswith('redis') for name in sys.modules if sys.modules[name])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


async def test_the_cluster_backend_stands_on_its_own() -> None:
    """Composed, not a `RedisBackend` built by skipping its ``__init__``; and no
    `WritesSoon`: its writes go one by one, so it has no ``write_soon`` to offer
    (before, it inherited one that always declined)."""
    client = RedisCluster(host="127.0.0.1", port=1)  # never connected here
    backend = RedisClusterBackend(client, key_prefix="p", command_timeout=1.5)
    try:
        assert not isinstance(backend, RedisBackend)
        assert not isinstance(backend, WritesSoon)
        assert isinstance(RedisBackend(aioredis.Redis(), key_prefix="p"), WritesSoon)
        assert backend.key_prefix == "p"
        ours = inspect.signature(RedisClusterBackend)
        theirs = inspect.signature(RedisBackend)
        assert list(ours.parameters)[1:] == list(theirs.parameters)[1:]
        assert [p.default for p in ours.parameters.values()][1:] == [
            p.default for p in theirs.parameters.values()
        ][1:]
    finally:
        await backend.aclose()
        await client.aclose()


async def _messages(pubsub: Any, n: int) -> list[bytes]:
    """The next ``n`` messages (all of them within STEP seconds)."""
    out: list[bytes] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STEP
    while len(out) < n:
        left = deadline - loop.time()
        assert left > 0, f"{len(out)} of {n} messages arrived"
        message = await asyncio.wait_for(pubsub.get_message(timeout=left), left + 1)
        if message is not None and message["type"] == "message":
            out.append(message["data"])
    return out


async def test_tcp_and_rest_put_the_same_bytes_on_the_wire(
    redis_client: aioredis.Redis, upstash_standin: UpstashStandin, key_prefix: str
) -> None:
    """The same writes through `RedisBackend` and `UpstashBackend`: the same stored
    values and the same announcements, byte for byte, and both read back alike."""
    tcp = RedisBackend(redis_client, key_prefix=key_prefix)
    rest = UpstashBackend(upstash_standin.url, upstash_standin.token, key_prefix=key_prefix)
    pubsub = redis_client.pubsub()
    channels = [StreamKeys(key_prefix, sid).events for sid in ("tcp", "rest")]
    try:
        await pubsub.subscribe(*channels)
        for _ in channels:  # both confirmed before anything is published
            confirmed = await asyncio.wait_for(pubsub.get_message(timeout=STEP), STEP + 1)
            assert confirmed is not None
            assert confirmed["type"] == "subscribe"
        announced = {}
        for backend, sid in ((tcp, "tcp"), (rest, "rest")):
            assert await backend.claim(sid, "tok", ttl=TTL, lease=LEASE, metadata=b"\0m") is None
            writes: list[tuple[int, list[Chunk]]] = [(0, ["a", b"\xff\r\n"]), (2, ["\u00e9" * 3])]
            for start, chunks in writes:
                assert not await backend.write(
                    sid, "tok", start, chunks, end=None, ttl=TTL, finished_ttl=TTL, lease=LEASE
                )
            failed = Ended(StreamStatus.FAILED, 3, "boom")
            assert not await backend.write(
                sid, "tok", 3, [], end=failed, ttl=TTL, finished_ttl=TTL, lease=LEASE
            )
            announced[sid] = await _messages(pubsub, 3)
        assert announced["tcp"] == announced["rest"]
        p = msgpack.packb
        assert announced["tcp"] == [
            p(0) + p(0) + p("a") + p(b"\xff\r\n"),
            p(0) + p(2) + p("\u00e9" * 3),
            p(1) + p("failed") + p(3) + p("boom"),
        ]
        stored = {}
        for sid in ("tcp", "rest"):
            k = StreamKeys(key_prefix, sid)
            stored[sid] = (
                await redis_client.lrange(k.chunks, 0, -1),
                await redis_client.hgetall(k.meta),
                await redis_client.exists(k.lease),
            )
        assert stored["tcp"] == stored["rest"]
        for backend in (tcp, rest):
            for sid in ("tcp", "rest"):
                snap = await backend.snapshot(sid, 0, 10)
                assert snap is not None
                assert (snap.status, snap.length, snap.error) == (StreamStatus.FAILED, 3, "boom")
                assert list(snap.chunks) == ["a", b"\xff\r\n", "\u00e9" * 3]
                assert snap.metadata == b"\0m"
                assert await backend.status(sid) is StreamStatus.FAILED
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await rest.aclose()
        await tcp.aclose()


@pytest.mark.parametrize("lease", [0, -1.0])
async def test_a_write_with_no_lease_releases_it_on_every_wire(
    redis_client: aioredis.Redis, upstash_standin: UpstashStandin, key_prefix: str, lease: float
) -> None:
    """A lease of 0 is a released claim on the TCP path (a renewal and a write alike) and over
    REST alike: the lease key is gone at once, the record stays running."""
    tcp = RedisBackend(redis_client, key_prefix=key_prefix)
    rest = UpstashBackend(upstash_standin.url, upstash_standin.token, key_prefix=key_prefix)
    try:
        cases: list[tuple[Backend, str, list[Chunk]]] = [
            (tcp, "renewal", []), (tcp, "write", ["x"]), (rest, "rest", ["x"])
        ]
        for backend, sid, chunks in cases:
            assert await backend.claim(sid, "tok", ttl=TTL, lease=LEASE) is None
            await backend.write(
                sid, "tok", 0, chunks, end=None, ttl=TTL, finished_ttl=TTL, lease=lease
            )
            assert await redis_client.exists(StreamKeys(key_prefix, sid).lease) == 0, sid
            snap = await backend.snapshot(sid, 0, 0)
            assert snap is not None
            assert (snap.status, snap.lease_alive) == (StreamStatus.RUNNING, False), sid
    finally:
        await rest.aclose()
        await tcp.aclose()


@pytest.mark.parametrize(
    "chunks",
    [["a"], [b"\x00\xff", "x" * 40_000], ["é", "日本", b"", ""], [f"{i}," for i in range(300)]],
)
def test_a_packed_write_is_the_call_it_packs(chunks: list[Chunk]) -> None:
    """A pipeline's pre-packed `write.lua` command is byte for byte the generic packing
    of the same call, for one stream and for several, with an end and without, for a
    fresh stream and for one whose fixed parts are cached."""
    from resumable_stream.backends._wire import Wire, pack_call, scripts

    script = scripts().write
    failed = Ended(StreamStatus.FAILED, 0, "RuntimeError: é")
    for publish in ("PUBLISH", "SPUBLISH"):
        wire = Wire("p", publish=publish)
        k = StreamKeys("p", "id with spaces {x}")
        other = StreamKeys("p", "other")
        for start in (0, 7, 123_456):
            for ttl, finished, lease in ((TTL, 5.0, LEASE), (1.5, 1.5, 0.0)):
                for end in (None, failed):
                    call = wire.write_call(k, "tok", start, chunks, end, ttl, finished, lease)
                    part = wire.write_part(k, "tok", start, chunks, end, ttl, finished, lease)
                    assert wire.write_command(script, [part]) == pack_call(script.head, call)
                    # Three streams in one call: every stream's keys, then every one's
                    # arguments, in the same order.
                    second = wire.write_call(other, "t2", 3, [], None, ttl, finished, lease)
                    calls = [call, second, call]
                    parts = [
                        part, wire.write_part(other, "t2", 3, [], None, ttl, finished, lease),
                        part,
                    ]  # fmt: skip
                    args = [key for c in calls for key in c[:3]] + [publish]
                    args += [arg for c in calls for arg in c[4:]]
                    expected = pack_call(script.head_for(9), args)
                    assert wire.write_command(script, parts) == expected


def test_each_value_of_a_write_reply_means_one_thing() -> None:
    """`write_outcome`, shared by every transport: a stop flag, a typed refusal, the
    transport's own error for a command Redis refused, and a clear error for a value
    write.lua never answers."""
    from resumable_stream.backends._wire import write_outcome

    class Refused(Exception):
        pass

    assert write_outcome("s", 0, 0, Refused) is False
    assert write_outcome("s", 0, 1, Refused) is True
    for value, deleted in ((-1, False), (-2, False), (-3, True)):
        with pytest.raises(StaleProducer) as caught:
            write_outcome("s", 7, value, Refused)
        assert caught.value.deleted is deleted
    with pytest.raises(StaleProducer, match="write at 7"):
        write_outcome("s", 7, -2, Refused)
    for text, shown in ((b"OOM command not allowed", "OOM"), ("WRONGTYPE Operation", "WRONG")):
        with pytest.raises(Refused, match=shown):
            write_outcome("s", 0, text, Refused)
    with pytest.raises(ValueError, match="answered -9"):
        write_outcome("s", 0, -9, Refused)
