"""What only a real Redis server can show: keys, TTLs, one pub/sub connection, reconnects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import ResponseError

from resumable_stream import StreamOptions, create_resumable_stream_context
from resumable_stream._keys import StreamKeys
from resumable_stream._types import Appended, Ended, StreamStatus
from resumable_stream.backends import StaleProducer
from resumable_stream.backends.redis import RedisBackend

from .conftest import FAST
from .helpers import ControlledSource, read_all, read_n
from .servers import RedisServer


async def keys_with_ttl(client: aioredis.Redis, prefix: str) -> dict[bytes, int]:
    return {k: await client.pttl(k) async for k in client.scan_iter(f"{prefix}:*")}


@pytest.mark.parametrize(
    "stream_id", ["plain", "a}b", "{x}", "a{b}c", "100%", "sp ace", "new\nline", "\u00e9\U0001f600"]
)
async def test_ids_stay_inside_their_hash_tag(
    redis_client: aioredis.Redis, key_prefix: str, stream_id: str
) -> None:
    keys = StreamKeys(key_prefix, stream_id)
    names = [keys.meta, keys.chunks, keys.lease, keys.events]
    assert len({key_slot(n.encode()) for n in names}) == 1
    ctx = create_resumable_stream_context(redis_client, key_prefix=key_prefix, options=FAST)
    stream = await ctx.resumable_stream(stream_id, lambda: iter([stream_id]))
    assert await read_all(stream) == stream_id
    replay = await ctx.resume_existing_stream(stream_id, after=-1)
    assert await read_all(replay) == stream_id
    await ctx.aclose()


async def test_ids_do_not_collide(redis_client: aioredis.Redis, key_prefix: str) -> None:
    ids = ["a", "a%7D", "a}", "a%", "a%25", "{a}", "%7Ba%7D"]
    assert len({StreamKeys(key_prefix, i).meta for i in ids}) == len(ids)
    ctx = create_resumable_stream_context(redis_client, key_prefix=key_prefix, options=FAST)
    for i in ids:
        assert await read_all(await ctx.resumable_stream(i, lambda i=i: iter([i]))) == i
    for i in ids:
        assert await read_all(await ctx.resume_existing_stream(i, after=-1)) == i
    await ctx.aclose()


async def test_every_key_has_a_ttl(redis_client: aioredis.Redis, key_prefix: str) -> None:
    ctx = create_resumable_stream_context(
        redis_client, key_prefix=key_prefix, ttl=600,
        options=StreamOptions(lease=1.0, poll_interval=0.25, finished_ttl=60),
    )
    running = ControlledSource()
    await ctx.resumable_stream("running", running)
    running.write("x")
    done = await ctx.resumable_stream("done", lambda: iter(["a", "b"]))
    await read_all(done)

    async def boom() -> AsyncIterator[str]:
        yield "a"
        raise ValueError("boom")

    failed = await ctx.resumable_stream("failed", boom)
    with pytest.raises(ValueError, match="boom"):
        await read_all(failed)
    follower = await ctx.resume_existing_stream("running")
    assert await read_n(follower, 1) == "x"  # the chunk is stored by now
    ttls = await keys_with_ttl(redis_client, key_prefix)
    assert len(ttls) == 3 + 2 + 2  # running: meta, chunks, lease; ended: meta, chunks
    assert all(ttl > 0 for ttl in ttls.values()), ttls
    finished = {k: v for k, v in ttls.items() if b"running" not in k}
    assert all(ttl <= 60_000 for ttl in finished.values())
    running.close()
    assert await read_all(follower) == ""
    await ctx.aclose()


async def test_client_that_decodes_responses(redis_server: RedisServer, key_prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    ctx = create_resumable_stream_context(client, key_prefix=key_prefix, options=FAST)
    stream = await ctx.resumable_stream("s", lambda: iter([b"\xff\x00", "text"]))
    assert [c async for c in stream] == [b"\xff\x00", "text"]
    await ctx.aclose()
    assert await client.ping()  # the user's client is not closed
    await client.aclose()


async def test_one_pubsub_connection_for_many_readers(
    redis_server: RedisServer, key_prefix: str
) -> None:
    # A pool of 20 connections serves 150 concurrent readers in another process: they
    # share one pub/sub connection instead of taking one each. The 150 followers in the
    # producers' own process take none: their producers feed them.
    producing = aioredis.Redis.from_url(redis_server.url)
    ctx = create_resumable_stream_context(producing, key_prefix=key_prefix, options=FAST)
    client = aioredis.Redis.from_url(redis_server.url, max_connections=20)
    elsewhere = create_resumable_stream_context(client, key_prefix=key_prefix, options=FAST)
    sources = [ControlledSource() for _ in range(5)]
    originals = [await ctx.resumable_stream(f"s{i}", src) for i, src in enumerate(sources)]
    followers = await asyncio.gather(
        *(context.resume_existing_stream(f"s{i % 5}") for context in (ctx, elsewhere)
          for i in range(150))
    )
    admin = aioredis.Redis.from_url(redis_server.url)
    clients = await admin.client_list(_type="pubsub")
    mine = [c for c in clients if int(c.get("sub", 0)) > 0]
    assert len(mine) == 1, clients
    for i, src in enumerate(sources):
        src.write(f"chunk{i}")
        src.close()
    results = await asyncio.gather(*(read_all(f) for f in followers))
    assert results == [f"chunk{i % 5}" for i in range(150)] * 2
    assert [await read_all(o) for o in originals] == [f"chunk{i}" for i in range(5)]
    await elsewhere.aclose()
    await ctx.aclose()
    await admin.aclose()
    await client.aclose()
    await producing.aclose()


async def test_follower_recovers_when_its_pubsub_connection_is_killed(
    redis_server: RedisServer, key_prefix: str
) -> None:
    # The follower runs in another process: its live tail comes over pub/sub.
    producing = aioredis.Redis.from_url(redis_server.url)
    client = aioredis.Redis.from_url(redis_server.url)
    options = StreamOptions(lease=30.0, poll_interval=30.0)  # no polling: only Resync helps
    ctx = create_resumable_stream_context(producing, key_prefix=key_prefix, options=options)
    elsewhere = create_resumable_stream_context(client, key_prefix=key_prefix, options=options)
    source = ControlledSource()
    original = await ctx.resumable_stream("s", source)
    follower = await elsewhere.resume_existing_stream("s")
    source.write("a")
    assert await read_n(follower, 1) == "a"
    admin = aioredis.Redis.from_url(redis_server.url)
    killed = await admin.client_kill_filter(_type="pubsub")
    assert killed >= 1
    # Written while the pub/sub connection is down or resubscribing.
    source.write("b")
    source.write("c")
    source.close()
    got = await asyncio.wait_for(read_all(follower), 10)
    assert got == "bc"
    assert await read_all(original) == "abc"
    await elsewhere.aclose()
    await ctx.aclose()
    await admin.aclose()
    await client.aclose()
    await producing.aclose()


async def test_stale_producer_is_fenced(redis_client: aioredis.Redis, key_prefix: str) -> None:
    backend = RedisBackend(redis_client, key_prefix=key_prefix)
    assert await backend.claim("s", "tok1", ttl=60, lease=5) is None
    await backend.write("s", "tok1", 0, ["a"], end=None, ttl=60, finished_ttl=60, lease=5)
    with pytest.raises(StaleProducer):  # not the producer
        await backend.write("s", "tok2", 1, ["b"], end=None, ttl=60, finished_ttl=60, lease=5)
    with pytest.raises(StaleProducer):  # a gap
        await backend.write("s", "tok1", 2, ["c"], end=None, ttl=60, finished_ttl=60, lease=5)
    with pytest.raises(StaleProducer):  # a repeat
        await backend.write("s", "tok1", 0, ["a"], end=None, ttl=60, finished_ttl=60, lease=5)
    snap = await backend.snapshot("s", 0, 10)
    assert snap is not None
    assert list(snap.chunks) == ["a"]
    await backend.aclose()


async def test_fast_producer_batches_its_writes(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    ctx = create_resumable_stream_context(redis_client, key_prefix=key_prefix, options=FAST)

    async def fast() -> AsyncIterator[str]:
        for i in range(5000):
            yield f"{i:08d}"

    stream = await ctx.resumable_stream("fast", fast)
    text = await read_all(stream)
    assert text == "".join(f"{i:08d}" for i in range(5000))
    await ctx.aclose()
    replay = await ctx.resume_existing_stream("fast", after=-1)
    assert await read_all(replay) == text


# --- Writes of every stream coalesced into pipelines (backends/redis.py `_Batcher`) ---


class CountingConnection(aioredis.Connection):
    """Counts script requests written to the socket (a pipeline counts once), leaving
    out connection handshakes."""

    sends = 0

    async def send_packed_command(self, command: object, check_health: bool = True) -> None:
        data = command if isinstance(command, bytes) else b"".join(command)  # type: ignore[arg-type]
        if b"EVALSHA" in data[:20]:
            type(self).sends += 1
        await super().send_packed_command(command, check_health)  # type: ignore[arg-type]


async def test_writes_of_one_loop_turn_share_one_round_trip(
    own_redis: RedisServer, key_prefix: str
) -> None:
    pool = aioredis.ConnectionPool(port=own_redis.port, connection_class=CountingConnection)
    client = aioredis.Redis(connection_pool=pool)
    backend = RedisBackend(client, key_prefix=key_prefix)
    streams = 200
    for s in range(streams):
        assert await backend.claim(f"s{s}", "token", ttl=60, lease=5) is None
    common = {"end": None, "ttl": 60.0, "finished_ttl": 60.0, "lease": 5.0}
    # Load the script on this fresh server first (a write of a chunk, not a renewal).
    assert await backend.claim("warm", "token", ttl=60, lease=5) is None
    await backend.write("warm", "token", 0, ["w"], **common)
    CountingConnection.sends = 0
    stops = await asyncio.gather(
        *(backend.write(f"s{s}", "token", 0, [f"{s}"], **common) for s in range(streams))
    )
    assert stops == [False] * streams
    assert CountingConnection.sends == 1
    for s in range(streams):
        snap = await backend.snapshot(f"s{s}", 0, 10)
        assert snap is not None
        assert snap.chunks == [f"{s}"]
    await backend.aclose()
    await client.aclose()


async def test_streams_of_a_process_write_on_one_clock(
    own_redis: RedisServer, key_prefix: str
) -> None:
    pool = aioredis.ConnectionPool(port=own_redis.port, connection_class=CountingConnection)
    client = aioredis.Redis(connection_pool=pool)
    ctx = create_resumable_stream_context(client, key_prefix=key_prefix, options=FAST)
    streams = 50
    texts = [[f"{s}:{i};" for i in range(20)] for s in range(streams)]

    async def one(s: int) -> str:
        async def source() -> AsyncIterator[str]:
            for chunk in texts[s]:
                await asyncio.sleep(0)  # a chunk per loop turn, like a fast LLM client
                yield chunk

        stream = await ctx.create_new_resumable_stream(f"s{s}", source)
        assert stream is not None
        return await read_all(stream)

    await client.ping()
    CountingConnection.sends = 0
    got = await asyncio.gather(*(one(s) for s in range(streams)))
    sends = CountingConnection.sends
    stats = await client.info("commandstats")
    scripts = stats["cmdstat_evalsha"]["calls"]  # claims and writes (nobody subscribed)
    assert got == ["".join(t) for t in texts]
    for s in range(streams):
        replay = await ctx.resume_existing_stream(f"s{s}", after=-1)
        assert await read_all(replay) == "".join(texts[s])
    # Claims go one by one; the streams' writes, due on the same ticks, share pipelines.
    writes = scripts - streams
    assert writes >= streams  # at least one write per stream
    assert sends - streams <= writes / 4, (sends, scripts)
    await ctx.aclose()
    await client.aclose()


async def test_idle_streams_renew_their_leases_in_one_call(
    own_redis: RedisServer, key_prefix: str
) -> None:
    pool = aioredis.ConnectionPool(port=own_redis.port, connection_class=CountingConnection)
    client = aioredis.Redis(connection_pool=pool)
    backend = RedisBackend(client, key_prefix=key_prefix)
    streams = 300
    for s in range(streams):
        assert await backend.claim(f"s{s}", "token", ttl=60, lease=5) is None
    common = {"end": None, "ttl": 60.0, "finished_ttl": 60.0, "lease": 5.0}
    assert await backend.write("s1", "token", 0, ["x"], **common) is False
    await client.set(f"{key_prefix}:{{s2}}:meta", "gone")  # not a hash: refused
    assert await backend.request_stop("s3")
    await client.delete(f"{key_prefix}:{{s1}}:chunks")  # a stored chunk lost
    assert await backend.write("s0", "token", 0, [], **common) is False
    await client.execute_command("CONFIG", "RESETSTAT")
    CountingConnection.sends = 0
    starts = {1: 1}
    results = await asyncio.gather(
        *(backend.write(f"s{s}", "token", starts.get(s, 0), [], **common) for s in range(streams)),
        return_exceptions=True,
    )
    stats = await client.info("commandstats")
    assert CountingConnection.sends == 1  # one pipeline
    assert stats["cmdstat_evalsha"]["calls"] == 1  # one script call for 300 streams
    assert isinstance(results[1], StaleProducer)  # its stored chunk is gone
    # Its record is not a hash: refused as Redis refused the command, for s2 alone.
    assert isinstance(results[2], ResponseError), results[2]
    assert "WRONGTYPE" in str(results[2])
    assert results[3] is True  # renewed, and told to stop
    assert [r for n, r in enumerate(results) if n not in (1, 2, 3)] == [False] * (streams - 3)
    ttl = await client.pttl(f"{key_prefix}:{{s0}}:lease")
    assert 4000 < ttl <= 5000
    await backend.aclose()
    await client.aclose()


async def test_a_refused_write_in_a_pipeline_fails_only_its_own_stream(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    backend = RedisBackend(redis_client, key_prefix=key_prefix)
    for name in ("a", "b"):
        assert await backend.claim(name, f"token-{name}", ttl=60, lease=5) is None
    common = {"end": None, "ttl": 60.0, "finished_ttl": 60.0, "lease": 5.0}
    # Issued in one loop turn, so they travel in one pipeline.
    results = await asyncio.gather(
        backend.write("a", "not-the-token", 0, ["x"], **common),
        backend.write("b", "token-b", 0, ["y"], **common),
        backend.write("a", "token-a", 0, ["z"], **common),
        return_exceptions=True,
    )
    assert isinstance(results[0], StaleProducer)
    assert results[1:] == [False, False]
    for name, want in (("a", ["z"]), ("b", ["y"])):
        snap = await backend.snapshot(name, 0, 10)
        assert snap is not None
        assert snap.chunks == want
    await backend.aclose()


async def test_one_call_writes_many_streams_and_answers_each_on_its_own(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    """The writes of one pipeline are one `write.lua` call, whatever they are (chunks,
    an end, a renewal) and however many are refused, each for its own reason: a write
    that lands announces its chunks, a refused one stores and announces nothing, and
    no refusal touches another stream."""
    backend = RedisBackend(redis_client, key_prefix=key_prefix)
    names = ("chunks", "ended", "renewed", "token", "start", "deleted", "wrongtype")
    for name in names:
        assert await backend.claim(name, "tok", ttl=60, lease=5) is None
    assert await backend.delete("deleted", ttl=60)
    await redis_client.set(StreamKeys(key_prefix, "wrongtype").chunks, "not a list")
    feed = await backend.subscribe("chunks", max_buffered_bytes=1 << 20)
    common = {"ttl": 60.0, "finished_ttl": 60.0, "lease": 5.0}
    done = Ended(StreamStatus.DONE, 2, None)
    await backend.write("renewed", "tok", 0, [], end=None, **common)  # loads the script
    await redis_client.execute_command("CONFIG", "RESETSTAT")
    results = await asyncio.gather(
        backend.write("chunks", "tok", 0, ["a", b"b"], end=None, **common),
        backend.write("ended", "tok", 0, ["x", "y"], end=done, **common),
        backend.write("renewed", "tok", 0, [], end=None, **common),
        backend.write("token", "not-tok", 0, ["t"], end=None, **common),
        backend.write("start", "tok", 3, ["s"], end=None, **common),
        backend.write("deleted", "tok", 0, ["d"], end=None, **common),
        backend.write("wrongtype", "tok", 0, ["w"], end=None, **common),
        return_exceptions=True,
    )
    stats = await redis_client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 1
    assert results[:3] == [False, False, False]
    for n in (3, 4, 5):
        assert isinstance(results[n], StaleProducer), results[n]
    assert [r.deleted for r in results[3:6]] == [False, False, True]  # type: ignore[union-attr]
    assert "write at 3" in str(results[4])
    assert isinstance(results[6], ResponseError)
    assert "WRONGTYPE" in str(results[6])
    snaps = {name: await backend.snapshot(name, 0, 10) for name in names[:5]}
    chunks, ended = snaps["chunks"], snaps["ended"]
    assert chunks is not None
    assert chunks.chunks == ["a", b"b"]
    assert ended is not None
    assert (ended.status, ended.chunks) == (StreamStatus.DONE, ["x", "y"])
    for name in ("renewed", "token", "start"):
        snap = snaps[name]
        assert snap is not None
        assert (snap.status, snap.length) == (StreamStatus.RUNNING, 0)
    assert await feed.get(5) == Appended(0, ("a", b"b"))
    assert feed.get_nowait() is None  # nothing else was announced on it
    await feed.aclose()
    await backend.aclose()


async def test_scripts_flushed_mid_stream_are_loaded_again(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    ctx = create_resumable_stream_context(redis_client, key_prefix=key_prefix, options=FAST)
    source = ControlledSource()
    stream = await ctx.resumable_stream("flushed", source)
    source.write("one ")
    assert await read_n(stream, 1) == "one "
    await redis_client.script_flush()
    for word in ("two ", "three"):
        source.write(word)
    source.close()
    assert await read_all(stream) == "two three"
    replay = await ctx.resume_existing_stream("flushed", after=-1)
    assert await read_all(replay) == "one two three"
    await ctx.aclose()


@pytest.mark.parametrize(
    "args",
    [
        ["k1", "k2", "k3", "token", 0, 86400000, b""],
        ["{\u00e9}", "x", "y", "t\u00f6k", -1, 2**40, b"\x00\xff\r\n", "", b"a" * 70_000],
    ],
)
def test_packed_commands_are_what_redis_py_would_send(args: list[object]) -> None:
    from redis.asyncio.connection import Connection

    from resumable_stream.backends.redis import _pack

    sha = "0" * 40
    head = b"$7\r\nEVALSHA\r\n$40\r\n" + sha.encode() + b"\r\n$1\r\n3\r\n"
    theirs = b"".join(Connection().pack_command("EVALSHA", sha, 3, *args))  # type: ignore[arg-type]
    assert _pack(head, args) == theirs


async def test_a_snapshot_reads_the_same_whatever_parses_the_replies(
    own_redis: RedisServer, key_prefix: str
) -> None:
    # With hiredis the page is an LRANGE beside the script, in one MULTI; with
    # redis-py's own parser the script joins it into one string. Both read the same,
    # for every state a stream can be in, binary whatever the client decodes.
    from redis._parsers import _AsyncRESP3Parser

    hiredis = aioredis.Redis(port=own_redis.port)
    decoding = aioredis.Redis(port=own_redis.port, decode_responses=True)
    python = aioredis.Redis(
        connection_pool=aioredis.ConnectionPool(port=own_redis.port, parser_class=_AsyncRESP3Parser)
    )
    backends = [RedisBackend(c, key_prefix=key_prefix) for c in (hiredis, decoding, python)]
    assert [b._paged for b in backends] == [True, True, False]
    writer = backends[0]
    common = {"ttl": 60.0, "finished_ttl": 60.0, "lease": 5.0}
    chunks: list[str | bytes] = ["a", b"\x00\xffb", "ü" * 3, "", "e"]
    for name in ("running", "done", "failed", "lost", "deleted"):
        assert await writer.claim(name, "t", ttl=60, lease=5) is None
        assert await writer.write(name, "t", 0, chunks, end=None, **common) is False
    ends = {
        "done": Ended(StreamStatus.DONE, 5),
        "failed": Ended(StreamStatus.FAILED, 5, "it broke"),
        "lost": Ended(StreamStatus.DONE, 5),
    }
    for name, end in ends.items():
        await writer.write(name, "t", 5, [], end=end, **common)
    await hiredis.delete(f"{key_prefix}:{{lost}}:chunks")  # evicted: "storage lost"
    assert await writer.delete("deleted", ttl=60)
    names = ["running", "done", "failed", "lost", "deleted", "never"]
    pages = [(0, 0), (0, 2), (1, 10), (4, 1), (5, 3), (9, 2)]
    seen = 0
    for name in names:
        for start, limit in pages:
            snaps = [await b.snapshot(name, start, limit) for b in backends]
            assert snaps[0] == snaps[1] == snaps[2], (name, start, limit, snaps)
            if snaps[0] is not None and name != "lost":
                assert list(snaps[0].chunks) == chunks[start : start + limit]
                seen += bool(snaps[0].chunks)
    assert seen == 3 * 3  # three streams with chunks, three pages holding some
    assert (await writer.snapshot("lost", 0, 5)).status is StreamStatus.FAILED  # type: ignore[union-attr]
    for b in backends:
        await b.aclose()
    for c in (hiredis, decoding, python):
        await c.aclose()
    await python.connection_pool.aclose()


async def test_a_paged_snapshot_loads_its_script_and_survives_a_refusal(
    own_redis: RedisServer, key_prefix: str
) -> None:
    client = aioredis.Redis(port=own_redis.port)
    backend = RedisBackend(client, key_prefix=key_prefix)
    assert backend._paged
    assert await backend.claim("s", "t", ttl=60, lease=5) is None
    common = {"end": None, "ttl": 60.0, "finished_ttl": 60.0, "lease": 5.0}
    assert await backend.write("s", "t", 0, ["x", "y"], **common) is False
    await client.script_flush()  # a fresh server, or a replica just promoted
    snap = await backend.snapshot("s", 0, 10)
    assert snap is not None
    assert list(snap.chunks) == ["x", "y"]
    # Its chunks key is not a list: refused as Redis refused it, for this read alone.
    await client.set(f"{key_prefix}:{{w}}:chunks", "not a list")
    await client.hset(f"{key_prefix}:{{w}}:meta", mapping={"status": "running"})
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await backend.snapshot("w", 0, 10)
    snap = await backend.snapshot("s", 1, 10)  # the connection went back clean
    assert snap is not None
    assert list(snap.chunks) == ["y"]
    await backend.aclose()
    await client.aclose()


async def test_a_full_redis_still_serves_paged_snapshots_on_the_same_connection(
    redis_factory: list[RedisServer], key_prefix: str
) -> None:
    # Over maxmemory Redis refuses whatever is queued in a MULTI, reads too: the page
    # is read through the script instead, and the refused MULTI, whose replies were all
    # read, leaves its connection in the pool (no reconnect per snapshot).
    from .test_faults import start

    server = start(redis_factory, "--maxmemory", "8mb", "--maxmemory-policy", "noeviction")
    client = aioredis.Redis(port=server.port)
    backend = RedisBackend(client, key_prefix=key_prefix)
    assert backend._paged
    assert await backend.claim("s", "t", ttl=60, lease=5) is None
    common = {"end": None, "ttl": 60.0, "finished_ttl": 60.0, "lease": 5.0}
    assert await backend.write("s", "t", 0, ["a", "b", "c"], **common) is False

    async def fill() -> None:
        for n in range(10_000):
            await client.set(f"{key_prefix}:fill:{n}", "x" * 65_536)

    with pytest.raises(ResponseError, match="maxmemory"):
        await fill()
    connections = int((await client.info("stats"))["total_connections_received"])
    for _ in range(5):
        snap = await backend.snapshot("s", 1, 10)
        assert snap is not None
        assert list(snap.chunks) == ["b", "c"]
    assert int((await client.info("stats"))["total_connections_received"]) == connections
    await backend.aclose()
    await client.aclose()
