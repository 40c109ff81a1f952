"""Where the time goes: profiles of the W1 to W5 paths.

    python -m benchmarks.profile w1 [--impl ours|ours_memory] [--streams 100] [--chunks 1000]
    python -m benchmarks.profile w2|w3 [--impl ours]      # W2 in one process, W3 in process
    python -m benchmarks.profile w2 --mode context        # followers in the producer's context
    python -m benchmarks.profile w5 --chunks 600          # 100 streams, a chunk per 20 ms
    python -m benchmarks.profile w4 [--variant middleware|explicit|plain] [--clients 100]

``w1``, ``w2``, ``w3`` and ``w5`` sample one step's worker process with py-spy and
scale each frame's share of the samples to the measured CPU per chunk (the whole
process is sampled, set-up included). ``w1 --cprofile`` runs one W1 step under
cProfile in this process instead: exact call counts, and times that cProfile's own
overhead inflates alike (compare rows, not absolutes). ``w4`` runs the HTTP server
under py-spy (``pip install py-spy``) while the load client runs and writes a flame
graph (SVG) and the hottest frames of the library. All use a
private redis-server unless ``--redis-url`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._common import cpu_seconds, install_loop, log

ROOT = Path(__file__).resolve().parent.parent


def _top(stats: pstats.Stats, chunks: int, limit: int) -> list[dict[str, Any]]:
    rows = []
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (file, line, name), (_cc, calls, tottime, cumtime, _callers) in raw.items():
        rows.append({
            "function": f"{Path(file).name}:{line}({name})",
            "file": file,
            "calls": calls,
            "calls_per_chunk": calls / chunks,
            "own_us_per_chunk": tottime / chunks * 1e6,
            "cum_us_per_chunk": cumtime / chunks * 1e6,
        })
    rows.sort(key=lambda r: r["own_us_per_chunk"], reverse=True)
    return rows[:limit]


def profile_w1(args: argparse.Namespace, url: str) -> dict[str, Any]:
    from . import _inproc

    spec = {"workload": "w1", "impl": args.impl, "url": url, "streams": args.streams,
            "chunks": args.chunks, "chunk_bytes": 32}
    install_loop(args.loop)
    profiler = cProfile.Profile()
    profiler.enable()
    result = asyncio.run(_inproc.w1(spec))
    profiler.disable()
    chunks = args.streams * args.chunks
    stats = pstats.Stats(profiler)
    rows = _top(stats, chunks, args.limit)
    by_area: Counter[str] = Counter()
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (file, _line, _name), (_cc, _calls, tottime, _cum, _callers) in raw.items():
        by_area[_area(file)] += tottime / chunks * 1e6
    return {"result": {k: result.get(k) for k in ("exact", "chunks_per_s", "cpu_us_per_chunk")},
            "own_us_per_chunk_by_area": dict(by_area.most_common()),
            "top": rows}


def _pyspy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy (or '.[bench]')")
    return found


def _frame_key(frame: str) -> str:
    """``name (package/file.py:123)`` -> ``package/file.py:name``, lines merged."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif path.startswith("/"):
        path = Path(path).name
    return f"{path}:{name}"


def analyse(collapsed: Path, us_per_chunk: float, limit: int) -> dict[str, Any]:
    """Own and inclusive shares of the samples, as microseconds per chunk of CPU."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = [_frame_key(f) for f in stack.split(";") if " (" in f]
        if not frames:
            continue
        own[frames[-1]] += n
        areas[_area(frames[-1])] += n
        for key in set(frames):
            inclusive[key] += n
    scale = us_per_chunk / total if total else 0.0
    library = [(k, v) for k, v in inclusive.most_common() if k.startswith("resumable_stream/")]
    return {
        "samples": total,
        "cpu_us_per_chunk": us_per_chunk,
        "own_us_per_chunk_by_area": {k: round(v * scale, 2) for k, v in areas.most_common()},
        "top_own_us_per_chunk": [(k, round(v * scale, 2)) for k, v in own.most_common(limit)],
        "library_inclusive_us_per_chunk": [(k, round(v * scale, 2)) for k, v in library[:limit]],
    }


def _spec(args: argparse.Namespace) -> dict[str, Any]:
    """The worker's spec of one in-process step, at the full run's sizes."""
    if args.workload == "w1":
        return {"workload": "w1", "impl": args.impl, "streams": args.streams,
                "chunks": args.chunks, "chunk_bytes": 32}
    if args.workload == "w2":
        return {"workload": "w2", "impl": args.impl, "chunks": 10_000, "chunk_bytes": 32,
                "followers": 10, "mode": args.mode}
    if args.workload == "w3":
        return {"workload": "w3", "impl": args.impl, "stored": 10_000, "chunk_bytes": 32,
                "singles": 20, "burst": 200}
    # W5 runs as long as asked (--chunks per stream, 20 ms apart), so that set-up
    # weighs little in the whole-process samples.
    return {"workload": "w5", "impl": args.impl, "streams": 100, "chunks": args.chunks,
            "chunk_bytes": 32, "delay": 0.02}


def sample_w1(args: argparse.Namespace, url: str) -> dict[str, Any]:
    """One in-process step (W1, W2 in one process, W3, W5) in a worker process under
    py-spy (sampling: little distortion). The whole process is sampled, set-up
    included; the shares are scaled to the measured section's CPU per chunk."""
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    collapsed = Path(tempfile.mkstemp(suffix=".txt")[1])
    result_file = Path(tempfile.mkstemp(suffix=".json")[1])
    spec = {**_spec(args), "url": url, "result_file": str(result_file), "loop": args.loop}
    subprocess.run(
        [_pyspy(), "record", "--rate", "1000", "--format", "raw", "--output", str(collapsed),
         "--", sys.executable, "-m", "benchmarks._worker", json.dumps(spec)],
        cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    result = json.loads(result_file.read_text())
    result_file.unlink()
    report = analyse(collapsed, result["cpu_us_per_chunk"], args.limit)
    collapsed.unlink()
    report["result"] = {k: result.get(k) for k in ("exact", "chunks_per_s", "cpu_us_per_chunk")}
    return report


def _area(key: str) -> str:
    """What a frame belongs to (from a cProfile file name or a py-spy frame key)."""
    if "/resumable_stream/" in key:
        key = "resumable_stream/" + key.split("/resumable_stream/", 1)[1]
    if key.startswith("resumable_stream/"):
        return key.split(":", 1)[0]
    for prefix, area in (("redis/", "redis-py"), ("benchmarks/", "benchmark harness"),
                         ("asyncio/", "asyncio"), ("uvloop", "asyncio"),
                         ("starlette/", "starlette"), ("uvicorn/", "uvicorn"),
                         ("anyio/", "anyio"), ("msgpack", "msgpack")):
        if key.startswith(prefix) or f"/{prefix}" in key:
            return area
    if key.startswith("~") or key.startswith("<built-in>"):
        return "builtins"
    return "other"


async def _drive_w4(spec: dict[str, Any], port: int) -> None:
    from ._httpbench import fetch

    for _ in range(spec["requests"]):
        await asyncio.gather(*(
            fetch(port, "GET", f"/stream?n={spec['events']}&c={c}")
            for c in range(spec["clients"])
        ))


def profile_w4(args: argparse.Namespace, url: str) -> dict[str, Any]:
    pyspy = _pyspy()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    svg = out_dir / f"profile-w4-{args.variant}-{args.clients}.svg"
    collapsed = Path(tempfile.mkstemp(suffix=".txt")[1])
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks._httpapp",
         json.dumps({"variant": args.variant, "url": url})],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    assert server.stdout is not None
    port = int(server.stdout.readline().split()[1])
    spec = {"clients": args.clients, "events": args.events, "requests": args.requests}
    install_loop("uvloop")
    asyncio.run(_drive_w4({**spec, "requests": 1, "events": 20}, port))  # warm up
    recorders = []
    for fmt, path in (("flamegraph", svg), ("raw", collapsed)):
        recorders.append(subprocess.Popen(
            [pyspy, "record", "--pid", str(server.pid), "--rate", "500", "--format", fmt,
             "--output", str(path), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
    time.sleep(1.0)  # py-spy attaches
    cpu_before = cpu_seconds(server.pid)
    started = time.perf_counter()
    asyncio.run(_drive_w4(spec, port))
    elapsed = time.perf_counter() - started
    server_cpu = cpu_seconds(server.pid) - cpu_before
    events = args.clients * args.events * args.requests
    for recorder in recorders:
        recorder.send_signal(signal.SIGINT)
    for recorder in recorders:
        recorder.wait(30)
    server.send_signal(signal.SIGTERM)
    server.wait(15)
    report = analyse(collapsed, server_cpu / events * 1e6, args.limit)
    collapsed.unlink()
    report["flame_graph"] = str(svg)
    report["events_per_s"] = events / elapsed
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("workload", choices=("w1", "w2", "w3", "w4", "w5"))
    parser.add_argument("--impl", default="ours",
                        choices=("ours", "ours_memory", "ours_context", "plain", "plain_task",
                                 "raw_shared"))
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--mode", default="same", choices=("same", "context"),
                        help="w2: followers on a context of their own, or the producer's")
    parser.add_argument("--chunks", type=int, default=1000)
    parser.add_argument("--variant", default="middleware",
                        choices=("plain", "middleware", "explicit"))
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=1)
    parser.add_argument("--loop", default="uvloop", choices=("uvloop", "asyncio"))
    parser.add_argument("--limit", type=int, default=30)
    parser.add_argument("--out-dir", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--redis-url")
    parser.add_argument("--cprofile", action="store_true",
                        help="w1 under cProfile (exact call counts, inflated times)")
    args = parser.parse_args(argv)
    server = None
    url = args.redis_url
    if url is None:
        from tests.servers import RedisServer

        server = RedisServer()
        server.start()
        url = server.url
    try:
        if args.workload == "w4":
            report = profile_w4(args, url)
        elif args.cprofile and args.workload == "w1":
            report = profile_w1(args, url)
        else:
            report = sample_w1(args, url)
    finally:
        if server is not None:
            server.close()
    print(json.dumps(report, indent=1))
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
