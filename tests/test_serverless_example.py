"""examples/serverless/app.py: with its ``wait_until`` hook, a stream whose client left
mid-answer is finished and stored before the invocation returns; without it, a frozen
function leaves it unfinished.

An invocation is one ``asyncio.run``: when the ASGI call returns, the loop ends and
every task still running is cancelled, as a frozen function never runs them again.
"""

from __future__ import annotations

import asyncio
import importlib.util
import uuid
from pathlib import Path
from types import ModuleType

import pytest

from resumable_stream import StreamStatus
from resumable_stream.backends.upstash import UpstashBackend

from .asgi_driver import Reply, request
from .upstash_standin import UpstashStandin

APP = Path(__file__).resolve().parent.parent / "examples" / "serverless" / "app.py"

pytestmark = pytest.mark.timeout(60)


def load(standin: UpstashStandin, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A fresh copy of the example (its context is made at import, as in a cold start),
    configured by the two variables only."""
    for name in ("REDIS_URL", "KV_URL", "KV_REST_API_URL", "KV_REST_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in standin.env.items():
        monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location(f"serverless_{uuid.uuid4().hex}", APP)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert isinstance(module.ctx.backend, UpstashBackend)
    return module


def invocation(app: object) -> str:
    """POST, take the first words, go away; return when the function would."""

    async def call() -> str:
        reply, gone = Reply(), asyncio.Event()
        task = asyncio.create_task(
            request(app, "POST", "/api/answer", reply=reply, disconnect=gone)  # type: ignore[arg-type]
        )
        await reply.first_body.wait()
        gone.set()  # the client leaves after the first words
        await task
        assert reply.status == 200
        stream_id = reply.header(b"x-stream-id")
        assert stream_id is not None
        return stream_id.decode()

    return asyncio.run(call())


def stored(standin: UpstashStandin, stream_id: str) -> tuple[StreamStatus | None, str]:
    """What another instance finds: the stream's status and its stored text."""

    async def read() -> tuple[StreamStatus | None, str]:
        backend = UpstashBackend(standin.url, standin.token)
        try:
            snap = await backend.snapshot(stream_id, 0, 10_000)
        finally:
            await backend.aclose()
        if snap is None:
            return None, ""
        return snap.status, "".join(map(str, snap.chunks))

    return asyncio.run(read())


def test_wait_until_finishes_the_stream_before_the_function_returns(
    upstash_standin: UpstashStandin, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load(upstash_standin, monkeypatch)
    stream_id = invocation(module.app)
    assert stored(upstash_standin, stream_id) == (StreamStatus.DONE, module.ANSWER)


def test_a_warm_instance_serves_invocations_in_loops_of_their_own(
    upstash_standin: UpstashStandin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hosts that run each invocation with its own ``asyncio.run`` keep the module (its
    context and backend) between them: the second must not use the first's connections."""
    module = load(upstash_standin, monkeypatch)
    first, second = invocation(module.app), invocation(module.app)
    assert stored(upstash_standin, first) == (StreamStatus.DONE, module.ANSWER)
    assert stored(upstash_standin, second) == (StreamStatus.DONE, module.ANSWER)


def test_without_it_a_frozen_function_leaves_the_stream_unfinished(
    upstash_standin: UpstashStandin, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load(upstash_standin, monkeypatch)
    inner = module.app.app  # the app without FinishProducers
    stream_id = invocation(inner)
    status, text = stored(upstash_standin, stream_id)
    assert status is not StreamStatus.DONE
    assert module.ANSWER.startswith(text)
    assert text != module.ANSWER
