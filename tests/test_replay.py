"""Long replays: a resume of many stored chunks reads its pages ahead (one round trip
per page overlapped with handing the previous one out); whatever the timing, the
reader gets every chunk once, in order, cancelled reads included."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from resumable_stream import ResumableStreamContext, create_resumable_stream_context
from resumable_stream.backends import Backend

CHUNKS = 7_000  # past three 2,000-chunk pages and the first page of 100

both = pytest.mark.parametrize("backend", ["memory", "redis"], indirect=True)


async def stored_stream(ctx: ResumableStreamContext) -> list[str]:
    text = [f"{n:05}," for n in range(CHUNKS)]

    async def source() -> AsyncIterator[str]:
        for chunk in text:
            yield chunk

    original = await ctx.create_new_resumable_stream("long", source)
    assert original is not None
    assert [c async for c in original] == text  # done and stored once this returns
    return text


@both
async def test_a_long_replay_is_whole(backend: Backend) -> None:
    async with create_resumable_stream_context(backend) as ctx:
        text = await stored_stream(ctx)
        for after in (-1, 99, 2_099, 5_500):
            reader = await ctx.resume_existing_stream("long", after=after)
            assert reader is not None
            got = [item async for item in reader.indexed()]
            assert got == list(enumerate(text))[after + 1 :]


@both
async def test_a_long_replay_survives_cancelled_reads(backend: Backend) -> None:
    async with create_resumable_stream_context(backend) as ctx:
        text = await stored_stream(ctx)
        reader = await ctx.resume_existing_stream("long", after=-1)
        assert reader is not None
        got: list[str] = []
        cancelled = 0
        while True:
            try:
                # A timer shorter than a page's read: some reads are cancelled while
                # they wait for a page read ahead, and must be asked again.
                got.append(await asyncio.wait_for(reader.__anext__(), 0.0005))
            except TimeoutError:
                cancelled += 1
            except StopAsyncIteration:
                break
        assert got == text
        assert cancelled < 10_000  # bounded: each page is read in well under a second
