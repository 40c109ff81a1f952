"""Durable Streams servers side by side, on this machine, in one run.

Run from the repository root::

    python -m benchmarks.durable            # full sizes
    python -m benchmarks.durable --quick    # small sizes (CI: checks bytes, not speed)
    python -m benchmarks.durable --redis-url redis://127.0.0.1:6379/0 --out durable.json

and as the ``durable`` step of ``python -m benchmarks``. The servers, each in a process
of its own on a free loopback port, all measured by the same httpx client:

* ours, ``examples/durable_streams_app.py`` under uvicorn: in memory, and on Redis (a
  private redis-server unless ``--redis-url``, which must be loopback);
* ``rakaia-streams`` 0.9.0 (Python, ``uvicorn rakaia:app``), installed with ``pip
  install --no-deps --target`` into a cache directory (``~/.cache/resumable-stream-bench``)
  the first time, never into the repository;
* the Node reference server, ``@durable-streams/server`` 0.3.7 in memory, pinned in
  ``benchmarks/durable_node/package-lock.json`` (``npm ci`` there the first time).

Measured, per server:

* ``append_per_s``: appends of 64 B to one stream from ``writers`` concurrent writers
  (each awaiting its previous append), appends per second;
* ``catch_up_mb_per_s``: reads of a stream of 1 KiB appends from ``-1`` to its end,
  following ``Stream-Next-Offset``, MB per second;
* ``tail_latency_ms``: a reader follows the tail over SSE; from just before each POST
  to the arrival of its data event (p50, p99), appends one at a time.

Each server runs ``repeats`` times (3), the servers taking turns; the table shows
medians. Every read is compared with what was appended (``exact``); the exit status is
1 if any differs. A server that cannot be installed or started is left out, with a note. One
JSON document goes to stdout (and ``--out``), progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from ._common import log, percentiles

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = Path(__file__).resolve().parent / "durable_node"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "resumable-stream-bench"
RAKAIA = "rakaia-streams==0.9.0"
START_TIMEOUT = 30.0
TIMEOUT = httpx.Timeout(30.0)

FULL = {"appends": 4000, "writers": 8, "stored": 2000, "reads": 10, "tail": 200, "repeats": 3}
QUICK = {"appends": 200, "writers": 4, "stored": 200, "reads": 2, "tail": 20, "repeats": 1}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(process: subprocess.Popen[bytes], port: int) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)  # a process we get no event from
    return False


@contextlib.contextmanager
def _serve(command: list[str], port: int, env: dict[str, str]) -> Iterator[str]:
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        if not _wait_listening(process, port):
            _, err = process.communicate(timeout=5) if process.poll() is not None else (b"", b"")
            raise RuntimeError(f"{command[:3]} did not start: {err.decode()[-500:]}")
        yield f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if process.stderr is not None:
            process.stderr.close()


def _uvicorn(target: str, port: int) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port),
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "KV_URL")}


def prepare_rakaia() -> Path | str:
    """The directory holding rakaia (installed there the first time), or why not."""
    target = CACHE / RAKAIA.replace("==", "-")
    if (target / "rakaia").is_dir():
        return target
    target.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps",
         "--target", str(target), RAKAIA],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        return f"pip install {RAKAIA} failed: {proc.stderr.strip()[-300:]}"
    return target


def prepare_node() -> str | None:
    """None once the reference server is installed (``npm ci``), else why not."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node is not installed: the Node reference server was not run"
    if not (NODE_DIR / "node_modules" / "@durable-streams" / "server").is_dir():
        proc = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            return f"npm ci failed in benchmarks/durable_node: {proc.stderr.strip()[-300:]}"
    return None


@contextlib.contextmanager
def server(name: str, redis_url: str) -> Iterator[str]:
    """Start the server ``name``; yield its base URL (streams go under /v1/stream/)."""
    port = _free_port()
    env = _base_env()
    if name == "ours_memory":
        with _serve(_uvicorn("examples.durable_streams_app:app", port), port, env) as url:
            yield url
    elif name == "ours_redis":
        env.update(REDIS_URL=redis_url, DURABLE_STREAMS_PREFIX=f"bench-ds-{uuid.uuid4().hex[:8]}")
        with _serve(_uvicorn("examples.durable_streams_app:app", port), port, env) as url:
            yield url
    elif name == "rakaia":
        where = prepare_rakaia()
        if isinstance(where, str):
            raise RuntimeError(where)
        env["PYTHONPATH"] = str(where)
        with _serve(_uvicorn("rakaia:app", port), port, env) as url:
            yield url
    elif name == "node_reference":
        why = prepare_node()
        if why is not None:
            raise RuntimeError(why)
        with _serve(["node", str(NODE_DIR / "server.mjs"), str(port)], port, env) as url:
            yield url
    else:
        raise ValueError(name)


def _record(i: int, size: int) -> bytes:
    """A distinct record of ``size`` bytes: the read-back check finds any loss or copy."""
    head = f"<{i:08d}>".encode()
    return head + b"." * (size - len(head))


async def _create(client: httpx.AsyncClient, url: str) -> None:
    reply = await client.put(url, headers={"content-type": "text/plain"})
    if reply.status_code not in (200, 201):
        raise RuntimeError(f"PUT {url}: {reply.status_code} {reply.text[:200]}")


async def _read_all(client: httpx.AsyncClient, url: str) -> bytes:
    body, offset = bytearray(), "-1"
    for _ in range(100_000):
        reply = await client.get(url, params={"offset": offset})
        if reply.status_code != 200:
            raise RuntimeError(f"GET {url}: {reply.status_code}")
        body += reply.content
        offset = reply.headers["stream-next-offset"]
        if reply.headers.get("stream-up-to-date") == "true":
            return bytes(body)
    raise RuntimeError("the read did not reach the tail")


async def measure_appends(
    client: httpx.AsyncClient, base: str, sizes: dict[str, int]
) -> dict[str, Any]:
    url = f"{base}/v1/stream/bench-append-{uuid.uuid4().hex[:8]}"
    await _create(client, url)
    writers, per = sizes["writers"], sizes["appends"] // sizes["writers"]

    async def writer(w: int) -> None:
        for i in range(per):
            reply = await client.post(
                url, content=_record(w * per + i, 64), headers={"content-type": "text/plain"}
            )
            if reply.status_code not in (200, 204):
                raise RuntimeError(f"POST: {reply.status_code} {reply.text[:200]}")

    started = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    elapsed = time.perf_counter() - started
    stored = await _read_all(client, url)
    records = {stored[i : i + 64] for i in range(0, len(stored), 64)}
    expected = {_record(i, 64) for i in range(writers * per)}
    return {
        "appends": writers * per,
        "writers": writers,
        "append_per_s": writers * per / elapsed,
        "exact": len(stored) == 64 * writers * per and records == expected,
    }


async def measure_catch_up(
    client: httpx.AsyncClient, base: str, sizes: dict[str, int]
) -> dict[str, Any]:
    url = f"{base}/v1/stream/bench-read-{uuid.uuid4().hex[:8]}"
    await _create(client, url)
    expected = b"".join(_record(i, 1024) for i in range(sizes["stored"]))
    for i in range(sizes["stored"]):
        await client.post(url, content=_record(i, 1024), headers={"content-type": "text/plain"})
    exact = True
    started = time.perf_counter()
    for _ in range(sizes["reads"]):
        exact = exact and await _read_all(client, url) == expected
    elapsed = time.perf_counter() - started
    return {
        "stored_bytes": len(expected),
        "reads": sizes["reads"],
        "catch_up_mb_per_s": len(expected) * sizes["reads"] / elapsed / 1e6,
        "exact": exact,
    }


async def _sse_data(client: httpx.AsyncClient, url: str, offset: str) -> AsyncIterator[str]:
    """The data events of an SSE read (text streams: the payload as is)."""
    async with client.stream("GET", url, params={"offset": offset, "live": "sse"}) as reply:
        if reply.status_code != 200:
            raise RuntimeError(f"SSE {url}: {reply.status_code}")
        kind, data = "", []
        async for line in reply.aiter_lines():
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
            elif not line:
                if kind == "data" and data:
                    yield "\n".join(data)
                kind, data = "", []


async def measure_tail(
    client: httpx.AsyncClient, base: str, sizes: dict[str, int]
) -> dict[str, Any]:
    url = f"{base}/v1/stream/bench-tail-{uuid.uuid4().hex[:8]}"
    await _create(client, url)
    head = await client.head(url)
    tail = head.headers["stream-next-offset"]
    received: asyncio.Queue[tuple[int, str]] = asyncio.Queue()

    async def follow() -> None:
        async for data in _sse_data(client, url, tail):
            received.put_nowait((time.perf_counter_ns(), data))

    follower = asyncio.create_task(follow())
    latencies: list[int] = []
    got = ""
    try:
        for i in range(sizes["tail"]):
            record = _record(i, 64).decode()
            sent = time.perf_counter_ns()
            await client.post(url, content=record, headers={"content-type": "text/plain"})
            while not got.endswith(record):  # events may merge two appends; bounded below
                at, data = await asyncio.wait_for(received.get(), 10)
                got += data
            latencies.append(at - sent)
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await follower
    expected = "".join(_record(i, 64).decode() for i in range(sizes["tail"]))
    return {"tail_latency_ms": percentiles(latencies), "exact": got == expected}


async def measure(base: str, sizes: dict[str, int]) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=TIMEOUT, limits=limits, trust_env=False) as client:
        appends = await measure_appends(client, base, sizes)
        catch_up = await measure_catch_up(client, base, sizes)
        tail = await measure_tail(client, base, sizes)
    return {
        **appends,
        **catch_up,
        **tail,
        "exact": appends["exact"] and catch_up["exact"] and tail["exact"],
    }


SERVERS = ("ours_memory", "ours_redis", "rakaia", "node_reference")
LABELS = {
    "ours_memory": "ours, memory",
    "ours_redis": "ours, Redis",
    "rakaia": "rakaia-streams 0.9.0",
    "node_reference": "Node reference 0.3.7",
}


def table(results: dict[str, dict[str, Any]]) -> str:
    """The Markdown table: one column per server."""
    names = [n for n in SERVERS if n in results]

    def cell(name: str, key: str, fmt: str) -> str:
        value: Any = results[name]
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return "-" if value is None else format(value, fmt)

    rows = [
        ("appends/s, 64 B, concurrent writers to one stream", "append_per_s", ",.0f"),
        ("catch-up read, MB/s (1 KiB appends)", "catch_up_mb_per_s", ".1f"),
        ("live tail over SSE, append to event, p50 ms", "tail_latency_ms.p50", ".2f"),
        ("live tail over SSE, append to event, p99 ms", "tail_latency_ms.p99", ".2f"),
    ]
    lines = [
        "| Durable Streams | " + " | ".join(LABELS[n] for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for label, key, fmt in rows:
        lines.append(f"| {label} | " + " | ".join(cell(n, key, fmt) for n in names) + " |")
    lines.append("| exact | " + " | ".join(str(results[n].get("exact")) for n in names) + " |")
    lines.append("")
    lines.append("Medians of the rounds; every server on the same machine, in the same run.")
    return "\n".join(lines)


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = []
    for run in runs:
        value: Any = run
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, int | float):
            values.append(float(value))
    return statistics.median(values) if values else None


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the repeats of one server; ``exact`` only if every run was."""
    summary: dict[str, Any] = {
        "exact": all(r.get("exact") for r in runs),
        "repeats": len(runs),
        "append_per_s": _median(runs, "append_per_s"),
        "catch_up_mb_per_s": _median(runs, "catch_up_mb_per_s"),
        "tail_latency_ms": {
            p: _median(runs, f"tail_latency_ms.{p}") for p in ("p50", "p90", "p99", "max")
        },
        "runs": runs,
    }
    summary["tail_latency_ms"]["n"] = min(
        (r.get("tail_latency_ms", {}).get("n", 0) for r in runs), default=0
    )
    errors = [r["error"] for r in runs if "error" in r]
    if errors:
        summary["error"] = errors[0]
    return summary


def run(redis_url: str, *, quick: bool) -> dict[str, Any]:
    """Every server in turn, ``repeats`` rounds (interleaved, so that a noisy moment of
    a shared machine hits them alike); medians, and ``exact`` over those that ran."""
    sizes = QUICK if quick else FULL
    runs: dict[str, list[dict[str, Any]]] = {}
    notes: list[str] = []
    skipped: set[str] = set()
    for repeat in range(sizes["repeats"]):
        for name in SERVERS:
            if name in skipped:
                continue
            log(f"durable: {LABELS[name]} (round {repeat + 1} of {sizes['repeats']})")
            try:
                with server(name, redis_url) as base:
                    result = asyncio.run(asyncio.wait_for(measure(base, sizes), 600))
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                if name.startswith("ours"):
                    result = {"exact": False, "error": str(exc)}
                else:
                    skipped.add(name)
                    notes.append(f"{LABELS[name]} not run: {exc}")
                    log(f"  not run: {exc}")
                    continue
            runs.setdefault(name, []).append(result)
    results = {name: _summary(r) for name, r in runs.items()}
    return {
        "suite": "durable streams servers",
        "mode": "quick" if quick else "full",
        "sizes": sizes,
        "servers": results,
        "notes": notes,
        "exact": all(r.get("exact") for r in results.values()),
        "table_markdown": table(results),
    }


async def step(spec: dict[str, Any]) -> dict[str, Any]:
    """The ``durable`` step of ``python -m benchmarks`` (in its worker process)."""
    return await asyncio.to_thread(run, spec["url"], quick=spec.get("quick", False))


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.durable", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--redis-url")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    redis_server = None
    url = args.redis_url
    if url is not None and not _loopback(url):
        parser.error("--redis-url must be loopback")
    if url is None:
        from tests.servers import RedisServer

        redis_server = RedisServer()
        redis_server.start()
        url = redis_server.url
    try:
        report = run(url, quick=args.quick)
    finally:
        if redis_server is not None:
            redis_server.close()
    text = json.dumps(report, indent=1)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)
    log(report["table_markdown"])
    return 0 if report["exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
