"""Runs one `Step` in fresh processes and returns its result dict."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from ._common import lags, percentiles
from ._plan import Step

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = Path(__file__).resolve().parent / "node"


def _command(runner: str, spec: dict[str, Any]) -> list[str]:
    text = json.dumps(spec)
    if runner == "node":
        return ["node", str(NODE_DIR / "bench.mjs"), text]
    return [sys.executable, "-m", "benchmarks._worker", text]


def _with_file(spec: dict[str, Any]) -> dict[str, Any]:
    fd, path = tempfile.mkstemp(prefix="rs-bench-", suffix=".json")
    os.close(fd)
    return {**spec, "result_file": path}


def _result(spec: dict[str, Any], stderr: str, code: int | None) -> dict[str, Any]:
    path = Path(spec["result_file"])
    try:
        text = path.read_text()
    finally:
        path.unlink(missing_ok=True)
    if text:
        result: dict[str, Any] = json.loads(text)
        return result
    return {"exact": False, "error": f"no result (exit {code}): {stderr.strip()[-1500:]}"}


def run_one(runner: str, spec: dict[str, Any]) -> dict[str, Any]:
    spec = _with_file(spec)
    try:
        proc = subprocess.run(
            _command(runner, spec),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=spec["budget"] + 30,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        Path(spec["result_file"]).unlink(missing_ok=True)
        return {"exact": False, "error": f"timed out after {exc.timeout:.0f} s"}
    result = _result(spec, proc.stderr, proc.returncode)
    if not result.get("exact", False) and "error" not in result:
        result["stderr"] = proc.stderr.strip()[-1500:]
    return result


class _Proc:
    def __init__(self, runner: str, spec: dict[str, Any]) -> None:
        spec = self.spec = _with_file(spec)
        self.proc = subprocess.Popen(
            _command(runner, spec),
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def ready(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        return line.strip()

    def finish(self, timeout: float) -> dict[str, Any]:
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return _result(self.spec, err, self.proc.returncode)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        Path(self.spec["result_file"]).unlink(missing_ok=True)


def run_w2_cross(runner: str, spec: dict[str, Any]) -> dict[str, Any]:
    """W2 across processes: a producer process waits for ``go``, a followers process
    joins first; lag = followers' receive times minus the producer's yield times."""
    role_runner = "node" if runner == "w2_cross_node" else "python"
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    shared = {**spec, "prefix": prefix, "stream_id": f"{prefix}-w2x"}
    producer = _Proc(role_runner, {**shared, "workload": "w2_producer"})
    followers: _Proc | None = None
    try:
        if producer.ready() != "READY":
            return {"exact": False, "error": "producer: " + str(producer.finish(10))}
        followers = _Proc(role_runner, {**shared, "workload": "w2_followers"})
        if followers.ready() != "READY":
            return {"exact": False, "error": "followers: " + str(followers.finish(10))}
        assert producer.proc.stdin is not None
        producer.proc.stdin.write("go\n")
        producer.proc.stdin.flush()
        made = producer.finish(spec["budget"])
        followed = followers.finish(spec["budget"])
    finally:
        producer.kill()
        if followers is not None:
            followers.kill()
    exact = bool(made.get("exact")) and bool(followed.get("exact"))
    stamps = made.get("stamps", [])
    received = followed.get("received", [])
    lag = [x for times in received for x in lags(stamps, enumerate(times))] if exact else []
    result = {
        "exact": exact,
        "lag_ms": percentiles(lag),
        "chunks": spec["chunks"] * (spec["followers"] + 1),
        "bytes": spec["chunks"] * (spec["followers"] + 1) * spec["chunk_bytes"],
        "elapsed_s": max(made.get("elapsed_s", 0.0), followed.get("elapsed_s", 0.0)),
        "cpu_s": made.get("cpu_s", 0.0) + followed.get("cpu_s", 0.0),
        "peak_rss_mb": max(made.get("peak_rss_mb", 0.0), followed.get("peak_rss_mb", 0.0)),
    }
    if result["elapsed_s"]:
        result["chunks_per_s"] = result["chunks"] / result["elapsed_s"]
        result["bytes_per_s"] = result["bytes"] / result["elapsed_s"]
    result["cpu_us_per_chunk"] = result["cpu_s"] / result["chunks"] * 1e6
    for who, part in (("producer", made), ("followers", followed)):
        if "error" in part:
            result.setdefault("error", f"{who}: {part['error']}")
    return result


def run_step(step: Step, url: str) -> dict[str, Any]:
    spec = {**step.spec, "url": url}
    if step.runner in ("w2_cross_python", "w2_cross_node"):
        return run_w2_cross(step.runner, spec)
    return run_one(step.runner, spec)


def prepare_node(log: Any) -> str | None:
    """Install the npm original with ``npm ci`` if needed; None if ready, else why not."""
    if shutil.which("node") is None:
        return "node is not installed: the npm original was not run"
    if not (NODE_DIR / "node_modules" / "resumable-stream").is_dir():
        if shutil.which("npm") is None:
            return "npm is not installed: the npm original was not run"
        log("installing the npm original (npm ci in benchmarks/node)")
        try:
            proc = subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund"],
                cwd=NODE_DIR,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return "npm ci timed out: the npm original was not run"
        if proc.returncode != 0:
            return f"npm ci failed: the npm original was not run ({proc.stderr.strip()[-300:]})"
    return None
