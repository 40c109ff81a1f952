"""The benchmark suite runs end to end and every workload delivers exactly the right bytes.

Nothing about speed: `python -m benchmarks --quick` on a shared CI machine is only
asked to run every workload (the npm original too when Node is installed) and to
deliver, in every step, exactly the bytes the sources yielded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = {"w1", "w2", "w3", "w4", "w5", "memory"}


# Under a minute alone; beside the rest of the suite on two shared cores it can take
# twice that. What it checks is the bytes, not the time.
@pytest.mark.timeout(300)
@pytest.mark.xdist_group("benchmarks")  # one worker: these runs share the cores
def test_quick_suite_runs_every_workload_with_exact_bytes(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    [written] = tmp_path.glob("*-quick.json")
    report = json.loads(written.read_text())
    assert report["mode"] == "quick"
    assert set(report["exact"]) == WORKLOADS
    for workload, exact in report["exact"].items():
        assert exact is True, workload
    for record in report["steps"]:
        assert record["result"].get("exact") is True, record
        assert "error" not in record["result"], record
    assert report["all_exact"] is True
    ran = {(r["workload"], r["spec"].get("impl")) for r in report["steps"]}
    assert {("w1", "ours"), ("w1", "plain"), ("w1", "raw_batched")} <= ran
    assert {("w4", "plain"), ("w4", "middleware"), ("w4", "explicit")} <= ran
    if any("npm original was not run" in note for note in report["notes"]):
        return
    assert {("w1", "npm"), ("w2", "npm"), ("w3", "npm")} <= ran
    assert "| measure |" in proc.stdout
