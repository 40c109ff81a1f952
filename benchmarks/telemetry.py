"""What the OpenTelemetry hooks cost W1 and W5, off against the API's no-op provider.

Run from the repository root::

    python -m benchmarks.telemetry                # 10 interleaved rounds, then callgrind
    python -m benchmarks.telemetry --no-callgrind # the CPU rounds only
    python -m benchmarks.telemetry --quick        # small sizes, 1 round, no callgrind (CI)
    python -m benchmarks.telemetry --redis-url redis://127.0.0.1:6379/0 --out otel.json

Without ``--redis-url`` it starts a private redis-server on a free loopback port
(``tests/servers.py``). Every run is a fresh process (``--child``) in one of three
variants:

* ``off``: ``RESUMABLE_STREAM_OTEL=0`` in its environment, so every hook is skipped
  at its call site (``_telemetry.ENABLED`` is checked to be False);
* ``noop``: ``opentelemetry-api`` with ``NoOpMeterProvider`` and ``NoOpTracerProvider``
  set globally (the library notices them at its first hook and skips the rest);
* ``proxy``: the API with no provider set at all (its proxies), what an application
  gets that installs the API but configures no SDK: every hook runs and records into
  nothing.

Workloads, shaped as the suite's (``benchmarks/_inproc.py``), the source awaiting
``asyncio.sleep(delay)`` between chunks:

* ``w1``: 100 streams x 1,000 chunks x 32 B, producer and original reader in one
  process, on Redis; ``w1_memory``: the same on the in-memory backend (a chunk costs
  least there, so a fixed cost per write weighs most);
* ``w5``: 100 streams, a chunk every 20 ms, 200 chunks each, one follower per stream
  (on a second client): every write and every follower batch runs a hook.

**CPU rounds.** A round runs every workload once in every variant, the variants'
order rotating from round to round, so that a noisy moment of the shared machine
hits each alike. Each run reports its process CPU (user + system) over the measured
section per chunk delivered; ``ratio`` is noop / off (and proxy / off) within a
round, summarised over rounds by median, min, max and the interquartile range.

**Hook counts.** One more run per workload (``count``: the proxies, every hook
wrapped by a counter) gives the hooks a chunk runs; **per-hook time** is ``timeit``
of the two hot hooks (``write_landed``, ``follower_lag``) with the proxies. Their
product over the ``off`` CPU per chunk is the expected share, independent of load.

**Instruction counts** (callgrind, on by default when ``valgrind`` is on the
``PATH``): the measured section runs inside ``functools.reduce``, and callgrind
collects only while that C function is on the stack (``--toggle-collect``), so
imports and set-up are left out. Instruction counts do not move with the other
core's load. First, per call site (``if ENABLED: hook()``, 10,000 times, minus the
empty loop) in each variant: exact and repeatable. Then whole workloads, which still
move with timing (how many chunks a write carries, how pub/sub messages bunch),
which the repeats show. Sizes are smaller (valgrind runs Python ~50x slower): W1 in
memory 10 streams x 400 chunks, W5 10 streams x 40 chunks 200 ms apart (so that the
slowed process still writes about one chunk per write). ``expected_share``: the
hooks per chunk counted above x instructions per call site, over the instructions
of a chunk with the hooks off.

One JSON document goes to stdout (and to ``--out``), progress to stderr. The exit
status is 1 if any reader did not get exactly what its source yielded.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import timeit
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from ._common import Meter, expected, install_loop, log, source, throughput
from ._inproc import Side, exact, read_all, warm_up
from .roundtrips import is_loopback

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("off", "noop", "proxy")
HOOKS = ("write_landed", "follower_lag", "stream_started", "stream_ended", "backend_error")

FULL: dict[str, dict[str, Any]] = {
    "w1": {"backend": "redis", "streams": 100, "chunks": 1000, "delay": 0.0},
    "w1_memory": {"backend": "memory", "streams": 100, "chunks": 1000, "delay": 0.0},
    "w5": {"backend": "redis", "streams": 100, "chunks": 200, "delay": 0.02},
}
QUICK: dict[str, dict[str, Any]] = {
    "w1": {"backend": "redis", "streams": 10, "chunks": 100, "delay": 0.0},
    "w1_memory": {"backend": "memory", "streams": 10, "chunks": 100, "delay": 0.0},
    "w5": {"backend": "redis", "streams": 5, "chunks": 10, "delay": 0.02},
}
CALLGRIND: dict[str, dict[str, Any]] = {
    "w1_memory": {"backend": "memory", "streams": 10, "chunks": 400, "delay": 0.0},
    "w5": {"backend": "redis", "streams": 10, "chunks": 40, "delay": 0.2},
}


# -- the child: one workload in one variant, in this process --------------------------------


def _set_variant(variant: str, counts: Counter[str]) -> bool:
    """Set the providers for ``variant``; True if the hooks record (``ENABLED``)."""
    from resumable_stream import _telemetry

    if variant == "noop":
        from opentelemetry import metrics, trace

        metrics.set_meter_provider(metrics.NoOpMeterProvider())
        trace.set_tracer_provider(trace.NoOpTracerProvider())
    if variant == "count":
        for name in HOOKS:
            setattr(_telemetry, name, _counted(getattr(_telemetry, name), name, counts))
        _telemetry._span = _counted_span(_telemetry._span, counts)
    return _telemetry.ENABLED


def _counted(hook: Callable[..., None], name: str, counts: Counter[str]) -> Callable[..., None]:
    def counted(*args: Any) -> None:
        counts[name] += 1
        hook(*args)

    return counted


def _counted_span(span: Any, counts: Counter[str]) -> Any:
    def counted(name: str, *args: Any, **kwargs: Any) -> Any:
        counts[name.rsplit(".", 1)[-1] + "_span"] += 1
        return span(name, *args, **kwargs)

    return counted


class _Run:
    """One workload: set up, measured section, tear down, each its own loop run."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.prefix = f"bench-otel-{uuid.uuid4().hex[:8]}"
        streams, chunks = spec["streams"], spec["chunks"]
        self.want = [expected(s, chunks, 32) for s in range(streams)]
        self.got: list[list[tuple[int, str | bytes, int]]] = [[] for _ in range(streams)]
        self.fgot: list[list[tuple[int, str | bytes, int]]] = [[] for _ in range(streams)]
        self.meter = Meter()
        self.sides: list[Side] = []

    async def setup(self) -> None:
        impl = "ours_memory" if self.spec["backend"] == "memory" else "ours"
        producer = Side(impl, self.spec["url"], self.prefix)
        self.sides.append(producer)
        await warm_up(producer, self.spec["streams"], self.prefix)
        if self.spec["workload"] == "w5":
            follower = Side(impl, self.spec["url"], self.prefix)
            self.sides.append(follower)
            await warm_up(follower, self.spec["streams"], self.prefix + "f")

    async def measured(self) -> None:
        chunks, delay = self.spec["chunks"], self.spec["delay"]
        producer = self.sides[0]
        follower = self.sides[1] if len(self.sides) > 1 else None

        async def one(s: int) -> None:
            sid = f"{self.prefix}-{s}"
            gate = asyncio.Event()
            origin = await producer.ctx.create_new_resumable_stream(
                sid, partial(source, s, chunks, 32, None, delay=delay, gate=gate)
            )
            if follower is None:
                gate.set()
                await read_all(origin, self.got[s])
                return
            reader = await follower.ctx.resume_existing_stream(sid, after=-1)
            gate.set()
            await asyncio.gather(read_all(origin, self.got[s]), read_all(reader, self.fgot[s]))

        with self.meter:
            await asyncio.gather(*(one(s) for s in range(self.spec["streams"])))

    async def teardown(self) -> None:
        for side in self.sides:
            await side.aclose()

    @property
    def exact(self) -> bool:
        ok = all(exact(g, w) for g, w in zip(self.got, self.want, strict=True))
        if len(self.sides) > 1:
            ok = ok and all(exact(g, w) for g, w in zip(self.fgot, self.want, strict=True))
        return ok


def _per_hook_ns() -> dict[str, float]:
    """Nanoseconds per call of the two hot hooks, with this process's providers."""
    from resumable_stream import _telemetry

    def best(call: Callable[[], None]) -> float:
        number = 200_000
        return min(timeit.repeat(call, number=number, repeat=5)) / number * 1e9

    empty = best(lambda: None)
    return {
        "write_landed": best(lambda: _telemetry.write_landed(2, 0.001)) - empty,
        "follower_lag": best(lambda: _telemetry.follower_lag(0.0001)) - empty,
    }


def micro(spec: dict[str, Any], enabled: bool) -> dict[str, Any]:
    """``n`` call sites of one hook, as the library's are (``if ENABLED: hook()``),
    inside ``functools.reduce`` for callgrind; ``hook`` none: the empty loop."""
    from resumable_stream import _telemetry

    hook, n = spec["hook"], spec["n"]
    if _telemetry.ENABLED:
        _telemetry.write_landed(1, 0.001)  # the instruments are made (and judged) here

    t = _telemetry

    def none(_: Any, __: Any) -> None:
        for _ in range(n):
            pass

    def write(_: Any, __: Any) -> None:
        for _ in range(n):
            if t.ENABLED:
                t.write_landed(2, 0.001)

    def lag(_: Any, __: Any) -> None:
        for _ in range(n):
            if t.ENABLED:
                t.follower_lag(0.0001)

    loop = {"none": none, "write_landed": write, "follower_lag": lag}[hook]
    functools.reduce(loop, [0], None)
    return {"exact": True, "enabled": enabled}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    install_loop("uvloop")
    counts: Counter[str] = Counter()
    enabled = _set_variant(spec["variant"], counts)
    if spec["workload"] == "micro":
        return micro(spec, enabled)
    run = _Run(spec)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(run.setup())
        counts.clear()  # the warm-up's hooks are not the workload's
        # The measured section inside a C function of its own, for --toggle-collect.
        functools.reduce(lambda _, __: loop.run_until_complete(run.measured()), [0], None)
        loop.run_until_complete(run.teardown())
    finally:
        loop.close()
    total = spec["streams"] * spec["chunks"]
    result: dict[str, Any] = {
        **throughput(total, total * 32, run.meter),
        "exact": run.exact,
        "enabled": enabled,
    }
    if spec["variant"] == "count":
        result["hooks"] = dict(counts)
        result["hooks_per_chunk"] = {k: v / total for k, v in sorted(counts.items())}
        result["per_hook_ns"] = _per_hook_ns()
    from resumable_stream import _telemetry

    result["enabled_after"] = _telemetry.ENABLED  # noop: turned off at the first hook
    return result


# -- the parent -----------------------------------------------------------------------------


def _env(variant: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.pop("RESUMABLE_STREAM_OTEL", None)
    if variant == "off":
        env["RESUMABLE_STREAM_OTEL"] = "0"
    return env


def spawn(spec: dict[str, Any], prefix: Sequence[str] = (), timeout: float = 600) -> dict[str, Any]:
    fd, path = tempfile.mkstemp(prefix="rs-otel-", suffix=".json")
    os.close(fd)
    try:
        proc = subprocess.run(
            [*prefix, sys.executable, "-m", "benchmarks.telemetry", "--child", json.dumps(spec),
             "--child-out", path],
            cwd=ROOT, env=_env(spec["variant"]), capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip
        text = Path(path).read_text()
    finally:
        Path(path).unlink(missing_ok=True)
    if proc.returncode != 0 or not text:
        return {"exact": False, "error": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}
    result: dict[str, Any] = json.loads(text)
    # ENABLED at the start: the no-op providers turn it off at the first hook.
    want = spec["variant"] != "off"
    if result["enabled"] is not want:
        result["exact"] = False
        result["error"] = f"variant {spec['variant']}: ENABLED is {result['enabled']}"
    return result


def spread(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    if len(ordered) >= 4:
        q1, _, q3 = statistics.quantiles(ordered, n=4)
    else:
        q1, q3 = ordered[0], ordered[-1]
    return {
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "p25": q1,
        "p75": q3,
        "n": len(ordered),
    }


def cpu_rounds(
    workloads: dict[str, dict[str, Any]], url: str, rounds: int
) -> tuple[dict[str, Any], bool]:
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        w: {v: [] for v in VARIANTS} for w in workloads
    }
    ok = True
    for r in range(rounds):
        order = VARIANTS[r % 3 :] + VARIANTS[: r % 3]
        for name, shape in workloads.items():
            for variant in order:
                spec = {**shape, "workload": name.split("_")[0], "variant": variant, "url": url}
                result = spawn(spec)
                ok = ok and bool(result.get("exact"))
                runs[name][variant].append(result)
                log(
                    f"round {r + 1}/{rounds} {name} {variant}: "
                    f"{result.get('cpu_us_per_chunk', 0):.2f} us/chunk"
                    + ("" if result.get("exact") else f" NOT EXACT {result.get('error', '')}")
                )
    report: dict[str, Any] = {}
    for name, by_variant in runs.items():
        cpu = {v: [x.get("cpu_us_per_chunk", 0.0) for x in rs] for v, rs in by_variant.items()}
        entry: dict[str, Any] = {
            "shape": workloads[name],
            "cpu_us_per_chunk": {v: spread(xs) for v, xs in cpu.items()},
            "chunks_per_s": {
                v: statistics.median(x.get("chunks_per_s", 0.0) for x in rs)
                for v, rs in by_variant.items()
            },
            # Whether the hooks still ran at the end of each run (noop: off after the first).
            "enabled_after": {
                v: sorted({bool(x.get("enabled_after")) for x in rs})
                for v, rs in by_variant.items()
            },
        }
        if all(cpu["off"]):
            entry["ratio"] = {
                f"{v}/off": spread([a / b for a, b in zip(cpu[v], cpu["off"], strict=True)])
                for v in ("noop", "proxy")
            }
        report[name] = entry
    return report, ok


def hook_counts(
    workloads: dict[str, dict[str, Any]], url: str, cpu: dict[str, Any]
) -> dict[str, Any]:
    """Hooks per chunk (counted) x ns per hook (the proxies), over the off variant's CPU
    per chunk."""
    out: dict[str, Any] = {}
    for name, shape in workloads.items():
        result = spawn({**shape, "workload": name.split("_")[0], "variant": "count", "url": url})
        if not result.get("exact"):
            out[name] = {"error": result.get("error", "not exact")}
            continue
        per_chunk = result["hooks_per_chunk"]
        ns = result["per_hook_ns"]
        hot = (per_chunk.get("write_landed", 0.0) * ns["write_landed"]
               + per_chunk.get("follower_lag", 0.0) * ns["follower_lag"])  # fmt: skip
        off_us = cpu.get(name, {}).get("cpu_us_per_chunk", {}).get("off", {}).get("median")
        out[name] = {
            "hooks_per_chunk": per_chunk,
            "per_hook_ns": ns,
            "hot_hooks_ns_per_chunk": hot,
            "expected_share": hot / (off_us * 1000) if off_us else None,
        }
    return out


def _instructions(path: Path) -> int:
    """The ``summary:`` (or ``totals:``) line of a callgrind output file."""
    total = 0
    for line in path.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            total = max(total, int(line.split()[1]))
    return total


def _grind(spec: dict[str, Any], target: Path) -> int | None:
    """Instructions run inside ``functools.reduce`` by one child, or None if it failed."""
    prefix = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={target}",
        "--toggle-collect=functools_reduce", "--dump-instr=no", "--trace-children=no",
    ]  # fmt: skip
    result = spawn(spec, prefix, timeout=1800)
    if not result.get("exact"):
        log(f"callgrind {spec}: {result.get('error', 'not exact')}")
        return None
    return _instructions(target)


def callgrind(url: str, repeats: int, hooks: dict[str, Any]) -> dict[str, Any]:
    """Instructions per hook call site and per chunk, by variant (see the docstring)."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rs-otel-cg-") as tmp:
        per_call: dict[str, dict[str, float]] = {}
        n = 10_000
        for variant in VARIANTS:
            base = _grind({"workload": "micro", "variant": variant, "hook": "none", "n": n},
                          Path(tmp) / f"micro-{variant}-none.out")  # fmt: skip
            per_call[variant] = {}
            for hook in ("write_landed", "follower_lag"):
                spec = {"workload": "micro", "variant": variant, "hook": hook, "n": n}
                got = _grind(spec, Path(tmp) / f"micro-{variant}-{hook}.out")
                if base is None or got is None:
                    return {"error": f"micro {variant} {hook} failed"}
                per_call[variant][hook] = (got - base) / n
            log(f"callgrind call sites, {variant}: {per_call[variant]}")
        out["instructions_per_call_site"] = per_call
        for name, shape in CALLGRIND.items():
            counts: dict[str, list[float]] = {v: [] for v in VARIANTS}
            for r in range(repeats):
                for variant in VARIANTS[r % 3 :] + VARIANTS[: r % 3]:
                    spec = {**shape, "workload": name.split("_")[0], "variant": variant,
                            "url": url}  # fmt: skip
                    got = _grind(spec, Path(tmp) / f"{name}-{variant}-{r}.out")
                    if got is None:
                        return {**out, "error": f"{name} {variant} failed"}
                    counts[variant].append(got / (shape["streams"] * shape["chunks"]))
                    log(f"callgrind {name} {variant}: {counts[variant][-1]:,.0f} "
                        "instructions/chunk")  # fmt: skip
            off = statistics.median(counts["off"])
            per_chunk = hooks.get(name, {}).get("hooks_per_chunk", {})
            out[name] = {
                "shape": shape,
                "instructions_per_chunk": {v: spread(xs) for v, xs in counts.items()},
                "ratio": {
                    f"{v}/off": spread(
                        [a / b for a, b in zip(counts[v], counts["off"], strict=True)]
                    )
                    for v in ("noop", "proxy")
                },
                # The suite's hooks per chunk (native timing) x instructions per call site,
                # over the instructions of a chunk with the hooks off.
                "expected_share": {
                    v: sum(per_chunk.get(h, 0.0) * per_call[v][h] for h in per_call[v]) / off
                    for v in ("noop", "proxy")
                },
            }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 round (CI)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 10)")
    parser.add_argument("--redis-url", help="a loopback Redis (default: start one)")
    parser.add_argument("--no-callgrind", action="store_true", help="skip valgrind")
    parser.add_argument("--callgrind-repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        Path(args.child_out).write_text(json.dumps(child(json.loads(args.child))))
        return 0
    if args.redis_url is not None and not is_loopback(args.redis_url):
        parser.error("--redis-url must be a loopback address")
    workloads = QUICK if args.quick else FULL
    rounds = args.rounds or (1 if args.quick else 10)
    use_callgrind = not (args.quick or args.no_callgrind) and shutil.which("valgrind") is not None
    server = None
    url = args.redis_url
    if url is None:
        try:
            from tests.servers import RedisServer
        except ImportError:
            parser.error("run from the repository root (tests.servers), or pass --redis-url")
        server = RedisServer()
        server.start()
        url = server.url
    try:
        cpu, ok = cpu_rounds(workloads, url, rounds)
        hooks = hook_counts(workloads, url, cpu)
        grind = callgrind(url, args.callgrind_repeats, hooks) if use_callgrind else None
    finally:
        if server is not None:
            server.close()
    ok = ok and all("error" not in h for h in hooks.values())
    if grind is not None:
        ok = ok and "error" not in grind
    import resumable_stream

    report: dict[str, Any] = {
        "benchmark": "telemetry",
        "version": resumable_stream.__version__,
        "mode": "quick" if args.quick else "full",
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "rounds": rounds,
        "cpu": cpu,
        "hooks": hooks,
        "callgrind": grind,
        "exact": ok,
    }
    text = json.dumps(report, indent=1)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
