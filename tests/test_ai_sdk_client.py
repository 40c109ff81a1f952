"""The real Vercel AI SDK client against ``examples/ai_sdk_app.py``, as ``useChat`` drives it.

Node runs ``tests/ai_sdk/harness.mjs``: the ``ai`` package's own ``AbstractChat`` (what
``useChat``'s ``Chat`` extends) and ``DefaultChatTransport``, pinned in
``tests/ai_sdk/package.json`` and installed with ``npm ci`` (``scripts/test`` does it).
The only stand-in is the transport's ``fetch``, which records every response and can cut
a POST's body after N events as a dropped connection does in a browser. The app runs
under uvicorn in subprocesses on loopback: one process on the memory backend, and two
processes on a private Redis, where every POST goes to one and every resume and stop to
the other (no sticky routing). Starlette and Litestar serve the same routes in the smoke
tests at the end.

Without node (>= 18) or its packages these tests skip, unless
``RESUMABLE_STREAM_REQUIRE_BROWSER=1`` (CI sets it): then they fail, so a broken install
cannot hide behind a skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from .app_process import AppProcess
from .servers import RedisServer
from .test_example_apps import node_version

ROOT = Path(__file__).resolve().parent.parent
CLIENT_DIR = Path(__file__).resolve().parent / "ai_sdk"
HARNESS = CLIENT_DIR / "harness.mjs"
REQUIRE = os.environ.get("RESUMABLE_STREAM_REQUIRE_BROWSER") == "1"
DELAY = "0.03"  # seconds per word: a ~33-word answer streams for about a second
# Cuts land with this many words still to come, so the resume finds the answer still
# running: a resume after the end answers 204 by design. The resume is the SDK's new
# request to the other process; beside the rest of the suite on two shared cores it
# took longer than five words (150 ms) once, so the margin is twelve (360 ms).
WORDS_LEFT_AT_LATE_CUT = 12
HEAD = 3  # start, start-step, text-start: the events before the first word

pytestmark = pytest.mark.timeout(120)


def _client_missing() -> str | None:
    if node_version() < 18:
        return "needs node >= 18 (fetch, web streams)"
    if not (CLIENT_DIR / "node_modules" / "ai" / "package.json").is_file():
        return "the AI SDK is not installed: (cd tests/ai_sdk && npm ci)"
    return None


@pytest.fixture(scope="module", autouse=True)
def _client_installed() -> None:
    missing = _client_missing()
    if missing is not None:
        if REQUIRE:
            pytest.fail(f"RESUMABLE_STREAM_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)


def example() -> Any:
    import examples.ai_sdk_app as app  # its answer_for; importing it starts no server

    return app


# -- the app under uvicorn ------------------------------------------------------------------------


@dataclass
class Setup:
    """Where the client sends its messages, resumes, and stops."""

    send: str
    resume: str
    stop: str


def app_process(target: str, log: IO[bytes], redis_url: str | None = None) -> AppProcess:
    """The AI SDK example under uvicorn, on Redis when ``redis_url`` is given."""
    env = {"AI_SDK_DELAY": DELAY}
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    return AppProcess(target, log, env=env)


@contextlib.contextmanager
def serve(*apps: AppProcess) -> Iterator[list[AppProcess]]:
    try:
        for app in apps:
            app.start()
        yield list(apps)
    finally:
        for app in apps:
            app.stop()
    for app in apps:
        # Cut connections, resumes, stops and model errors leave no traceback behind.
        assert "Traceback" not in app.output(), app.output()


@pytest.fixture(scope="module", params=["one process", "two processes on Redis"])
def setup(request: pytest.FixtureRequest) -> Iterator[Setup]:
    with tempfile.TemporaryFile() as log_a, tempfile.TemporaryFile() as log_b:
        if request.param == "one process":
            with serve(app_process("examples.ai_sdk_app:app", log_a)) as (app,):
                yield Setup(app.url, app.url, app.url)
        else:
            redis: RedisServer = request.getfixturevalue("redis_server")
            target = "examples.ai_sdk_app:app"
            apps = (app_process(target, log, redis.url) for log in (log_a, log_b))
            with serve(*apps) as (first, second):
                yield Setup(first.url, second.url, second.url)


def run(setup: Setup, scenario: str, **config: Any) -> dict[str, Any]:
    """One harness scenario on a new chat; its result (with ``log``: every response)."""
    config = {
        "scenario": scenario,
        "chatId": f"chat-{uuid.uuid4().hex[:12]}",
        "send": setup.send,
        "resume": setup.resume,
        "stop": setup.stop,
        "text": "Tell me about resumable streams",
        "timeoutMs": 20_000,
        **config,
    }
    done = subprocess.run(
        ["node", str(HARNESS), json.dumps(config)],
        cwd=CLIENT_DIR, capture_output=True, text=True, timeout=40, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stderr}\n{done.stdout}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def expected_answer(text: str) -> dict[str, Any]:
    """The assistant message's parts after the whole answer (its id aside)."""
    return {
        "role": "assistant",
        "parts": [
            {"type": "step-start"},
            {"type": "text", "text": example().answer_for(text), "state": "done"},
        ],
    }


def answer_events(text: str) -> int:
    """Data events in a whole answer, ``[DONE]`` included."""
    return HEAD + len(example().words(example().answer_for(text))) + 3 + 1


def chunks(entry: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(data) for data in entry["events"] if data != "[DONE]"]


def assistant(view: dict[str, Any]) -> dict[str, Any]:
    """The view's only assistant message, without its id."""
    answers = [m for m in view["messages"] if m["role"] == "assistant"]
    assert len(answers) == 1, view["messages"]  # never a second, duplicated, message
    return {k: v for k, v in answers[0].items() if k not in ("id", "metadata")}


def assert_clean(view: dict[str, Any]) -> None:
    assert view["status"] == "ready"
    assert view["error"] is None


# -- the scenarios --------------------------------------------------------------------------------


def test_resume_of_an_unknown_chat_is_204_and_no_error(setup: Setup) -> None:
    result = run(setup, "unknown")
    assert [(e["method"], e["status"]) for e in result["log"]] == [("GET", 204)]
    assert_clean(result["tab"])
    assert result["tab"]["messages"] == []
    assert result["tab"]["errors"] == []


def test_uninterrupted_answer(setup: Setup) -> None:
    result = run(setup, "send")
    (post,) = result["log"]
    assert (post["method"], post["status"]) == ("POST", 200)
    assert post["events"][-1] == "[DONE]"
    assert len(post["events"]) == answer_events("Tell me about resumable streams")
    tab = result["tab"]
    assert_clean(tab)
    assert assistant(tab) == expected_answer("Tell me about resumable streams")
    assert tab["messages"][-1]["id"] == chunks(post)[0]["messageId"]  # the server's id


@pytest.mark.parametrize("cut", ["before any event", "after a few", "near the end"])
def test_cut_then_resume_gives_the_whole_message_once(setup: Setup, cut: str) -> None:
    text = f"Cut me {cut}"
    total = answer_events(text)
    cut_after = {"before any event": 0, "after a few": HEAD + 2,
                 "near the end": total - 4 - WORDS_LEFT_AT_LATE_CUT}[cut]  # fmt: skip
    result = run(setup, "cut", text=text, cutAfter=cut_after)
    post, get = result["log"]
    assert (post["method"], post["status"], post["cut"]) == ("POST", 200, True)
    assert len(post["events"]) == cut_after
    assert result["atCut"]["status"] == "error"  # the dropped connection, as the SDK saw it
    # The resume replays from the first chunk (the client rebuilds the message from
    # `start`), then follows live to the end.
    assert (get["method"], get["status"]) == ("GET", 200)
    assert get["events"][:cut_after] == post["events"]
    assert len(get["events"]) == total
    assert get["events"][-1] == "[DONE]"
    tab = result["tab"]
    assert_clean(tab)
    assert assistant(tab) == expected_answer(text)
    assert tab["messages"][-1]["id"] == chunks(get)[0]["messageId"]
    assert len(tab["messages"]) == 2


@pytest.mark.parametrize("restored", ["user", "partial"])
def test_reloaded_page_resumes_the_whole_message(setup: Setup, restored: str) -> None:
    """A new page resumes: with the user message only, or with the partial answer too
    (which the replay must replace, not follow with a second copy)."""
    text = "Reload me"
    result = run(setup, "cut", text=text, cutAfter=HEAD + 4, reload=restored)
    assert [(e["method"], e["status"]) for e in result["log"]] == [("POST", 200), ("GET", 200)]
    if restored == "partial":
        assert [m["role"] for m in result["atCut"]["messages"]] == ["user", "assistant"]
    tab = result["tab"]
    assert_clean(tab)
    assert tab["errors"] == []  # the new page saw no error at all
    assert assistant(tab) == expected_answer(text)
    assert [m["role"] for m in tab["messages"]] == ["user", "assistant"]


def test_resume_after_the_answer_finished_is_204(setup: Setup) -> None:
    result = run(setup, "finished")
    assert [(e["method"], e["status"]) for e in result["log"]] == [("POST", 200), ("GET", 204)]
    assert_clean(result["tab"])
    assert result["tab"]["errors"] == []
    assert result["tab"]["messages"] == result["first"]["messages"]  # untouched


def test_two_tabs_resume_at_once(setup: Setup) -> None:
    text = "Two tabs"
    result = run(setup, "concurrent", text=text, cutAfter=HEAD + 2)
    gets = [e for e in result["log"] if e["method"] == "GET"]
    assert [e["status"] for e in gets] == [200, 200]
    for tab in result["tabs"]:
        assert_clean(tab)
        assert assistant(tab) == expected_answer(text)
    ids = {tab["messages"][-1]["id"] for tab in result["tabs"]}
    assert len(ids) == 1


@pytest.mark.parametrize("via", ["DELETE .../stream", "POST .../stop"])
def test_stop_then_resume_is_204(setup: Setup, via: str) -> None:
    text = "Stop me"
    stop_after = HEAD + 5
    post_route = via.startswith("POST")
    via_config = {"stopVia": "post"} if post_route else {}
    result = run(setup, "stop", text=text, stopAfter=stop_after, **via_config)
    if post_route:  # the AI SDK docs' stop route: 200 and JSON, whether or not it stopped
        assert result["stopStatus"] == {"status": 200, "success": True, "stopped": True}
        assert result["again"] == {"status": 200, "success": True, "stopped": False}
    else:
        assert result["stopStatus"] == 202
        assert result["again"] == 204  # nothing left to stop
    first = result["first"]
    assert_clean(first)  # the stop ends the answer cleanly, not as an error
    post = result["log"][0]
    assert post["method"] == "POST"
    assert post["events"][-1] == "[DONE]"
    assert [c["type"] for c in chunks(post)][-3:] == ["text-end", "abort", "finish"]
    answer = example().answer_for(text)
    part = assistant(first)["parts"][-1]
    assert part["state"] == "done"
    assert answer.startswith(part["text"])
    assert len(part["text"]) < len(answer)
    # A reloaded page finds nothing running.
    assert [(e["method"], e["status"]) for e in result["log"][1:2]] == [("GET", 204)]
    assert_clean(result["tab"])
    assert result["tab"]["messages"] == first["messages"]


def test_model_error_reaches_the_client_as_an_error_chunk(setup: Setup) -> None:
    text = "please fail now"
    result = run(setup, "error", text=text)
    post = result["log"][0]
    errors = [c for c in chunks(post) if c["type"] == "error"]
    message = "model error: the model failed mid-answer, as asked"
    assert errors == [{"type": "error", "errorText": message}]
    first = result["first"]
    assert first["status"] == "error"
    assert first["error"] == message
    assert first["errors"] == [message]
    # The text before the error stays; a resume finds nothing running.
    said = example().words(example().answer_for(text))[: example().FAIL_AFTER]
    assert assistant(first)["parts"][-1]["text"] == "".join(said)
    assert (result["log"][1]["method"], result["log"][1]["status"]) == ("GET", 204)
    assert_clean(result["tab"])


# -- the same routes in Starlette and Litestar ----------------------------------------------------


@pytest.fixture(
    scope="module",
    params=["examples.ai_sdk_app:starlette_app",
            "--factory examples.ai_sdk_app:create_litestar_app"],
    ids=["starlette", "litestar"],
)  # fmt: skip
def framework(request: pytest.FixtureRequest) -> Iterator[Setup]:
    with tempfile.TemporaryFile() as log, serve(app_process(request.param, log)) as (app,):
        yield Setup(app.url, app.url, app.url)


def test_framework_cut_and_resume(framework: Setup) -> None:
    text = "Any framework"
    result = run(framework, "cut", text=text, cutAfter=HEAD + 3)
    assert [(e["method"], e["status"]) for e in result["log"]] == [("POST", 200), ("GET", 200)]
    assert_clean(result["tab"])
    assert assistant(result["tab"]) == expected_answer(text)


def test_framework_stop(framework: Setup) -> None:
    result = run(framework, "stop", text="Stop here", stopAfter=HEAD + 2)
    assert (result["stopStatus"], result["again"]) == (202, 204)
    assert_clean(result["first"])
    assert result["log"][1]["status"] == 204


def test_framework_stop_route(framework: Setup) -> None:
    result = run(framework, "stop", text="Stop there", stopAfter=HEAD + 2, stopVia="post")
    assert result["stopStatus"] == {"status": 200, "success": True, "stopped": True}
    assert_clean(result["first"])
    assert result["log"][1]["status"] == 204
