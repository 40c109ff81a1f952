"""The HTTP server of W3 (through HTTP) and W4, in a process of its own.

``python -m benchmarks._httpapp '<spec json>'`` serves one variant with uvicorn
(uvloop, httptools) on a free loopback port and prints ``READY <port>``. SIGTERM
stops it. Variants (``spec["variant"]``), all serving the same SSE generator on
``GET /stream?n=<events>&c=<client>``:

* ``plain``: Starlette's ``StreamingResponse``, no resumability (the ceiling);
* ``middleware``: the same endpoint wrapped by ``ResumableStreamMiddleware``, which
  also serves ``GET /resume/{stream_id}``;
* ``explicit``: ``ResumableStreamResponse`` returned by the endpoint;
* ``plain_stored``: ``plain``, each event also stored behind in Redis by one writer
  for every stream (`SharedWriter`): the floor of storing with redis-py at all.

``POST /hold?n=<events>`` (every variant with a context) starts a stream of ``n``
events that then stays running, answers with its id once they are all stored, and
``POST /release`` lets those streams end: the running stream W3 resumes.

Each event is ``data: <client>:<index>:<monotonic ns>`` padded with dots to
`EVENT_BYTES` bytes with its blank line: the client checks every byte and reads
the time the server yielded it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import uuid
from typing import Any

EVENT_BYTES = 64


def event(client: str, index: int, stamp: int) -> bytes:
    head = f"data: {client}:{index}:{stamp}".encode()
    return head + b"." * (EVENT_BYTES - 2 - len(head)) + b"\n\n"


def build(spec: dict[str, Any]) -> Any:
    import redis.asyncio as aioredis
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Route

    from resumable_stream import StreamOptions, create_resumable_stream_context
    from resumable_stream._http import http_metadata
    from resumable_stream.asgi import ResumableStreamMiddleware, ResumableStreamResponse

    from ._common import SharedWriter, now

    variant = spec["variant"]
    ctx = None
    stored: list[SharedWriter] = []  # made in the server's loop, at the first request
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    if variant == "plain_stored":
        raw = aioredis.Redis.from_url(spec["url"], socket_connect_timeout=5)
    elif variant != "plain":
        client = aioredis.Redis.from_url(spec["url"], socket_connect_timeout=5)
        ctx = create_resumable_stream_context(
            client,
            key_prefix=f"bench-{uuid.uuid4().hex[:8]}",
            ttl=300.0,
            options=StreamOptions(finished_ttl=60.0),
        )
    holds: list[asyncio.Event] = []
    tasks: set[asyncio.Task[Any]] = set()

    async def events(client: str, n: int) -> Any:
        for index in range(n):
            if index:
                await asyncio.sleep(0)
            yield event(client, index, now())

    async def stored_events(client: str, n: int) -> Any:
        if not stored:
            stored.append(SharedWriter(raw, asyncio.Semaphore(50), [0]))
        add, key = stored[0].add, f"{prefix}:raw:{client}"
        for index in range(n):
            if index:
                await asyncio.sleep(0)
            data = event(client, index, now())
            yield data
            add(key, data)

    async def stream(request: Request) -> Response:
        n = int(request.query_params.get("n", "1000"))
        client = request.query_params.get("c", "0")
        if variant == "explicit":
            return ResumableStreamResponse(  # type: ignore[return-value]
                events(client, n), context=ctx, media_type="text/event-stream"
            )
        if variant == "plain_stored":
            body = stored_events(client, n)
            return StreamingResponse(body, media_type="text/event-stream")
        return StreamingResponse(events(client, n), media_type="text/event-stream")

    async def hold(request: Request) -> Response:
        assert ctx is not None
        n = int(request.query_params.get("n", "10000"))
        gate = asyncio.Event()
        holds.append(gate)

        async def held() -> Any:
            for index in range(n + 1):
                if index == n:
                    await gate.wait()
                elif index:
                    await asyncio.sleep(0)
                yield event("h", index, 0)

        stream_id = f"held-{uuid.uuid4().hex[:12]}"
        reader = await ctx.create_new_resumable_stream(
            stream_id,
            held,
            metadata=http_metadata(200, [(b"content-type", b"text/event-stream")]),
        )
        assert reader is not None

        async def drain() -> None:
            async for _ in reader:
                pass

        task = asyncio.create_task(drain())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        # Wait until the writer has stored them all (polling: there is no event for it).
        while True:
            snap = await ctx.backend.snapshot(stream_id, 0, 0)
            if snap is not None and snap.length >= n:
                break
            await asyncio.sleep(0.005)
        return PlainTextResponse(stream_id)

    async def release(request: Request) -> Response:
        for gate in holds:
            gate.set()
        holds.clear()
        return PlainTextResponse("released")

    app: Any = Starlette(
        routes=[
            Route("/stream", stream),
            Route("/hold", hold, methods=["POST"]),
            Route("/release", release, methods=["POST"]),
        ]
    )
    if variant == "middleware":
        app = ResumableStreamMiddleware(
            app, ctx, path="/stream", methods=("GET",), resume_path="/resume/{stream_id}"
        )
    return app


async def serve(spec: dict[str, Any]) -> None:
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    config = uvicorn.Config(
        build(spec),
        loop="uvloop",
        http="httptools",
        ws="none",
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
        backlog=1024,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            await task
            return
        await asyncio.sleep(0.01)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    await task


def main() -> int:
    spec = json.loads(sys.argv[1])
    import uvloop

    uvloop.run(serve(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
