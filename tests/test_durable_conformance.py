"""The official Durable Streams conformance suite against ``examples/durable_streams_app.py``.

``tests/durable/conformance.test.mjs`` calls ``runConformanceTests({ baseUrl })`` from
``@durable-streams/server-conformance-tests`` (pinned in ``tests/durable/package.json``,
installed with ``npm ci`` by ``scripts/test``); vitest runs it against the example app
under uvicorn on a free loopback port, once per store. Any failure fails the test, and so
does a run that counted no test at all. The suite's only skips are its optional
subscription APIs (``subscriptions: true``), which we do not serve.

Without node (>= 18) or the suite's packages these tests skip, unless
``RESUMABLE_STREAM_REQUIRE_BROWSER=1`` (CI sets it): then they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import redis

from .app_process import AppProcess
from .servers import RedisServer
from .test_example_apps import node_version

SUITE_DIR = Path(__file__).resolve().parent / "durable"
REQUIRE = os.environ.get("RESUMABLE_STREAM_REQUIRE_BROWSER") == "1"
# The suite's own long-poll tests wait for our 204: a short server timeout keeps a run
# near 30 s; the suite is told so it allows for it.
LONG_POLL_SECONDS = 2
SUITE_TIMEOUT = 300  # seconds for one vitest run (about 30 s here)
SUITE_PACKAGE = "@durable-streams/server-conformance-tests"

pytestmark = pytest.mark.timeout(SUITE_TIMEOUT + 60)


def suite_missing() -> str | None:
    if node_version() < 18:
        return "needs node >= 18"
    if not (SUITE_DIR / "node_modules" / SUITE_PACKAGE / "package.json").is_file():
        return "the conformance suite is not installed: (cd tests/durable && npm ci)"
    return None


@pytest.fixture(scope="module", autouse=True)
def _suite_installed() -> None:
    missing = suite_missing()
    if missing is not None:
        if REQUIRE:
            pytest.fail(f"RESUMABLE_STREAM_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)


def run_suite(base_url: str, report: Path) -> dict[str, int]:
    """Run the suite against ``base_url``; its counts from vitest's JSON report."""
    npx = shutil.which("npx")
    assert npx is not None, "npx not found next to node"
    env = {
        **os.environ,
        "DURABLE_STREAMS_URL": base_url,
        "DURABLE_STREAMS_LONG_POLL_MS": str(LONG_POLL_SECONDS * 1000),
    }
    done = subprocess.run(
        [npx, "vitest", "run", "--reporter=json", f"--outputFile={report}"],
        cwd=SUITE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUITE_TIMEOUT,
    )
    if not report.is_file():
        pytest.fail(f"vitest wrote no report (exit {done.returncode}):\n{done.stderr[-4000:]}")
    results = json.loads(report.read_text())
    failures = [
        f"{test['fullName']}: {' '.join(test.get('failureMessages', []))[:300]}"
        for suite in results["testResults"]
        for test in suite["assertionResults"]
        if test["status"] == "failed"
    ]
    counts = {
        "total": results["numTotalTests"],
        "passed": results["numPassedTests"],
        "failed": results["numFailedTests"],
        "skipped": results["numPendingTests"] + results.get("numTodoTests", 0),
    }
    assert not failures, f"{counts}\n" + "\n".join(failures)
    return counts


@pytest.fixture
def app_log() -> Iterator[IO[bytes]]:
    with tempfile.TemporaryFile() as log:
        yield log


def _serve(env: dict[str, str], log: IO[bytes]) -> AppProcess:
    app = AppProcess(
        "examples.durable_streams_app:app",
        log,
        env={"DURABLE_STREAMS_LONG_POLL_TIMEOUT": str(LONG_POLL_SECONDS), **env},
    )
    app.start()
    return app


def _check(app: AppProcess, tmp_path: Path) -> dict[str, int]:
    try:
        counts = run_suite(f"{app.url}", tmp_path / "report.json")
    finally:
        app.stop()
    print(f"conformance: {counts}")
    assert counts["total"] >= 338, counts  # the suite as pinned has 338
    assert counts["passed"] > 0, counts
    assert counts["failed"] == 0, counts
    return counts


def test_conformance_memory(app_log: IO[bytes], tmp_path: Path) -> None:
    """The whole suite on the memory store: every test passes (only optional ones skip)."""
    counts = _check(_serve({}, app_log), tmp_path)
    assert counts["passed"] + counts["skipped"] == counts["total"]


def test_conformance_redis(
    redis_server: RedisServer,
    app_log: IO[bytes],
    tmp_path: Path,
) -> None:
    """The whole suite on Redis (a private redis-server), every key under its own prefix."""
    prefix = f"ds-conformance-{os.getpid()}-{id(tmp_path)}"
    env = {"REDIS_URL": redis_server.url, "DURABLE_STREAMS_PREFIX": prefix}
    counts = _check(_serve(env, app_log), tmp_path)
    assert counts["passed"] + counts["skipped"] == counts["total"]
    # Every key the suite left behind expires on its own.
    client = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        assert keys, "the suite stored nothing under the prefix"
        assert [k for k in keys if client.pttl(k) == -1] == []
    finally:
        client.close()
