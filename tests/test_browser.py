"""The browser client (``resumable_stream/static/resumable-stream.js``) in real Chromium.

Playwright drives Debian's Chromium (``/usr/bin/chromium``; Playwright cannot download
its own browser here) against the FastAPI chat example under uvicorn, in a subprocess on a
free loopback port, with a slow agent (0.05 s a word) so that cuts land mid-answer.

How a connection is cut: neither ``context.set_offline(True)`` nor ``page.route(...)``
breaks a fetch body that is already streaming in Chromium (both act on new requests only;
measured: the body kept arriving to the end). So the browser talks to the app through
`CuttableProxy`, a TCP proxy in this process: ``cut()`` drops every open connection (the
browser sees the chunked body end early, a network error in the reader) and then refuses
new ones (each resume attempt fails) until ``restore()``.

Without Playwright or Chromium these tests skip, unless ``RESUMABLE_STREAM_REQUIRE_BROWSER=1``
(CI sets it): then a missing browser is a failure, so a broken install cannot hide behind a
skip. ``RESUMABLE_STREAM_CHROMIUM`` names another Chromium binary. The screenshot of the
cut-and-resume scenario goes to ``tests/artifacts/`` (ignored by git).

The tests of `resumable_stream.browser` itself (the ASGI app serving the files) need no
browser and always run.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from resumable_stream import browser as browser_module
from resumable_stream.browser import CLIENT_FILES, browser_client_app, client_source

from .app_process import AppProcess
from .servers import RedisServer

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = os.environ.get("RESUMABLE_STREAM_CHROMIUM", "/usr/bin/chromium")
REQUIRE_BROWSER = os.environ.get("RESUMABLE_STREAM_REQUIRE_BROWSER") == "1"
DELAY = "0.05"  # seconds per word in the app
TIMEOUT_MS = 15_000  # any one wait in the page
# The flags this machine's notes give for headless Chromium as root with no network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.timeout(120)


def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    return None


# -- the chat app and a proxy in front of it --------------------------------------------------


def _drop(sock: socket.socket) -> None:
    """Close a socket at once (RST, no lingering), waking any thread blocked on it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class CuttableProxy:
    """A loopback TCP proxy to ``upstream_port`` whose connections a test can cut."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.lock = threading.Lock()
        self.sockets: set[socket.socket] = set()
        self.refusing = False
        self.refused = 0  # connections refused while cut
        self.closed = False
        self.thread = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> int:
        """Drop every open connection and refuse new ones; return how many were open."""
        with self.lock:
            self.refusing = True
            dropped, self.sockets = self.sockets, set()
        for sock in dropped:
            _drop(sock)
        return len(dropped) // 2

    def restore(self) -> None:
        with self.lock:
            self.refusing = False

    def close(self) -> None:
        with self.lock:
            self.closed = True
        self.cut()
        _drop(self.listener)
        self.thread.join(5)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                if self.closed:
                    _drop(client)
                    return
                refuse = self.refusing
                if refuse:
                    self.refused += 1
            if refuse:
                _drop(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                _drop(client)
                continue
            upstream.settimeout(None)
            with self.lock:
                self.sockets |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with self.lock:
            self.sockets -= {src, dst}
        for sock in (src, dst):
            _drop(sock)


@pytest.fixture(scope="module")
def chat_server() -> Iterator[AppProcess]:
    with tempfile.TemporaryFile() as log:
        server = AppProcess("examples.chat_app:app", log, env={"CHAT_DELAY": DELAY})
        server.start()
        try:
            yield server
        finally:
            server.stop()
        # Cut connections and resumes leave no error behind in the server.
        assert "Traceback" not in server.output(), server.output()


@pytest.fixture
def proxy(chat_server: AppProcess) -> Iterator[CuttableProxy]:
    made = CuttableProxy(chat_server.port)
    try:
        yield made
    finally:
        made.close()


# -- the browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    missing = _browser_missing()
    if missing is not None:
        if REQUIRE_BROWSER:
            pytest.fail(f"RESUMABLE_STREAM_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000
        )
        try:
            yield launched
        finally:
            launched.close()


class PageLog:
    """What a page printed to its console, and any uncaught error in it."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self.errors: list[str] = []

    def on_console(self, message: ConsoleMessage) -> None:
        self.lines.append((message.type, message.text))

    def on_error(self, error: Any) -> None:
        self.errors.append(str(error))

    def matching(self, pattern: str, kind: str | None = None) -> list[str]:
        return [
            text
            for type_, text in self.lines
            if (kind is None or type_ == kind) and re.search(pattern, text)
        ]

    def dump(self) -> str:
        return "\n".join(f"{t}: {x}" for t, x in self.lines)


@pytest.fixture
def page(browser: Browser) -> Iterator[tuple[Page, PageLog]]:
    context = browser.new_context()  # a fresh sessionStorage for each test
    context.set_default_timeout(TIMEOUT_MS)
    opened = context.new_page()
    log = PageLog()
    opened.on("console", log.on_console)
    opened.on("pageerror", log.on_error)
    try:
        yield opened, log
    finally:
        context.close()
    assert not log.errors, log.errors


def answer_for(message: str) -> str:
    from examples.chat_app import answer_for as answer

    return str(answer(message))


def send(page: Page, message: str) -> None:
    page.fill("#msg", message)
    page.click("#send")


def wait_for_events(page: Page, count: int) -> int:
    """Wait until the page has delivered at least ``count`` events; return how many."""
    page.wait_for_function("(n) => window.chat.ids.length >= n", arg=count)
    return int(page.evaluate("window.chat.ids.length"))


def check_exactly_once(page: Page, message: str) -> None:
    """The page shows the whole answer once, and got every event id once, in order."""
    from playwright.sync_api import expect

    expect(page.locator("body")).to_have_attribute("data-state", "done", timeout=TIMEOUT_MS)
    answer = answer_for(message)
    assert page.locator("#out").text_content() == answer
    ids = page.evaluate("window.chat.ids")
    assert ids == [str(i) for i in range(len(answer.split(" ")) + 1)]  # the words, [DONE]


# -- (a) cut the connection mid-answer ------------------------------------------------------


def test_cut_connection_mid_answer_resumes_exactly_once(
    page: tuple[Page, PageLog], proxy: CuttableProxy
) -> None:
    tab, log = page
    message = "Cut me off in the middle of the answer, then bring me back please"
    tab.goto(f"{proxy.url}/?retryDelay=200&maxRetries=8")
    send(tab, message)
    before = wait_for_events(tab, 3)
    stream_id = tab.locator("#sid").text_content()
    assert stream_id
    assert stream_id != "-"

    assert proxy.cut() >= 1  # the streaming connection, at least
    # Stay offline until two resume attempts have failed, then let the third through.
    tab.wait_for_function(
        "() => [...document.querySelectorAll('#log li')]"
        ".filter((li) => li.textContent.includes('resume failed')).length >= 2"
    )
    cut_at = int(tab.evaluate("window.chat.ids.length"))
    proxy.restore()
    check_exactly_once(tab, message)

    total = int(tab.evaluate("window.chat.ids.length"))
    assert before <= cut_at < total, "the cut did not land mid-answer"
    assert proxy.refused >= 2
    # The console tells the story, naming the stream: started, lost, attempts, resumed.
    sid = re.escape(stream_id)
    assert log.matching(rf"^\[resumable-stream\] stream {sid}: started", "info")
    assert log.matching(rf"stream {sid}: connection lost after event {cut_at - 1}:", "warning")
    assert len(log.matching(rf"stream {sid}: resume attempt \d+/8 in \d+ ms", "info")) >= 3
    assert len(log.matching(rf"stream {sid}: resume failed", "warning")) >= 2
    assert log.matching(rf"stream {sid}: resumed after event {cut_at - 1} \(status 200\)", "info")
    assert log.matching(rf"stream {sid}: complete", "info"), log.dump()
    # The page shows the same log.
    assert "resume attempt 1/8" in (tab.locator("#log").text_content() or "")
    ARTIFACTS.mkdir(exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / "browser-cut-and-resume.png"), full_page=True)


def test_cut_button_resumes_exactly_once(page: tuple[Page, PageLog], proxy: CuttableProxy) -> None:
    """The page's own "Cut connection" button (`dropConnection()`), no proxy cut."""
    tab, log = page
    message = "Press the button while I talk"
    tab.goto(f"{proxy.url}/?retryDelay=100")
    send(tab, message)
    wait_for_events(tab, 2)
    tab.click("#cut")
    check_exactly_once(tab, message)
    assert log.matching(r"connection lost after event \d+: ConnectionCut", "warning")
    assert log.matching(r"resume attempt 1/5", "info")


# -- (b) reload mid-answer ------------------------------------------------------------------


def test_reload_mid_answer_resumes_from_session_storage(
    page: tuple[Page, PageLog], proxy: CuttableProxy
) -> None:
    tab, log = page
    message = " ".join(["reload"] * 12) + " while the answer is still coming in"
    tab.goto(f"{proxy.url}/?retryDelay=200")
    send(tab, message)
    wait_for_events(tab, 3)
    saved = tab.evaluate("sessionStorage.getItem('resumable-stream')")
    assert saved is not None
    tab.reload()
    # The reloaded page resumed after the last event the old one delivered, not from 0.
    check_exactly_once(tab, message)
    resumed = log.matching(r"stream \S+: resuming after event (\d+)$", "info")
    assert len(resumed) == 1, log.dump()
    after = int(resumed[0].rsplit(" ", 1)[1])
    total = int(tab.evaluate("window.chat.ids.length"))
    assert 2 <= after < total - 1, "the reload did not land mid-answer"
    stream_id = json.loads(saved)["streamId"]
    assert tab.locator("#sid").text_content() == stream_id
    assert stream_id in resumed[0]
    # Done: nothing is left to resume, and a second reload shows the answer, idle.
    assert tab.evaluate("sessionStorage.getItem('resumable-stream')") is None
    tab.reload()
    check_exactly_once(tab, message)


# -- (c) the SSE parser and the client's rules, in the page ----------------------------------

PARSER_CASES = r"""
async () => {
  const m = await import("/_resumable/resumable-stream.js");
  const parse = (pieces) => m.parseSSE(pieces);
  const data = (r) => r.events.map((e) => e.data);
  const out = {};
  // A CRLF split between two pieces, and CR-only line ends.
  out.crlfSplit = data(parse(["data: a\r", "\n\r", "\ndata: b\r\n\r\n"]));
  out.crOnly = data(parse(["data: a\rdata: b\r\r"]));
  // Multi-line data; "data" with no colon is an empty line of data.
  out.multiLine = data(parse(["data: one\ndata:two\ndata:  three\n\n"]));
  out.emptyData = data(parse(["data\n\n", "data:\ndata:\n\n"]));
  // ids persist across events; an id with NUL is ignored; the last id of a block wins.
  const ids = parse(["id: 5\ndata: x\n\ndata: y\n\n",
                     "id: a\0b\ndata: z\n\nid: 6\nid: 7\ndata: w\n\n"]);
  out.ids = ids.events.map((e) => [e.id, e.hasId]);
  out.idOnlyBlock = parse(["data: x\nid: 1\n\nid: 2\n\n: ping\n\n"]).lastEventId;
  // retry: digits only.
  out.retry = [parse(["retry: 1500\n\n"]).retry, parse(["retry: 1.5\n\n"]).retry,
               parse(["retry: x\n\n"]).retry, parse(["retry: 20\nretry: 30z\n"]).retry];
  // Comments and unknown fields are ignored; event types reset after each event.
  out.types = parse([": ping\n\nevent: delta\nfoo: bar\ndata: 1\n\ndata: 2\n\n"]).events
    .map((e) => e.event + ":" + e.data);
  // One leading BOM is dropped, even in its own piece; a second one is not.
  out.bom = [data(parse(["\ufeffdata: x\n\n"])), data(parse(["\ufeff", "data: y\n\n"])),
             data(parse(["\ufeff\ufeffdata: z\n\n"]))];
  // The stream ends mid-event: not dispatched, and reported as incomplete.
  out.incomplete = [parse(["data: x"]), parse(["data: x\n"]), parse(["data: x\n\n"])]
    .map((r) => [data(r), r.incomplete]);
  // Any split of a stream gives the same events as the whole.
  const whole = "\ufeffid: 1\r\nevent: e\r\ndata: \u00e9\r\ndata: \u{1F600}\r\n\r\n" +
                ": c\rdata: b\r\rid: 2\ndata: c\n\n";
  const expected = JSON.stringify(parse([whole]).events);
  let same = true;
  for (let cut = 0; cut <= whole.length; cut++) {
    for (let cut2 = cut; cut2 <= whole.length; cut2 += 3) {
      const pieces = [whole.slice(0, cut), whole.slice(cut, cut2), whole.slice(cut2)];
      if (JSON.stringify(parse(pieces).events) !== expected) same = false;
    }
  }
  out.anySplit = [same, parse([whole]).events.length];
  // UTF-8 split between network chunks, byte by byte, through the client's decoding.
  const bytes = new TextEncoder().encode("data: 😀é\n\n");
  const decoder = new TextDecoder("utf-8", { ignoreBOM: true });
  const parser = new m.SSEParser();
  const got = [];
  for (const b of bytes) {
    got.push(...parser.feed(decoder.decode(new Uint8Array([b]), { stream: true })));
  }
  out.utf8 = got.map((e) => e.data);
  out.codePoints = [m.codePointLength("a😀b"), "a😀b".length];
  out.modes = ["text/event-stream; charset=utf-8", "application/x-ndjson", "text/plain",
               "text/plain; charset=latin-1", "application/octet-stream", "application/ld+json",
               null].map(m.bodyMode);
  return out;
}
"""


def test_sse_parser_in_page(page: tuple[Page, PageLog], chat_server: AppProcess) -> None:
    tab, _ = page
    tab.goto(f"http://127.0.0.1:{chat_server.port}/")
    out = tab.evaluate(PARSER_CASES)
    assert out["crlfSplit"] == ["a", "b"]
    assert out["crOnly"] == ["a\nb"]
    assert out["multiLine"] == ["one\ntwo\n three"]
    assert out["emptyData"] == ["", "\n"]
    assert out["ids"] == [["5", True], ["5", False], ["5", False], ["7", True]]
    assert out["idOnlyBlock"] == "2"
    assert out["retry"] == [1500, None, None, 20]
    assert out["types"] == ["delta:1", "message:2"]
    assert out["bom"] == [["x"], ["y"], []]
    assert out["incomplete"] == [[[], True], [[], True], [["x"], False]]
    assert out["anySplit"] == [True, 3]
    assert out["utf8"] == ["😀é"]
    assert out["codePoints"] == [3, 4]
    assert out["modes"] == ["sse", "text", "text", "bytes", "bytes", "text", "bytes"]


CLIENT_RULES = r"""
async () => {
  const m = await import("/_resumable/resumable-stream.js");
  const enc = new TextEncoder();
  // A scripted server: each call of fetch takes the next answer from a list.
  const body = (parts, fail) => new ReadableStream({
    async pull(ctl) {
      if (parts.length) { ctl.enqueue(enc.encode(parts.shift())); return; }
      if (fail) ctl.error(new TypeError("network error")); else ctl.close();
    },
  });
  const sse = (parts, fail = false, status = 200) =>
    new Response(body([...parts], fail), { status,
      headers: { "content-type": "text/event-stream", "x-stream-id": "s1" } });
  const text = (parts, fail = false) =>
    new Response(body([...parts], fail), { headers: { "content-type": "text/plain; charset=utf-8",
                                                      "x-stream-id": "t1" } });
  const status = (code, headers = {}) => new Response("x", { status: code, headers });
  async function run(answers, options = {}, how = (c) => c.start("/start", {})) {
    const calls = [], got = [], retries = [], lines = [];
    let error = null, completed = 0, reason = null;
    const client = new m.ResumableStreamClient({
      fetch: async (url, init) => {
        calls.push([url, init.headers.get("last-event-id")]);
        const next = answers.shift();
        if (next instanceof Error) throw next;
        return next;
      },
      onMessage: (d, e) => got.push(e ? e.id + "=" + d : d),
      onError: (e) => {
        error = [e.name, e.status, e instanceof m.ResumableStreamError];
        reason = e.reason ?? null;
      },
      onComplete: () => completed++,
      onRetry: (r) => retries.push([r.attempt, r.delay]),
      retryDelay: 10, storageKey: null,
      logger: { info: (x) => lines.push(x), warn: (x) => lines.push(x), debug() {}, error() {} },
      ...options,
    });
    const result = await how(client);
    return { calls, got, retries, error, reason, completed, status: result.status, lines };
  }
  const out = {};
  // Duplicates from a misbehaving resume are dropped; the resume names the last id.
  out.dedupe = await run([
    sse(["data: a\nid: 0\n\n", "data: b\nid: 1\n\n"], true),
    sse(["data: b\nid: 1\n\ndata: c\nid: 2\n\n", ": ping\n\n", "data: d\nid: 3\n\n"]),
  ]);
  // A body that ends inside an event is incomplete: resume after the last whole one.
  out.partial = await run([sse(["data: a\nid: 0\n\ndata: b"]), sse(["data: b\nid: 1\n\n"])]);
  // No event yet: resumeAt=0. 503 and network errors are retried with backoff, honouring
  // retry:, and progress resets the budget; 410 means complete.
  out.retries = await run([
    sse(["retry: 40\n\n"], true), status(503), sse(["data: a\nid: 0\n\n"], true),
    new TypeError("Failed to fetch"), status(410),
  ], { maxRetries: 2 });
  out.exhausted = await run([sse([], true), status(502), status(503, { "retry-after": "0" })],
                            { maxRetries: 2 });
  out.notFound = await run([sse([], true), status(404)]);
  out.forbidden = await run([sse([], true), status(403)]);
  out.badStart = await run([status(500)]);
  // Text bodies resume by code points: "😀" is one character for the server.
  out.text = await run([text(["a😀", "b"], true), text(["c"])]);
  // resume(): given id, from the saved position or an explicit one.
  out.resumeFrom = await run([sse(["data: x\nid: 8\n\n"])], {}, (c) => c.resume("s1", 7));
  out.resumeStart = await run([sse(["data: x\nid: 0\n\n"])], {}, (c) => c.resume("s1", null));
  // A server without the resumeAt=0 rule for event streams answers 400: ask with no position.
  out.oldServer = await run([sse([], true), status(400), sse(["data: x\nid: 0\n\n"])]);
  // A 410 marked failed is an error, never a complete; one marked done (or unmarked, from
  // an older server) is a complete; a 413 is the stream cut at its size limit.
  const failed = { "x-stream-status": "failed", "x-stream-error": "ProducerLost" };
  out.failed = await run([sse(["data: a\nid: 0\n\n"], true), status(410, failed)]);
  out.done = await run([sse(["data: a\nid: 0\n\n"], true),
                        status(410, { "x-stream-status": "done" })]);
  out.tooLarge = await run([sse([], true), status(413)]);
  return out;
}
"""


def test_client_rules_with_a_scripted_server(
    page: tuple[Page, PageLog], chat_server: AppProcess
) -> None:
    tab, _ = page
    tab.goto(f"http://127.0.0.1:{chat_server.port}/")
    out = tab.evaluate(CLIENT_RULES)
    resume = "/api/chat/resume/s1"

    dedupe = out["dedupe"]
    assert dedupe["got"] == ["0=a", "1=b", "2=c", "3=d"]
    assert dedupe["calls"] == [["/start", None], [resume, "1"]]
    assert (dedupe["status"], dedupe["completed"], dedupe["error"]) == ("complete", 1, None)

    partial = out["partial"]
    assert partial["got"] == ["0=a", "1=b"]
    assert partial["calls"][1] == [resume, "0"]

    retries = out["retries"]
    assert retries["calls"] == [
        ["/start", None], [resume + "?resumeAt=0", None], [resume + "?resumeAt=0", None],
        [resume, "0"], [resume, "0"],
    ]  # fmt: skip
    assert retries["got"] == ["0=a"]
    attempts = [a for a, _ in retries["retries"]]
    # Two failures in a row would exhaust maxRetries=2: the event after attempt 2 reset it.
    assert attempts == [1, 2, 1, 2]
    for attempt, delay in retries["retries"]:  # retry: 40 replaced retryDelay (10)
        assert 0.8 * 40 * 2 ** (attempt - 1) <= delay <= 1.2 * 40 * 2 ** (attempt - 1) + 1
    assert (retries["status"], retries["completed"]) == ("complete", 1)

    assert out["exhausted"]["error"] == ["RetriesExhaustedError", 503, True]
    assert len(out["exhausted"]["calls"]) == 3  # the start, then maxRetries attempts
    assert out["notFound"]["error"] == ["StreamNotFoundError", 404, True]
    assert out["forbidden"]["error"] == ["StreamForbiddenError", 403, True]
    assert out["badStart"]["error"] == ["StreamRequestError", 500, True]
    assert len(out["badStart"]["calls"]) == 1  # a POST is never repeated
    for name in ("exhausted", "notFound", "forbidden", "badStart"):
        assert (out[name]["status"], out[name]["completed"]) == ("error", 0)

    text = out["text"]
    assert text["got"] == ["a😀", "b", "c"]
    assert text["calls"][1] == ["/api/chat/resume/t1?resumeAt=3", None]

    assert out["resumeFrom"]["calls"] == [[resume, "7"]]
    assert out["resumeFrom"]["got"] == ["8=x"]
    assert out["resumeStart"]["calls"] == [[resume + "?resumeAt=0", None]]
    assert out["oldServer"]["calls"][1:] == [[resume + "?resumeAt=0", None], [resume, None]]
    assert out["oldServer"]["got"] == ["0=x"]

    failed = out["failed"]
    assert (failed["status"], failed["completed"], failed["got"]) == ("error", 0, ["0=a"])
    assert (failed["error"], failed["reason"]) == (["StreamFailedError", 410, True], "ProducerLost")
    assert (out["done"]["status"], out["done"]["completed"], out["done"]["error"]) == (
        "complete", 1, None
    )  # fmt: skip
    too_large = out["tooLarge"]
    assert (too_large["error"], too_large["reason"]) == (
        ["StreamFailedError", 413, True], "StreamTooLarge"
    )  # fmt: skip


def test_resume_errors_against_the_server(
    page: tuple[Page, PageLog], chat_server: AppProcess
) -> None:
    """Real answers: 404 for an unknown id, 410 (complete) after the last event."""
    tab, log = page
    tab.goto(f"http://127.0.0.1:{chat_server.port}/")
    out = tab.evaluate(
        r"""async () => {
          const m = await import("/_resumable/resumable-stream.js");
          const outcome = async (fn, options = {}) => {
            let error = null, completed = false;
            const got = [];
            const client = new m.ResumableStreamClient({
              onMessage: (d) => got.push(d), onComplete: () => { completed = true; },
              onError: (e) => { error = [e.constructor.name, e.status]; },
              retryDelay: 10, storageKey: null,
              ...(options.cutAtOnce ? { onStreamId: () => client.dropConnection() } : {}),
            });
            const result = await fn(client);
            return { status: result.status, error, completed, got, id: result.streamId };
          };
          const body = { messages: [{ role: "user", content: "short" }] };
          const whole = await outcome((c) => c.start("/api/chat/a/t", body));
          const last = String(whole.got.length - 1);
          return {
            whole,
            unknown: await outcome((c) => c.resume("no-such-stream")),
            atEnd: await outcome((c) => c.resume(whole.id, last)),
            fromStart: await outcome((c) => c.resume(whole.id, null)),
            // Cut before the first event: the resume asks for resumeAt=0.
            cutAtOnce: await outcome((c) => c.start("/api/chat/a/t2", body), { cutAtOnce: true }),
          };
        }"""
    )
    whole = out["whole"]
    assert (whole["status"], whole["completed"]) == ("complete", True)
    assert whole["got"][-1] == "[DONE]"
    assert out["unknown"]["error"] == ["StreamNotFoundError", 404]
    assert (out["atEnd"]["status"], out["atEnd"]["got"]) == ("complete", [])
    # From the start (resumeAt=0), a finished event stream: its whole body again.
    assert out["fromStart"]["status"] == "complete"
    assert out["fromStart"]["got"] == whole["got"]
    cut = out["cutAtOnce"]
    assert (cut["status"], cut["got"]) == ("complete", whole["got"])
    assert log.matching(rf"stream {re.escape(cut['id'])}: resumed from the start \(status 200\)")


# -- the React hook, on a minimal stand-in for React ------------------------------------------

# Just enough of React's hooks for one component: state (a change re-renders), refs,
# callbacks and effects with dependency lists, and an unmount that runs the cleanups. It is
# not React (no build of React is at hand without npm and a bundler): it checks the hook's
# own wiring, with the hook file exactly as served.
MINI_REACT = r"""
let slots = [], at = 0, component = null, scheduled = false, effects = [];
export const view = { current: null };
const same = (a, b) => Array.isArray(a) && Array.isArray(b) && a.length === b.length &&
  a.every((x, i) => Object.is(x, b[i]));
function rerender() {
  scheduled = false;
  if (!component) return;
  at = 0;
  view.current = component();
  const run = effects;
  effects = [];
  for (const effect of run) effect();
}
export function unmount() {
  for (const s of slots) if (s && s.cleanup) s.cleanup();
  slots = []; component = null; view.current = null;
}
export function render(fn) { unmount(); component = fn; rerender(); }
function slot(make) { const k = at++; if (!(k in slots)) slots[k] = make(); return slots[k]; }
export function useState(initial) {
  const s = slot(() => ({ value: initial }));
  s.set ??= (v) => {
    s.value = typeof v === "function" ? v(s.value) : v;
    if (component && !scheduled) { scheduled = true; queueMicrotask(rerender); }
  };
  return [s.value, s.set];
}
export function useRef(initial) { return slot(() => ({ current: initial })); }
export function useCallback(fn, deps) {
  const s = slot(() => ({ fn, deps }));
  if (!same(s.deps, deps)) { s.fn = fn; s.deps = deps; }
  return s.fn;
}
export function useEffect(fn, deps) {
  const s = slot(() => ({ deps: undefined, cleanup: null }));
  if (same(s.deps, deps)) return;
  s.deps = deps;
  effects.push(() => { if (s.cleanup) s.cleanup(); s.cleanup = fn() || null; });
}
"""

HOOK_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<script type="importmap">{"imports": {"react": "/_test/react.js"}}</script>
<script type="module">
import * as React from "react";
import { useResumableStream } from "/_resumable/use-resumable-stream.js";
window.got = []; window.completed = 0; window.errors = [];
window.React = React;
window.mount = () => React.render(() => useResumableStream({
  onMessage: (data) => window.got.push(data),
  onComplete: () => window.completed++,
  onError: (error) => window.errors.push(error.name),
  retryDelay: 50,
}));
window.hook = () => React.view.current;
window.ready = true;
</script></head><body></body></html>
"""


def test_react_hook(page: tuple[Page, PageLog], chat_server: AppProcess) -> None:
    tab, _ = page
    origin = f"http://127.0.0.1:{chat_server.port}"

    def serve(route: Any) -> None:
        if route.request.url.endswith("/react.js"):
            route.fulfill(body=MINI_REACT, content_type="text/javascript")
        else:
            route.fulfill(body=HOOK_PAGE, content_type="text/html")

    tab.route(f"{origin}/_test/**", serve)
    tab.goto(f"{origin}/_test/hook.html")
    tab.wait_for_function("window.ready === true")
    message = " ".join(["hook"] * 10)
    body = json.dumps({"messages": [{"role": "user", "content": message}]})

    # startStream: isStreaming and streamId follow the stream.
    tab.evaluate("mount()")
    state = "[hook().isStreaming, hook().streamId, hook().error]"
    assert tab.evaluate(state) == [False, None, None]
    tab.evaluate(f"(window.started = hook().startStream('/api/chat/a/hook', {body}), 0)")
    tab.wait_for_function("hook().isStreaming && hook().streamId !== null && got.length >= 2")
    stream_id = tab.evaluate("hook().streamId")
    # Unmount mid-answer: reading stops, the saved position stays for a remount.
    tab.evaluate("React.unmount()")
    saved = json.loads(tab.evaluate("sessionStorage.getItem('resumable-stream')"))
    assert saved["streamId"] == stream_id
    assert tab.evaluate("window.started.then((r) => r.status)") == "aborted"
    # A remount resumes it with resume() and no arguments.
    tab.evaluate("mount()")
    assert tab.evaluate("hook().resume().then((r) => r.status)") == "complete"
    tab.wait_for_function("hook() && !hook().isStreaming")
    assert tab.evaluate("[completed, errors, hook().streamId]") == [1, [], stream_id]
    got = tab.evaluate("got")
    assert got[-1] == "[DONE]"
    assert "".join(json.loads(item)["delta"] for item in got[:-1]) == answer_for(message)
    assert tab.evaluate("sessionStorage.getItem('resumable-stream')") is None
    # Nothing saved: resume() does nothing.
    assert tab.evaluate("hook().resume().then((r) => r.status)") == "none"

    # A final error lands in `error`.
    assert tab.evaluate("hook().resume('no-such-stream').then((r) => r.status)") == "error"
    tab.wait_for_function("hook().error !== null")
    assert tab.evaluate("[hook().error.name, hook().error.status, hook().isStreaming]") == [
        "StreamNotFoundError", 404, False
    ]  # fmt: skip

    # abort(): stops, clears the error and the saved stream.
    tab.evaluate(f"(window.started = hook().startStream('/api/chat/a/hook2', {body}), 0)")
    tab.wait_for_function("hook().isStreaming && hook().error === null && got.length > 0")
    tab.evaluate("hook().abort()")
    tab.wait_for_function("!hook().isStreaming")
    assert tab.evaluate("window.started.then((r) => r.status)") == "aborted"
    assert tab.evaluate("sessionStorage.getItem('resumable-stream')") is None


# -- failed streams: a typed error, never a complete ----------------------------------------


@pytest.fixture(scope="module")
def workers_server(redis_server: RedisServer) -> Iterator[tuple[AppProcess, str]]:
    """``tests/apps/restart_app.py`` under ``uvicorn --workers 2`` (the supervisor restarts
    a worker that dies), streams on Redis with a 1 s lease."""
    prefix = f"browser-{uuid.uuid4().hex[:8]}"
    env = {"RS_REDIS_URL": redis_server.url, "RS_PREFIX": prefix, "RS_LEASE": "1.0",
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    with tempfile.TemporaryFile() as log:
        server = AppProcess("tests.apps.restart_app:app --workers 2", log, env=env)
        server.start()
        try:
            yield server, prefix
        finally:
            server.stop()


FAILED_STREAMS = r"""
async (sid) => {
  const m = await import("/_resumable/resumable-stream.js");
  window.outcome = async (url) => {
    const got = [];
    let error = null, completed = 0;
    const client = new m.ResumableStreamClient({
      onMessage: (d) => got.push(d), onComplete: () => completed++,
      onError: (e) => { error = [e.name, e.status, e.reason, e instanceof m.StreamFailedError]; },
      resumeUrl: (id) => "/resume/" + encodeURIComponent(id),
      retryDelay: 20, maxRetries: 20, storageKey: null,
    });
    const result = await client.start(url, {});
    return { status: result.status, got, error, completed };
  };
  return window.outcome(`/stream/${sid}?n=100&pace=0.001&mode=sse&fail_at=30`);
}
"""


def test_failed_stream_is_an_error_in_the_browser(
    page: tuple[Page, PageLog], workers_server: tuple[AppProcess, str]
) -> None:
    """A source that raises mid-stream, and a producer whose worker is killed (SIGKILL):
    the page gets the clean prefix, then `StreamFailedError` in ``onError``."""
    import redis

    server, prefix = workers_server
    tab, _ = page
    tab.goto(f"{server.url}/")
    sid = f"b{uuid.uuid4().hex[:8]}"
    raised = tab.evaluate(FAILED_STREAMS, sid)
    assert raised["status"] == "error"
    assert raised["error"] == ["StreamFailedError", 410, "StreamFailed", True]
    assert raised["completed"] == 0
    assert raised["got"] == [f"{sid}:{i:04d}|" for i in range(30)]

    # A producer alive and quiet after 20 events; its worker is killed.
    killed = f"k{uuid.uuid4().hex[:8]}"
    tab.evaluate(
        "(sid) => { window.got = null; "
        "window.killed = window.outcome(`/stream/${sid}?n=1000&mode=sse&hang_at=20`)"
        ".then((r) => { window.got = r; }); }",
        killed,
    )
    store = redis.Redis.from_url(server.env["RS_REDIS_URL"])
    try:
        deadline = time.monotonic() + 15
        while (pid := store.get(f"{prefix}:pid:{killed}")) is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)  # the worker records its pid as it starts the stream: polled
        # Wait until all 20 events are stored (and so on their way to the page).
        while store.llen(f"{prefix}:{{{killed}}}:chunks") < 20:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        store.close()
    os.kill(int(pid), signal.SIGKILL)  # a worker of the server this test started
    tab.wait_for_function("window.got !== null")
    lost = tab.evaluate("window.got")
    assert lost["status"] == "error"
    assert lost["error"] == ["StreamFailedError", 410, "ProducerLost", True]
    assert lost["got"] == [f"{killed}:{i:04d}|" for i in range(20)]


def test_react_hook_error_state_for_a_failed_stream(
    page: tuple[Page, PageLog], workers_server: tuple[AppProcess, str]
) -> None:
    server, _ = workers_server
    tab, _ = page
    origin = server.url
    hook_page = HOOK_PAGE.replace(
        "retryDelay: 50,", "retryDelay: 50, resumeUrl: (id) => '/resume/' + id,"
    )

    def serve(route: Any) -> None:
        if route.request.url.endswith("/react.js"):
            route.fulfill(body=MINI_REACT, content_type="text/javascript")
        else:
            route.fulfill(body=hook_page, content_type="text/html")

    tab.route(f"{origin}/_test/**", serve)
    tab.goto(f"{origin}/_test/hook.html")
    tab.wait_for_function("window.ready === true")
    tab.evaluate("mount()")
    sid = f"h{uuid.uuid4().hex[:8]}"
    url = f"/stream/{sid}?n=50&pace=0.001&mode=sse&fail_at=10"
    assert tab.evaluate(f"hook().startStream('{url}', {{}}).then((r) => r.status)") == "error"
    tab.wait_for_function("hook().error !== null && !hook().isStreaming")
    assert tab.evaluate("[hook().error.name, hook().error.reason, completed, errors]") == [
        "StreamFailedError", "StreamFailed", 0, ["StreamFailedError"]
    ]  # fmt: skip
    assert tab.evaluate("got.length") == 10


# -- the ASGI app serving the files (no browser) ---------------------------------------------


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


def call(
    app: Any, method: str, path: str, headers: dict[str, str] | None = None, root_path: str = ""
) -> Answer:
    """One request straight into an ASGI app. It runs in a thread with a loop of its own:
    sync Playwright keeps a loop in this thread once the browser fixture exists."""
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": root_path,
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, app(scope, receive, send)).result(10)
    start = sent[0]
    return Answer(
        start["status"],
        {k.decode(): v.decode() for k, v in start["headers"]},
        b"".join(m.get("body", b"") for m in sent[1:]),
    )


def test_browser_client_app_serves_the_modules() -> None:
    app = browser_client_app()
    for name in CLIENT_FILES:
        answer = call(app, "GET", f"/{name}")
        assert answer.status == 200
        assert answer.headers["content-type"] == "text/javascript; charset=utf-8"
        assert answer.headers["cache-control"] == "no-cache"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.body == client_source(name)
        assert answer.headers["content-length"] == str(len(answer.body))
        etag = answer.headers["etag"]
        again = call(app, "GET", f"/{name}", {"If-None-Match": f"W/{etag}, x"})
        assert (again.status, again.body, again.headers["etag"]) == (304, b"", etag)
        head = call(app, "HEAD", f"/{name}")
        assert (head.status, head.body) == (200, b"")
        assert head.headers["content-length"] == str(len(client_source(name)))
    assert call(app, "GET", "/nope.js").status == 404
    assert call(app, "GET", "/static/resumable-stream.js").status == 404
    assert call(app, "GET", "/../browser.py").status == 404
    refused = call(app, "POST", "/resumable-stream.js")
    assert (refused.status, refused.headers["allow"]) == (405, "GET, HEAD")


def test_browser_client_app_under_a_mount() -> None:
    """Starlette's Mount keeps the whole path and puts the prefix in root_path."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    app = Starlette(routes=[Mount("/_resumable", browser_client_app(cache_control="max-age=60"))])
    answer = call(app, "GET", "/_resumable/use-resumable-stream.js")
    assert answer.status == 200
    assert answer.headers["cache-control"] == "max-age=60"
    assert b'from "react"' in answer.body
    assert call(app, "GET", "/_resumable/").status == 404
    assert call(app, "GET", "/resumable-stream.js").status == 404
    # A server that strips the prefix from the path itself.
    plain = browser_client_app()
    assert call(plain, "GET", "/resumable-stream.js", root_path="/_resumable").status == 200


def test_client_files_are_package_data() -> None:
    """The files the app serves are the ones in the imported package (pyproject ships them:
    from a wheel, this is the installed copy)."""
    static = Path(browser_module.__file__).parent / "static"
    assert sorted(p.name for p in static.glob("*.js")) == sorted(CLIENT_FILES)
    with pytest.raises(ValueError, match="no such client file"):
        client_source("../browser.py")
