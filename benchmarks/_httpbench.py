"""W3 through HTTP and W4: a raw-socket HTTP/1.1 load client against `_httpapp`.

The client is an asyncio protocol that only appends what it receives and notes when
(one list append per read): an httpx client costs more per chunk than the server
does, and would measure itself. Bodies are parsed once the response is complete.
The server runs in a process of its own (uvicorn, uvloop, httptools); its CPU time
and peak RSS come from ``/proc``.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._common import (
    RedisProbe,
    cpu_seconds,
    now,
    peak_rss_bytes,
    percentiles,
)
from ._httpapp import EVENT_BYTES

ROOT = Path(__file__).resolve().parent.parent


def _server_cwd() -> Path:
    """Where the server process starts: the source tree whose ``resumable_stream``
    this process imported, if it has the benchmarks too (`benchmarks.ab` runs two trees
    whose ``benchmarks`` is one symlinked directory, so the server must start in the
    tree of the library under test); else (an installed wheel) this checkout."""
    import resumable_stream

    tree = Path(resumable_stream.__file__).resolve().parent.parent
    return tree if (tree / "benchmarks").is_dir() else ROOT


@dataclass
class Response:
    started: int
    raw: bytearray = field(default_factory=bytearray)
    marks: list[tuple[int, int]] = field(default_factory=list)  # (time, raw length)
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes = b""
    body_to_raw: list[tuple[int, int]] = field(default_factory=list)  # (body off, raw off)

    def parse(self) -> None:
        head, sep, _ = self.raw.partition(b"\r\n\r\n")
        if not sep:
            return
        lines = bytes(head).split(b"\r\n")
        self.status = int(lines[0].split()[1])
        for line in lines[1:]:
            key, _, value = line.partition(b":")
            self.headers[key.strip().lower()] = value.strip()
        pos = len(head) + 4
        body = bytearray()
        if self.headers.get(b"transfer-encoding", b"").lower() != b"chunked":
            self.body_to_raw.append((0, pos))
            self.body = bytes(self.raw[pos:])
            return
        while True:
            end = self.raw.find(b"\r\n", pos)
            if end < 0:
                break
            size = int(self.raw[pos:end].split(b";")[0], 16)
            if size == 0:
                break
            start = end + 2
            self.body_to_raw.append((len(body), start))
            body += self.raw[start : start + size]
            pos = start + size + 2
        self.body = bytes(body)

    def time_at(self, body_offset: int) -> int:
        """When the body byte at ``body_offset`` arrived."""
        i = bisect.bisect_right(self.body_to_raw, (body_offset, 1 << 62)) - 1
        body_start, raw_start = self.body_to_raw[i]
        raw = raw_start + body_offset - body_start
        j = bisect.bisect_right(self.marks, (1 << 62, raw))
        j = min(j, len(self.marks) - 1)
        while j > 0 and self.marks[j - 1][1] > raw:
            j -= 1
        return self.marks[j][0]

    def first_body_time(self) -> int | None:
        """When the first non-empty body chunk arrived."""
        if not self.body:
            return None
        return self.time_at(0)


class _Client(asyncio.Protocol):
    def __init__(self, response: Response, until_events: int | None) -> None:
        self.response = response
        self.until = until_events
        self.blank_lines = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        raw = self.response.raw
        raw += data
        self.response.marks.append((now(), len(raw)))
        if self.until is not None:
            # SSE events end with a blank line; a "\n\n" split across reads is rare
            # and only delays the stop by one read.
            self.blank_lines += data.count(b"\n\n")
            if self.blank_lines >= self.until and not self.done.done():
                self.done.set_result(None)
        elif raw.endswith(b"\r\n0\r\n\r\n") and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def fetch(
    port: int, method: str, target: str, *, until_events: int | None = None
) -> Response:
    """One request on a new connection; read to the end (or ``until_events`` events)."""
    loop = asyncio.get_running_loop()
    response = Response(started=now())
    transport, protocol = await loop.create_connection(
        lambda: _Client(response, until_events), "127.0.0.1", port
    )
    request = (
        f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
        f"Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    transport.write(request.encode())
    try:
        await protocol.done
    finally:
        transport.close()
    response.parse()
    return response


def sse_events(body: bytes) -> list[tuple[int, int | None, bytes]]:
    """(end offset, id, data line) for each event; comments (pings) skipped."""
    out: list[tuple[int, int | None, bytes]] = []
    pos = 0
    while True:
        end = body.find(b"\n\n", pos)
        if end < 0:
            return out
        event_id: int | None = None
        data = b""
        for line in body[pos:end].split(b"\n"):
            if line.startswith(b"id: "):
                event_id = int(line[4:])
            elif line.startswith(b"data: "):
                data = line
        if data:
            out.append((end + 2, event_id, data))
        pos = end + 2


def check_stream(
    response: Response, client: str, n: int, *, resumable: bool
) -> tuple[bool, list[int]]:
    """Every event in order with exactly the expected bytes; returns the latencies."""
    if response.status != 200:
        return False, []
    if resumable and b"x-stream-id" not in response.headers:
        return False, []
    events = sse_events(response.body)
    if len(events) != n:
        return False, []
    latencies = []
    for index, (end, event_id, data) in enumerate(events):
        parts = data[6:].rstrip(b".").split(b":")
        if len(parts) != 3 or parts[0] != client.encode() or parts[1] != str(index).encode():
            return False, []
        if (resumable and event_id != index) or (not resumable and event_id is not None):
            return False, []
        stamp = int(parts[2])
        from ._httpapp import event

        if data + b"\n\n" != event(client, index, stamp):
            return False, []
        latencies.append(response.time_at(end - 1) - stamp)
    return True, latencies


class Server:
    """The `_httpapp` server process of one variant."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.process: subprocess.Popen[str] | None = None
        self.port = 0

    async def __aenter__(self) -> Server:
        # Popen only forks: it does not wait for the child.
        self.process = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "benchmarks._httpapp", json.dumps(self.spec)],
            cwd=_server_cwd(),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.process.stdout.readline), 30)
        if not line.startswith("READY"):
            raise RuntimeError(f"the HTTP server did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def __aexit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.process.wait, 15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                await asyncio.to_thread(self.process.wait)


async def w4(spec: dict[str, Any]) -> dict[str, Any]:
    """``clients`` concurrent clients, each one request of ``events`` SSE events,
    ``requests`` times in a row; the server serves one variant."""
    variant, clients, n, requests = spec["variant"], spec["clients"], spec["events"], spec[
        "requests"
    ]
    resumable = variant not in ("plain", "plain_stored")
    probe = RedisProbe(spec["url"])
    async with Server({"variant": variant, "url": spec["url"]}) as server:
        # Warm up: connections to Redis, scripts, the server's code paths.
        await asyncio.gather(*(fetch(server.port, "GET", "/stream?n=20&c=w") for _ in range(4)))
        cpu_before = cpu_seconds(server.pid)
        client_cpu = os.times()
        await probe.start()
        started = now()
        responses: list[tuple[str, Response]] = []
        for r in range(requests):
            names = [f"{r}-{c}" for c in range(clients)]
            got = await asyncio.gather(
                *(fetch(server.port, "GET", f"/stream?n={n}&c={name}") for name in names)
            )
            responses += zip(names, got, strict=True)
        elapsed = (now() - started) / 1e9
        await probe.stop()
        server_cpu = cpu_seconds(server.pid) - cpu_before
        client_after = os.times()
        server_peak = peak_rss_bytes(server.pid)
    await probe.aclose()
    ok = True
    latencies: list[int] = []
    for name, response in responses:
        good, lat = check_stream(response, name, n, resumable=resumable)
        ok = ok and good
        latencies += lat
    total = clients * n * requests
    result: dict[str, Any] = {
        "chunks": total,
        "bytes": total * EVENT_BYTES,
        "elapsed_s": elapsed,
        "chunks_per_s": total / elapsed,
        "bytes_per_s": total * EVENT_BYTES / elapsed,
        "cpu_s": server_cpu,
        "cpu_us_per_chunk": server_cpu / total * 1e6,
        "client_cpu_s": (client_after.user - client_cpu.user)
        + (client_after.system - client_cpu.system),
        "peak_rss_mb": server_peak / 2**20,
        "exact": ok,
        "latency_ms": percentiles(latencies if ok else []),
    }
    if resumable:
        result["redis"] = probe.report(total)
        result["redis"]["round_trips_counted"] = "server: EVALSHA and pub/sub commands"
        commands = probe.commands
        trips = sum(commands[k] for k in ("evalsha", "eval", "subscribe", "unsubscribe"))
        result["redis"]["round_trips"] = trips
        result["redis"]["round_trips_per_chunk"] = trips / total
    return result


async def w3_http(spec: dict[str, Any]) -> dict[str, Any]:
    """Resume through HTTP (``GET /resume/{id}``, the middleware's endpoint) of a
    running stream with ``stored`` events: time to the first body byte, and until
    every stored event has arrived."""
    stored, singles, burst = spec["stored"], spec["singles"], spec["burst"]
    probe = RedisProbe(spec["url"])
    async with Server({"variant": "middleware", "url": spec["url"]}) as server:
        held = await fetch(server.port, "POST", f"/hold?n={stored}")
        stream_id = held.body.decode()

        async def resume_once(until: int = stored) -> tuple[int, int, bool]:
            response = await fetch(server.port, "GET", f"/resume/{stream_id}", until_events=until)
            first = response.first_body_time()
            events = sse_events(response.body)[:until]
            ok = len(events) == until and all(
                event_id == i and data + b"\n\n" == _held_event(i)
                for i, (_, event_id, data) in enumerate(events)
            )
            last = response.time_at(events[-1][0] - 1) if ok else now()
            return (first or now()) - response.started, last - response.started, ok

        await resume_once()  # warm up
        cpu_before = cpu_seconds(server.pid)
        await probe.start()
        started = now()
        single = [await resume_once() for _ in range(singles)]
        burst_started = now()
        # The burst reads up to its first event and hangs up: 200 catch-ups of the
        # whole stream through one server process would measure that instead.
        bursts = await asyncio.gather(*(resume_once(1) for _ in range(burst)))
        burst_wall = now() - burst_started
        elapsed = (now() - started) / 1e9
        await probe.stop()
        server_cpu = cpu_seconds(server.pid) - cpu_before
        await fetch(server.port, "POST", "/release")
        server_peak = peak_rss_bytes(server.pid)
    await probe.aclose()
    resumes = singles + burst
    total = singles * stored + burst
    report = probe.report(resumes)
    trips = sum(probe.commands[k] for k in ("evalsha", "eval", "subscribe", "unsubscribe"))
    return {
        "chunks": total,
        "bytes": total * EVENT_BYTES,
        "elapsed_s": elapsed,
        "chunks_per_s": total / elapsed,
        "bytes_per_s": total * EVENT_BYTES / elapsed,
        "cpu_s": server_cpu,
        "cpu_us_per_chunk": server_cpu / total * 1e6,
        "peak_rss_mb": server_peak / 2**20,
        "exact": all(r[2] for r in single + bursts),
        "ttfb_ms": percentiles([r[0] for r in single]),
        "catch_up_ms": percentiles([r[1] for r in single]),
        "burst_ttfb_ms": percentiles([r[0] for r in bursts]),
        "burst_wall_ms": burst_wall / 1e6,
        "redis": {**report, "round_trips": trips, "round_trips_per_chunk": trips / resumes},
        "round_trips_per_resume": trips / resumes,
        "commands_per_resume": report["commands_per_chunk"],
    }


def _held_event(index: int) -> bytes:
    from ._httpapp import event

    return event("h", index, 0)
