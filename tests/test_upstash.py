"""Upstash over REST, through the loopback stand-in of its API (``upstash_standin.py``).

The contract suite runs over REST too (the ``upstash`` parameter of the ``backend``
fixture). Here: the stand-in checked against the official ``upstash-redis`` client, so
that it speaks Upstash's protocol and not merely ours; chunks whose bytes look like SSE;
streams shared between REST and TCP clients; a producer and a follower in two
processes; the subscription cut or refused (followers fall back to the list); wrong
credentials, an unreachable URL, a 5xx, the stand-in stopped mid-stream; the
environment's order; the chat demo configured by the two variables alone; batching.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import msgpack
import pytest
import redis.asyncio as aioredis
from upstash_redis.asyncio import Redis as UpstashRedis
from upstash_redis.errors import UpstashError

from resumable_stream import (
    BackendUnavailable,
    InvalidArgument,
    MemoryBackend,
    StreamOptions,
    create_resumable_stream_context,
)
from resumable_stream._environment import backend_from_environment
from resumable_stream._keys import StreamKeys
from resumable_stream.backends.redis import RedisBackend
from resumable_stream.backends.upstash import UpstashBackend, UpstashUnavailable

from .app_process import AppProcess
from .helpers import ControlledSource, read_all
from .procs.stream_proc import chunk_text, digest
from .servers import RedisServer, free_port
from .test_example_apps import chat_body, chat_text, check_ids, example, read_events
from .test_processes import Child
from .upstash_standin import UpstashStandin

pytestmark = pytest.mark.timeout(60)

FAST = StreamOptions(lease=1.0, poll_interval=0.25, shutdown_grace=2.0, retry_window=1.0)
# A follower that never re-reads on its own: only the backend's feed (live or polled)
# can bring it new chunks, so these tests see that feed at work.
DEAF = StreamOptions(lease=5.0, poll_interval=30.0, shutdown_grace=2.0, retry_window=1.0)
ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "procs" / "upstash_proc.py"
STEP = 15.0


def expected_text(n: int) -> str:
    return "".join(chunk_text(i) for i in range(n))


def requests(stats: dict[str, int]) -> int:
    return sum(stats.values())


@pytest.fixture
async def pair(
    upstash_standin: UpstashStandin, key_prefix: str
) -> AsyncIterator[tuple[UpstashBackend, UpstashBackend]]:
    """Two backends on the stand-in, as two processes would have."""
    made = [
        UpstashBackend(upstash_standin.url, upstash_standin.token, key_prefix=key_prefix)
        for _ in range(2)
    ]
    yield made[0], made[1]
    for backend in made:
        await backend.aclose()


async def paced(
    total: int, gate: asyncio.Event | None = None, at: int = 0, pace: float = 0.002
) -> AsyncIterator[str]:
    """``chunk_text(i)`` for i < total, ``pace`` apart; waits for ``gate`` before ``at``."""
    for i in range(total):
        if gate is not None and i == at:
            await gate.wait()
        yield chunk_text(i)
        await asyncio.sleep(pace)  # a live source, not synchronisation


# -- the stand-in speaks Upstash's protocol --------------------------------------------


async def test_standin_answers_the_official_client(
    upstash_standin: UpstashStandin, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    client = UpstashRedis(
        upstash_standin.url, upstash_standin.token, allow_telemetry=False, rest_retries=0
    )
    key, counter, record = f"{key_prefix}:k", f"{key_prefix}:n", f"{key_prefix}:h"
    try:
        assert await client.set(key, "h\u00e9llo \U0001f600") is True  # a plain OK
        assert await client.get(key) == "h\u00e9llo \U0001f600"  # base64 decoded by it
        assert await redis_client.get(key) == "h\u00e9llo \U0001f600".encode()
        pipe = client.pipeline()
        pipe.set(counter, "1")
        pipe.incr(counter)
        pipe.get(counter)
        assert await pipe.exec() == [True, 2, "2"]
        tx = client.multi()  # /multi-exec
        tx.incr(counter)
        tx.get(counter)
        assert await tx.exec() == [3, "3"]
        script = "return {1, ARGV[1], redis.call('GET', KEYS[1]), false}"
        assert await client.eval(script, [key], ["x"]) == [1, "x", "h\u00e9llo \U0001f600", None]
        assert await client.hset(record, values={"a": "1", "b": "2"}) == 2
        assert await client.hgetall(record) == {"a": "1", "b": "2"}
        with pytest.raises(UpstashError, match="WRONGTYPE"):
            await client.incr(record)
    finally:
        await client.close()
    wrong = UpstashRedis(upstash_standin.url, "wrong", allow_telemetry=False, rest_retries=0)
    try:
        with pytest.raises(UpstashError, match="Unauthorized"):
            await wrong.get(key)
    finally:
        await wrong.close()


async def test_standin_encoding_and_status(
    upstash_standin: UpstashStandin, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    """Binary values through ``Upstash-Encoding: base64``; statuses as Upstash's."""
    key = f"{key_prefix}:bin"
    await redis_client.set(key, b"\xff\x00\n")
    auth = {"Authorization": f"Bearer {upstash_standin.token}"}
    async with httpx.AsyncClient(base_url=upstash_standin.url, timeout=5.0) as http:
        b64 = {**auth, "Upstash-Encoding": "base64"}
        encoded = await http.post("/", json=["GET", key], headers=b64)
        assert encoded.json() == {"result": "/wAK"}
        ok = await http.post("/", json=["SET", key, "v"], headers=b64)
        assert ok.json() == {"result": "OK"}
        refused = await http.post("/", json=["NOSUCHCOMMAND"], headers=auth)
        assert refused.status_code == 400
        assert "unknown command" in refused.json()["error"]
        anonymous = await http.post("/", json=["GET", key])
        assert (anonymous.status_code, anonymous.json()) == (401, {"error": "Unauthorized"})


# -- streams over REST -------------------------------------------------------------------


async def test_arguments_survive_the_base64_prelude(
    pair: tuple[UpstashBackend, UpstashBackend], redis_client: aioredis.Redis, key_prefix: str
) -> None:
    """Every byte value, every padding length: what a script stores over REST is what
    the caller passed, as Redis itself holds it."""
    backend = pair[0]
    every_byte = bytes(range(256))
    for n in (0, 1, 2, 3, 4, 5, 256, 257, 258):
        value = (every_byte * 2)[:n]
        assert await backend.claim(f"s{n}", "token", ttl=60, lease=60, metadata=value) is None
        snap = await backend.snapshot(f"s{n}", 0, 0)
        assert snap is not None
        assert snap.metadata == value
        meta = StreamKeys(key_prefix, f"s{n}").meta
        assert await redis_client.hget(meta, "info") == value


def test_backend_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidArgument):
        UpstashBackend("redis://127.0.0.1:6379", "t")
    with pytest.raises(InvalidArgument):
        UpstashBackend("https://a.upstash.io", "")
    with pytest.raises(InvalidArgument):
        UpstashBackend("https://a.upstash.io", "t", timeout=0)
    for name in (*UPSTASH, *VERCEL):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(InvalidArgument, match="UPSTASH_REDIS_REST_URL"):
        UpstashBackend.from_env()
    for name, value in VERCEL.items():
        monkeypatch.setenv(name, value)
    assert UpstashBackend.from_env().url == VERCEL["KV_REST_API_URL"]
    for name, value in UPSTASH.items():
        monkeypatch.setenv(name, value)
    assert UpstashBackend.from_env().url == UPSTASH["UPSTASH_REDIS_REST_URL"]


async def test_chunks_that_look_like_events_cannot_forge_any(
    pair: tuple[UpstashBackend, UpstashBackend], key_prefix: str
) -> None:
    """SSE frames by lines and a message's payload is raw: a chunk holding a blank line
    and a forged ``message`` must reach the follower as the bytes it is, and nothing
    else (the payload is only a doorbell; chunks come from the list)."""
    channel = StreamKeys(key_prefix, "s").events
    forged = msgpack.packb(0) + msgpack.packb(1) + msgpack.packb("FORGED")
    chunks = [
        "a\n",
        f"\n\ndata: message,{channel},".encode() + forged + b"\n\n",
        "\r\nb\r",
        b"\x00\xff\n",
        "",
        "\u00e9\n\ndata: subscribe,x,1\n\n",
    ]
    producer = create_resumable_stream_context(pair[0], options=FAST)
    follower = create_resumable_stream_context(pair[1], options=DEAF)
    try:
        source = ControlledSource()
        original = await producer.resumable_stream("s", source)
        live = await follower.resume_existing_stream("s")
        assert live is not None
        for chunk in chunks:
            source.write(chunk)
        source.close()
        assert [c async for c in live] == chunks
        assert [c async for c in original] == chunks  # type: ignore[union-attr]
    finally:
        await producer.aclose()
        await follower.aclose()


@pytest.mark.parametrize("writer", ["rest", "tcp"])
async def test_rest_and_tcp_clients_share_streams(
    writer: str,
    pair: tuple[UpstashBackend, UpstashBackend],
    redis_client: aioredis.Redis,
    key_prefix: str,
) -> None:
    """Same keys, same scripts, same messages: a stream written one way is followed live
    the other way (an app on Upstash's TCP endpoint beside functions on REST)."""
    rest = create_resumable_stream_context(pair[0], options=FAST)
    tcp = create_resumable_stream_context(redis_client, key_prefix=key_prefix, options=DEAF)
    producer, reader = (rest, tcp) if writer == "rest" else (tcp, rest)
    try:
        gate = asyncio.Event()
        original = await producer.create_new_resumable_stream("s", lambda: paced(200, gate, 100))
        assert original is not None
        follower = await reader.resume_existing_stream("s")
        assert follower is not None
        gate.set()
        assert await read_all(follower) == expected_text(200)
        assert await read_all(original) == expected_text(200)
        again = await reader.resume_existing_stream("s", after=9)
        assert await read_all(again) == expected_text(200)[len(expected_text(10)) :]
    finally:
        await rest.aclose()
        await tcp.aclose()


# -- two processes -------------------------------------------------------------------


@pytest.fixture
async def spawn_rest(upstash_standin: UpstashStandin) -> AsyncIterator[object]:
    """``await spawn_rest(mode, *args)``: a child configured by the two variables only."""
    children: list[Child] = []
    path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {
        k: v for k, v in os.environ.items()
        if k not in ("REDIS_URL", "KV_URL", "KV_REST_API_URL", "KV_REST_API_TOKEN")
    }  # fmt: skip
    env.update(upstash_standin.env, PYTHONPATH=os.pathsep.join(path))

    async def start(*args: str) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(SCRIPT), *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )  # fmt: skip
        child = Child(proc)
        children.append(child)
        return child

    yield start
    for child in children:
        await child.kill()


async def test_follower_in_another_process(
    spawn_rest: object, pair: tuple[UpstashBackend, UpstashBackend], key_prefix: str
) -> None:
    total = 600
    child: Child = await spawn_rest("follow", key_prefix, "s")  # type: ignore[operator]
    await child.expect("STARTED")
    producer = create_resumable_stream_context(pair[0], options=FAST)
    joined = asyncio.Event()
    try:
        original = await producer.create_new_resumable_stream(
            "s", lambda: paced(total, joined, total // 2, pace=0)
        )
        assert original is not None
        await child.send("GO")
        await child.expect("JOINED")
        joined.set()  # the second half is written while the child follows
        assert await read_all(original) == expected_text(total)
        assert await child.expect("RESULT") == [str(total), digest(expected_text(total))]
        assert await child.exit_code() == 0
    finally:
        await producer.aclose()


async def test_producer_in_another_process(
    spawn_rest: object, pair: tuple[UpstashBackend, UpstashBackend], key_prefix: str
) -> None:
    total = 600
    child: Child = await spawn_rest("produce", key_prefix, "s", str(total))  # type: ignore[operator]
    await child.expect("HALF")
    follower = create_resumable_stream_context(pair[1], options=FAST)
    try:
        stream = await follower.resume_existing_stream("s")
        assert stream is not None
        await child.send("JOINED")
        assert await read_all(stream) == expected_text(total)
        assert await child.expect("RESULT") == [str(total), digest(expected_text(total))]
        assert await child.exit_code() == 0
    finally:
        await follower.aclose()


# -- the subscription cut or refused ------------------------------------------------------


@pytest.mark.parametrize("after_cut", ["resubscribes", "polls"])
async def test_subscription_cut_mid_stream(
    after_cut: str,
    upstash_standin: UpstashStandin,
    pair: tuple[UpstashBackend, UpstashBackend],
) -> None:
    """The stand-in ends the follower's subscription halfway. With subscriptions still
    served, the backend subscribes again; with them refused, it polls the list. Either
    way the follower (which never re-reads on its own) ends with the exact text."""
    total = 400
    producer = create_resumable_stream_context(pair[0], options=FAST)
    follower = create_resumable_stream_context(pair[1], options=DEAF)
    gate = asyncio.Event()
    try:
        original = await producer.create_new_resumable_stream(
            "s", lambda: paced(total, gate, total // 2)
        )
        assert original is not None
        stream = await follower.resume_existing_stream("s")
        assert stream is not None
        got: list[str] = []
        async for chunk in stream:
            got.append(str(chunk))
            if len(got) == total // 2:
                break
        if after_cut == "polls":
            await asyncio.to_thread(upstash_standin.control, "subscribe/off")
        before = await asyncio.to_thread(upstash_standin.control, "cut")
        gate.set()
        async for chunk in stream:
            got.append(str(chunk))
        after = await asyncio.to_thread(upstash_standin.control, "stats")
        assert "".join(got) == expected_text(total)
        assert after["subscribe"] > before["subscribe"]  # it tried to subscribe again
        if after_cut == "polls":
            assert after.get("pipeline", 0) > before.get("pipeline", 0)  # and polled
        assert await read_all(original) == expected_text(total)
    finally:
        await asyncio.to_thread(upstash_standin.control, "subscribe/on")
        await producer.aclose()
        await follower.aclose()


async def test_subscription_refused_from_the_start(
    upstash_standin: UpstashStandin, pair: tuple[UpstashBackend, UpstashBackend]
) -> None:
    """A subscribe endpoint that never works (a proxy, a plan without it): followers
    join at once and read the whole stream by polling the list."""
    producer = create_resumable_stream_context(pair[0], options=FAST)
    follower = create_resumable_stream_context(pair[1], options=DEAF)
    await asyncio.to_thread(upstash_standin.control, "subscribe/off")
    try:
        gate = asyncio.Event()
        original = await producer.create_new_resumable_stream("s", lambda: paced(200, gate, 50))
        assert original is not None
        stream = await follower.resume_existing_stream("s")
        assert stream is not None
        gate.set()
        assert await read_all(stream) == expected_text(200)
        assert await read_all(original) == expected_text(200)
    finally:
        await asyncio.to_thread(upstash_standin.control, "subscribe/on")
        await producer.aclose()
        await follower.aclose()


async def test_subscription_never_confirmed(
    upstash_standin: UpstashStandin, key_prefix: str
) -> None:
    """A proxy that buffers the streaming response: the subscription is never confirmed,
    and after ``subscribe_timeout`` followers poll the list meanwhile."""
    producer_backend = UpstashBackend(
        upstash_standin.url, upstash_standin.token, key_prefix=key_prefix
    )
    follower_backend = UpstashBackend(
        upstash_standin.url, upstash_standin.token, key_prefix=key_prefix,
        subscribe_timeout=0.3,
    )  # fmt: skip
    producer = create_resumable_stream_context(producer_backend, options=FAST)
    follower = create_resumable_stream_context(follower_backend, options=DEAF)
    await asyncio.to_thread(upstash_standin.control, "subscribe/hold")
    try:
        gate = asyncio.Event()
        original = await producer.create_new_resumable_stream("s", lambda: paced(100, gate, 10))
        assert original is not None
        stream = await follower.resume_existing_stream("s")
        assert stream is not None
        gate.set()
        start = time.monotonic()
        assert await read_all(stream) == expected_text(100)
        assert time.monotonic() - start < 10.0  # not DEAF's 30 s poll: the backend polled
        assert await read_all(original) == expected_text(100)
    finally:
        await asyncio.to_thread(upstash_standin.control, "subscribe/on")
        await producer.aclose()
        await follower.aclose()
        await producer_backend.aclose()
        await follower_backend.aclose()


# -- errors: typed, with the status and Upstash's text, never a hang ----------------------


def never() -> AsyncIterator[str]:
    raise AssertionError("make_stream must not be called")


async def test_wrong_token(upstash_standin: UpstashStandin, key_prefix: str) -> None:
    backend = UpstashBackend(upstash_standin.url, "not-the-token", key_prefix=key_prefix)
    ctx = create_resumable_stream_context(backend, options=FAST)
    try:
        with pytest.raises(UpstashUnavailable) as info:
            await ctx.resumable_stream("s", never)
        assert (info.value.status_code, info.value.error) == (401, "Unauthorized")
        assert "HTTP 401: Unauthorized" in str(info.value)
        assert isinstance(info.value, BackendUnavailable)
        with pytest.raises(UpstashUnavailable, match="401"):
            await ctx.resume_existing_stream("s")
        feed = await backend.subscribe("s", max_buffered_bytes=1 << 20)
        with pytest.raises(UpstashUnavailable, match="401"):
            await feed.get(10.0)  # the refused subscription, not a timeout (None)
        await feed.aclose()
    finally:
        await ctx.aclose()


async def test_unreachable_url(key_prefix: str) -> None:
    backend = UpstashBackend(f"http://127.0.0.1:{free_port()}", "token", key_prefix=key_prefix)
    ctx = create_resumable_stream_context(backend, options=FAST)
    try:
        start = time.monotonic()
        with pytest.raises(UpstashUnavailable) as info:
            await ctx.resumable_stream("s", never)
        assert info.value.status_code is None
        assert "unreachable" in str(info.value)
        assert time.monotonic() - start < 5.0
    finally:
        await ctx.aclose()


@pytest.mark.parametrize(
    ("status", "text"),
    [(502, "stand-in failing with 502"), (400, "ERR max requests limit exceeded")],
)
async def test_server_error_or_quota(
    status: int, text: str, upstash_standin: UpstashStandin, key_prefix: str
) -> None:
    backend = UpstashBackend(upstash_standin.url, upstash_standin.token, key_prefix=key_prefix)
    ctx = create_resumable_stream_context(backend, options=FAST)
    await asyncio.to_thread(upstash_standin.control, f"fail/{status}")
    try:
        with pytest.raises(UpstashUnavailable) as info:
            await ctx.resumable_stream("s", never)
        assert (info.value.status_code, info.value.error) == (status, text)
        assert text in str(info.value)
    finally:
        await asyncio.to_thread(upstash_standin.control, "fail/0")
        await ctx.aclose()


async def test_standin_stopped_mid_stream(redis_server: RedisServer, key_prefix: str) -> None:
    """Upstash gone while a follower in another context follows: it ends with
    `BackendUnavailable` within about ``retry_window``, never hangs; the original reader
    (fed in its own process) still gets the whole stream."""
    standin = UpstashStandin(redis_server.port)
    standin.start()
    backends = [
        UpstashBackend(standin.url, standin.token, key_prefix=key_prefix, timeout=2.0)
        for _ in range(2)
    ]
    producer = create_resumable_stream_context(backends[0], options=FAST)
    follower = create_resumable_stream_context(backends[1], options=FAST)
    gate = asyncio.Event()
    try:
        original = await producer.create_new_resumable_stream("s", lambda: paced(100, gate, 50))
        assert original is not None
        stream = await follower.resume_existing_stream("s")
        assert stream is not None
        got = [str(await stream.__anext__()) for _ in range(50)]
        assert "".join(got) == expected_text(50)
        await asyncio.to_thread(standin.stop)
        gate.set()
        start = time.monotonic()

        async def rest() -> None:
            async for chunk in stream:
                got.append(str(chunk))

        with pytest.raises(BackendUnavailable):
            await rest()
        assert time.monotonic() - start < 10.0
        assert expected_text(100).startswith("".join(got))  # a prefix: no gap, no duplicate
        assert await read_all(original) == expected_text(100)
    finally:
        await asyncio.wait_for(producer.aclose(), 15)
        await asyncio.wait_for(follower.aclose(), 15)
        standin.close()


# -- the environment --------------------------------------------------------------------

UPSTASH = {"UPSTASH_REDIS_REST_URL": "https://a.upstash.io", "UPSTASH_REDIS_REST_TOKEN": "ta"}
VERCEL = {"KV_REST_API_URL": "https://b.upstash.io", "KV_REST_API_TOKEN": "tb"}


@pytest.mark.parametrize(
    ("environ", "kind", "named"),
    [
        (
            {"REDIS_URL": "redis://r", "KV_URL": "redis://k", **UPSTASH, **VERCEL},
            RedisBackend,
            "$REDIS_URL",
        ),
        ({"KV_URL": "redis://k", **UPSTASH, **VERCEL}, RedisBackend, "$KV_URL"),
        ({**UPSTASH, **VERCEL}, UpstashBackend, "$UPSTASH_REDIS_REST_URL"),
        (VERCEL, UpstashBackend, "$KV_REST_API_URL"),
        ({}, MemoryBackend, "memory"),
    ],
)  # fmt: skip
async def test_environment_order(
    environ: dict[str, str], kind: type, named: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="resumable_stream"):
        backend = backend_from_environment("p", environ)
    try:
        assert type(backend) is kind
        if isinstance(backend, UpstashBackend):
            expected = UPSTASH if "UPSTASH_REDIS_REST_URL" in environ else VERCEL
            assert backend.url == next(iter(expected.values()))
        records = [r for r in caplog.records if r.name == "resumable_stream"]
        assert len(records) == 1, records
        assert named in records[0].getMessage()
    finally:
        await backend.aclose()


@pytest.mark.parametrize(
    "environ",
    [
        {"UPSTASH_REDIS_REST_URL": "https://a.upstash.io"},
        {"UPSTASH_REDIS_REST_TOKEN": "t", **VERCEL},
        {"KV_REST_API_URL": "https://b.upstash.io"},
    ],
)
def test_half_a_pair_is_refused(environ: dict[str, str]) -> None:
    """Never a silent fall-back to memory because one variable is missing."""
    with pytest.raises(InvalidArgument, match="is set but"):
        backend_from_environment("p", environ)


async def test_context_from_the_two_variables(
    upstash_standin: UpstashStandin,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name in ("REDIS_URL", "KV_URL", "KV_REST_API_URL", "KV_REST_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in upstash_standin.env.items():
        monkeypatch.setenv(name, value)
    with caplog.at_level(logging.INFO, logger="resumable_stream"):
        ctx = create_resumable_stream_context(None, key_prefix=key_prefix, options=FAST)
    try:
        assert isinstance(ctx.backend, UpstashBackend)
        assert sum("Upstash over REST" in r.getMessage() for r in caplog.records) == 1
        source = ControlledSource()
        stream = await ctx.resumable_stream("s", source)
        source.write("over ")
        source.write("REST")
        source.close()
        assert await read_all(stream) == "over REST"
        assert await read_all(await ctx.resume_existing_stream("s", after=0)) == "REST"
    finally:
        await ctx.aclose()


# -- write-behind batching ---------------------------------------------------------------


async def test_a_fast_producer_costs_far_fewer_requests_than_chunks(
    upstash_standin: UpstashStandin, pair: tuple[UpstashBackend, UpstashBackend]
) -> None:
    total = 2000

    async def fast() -> AsyncIterator[str]:
        for i in range(total):
            yield chunk_text(i)

    ctx = create_resumable_stream_context(pair[0], options=FAST)
    try:
        before = await asyncio.to_thread(upstash_standin.control, "stats")
        stream = await ctx.create_new_resumable_stream("s", fast)
        assert await read_all(stream) == expected_text(total)
        await ctx.aclose()  # the producer's last write has landed
        after = await asyncio.to_thread(upstash_standin.control, "stats")
        assert requests(after) - requests(before) - 1 < total / 20  # less than 1 in 20
        stored = await pair[1].snapshot("s", 0, total + 1)
        assert stored is not None
        assert "".join(map(str, stored.chunks)) == expected_text(total)
    finally:
        await ctx.aclose()


# -- the chat demo, configured by the environment only ------------------------------------


@pytest.fixture
def chat_over_rest(
    upstash_standin: UpstashStandin, request: pytest.FixtureRequest
) -> Iterator[str]:
    token = getattr(request, "param", upstash_standin.token)
    env = {
        "CHAT_DELAY": "0.02",
        "UPSTASH_REDIS_REST_URL": upstash_standin.url,
        "UPSTASH_REDIS_REST_TOKEN": token,
    }
    with tempfile.TemporaryFile() as log:
        server = AppProcess("examples.chat_app:app", log, env=env)
        server.start()
        try:
            yield server.url
        finally:
            server.stop()
        assert "Traceback" not in server.output(), server.output()


def test_chat_demo_over_rest(chat_over_rest: str, upstash_standin: UpstashStandin) -> None:
    message = "Please resume me over REST"
    answer = example("chat_app").answer_for(message)
    before = upstash_standin.control("stats")
    with httpx.Client(base_url=chat_over_rest, timeout=10.0) as client:
        response, first = read_events(
            client, "POST", "/api/chat/agent-1/thread-1", limit=4, json=chat_body(message)
        )
        assert response.status_code == 200
        stream_id = response.headers["x-stream-id"]
    with httpx.Client(base_url=chat_over_rest, timeout=10.0) as client:
        response, rest = read_events(
            client, "GET", f"/api/chat/resume/{stream_id}",
            headers={"Last-Event-ID": first[-1].id or ""},
        )  # fmt: skip
    assert response.status_code == 200
    check_ids(first + rest)
    assert chat_text(first + rest) == answer
    after = upstash_standin.control("stats")
    assert after["command"] > before.get("command", 0)  # it went through the stand-in


@pytest.mark.parametrize("chat_over_rest", ["wrong-token"], indirect=True)
def test_chat_demo_with_a_wrong_token_degrades(chat_over_rest: str) -> None:
    """The ASGI layer's graceful degradation, as with Redis: the answer streams without
    ``X-Stream-Id``, and a resume answers 503."""
    message = "Storage is down"
    answer = example("chat_app").answer_for(message)
    with httpx.Client(base_url=chat_over_rest, timeout=10.0) as client:
        response, whole = read_events(client, "POST", "/api/chat/a/t", json=chat_body(message))
        assert response.status_code == 200
        assert "x-stream-id" not in response.headers
        assert chat_text(whole) == answer
        assert client.get("/api/chat/resume/anything").status_code == 503
