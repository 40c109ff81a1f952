"""The cluster benchmark runs and every reader gets exactly the right bytes. Nothing
about speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .cluster_servers import PrivateCluster
from .servers import RedisServer

ROOT = Path(__file__).resolve().parent.parent

PER_DEPLOYMENT = {
    "chunks_per_s",
    "commands_per_chunk",
    "commands_per_script",
    "max_share_over_mean",
    "publish_calls",
    "spublish_calls",
    "bytes_ok",
    "runs",
}


@pytest.mark.timeout(300)
@pytest.mark.xdist_group("benchmarks")  # one worker: these runs share the cores
def test_quick_cluster_benchmark_gets_exact_bytes(
    redis_server: RedisServer, redis_cluster: PrivateCluster, tmp_path: Path
) -> None:
    out = tmp_path / "cluster.json"
    proc = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.cluster", "--quick",
            "--redis-url", redis_server.url,
            "--cluster-url", f"redis://127.0.0.1:{redis_cluster.ports[0]}/0",
            "--out", str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == report
    assert report["mode"] == "quick"
    assert report["workload"]["name"] == "W1"
    assert {"single", "cluster", "ratio", "balanced", "bytes_ok"} <= set(report)
    for name in ("single", "cluster"):
        assert set(report[name]) >= PER_DEPLOYMENT, name
        for run in report[name]["runs"]:
            assert run["exact"] is True, name
            assert run["stored_exact"] is True, name
    assert report["bytes_ok"] is True
    # Facts, not speed: no classic PUBLISH on the cluster, and a script runs the
    # same number of commands there as on one server (nothing broadcast).
    assert report["cluster"]["publish_calls"] == 0
    assert report["cluster"]["spublish_calls"] > 0
    assert len(report["cluster"]["runs"][0]["commands_per_master"]) == 3
