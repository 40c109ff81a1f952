"""The benchmark suite: ``python -m benchmarks`` (see benchmarks/README.md).

Runs W1 (fan-in), W2 (followers), W3 (resume), W4 (over HTTP), W5 (slow producer)
and the memory workloads against a private ``redis-server`` on a free loopback port
(or ``--redis-url``, loopback only), each variant side by side in the same run: this
library, the npm original (if Node is installed), plain streaming and raw redis-py.
Writes ``benchmarks/results/<date>-<git sha>.json`` and a PNG per workload, prints
the Markdown table; the exit status is 1 if any step did not deliver exactly the
bytes it should (or failed), 0 otherwise. ``--quick`` runs small sizes in under a
minute and is what CI runs: it checks bytes, never speed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import _plots, _report
from ._common import log
from ._plan import FULL, QUICK, TITLES, WORKLOADS, Step, plan
from ._runner import NODE_DIR, prepare_node, run_step

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


def is_loopback(url: str) -> bool:
    parsed = urlsplit(url)
    if parsed.scheme == "unix":
        return True
    if parsed.scheme not in ("redis", "rediss"):
        return False
    host = parsed.hostname or ""
    return host == "localhost" or host == "::1" or host.startswith("127.")


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # not installed, or installed without metadata
        return "-"


def machine(redis_version: str, node_note: str | None) -> dict[str, Any]:
    cpu = "-"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "-"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        memory = f"{kb / 2**20:.1f} GiB"
    node = "-"
    if node_note is None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            node = subprocess.run(["node", "--version"], capture_output=True, text=True,
                                  timeout=10).stdout.strip()
    npm_package = "-"
    with contextlib.suppress(OSError, ValueError):
        lock = json.loads((NODE_DIR / "package-lock.json").read_text())
        npm_package = lock["packages"]["node_modules/resumable-stream"]["version"]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": memory,
        "os": platform.platform(),
        "python": platform.python_version(),
        "node": node,
        "redis_server": redis_version,
        "redis_py": _version("redis"),
        "uvicorn": _version("uvicorn"),
        "uvloop": _version("uvloop"),
        "npm_resumable_stream": npm_package,
    }


class Progress:
    """A rich progress bar per workload, or plain lines without rich (or a TTY)."""

    def __init__(self, steps: list[Step]) -> None:
        self.counts = {w: sum(1 for s in steps if s.workload == w) for w in WORKLOADS}
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        self.done = 0
        self.total = len(steps)

    @contextlib.contextmanager
    def running(self) -> Iterator[Progress]:
        try:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.progress import (
                Progress as RichProgress,
            )
        except ImportError:
            yield self
            return
        if not sys.stderr.isatty():
            yield self
            return
        with RichProgress(
            TextColumn("{task.fields[name]:<7}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            transient=False,
        ) as progress:
            self._progress = progress
            for workload, count in self.counts.items():
                if count:
                    self._tasks[workload] = progress.add_task("", total=count, name=workload)
            yield self
        self._progress = None

    def start(self, step: Step) -> None:
        if self._progress is not None:
            self._progress.update(self._tasks[step.workload], description=step.label)
        else:
            log(f"[{self.done + 1}/{self.total}] {step.workload}: {step.label}")

    def finish(self, step: Step, result: dict[str, Any]) -> None:
        self.done += 1
        if self._progress is not None:
            self._progress.advance(self._tasks[step.workload])
        if not result.get("exact"):
            log(f"  NOT EXACT: {step.workload} {step.label}: "
                f"{result.get('error') or result.get('stderr') or 'wrong bytes'}")


# What the HTTP steps (W3 through HTTP, W4) import: uvicorn with uvloop and httptools.
HTTP_MODULES = ("uvicorn", "uvloop", "httptools", "starlette")


def missing_http_modules() -> list[str]:
    """The HTTP steps' modules that are not installed (the ``bench`` extra has them)."""
    import importlib.util

    return [name for name in HTTP_MODULES if importlib.util.find_spec(name) is None]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, under a minute; checks bytes only (CI)")
    parser.add_argument("--redis-url", help="a Redis on this machine (loopback or unix "
                        "socket) instead of a private redis-server")
    parser.add_argument("--no-node", action="store_true", help="skip the npm original")
    parser.add_argument("--only", action="append", choices=WORKLOADS,
                        help="run only this workload (repeatable)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS,
                        help="where the JSON and PNGs go (default benchmarks/results)")
    parser.add_argument("--no-plots", action="store_true", help="write no PNG")
    args = parser.parse_args(argv)

    sizes = QUICK if args.quick else FULL
    only = tuple(args.only or WORKLOADS)
    missing = missing_http_modules()
    if missing and ("w3" in only or "w4" in only):
        parser.error(
            f"the HTTP steps (W3 through HTTP, W4) need the bench extra: "
            f"pip install -e '.[bench]' (missing: {', '.join(missing)}); "
            f"or leave them out: --only w1 --only w2 --only w5 --only memory"
        )
    notes: list[str] = []
    import importlib.util

    if importlib.util.find_spec("hiredis") is None:
        # Without it redis-py parses every reply in Python: W3 reads 5x slower.
        notes.append("hiredis is not installed: redis-py parses replies in Python "
                     "(pip install -e '.[bench]')")
        log(f"note: {notes[-1]}")
    node_note = "--no-node given: the npm original was not run" if args.no_node else None
    if node_note is None:
        node_note = prepare_node(log)
    if node_note is not None:
        notes.append(node_note)
        log(f"note: {node_note}")
    steps = plan(sizes, node=node_note is None, only=only)

    server = None
    url = args.redis_url
    if url is not None and not is_loopback(url):
        parser.error(f"--redis-url must point to this machine (loopback), not {url!r}")
    if url is None:
        try:
            from tests.servers import RedisServer
        except ImportError:
            parser.error("run from the repository root (tests.servers), or pass --redis-url")
        server = RedisServer()
        server.start()
        url = server.url
    else:
        notes.append("a shared Redis (--redis-url): its commandstats include other clients'")
    started = time.monotonic()
    sha = _git("rev-parse", "--short", "HEAD") or "nogit"  # what was measured, at the start
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--", "resumable_stream"))
    records: list[dict[str, Any]] = []
    try:
        import redis

        redis_version = str(redis.Redis.from_url(url).info("server")["redis_version"])
        progress = Progress(steps)
        with progress.running():
            for step in steps:
                progress.start(step)
                result = run_step(step, url)
                records.append({"workload": step.workload, "runner": step.runner,
                                "spec": step.spec, "repeat": step.repeat, "result": result})
                progress.finish(step, result)
    finally:
        if server is not None:
            server.close()
    wall = time.monotonic() - started

    summary = _report.summarize(records)
    today = dt.date.today().isoformat()
    stem = f"{today}-{sha}" + ("-quick" if args.quick else "")
    exact = {w: all(r["result"].get("exact") for r in records if r["workload"] == w)
             for w in WORKLOADS if any(r["workload"] == w for r in records)}
    report: dict[str, Any] = {
        "suite": "resumable-stream benchmarks",
        "command": "python -m benchmarks" + (" --quick" if args.quick else ""),
        "mode": "quick" if args.quick else "full",
        "date": today,
        "git_sha": sha,
        "library_modified_since_commit": dirty,
        "wall_s": wall,
        "machine": machine(redis_version, node_note),
        "notes": notes,
        "exact": exact,
        "all_exact": all(exact.values()),
        "headline": _report.headline(summary),
        "summary": summary,
        "table_markdown": _report.table(summary),
        "titles": {w: TITLES[w] for w in exact},
        "steps": records,
    }
    if not args.no_plots:
        subtitle = (f"resumable-stream @ {sha}, {report['machine']['cores']} cores, "
                    f"Redis {redis_version}, {report['mode']} run")
        report["plots"] = _plots.draw(summary, args.out_dir, stem, subtitle)
        if not report["plots"]:
            notes.append("matplotlib is not installed: no plots (pip install -e '.[bench]')")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"{stem}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(report["table_markdown"])
    log(f"\n{len(records)} steps in {wall:.0f} s; every workload exact: {report['all_exact']}")
    log(f"wrote {out}")
    for path in report.get("plots", {}).values():
        log(f"wrote {path}")
    return 0 if report["all_exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
