"""A second OS process for tests/test_upstash.py: follows or produces a stream over
Upstash REST, configured only by ``UPSTASH_REDIS_REST_URL`` / ``_TOKEN`` (as a user of
the original would be) through ``create_resumable_stream_context(None)``.

Usage::

    upstash_proc.py follow  PREFIX STREAM_ID
    upstash_proc.py produce PREFIX STREAM_ID TOTAL

The line protocol is ``stream_proc.py``'s: STARTED, GO, JOINED, HALF, RESULT <count> <sha>.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

from resumable_stream import ResumableStreamContext, create_resumable_stream_context
from resumable_stream.backends.upstash import UpstashBackend
from tests.procs.stream_proc import (
    GATE_BEFORE_END,
    OPTIONS,
    chunk_text,
    digest,
    expect_line,
    read_text,
    say,
    stdin_reader,
)


def make_context(prefix: str) -> ResumableStreamContext:
    ctx = create_resumable_stream_context(None, key_prefix=prefix, options=OPTIONS)
    if not isinstance(ctx.backend, UpstashBackend):
        raise RuntimeError(f"the environment chose {type(ctx.backend).__name__}, not Upstash")
    return ctx


async def follow(prefix: str, stream_id: str) -> None:
    """Prints STARTED, waits for GO, joins, prints JOINED, then RESULT <count> <sha256>."""
    stdin = await stdin_reader()
    ctx = make_context(prefix)
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


async def produce(prefix: str, stream_id: str, total: int) -> None:
    """Prints HALF halfway through, waits for JOINED on stdin ``GATE_BEFORE_END`` chunks
    before the end, then prints RESULT <count> <sha256> of its original reader."""
    stdin = await stdin_reader()
    ctx = make_context(prefix)

    async def source() -> AsyncIterator[str]:
        for i in range(total):
            if i == total // 2:
                say("HALF")
            if i == total - GATE_BEFORE_END:
                await expect_line(stdin, "JOINED")
            yield chunk_text(i)
            await asyncio.sleep(0)  # let the writer run: a live stream

    try:
        stream = await ctx.create_new_resumable_stream(stream_id, source)
        assert stream is not None
        count, text = await read_text(stream)
        say("RESULT", count, digest(text))
    finally:
        await ctx.aclose()


def main(argv: list[str]) -> None:
    mode, prefix, stream_id, *rest = argv
    if mode == "follow":
        asyncio.run(follow(prefix, stream_id))
    elif mode == "produce":
        asyncio.run(produce(prefix, stream_id, int(rest[0])))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
