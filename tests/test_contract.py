"""The npm package's scenario suite and the backend contract, run over every backend."""

from __future__ import annotations

import pytest

from resumable_stream import Backend, MemoryBackend, ResumableStreamContext, StreamStatus
from resumable_stream.testing import CHECKS, Check, check_backend, check_claim_is_idempotent

from .helpers import ControlledSource, read_all, read_n


def never() -> object:
    raise AssertionError("make_stream must not be called")


async def test_acts_like_a_normal_stream(ctx: ResumableStreamContext) -> None:
    source = ControlledSource()
    stream = await ctx.resumable_stream("test", source)
    for chunk in ("1\n", "2\n", "3\n"):
        source.write(chunk)
    source.close()
    assert await read_all(stream) == "1\n2\n3\n"


async def test_resume_a_done_stream(ctx: ResumableStreamContext) -> None:
    source = ControlledSource()
    stream = await ctx.resumable_stream("test", source)
    stream2 = await ctx.resumable_stream("test", source)
    source.write("1\n")
    source.write("2\n")
    source.close()
    assert await read_all(stream) == "1\n2\n"
    assert await read_all(stream2) == "1\n2\n"
    assert source.started == 1


async def test_has_existing_stream(ctx: ResumableStreamContext) -> None:
    source = ControlledSource()
    assert await ctx.has_existing_stream("test") is None
    stream = await ctx.resumable_stream("test", source)
    assert await ctx.has_existing_stream("test") is True
    assert await ctx.has_existing_stream("test2") is None
    stream2 = await ctx.resumable_stream("test", source)
    assert await ctx.has_existing_stream("test") is True
    source.write("1\n")
    source.write("2\n")
    source.close()
    assert await read_all(stream) == "1\n2\n"
    assert await read_all(stream2) == "1\n2\n"
    assert await ctx.has_existing_stream("test") == "DONE"


async def test_resume_a_done_stream_reverse_read(ctx: ResumableStreamContext) -> None:
    source = ControlledSource()
    stream = await ctx.resumable_stream("test", source)
    stream2 = await ctx.resumable_stream("test", source)
    source.write("1\n")
    source.write("2\n")
    source.close()
    assert await read_all(stream2) == "1\n2\n"
    assert await read_all(stream) == "1\n2\n"


async def test_resume_an_in_progress_stream(ctx: ResumableStreamContext) -> None:
    source = ControlledSource()
    stream = await ctx.resumable_stream("test", source)
    source.write("1\n")
    stream2 = await ctx.resumable_stream("test", source)
    source.write("2\n")
    source.close()
    assert await read_all(stream) == "1\n2\n"
    assert await read_all(stream2) == "1\n2\n"


async def test_actually_streams(ctx: ResumableStreamContext) -> None:
    source = ControlledSource()
    stream = await ctx.resumable_stream("test", source)
    source.write("1\n")
    stream2 = await ctx.resumable_stream("test", source)
    assert await read_n(stream, 1) == "1\n"
    assert await read_n(stream2, 1) == "1\n"
    source.write("2\n")
    source.close()
    assert await read_all(stream) == "2\n"
    assert await read_all(stream2) == "2\n"


async def test_producer_first(ctx: ResumableStreamContext) -> None:
    source = ControlledSource()
    stream = await ctx.resumable_stream("test", source)
    source.write("1\n")
    stream2 = await ctx.resumable_stream("test", source)
    assert await read_n(stream, 1) == "1\n"
    source.write("2\n")
    source.close()
    assert await read_all(stream) == "2\n"
    assert await read_all(stream2) == "1\n2\n"


async def test_consumer_first(ctx: ResumableStreamContext) -> None:
    source = ControlledSource()
    stream = await ctx.resumable_stream("test", source)
    source.write("1\n")
    stream2 = await ctx.resumable_stream("test", source)
    assert await read_n(stream2, 1) == "1\n"
    source.write("2\n")
    source.close()
    assert await read_all(stream) == "1\n2\n"
    assert await read_all(stream2) == "2\n"


async def test_several_resumers(ctx: ResumableStreamContext) -> None:
    source = ControlledSource()
    stream = await ctx.resumable_stream("test", source)
    source.write("1\n")
    stream2 = await ctx.resumable_stream("test", source)
    source.write("2\n")
    stream3 = await ctx.resumable_stream("test", source)
    source.close()
    for s in (stream, stream2, stream3):
        assert await read_all(s) == "1\n2\n"


async def test_streams_are_kept_apart(ctx: ResumableStreamContext) -> None:
    one, two = ControlledSource(), ControlledSource()
    s1 = await ctx.resumable_stream("test", one)
    s2 = await ctx.resumable_stream("test2", two)
    s12 = await ctx.resumable_stream("test", one)
    s22 = await ctx.resumable_stream("test2", two)
    one.write("1\n")
    one.write("2\n")
    one.close()
    two.write("writer2\n")
    two.close()
    assert await read_all(s1) == "1\n2\n"
    assert await read_all(s2) == "writer2\n"
    assert await read_all(s12) == "1\n2\n"
    assert await read_all(s22) == "writer2\n"


@pytest.mark.parametrize(("skip", "expected"), [(0, "1\n2\n"), (2, "2\n"), (3, "\n"), (4, "")])
async def test_skip_characters(ctx: ResumableStreamContext, skip: int, expected: str) -> None:
    source = ControlledSource()
    stream = await ctx.resumable_stream("test", source)
    source.write("1\n")
    source.write("2\n")
    stream2 = await ctx.resumable_stream("test", source, skip)
    source.close()
    assert await read_all(stream) == "1\n2\n"
    assert await read_all(stream2) == expected


async def test_skip_counts_code_points(ctx: ResumableStreamContext) -> None:
    source = ControlledSource()
    stream = await ctx.resumable_stream("emoji", source)
    source.write("h\u00e9\U0001f600!")
    source.close()
    assert await read_all(stream) == "h\u00e9\U0001f600!"
    again = await ctx.resume_existing_stream("emoji", after=-1)
    assert again is not None
    resumed = await ctx.resumable_stream("emoji2", lambda: iter(["h\u00e9\U0001f600!"]), 2)
    assert await read_all(resumed) == "\U0001f600!"
    assert await read_all(again) == "h\u00e9\U0001f600!"


async def test_done_stream_returns_none(ctx: ResumableStreamContext) -> None:
    source = ControlledSource()
    stream = await ctx.resumable_stream("test", source)
    source.write("1\n")
    source.write("2\n")
    source.close()
    assert await read_all(stream) == "1\n2\n"
    assert await ctx.resumable_stream("test", never) is None


async def test_deconstructed_api(ctx: ResumableStreamContext) -> None:
    source = ControlledSource()
    stream = await ctx.create_new_resumable_stream("test", source)
    stream2 = await ctx.resume_existing_stream("test")
    source.write("1\n")
    source.write("2\n")
    source.close()
    assert await read_all(stream) == "1\n2\n"
    assert await read_all(stream2) == "1\n2\n"


async def test_done_stream_returns_none_explicit_api(ctx: ResumableStreamContext) -> None:
    source = ControlledSource()
    stream = await ctx.create_new_resumable_stream("test", source)
    source.write("1\n")
    source.write("2\n")
    source.close()
    assert await read_all(stream) == "1\n2\n"
    assert await ctx.resume_existing_stream("test") is None
    assert await ctx.create_new_resumable_stream("test", never) is None


# -- the backend contract itself (resumable_stream.testing), over every backend ---------


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
async def test_backend_contract(backend: Backend, check: Check) -> None:
    await check(backend)


async def test_check_backend_runs_every_check_on_a_fresh_backend() -> None:
    made: list[MemoryBackend] = []

    def make() -> MemoryBackend:
        made.append(MemoryBackend())
        return made[-1]

    await check_backend(make)
    assert len(made) == len(CHECKS)


async def test_check_backend_names_the_failed_check() -> None:
    class Forgetful(MemoryBackend):
        """Answers a retried claim as if someone else held the stream."""

        async def claim(
            self, stream_id: str, token: str, *, ttl: float, lease: float, metadata: bytes = b""
        ) -> StreamStatus | None:
            if stream_id in self._entries:
                return StreamStatus.RUNNING
            return await super().claim(stream_id, token, ttl=ttl, lease=lease, metadata=metadata)

    with pytest.raises(AssertionError, match="check_claim_is_idempotent: a retried claim"):
        await check_backend(Forgetful, checks=[check_claim_is_idempotent])
