# /// script
# requires-python = ">=3.10"
# dependencies = ["resumable-streams"]
# ///
"""Resume a streamed answer after the reader drops, in memory, in one process.

A fake LLM answer streams word by word. Midway the first reader drops (as a browser
tab that lost its connection would); a second reader resumes right after the last
chunk the first one got, and a third replays the whole answer from the start. At
the end the demo checks that what the first reader got plus what the second got is
exactly the answer, and exits 1 otherwise.

Run it from a checkout (no Redis needed: streams live in this process's memory)::

    pip install -e . && python examples/demo.py
    python examples/demo.py --delay 0      # no pause between words

or, with uv, ``uv run --with-editable . examples/demo.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

try:
    import resumable_stream
except ImportError:  # run from a checkout without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import resumable_stream

ANSWER = (
    "A resumable stream stores every chunk as it is produced and announces it to "
    "every reader. When a reader drops, the producer keeps going: the answer is "
    "still being written while nobody listens. A new reader can then pick up right "
    "after the last chunk the old one received, or replay the whole answer from the "
    "first word, in this process or, with Redis, in any other."
)
STREAM_ID = "chat-42-answer"


def words(text: str) -> list[str]:
    """The answer as chunks: each word with the space before it (none for the first)."""
    parts = text.split(" ")
    return [parts[0]] + [" " + word for word in parts[1:]]


def section(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


async def fake_llm(delay: float) -> AsyncIterator[str]:
    """Stands in for a model's token stream: one word every ``delay`` seconds."""
    for chunk in words(ANSWER):
        await asyncio.sleep(delay)
        yield chunk


async def demo(delay: float) -> int:
    chunks = words(ANSWER)
    drop_after = len(chunks) // 2  # the first reader drops after this many chunks
    backend = resumable_stream.MemoryBackend()
    async with resumable_stream.create_resumable_stream_context(backend) as ctx:
        section("1. original reader (drops midway)")
        stream = await ctx.create_new_resumable_stream(STREAM_ID, lambda: fake_llm(delay))
        assert stream is not None
        dropped_text = ""
        last_index = -1
        async for index, chunk in stream.indexed():
            assert isinstance(chunk, str)
            print(chunk, end="", flush=True)
            dropped_text += chunk
            last_index = index
            if index + 1 >= drop_after:
                break
        await stream.aclose()  # the connection is gone; the producer goes on
        status = await ctx.get_status(STREAM_ID)
        print(
            f"\n[reader dropped after chunk #{last_index}; stream status: "
            f"{status.value if status else None}]",
            flush=True,
        )

        section(f"2. resumed reader (resume_existing_stream(after={last_index}))")
        resumed = await ctx.resume_existing_stream(STREAM_ID, after=last_index)
        resumed_text = ""
        if resumed is not None:  # None would mean nothing was left after last_index
            async for chunk in resumed:
                assert isinstance(chunk, str)
                print(chunk, end="", flush=True)
                resumed_text += chunk
        print(flush=True)

        section("3. replay from the start (resume_existing_stream(after=-1))")
        replay = await ctx.resume_existing_stream(STREAM_ID, after=-1)
        replay_text = ""
        if replay is not None:
            async for chunk in replay:
                assert isinstance(chunk, str)
                print(chunk, end="", flush=True)
                replay_text += chunk
        print(flush=True)
        status = await ctx.get_status(STREAM_ID)
    await backend.aclose()

    section("check")
    ok = True
    if dropped_text + resumed_text == ANSWER:
        print(
            f"OK: dropped reader ({last_index + 1} chunks) + resumed reader "
            f"({len(chunks) - last_index - 1} chunks) == the full answer"
        )
    else:
        print("FAIL: dropped reader + resumed reader != the full answer")
        ok = False
    if replay_text == ANSWER:
        print("OK: the replay from the start == the full answer")
    else:
        print("FAIL: the replay from the start != the full answer")
        ok = False
    print(f"stream status: {status.value if status else None}")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--delay", type=float, default=0.05, help="seconds between words (default 0.05)"
    )
    args = parser.parse_args(argv)
    if not 0 <= args.delay <= 1:
        parser.error("--delay must be between 0 and 1 second")
    return asyncio.run(demo(args.delay))


if __name__ == "__main__":
    sys.exit(main())
