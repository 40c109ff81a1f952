"""The official Durable Streams clients read a Python-produced stream to its end through a
connection cut.

A ``ctx.resumable_stream`` producer (gated by probe events, so the test decides when each
part exists) writes the stream; the app serves it at ``/v1/stream/resumable/<id>``;
the client talks to it through `FaultProxy`, which aborts every open connection once the
client has its first part, and only then are the remaining parts produced. The client
must come back from the offset it reached and end with the whole text, no part twice.

* TypeScript: ``@durable-streams/client`` (``tests/durable/read_stream.mjs``), over
  long-poll and over SSE; it ends on the stream's closure. A cut before a response
  starts is retried inside the client's session; a cut in the middle of an SSE body
  ends the session with an error (0.2.x), and the reader opens a new one from the
  offset it reached, as an application would.
* Python: ``durable-streams`` from PyPI (``astream``), over long-poll. Version 0.1.0
  predates the protocol's closure signal, so the test stops it once it has the whole
  text and checks the closure with a ``HEAD``.

On memory and on Redis (the server fixture of `tests/test_durable_produced.py`).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from typing import Any

import httpx
import pytest

from .http_servers import LiveServer
from .tcp_proxy import FaultProxy
from .test_durable_conformance import REQUIRE, SUITE_DIR, suite_missing
from .test_durable_produced import PREFIX, server, start

__all__ = ["server"]  # the fixture, imported for this module's tests

pytestmark = pytest.mark.timeout(90)
HARNESS = SUITE_DIR / "read_stream.mjs"
PARTS = [f"part-{i};" for i in range(6)]
READ_TIMEOUT = 30.0


def release(server: LiveServer, stream_id: str, parts: range) -> None:
    for i in parts:
        server.probe.event(f"{stream_id}:go{i}").set()


@pytest.mark.parametrize(
    ("live", "cut_at"),
    [("long-poll", "next"), ("sse", "next"), ("sse", "body")],
    ids=["long-poll", "sse", "sse-mid-body"],
)
async def test_typescript_client_reads_through_a_cut(
    server: LiveServer, live: str, cut_at: str
) -> None:
    """``next``: cut the client's next request, before or after its response began.
    ``body``: cut an SSE response the client is reading (it has the response's first
    control event, an empty chunk that says it is up to date)."""
    missing = suite_missing()
    if missing is not None:
        if REQUIRE:
            pytest.fail(f"RESUMABLE_STREAM_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    node = shutil.which("node")
    assert node is not None
    stream_id = await start(server, PARTS)
    release(server, stream_id, range(2))
    async with FaultProxy(server.port) as proxy:
        process = await asyncio.create_subprocess_exec(
            node,
            str(HARNESS),
            f"http://127.0.0.1:{proxy.port}{PREFIX}{stream_id}",
            live,
            cwd=SUITE_DIR,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "NODE_NO_WARNINGS": "1"},
        )
        assert process.stdout is not None
        lines: list[dict[str, Any]] = []
        text = ""
        cuts = 0
        try:
            while True:
                raw = await asyncio.wait_for(process.stdout.readline(), READ_TIMEOUT)
                if not raw:
                    break
                line = json.loads(raw)
                lines.append(line)
                if "text" in line:
                    text += line["text"]
                    ready = bool(text) and (cut_at == "next" or not line["text"])
                    if not cuts and ready:
                        # The client holds its first parts; its next request is open.
                        await proxy.wait_for(lambda: bool(proxy.open()), READ_TIMEOUT)
                        cuts = proxy.cut()
                        release(server, stream_id, range(2, len(PARTS)))
                if line.get("end") or line.get("timeout"):
                    break
        finally:
            if process.returncode is None:
                process.kill()
            _, err = await process.communicate()
    assert cuts >= 1
    assert text == "".join(PARTS), (lines, err.decode()[-2000:])
    assert lines[-1].get("end"), lines
    assert len(proxy.opened) >= 2, "the client never reconnected"


async def test_python_client_reads_through_a_cut(server: LiveServer) -> None:
    try:
        from durable_streams import DurableStreamError, astream
    except ImportError:
        if REQUIRE:
            pytest.fail("RESUMABLE_STREAM_REQUIRE_BROWSER=1 but durable-streams is missing")
        pytest.skip("durable-streams (the test extra) is not installed")
    stream_id = await start(server, PARTS)
    release(server, stream_id, range(2))
    whole = "".join(PARTS)
    retries = 0

    def retry(error: Exception) -> dict[str, str] | None:
        nonlocal retries
        retries += 1
        return {} if retries <= 20 else None  # {}: try again from the same offset

    async with FaultProxy(server.port) as proxy:
        url = f"http://127.0.0.1:{proxy.port}{PREFIX}{stream_id}"
        text, offset, cut, sessions = "", "-1", False, 0
        while len(text) < len(whole) and sessions < 10:
            sessions += 1
            try:
                async with astream(
                    url, offset=offset, live="long-poll", on_error=retry, timeout=READ_TIMEOUT
                ) as res:
                    async for piece in res.iter_text():
                        text += piece
                        offset = res.offset
                        if not cut and text:
                            cut = True
                            await proxy.wait_for(lambda: bool(proxy.open()), READ_TIMEOUT)
                            assert proxy.cut() >= 1
                            release(server, stream_id, range(2, len(PARTS)))
                        if len(text) >= len(whole):
                            break
            except (httpx.TransportError, DurableStreamError):
                continue  # a cut mid-body: a new session from the offset reached
        assert text == whole
        assert len(proxy.opened) >= 2, "the client never reconnected"
        async with httpx.AsyncClient(timeout=READ_TIMEOUT) as client:
            # Closure: once the producer is done (its last part was read, its end follows).
            for _ in range(50):
                head = await client.head(url)
                if head.headers.get("stream-closed") == "true":
                    break
                reply = await client.get(url, params={"offset": offset, "live": "long-poll"})
                assert reply.status_code in (200, 204)
            assert head.headers.get("stream-closed") == "true"
            assert head.headers["stream-next-offset"] == offset
