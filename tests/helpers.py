"""A source the test controls chunk by chunk, like the npm package's testing stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from resumable_stream import Chunk, ResumableStream


class ControlledSource:
    """``write`` chunks, then ``close`` (or ``fail``); iterate it as the producer's source."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        self.started = 0

    def write(self, chunk: Chunk) -> None:
        self._queue.put_nowait(("chunk", chunk))

    def close(self) -> None:
        self._queue.put_nowait(("close", None))

    def fail(self, exc: BaseException) -> None:
        self._queue.put_nowait(("fail", exc))

    def __call__(self) -> AsyncIterator[Chunk]:
        self.started += 1
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Chunk]:
        while True:
            kind, value = await self._queue.get()
            if kind == "close":
                return
            if kind == "fail":
                assert isinstance(value, BaseException)
                raise value
            yield value  # type: ignore[misc]


async def read_all(stream: ResumableStream | None) -> str:
    assert stream is not None, "expected a stream, got None"
    return "".join([c async for c in stream])  # type: ignore[misc]


async def read_n(stream: ResumableStream | None, n: int) -> str:
    assert stream is not None
    out = []
    for _ in range(n):
        out.append(await stream.__anext__())
    return "".join(out)  # type: ignore[arg-type]
