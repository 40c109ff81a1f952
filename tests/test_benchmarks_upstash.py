"""The Upstash benchmark runs through the stand-in and every stream is stored exactly.
Nothing about speed, beyond what batching must do."""

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
def test_quick_upstash_benchmark(redis_server: RedisServer, tmp_path: Path) -> None:
    out = tmp_path / "upstash.json"
    proc = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.upstash", "--quick",
            "--redis-url", redis_server.url, "--out", str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == report
    assert report["exact"] is True
    assert report["mode"] == "quick"
    per_chunk = report["requests_per_chunk"]
    # A fast source is batched into few writes; a slow one pays about one per chunk.
    assert per_chunk["fast"]["median"] < 0.1
    assert per_chunk["fast"]["median"] < per_chunk["slow"]["median"] / 5
    first = report["resume_first_chunk_ms"]
    for name in ("rest", "tcp"):
        for kind in ("cold", "warm"):
            assert 0 < first[name][kind]["p50"] <= first[name][kind]["max"]
    assert set(first["ratio_p50_rest_over_tcp"]) == {"cold", "warm"}
