"""Two commits of the library side by side in one run: the same steps, interleaved.

    python -m benchmarks.ab BASE [--head COMMIT] [--only w2 --only w5] [--repeats 3] [--node]

W4's resumable variants (middleware, explicit) run on both sides, plain once per turn;
it also prints each side's ratio to plain of the same turns.

A shared machine makes absolute figures noise; what holds is the ratio of two
variants measured in turns. This checks ``BASE`` (any commit) out into a temporary
worktree and runs every Python step of the chosen workloads (full sizes) once with
that library and once with the working tree's (or ``--head``'s), alternating, ``--repeats`` times;
``--node`` adds the npm original's steps to each turn. Both sides run this tree's
benchmark code: only ``resumable_stream`` differs. It prints one row per measure
with both medians and their ratio (head / base).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from . import _runner
from ._common import log
from ._plan import FULL, Step, plan

ROOT = Path(__file__).resolve().parent.parent

# (workload, path in the result, label); the path's parts are nested keys.
MEASURES: dict[str, list[tuple[str, str]]] = {
    "w1": [("chunks_per_s", "chunks/s"), ("cpu_us_per_chunk", "CPU us/chunk")],
    "w2": [("lag_ms.p50", "lag p50 ms"), ("lag_ms.p99", "lag p99 ms"),
           ("cpu_us_per_chunk", "CPU us/chunk")],
    "w3": [("ttfb_ms.p50", "first chunk p50 ms"), ("catch_up_ms.p50", "all stored p50 ms"),
           ("burst_ttfb_ms.p99", "burst first chunk p99 ms"),
           ("burst_catch_up_ms.p50", "burst all stored p50 ms")],
    "w4": [("chunks_per_s", "events/s"), ("latency_ms.p50", "latency p50 ms"),
           ("latency_ms.p99", "latency p99 ms"), ("cpu_us_per_chunk", "server CPU us/event")],
    "w5": [("cpu_us_per_chunk", "CPU us/chunk"), ("follower_lag_ms.p50", "follower lag p50 ms"),
           ("follower_lag_ms.p99", "follower lag p99 ms"), ("latency_ms.p99", "latency p99 ms")],
}


_OURS = ("ours", "ours_context", "middleware", "explicit")  # run with both libraries


def _get(result: dict[str, Any], path: str) -> float | None:
    value: Any = result
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return float(value) if isinstance(value, (int, float)) else None


def _tree(base: str) -> Path:
    """A worktree of ``base`` whose ``benchmarks`` is this tree's (a symlink)."""
    where = Path(tempfile.mkdtemp(prefix="rs-ab-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(where), base], cwd=ROOT,
                   check=True, capture_output=True)
    subprocess.run(["rm", "-rf", str(where / "benchmarks")], check=True)
    (where / "benchmarks").symlink_to(ROOT / "benchmarks")
    return where


def _key(step: Step) -> str:
    spec = {k: v for k, v in step.spec.items() if k not in ("budget", "url")}
    return json.dumps(spec, sort_keys=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab")
    parser.add_argument("base", help="the commit to compare with")
    parser.add_argument("--head", help="the commit to measure (default: the working tree)")
    parser.add_argument("--only", action="append", choices=sorted(MEASURES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--node", action="store_true", help="also run the npm original")
    parser.add_argument("--streams", type=int, action="append", help="W1 sizes (default all)")
    parser.add_argument("--json", type=Path, help="write every result here")
    args = parser.parse_args()

    from tests.servers import RedisServer

    only = tuple(args.only or MEASURES)
    steps = [s for s in plan(FULL, node=args.node, only=only) if s.repeat == 0]
    steps = [s for s in steps if s.runner != "python" or s.spec.get("impl") in ("ours", "plain",
             "plain_task", "npm") or s.workload != "w1"]
    steps = [s for s in steps if s.spec.get("workload") != "w3_http"]
    if args.streams:
        steps = [s for s in steps if s.workload != "w1" or s.spec["streams"] in args.streams]
    if args.node and _runner.prepare_node(log) is not None:
        log("npm original not available")
    base_tree = _tree(args.base)
    head_tree = _tree(args.head) if args.head else ROOT
    server = RedisServer()
    server.start()
    results: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    try:
        for repeat in range(args.repeats):
            for step in steps:
                ours = step.spec.get("impl") in _OURS
                sides = (("base", base_tree), ("head", head_tree)) if ours else (("", ROOT),)
                if ours and repeat % 2:
                    sides = sides[::-1]
                for side, tree in sides:
                    _runner.ROOT = tree  # the worker imports the library from its cwd
                    result = _runner.run_step(step, server.url)
                    if not result.get("exact"):
                        log(f"NOT EXACT {side} {step.label}: {result.get('error')}")
                    results[(_key(step), side)].append(result)
                    log(f"[{repeat}] {side or '-':4} {step.label}")
    finally:
        _runner.ROOT = ROOT
        server.close()
        for tree in {base_tree, head_tree} - {ROOT}:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT,
                           check=False, capture_output=True)
    rows = []
    for step in steps:
        key = _key(step)
        for path, label in MEASURES.get(step.workload, []):
            def med(side: str, key: str = key, path: str = path) -> float | None:
                values = [v for r in results.get((key, side), []) if (v := _get(r, path))
                          is not None]
                return statistics.median(values) if values else None
            if step.spec.get("impl") in _OURS:
                base, head = med("base"), med("head")
                ratio = f"{head / base:.2f}x" if base and head is not None else "-"
                rows.append(f"| {step.label} | {label} | {base} | {head} | {ratio} |")
            else:
                rows.append(f"| {step.label} | {label} | {med('')} | | |")
    print("| step | measure | base | head | head/base |\n|---|---|---|---|---|")
    print("\n".join(rows))
    w4 = _w4_against_plain(steps, results)
    if w4:
        print("\n| W4 clients | variant | base/plain | head/plain | added p99 ms base | head |")
        print("|---|---|---|---|---|---|")
        print("\n".join(w4))
    if args.json:
        args.json.write_text(json.dumps(
            {f"{k}|{s}": v for (k, s), v in results.items()}, indent=1))
    return 0


def _w4_against_plain(
    steps: list[Step], results: dict[tuple[str, str], list[dict[str, Any]]]
) -> list[str]:
    """W4 rows: each side's events/s over plain's (medians of the same turns), and its
    latency p99 minus plain's."""
    def med(step: Step, side: str, path: str) -> float | None:
        values = [v for r in results.get((_key(step), side), []) if (v := _get(r, path))
                  is not None]
        return statistics.median(values) if values else None

    rows = []
    w4 = [s for s in steps if s.workload == "w4"]
    for plain in (s for s in w4 if s.spec.get("variant") == "plain"):
        clients = plain.spec["clients"]
        p_rate, p_p99 = med(plain, "", "chunks_per_s"), med(plain, "", "latency_ms.p99")
        for step in w4:
            if step.spec.get("clients") != clients or step.spec.get("variant") == "plain":
                continue
            cells = []
            for side in ("base", "head"):
                rate = med(step, side, "chunks_per_s")
                cells.append(f"{rate / p_rate:.2f}x" if rate and p_rate else "-")
            for side in ("base", "head"):
                p99 = med(step, side, "latency_ms.p99")
                cells.append(f"{p99 - p_p99:+.2f}" if p99 is not None and p_p99 is not None
                             else "-")
            rows.append(f"| {clients} | {step.spec['variant']} | " + " | ".join(cells) + " |")
    return rows


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
