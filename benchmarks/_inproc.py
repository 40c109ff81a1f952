"""The in-process workloads (W1, W2, W3, W5, memory) for the Python variants.

Each function runs one measured step in this process and returns its figures as a
dict. Variants (``impl``):

* ``ours``: this library on its Redis backend; ``ours_memory``: on its in-memory
  backend (no Redis: what the core itself costs).
* ``plain``: the same source consumed directly, no resumability: the ceiling.
* ``raw``: the source consumed directly, every chunk stored and announced by a
  redis-py pipeline of ``RPUSH`` + ``PUBLISH`` awaited per chunk (write-through);
  ``raw_batched``: the same pipeline written behind, one in flight, carrying every
  chunk that arrived meanwhile (what the library's writer does, without Lua).
"""

from __future__ import annotations

import asyncio
import gc
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

from resumable_stream import (
    MemoryBackend,
    ResumableStream,
    StreamOptions,
    create_resumable_stream_context,
)
from resumable_stream._context import ResumableStreamContext
from resumable_stream._types import IndexedChunk

from ._common import (
    Meter,
    RedisProbe,
    SharedWriter,
    counting_client,
    expected,
    lags,
    make_chunk,
    now,
    percentiles,
    rss_bytes,
    source,
    throughput,
)

TTL = 300.0  # seconds: keys left on a shared server go away soon
OPTIONS = StreamOptions(finished_ttl=60.0)
# Memory steps hold thousands of idle streams while setting up thousands more, with the
# default 5 s lease: the renewals of 10,000 leases (every lease / 3) ride on a 50 ms
# clock, together, in a few pipelines (before, one round trip each let leases lapse).
IDLE_OPTIONS = StreamOptions(finished_ttl=60.0)
PY_IMPLS = (
    "ours", "ours_memory", "plain", "plain_task", "raw", "raw_batched", "raw_shared",
    "raw_shared_sub",
)


class Side:
    """One context on its own Redis client (or in memory), like one process's."""

    def __init__(
        self, impl: str, url: str, prefix: str, options: StreamOptions = OPTIONS
    ) -> None:
        from resumable_stream.backends.redis import RedisBackend

        self.client = None
        if impl == "ours_memory":
            self.backend: Any = MemoryBackend()
        else:
            self.client = counting_client(url)
            self.backend = RedisBackend(self.client, key_prefix=prefix)
        self.options = options
        self.ctx: ResumableStreamContext = create_resumable_stream_context(
            self.backend, ttl=TTL, options=options
        )

    @property
    def sent(self) -> int:
        return 0 if self.client is None else int(self.client.sent[0])

    async def aclose(self) -> None:
        await self.ctx.aclose()
        await self.backend.aclose()
        if self.client is not None:
            await self.client.aclose()


def shared_memory_backend(producer: Side, follower: Side) -> None:
    """In memory, a follower must read the producer's backend (one process)."""
    if isinstance(producer.backend, MemoryBackend):
        follower.backend = producer.backend
        follower.ctx = create_resumable_stream_context(
            producer.backend, ttl=TTL, options=producer.options
        )


async def read_all(
    stream: ResumableStream | None, into: list[tuple[int, str | bytes, int]]
) -> None:
    """Read a stream to its end, noting (index, chunk, receive time) for each chunk."""
    if stream is None:
        return
    async for index, chunk in stream.indexed():
        into.append((index, chunk, now()))


def exact(got: list[tuple[int, str | bytes, int]], want: list[str]) -> bool:
    return len(got) == len(want) and all(
        i == n and c == w for n, ((i, c, _), w) in enumerate(zip(got, want, strict=True))
    )


async def warm_up(side: Side, width: int, prefix: str) -> None:
    """Load the scripts and open as many connections as the step will use."""
    width = max(1, min(width, 64))

    async def one(n: int) -> None:
        stream = await side.ctx.create_new_resumable_stream(
            f"{prefix}-warm-{n}", partial(source, n, 20, 32)
        )
        await read_all(stream, [])

    await asyncio.gather(*(one(n) for n in range(width)))


# -- W1: fan-in ------------------------------------------------------------------------------


def raw_client(url: str) -> Any:
    """A counting client with an in-flight cap, as the library has: redis-py's pool
    raises instead of waiting once its 100 connections are busy."""
    client = counting_client(url)
    client.slots = asyncio.Semaphore(50)
    return client


async def _raw_stream(
    client: Any, key: str, src: Any, recv: list[tuple[int, str | bytes, int]], pipes: list[int]
) -> None:
    index = 0
    async for chunk in src:
        recv.append((index, chunk, now()))
        index += 1
        pipe = client.pipeline(transaction=False)
        pipe.rpush(key, chunk)
        pipe.publish(key, chunk)
        async with client.slots:
            await pipe.execute()
        pipes[0] += 1
    async with client.slots:
        await client.pexpire(key, int(TTL * 1000))


async def _raw_batched_stream(
    client: Any, key: str, src: Any, recv: list[tuple[int, str | bytes, int]], pipes: list[int]
) -> None:
    pending: list[str] = []
    wake = asyncio.Event()
    done = False

    async def writer() -> None:
        while True:
            if not pending:
                if done:
                    return
                wake.clear()
                await wake.wait()
                continue
            batch = pending[:1000]
            del pending[: len(batch)]
            pipe = client.pipeline(transaction=False)
            pipe.rpush(key, *batch)
            pipe.publish(key, "".join(batch))
            async with client.slots:
                await pipe.execute()
            pipes[0] += 1

    task = asyncio.create_task(writer())
    index = 0
    async for chunk in src:
        recv.append((index, chunk, now()))
        index += 1
        pending.append(chunk)
        wake.set()
    done = True
    wake.set()
    await task
    async with client.slots:
        await client.pexpire(key, int(TTL * 1000))


class _Handoff:
    """One reader's side of `_handed_over`: a deque and the future its reader waits on."""

    __slots__ = ("queue", "waiter")

    def __init__(self) -> None:
        self.queue: deque[str | None] = deque()
        self.waiter: asyncio.Future[None] | None = None

    def put(self, chunk: str | None) -> None:
        self.queue.append(chunk)
        future = self.waiter
        if future is not None and not future.done():
            future.set_result(None)

    async def read(self, got: list[tuple[int, str | bytes, int]]) -> None:
        loop = asyncio.get_running_loop()
        index = 0
        while True:
            while not self.queue:
                self.waiter = loop.create_future()
                await self.waiter
                self.waiter = None
            chunk = self.queue.popleft()
            if chunk is None:
                return
            got.append((index, chunk, now()))
            index += 1


async def _handed_over(
    src: AsyncIterator[str],
    got: list[tuple[int, str | bytes, int]],
    *followers: list[tuple[int, str | bytes, int]],
    store: Callable[[str], None] | None = None,
) -> None:
    """Read ``src`` through a producer task, the way a resumable stream must; each of
    ``followers`` reads the same chunks in a task of its own, fed by that producer;
    ``store`` gets each chunk after them."""
    feeds = [_Handoff() for _ in range(1 + len(followers))]

    async def produce() -> None:
        async for chunk in src:
            for feed in feeds:
                feed.put(chunk)
            if store is not None:
                store(chunk)
        for feed in feeds:
            feed.put(None)

    task = asyncio.create_task(produce())
    others = [asyncio.create_task(f.read(g)) for f, g in zip(feeds[1:], followers, strict=True)]
    await feeds[0].read(got)
    await asyncio.gather(task, *others)


class _Subscribed:
    """The least a follower on a Redis client of its own pays for a stream's live
    tail: one redis-py pub/sub connection subscribed to every stream's channel, one
    task reading it, each message (the chunks of one `SharedWriter` round, joined) cut
    into chunks of the known ``size`` and handed to that stream's followers. No
    snapshot, no merge, no index check, no resync: the floor under ours on another
    context or in another process, with the same 2 ms write clock behind it."""

    def __init__(self, client: Any, feeds: dict[str, list[_Handoff]], chunks: int, size: int):
        self._pubsub = client.pubsub()
        self._feeds = feeds
        self._left = dict.fromkeys(feeds, chunks)
        self._size = size

    async def subscribe(self) -> None:
        """Subscribe, and wait for every confirmation: a write after this is seen."""
        await self._pubsub.subscribe(*self._feeds)
        confirmed = 0
        while confirmed < len(self._feeds):
            message = await self._pubsub.get_message(timeout=5.0)
            if message is None:
                raise TimeoutError("the floor's subscription was not confirmed")
            confirmed += message["type"] == "subscribe"

    async def run(self) -> None:
        size = self._size
        try:
            while self._left:
                message = await self._pubsub.get_message(timeout=30.0)
                if message is None:
                    raise TimeoutError("the floor's follower saw nothing for 30 s")
                if message["type"] != "message":
                    continue
                channel = message["channel"].decode()
                data: bytes = message["data"]
                feeds = self._feeds[channel]
                for at in range(0, len(data), size):
                    chunk = data[at : at + size].decode()
                    for feed in feeds:
                        feed.put(chunk)
                self._left[channel] -= len(data) // size
                if self._left[channel] <= 0:
                    del self._left[channel]
                    for feed in feeds:
                        feed.put(None)
        finally:
            await self._pubsub.aclose()


async def _subscribed_followers(
    client: Any, followed: dict[str, list[list[tuple[int, str | bytes, int]]]], chunks: int,
    size: int,
) -> tuple[_Subscribed, Callable[[], Awaitable[Any]]]:
    """A subscribed `_Subscribed` for ``followed`` (channel: each follower's list), and
    the coroutine that reads it and runs each follower in a task of its own."""
    feeds = {ch: [_Handoff() for _ in lists] for ch, lists in followed.items()}
    sub = _Subscribed(client, feeds, chunks, size)
    await sub.subscribe()

    async def follow() -> Any:
        readers = [
            feed.read(got)
            for ch, lists in followed.items()
            for feed, got in zip(feeds[ch], lists, strict=True)
        ]
        return await asyncio.gather(sub.run(), *readers)

    return sub, follow


async def w1(spec: dict[str, Any]) -> dict[str, Any]:
    """N streams x chunks x size, producer and original reader in this process."""
    impl, url = spec["impl"], spec["url"]
    streams, chunks, size = spec["streams"], spec["chunks"], spec["chunk_bytes"]
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    want = [expected(s, chunks, size) for s in range(streams)]
    stamps: list[list[int]] = [[] for _ in range(streams)]
    got: list[list[tuple[int, str | bytes, int]]] = [[] for _ in range(streams)]
    probe = RedisProbe(url)
    side: Side | None = None
    client: Any = None
    shared_writer: SharedWriter | None = None
    pipes = [0]
    try:
        if impl in ("ours", "ours_memory"):
            side = Side(impl, url, prefix)
            await warm_up(side, streams, prefix)
            ctx = side.ctx

            async def one(s: int) -> None:
                stream = await ctx.create_new_resumable_stream(
                    f"{prefix}-{s}", partial(source, s, chunks, size, stamps[s])
                )
                await read_all(stream, got[s])

        elif impl == "plain":

            async def one(s: int) -> None:
                index = 0
                async for chunk in source(s, chunks, size, stamps[s]):
                    got[s].append((index, chunk, now()))
                    index += 1

        elif impl == "plain_task":
            # The floor for any design whose producer must outlive its reader: the
            # source runs in a task of its own and hands chunks over (a deque and a
            # future), nothing stored. Resumability costs at least this much.

            async def one(s: int) -> None:
                await _handed_over(source(s, chunks, size, stamps[s]), got[s])

        elif impl == "raw_shared":
            # plain_task, and every chunk stored behind by one writer for all streams:
            # the floor of storing with redis-py at all (`SharedWriter`).
            client = raw_client(url)
            await asyncio.gather(*(client.ping() for _ in range(min(streams, 50))))
            shared_writer = SharedWriter(client, client.slots, pipes, TTL)

            async def one(s: int) -> None:
                store = partial(shared_writer.add, f"{prefix}:raw:{s}")  # type: ignore[union-attr]
                await _handed_over(source(s, chunks, size, stamps[s]), got[s], store=store)

        elif impl in ("raw", "raw_batched"):
            client = raw_client(url)
            await asyncio.gather(*(client.ping() for _ in range(min(streams, 50))))
            run = _raw_stream if impl == "raw" else _raw_batched_stream

            async def one(s: int) -> None:
                src = source(s, chunks, size, stamps[s])
                await run(client, f"{prefix}:raw:{s}", src, got[s], pipes)

        else:
            raise ValueError(f"unknown impl {impl!r}")
        sent_before = side.sent if side is not None else 0
        await probe.start()
        with Meter() as meter:
            await asyncio.gather(*(one(s) for s in range(streams)))
            if shared_writer is not None:
                await shared_writer.aclose()  # the last round is stored, and counted
        await probe.stop()
        sent = (side.sent - sent_before) if side is not None else pipes[0]
        stored_ok = None
        if impl == "ours":
            stored_ok = await _stored_exact(side, prefix, want, chunks)
    finally:
        if side is not None:
            await side.aclose()
        if client is not None:
            await client.aclose()
        await probe.aclose()
    total = streams * chunks
    ok = all(exact(g, w) for g, w in zip(got, want, strict=True))
    latency = [t - stamps[s][i] for s in range(streams) for i, _, t in got[s]] if ok else []
    result = {
        **throughput(total, total * size, meter),
        "exact": ok and stored_ok is not False,
        "stored_exact": stored_ok,
        "latency_ms": percentiles(latency),
    }
    if impl != "plain" and impl != "ours_memory":
        result["redis"] = probe.report(total, sent)
    return result


async def _stored_exact(side: Side | None, prefix: str, want: list[list[str]], n: int) -> bool:
    """Read back up to 10 streams (evenly spread) from storage and compare."""
    assert side is not None
    picks = sorted({round(i * (len(want) - 1) / 9) for i in range(10)}) if len(want) > 1 else [0]
    for s in picks:
        stream = await side.ctx.resume_existing_stream(f"{prefix}-{s}", after=-1)
        got: list[tuple[int, str | bytes, int]] = []
        await read_all(stream, got)
        if not exact(got, want[s]):
            return False
    return True


# -- W2: followers ---------------------------------------------------------------------------


async def w2(spec: dict[str, Any]) -> dict[str, Any]:
    """One producer, ``followers`` followers in this process: on a context and client
    of their own (mode "same"), or in the producer's context (mode "context", where
    ours feeds them from the producer and the npm original still reads Redis)."""
    impl, url = spec["impl"], spec["url"]
    if impl == "raw_shared":
        return await _w2_raw_shared(spec)
    chunks, size, followers = spec["chunks"], spec["chunk_bytes"], spec["followers"]
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    producer = Side(impl, url, prefix)
    shared = spec["mode"] == "context"
    follower = producer if shared else Side(impl, url, prefix)
    shared_memory_backend(producer, follower)
    probe = RedisProbe(url)
    want = expected(0, chunks, size)
    stamps: list[int] = []
    gate = asyncio.Event()
    origin_got: list[tuple[int, str | bytes, int]] = []
    got: list[list[tuple[int, str | bytes, int]]] = [[] for _ in range(followers)]
    try:
        await warm_up(producer, 4, prefix)
        if not shared:
            await warm_up(follower, 4, prefix + "f")
        stream_id = f"{prefix}-w2"
        origin = await producer.ctx.create_new_resumable_stream(
            stream_id, partial(source, 0, chunks, size, stamps, gate=gate)
        )
        readers = [
            await follower.ctx.resume_existing_stream(stream_id, after=-1)
            for _ in range(followers)
        ]
        sides = [producer] if shared else [producer, follower]
        sent_before = sum(side.sent for side in sides)
        await probe.start()
        with Meter() as meter:
            tasks = [asyncio.create_task(read_all(origin, origin_got))]
            tasks += [
                asyncio.create_task(read_all(r, g)) for r, g in zip(readers, got, strict=True)
            ]
            gate.set()
            await asyncio.gather(*tasks)
        await probe.stop()
        sent = sum(side.sent for side in sides) - sent_before
    finally:
        await producer.aclose()
        if not shared:
            await follower.aclose()
        await probe.aclose()
    ok = exact(origin_got, want) and all(exact(g, want) for g in got)
    follower_lag = [lag for g in got for lag in lags(stamps, ((i, t) for i, _, t in g))]
    delivered = chunks * (followers + 1)
    result = {
        **throughput(delivered, delivered * size, meter),
        "exact": ok,
        "lag_ms": percentiles(follower_lag if ok else []),
        "origin_latency_ms": percentiles(
            lags(stamps, ((i, t) for i, _, t in origin_got)) if ok else []
        ),
    }
    if impl == "ours":
        result["redis"] = probe.report(chunks, sent)
    return result


async def _raw_produce(
    client: Any, key: str, spec: dict[str, Any], stamps: list[int], gate: asyncio.Event,
    got: list[tuple[int, str | bytes, int]],
) -> None:
    """W2's producer for the floor: the source read by a producer task, its chunks
    handed to the original reader and stored behind by a `SharedWriter`."""
    writer = SharedWriter(client, client.slots, [0], TTL)
    try:
        src = source(0, spec["chunks"], spec["chunk_bytes"], stamps, gate=gate)
        await _handed_over(src, got, store=partial(writer.add, key))
    finally:
        await writer.aclose()  # the last round is stored


async def _w2_raw_shared(spec: dict[str, Any]) -> dict[str, Any]:
    """W2's floor on another context (mode "same"): `_raw_produce`, and the followers
    on a client of their own through `_Subscribed`. Nothing is resumable."""
    url, chunks, size, followers = spec["url"], spec["chunks"], spec["chunk_bytes"], spec[
        "followers"
    ]
    key = f"bench-{uuid.uuid4().hex[:8]}:raw:w2"
    stamps: list[int] = []
    gate = asyncio.Event()
    origin_got: list[tuple[int, str | bytes, int]] = []
    got: list[list[tuple[int, str | bytes, int]]] = [[] for _ in range(followers)]
    producer, follower = raw_client(url), raw_client(url)
    try:
        await asyncio.gather(producer.ping(), follower.ping())
        _, follow = await _subscribed_followers(follower, {key: got}, chunks, size)
        with Meter() as meter:
            tasks = [
                asyncio.create_task(_raw_produce(producer, key, spec, stamps, gate, origin_got)),
                asyncio.create_task(follow()),
            ]
            gate.set()
            await asyncio.gather(*tasks)
    finally:
        await producer.aclose()
        await follower.aclose()
    want = expected(0, chunks, size)
    ok = exact(origin_got, want) and all(exact(g, want) for g in got)
    delivered = chunks * (followers + 1)
    return {
        **throughput(delivered, delivered * size, meter),
        "exact": ok,
        "lag_ms": percentiles(
            [lag for g in got for lag in lags(stamps, ((i, t) for i, _, t in g))] if ok else []
        ),
        "origin_latency_ms": percentiles(
            lags(stamps, ((i, t) for i, _, t in origin_got)) if ok else []
        ),
    }


async def _stdin_line() -> str:
    import sys

    return await asyncio.to_thread(sys.stdin.readline)


async def w2_producer(spec: dict[str, Any], announce: Callable[[str], None]) -> dict[str, Any]:
    """The producer's process of W2 across processes: waits for ``go`` on stdin."""
    url, chunks, size = spec["url"], spec["chunks"], spec["chunk_bytes"]
    prefix = spec["prefix"]
    stamps: list[int] = []
    gate = asyncio.Event()
    got: list[tuple[int, str | bytes, int]] = []
    # The floor (raw_shared) or ours: the same measured section either way.
    client = raw_client(url) if spec["impl"] == "raw_shared" else None
    side = None if client is not None else Side("ours", url, prefix)
    try:
        run: Callable[[], Awaitable[None]]
        if client is not None:
            await client.ping()
            run = partial(_raw_produce, client, spec["stream_id"], spec, stamps, gate, got)
        else:
            assert side is not None
            await warm_up(side, 4, prefix + "p")
            origin = await side.ctx.create_new_resumable_stream(
                spec["stream_id"], partial(source, 0, chunks, size, stamps, gate=gate)
            )
            run = partial(read_all, origin, got)
        announce("READY")
        await _stdin_line()
        with Meter() as meter:
            task = asyncio.create_task(run())
            gate.set()
            await task
    finally:
        if client is not None:
            await client.aclose()
        if side is not None:
            await side.aclose()
    return {
        **throughput(chunks, chunks * size, meter),
        "exact": exact(got, expected(0, chunks, size)),
        "stamps": stamps,
    }


async def w2_followers(spec: dict[str, Any], announce: Callable[[str], None]) -> dict[str, Any]:
    """The followers' process of W2 across processes."""
    url, chunks, size, followers = spec["url"], spec["chunks"], spec["chunk_bytes"], spec[
        "followers"
    ]
    prefix = spec["prefix"]
    got: list[list[tuple[int, str | bytes, int]]] = [[] for _ in range(followers)]
    want = expected(0, chunks, size)
    # The floor (raw_shared) or ours: the same measured section either way.
    client = raw_client(url) if spec["impl"] == "raw_shared" else None
    side = None if client is not None else Side("ours", url, prefix)
    try:
        follow: Callable[[], Awaitable[Any]]
        if client is not None:
            await client.ping()
            _, follow = await _subscribed_followers(client, {spec["stream_id"]: got}, chunks, size)
        else:
            assert side is not None
            await warm_up(side, 4, prefix + "f")
            readers = [
                await side.ctx.resume_existing_stream(spec["stream_id"], after=-1)
                for _ in range(followers)
            ]
            follow = partial(
                asyncio.gather, *(read_all(r, g) for r, g in zip(readers, got, strict=True))
            )
        announce("READY")
        with Meter() as meter:
            await follow()
    finally:
        if client is not None:
            await client.aclose()
        if side is not None:
            await side.aclose()
    ok = all(exact(g, want) for g in got)
    return {
        **throughput(chunks * followers, chunks * followers * size, meter),
        "exact": ok,
        "received": [[t for _, _, t in g] for g in got] if ok else [],
    }


# -- W3: resume ------------------------------------------------------------------------------


async def _floor_resumes(
    spec: dict[str, Any], chunks: Callable[[], AsyncIterator[tuple[int, str]]], want: list[str]
) -> dict[str, Any]:
    """A W3 floor's figures: ``singles`` resumes one at a time, then ``burst`` at once,
    each taking ``chunks()`` to its end, timed as ours are."""
    stored, size = spec["stored"], spec["chunk_bytes"]

    async def resume_once() -> tuple[int, int, bool]:
        started = now()
        got: list[tuple[int, str | bytes, int]] = []
        async for index, chunk in chunks():
            got.append((index, chunk, now()))
            if len(got) == stored:
                break
        return got[0][2] - started, got[-1][2] - started, exact(got, want)

    with Meter() as meter:
        single = [await resume_once() for _ in range(spec["singles"])]
        bursts = await asyncio.gather(*(resume_once() for _ in range(spec["burst"])))
    resumes = spec["singles"] + spec["burst"]
    return {
        **throughput(resumes * stored, resumes * stored * size, meter),
        "exact": all(r[2] for r in single + bursts),
        "ttfb_ms": percentiles([r[0] for r in single]),
        "catch_up_ms": percentiles([r[1] for r in single]),
        "burst_ttfb_ms": percentiles([r[0] for r in bursts]),
        "burst_catch_up_ms": percentiles([r[1] for r in bursts]),
    }


async def _w3_plain(spec: dict[str, Any]) -> dict[str, Any]:
    """W3's floor: the same resumes of chunks this process holds in a list already,
    handed out one by one by an async generator to the same loop. What giving 10,000
    chunks to Python code costs before any storage (the npm original hands a resume
    its text as one chunk)."""
    want = expected(0, spec["stored"], spec["chunk_bytes"])

    async def chunks() -> AsyncIterator[tuple[int, str]]:
        await asyncio.sleep(0)  # a resume waits for something: one loop turn at least
        for index, chunk in enumerate(want):
            yield index, chunk

    return await _floor_resumes(spec, chunks, want)


async def _w3_raw(spec: dict[str, Any]) -> dict[str, Any]:
    """W3's floor with Redis: the same resumes of a list of ``stored`` chunks read with
    redis-py, every page of 2,000 (ours' page) asked for in one pipeline, one round
    trip, each element decoded and handed out by an async generator. No record, no
    lease, no merge, no subscription: what reading the chunks back costs at all."""
    url, stored = spec["url"], spec["stored"]
    want = expected(0, stored, spec["chunk_bytes"])
    key = f"bench-{uuid.uuid4().hex[:8]}:raw:w3"
    client = raw_client(url)
    page = 2000

    async def chunks() -> AsyncIterator[tuple[int, str]]:
        pipe = client.pipeline(transaction=False)
        for start in range(0, stored, page):
            pipe.lrange(key, start, start + page - 1)
        async with client.slots:
            pages = await pipe.execute()
        index = 0
        for elements in pages:
            for element in elements:
                yield index, element.decode()
                index += 1

    try:
        for start in range(0, stored, page):
            await client.rpush(key, *want[start : start + page])
        await client.pexpire(key, int(TTL * 1000))
        return await _floor_resumes(spec, chunks, want)
    finally:
        await client.aclose()


async def w3(spec: dict[str, Any]) -> dict[str, Any]:
    """Time to first chunk of a resume of a running stream with ``stored`` chunks."""
    if spec["impl"] == "plain":
        return await _w3_plain(spec)
    if spec["impl"] == "raw":
        return await _w3_raw(spec)
    impl, url = spec["impl"], spec["url"]
    stored, size = spec["stored"], spec["chunk_bytes"]
    singles, burst = spec["singles"], spec["burst"]
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    producer = Side(impl, url, prefix)
    resumer = Side(impl, url, prefix)
    shared_memory_backend(producer, resumer)
    probe = RedisProbe(url)
    hold = asyncio.Event()
    want = expected(0, stored, size)
    origin_got: list[tuple[int, str | bytes, int]] = []
    stream_id = f"{prefix}-w3"
    try:
        await warm_up(producer, 4, prefix)
        await warm_up(resumer, min(burst, 64), prefix + "r")
        origin = await producer.ctx.create_new_resumable_stream(
            stream_id, partial(source, 0, stored + 1, size, hold_after=stored, hold=hold)
        )
        origin_task = asyncio.create_task(read_all(origin, origin_got))
        await _until_stored(producer, stream_id, stored)

        async def resume_once() -> tuple[int, int, bool]:
            started = now()
            reader = await resumer.ctx.resume_existing_stream(stream_id)
            assert reader is not None
            got: list[tuple[int, str | bytes, int]] = []
            async for index, chunk in reader.indexed():
                got.append((index, chunk, now()))
                if len(got) == stored:
                    break
            await reader.aclose()
            return got[0][2] - started, got[-1][2] - started, exact(got, want)

        sent_before = resumer.sent
        await probe.start()
        with Meter() as meter:
            single = [await resume_once() for _ in range(singles)]
            burst_started = now()
            bursts = await asyncio.gather(*(resume_once() for _ in range(burst)))
            burst_wall = now() - burst_started
        await probe.stop()
        sent = resumer.sent - sent_before
        hold.set()
        await origin_task
    finally:
        hold.set()
        await producer.aclose()
        await resumer.aclose()
        await probe.aclose()
    resumes = singles + burst
    ok = all(r[2] for r in single + bursts) and exact(origin_got, expected(0, stored + 1, size))
    result = {
        **throughput(resumes * stored, resumes * stored * size, meter),
        "exact": ok,
        "ttfb_ms": percentiles([r[0] for r in single]),
        "catch_up_ms": percentiles([r[1] for r in single]),
        "burst_ttfb_ms": percentiles([r[0] for r in bursts]),
        "burst_catch_up_ms": percentiles([r[1] for r in bursts]),
        "burst_wall_ms": burst_wall / 1e6,
    }
    if impl == "ours":
        report = probe.report(resumes, sent)
        result["redis"] = report
        result["round_trips_per_resume"] = report["round_trips_per_chunk"]
        result["commands_per_resume"] = report["commands_per_chunk"]
    return result


async def _until_stored(side: Side, stream_id: str, length: int) -> None:
    """Wait until the writer has stored ``length`` chunks (polling: no event for it)."""
    for _ in range(6000):
        snap = await side.backend.snapshot(stream_id, 0, 0)
        if snap is not None and snap.length >= length:
            return
        await asyncio.sleep(0.005)
    raise TimeoutError(f"{stream_id}: {length} chunks never stored")


# -- W5: slow producer -----------------------------------------------------------------------


async def w5(spec: dict[str, Any]) -> dict[str, Any]:
    """``streams`` streams each yielding a chunk every ``delay`` s; one follower each,
    on a context and Redis client of its own ("ours") or in the producer's context
    ("ours_context", fed by the producer)."""
    impl, url = spec["impl"], spec["url"]
    streams, chunks, size, delay = spec["streams"], spec["chunks"], spec["chunk_bytes"], spec[
        "delay"
    ]
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    want = [expected(s, chunks, size) for s in range(streams)]
    stamps: list[list[int]] = [[] for _ in range(streams)]
    got: list[list[tuple[int, str | bytes, int]]] = [[] for _ in range(streams)]
    fgot: list[list[tuple[int, str | bytes, int]]] = [[] for _ in range(streams)]
    probe = RedisProbe(url)
    producer = follower = None
    client: Any = None
    pipes = [0]
    with_followers = impl in ("ours", "ours_context", "plain_task", "raw_shared", "raw_shared_sub")
    shared = impl == "ours_context"
    shared_writer: SharedWriter | None = None
    follower_client: Any = None
    extra: list[Callable[[], Awaitable[Any]]] = []  # run beside the streams, measured
    try:
        if impl in ("ours", "ours_context"):
            producer = Side("ours", url, prefix)
            follower = producer if shared else Side("ours", url, prefix)
            await warm_up(producer, streams, prefix)
            if not shared:
                await warm_up(follower, streams, prefix + "f")
            gates = [asyncio.Event() for _ in range(streams)]

            async def one(s: int) -> None:
                assert producer is not None
                assert follower is not None
                sid = f"{prefix}-{s}"
                origin = await producer.ctx.create_new_resumable_stream(
                    sid, partial(source, s, chunks, size, stamps[s], delay=delay, gate=gates[s])
                )
                reader = await follower.ctx.resume_existing_stream(sid, after=-1)
                gates[s].set()
                await asyncio.gather(read_all(origin, got[s]), read_all(reader, fgot[s]))

        elif impl == "plain":

            async def one(s: int) -> None:
                index = 0
                async for chunk in source(s, chunks, size, stamps[s], delay=delay):
                    got[s].append((index, chunk, now()))
                    index += 1

        elif impl == "plain_task":
            # The floor for any design whose producer outlives its readers and feeds a
            # follower: the source in a task of its own, the original reader and one
            # follower in theirs, fed through a deque each; nothing stored.

            async def one(s: int) -> None:
                src = source(s, chunks, size, stamps[s], delay=delay)
                await _handed_over(src, got[s], fgot[s])

        elif impl == "raw_shared":
            # plain_task, and every chunk stored behind by one writer for all streams:
            # the floor of storing with redis-py at all (`SharedWriter`).
            client = raw_client(url)
            await asyncio.gather(*(client.ping() for _ in range(min(streams, 50))))
            shared_writer = SharedWriter(client, client.slots, pipes, TTL)

            async def one(s: int) -> None:
                src = source(s, chunks, size, stamps[s], delay=delay)
                store = partial(shared_writer.add, f"{prefix}:raw:{s}")  # type: ignore[union-attr]
                await _handed_over(src, got[s], fgot[s], store=store)

        elif impl == "raw_shared_sub":
            # raw_shared with each follower on a client of its own, fed by pub/sub
            # (`_Subscribed`): the floor under ours on another context.
            client = raw_client(url)
            follower_client = raw_client(url)
            await asyncio.gather(*(client.ping() for _ in range(min(streams, 50))))
            await follower_client.ping()
            shared_writer = SharedWriter(client, client.slots, pipes, TTL)
            keys = [f"{prefix}:raw:{s}" for s in range(streams)]
            _, follow = await _subscribed_followers(
                follower_client, {key: [g] for key, g in zip(keys, fgot, strict=True)},
                chunks, size,
            )
            extra.append(follow)

            async def one(s: int) -> None:
                src = source(s, chunks, size, stamps[s], delay=delay)
                store = partial(shared_writer.add, keys[s])  # type: ignore[union-attr]
                await _handed_over(src, got[s], store=store)

        elif impl == "raw":
            client = raw_client(url)
            await asyncio.gather(*(client.ping() for _ in range(min(streams, 50))))

            async def one(s: int) -> None:
                src = source(s, chunks, size, stamps[s], delay=delay)
                await _raw_stream(client, f"{prefix}:raw:{s}", src, got[s], pipes)

        else:
            raise ValueError(f"unknown impl {impl!r}")
        before = (producer.sent, follower.sent) if producer and follower else (0, 0)
        await probe.start()
        with Meter() as meter:
            await asyncio.gather(*(one(s) for s in range(streams)), *(run() for run in extra))
            if shared_writer is not None:
                await shared_writer.aclose()  # the last round is stored, and counted
        await probe.stop()
        if producer is not None and follower is not None:
            producer_trips = producer.sent - before[0]
            follower_trips = 0 if shared else follower.sent - before[1]
        else:
            producer_trips, follower_trips = pipes[0], 0
    finally:
        for side in (producer, None if shared else follower):
            if side is not None:
                await side.aclose()
        for raw in (client, follower_client):
            if raw is not None:
                await raw.aclose()
        await probe.aclose()
    total = streams * chunks
    ok = all(exact(g, w) for g, w in zip(got, want, strict=True))
    if with_followers:
        ok = ok and all(exact(g, w) for g, w in zip(fgot, want, strict=True))
    result: dict[str, Any] = {
        **throughput(total, total * size, meter),
        "exact": ok,
        "latency_ms": percentiles(
            [t - stamps[s][i] for s in range(streams) for i, _, t in got[s]] if ok else []
        ),
    }
    if with_followers:
        result["follower_lag_ms"] = percentiles(
            [t - stamps[s][i] for s in range(streams) for i, _, t in fgot[s]] if ok else []
        )
    if impl not in ("plain", "plain_task"):
        report = probe.report(total, producer_trips + follower_trips)
        report["producer_round_trips_per_chunk"] = producer_trips / total
        report["follower_round_trips_per_chunk"] = follower_trips / total
        result["redis"] = report
    return result


# -- memory ----------------------------------------------------------------------------------


async def _settle() -> int:
    for _ in range(3):
        await asyncio.sleep(0.05)
    gc.collect()
    return rss_bytes()


async def memory(spec: dict[str, Any]) -> dict[str, Any]:
    """Process memory per running stream (source, producer, original reader) and per
    follower, with ``streams`` streams running at once, each holding one chunk."""
    impl, url, streams = spec["impl"], spec["url"], spec["streams"]
    size = 32
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    hold = asyncio.Event()
    got: list[list[tuple[int, str | bytes, int]]] = [[] for _ in range(streams)]
    fgot: list[list[tuple[int, str | bytes, int]]] = [[] for _ in range(streams)]
    first = [asyncio.Event() for _ in range(streams)]
    ffirst = [asyncio.Event() for _ in range(streams)]
    producer = follower = None

    async def read_noting(
        stream: ResumableStream | None, into: list[Any], seen: asyncio.Event
    ) -> None:
        assert stream is not None
        async for index, chunk in stream.indexed():
            into.append((index, chunk, 0))
            seen.set()

    try:
        tasks: list[asyncio.Task[None]] = []
        if impl == "plain":
            base = await _settle()

            async def plain_one(s: int) -> None:
                index = 0
                async for chunk in source(s, 2, size, hold_after=1, hold=hold):
                    got[s].append((index, chunk, 0))
                    index += 1
                    first[s].set()

            tasks = [asyncio.create_task(plain_one(s)) for s in range(streams)]
            await asyncio.gather(*(e.wait() for e in first))
            running = await _settle()
            with_followers = running
        else:
            producer = Side(impl, url, prefix, IDLE_OPTIONS)
            follower = Side(impl, url, prefix, IDLE_OPTIONS)
            shared_memory_backend(producer, follower)
            await warm_up(producer, 64, prefix)
            await warm_up(follower, 64, prefix + "f")
            base = await _settle()

            async def start(s: int) -> None:
                assert producer is not None
                stream = await producer.ctx.create_new_resumable_stream(
                    f"{prefix}-{s}", partial(source, s, 2, size, hold_after=1, hold=hold)
                )
                tasks.append(asyncio.create_task(read_noting(stream, got[s], first[s])))

            await _in_waves(start, streams)
            await asyncio.gather(*(e.wait() for e in first))
            running = await _settle()

            async def follow(s: int) -> None:
                assert follower is not None
                stream = await follower.ctx.resume_existing_stream(f"{prefix}-{s}", after=-1)
                tasks.append(asyncio.create_task(read_noting(stream, fgot[s], ffirst[s])))

            await _in_waves(follow, streams)
            await asyncio.gather(*(e.wait() for e in ffirst))
            with_followers = await _settle()
        hold.set()
        await asyncio.gather(*tasks)
    finally:
        hold.set()
        for side in (producer, follower):
            if side is not None:
                await side.aclose()
    ok = all(
        [c for _, c, _ in g] == expected(s, 2, size) for s, g in enumerate(got)
    )
    if impl != "plain":
        ok = ok and all(
            [c for _, c, _ in g] == expected(s, 2, size) for s, g in enumerate(fgot)
        )
    result: dict[str, Any] = {
        "exact": ok,
        "streams": streams,
        "rss_base_mb": base / 2**20,
        "kb_per_stream": (running - base) / streams / 1024,
        "peak_rss_mb": throughput(1, 1, Meter())["peak_rss_mb"],
    }
    if impl != "plain":
        result["kb_per_follower"] = (with_followers - running) / streams / 1024
    return result


async def _in_waves(start: Callable[[int], Awaitable[None]], count: int, wave: int = 500) -> None:
    for first in range(0, count, wave):
        await asyncio.gather(*(start(s) for s in range(first, min(count, first + wave))))


async def _check(
    iterator: AsyncIterator[IndexedChunk], stream: int, size: int, position: int = 0
) -> int:
    """Read to the end, comparing each chunk with `make_chunk` on the fly (nothing
    kept, so the harness holds no memory); returns the next expected index, or -1
    at the first chunk out of place."""
    async for index, chunk in iterator:
        if index != position or chunk != make_chunk(stream, index, size):
            return -1
        position += 1
    return position


async def memory_stalled(spec: dict[str, Any]) -> dict[str, Any]:
    """A follower that stops reading while ``chunks`` x ``chunk_bytes`` are produced:
    process memory must stay bounded (its live queue is dropped past its budget and
    it re-reads from Redis once it reads again), and it still gets every byte."""
    url, chunks, size = spec["url"], spec["chunks"], spec["chunk_bytes"]
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    producer = Side("ours", url, prefix)
    follower = Side("ours", url, prefix)
    peak = 0
    try:
        await warm_up(producer, 4, prefix)
        await warm_up(follower, 4, prefix + "f")
        base = await _settle()
        stream_id = f"{prefix}-stalled"
        origin = await producer.ctx.create_new_resumable_stream(
            stream_id, partial(source, 0, chunks, size)
        )
        reader = await follower.ctx.resume_existing_stream(stream_id, after=-1)
        assert origin is not None
        assert reader is not None
        iterator = reader.indexed()
        index, chunk = await iterator.__anext__()  # then it stalls
        first_ok = index == 0 and chunk == make_chunk(0, 0, size)
        origin_task = asyncio.create_task(_check(origin.indexed(), 0, size))
        while not origin_task.done():
            peak = max(peak, rss_bytes())
            await asyncio.sleep(0.01)
        origin_read = await origin_task
        stalled = await _settle()
        peak = max(peak, stalled)
        follower_read = await _check(iterator, 0, size, 1)
    finally:
        await producer.aclose()
        await follower.aclose()
    return {
        "exact": first_ok and origin_read == chunks and follower_read == chunks,
        "produced_mb": chunks * size / 2**20,
        "reader_buffer_mb": OPTIONS.reader_buffer_bytes / 2**20,
        "rss_growth_mb": (peak - base) / 2**20,
        "peak_rss_mb": throughput(1, 1, Meter())["peak_rss_mb"],
    }


async def redis_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """Redis memory per KB of chunks stored: ours (msgpack in a list, plus the
    stream's hash) against a bare ``RPUSH`` of the same chunks."""
    impl, url = spec["impl"], spec["url"]
    streams, chunks, size = spec["streams"], spec["chunks"], spec["chunk_bytes"]
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    probe = RedisProbe(url)
    side: Side | None = None
    client: Any = None
    ok = True
    try:
        if impl == "ours":
            side = Side(impl, url, prefix)
            await warm_up(side, 4, prefix + "w")
            before = await probe.used_memory()
            readers = [[] for _ in range(streams)]  # type: list[list[tuple[int, str | bytes, int]]]

            async def one(s: int) -> None:
                assert side is not None
                stream = await side.ctx.create_new_resumable_stream(
                    f"{prefix}-{s}", partial(source, s, chunks, size)
                )
                await read_all(stream, readers[s])

            await asyncio.gather(*(one(s) for s in range(streams)))
            want = [expected(s, chunks, size) for s in range(streams)]
            ok = await _stored_exact(side, prefix, want, chunks)
        else:
            client = counting_client(url)
            await client.ping()
            before = await probe.used_memory()
            for s in range(streams):
                await client.rpush(f"{prefix}:raw:{s}", *expected(s, chunks, size))
                await client.pexpire(f"{prefix}:raw:{s}", int(TTL * 1000))
        after = await probe.used_memory()
    finally:
        if side is not None:
            await side.aclose()
        if client is not None:
            await client.aclose()
        await probe.aclose()
    stored_kb = streams * chunks * size / 1024
    return {
        "exact": ok,
        "stored_kb": stored_kb,
        "redis_bytes_per_stored_kb": (after - before) / stored_kb,
        "chunk_bytes": size,
    }
