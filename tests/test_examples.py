"""The examples run to the end and check their own results."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "demo.py"


def demo_answer() -> str:
    """The demo's full answer, read from the script itself (examples/ is no package)."""
    spec = importlib.util.spec_from_file_location("examples_demo", DEMO)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.ANSWER)


def test_demo_resumes_after_the_reader_drops() -> None:
    proc = subprocess.run(
        [sys.executable, str(DEMO), "--delay", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "=== 2. resumed reader" in out
    assert demo_answer() in out  # the replay prints the whole answer
    assert "OK: dropped reader" in out
    assert "FAIL" not in out
