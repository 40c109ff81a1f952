"""The Durable Streams benchmark step runs, through ``python -m benchmarks``, and every
server that ran read back exactly what was appended. Nothing about speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .servers import RedisServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
@pytest.mark.xdist_group("benchmarks")  # one worker: these runs share the cores
def test_quick_durable_step(redis_server: RedisServer, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable, "-m", "benchmarks", "--quick", "--only", "durable", "--no-node",
            "--no-plots", "--redis-url", redis_server.url, "--out-dir", str(tmp_path),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    [written] = tmp_path.glob("*-quick.json")
    report = json.loads(written.read_text())
    assert report["exact"] == {"durable": True}
    [step] = report["steps"]
    servers = step["result"]["servers"]
    assert {"ours_memory", "ours_redis"} <= set(servers), step["result"]
    for name, result in servers.items():
        assert result["exact"] is True, name
        assert result["append_per_s"] > 0
        assert result["catch_up_mb_per_s"] > 0
        assert result["tail_latency_ms"]["n"] == step["result"]["sizes"]["tail"]
    assert "| Durable Streams |" in proc.stdout
