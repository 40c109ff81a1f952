"""The browser client module, run by node, against each example app: cut, resume, exact."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from resumable_stream.browser import client_source

from .test_example_apps import chat_body, node_version, serve

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(node_version() < 18, reason="needs node >= 18 (fetch, web streams)"),
]

APPS = ["examples.chat_app:app", "examples.starlette_app:app", "examples.litestar_app:app"]

HARNESS = r"""
import { ResumableStreamClient } from "./resumable-stream.mjs";
const [base, path, body, cutAfter] = [process.argv[2], process.argv[3], process.argv[4],
                                      Number(process.argv[5])];
const messages = [];
let dropped = false;
const client = new ResumableStreamClient({
  fetch: (url, init) => fetch(base + url, init),
  retryDelay: 20,
  logger: { info() {}, warn() {}, debug() {}, error() {} },
  onMessage(data, event) {
    messages.push([data, event ? event.event || "message" : null]);
    if (cutAfter > 0 && messages.length === cutAfter && !dropped) dropped = client.dropConnection();
  },
});
const result = await client.start(path, JSON.parse(body));
console.log(JSON.stringify({ result, messages, dropped }));
"""


@pytest.fixture(scope="module", params=APPS)
def app_url(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from serve(request.param)


def run_client(tmp_path: Path, base: str, path: str, cut_after: int) -> dict[str, object]:
    (tmp_path / "resumable-stream.mjs").write_bytes(client_source())
    harness = tmp_path / "harness.mjs"
    harness.write_text(HARNESS)
    body = json.dumps(chat_body("tell me more"))
    run = subprocess.run(
        ["node", str(harness), base, path, body, str(cut_after)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert run.returncode == 0, run.stderr
    result: dict[str, object] = json.loads(run.stdout)
    return result


def test_js_client_resumes_exactly_once(app_url: str, tmp_path: Path) -> None:
    reference = run_client(tmp_path, app_url, "/api/chat/agent/ref", 0)
    cut = run_client(tmp_path, app_url, "/api/chat/agent/cut", 3)
    assert cut["dropped"] is True
    assert cut["result"]["status"] == "complete"  # type: ignore[index]
    ref_messages = reference["messages"]
    got = cut["messages"]
    assert isinstance(ref_messages, list)
    assert isinstance(got, list)
    if ref_messages and ref_messages[0][1] is None:  # text bodies: the same text
        assert "".join(m[0] for m in got) == "".join(m[0] for m in ref_messages)
    else:
        assert got == ref_messages
