"""A second OS process for tests/test_processes.py: produces or follows a stream on Redis.

Usage::

    stream_proc.py follow  URL PREFIX STREAM_ID
    stream_proc.py produce URL PREFIX STREAM_ID TOTAL
    stream_proc.py hang    URL PREFIX STREAM_ID N

It talks to the test over stdin/stdout, one line per message (see each mode), so the
test waits on readable signals instead of sleeping.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from collections.abc import AsyncIterator

import redis.asyncio as aioredis

from resumable_stream import (
    ResumableStream,
    ResumableStreamContext,
    StreamOptions,
    create_resumable_stream_context,
)

OPTIONS = StreamOptions(lease=1.0, poll_interval=0.25, shutdown_grace=2.0)
GATE_BEFORE_END = 100  # the producer waits for the follower this many chunks before the end


def chunk_text(i: int) -> str:
    """Chunk ``i`` of a test stream: distinct, variable length, not only ASCII."""
    return f"{i:05d}:" + "\u00e9\U0001f600" * (i % 4) + "|"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def say(*words: object) -> None:
    print(*words, flush=True)


async def stdin_reader() -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def expect_line(reader: asyncio.StreamReader, word: str) -> None:
    line = (await reader.readline()).decode().strip()
    if line != word:
        raise RuntimeError(f"expected {word!r} on stdin, got {line!r}")


async def read_text(stream: ResumableStream) -> tuple[int, str]:
    parts: list[str] = []
    async for chunk in stream:
        assert isinstance(chunk, str)
        parts.append(chunk)
    return len(parts), "".join(parts)


def make_context(url: str, prefix: str) -> tuple[ResumableStreamContext, aioredis.Redis]:
    client = aioredis.Redis.from_url(url)
    return create_resumable_stream_context(client, key_prefix=prefix, options=OPTIONS), client


async def follow(url: str, prefix: str, stream_id: str) -> None:
    """Prints STARTED, waits for GO, joins, prints JOINED, then RESULT <count> <sha256>."""
    stdin = await stdin_reader()
    ctx, client = make_context(url, prefix)
    try:
        say("STARTED")
        await expect_line(stdin, "GO")
        stream = await ctx.resume_existing_stream(stream_id)
        if stream is None:
            say("NONE")
            return
        say("JOINED")
        count, text = await read_text(stream)
        say("RESULT", count, digest(text))
    finally:
        await ctx.aclose()
        await client.aclose()


async def produce(url: str, prefix: str, stream_id: str, total: int) -> None:
    """Prints HALF halfway through, waits for JOINED on stdin ``GATE_BEFORE_END`` chunks
    before the end (so the follower joins while the stream runs), then prints
    RESULT <count> <sha256> of what its original reader got."""
    stdin = await stdin_reader()
    ctx, client = make_context(url, prefix)

    async def source() -> AsyncIterator[str]:
        for i in range(total):
            if i == total // 2:
                say("HALF")
            if i == total - GATE_BEFORE_END:
                await expect_line(stdin, "JOINED")
            yield chunk_text(i)
            await asyncio.sleep(0)  # let the writer and the event loop run: a live stream

    try:
        stream = await ctx.create_new_resumable_stream(stream_id, source)
        assert stream is not None
        count, text = await read_text(stream)
        say("RESULT", count, digest(text))
    finally:
        await ctx.aclose()
        await client.aclose()


async def hang(url: str, prefix: str, stream_id: str, n: int) -> None:
    """Produces ``n`` chunks, then nothing. Prints READY once a follower in this process
    has received all ``n`` (so they are stored: a write is announced only after it is
    stored), then waits to be killed."""
    ctx, _client = make_context(url, prefix)  # both die with the process

    async def source() -> AsyncIterator[str]:
        for i in range(n):
            yield chunk_text(i)
        await asyncio.Event().wait()  # a source that stalls forever

    original = await ctx.create_new_resumable_stream(stream_id, source)
    assert original is not None
    follower = await ctx.resume_existing_stream(stream_id)
    assert follower is not None
    for i in range(n):
        chunk = await follower.__anext__()
        assert chunk == chunk_text(i), (i, chunk)
    say("READY")
    await asyncio.Event().wait()


def main(argv: list[str]) -> None:
    mode, url, prefix, stream_id, *rest = argv
    if mode == "follow":
        asyncio.run(follow(url, prefix, stream_id))
    elif mode == "produce":
        asyncio.run(produce(url, prefix, stream_id, int(rest[0])))
    elif mode == "hang":
        asyncio.run(hang(url, prefix, stream_id, int(rest[0])))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
