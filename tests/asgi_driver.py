"""Drive an ASGI app by hand: one request, its ``receive`` and ``send`` in the test's
loop. TestClient and ASGITransport buffer whole bodies; this sees every message, an
aborted body (the app raised after the response started) and a hang (bounded)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

ASGIApp = Callable[..., Awaitable[None]]


@dataclass
class Reply:
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    complete: bool = False  # the app sent more_body=False
    error: BaseException | None = None  # what the app raised (the server would abort)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    first_body: asyncio.Event = field(default_factory=asyncio.Event)

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


async def request(
    app: ASGIApp,
    method: str,
    path: str,
    *,
    headers: Iterable[tuple[bytes, bytes]] = (),
    query: bytes = b"",
    body: bytes = b"",
    reply: Reply | None = None,
    disconnect: asyncio.Event | None = None,
) -> Reply:
    """Run one request to its end; ``disconnect`` (set by the test) ends it early, as a
    client going away does."""
    reply = reply or Reply()
    gone = disconnect or asyncio.Event()
    sent_body = False
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "query_string": query,
        "root_path": "",
        "headers": list(headers),
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if gone.is_set():
            raise OSError("the client went away")
        if message["type"] == "http.response.start":
            assert reply.status is None, "two response starts"
            reply.status = message["status"]
            reply.headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
            reply.started.set()
        elif message["type"] == "http.response.body":
            assert reply.status is not None, "a body before the response start"
            assert not reply.complete, "a body after the end"
            reply.body += message.get("body", b"")
            if message.get("body"):
                reply.first_body.set()
            if not message.get("more_body", False):
                reply.complete = True
                gone.set()  # the server closes the request: a listener sees a disconnect

    try:
        await app(scope, receive, send)
    except Exception as exc:
        reply.error = exc
    finally:
        gone.set()
    return reply
