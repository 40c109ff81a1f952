"""A loopback stand-in for Upstash's Redis REST API, over a private redis-server.

Upstash cannot be reached from CI, so the Upstash backend is tested against this: an
ASGI app served by uvicorn in a subprocess on a free loopback port, which speaks the
protocol Upstash documents and forwards every command to a real redis-server over RESP:

* ``POST /`` with a JSON array (one command) -> ``{"result": ...}``, or HTTP 400 with
  ``{"error": "..."}`` when the command answers with an error;
* ``POST /pipeline`` with an array of commands -> an array of ``{"result"}`` /
  ``{"error"}``, in order, not atomic; ``POST /multi-exec`` the same inside
  ``MULTI``/``EXEC`` (atomic);
* ``Authorization: Bearer <token>``, else HTTP 401 ``{"error": "Unauthorized"}``;
* ``Upstash-Encoding: base64``: every string of a reply is base64, except the status
  reply ``OK``; without it strings are UTF-8 text;
* ``POST /subscribe/<channel>``: server-sent events, ``data: subscribe,<channel>,<n>``
  once Redis confirmed, then ``data: message,<channel>,<payload>`` per message, the
  payload raw (as Upstash documents it: everything after the second comma).

Controls for tests, outside Upstash's protocol (under ``/_standin/``, token required):
``POST /_standin/cut`` ends every open subscription, ``POST /_standin/subscribe/off``
makes new subscriptions answer 503 and ``/hold`` never confirms them (a proxy that
buffers the response; ``/on`` serves them again), ``POST /_standin/fail/<status>`` makes
every later request of the protocol answer that HTTP status (``/fail/0`` ends it), and
``GET /_standin/stats`` counts the requests served by kind.

Usage: ``python -m tests.upstash_standin --port P --redis-port R --token T``; from tests,
`UpstashStandin` starts and stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx

from .servers import free_port

ROOT = Path(__file__).resolve().parent.parent

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# --- a small RESP2 client: the stand-in must see status replies apart from strings ---


@dataclass(frozen=True)
class Status:
    """A simple-string reply (``+OK``), which Upstash never base64-encodes if ``OK``."""

    text: str


@dataclass(frozen=True)
class ErrorReply:
    text: str


def _encode_command(args: list[bytes]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


async def _read_reply(reader: asyncio.StreamReader) -> Any:
    line = await reader.readuntil(b"\r\n")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return Status(rest.decode())
    if kind == b"-":
        return ErrorReply(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        return (await reader.readexactly(size + 2))[:-2]
    if kind == b"*":
        size = int(rest)
        if size < 0:
            return None
        return [await _read_reply(reader) for _ in range(size)]
    raise ConnectionError(f"bad RESP reply {line!r}")


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, *commands: list[bytes]) -> None:
        self.writer.write(b"".join(_encode_command(c) for c in commands))
        await self.writer.drain()

    async def read(self) -> Any:
        return await _read_reply(self.reader)

    def close(self) -> None:
        self.writer.close()


class _Pool:
    """Idle RESP connections to the redis-server, reused between requests."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[_Connection] = []

    async def open(self) -> _Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        return _Connection(reader, writer)

    async def run(self, commands: list[list[bytes]]) -> list[Any]:
        """Send ``commands`` in one write and read their replies in order."""
        conn = self.idle.pop() if self.idle else await self.open()
        try:
            await conn.send(*commands)
            replies = [await conn.read() for _ in commands]
        except BaseException:
            conn.close()
            raise
        self.idle.append(conn)
        return replies


# --- the REST protocol ---------------------------------------------------------


def _argument(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):
        return b"1" if value else b"0"
    if isinstance(value, (int, float)):
        return str(value).encode()
    return json.dumps(value).encode()


def _command(value: Any) -> list[bytes]:
    if not isinstance(value, list) or not value:
        raise ValueError("a command is a non-empty JSON array")
    return [_argument(v) for v in value]


def _json_value(reply: Any, base64_strings: bool) -> Any:
    if isinstance(reply, Status):
        if base64_strings and reply.text != "OK":
            return base64.b64encode(reply.text.encode()).decode()
        return reply.text
    if isinstance(reply, bytes):
        if base64_strings:
            return base64.b64encode(reply).decode()
        return reply.decode("utf-8", "replace")
    if isinstance(reply, ErrorReply):
        return reply.text
    if isinstance(reply, list):
        return [_json_value(r, base64_strings) for r in reply]
    return reply  # int or None


def _answer(reply: Any, base64_strings: bool) -> dict[str, Any]:
    if isinstance(reply, ErrorReply):
        return {"error": reply.text}
    return {"result": _json_value(reply, base64_strings)}


class StandinApp:
    """The ASGI app: Upstash's REST protocol over the redis-server on ``redis_port``."""

    def __init__(self, redis_port: int, token: str) -> None:
        self.pool = _Pool(redis_port)
        self.token = token
        self.stats: Counter[str] = Counter()
        self.subscribe_mode = "on"  # "off": refused with 503; "hold": never confirmed
        self.failing = 0  # an HTTP status every request of the protocol answers, or 0
        self.cut_event: asyncio.Event | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.cut_event = asyncio.Event()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        if headers.get("authorization") != f"Bearer {self.token}":
            await _json(send, 401, {"error": "Unauthorized"})
            return
        b64 = headers.get("upstash-encoding", "").lower() == "base64"
        path: str = scope["path"]
        if self.failing and not path.startswith("/_standin/"):
            await _body(receive)
            # 400 is how Upstash answers a database over its quota.
            text = "ERR max requests limit exceeded" if self.failing == 400 else (
                f"stand-in failing with {self.failing}"
            )
            await _json(send, self.failing, {"error": text})
            return
        if path.startswith("/subscribe/"):
            self.stats["subscribe"] += 1
            await self._subscribe(unquote(path[len("/subscribe/") :]), receive, send)
            return
        body = await _body(receive)
        if path.startswith("/_standin/"):
            await self._control(path, send)
            return
        try:
            payload = json.loads(body)
            if path == "/":
                self.stats["command"] += 1
                reply = (await self.pool.run([_command(payload)]))[0]
                answer = _answer(reply, b64)
                await _json(send, 400 if "error" in answer else 200, answer)
            elif path == "/pipeline":
                self.stats["pipeline"] += 1
                replies = await self.pool.run([_command(c) for c in payload])
                await _json(send, 200, [_answer(r, b64) for r in replies])
            elif path == "/multi-exec":
                self.stats["multi-exec"] += 1
                commands = [_command(c) for c in payload]
                replies = await self.pool.run([[b"MULTI"], *commands, [b"EXEC"]])
                queued = [r for r in replies[1:-1] if isinstance(r, ErrorReply)]
                if queued or isinstance(replies[-1], ErrorReply):
                    error = queued[0] if queued else replies[-1]
                    await _json(send, 400, {"error": error.text})
                else:
                    await _json(send, 200, [_answer(r, b64) for r in replies[-1]])
            else:
                await _json(send, 404, {"error": f"unknown path {path}"})
        except (ValueError, TypeError) as exc:
            await _json(send, 400, {"error": f"ERR bad request: {exc}"})

    async def _control(self, path: str, send: Send) -> None:
        assert self.cut_event is not None
        if path == "/_standin/cut":
            self.cut_event.set()
            self.cut_event = asyncio.Event()
        elif path in ("/_standin/subscribe/on", "/_standin/subscribe/off",
                      "/_standin/subscribe/hold"):
            self.subscribe_mode = path.rsplit("/", 1)[1]
        elif path.startswith("/_standin/fail/"):
            self.failing = int(path.rsplit("/", 1)[1])
        elif path != "/_standin/stats":
            await _json(send, 404, {"error": "unknown control"})
            return
        await _json(send, 200, dict(self.stats))

    async def _subscribe(self, channel: str, receive: Receive, send: Send) -> None:
        if self.subscribe_mode == "off":
            await _json(send, 503, {"error": "subscriptions are disabled in this stand-in"})
            return
        assert self.cut_event is not None
        cut = self.cut_event
        if self.subscribe_mode == "hold":
            # As a proxy that buffers the response: headers, then nothing at all.
            await send({"type": "http.response.start", "status": 200, "headers": []})
            waits = [asyncio.ensure_future(c) for c in (_disconnected(receive), cut.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waits:
                    task.cancel()
                await asyncio.gather(*waits, return_exceptions=True)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        conn = await self.pool.open()
        try:
            await conn.send([b"SUBSCRIBE", channel.encode()])
            await send({
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")
                ],
            })

            async def pump() -> None:
                while True:
                    reply = await conn.read()
                    if not isinstance(reply, list) or len(reply) < 3:
                        continue
                    kind, name, value = reply[0], reply[1], reply[2]
                    if kind == b"subscribe":
                        line = b"subscribe," + name + b"," + str(value).encode()
                    elif kind == b"message":
                        line = b"message," + name + b"," + value
                    else:
                        continue
                    await send({
                        "type": "http.response.body", "body": b"data: " + line + b"\n\n",
                        "more_body": True,
                    })

            tasks = [
                asyncio.ensure_future(c) for c in (pump(), _disconnected(receive), cut.wait())
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            conn.close()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b""
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


async def _json(send: Send, status: int, value: Any) -> None:
    body = json.dumps(value).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    })
    await send({"type": "http.response.body", "body": body})


# --- running it ------------------------------------------------------------------


class UpstashStandin:
    """The stand-in in a subprocess on a free loopback port, started and stopped by tests."""

    def __init__(self, redis_port: int, token: str = "test-token") -> None:
        self.redis_port = redis_port
        self.token = token
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        # The stand-in's own errors, see `output`; closed by `close`.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115
        # For the controls; plain HTTP, so no certificate store to load (60 ms a client).
        self._http = httpx.Client(verify=False, timeout=5.0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The two variables a user of Upstash has."""
        return {"UPSTASH_REDIS_REST_URL": self.url, "UPSTASH_REDIS_REST_TOKEN": self.token}

    def start(self, timeout: float = 20.0) -> None:
        path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
        for _attempt in range(3):  # another process may take the port before us
            self.port = free_port()
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "tests.upstash_standin", "--port", str(self.port),
                    "--redis-port", str(self.redis_port), "--token", self.token,
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=self.log,
            )
            if self._wait_ready(timeout):
                return
            self.stop()
        raise RuntimeError("the Upstash stand-in did not start")

    def _wait_ready(self, timeout: float) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                self.control("stats")
                return True
            except httpx.TransportError:
                time.sleep(0.02)  # polling a process we cannot get an event from
        return False

    def control(self, name: str) -> dict[str, int]:
        """Call one of the ``/_standin/`` controls; the request counts so far."""
        method = "GET" if name == "stats" else "POST"
        response = self._http.request(
            method, f"{self.url}/_standin/{name}",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        response.raise_for_status()
        counts: dict[str, int] = response.json()
        return counts

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # the process we started, by its handle
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def output(self) -> str:
        """What the stand-in wrote to stderr so far (tracebacks of its own bugs)."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def close(self) -> None:
        self.stop()
        self._http.close()
        self.log.close()


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("--token", required=True)
    args = parser.parse_args(argv)
    uvicorn.run(
        StandinApp(args.redis_port, args.token),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=1,
    )


if __name__ == "__main__":
    main()
