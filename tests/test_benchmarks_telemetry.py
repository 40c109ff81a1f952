"""The telemetry benchmark runs, every reader gets exactly its bytes, and the variants
are what they claim (hooks off, hooks on with the no-op provider). Nothing about speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .servers import RedisServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
@pytest.mark.xdist_group("benchmarks")  # one worker: these runs share the cores
def test_quick_telemetry_benchmark(redis_server: RedisServer, tmp_path: Path) -> None:
    out = tmp_path / "telemetry.json"
    proc = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.telemetry", "--quick",
            "--redis-url", redis_server.url, "--out", str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == report
    assert (report["mode"], report["exact"], report["callgrind"]) == ("quick", True, None)
    assert set(report["cpu"]) == {"w1", "w1_memory", "w5"}
    for name, entry in report["cpu"].items():
        assert set(entry["cpu_us_per_chunk"]) == {"off", "noop", "proxy"}, name
        assert set(entry["ratio"]) == {"noop/off", "proxy/off"}, name
        assert entry["ratio"]["noop/off"]["n"] == report["rounds"] == 1
        # The no-op providers turn the hooks off at the first one; the proxies do not.
        assert entry["enabled_after"] == {"off": [False], "noop": [False], "proxy": [True]}
    # The "noop" variant really runs the hooks: a write's on every workload, a
    # follower's lag sample on W5 (the "off" runs were checked to have ENABLED False).
    hooks = report["hooks"]
    for name in ("w1", "w1_memory", "w5"):
        assert hooks[name]["hooks_per_chunk"]["write_landed"] > 0, name
        assert hooks[name]["hooks_per_chunk"]["claim_span"] > 0, name
        assert set(hooks[name]["per_hook_ns"]) == {"write_landed", "follower_lag"}
    assert hooks["w5"]["hooks_per_chunk"]["follower_lag"] > 0
    assert "follower_lag" not in hooks["w1"]["hooks_per_chunk"]  # no follower in W1
