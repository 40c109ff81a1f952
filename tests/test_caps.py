"""Resource caps (issue 7): ``max_streams``, ``max_followers`` and ``max_stream_bytes``,
their typed errors over every backend, and the statuses the HTTP layer maps them to."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator

import pytest

from resumable_stream import (
    Backend,
    Chunk,
    ResumableStream,
    StreamFailed,
    StreamOptions,
    StreamStatus,
    StreamTooLarge,
    TooManyFollowers,
    TooManyStreams,
    create_resumable_stream_context,
)
from resumable_stream.asgi import ResumableStreamMiddleware, ResumableStreamResponse

from .asgi_driver import Reply, request
from .helpers import ControlledSource, read_all

pytestmark = pytest.mark.timeout(30)

STEP = 10.0


def options(**caps: int) -> StreamOptions:
    return StreamOptions(lease=1.0, poll_interval=0.25, shutdown_grace=2.0, **caps)


async def drain(reader: ResumableStream | None) -> tuple[list[Chunk], BaseException | None]:
    assert reader is not None
    got: list[Chunk] = []
    try:
        async for chunk in reader:
            got.append(chunk)
    except Exception as exc:
        return got, exc
    return got, None


async def test_max_streams(backend: Backend) -> None:
    tasks: list[asyncio.Task[None]] = []
    ctx = create_resumable_stream_context(
        backend, options=options(max_streams=2), wait_until=tasks.append
    )
    sources = [ControlledSource() for _ in range(3)]
    try:
        a = await ctx.create_new_resumable_stream("a", sources[0])
        b = await ctx.resumable_stream("b", sources[1])
        assert ctx.running_streams == 2
        assert ctx.at_capacity()
        with pytest.raises(TooManyStreams) as caught:
            await ctx.create_new_resumable_stream("c", sources[2])
        assert caught.value.limit == 2
        with pytest.raises(TooManyStreams):
            await ctx.resumable_stream("c", sources[2])
        # Refused before anything is stored or started.
        assert sources[2].started == 0
        assert await ctx.get_status("c") is None
        # At capacity, resumable_stream() still joins a running stream (no new producer).
        joined = await ctx.resumable_stream("a", sources[2])
        assert joined is not None
        assert sources[2].started == 0
        sources[0].write("x")
        sources[0].close()
        assert await read_all(a) == "x"
        assert await read_all(joined) == "x"
        await asyncio.wait_for(tasks[0], STEP)  # the producer has ended: its place is free
        assert not ctx.at_capacity()
        c = await ctx.create_new_resumable_stream("c", sources[2])
        sources[1].close()
        sources[2].close()
        assert await read_all(b) == ""
        assert await read_all(c) == ""
    finally:
        await ctx.aclose()


async def test_max_streams_counts_concurrent_starts(backend: Backend) -> None:
    ctx = create_resumable_stream_context(backend, options=options(max_streams=3))
    sources = [ControlledSource() for _ in range(10)]
    try:
        results = await asyncio.gather(
            *(ctx.create_new_resumable_stream(f"s{i}", s) for i, s in enumerate(sources)),
            return_exceptions=True,
        )
        made = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, TooManyStreams)]
        assert (len(made), len(refused)) == (3, 7), results
        assert sum(s.started for s in sources) == 3
    finally:
        for source in sources:
            source.close()
        await ctx.aclose()


async def test_max_followers(backend: Backend) -> None:
    ctx = create_resumable_stream_context(backend, options=options(max_followers=2))
    source = ControlledSource()
    try:
        original = await ctx.create_new_resumable_stream("s", source)
        one = await ctx.resume_existing_stream("s")
        two = await ctx.resumable_stream("s", source)  # joining counts too
        assert one is not None
        assert two is not None
        assert ctx.followers("s") == 2
        with pytest.raises(TooManyFollowers) as caught:
            await ctx.resume_existing_stream("s", after=-1)
        assert caught.value.limit == 2
        assert caught.value.stream_id == "s"
        await one.aclose()  # closing gives the place back
        three = await ctx.resume_existing_stream("s", after=-1)
        assert three is not None
        source.write("a")
        source.close()
        # The original reader is not counted; reading to the end gives places back.
        assert [await read_all(r) for r in (original, two, three)] == ["a", "a", "a"]
        assert ctx.followers("s") == 0
        # A resume that finds nothing (None) holds no place either.
        assert await ctx.resume_existing_stream("s") is None
        assert await ctx.resume_existing_stream("s", after=0) is None
        assert ctx.followers("s") == 0
    finally:
        await ctx.aclose()


async def test_max_followers_place_of_a_dropped_reader(backend: Backend) -> None:
    ctx = create_resumable_stream_context(backend, options=options(max_followers=1))
    source = ControlledSource()
    try:
        await ctx.create_new_resumable_stream("s", source)
        reader = await ctx.resume_existing_stream("s")
        assert ctx.followers("s") == 1
        del reader  # never read, never closed: garbage collection gives the place back
        gc.collect()  # the reader and its generator refer to each other: a cycle
        assert ctx.followers("s") == 0
        assert await ctx.resume_existing_stream("s") is not None
    finally:
        source.close()
        await ctx.aclose()


async def test_max_stream_bytes_cuts_the_stream_with_a_typed_error(backend: Backend) -> None:
    ctx = create_resumable_stream_context(backend, options=options(max_stream_bytes=100))
    pulled: list[int] = []
    closed = asyncio.Event()

    async def source() -> AsyncIterator[str]:
        try:
            for i in range(10):
                pulled.append(i)
                yield f"{i}" * 30  # 30 bytes each: chunk 3 would pass 100
        finally:
            closed.set()

    try:
        original = await ctx.create_new_resumable_stream("s", source)
        follower = await ctx.resume_existing_stream("s")
        assert original is not None
        assert follower is not None
        for reader in (original, follower):
            got, error = await drain(reader)
            assert got == ["0" * 30, "1" * 30, "2" * 30]  # never a silent hole
            assert isinstance(error, StreamTooLarge)
            assert isinstance(error, StreamFailed)
            assert error.error.startswith("StreamTooLarge:")
            assert "max_stream_bytes=100" in str(error)
        assert closed.is_set()
        assert pulled == [0, 1, 2, 3]
        assert await ctx.get_status("s") is StreamStatus.FAILED
        # A client that has everything stored gets nothing more; one from the start
        # gets the stored part, then the same error.
        assert await ctx.resume_existing_stream("s", after=2) is None
        again = await ctx.resume_existing_stream("s", after=-1)
        assert again is not None
        with pytest.raises(StreamTooLarge):
            await read_all(again)
    finally:
        await ctx.aclose()


async def test_max_stream_bytes_counts_utf8_and_bytes(backend: Backend) -> None:
    ctx = create_resumable_stream_context(backend, options=options(max_stream_bytes=10))
    try:
        # "é" is 2 bytes: 4 of them (8 bytes) fit, 6 (12 bytes) do not.
        text = await ctx.create_new_resumable_stream("t", lambda: iter(["éé", "éé", "éé"]))
        got, error = await drain(text)
        assert got == ["éé", "éé"]
        assert isinstance(error, StreamTooLarge)
        # Exactly at the cap is allowed.
        exact = await ctx.create_new_resumable_stream("b", lambda: iter([b"12345", b"67890"]))
        assert [c async for c in exact] == [b"12345", b"67890"]  # type: ignore[union-attr]
    finally:
        await ctx.aclose()


# -- the HTTP statuses ----------------------------------------------------------------------


def gated_app(gate: asyncio.Event, calls: list[str]) -> object:
    """A streaming text endpoint: one chunk, then it waits for ``gate``, then one more."""

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        calls.append(str(scope["path"]))
        await send(  # type: ignore[operator]
            {"type": "http.response.start", "status": 200,
             "headers": [(b"content-type", b"text/plain; charset=utf-8")]}
        )
        await send({"type": "http.response.body", "body": b"first ", "more_body": True})  # type: ignore[operator]
        await gate.wait()
        await send({"type": "http.response.body", "body": b"second", "more_body": True})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"", "more_body": False})  # type: ignore[operator]

    return app


def by_path(scope: dict[str, object]) -> str:
    return str(scope["path"]).rsplit("/", 1)[-1]


async def test_http_too_many_streams_is_503_before_the_app_runs(backend: Backend) -> None:
    ctx = create_resumable_stream_context(backend, options=options(max_streams=1))
    gate = asyncio.Event()
    calls: list[str] = []
    app = ResumableStreamMiddleware(
        gated_app(gate, calls), ctx, path="/chat/{id}", stream_id=by_path,  # type: ignore[arg-type]
        resume_path="/resume/{stream_id}",
    )
    try:
        first = Reply()
        running = asyncio.create_task(request(app, "POST", "/chat/one", reply=first))
        await asyncio.wait_for(first.first_body.wait(), STEP)
        refused = await asyncio.wait_for(request(app, "POST", "/chat/two"), STEP)
        assert refused.status == 503
        assert refused.complete
        assert refused.header(b"retry-after") == b"1"
        assert calls == ["/chat/one"]  # the app never ran for the refused request
        assert await ctx.get_status("two") is None  # nothing stored
        # The explicit response refuses the same way, without calling its content.
        called: list[int] = []

        def content() -> Iterator[str]:
            called.append(1)
            return iter(["x"])

        response = ResumableStreamResponse(content, context=ctx, stream_id="three")
        explicit = await asyncio.wait_for(request(response, "GET", "/"), STEP)
        assert explicit.status == 503
        assert called == []
        assert await ctx.get_status("three") is None
        gate.set()
        done = await asyncio.wait_for(running, STEP)
        assert done.status == 200
        assert done.body == b"first second"
        assert done.complete
    finally:
        gate.set()
        await ctx.aclose()


async def test_http_too_many_followers_is_503(backend: Backend) -> None:
    ctx = create_resumable_stream_context(backend, options=options(max_followers=1))
    source = ControlledSource()
    app = ResumableStreamMiddleware(
        gated_app(asyncio.Event(), []), ctx, path="/chat/{id}",  # type: ignore[arg-type]
        resume_path="/resume/{stream_id}",
    )
    try:
        original = await ctx.create_new_resumable_stream("s", source)
        source.write("a")
        follower = Reply()
        following = asyncio.create_task(request(app, "GET", "/resume/s", reply=follower))
        await asyncio.wait_for(follower.first_body.wait(), STEP)
        refused = await asyncio.wait_for(request(app, "GET", "/resume/s"), STEP)
        assert refused.status == 503
        assert refused.header(b"retry-after") == b"1"
        source.close()
        assert (await asyncio.wait_for(following, STEP)).body == b"a"
        assert await read_all(original) == "a"
    finally:
        source.close()
        await ctx.aclose()


async def test_http_stream_too_large_aborts_then_413(backend: Backend) -> None:
    ctx = create_resumable_stream_context(backend, options=options(max_stream_bytes=10))
    pieces = [b"12345", b"67890", b"abcde"]

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 200,  # type: ignore[operator]
                    "headers": [(b"content-type", b"application/octet-stream")]})
        for piece in pieces:
            await send({"type": "http.response.body", "body": piece, "more_body": True})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"", "more_body": False})  # type: ignore[operator]

    wrapped = ResumableStreamMiddleware(
        app, ctx, path="/chat/{id}", stream_id=by_path,  # type: ignore[arg-type]
        resume_path="/resume/{stream_id}",
    )
    try:
        original = await asyncio.wait_for(request(wrapped, "POST", "/chat/big"), STEP)
        # The stored part, then an abort: never a clean end that reads as complete.
        assert original.status == 200
        assert original.body == b"1234567890"
        assert not original.complete
        assert isinstance(original.error, StreamTooLarge)
        tail = await asyncio.wait_for(
            request(wrapped, "GET", "/resume/big", query=b"resumeAt=5"), STEP
        )
        assert tail.status == 200
        assert tail.body == b"67890"
        assert not tail.complete
        done = await asyncio.wait_for(
            request(wrapped, "GET", "/resume/big", query=b"resumeAt=10"), STEP
        )
        assert done.status == 413
        assert done.complete
    finally:
        await ctx.aclose()
