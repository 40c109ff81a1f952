"""Network faults between the app and Redis, and real memory pressure (issue 7a).

* A stalled (half-open) pub/sub connection: the hub's watchdog drops it within its
  health interval, subscribes again on a new connection and tells readers to re-read.
* Delayed links (5-50 ms per direction, jittered, order kept): producer and followers
  through the same slow link get every chunk exactly once.
* A private redis-server under ``maxmemory`` with each eviction policy, filled by
  running streams until it evicts or refuses: every reader gets the whole text or a
  clean prefix then a typed error.

Every wait is bounded; the pace of a source is its workload, never a synchronisation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator

import msgpack
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from resumable_stream import (
    BackendUnavailable,
    Chunk,
    ProducerLost,
    ResumableStream,
    StreamFailed,
    StreamNotFound,
    StreamOptions,
    StreamStatus,
    create_resumable_stream_context,
)
from resumable_stream._types import Appended, Ended, Resync
from resumable_stream.backends._pubsub import PubSubHub
from resumable_stream.backends.cluster import _ShardRouter
from resumable_stream.backends.redis import RedisBackend, _ServerRouter, decode_event

from .cluster_servers import PrivateCluster
from .servers import RedisServer
from .tcp_proxy import FaultProxy, ProxiedConnection, jitter
from .test_faults import paced, start, text

STEP = 15.0
BUDGET = 1 << 20
# Slack on top of a computed bound, for a 2-core machine shared with other test runs.
SLACK = 1.5



def appended(start: int, chunk: str) -> bytes:
    """A message as write.lua announces it."""
    return msgpack.packb(0) + msgpack.packb(start) + msgpack.packb(chunk)


def figure(name: str, **values: object) -> None:
    """One measured figure, shown with ``pytest -s`` (the report quotes them)."""
    print(f"FIGURE {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


def pubsub(connection: ProxiedConnection) -> bool:
    return connection.subscribed


class Reading:
    """One reader's indexed chunks, then maybe an error."""

    def __init__(self, mark_at: int = 0) -> None:
        self.got: list[tuple[int, Chunk]] = []
        self.error: BaseException | None = None
        self.mark = asyncio.Event()
        self.mark_at = mark_at

    async def run(self, stream: ResumableStream | None) -> Reading:
        assert stream is not None
        try:
            async for index, chunk in stream.indexed():
                self.got.append((index, chunk))
                if len(self.got) == self.mark_at:
                    self.mark.set()
        except Exception as exc:  # judged by the test: typed or not
            self.error = exc
        return self

    def whole(self, expected: list[Chunk]) -> bool:
        return self.error is None and self.got == list(enumerate(expected))

    def clean_prefix(self, expected: list[Chunk]) -> bool:
        return self.got == list(enumerate(expected))[: len(self.got)]




# -- a stalled pub/sub connection: the hub's health check ----------------------------------


@pytest.mark.timeout(30)
async def test_stalled_link_is_replaced_within_the_health_interval(
    redis_server: RedisServer,
) -> None:
    """The hub's only connection goes half-open while idle: the hub notices by itself
    (no reader polls here), within the health interval of the last reply, subscribes
    again on a new connection and sends its readers a `Resync`; live messages flow
    again on the new connection."""
    interval = 1.0
    direct = aioredis.Redis.from_url(redis_server.url)
    async with FaultProxy(redis_server.port) as proxy:
        proxied = aioredis.Redis(host="127.0.0.1", port=proxy.port)
        hub = PubSubHub(_ServerRouter(proxied), decode_event, health_interval=interval)
        try:
            sub = await asyncio.wait_for(hub.subscribe("ch", BUDGET), STEP)
            await direct.publish("ch", appended(0, "a"))
            assert await asyncio.wait_for(sub.get(None), STEP) == Appended(0, ("a",))
            loop = asyncio.get_running_loop()
            assert proxy.stall(pubsub) == 1
            stalled_at = loop.time()
            # Published into the void: the stalled connection never delivers it.
            await direct.publish("ch", appended(1, "lost"))
            assert isinstance(await asyncio.wait_for(sub.get(None), STEP), Resync)
            elapsed = loop.time() - stalled_at
            figure("stalled link to resync", interval=interval, seconds=round(elapsed, 3))
            assert elapsed < interval + SLACK, elapsed
            fresh = [c for c in proxy.open() if c.subscribed and not c.stalled]
            assert len(fresh) == 1
            assert hub.connections == 1
            await direct.publish("ch", appended(2, "b"))
            assert await asyncio.wait_for(sub.get(None), STEP) == Appended(2, ("b",))
            # The stalled connection was given up (closed on our side).
            await proxy.wait_for(lambda: all(not c.stalled for c in proxy.open()), STEP)
            await sub.aclose()
        finally:
            await hub.aclose()
            await proxied.aclose()
            await direct.aclose()


@pytest.mark.timeout(30)
async def test_subscribe_on_a_stalled_link_is_confirmed_on_a_new_one(
    redis_server: RedisServer,
) -> None:
    """A new reader arrives while the link is half-open: instead of waiting for the
    10 s subscribe timeout and failing, it is confirmed on the replacement connection
    within the health interval; the earlier reader gets a `Resync`."""
    interval = 1.0
    direct = aioredis.Redis.from_url(redis_server.url)
    async with FaultProxy(redis_server.port) as proxy:
        proxied = aioredis.Redis(host="127.0.0.1", port=proxy.port)
        hub = PubSubHub(_ServerRouter(proxied), decode_event, health_interval=interval)
        try:
            first = await asyncio.wait_for(hub.subscribe("one", BUDGET), STEP)
            assert proxy.stall(pubsub) == 1
            loop = asyncio.get_running_loop()
            asked_at = loop.time()
            second = await asyncio.wait_for(hub.subscribe("two", BUDGET), STEP)
            elapsed = loop.time() - asked_at
            figure("subscribe on a stalled link", interval=interval, seconds=round(elapsed, 3))
            assert elapsed < interval + SLACK, elapsed
            assert isinstance(await asyncio.wait_for(first.get(None), STEP), Resync)
            await direct.publish("one", appended(0, "x"))
            await direct.publish("two", appended(0, "y"))
            assert await asyncio.wait_for(first.get(None), STEP) == Appended(0, ("x",))
            assert await asyncio.wait_for(second.get(None), STEP) == Appended(0, ("y",))
            assert hub.connections == 1
            await first.aclose()
            await second.aclose()
        finally:
            await hub.aclose()
            await proxied.aclose()
            await direct.aclose()


@pytest.mark.timeout(30)
async def test_black_holed_server_fails_readers_in_bounded_time(
    redis_server: RedisServer,
) -> None:
    """Every connection, new ones included, goes half-open and the client has no
    socket timeouts (redis-py's default): opening a replacement link is bounded by the
    health interval, so the hub gives up at its repair timeout with
    `BackendUnavailable` instead of hanging in a handshake; a new reader is refused in
    bounded time too."""
    interval, repair = 0.5, 2.0
    async with FaultProxy(redis_server.port) as proxy:
        proxied = aioredis.Redis(host="127.0.0.1", port=proxy.port)
        hub = PubSubHub(
            _ServerRouter(proxied), decode_event, health_interval=interval, repair_timeout=repair
        )
        try:
            subs = [await asyncio.wait_for(hub.subscribe(f"c{i}", BUDGET), STEP) for i in range(3)]
            proxy.stall_new = True
            proxy.stall()
            loop = asyncio.get_running_loop()
            stalled_at = loop.time()
            for sub in subs:
                with pytest.raises(BackendUnavailable):
                    await asyncio.wait_for(sub.get(None), STEP)
            # Noticed within the interval, then repairs tried until the repair timeout.
            failed_after = loop.time() - stalled_at
            figure(
                "black hole to BackendUnavailable", interval=interval, repair=repair,
                seconds=round(failed_after, 3), connections_tried=len(proxy.opened) - 1,
            )
            assert failed_after < interval + repair + interval + SLACK
            asked_at = loop.time()
            with pytest.raises(BackendUnavailable):
                await asyncio.wait_for(hub.subscribe("late", BUDGET), STEP)
            assert loop.time() - asked_at < interval + SLACK
            assert len(proxy.opened) > 2  # it did try new connections
        finally:
            await asyncio.wait_for(hub.aclose(), STEP)
            await proxied.aclose()


@pytest.mark.timeout(40)
async def test_follower_on_a_stalled_pubsub_connection_gets_every_chunk_exactly(
    redis_server: RedisServer, key_prefix: str
) -> None:
    """A follower process' pub/sub connection goes half-open mid-stream. Its readers'
    ``poll_interval`` is 30 s, so polling cannot hide the stall: the follower gets
    every chunk exactly once, and in time, only because the hub replaced the
    connection (the client's ``health_check_interval``, 1 s, sets the hub's)."""
    interval = 1.0
    options = StreamOptions(lease=2.0, poll_interval=30.0, shutdown_grace=2.0)
    direct = aioredis.Redis.from_url(redis_server.url)
    producer = create_resumable_stream_context(direct, key_prefix=key_prefix, options=options)
    async with FaultProxy(redis_server.port) as proxy:
        proxied = aioredis.Redis(
            host="127.0.0.1", port=proxy.port, health_check_interval=interval
        )
        follower_ctx = create_resumable_stream_context(
            proxied, key_prefix=key_prefix, options=options
        )
        total, pace = 600, 0.005
        expected: list[Chunk] = [text(i) for i in range(total)]
        try:
            original = Reading(mark_at=total // 4)
            stream = await producer.create_new_resumable_stream("s", lambda: paced(total, pace))
            reading = asyncio.create_task(original.run(stream))
            followers = [Reading() for _ in range(3)]
            following = [
                asyncio.create_task(
                    f.run(await follower_ctx.resume_existing_stream("s", after=-1))
                )
                for f in followers
            ]
            await asyncio.wait_for(original.mark.wait(), STEP)
            loop = asyncio.get_running_loop()
            assert proxy.stall(pubsub) == 1
            stalled_at = loop.time()
            await proxy.wait_for(
                lambda: any(c.subscribed and not c.stalled for c in proxy.open()), STEP
            )
            reconnected = loop.time() - stalled_at
            figure("follower's stalled link replaced", interval=interval,
                   seconds=round(reconnected, 3))
            assert reconnected < interval + SLACK, reconnected
            assert not reading.done(), "the stream ended before the hub reconnected"
            await asyncio.wait_for(asyncio.gather(reading, *following), STEP)
            assert original.whole(expected)
            for follower in followers:
                assert follower.whole(expected), (len(follower.got), follower.error)
        finally:
            await asyncio.wait_for(follower_ctx.aclose(), STEP)
            await asyncio.wait_for(producer.aclose(), STEP)
            await proxied.aclose()
            await direct.aclose()


@pytest.mark.timeout(60)
async def test_stalled_sharded_link_is_replaced_and_the_others_are_untouched(
    redis_cluster: PrivateCluster,
) -> None:
    """On a Redis Cluster the hub keeps one sharded pub/sub link per master. Every node
    is reached through its own proxy (redis-py's ``address_remap``); one master's link
    goes half-open: its channels get a `Resync` within the health interval and live
    messages again, while the channels on the other masters see nothing at all."""
    interval = 1.0
    proxies = {port: FaultProxy(port) for port in redis_cluster.ports}
    async with contextlib.AsyncExitStack() as stack:
        for proxy in proxies.values():
            await stack.enter_async_context(proxy)
        remap = {port: proxy.port for port, proxy in proxies.items()}
        cluster = RedisCluster(
            host="127.0.0.1", port=redis_cluster.ports[0],
            address_remap=lambda address: (address[0], remap.get(address[1], address[1])),
        )
        stack.push_async_callback(cluster.aclose)
        await cluster.initialize()
        hub = PubSubHub(_ShardRouter(cluster), decode_event, health_interval=interval)
        stack.push_async_callback(hub.aclose)
        names = [f"x:{{n{i}}}:events" for i in range(24)]
        subs = {name: await asyncio.wait_for(hub.subscribe(name, BUDGET), STEP) for name in names}
        assert hub.connections == 3
        victim_port = next(p for p, proxy in proxies.items() if proxy.stall(pubsub) == 1)
        victim = f"127.0.0.1:{remap[victim_port]}"
        on_victim = [n for n in names if cluster.get_node_from_key(n).name == victim]
        elsewhere = [n for n in names if n not in on_victim]
        assert on_victim
        assert elsewhere
        loop = asyncio.get_running_loop()
        stalled_at = loop.time()
        for name in on_victim:
            assert isinstance(await asyncio.wait_for(subs[name].get(None), STEP), Resync)
        elapsed = loop.time() - stalled_at
        figure("stalled sharded link to resync", interval=interval, seconds=round(elapsed, 3),
               channels_moved=len(on_victim), channels_untouched=len(elsewhere))
        assert elapsed < interval + SLACK, elapsed
        for i, name in enumerate(names):
            await cluster.execute_command("SPUBLISH", name, appended(i, name))
        for i, name in enumerate(names):
            # The untouched channels' first event is this message: no Resync came.
            assert await asyncio.wait_for(subs[name].get(None), STEP) == Appended(i, (name,))
        assert hub.connections == 3
        for sub in subs.values():
            await sub.aclose()


# -- delayed links --------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_delayed_jittered_link_loses_and_doubles_nothing(
    redis_server: RedisServer, key_prefix: str
) -> None:
    """Producer and followers reach Redis through one link delayed 5-50 ms per
    direction (random, order kept): several streams at once, followers joining before,
    during and after each stream, all get exactly its text, in bounded time; the
    latency never trips the pub/sub health check (one pub/sub connection throughout,
    with a 1 s interval)."""
    async with FaultProxy(redis_server.port, latency=jitter(7, 0.005, 0.05)) as proxy:
        proxied = aioredis.Redis(host="127.0.0.1", port=proxy.port, health_check_interval=1.0)
        options = StreamOptions(lease=2.0, poll_interval=1.0, shutdown_grace=5.0)
        producer = create_resumable_stream_context(
            proxied, key_prefix=key_prefix, options=options
        )
        follower_client = aioredis.Redis(
            host="127.0.0.1", port=proxy.port, health_check_interval=1.0
        )
        follower_ctx = create_resumable_stream_context(
            follower_client, key_prefix=key_prefix, options=options
        )
        streams, total, pace = 4, 300, 0.003
        expected: list[Chunk] = [text(i) for i in range(total)]
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            async def one(name: str) -> list[Reading]:
                original = Reading(mark_at=total // 2)
                stream = await producer.create_new_resumable_stream(
                    name, lambda: paced(total, pace)
                )
                reads = [asyncio.create_task(original.run(stream))]
                early = Reading()
                reads.append(asyncio.create_task(
                    early.run(await follower_ctx.resume_existing_stream(name, after=-1))
                ))
                await asyncio.wait_for(original.mark.wait(), STEP)
                middle = Reading()
                reads.append(asyncio.create_task(
                    middle.run(await follower_ctx.resume_existing_stream(name, after=-1))
                ))
                # One that resumes from a position, as a client with Last-Event-ID does.
                after = len(original.got) - 1
                tail = Reading()
                reads.append(asyncio.create_task(
                    tail.run(await follower_ctx.resume_existing_stream(name, after=after))
                ))
                done = list(await asyncio.wait_for(asyncio.gather(*reads), STEP * 2))
                late = await Reading().run(
                    await follower_ctx.resume_existing_stream(name, after=-1)
                )
                assert tail.error is None
                assert tail.got == list(enumerate(expected))[after + 1 :]
                return [*done[:3], late]

            results = await asyncio.wait_for(
                asyncio.gather(*(one(f"s{i}") for i in range(streams))), STEP * 3
            )
            for readings in results:
                for reading in readings:
                    assert reading.whole(expected), (len(reading.got), reading.error)
            took = loop.time() - began
            figure(
                "jittered 5-50 ms link", streams=streams, readers=streams * 5,
                chunks_each=total, seconds=round(took, 2), bytes_forwarded=proxy.forwarded,
            )
            assert took < 30
            # One pub/sub connection (the follower context's; the producer's own readers
            # are fed directly), opened once and never replaced.
            assert sum(c.subscribed for c in proxy.opened) == 1
            assert proxy.forwarded > 0
        finally:
            await asyncio.wait_for(follower_ctx.aclose(), STEP)
            await asyncio.wait_for(producer.aclose(), STEP)
            await follower_client.aclose()
            await proxied.aclose()


@pytest.mark.timeout(60)
async def test_delayed_link_with_pubsub_cuts_loses_and_doubles_nothing(
    redis_server: RedisServer, key_prefix: str
) -> None:
    """The same slow link, and the follower process' pub/sub connection cut (RST) three
    times mid-stream: the hub repairs it each time and the followers still get exactly
    the stream's text."""
    async with FaultProxy(redis_server.port, latency=jitter(11, 0.005, 0.05)) as proxy:
        options = StreamOptions(lease=2.0, poll_interval=1.0, shutdown_grace=5.0)
        direct = aioredis.Redis.from_url(redis_server.url)
        producer = create_resumable_stream_context(direct, key_prefix=key_prefix, options=options)
        proxied = aioredis.Redis(host="127.0.0.1", port=proxy.port)
        follower_ctx = create_resumable_stream_context(
            proxied, key_prefix=key_prefix, options=options
        )
        total, pace = 800, 0.004
        expected: list[Chunk] = [text(i) for i in range(total)]
        try:
            original = Reading(mark_at=total // 5)
            stream = await producer.create_new_resumable_stream("s", lambda: paced(total, pace))
            reading = asyncio.create_task(original.run(stream))
            followers = [Reading() for _ in range(3)]
            following = [
                asyncio.create_task(
                    f.run(await follower_ctx.resume_existing_stream("s", after=-1))
                )
                for f in followers
            ]
            await asyncio.wait_for(original.mark.wait(), STEP)
            for cut in range(3):
                assert proxy.cut(pubsub) == 1, cut
                # The next cut only once the hub has subscribed again.
                await proxy.wait_for(
                    lambda: sum(c.subscribed for c in proxy.open()) == 1, STEP
                )
            assert not reading.done(), "the stream ended before the cuts did"
            await asyncio.wait_for(asyncio.gather(reading, *following), STEP * 2)
            assert original.whole(expected)
            for follower in followers:
                assert follower.whole(expected), (len(follower.got), follower.error)
            assert sum(c.subscribed for c in proxy.opened) == 4
        finally:
            await asyncio.wait_for(follower_ctx.aclose(), STEP)
            await asyncio.wait_for(producer.aclose(), STEP)
            await proxied.aclose()
            await direct.aclose()


async def cut_at_random(proxy: FaultProxy, rng: random.Random, stop: asyncio.Event) -> int:
    """Cut one of the proxy's open connections (RST) every 50-250 ms, chosen by ``rng``
    (seeded: a failing run can be replayed), until ``stop``; how many were cut."""
    cuts = 0
    while not stop.is_set():
        await asyncio.sleep(rng.uniform(0.05, 0.25))  # the fault schedule
        victims = proxy.open()
        if victims:
            chosen = rng.choice(victims)
            cuts += proxy.cut(lambda c, chosen=chosen: c is chosen)
    return cuts


@pytest.mark.timeout(60)
async def test_random_cuts_of_every_redis_connection_lose_and_double_nothing(
    redis_server: RedisServer, key_prefix: str
) -> None:
    """Producer and followers on one slow link (5-30 ms each way) whose connections,
    command and pub/sub alike, are cut (RST) at random moments, about every 150 ms:
    a write whose reply is lost is retried (redis-py resends it; the index fences it),
    readers re-subscribe and re-read, and every reader gets exactly the stream's text.
    The schedule of cuts is seeded, so a failing run can be replayed."""
    rng = random.Random(23)
    async with FaultProxy(redis_server.port, latency=jitter(5, 0.005, 0.03)) as proxy:
        options = StreamOptions(lease=2.0, poll_interval=0.5, shutdown_grace=5.0)
        producer_client = aioredis.Redis(host="127.0.0.1", port=proxy.port)
        follower_client = aioredis.Redis(host="127.0.0.1", port=proxy.port)
        producer = create_resumable_stream_context(
            producer_client, key_prefix=key_prefix, options=options
        )
        follower_ctx = create_resumable_stream_context(
            follower_client, key_prefix=key_prefix, options=options
        )
        total, pace = 600, 0.004
        expected: list[Chunk] = [text(i) for i in range(total)]

        try:
            original = Reading(mark_at=total // 10)
            stream = await producer.create_new_resumable_stream("s", lambda: paced(total, pace))
            reading = asyncio.create_task(original.run(stream))
            followers = [Reading() for _ in range(3)]
            following = [
                asyncio.create_task(
                    f.run(await follower_ctx.resume_existing_stream("s", after=-1))
                )
                for f in followers
            ]
            await asyncio.wait_for(original.mark.wait(), STEP)
            stop = asyncio.Event()
            cutting = asyncio.create_task(cut_at_random(proxy, rng, stop))
            await asyncio.wait_for(reading, STEP * 2)
            stop.set()
            cuts = await cutting
            await asyncio.wait_for(asyncio.gather(*following), STEP * 2)
            late = await Reading().run(await follower_ctx.resume_existing_stream("s", after=-1))
            figure("random cuts of every connection", cuts=cuts, connections=len(proxy.opened))
            assert cuts >= 5
            assert original.whole(expected)
            for reading_ in (*followers, late):
                assert reading_.whole(expected), (len(reading_.got), reading_.error)
            assert await producer.get_status("s") is StreamStatus.DONE
        finally:
            await asyncio.wait_for(follower_ctx.aclose(), STEP)
            await asyncio.wait_for(producer.aclose(), STEP)
            await follower_client.aclose()
            await producer_client.aclose()


@pytest.mark.timeout(90)
async def test_random_cuts_of_shared_write_calls_lose_and_double_nothing(
    redis_server: RedisServer, key_prefix: str
) -> None:
    """Twenty streams in step write through shared `write.lua` calls (each call carries
    many streams' writes), on a slow link whose connections are cut at random: a cut
    with a call on the wire loses the reply of every stream in it at once, some of
    them applied. Each stream retries on its own and finds out whether its write
    landed; every stream then reads whole, from the start, and ends done."""
    rng = random.Random(29)
    async with FaultProxy(redis_server.port, latency=jitter(5, 0.005, 0.03)) as proxy:
        options = StreamOptions(lease=2.0, poll_interval=0.5, shutdown_grace=5.0)
        client = aioredis.Redis(host="127.0.0.1", port=proxy.port)
        direct = aioredis.Redis(port=redis_server.port)
        ctx = create_resumable_stream_context(client, key_prefix=key_prefix, options=options)
        streams, total, pace = 20, 250, 0.004
        expected: list[Chunk] = [text(i) for i in range(total)]

        try:
            await direct.execute_command("CONFIG", "RESETSTAT")
            originals = [Reading() for _ in range(streams)]
            readings = [
                asyncio.create_task(
                    reading.run(
                        await ctx.create_new_resumable_stream(
                            f"s{n}", lambda: paced(total, pace)
                        )
                    )
                )
                for n, reading in enumerate(originals)
            ]
            stop = asyncio.Event()
            cutting = asyncio.create_task(cut_at_random(proxy, rng, stop))
            await asyncio.wait_for(asyncio.gather(*readings), STEP * 4)
            stop.set()
            cuts = await cutting
            stats = await direct.info("commandstats")
            figure(
                "random cuts of shared write calls", cuts=cuts,
                scripts=stats["cmdstat_evalsha"]["calls"], appends=stats["cmdstat_rpush"]["calls"],
            )
            assert cuts >= 5
            # Shared calls: one write.lua call per stream's write (and a claim each)
            # would run more scripts than appends (one per write of chunks).
            assert stats["cmdstat_evalsha"]["calls"] < stats["cmdstat_rpush"]["calls"]
            for n, original in enumerate(originals):
                assert original.whole(expected), (n, len(original.got), original.error)
                late = await Reading().run(await ctx.resume_existing_stream(f"s{n}", after=-1))
                assert late.whole(expected), (n, len(late.got), late.error)
                assert await ctx.get_status(f"s{n}") is StreamStatus.DONE
        finally:
            await asyncio.wait_for(ctx.aclose(), STEP)
            await client.aclose()
            await direct.aclose()


# -- real memory pressure: maxmemory and each eviction policy ------------------------------

TYPED = (StreamFailed, StreamNotFound, ProducerLost, BackendUnavailable)


def big(i: int, size: int) -> str:
    head = f"{i:06d}:"
    return head + "x" * (size - len(head))


@pytest.mark.timeout(90)
@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru", "noeviction"])
async def test_maxmemory_readers_get_whole_text_or_clean_prefix_then_typed_error(
    redis_factory: list[RedisServer],
    key_prefix: str,
    policy: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Streams fill a Redis with ``maxmemory`` 4 MB until it evicts (LRU policies) or
    refuses writes (``noeviction``). Each original reader gets its whole stream (it is
    fed by its producer); every follower and every late reader gets either the whole
    text or a clean prefix then a typed error: never a hole, never a hang."""
    caplog.set_level(logging.ERROR, logger="resumable_stream")
    server = start(redis_factory, "--maxmemory", "4mb", "--maxmemory-policy", policy)
    client = aioredis.Redis.from_url(server.url)
    options = StreamOptions(lease=2.0, poll_interval=0.25, shutdown_grace=5.0, retry_window=1.0)
    ctx = create_resumable_stream_context(client, key_prefix=key_prefix, options=options)
    streams, total, size = 12, 500, 1000  # 6 MB of chunks into 4 MB
    expected: list[Chunk] = [big(i, size) for i in range(total)]

    async def source() -> AsyncIterator[str]:
        for i in range(total):
            yield expected[i]  # type: ignore[misc]
            if i % 20 == 0:
                await asyncio.sleep(0.002)  # the source's pace: its workload

    try:
        originals: list[Reading] = []
        followers: list[Reading] = []
        tasks = []
        ended_early = []  # streams that had failed before their follower came
        refused = 0  # created once Redis was full: refused, typed (HTTP 503)
        for n in range(streams):
            original, follower = Reading(), Reading()
            try:
                stream = await ctx.create_new_resumable_stream(f"s{n}", source)
            except BackendUnavailable as exc:
                if policy != "noeviction" or "maxmemory" not in str(exc):
                    raise
                refused += 1
                continue
            tasks.append(asyncio.create_task(original.run(stream)))
            originals.append(original)
            try:
                joined = await ctx.resume_existing_stream(f"s{n}", after=-1)
            except StreamNotFound:  # its record was evicted already: a typed answer
                continue
            if joined is None:  # ended with nothing stored: the documented answer
                ended_early.append(f"s{n}")
                continue
            tasks.append(asyncio.create_task(follower.run(joined)))
            followers.append(follower)
        await asyncio.wait_for(asyncio.gather(*tasks), 45)
        for name in ended_early:
            assert await ctx.get_status(name) is StreamStatus.FAILED
        late: list[Reading] = []
        gone = 0  # late resumes answered StreamNotFound or None (HTTP 404 / 410)
        for n in range(streams):
            try:
                stream = await ctx.resume_existing_stream(f"s{n}", after=-1)
            except StreamNotFound:  # its record was evicted: a typed answer
                gone += 1
                continue
            if stream is None:
                # Ended with nothing stored: only ever as failed, never as an empty
                # "done" (its chunks evicted), which a client would take as whole.
                assert await ctx.get_status(f"s{n}") is StreamStatus.FAILED
                gone += 1
                continue
            late.append(await asyncio.wait_for(Reading().run(stream), STEP))
        for original in originals:
            assert original.whole(expected), original.error
        broken = 0
        for reading in followers + late:
            assert reading.clean_prefix(expected), f"a hole after {len(reading.got)} chunks"
            if reading.error is None:
                assert len(reading.got) == total
            else:
                assert isinstance(reading.error, TYPED), repr(reading.error)
                broken += 1
        info = await client.info("stats")
        kinds: dict[str, int] = {}
        for reading in followers + late:
            kind = "whole" if reading.error is None else type(reading.error).__name__
            kinds[kind] = kinds.get(kind, 0) + 1
        figure(
            f"maxmemory {policy}", evicted_keys=info["evicted_keys"],
            refused=refused, ended_before_join=len(ended_early), late_gone=gone,
            readers=kinds,
        )
        if policy == "noeviction":
            assert info["evicted_keys"] == 0
            # Writes were refused (OOM): the streams were marked failed with Redis'
            # reason, which their readers get, typed.
            assert broken + len(ended_early) + refused > 0
            errors = [str(r.error) for r in followers + late if r.error is not None]
            assert any("maxmemory" in e for e in errors), errors
            # Redis full (now surely over its limit, which the refused writes may have
            # left it just under): a new stream is refused with a typed error (HTTP
            # 503), and nothing of it is stored.
            used = (await client.info("memory"))["used_memory"]
            await client.config_set("maxmemory", used // 2)
            with pytest.raises(BackendUnavailable, match="maxmemory"):
                await ctx.create_new_resumable_stream("refused", source)
            assert await client.exists(f"{key_prefix}:{{refused}}:meta") == 0
        else:
            assert info["evicted_keys"] > 0  # Redis did evict under the limit
    finally:
        await asyncio.wait_for(ctx.aclose(), STEP)
        await client.aclose()


@pytest.mark.timeout(30)
async def test_finished_stream_whose_chunks_were_evicted_reads_failed_never_shorter(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    """Eviction can take a finished stream's chunks list and leave its record: a reader
    must then get `StreamFailed` ("storage lost"), not an empty (or shorter) stream that
    ends as if whole. The list is deleted by hand here, as an eviction would (the
    maxmemory test above meets it by chance)."""
    ctx = create_resumable_stream_context(redis_client, key_prefix=key_prefix)
    total = 5000  # more than a reader's first page, so one reads on after the loss
    expected: list[Chunk] = [text(i) for i in range(total)]
    try:
        stream = await ctx.create_new_resumable_stream("s", lambda: paced(total, 0))
        assert (await Reading().run(stream)).whole(expected)
        # A reader that has read part of it when the list goes.
        partway = Reading()
        reader = await ctx.resume_existing_stream("s", after=-1)
        assert reader is not None
        async for index, chunk in reader.indexed():
            partway.got.append((index, chunk))
            if index == 9:
                break
        await redis_client.delete(f"{key_prefix}:{{s}}:chunks")  # as an eviction would
        await partway.run(reader)
        assert partway.clean_prefix(expected)
        assert len(partway.got) < total
        assert isinstance(partway.error, StreamFailed), partway.error
        assert "storage lost" in str(partway.error)
        assert await ctx.get_status("s") is StreamStatus.FAILED
        late = await Reading().run(await ctx.resume_existing_stream("s"))
        assert late.got == []
        assert isinstance(late.error, StreamFailed)
        assert "storage lost" in str(late.error)
        # A client that tracks its position learns the stream has ended (HTTP 410).
        assert await ctx.resume_existing_stream("s", after=5) is None
    finally:
        await ctx.aclose()


@pytest.mark.timeout(30)
async def test_full_redis_marks_a_stream_failed_even_with_nothing_stored(
    redis_factory: list[RedisServer], key_prefix: str
) -> None:
    """``noeviction`` and Redis over its limit right after a stream was created: its
    first write is refused (OOM), retried for ``retry_window``, and the stream is then
    marked failed with Redis' reason, though not one chunk could be stored (an end
    writes a PEXPIRE first, which Redis always allows, and then may grow). A follower
    gets `StreamFailed` saying why, not `ProducerLost` a lease later."""
    server = start(redis_factory, "--maxmemory", "64mb", "--maxmemory-policy", "noeviction")
    client = aioredis.Redis.from_url(server.url)
    options = StreamOptions(lease=5.0, poll_interval=0.25, retry_window=0.5)
    ctx = create_resumable_stream_context(client, key_prefix=key_prefix, options=options)
    gate = asyncio.Event()

    async def source() -> AsyncIterator[str]:
        await gate.wait()
        yield "refused"

    elsewhere = create_resumable_stream_context(client, key_prefix=key_prefix, options=options)
    try:
        stream = await ctx.create_new_resumable_stream("s", source)
        # One follower in another process, one in the producer's (fed by the producer).
        follower, local = Reading(), Reading()
        joined = [
            await elsewhere.resume_existing_stream("s", after=-1),
            await ctx.resume_existing_stream("s", after=-1),
        ]
        following = [
            asyncio.create_task(reading.run(stream))
            for reading, stream in zip((follower, local), joined, strict=True)
        ]
        used = (await client.info("memory"))["used_memory"]
        await client.config_set("maxmemory", used // 2)  # full from now on
        gate.set()
        original = await Reading().run(stream)
        assert original.whole(["refused"])  # fed by its producer, as always
        await asyncio.wait_for(asyncio.gather(*following), STEP)
        assert follower.got == []
        assert local.clean_prefix(["refused"])  # maybe handed the chunk before the refusal
        for reading in (follower, local):
            assert isinstance(reading.error, StreamFailed), reading.error
            assert "maxmemory" in str(reading.error)
        assert await ctx.get_status("s") is StreamStatus.FAILED
    finally:
        await client.config_set("maxmemory", "64mb")
        await asyncio.wait_for(elsewhere.aclose(), STEP)
        await asyncio.wait_for(ctx.aclose(), STEP)
        await client.aclose()


@pytest.mark.timeout(30)
async def test_a_full_redis_refuses_chunks_in_a_shared_call_as_alone(
    redis_factory: list[RedisServer], key_prefix: str
) -> None:
    """Over ``maxmemory`` Redis refuses a script's commands that may grow memory only
    until the script has written. One `write.lua` call carries many streams' writes,
    so the writes that carry chunks go first: they are refused as each would be alone
    (and retried), while a renewal and an end in the same call are stored, whatever
    order they were asked in."""
    server = start(redis_factory, "--maxmemory", "64mb", "--maxmemory-policy", "noeviction")
    client = aioredis.Redis.from_url(server.url)
    backend = RedisBackend(client, key_prefix=key_prefix)
    common = {"ttl": 60.0, "finished_ttl": 60.0, "lease": 5.0}
    failed = Ended(StreamStatus.FAILED, 0, "persistence failed")
    try:
        for name in ("renewed", "ended", "chunks"):
            assert await backend.claim(name, "tok", ttl=60, lease=5) is None
        await backend.write("renewed", "tok", 0, [], end=None, **common)  # loads the script
        used = (await client.info("memory"))["used_memory"]
        await client.config_set("maxmemory", used // 2)  # full from now on
        await client.execute_command("CONFIG", "RESETSTAT")
        results = await asyncio.gather(
            backend.write("renewed", "tok", 0, [], end=None, **common),
            backend.write("ended", "tok", 0, [], end=failed, **common),
            backend.write("chunks", "tok", 0, ["x" * 100], end=None, **common),
            return_exceptions=True,
        )
        assert (await client.info("commandstats"))["cmdstat_evalsha"]["calls"] == 1
        assert results[:2] == [False, False]
        assert isinstance(results[2], BackendUnavailable), results[2]
        assert "maxmemory" in str(results[2])
        ended = await backend.snapshot("ended", 0, 0)
        assert ended is not None
        assert ended.status is StreamStatus.FAILED
        chunks = await backend.snapshot("chunks", 0, 0)
        assert chunks is not None
        assert (chunks.status, chunks.length) == (StreamStatus.RUNNING, 0)
    finally:
        await client.config_set("maxmemory", "64mb")
        await backend.aclose()
        await client.aclose()
