"""The soak's short version (``python -m benchmarks.soak --quick``): 240 streams through
uvicorn in four rounds, 30% of clients cut and resumed through a cutting proxy,
followers joining and leaving. Every client gets exactly its text; RSS, asyncio tasks
and Redis connections stay flat after the warm-up round; every key has a TTL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(90)
def test_quick_soak(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=80, check=False,
    )
    report = json.loads(out.read_text()) if out.exists() else None
    assert report is not None, proc.stderr[-4000:]
    assert report["checks"] == {
        "every_client_exact": True,
        "rss_flat": True,
        "no_task_leak": True,
        "no_redis_connection_leak": True,
        "every_key_has_ttl": True,
    }, report
    assert report["streams"] == report["exact"] == 240
    assert report["lost_or_doubled"] == 0
    assert report["cuts"] > 0  # clients really were cut and resumed
    assert report["followers_left_early"] > 0
    assert proc.returncode == 0
