"""The direct path of a resumable response, through a real uvicorn on loopback.

While its client keeps up, the task that makes a resumable response's body (the app's,
under the middleware; the content's, for `ResumableStreamResponse`) writes each event
to the connection itself and stores it behind (`resumable_stream._http.Line`). These
tests pin what must hold around that path:

* a client that stops reading mid-stream hands its connection over to the pump: the
  app runs on to its end meanwhile, and the client later gets every event once, in
  order, numbered as stored;
* a client that goes mid-stream leaves the app producing, stored only, and a resume
  gets exactly the rest;
* an app that raises mid-stream aborts the original response after what it sent
  (never a clean, short end), and the stored stream is failed.

The apps are bare ASGI callables that report through a `Probe` (events for "sent"
and "finally", a gate the test opens). Waits are on events or stored state, each
bounded by ``STEP``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest

from resumable_stream import (
    MemoryBackend,
    ResumableStreamContext,
    StreamOptions,
    StreamStatus,
    create_resumable_stream_context,
)
from resumable_stream.asgi import ResumableStreamMiddleware, ResumableStreamResponse

from .http_servers import Probe, serving

pytestmark = pytest.mark.timeout(60)

STEP = 10.0  # bound on any single wait
FAST = StreamOptions(lease=1.0, poll_interval=0.25, shutdown_grace=0.5)
# A burst far larger than what loopback sockets and the server's write buffer hold
# (a few MiB at most), so that a client that stops reading makes the server wait.
BURST_EVENTS = 2000
BURST_PAD = 4000  # bytes of padding per event: 8 MB in all
GATED_BEFORE = 5  # events before the gate
GATED_AFTER = 300  # events after it


def burst_event(i: int) -> bytes:
    return b"data: %d %s\n\n" % (i, b"x" * BURST_PAD)


def small_event(i: int) -> bytes:
    return b"data: %d\n\n" % i


def body(data: bytes) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": True}


def key_of(scope: Any) -> str:
    return str(scope["path"]).rstrip("/").rsplit("/", 1)[-1]


async def read_request(receive: Callable[[], Awaitable[Any]]) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


def build_app(ctx: ResumableStreamContext, probe: Probe) -> Callable[..., Awaitable[None]]:
    """Under the middleware: ``/burst/<key>`` (events as fast as sends return),
    ``/gated/<key>`` (a few events, the gate ``<key>:go``, many more) and
    ``/failing/<key>`` (a few events, then it raises). Outside it, ``/explicit/<key>``
    answers the burst as a `ResumableStreamResponse`."""
    notes = probe.notes
    sse = [(b"content-type", b"text/event-stream")]

    async def burst(scope: Any, receive: Any, send: Any) -> None:
        key = key_of(scope)
        await read_request(receive)
        await send({"type": "http.response.start", "status": 200, "headers": sse})
        for i in range(BURST_EVENTS):
            await send(body(burst_event(i)))
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        probe.event(f"{key}:sent").set()

    async def gated(scope: Any, receive: Any, send: Any) -> None:
        key = key_of(scope)
        await read_request(receive)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": sse})
            for i in range(GATED_BEFORE):
                await send(body(small_event(i)))
            await probe.event(f"{key}:go").wait()
            for i in range(GATED_BEFORE, GATED_BEFORE + GATED_AFTER):
                await send(body(small_event(i)))
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            notes[f"{key}:exit"] = "completed"
        finally:
            probe.event(f"{key}:finally").set()

    async def failing(scope: Any, receive: Any, send: Any) -> None:
        key = key_of(scope)
        await read_request(receive)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": sse})
            for i in range(GATED_BEFORE):
                await send(body(small_event(i)))
            await probe.event(f"{key}:go").wait()
            raise RuntimeError("the model went away")
        finally:
            probe.event(f"{key}:finally").set()

    async def explicit(scope: Any, receive: Any, send: Any) -> None:
        key = key_of(scope)

        async def content() -> AsyncIterator[bytes]:
            for i in range(BURST_EVENTS):
                yield burst_event(i)
            probe.event(f"{key}:sent").set()

        response = ResumableStreamResponse(content(), context=ctx, media_type="text/event-stream")
        await response(scope, receive, send)

    routes = {"burst": burst, "gated": gated, "failing": failing, "explicit": explicit}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        route = routes.get(str(scope.get("path", "")).split("/")[1])
        if route is None:  # the server's readiness probe, say
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await route(scope, receive, send)

    def handled(scope: Any) -> bool:
        return str(scope["path"]).startswith(("/burst/", "/gated/", "/failing/"))

    wrapped = ResumableStreamMiddleware(
        app, ctx, path=handled, resume_path="/resume/{stream_id}", ping_interval=None
    )

    async def outer(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await wrapped(scope, receive, send)
            return
        path = scope["path"]

        async def spying_receive() -> Any:
            message = await receive()
            if message["type"] == "http.disconnect":
                probe.event(f"disconnect:{path}").set()
            return message

        await wrapped(scope, spying_receive, send)

    return outer


@dataclass
class Site:
    url: str
    port: int
    probe: Probe
    holder: dict[str, Any]
    run: Callable[..., Awaitable[Any]]

    @property
    def ctx(self) -> ResumableStreamContext:
        ctx: ResumableStreamContext = self.holder["ctx"]
        return ctx

    async def wait(self, name: str) -> None:
        with anyio.fail_after(STEP):
            await self.probe.event(name).wait()

    async def wait_status(self, stream_id: str, wanted: StreamStatus) -> None:
        with anyio.fail_after(STEP):
            # The stored status: no event crosses from the backend into the test.
            while await self.run(lambda: self.ctx.get_status(stream_id)) is not wanted:  # noqa: ASYNC110
                await anyio.sleep(0.02)


@contextlib.contextmanager
def site() -> Iterator[Site]:
    probe = Probe()
    holder: dict[str, Any] = {}

    async def make() -> tuple[Any, Callable[[], Awaitable[None]]]:
        made = MemoryBackend()
        ctx = holder["ctx"] = create_resumable_stream_context(made, options=FAST)

        async def cleanup() -> None:
            await ctx.aclose()
            await made.aclose()

        return build_app(ctx, probe), cleanup

    with serving("uvicorn", make, probe) as server:
        yield Site(server.url, server.port, probe, holder, server.run)


def new_key() -> str:
    return uuid.uuid4().hex[:16]


_EVENT = re.compile(rb"data: (\d+)[^\n]*\nid: (\d+)\n\n")


def parse(body: bytes) -> list[tuple[int, int]]:
    """(data number, id) of every event of a body whose events all look alike."""
    found = [(int(m.group(1)), int(m.group(2))) for m in _EVENT.finditer(body)]
    assert len(b"".join(m.group(0) for m in _EVENT.finditer(body))) == len(body), "stray bytes"
    return found


class RawClient:
    """A POST on a socket whose receive buffer is small, read at the caller's pace
    (asyncio's reader stops taking bytes from the socket past 128 KiB)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def post(cls, port: int, path: str) -> tuple[RawClient, bytes]:
        """The client and what it read: the response's head and maybe some body."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect
        sock.setblocking(False)
        with anyio.fail_after(STEP):
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            reader, writer = await asyncio.open_connection(sock=sock)
        client = cls(reader, writer)
        writer.write(
            f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 0\r\n"
            "connection: close\r\n\r\n".encode()
        )
        head = b""
        with anyio.fail_after(STEP):
            while b"\r\n\r\n" not in head:
                piece = await reader.read(4096)
                assert piece, "closed before the response's head"
                head += piece
        return client, head

    async def read_more(self) -> bytes:
        """The next bytes; b"" at the end (a reset counts as the end)."""
        try:
            return await self.reader.read(1 << 16)
        except OSError:
            return b""

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def stream_id_of(head: bytes) -> str:
    found = re.search(rb"(?i)\r\nx-stream-id: ([^\r]+)", head)
    assert found is not None
    return found.group(1).decode()


def dechunk(raw: bytes) -> tuple[bytes, bool]:
    """The body of a chunked response, and whether its terminating chunk came."""
    body = bytearray()
    pos = 0
    while True:
        end = raw.find(b"\r\n", pos)
        if end < 0:
            return bytes(body), False
        size = int(raw[pos:end], 16)
        if size == 0:
            return bytes(body), True
        body += raw[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2


@pytest.mark.parametrize("route", ["burst", "explicit"])
async def test_a_stalled_client_does_not_hold_the_app_back(route: str) -> None:
    """The client stops reading after the headers: the body's sends must not wait for
    it (the server's write buffer fills, the pump takes the connection over), so the
    whole body is made and stored while the client reads nothing. Then it reads the
    rest: every event once, in order, numbered as stored."""
    with site() as at:
        key = new_key()
        client, head = await RawClient.post(at.port, f"/{route}/{key}")
        try:
            assert head.startswith(b"HTTP/1.1 200 ")
            stream_id = stream_id_of(head)
            # Nothing read meanwhile: without the handover the app would wait here.
            await at.wait(f"{key}:sent")
            await at.wait_status(stream_id, StreamStatus.DONE)
            # 8 MB in 4 KB reads: a bytes object would be copied whole at every read.
            raw = bytearray(head.split(b"\r\n\r\n", 1)[1])
            with anyio.fail_after(STEP):
                while piece := await client.read_more():
                    raw += piece
        finally:
            await client.aclose()
        body, complete = dechunk(bytes(raw))
        assert complete
        events = parse(body)
        assert events == [(i, i) for i in range(BURST_EVENTS)]
        assert body == b"".join(
            burst_event(i)[:-1] + b"id: %d\n\n" % i for i in range(BURST_EVENTS)
        )
        # The stored stream is what the original client got, ids included.
        stored = await at.run(lambda: stored_body(at.ctx, stream_id))
        assert stored == body


async def stored_body(ctx: ResumableStreamContext, stream_id: str) -> bytes:
    """A stored SSE stream as the resume endpoint numbers it."""
    reader = await ctx.resume_existing_stream(stream_id, after=-1)
    assert reader is not None
    out = bytearray()
    async for index, chunk in reader.indexed():
        assert isinstance(chunk, bytes)
        out += chunk[:-1] + b"id: %d\n\n" % index
    return bytes(out)


async def test_a_client_gone_mid_stream_leaves_the_app_producing() -> None:
    """The client goes while the line is direct: the app goes on (stored only), ends,
    and a resume from the last id the client saw gets exactly the rest."""
    with site() as at:
        key = new_key()
        path = f"/gated/{key}"
        async with (
            httpx.AsyncClient(base_url=at.url, timeout=STEP, trust_env=False) as http,
            http.stream("POST", path) as response,
        ):
            stream_id = response.headers["x-stream-id"]
            got = b""
            with anyio.fail_after(STEP):
                async for part in response.aiter_raw():
                    got += part
                    if got.count(b"\n\n") >= GATED_BEFORE:
                        break
        await at.wait(f"disconnect:{path}")
        at.probe.event(f"{key}:go").set()
        await at.wait(f"{key}:finally")
        assert at.probe.notes[f"{key}:exit"] == "completed"
        await at.wait_status(stream_id, StreamStatus.DONE)
        first = parse(got)
        assert first == [(i, i) for i in range(GATED_BEFORE)]
        async with httpx.AsyncClient(base_url=at.url, timeout=STEP, trust_env=False) as http:
            tail = await http.get(
                f"/resume/{stream_id}", headers={"Last-Event-ID": str(GATED_BEFORE - 1)}
            )
        assert tail.status_code == 200
        total = GATED_BEFORE + GATED_AFTER
        assert parse(tail.content) == [(i, i) for i in range(GATED_BEFORE, total)]
        assert await at.run(lambda: stored_body(at.ctx, stream_id)) == got + tail.content


async def test_an_app_raising_mid_stream_aborts_the_direct_response() -> None:
    """The app raises after some events went out directly: the original response is
    cut (no terminating chunk: the client knows it is short, and resumes), and the
    stream is stored failed after exactly those events."""
    with site() as at:
        key = new_key()
        client, head = await RawClient.post(at.port, f"/failing/{key}")
        try:
            stream_id = stream_id_of(head)
            raw = head.split(b"\r\n\r\n", 1)[1]
            with anyio.fail_after(STEP):
                while dechunk(raw)[0].count(b"\n\n") < GATED_BEFORE:
                    piece = await client.read_more()
                    assert piece, "closed before the events the app sent"
                    raw += piece
            at.probe.event(f"{key}:go").set()
            with anyio.fail_after(STEP):
                while piece := await client.read_more():
                    raw += piece
        finally:
            await client.aclose()
        body, complete = dechunk(raw)
        assert not complete  # aborted, never a clean end
        assert parse(body) == [(i, i) for i in range(GATED_BEFORE)]
        await at.wait_status(stream_id, StreamStatus.FAILED)
        async with httpx.AsyncClient(base_url=at.url, timeout=STEP, trust_env=False) as http:
            after = await http.get(
                f"/resume/{stream_id}", headers={"Last-Event-ID": str(GATED_BEFORE - 1)}
            )
        assert after.status_code == 410
        assert after.headers["x-stream-status"] == "failed"
