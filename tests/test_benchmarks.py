"""The benchmark runs and every reader gets exactly the right bytes. Nothing about speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PER_WORKLOAD = {
    "config",
    "round_trips_per_chunk",
    "commands_per_chunk",
    "writes_per_chunk",
    "plain_chunks_per_s",
    "library_chunks_per_s",
    "throughput_ratio",
    "bytes_ok",
    "runs",
}


def test_quick_benchmark_runs_and_every_reader_gets_exact_bytes(tmp_path: Path) -> None:
    out = tmp_path / "roundtrips.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.roundtrips", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == report
    assert {"benchmark", "version", "mode", "redis", "workloads", "bytes_ok"} <= set(report)
    assert report["mode"] == "quick"
    assert set(report["workloads"]) == {"fast", "slow"}
    for name, workload in report["workloads"].items():
        assert set(workload) >= PER_WORKLOAD, name
        assert workload["bytes_ok"] is True, name
        for run in workload["runs"]["library"]:
            assert run["origin_bytes_ok"] is True, (name, run["mismatches"])
            assert run["follower_bytes_ok"] is True, (name, run["mismatches"])
        for run in workload["runs"]["plain"]:
            assert run["bytes_ok"] is True, name
    assert report["bytes_ok"] is True
