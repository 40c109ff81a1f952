"""Summaries (medians over repeats), ratios and the Markdown table of a run."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

Record = dict[str, Any]  # {"workload", "runner", "spec", "repeat", "result"}


def get(result: dict[str, Any], path: str) -> float | None:
    node: Any = result
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, (int, float)) else None


def median(results: list[dict[str, Any]], path: str) -> float | None:
    values = [v for r in results if (v := get(r, path)) is not None]
    return float(statistics.median(values)) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def diff(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def _group(records: list[Record], workload: str, *keys: str) -> dict[tuple[Any, ...], list[Any]]:
    groups: dict[tuple[Any, ...], list[Any]] = defaultdict(list)
    for rec in records:
        if rec["workload"] == workload:
            groups[tuple(rec["spec"].get(k) for k in keys)].append(rec["result"])
    return groups


METRICS = (
    "chunks_per_s",
    "bytes_per_s",
    "cpu_us_per_chunk",
    "peak_rss_mb",
    "latency_ms.p50",
    "latency_ms.p90",
    "latency_ms.p99",
    "latency_ms.max",
    "redis.round_trips_per_chunk",
    "redis.commands_per_chunk",
    "redis.redis_cpu_us_per_chunk",
)


def _medians(results: list[dict[str, Any]], paths: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": len(results), "exact": all(r.get("exact") for r in results)}
    for path in paths:
        value = median(results, path)
        if value is not None:
            out[path] = value
    return out


def summarize(records: list[Record]) -> dict[str, Any]:
    s: dict[str, Any] = {}
    # W1
    w1: dict[str, Any] = {}
    for (impl, streams), results in _group(records, "w1", "impl", "streams").items():
        w1.setdefault(str(streams), {})[impl] = _medians(results, METRICS)
    for by_impl in w1.values():
        cps = {impl: m.get("chunks_per_s") for impl, m in by_impl.items()}
        by_impl["ratios"] = {
            "ours/plain": ratio(cps.get("ours"), cps.get("plain")),
            "ours/npm": ratio(cps.get("ours"), cps.get("npm")),
            "ours/raw_batched": ratio(cps.get("ours"), cps.get("raw_batched")),
            "ours_memory/plain": ratio(cps.get("ours_memory"), cps.get("plain")),
            "ours/plain_task": ratio(cps.get("ours"), cps.get("plain_task")),
            "plain_task/plain": ratio(cps.get("plain_task"), cps.get("plain")),
            "npm/node_plain": ratio(cps.get("npm"), cps.get("node_plain")),
        }
    s["w1"] = w1
    # W2
    w2: dict[str, Any] = {}
    paths = ("lag_ms.p50", "lag_ms.p90", "lag_ms.p99", "lag_ms.max", "chunks_per_s",
             "cpu_us_per_chunk", "redis.round_trips_per_chunk", "redis.commands_per_chunk")
    for (impl, mode), results in _group(records, "w2", "impl", "mode").items():
        w2.setdefault(mode, {})[impl] = _medians(results, paths)
    for by_impl in w2.values():
        ours, npm = by_impl.get("ours", {}), by_impl.get("npm", {})
        floor = by_impl.get("raw_shared", {})
        by_impl["ratios"] = {
            "lag_p50 ours/npm": ratio(ours.get("lag_ms.p50"), npm.get("lag_ms.p50")),
            "lag_p99 ours/npm": ratio(ours.get("lag_ms.p99"), npm.get("lag_ms.p99")),
            "lag_p50 raw_shared/npm": ratio(floor.get("lag_ms.p50"), npm.get("lag_ms.p50")),
            "lag_p99 raw_shared/npm": ratio(floor.get("lag_ms.p99"), npm.get("lag_ms.p99")),
        }
    s["w2"] = w2
    # W3
    w3: dict[str, Any] = {}
    paths = ("ttfb_ms.p50", "ttfb_ms.p99", "catch_up_ms.p50", "catch_up_ms.p99",
             "burst_ttfb_ms.p50", "burst_ttfb_ms.p99", "burst_catch_up_ms.p50",
             "burst_catch_up_ms.p99", "round_trips_per_resume", "commands_per_resume")
    for (impl,), results in _group(records, "w3", "impl").items():
        w3[impl] = _medians(results, paths)
    ours, npm = w3.get("ours", {}), w3.get("npm", {})
    w3["ratios"] = {
        "ttfb_p50 ours/npm": ratio(ours.get("ttfb_ms.p50"), npm.get("ttfb_ms.p50")),
        "burst_ttfb_p99 ours/npm": ratio(ours.get("burst_ttfb_ms.p99"),
                                         npm.get("burst_ttfb_ms.p99")),
        "catch_up_p50 ours/npm": ratio(ours.get("catch_up_ms.p50"), npm.get("catch_up_ms.p50")),
    }
    s["w3"] = w3
    # W4
    w4: dict[str, Any] = {}
    for (variant, clients), results in _group(records, "w4", "variant", "clients").items():
        w4.setdefault(str(clients), {})[variant] = _medians(results, METRICS)
    for by_variant in w4.values():
        plain = by_variant.get("plain", {})
        by_variant["ratios"] = {}
        for variant in ("middleware", "explicit", "plain_stored"):
            m = by_variant.get(variant, {})
            by_variant["ratios"][f"{variant}/plain"] = ratio(
                m.get("chunks_per_s"), plain.get("chunks_per_s")
            )
            for p in ("p50", "p99"):
                by_variant["ratios"][f"{variant} added latency {p} ms"] = diff(
                    m.get(f"latency_ms.{p}"), plain.get(f"latency_ms.{p}")
                )
    s["w4"] = w4
    # W5
    w5: dict[str, Any] = {}
    paths = (*METRICS, "follower_lag_ms.p50", "follower_lag_ms.p99",
             "redis.producer_round_trips_per_chunk")
    for (impl,), results in _group(records, "w5", "impl").items():
        w5[impl] = _medians(results, paths)
    ours, plain = w5.get("ours", {}), w5.get("plain", {})
    w5["ratios"] = {
        "added latency p50 ms": diff(ours.get("latency_ms.p50"), plain.get("latency_ms.p50")),
        "added latency p99 ms": diff(ours.get("latency_ms.p99"), plain.get("latency_ms.p99")),
        "cpu per chunk ours/plain": ratio(ours.get("cpu_us_per_chunk"),
                                          plain.get("cpu_us_per_chunk")),
        "cpu per chunk ours_context/plain": ratio(
            w5.get("ours_context", {}).get("cpu_us_per_chunk"), plain.get("cpu_us_per_chunk")
        ),
        "cpu per chunk plain_task/plain": ratio(
            w5.get("plain_task", {}).get("cpu_us_per_chunk"), plain.get("cpu_us_per_chunk")
        ),
    }
    s["w5"] = w5
    # Durable Streams: one step, summarised by benchmarks/durable.py itself.
    durable = [r["result"] for r in records if r["workload"] == "durable"]
    if durable:
        s["durable"] = {k: v for k, v in durable[0].items() if k in ("servers", "table_markdown")}
    # Memory
    mem: dict[str, Any] = {"processes": {}, "stalled": {}, "redis": {}}
    for (impl, streams), results in _group(records, "memory", "impl", "streams").items():
        if any("kb_per_stream" in r for r in results):
            mem["processes"].setdefault(str(streams), {})[impl] = _medians(
                results, ("kb_per_stream", "kb_per_follower", "peak_rss_mb")
            )
    for rec in records:
        spec, result = rec["spec"], rec["result"]
        if spec.get("workload") == "memory_stalled":
            mem["stalled"][str(spec["chunks"])] = {
                k: result.get(k)
                for k in ("exact", "produced_mb", "rss_growth_mb", "reader_buffer_mb")
            }
        elif spec.get("workload") == "redis_memory":
            mem["redis"].setdefault(str(spec["chunk_bytes"]), {})[spec["impl"]] = {
                k: result.get(k) for k in ("exact", "redis_bytes_per_stored_kb", "stored_kb")
            }
    s["memory"] = mem
    return s


def _fmt(value: float | None, kind: str = "") -> str:
    if value is None:
        return "-"
    if kind == "x":
        return f"{value:.2f}x"
    if kind == "ms":
        return f"{value:.2f} ms" if value < 100 else f"{value:,.0f} ms"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def table(summary: dict[str, Any]) -> str:
    """The headline table: ours, the npm original, plain, raw redis-py, as ratios."""
    rows: list[tuple[str, ...]] = []
    w1 = summary.get("w1", {})
    for streams in sorted(w1, key=int):
        m = w1[streams]
        r = m["ratios"]

        def cps(impl: str, m: dict[str, Any] = m) -> float | None:
            return m.get(impl, {}).get("chunks_per_s")

        rows.append((
            f"W1 chunks/s, {streams} stream{'s' if streams != '1' else ''}",
            _fmt(cps("ours")), _fmt(cps("npm")),
            f"{_fmt(cps('plain'))} (Node {_fmt(cps('node_plain'))})",
            _fmt(cps("raw_batched")),
            _fmt(r.get("ours/npm"), "x"), _fmt(r.get("ours/plain"), "x"),
            ">= npm, >= 0.5x plain" if streams == "100" else "",
        ))
    if "100" in w1:
        m = w1["100"]
        r = m["ratios"]
        rows.append((
            "W1 chunks/s, 100 streams, plain with a producer task (nothing stored)",
            _fmt(m.get("ours", {}).get("chunks_per_s")), "",
            _fmt(m.get("plain_task", {}).get("chunks_per_s")), "", "",
            f"{_fmt(r.get('ours/plain_task'), 'x')} of it; it is "
            f"{_fmt(r.get('plain_task/plain'), 'x')} plain",
            "",
        ))
        rt = "redis.round_trips_per_chunk"
        rows.append((
            "W1 Redis round trips/chunk, 100 streams",
            _fmt(m.get("ours", {}).get(rt)), _fmt(m.get("npm", {}).get(rt)), "0",
            _fmt(m.get("raw_batched", {}).get(rt)), "", "", "<= 0.05",
        ))
        cmd = "redis.commands_per_chunk"
        rows.append((
            "W1 Redis commands/chunk, 100 streams",
            _fmt(m.get("ours", {}).get(cmd)), _fmt(m.get("npm", {}).get(cmd)), "0",
            _fmt(m.get("raw_batched", {}).get(cmd)), "", "", "",
        ))
        lat = "latency_ms.p99"
        rows.append((
            "W1 latency p99 (yield to original reader), 100 streams",
            _fmt(m.get("ours", {}).get(lat), "ms"), _fmt(m.get("npm", {}).get(lat), "ms"),
            _fmt(m.get("plain", {}).get(lat), "ms"), _fmt(m.get("raw_batched", {}).get(lat), "ms"),
            "", "", "",
        ))
        cpu = "cpu_us_per_chunk"
        rows.append((
            "W1 process CPU us/chunk, 100 streams",
            _fmt(m.get("ours", {}).get(cpu)), _fmt(m.get("npm", {}).get(cpu)),
            _fmt(m.get("plain", {}).get(cpu)), _fmt(m.get("raw_batched", {}).get(cpu)),
            "", "", "",
        ))
    for mode, label in (("context", "producer's context"), ("same", "same process"),
                        ("cross", "second process")):
        m = summary.get("w2", {}).get(mode)
        if not m:
            continue
        for p in ("p50", "p99"):
            ours = m.get("ours", {}).get(f"lag_ms.{p}")
            npm = m.get("npm", {}).get(f"lag_ms.{p}")
            rows.append((
                f"W2 follower lag {p}, {label}", _fmt(ours, "ms"), _fmt(npm, "ms"), "", "",
                _fmt(ratio(ours, npm), "x"), "", "<= npm",
            ))
        floor = m.get("raw_shared")
        if floor:
            rows.append((
                f"W2 follower lag p50 / p99, {label}, stored by redis-py behind on the same "
                "clock and followed by its pub/sub (nothing resumable)", "",
                f"{_fmt(m.get('npm', {}).get('lag_ms.p50'), 'ms')} / "
                f"{_fmt(m.get('npm', {}).get('lag_ms.p99'), 'ms')}", "",
                f"{_fmt(floor.get('lag_ms.p50'), 'ms')} / {_fmt(floor.get('lag_ms.p99'), 'ms')}",
                "", "", "",
            ))
    w3 = summary.get("w3", {})
    for path, label in (("ttfb_ms.p50", "W3 resume, time to first chunk p50"),
                        ("burst_ttfb_ms.p99", "W3 burst of resumes, time to first chunk p99"),
                        ("catch_up_ms.p50", "W3 resume, time to all stored chunks p50")):
        ours, npm = w3.get("ours", {}).get(path), w3.get("npm", {}).get(path)
        # The chunks in memory already: the floor of the time to all of them (its first
        # chunks and bursts mean nothing: nothing is read, nothing waits).
        plain = w3.get("plain", {}).get(path) if path == "catch_up_ms.p50" else None
        rows.append((label, _fmt(ours, "ms"), _fmt(npm, "ms"), _fmt(plain, "ms"), "",
                     _fmt(ratio(ours, npm), "x"), _fmt(ratio(ours, plain), "x"),
                     "<= npm" if "ttfb" in path else ""))
    raw = w3.get("raw", {})
    if raw:
        ours = w3.get("ours", {}).get("catch_up_ms.p50")
        rows.append(("W3 resume, time to all stored chunks p50, read back by redis-py in one "
                     "pipeline (nothing resumable)", "", "", "",
                     _fmt(raw.get("catch_up_ms.p50"), "ms"), "", "", ""))
    http = w3.get("ours_http", {})
    if http:
        rows.append(("W3 through HTTP, first byte p50 / burst p99",
                     f"{_fmt(http.get('ttfb_ms.p50'), 'ms')} / "
                     f"{_fmt(http.get('burst_ttfb_ms.p99'), 'ms')}", "", "", "", "", "", ""))
    for clients, m in sorted(summary.get("w4", {}).items(), key=lambda kv: int(kv[0])):
        r = m["ratios"]
        plain = m.get("plain", {})
        for variant in ("middleware", "explicit"):
            v = m.get(variant, {})
            rows.append((
                f"W4 HTTP chunks/s, {variant}, {clients} client{'s' if clients != '1' else ''}",
                _fmt(v.get("chunks_per_s")), "", _fmt(plain.get("chunks_per_s")), "", "",
                _fmt(r.get(f"{variant}/plain"), "x"), ">= 0.8x plain" if clients == "100" else "",
            ))
        floor = m.get("plain_stored", {})
        if floor:
            rows.append((
                f"W4 HTTP chunks/s, plain with every event stored by redis-py (nothing "
                f"resumable), {clients} client{'s' if clients != '1' else ''}",
                "", "", _fmt(floor.get("chunks_per_s")), "", "",
                _fmt(r.get("plain_stored/plain"), "x"), "",
            ))
        rows.append((
            f"W4 added latency p50 / p99, middleware, {clients} client(s)",
            f"{_fmt(r.get('middleware added latency p50 ms'), 'ms')} / "
            f"{_fmt(r.get('middleware added latency p99 ms'), 'ms')}",
            "", f"{_fmt(plain.get('latency_ms.p50'), 'ms')} / "
            f"{_fmt(plain.get('latency_ms.p99'), 'ms')}", "", "", "",
            "p99 < 1 ms" if clients == "100" else "",
        ))
    w5 = summary.get("w5", {})
    if w5.get("ours"):
        ours, plain, raw = w5.get("ours", {}), w5.get("plain", {}), w5.get("raw", {})
        rows.append(("W5 producer round trips/chunk", _fmt(
            ours.get("redis.producer_round_trips_per_chunk")), "", "0",
            _fmt(raw.get("redis.round_trips_per_chunk")), "", "", "<= 1"))
        rows.append(("W5 process CPU us/chunk (with 1 follower each)",
                     _fmt(ours.get("cpu_us_per_chunk")), "", _fmt(plain.get("cpu_us_per_chunk")),
                     _fmt(raw.get("cpu_us_per_chunk")), "",
                     _fmt(w5["ratios"].get("cpu per chunk ours/plain"), "x"), ""))
        rows.append(("W5 added latency p50 / p99 (original reader)",
                     f"{_fmt(w5['ratios'].get('added latency p50 ms'), 'ms')} / "
                     f"{_fmt(w5['ratios'].get('added latency p99 ms'), 'ms')}",
                     "", "", "", "", "", ""))
        rows.append(("W5 follower lag p50 / p99",
                     f"{_fmt(ours.get('follower_lag_ms.p50'), 'ms')} / "
                     f"{_fmt(ours.get('follower_lag_ms.p99'), 'ms')}", "", "", "", "", "", ""))
        floor = w5.get("plain_task", {})
        if floor:
            rows.append(("W5 process CPU us/chunk, plain with a producer task and a follower "
                         "task (nothing stored)", "", "", _fmt(floor.get("cpu_us_per_chunk")),
                         "", "", _fmt(w5["ratios"].get("cpu per chunk plain_task/plain"), "x"),
                         ""))
        sub = w5.get("raw_shared_sub", {})
        if sub:
            rows.append(("W5 follower lag p50 / p99 and CPU us/chunk, stored by redis-py behind "
                         "and followed by its pub/sub on a client of its own (nothing "
                         "resumable)", "", "", "",
                         f"{_fmt(sub.get('follower_lag_ms.p50'), 'ms')} / "
                         f"{_fmt(sub.get('follower_lag_ms.p99'), 'ms')}; "
                         f"{_fmt(sub.get('cpu_us_per_chunk'))} us", "", "", ""))
        here = w5.get("ours_context", {})
        if here:
            rows.append(("W5 process CPU us/chunk, follower in the producer's context",
                         _fmt(here.get("cpu_us_per_chunk")), "",
                         _fmt(plain.get("cpu_us_per_chunk")), "", "",
                         _fmt(w5["ratios"].get("cpu per chunk ours_context/plain"), "x"), ""))
            rows.append(("W5 follower lag p50 / p99, follower in the producer's context",
                         f"{_fmt(here.get('follower_lag_ms.p50'), 'ms')} / "
                         f"{_fmt(here.get('follower_lag_ms.p99'), 'ms')}",
                         "", "", "", "", "", ""))
    mem = summary.get("memory", {})
    for streams, m in sorted(mem.get("processes", {}).items(), key=lambda kv: int(kv[0])):
        ours, plain = m.get("ours", {}), m.get("plain", {})
        rows.append((f"Memory KB per running stream, {int(streams):,} streams",
                     _fmt(ours.get("kb_per_stream")), "", _fmt(plain.get("kb_per_stream")), "",
                     "", "", "< 20 KB"))
        rows.append((f"Memory KB per follower, {int(streams):,} streams",
                     _fmt(ours.get("kb_per_follower")), "", "", "", "", "", ""))
    for _chunks, m in sorted(mem.get("stalled", {}).items(), key=lambda kv: int(kv[0])):
        rows.append((f"Memory growth, follower not reading, {_fmt(m.get('produced_mb'))} MB made",
                     f"{_fmt(m.get('rss_growth_mb'))} MB", "", "", "", "", "", "bounded"))
    for size, m in sorted(mem.get("redis", {}).items(), key=lambda kv: int(kv[0])):
        rows.append((f"Redis bytes per KB stored, {size} B chunks",
                     _fmt(m.get("ours", {}).get("redis_bytes_per_stored_kb")),
                     "0 (keeps chunks in the producer)", "",
                     _fmt(m.get("raw", {}).get("redis_bytes_per_stored_kb")), "", "", ""))
    head = ("measure", "ours", "npm original", "plain", "raw redis-py", "ours/npm", "ours/plain",
            "target")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    if summary.get("durable", {}).get("table_markdown"):
        lines += ["", summary["durable"]["table_markdown"]]  # its own columns: one per server
    return "\n".join(lines)


def headline(summary: dict[str, Any]) -> dict[str, float | None]:
    """The few ratios the README's performance section quotes."""
    w1 = summary.get("w1", {}).get("100", {}).get("ratios", {})
    w4 = summary.get("w4", {}).get("100", {}).get("ratios", {})
    w3 = summary.get("w3", {}).get("ratios", {})
    w2 = summary.get("w2", {}).get("cross", {}).get("ratios", {})
    w5 = summary.get("w5", {}).get("ours", {})
    mem = summary.get("memory", {}).get("processes", {})
    biggest = max(mem, key=int) if mem else None
    return {
        "w1_100_streams_ours_over_plain": w1.get("ours/plain"),
        "w1_100_streams_ours_over_npm": w1.get("ours/npm"),
        "w1_100_streams_round_trips_per_chunk": summary.get("w1", {}).get("100", {})
        .get("ours", {}).get("redis.round_trips_per_chunk"),
        "w2_cross_process_lag_p99_ours_over_npm": w2.get("lag_p99 ours/npm"),
        "w3_ttfb_p50_ours_over_npm": w3.get("ttfb_p50 ours/npm"),
        "w4_100_clients_middleware_over_plain": w4.get("middleware/plain"),
        "w4_100_clients_explicit_over_plain": w4.get("explicit/plain"),
        "w5_producer_round_trips_per_chunk": w5.get("redis.producer_round_trips_per_chunk"),
        "memory_kb_per_stream": None if biggest is None
        else mem[biggest].get("ours", {}).get("kb_per_stream"),
    }
