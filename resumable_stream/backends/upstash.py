"""Upstash Redis over its REST API: for serverless Python, configured by URL and token.

Needs the ``upstash`` extra (``httpx``). ``UpstashBackend(url, token)`` takes what the
Upstash console (or Vercel's KV integration) calls ``UPSTASH_REDIS_REST_URL`` /
``UPSTASH_REDIS_REST_TOKEN`` (``KV_REST_API_URL`` / ``KV_REST_API_TOKEN``); with
``create_resumable_stream_context(None)`` those variables are picked up by themselves.

Design notes (measured facts and Upstash's REST protocol shaped them):

* Storage is `RedisBackend`'s, byte for byte: the same keys and the same Lua scripts
  with the same arguments, written once in ``_wire.py`` (``EVALSHA``, then ``EVAL`` on
  ``NOSCRIPT``), so a stream written over REST can be read over TCP (``rediss://`` to
  the same database) and the other way round. A JSON body cannot carry msgpack bytes,
  so every script argument travels base64-encoded and ``lua/rest_args.lua``, prepended
  to each script, decodes them before the shared text runs. Replies are asked for
  with ``Upstash-Encoding: base64`` so that binary values come back intact.
* The official ``upstash-redis`` client is not used here, although it speaks the same
  protocol: it decodes every string reply as UTF-8 (chunks are msgpack, so they come back
  broken), it has no subscribe, it waits without a timeout and sleeps 3 s before a retry.
  The tests check the loopback stand-in against it instead, so that the stand-in speaks
  Upstash's protocol and not merely ours.
* Live feed: ``POST {url}/subscribe/{channel}`` streams server-sent events
  (``subscribe,<channel>,<n>`` once active, then ``message,<channel>,<payload>``). One
  such request per stream with readers in this process, shared by them, made in the
  background: ``subscribe()`` returns at once and the confirmation tells the readers
  that joined meanwhile to re-read, so a resume's first read of the list runs beside
  the handshake (one round trip to the first chunk, not two in a row). The payload is
  only a doorbell: readers re-read the list from their position (sequence numbers, in
  ``_reader.py``) instead of trusting it. The payload is msgpack and may hold any byte,
  a newline included; SSE frames by lines, so a chunk's text could end an event early
  and even forge the next one. Storage is the only source of chunks. Doorbells rung
  before a reader takes them collapse (at most two re-reads are pending).
* If the subscription breaks or is refused (a proxy that drops long responses, a
  plan without it), readers fall back to the list: one ``/pipeline`` request per
  interval for every such stream of this backend reads each one's status and length,
  and a change tells its readers to re-read. The interval starts at 50 ms, doubles
  while nothing changes, and stays at 1 s at most; meanwhile the subscription is tried
  again with the same backoff and, once it is back, readers re-read once more. So a
  cut costs latency, never a gap or a duplicate.
* Errors: a wrong token (401/403), an unreachable URL, a timeout, a 5xx or any other
  status that is not a command's own error raise `UpstashUnavailable` (a
  `BackendUnavailable`) with the HTTP status and Upstash's error text. Every request
  has a timeout (``timeout`` seconds), so nothing waits for ever.
* Write-behind batching (``StreamOptions.write_interval``) matters more here than over
  TCP: a request costs a round trip of milliseconds, and while one write is in flight the
  producer gathers the next chunks into the next write.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import os
import ssl
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from .._exceptions import BackendUnavailable, InvalidArgument, ResumableStreamError, describe
from .._keys import StreamKeys
from .._subscription import RESYNC, Subscription
from .._types import Chunk, Ended, Snapshot, StreamStatus
from ._wire import NOSCRIPT, Script, Wire, parse_snapshot, scripts, status_of, write_outcome

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "the Upstash backend needs httpx: pip install 'resumable-streams[upstash]'"
    ) from exc

__all__ = ["UpstashBackend", "UpstashUnavailable"]

logger = logging.getLogger("resumable_stream")

_RETRY_FIRST, _RETRY_MAX = 0.05, 1.0  # backoff of polls and re-subscriptions, seconds
_ERROR_TEXT = 300  # characters of an unexpected response body kept in an error
# A reader's feed holds only doorbells (`RESYNC`). With a budget below one of them, a
# second ring before the reader took the first overflows the queue, which the reader
# sees as a single `RESYNC`: rings collapse into at most two re-reads.
_DOORBELL_BUDGET = 1


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every client of the process: loading the certificate store
    costs about 60 ms per httpx client, which a serverless cold start pays in full."""
    return ssl.create_default_context()


class UpstashUnavailable(BackendUnavailable):
    """Upstash could not serve a request: wrong credentials, unreachable, or failing.

    Attributes:
        status_code: the HTTP status, or None if no response came (unreachable, timeout).
        error: Upstash's error text (the ``error`` field of its JSON answer, or the
            start of the body), or a description of the network error.
    """

    def __init__(self, message: str, *, status_code: int | None, error: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error = error


class _CommandError(ResumableStreamError):
    """Upstash ran the request and the command answered with an error (HTTP 400) that
    no retry fixes, as redis-py's ``ResponseError`` is for the Redis backend."""


def _unavailable_text(text: str) -> bool:
    """Error replies that mean "cannot serve this now": Upstash's quotas (``ERR max
    requests limit exceeded``, daily or concurrency limits) and, as for the Redis
    backend, ``NOREPLICAS``."""
    return text.startswith("NOREPLICAS") or "limit exceeded" in text.lower()


def _refused(text: str) -> Exception:
    """An error a command answered (a whole request's, or one stream's inside
    ``write.lua``): `UpstashUnavailable` if a retry may fix it, else `_CommandError`."""
    if _unavailable_text(text):
        return UpstashUnavailable(
            f"Upstash cannot serve the command: {text}", status_code=400, error=text
        )
    return _CommandError(text)


def _arg(value: bytes | str | int) -> str:
    """One script argument, base64-encoded (see ``lua/rest_args.lua``)."""
    if isinstance(value, int):
        value = str(value)
    if isinstance(value, str):
        value = value.encode()
    return base64.b64encode(value).decode("ascii")


def _decode(value: Any) -> Any:
    """A reply under ``Upstash-Encoding: base64``: strings are base64 except ``OK``."""
    if isinstance(value, str):
        return b"OK" if value == "OK" else base64.b64decode(value)
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value  # integers and nil


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:_ERROR_TEXT] or response.reason_phrase
    if isinstance(body, Mapping) and isinstance(body.get("error"), str):
        return str(body["error"])
    return response.text[:_ERROR_TEXT]


def _http_error(response: httpx.Response, what: str) -> UpstashUnavailable:
    text = _error_text(response)
    return UpstashUnavailable(
        f"Upstash answered {what} with HTTP {response.status_code}: {text}",
        status_code=response.status_code,
        error=text,
    )


def _network_error(exc: Exception, what: str) -> UpstashUnavailable:
    text = describe(exc)
    return UpstashUnavailable(f"Upstash unreachable ({what}): {text}", status_code=None, error=text)


def _command(script: Script, call: Sequence[Any], keys: int) -> list[str]:
    """A script call (``_wire``'s: its first ``keys`` parts the keys) as a REST command:
    keys as they are, arguments base64-encoded for the script's prelude."""
    return ["EVALSHA", script.sha, str(keys), *call[:keys], *map(_arg, call[keys:])]


def _fallback(script: Script, command: list[str]) -> list[str]:
    """The same call as ``EVAL`` with the text (which also caches the script)."""
    return ["EVAL", script.text, *command[2:]]


class _Feed:
    """The subscription of one stream's channel, shared by its readers here."""

    __slots__ = ("channel", "error", "keys", "live", "lost", "observed", "readers", "task")

    def __init__(self, keys: StreamKeys) -> None:
        self.keys = keys
        self.channel = keys.events
        self.readers: set[Subscription] = set()
        self.live = False
        self.lost = False  # it was active once, so a return must make readers re-read
        self.error: BaseException | None = None  # fatal (credentials): readers fail
        self.observed: object = None  # what the last poll saw (None: nothing yet)
        self.task: asyncio.Task[None] | None = None

    def ring(self) -> None:
        """Tell every reader to re-read the list from its position."""
        for reader in self.readers:
            reader.push(RESYNC)

    def fail(self, error: BaseException) -> None:
        self.error = error
        for reader in self.readers:
            reader.fail(error)


class UpstashBackend:
    """Streams stored in Upstash Redis, reached over HTTPS with its REST API.

    Args:
        url: the database's REST URL (``UPSTASH_REDIS_REST_URL``), such as
            ``https://eu1-example-12345.upstash.io``.
        token: its REST token (``UPSTASH_REDIS_REST_TOKEN``), sent as a bearer token.
        key_prefix: first part of every key; must not contain ``{`` or ``}``. Use the
            same prefix as a `RedisBackend` on the same database to share streams.
        timeout: seconds any one request may take (connecting, sending, waiting for the
            answer) before it fails with `UpstashUnavailable`.
        subscribe_timeout: seconds a streaming subscribe may go unconfirmed (a proxy
            that buffers the response) before its readers poll the list meanwhile.

    Raises:
        InvalidArgument: an empty ``url`` or ``token``, a URL that is not http(s), a
            duration that is not positive, or a bad ``key_prefix``.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        key_prefix: str = "resumable-stream",
        timeout: float = 10.0,
        subscribe_timeout: float = 5.0,
    ) -> None:
        if not url or not url.startswith(("https://", "http://")):
            raise InvalidArgument(f"the Upstash REST URL must start with https://, not {url!r}")
        if not token:
            raise InvalidArgument("the Upstash REST token is empty")
        if not timeout > 0 or not subscribe_timeout > 0:
            raise InvalidArgument("timeout and subscribe_timeout must be > 0")
        self._wire = Wire(key_prefix)
        self.key_prefix = self._wire.key_prefix
        self.url = url.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._subscribe_timeout = subscribe_timeout
        self._scripts = scripts(rest=True)
        # Made on first use, inside the running loop (a context is often made at import),
        # and made again in another loop (see `_bind`).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: httpx.AsyncClient | None = None
        self._streams: httpx.AsyncClient | None = None
        self._sync_token = ""
        self._feeds: dict[str, _Feed] = {}
        self._poller: asyncio.Task[None] | None = None
        self._poll_wakeup: asyncio.Event | None = None

    @classmethod
    def from_env(cls, *, key_prefix: str = "resumable-stream") -> UpstashBackend:
        """A backend on ``UPSTASH_REDIS_REST_URL`` and ``UPSTASH_REDIS_REST_TOKEN``, or
        else on Vercel's ``KV_REST_API_URL`` and ``KV_REST_API_TOKEN``.

        Raises:
            InvalidArgument: neither pair is set in full.
        """
        for url_name, token_name in (
            ("UPSTASH_REDIS_REST_URL", "UPSTASH_REDIS_REST_TOKEN"),
            ("KV_REST_API_URL", "KV_REST_API_TOKEN"),
        ):
            url, token = os.environ.get(url_name), os.environ.get(token_name)
            if url and token:
                return cls(url, token, key_prefix=key_prefix)
        raise InvalidArgument(
            "set UPSTASH_REDIS_REST_URL and UPSTASH_REDIS_REST_TOKEN "
            "(or KV_REST_API_URL and KV_REST_API_TOKEN)"
        )

    # --- requests -------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self._token}", "Upstash-Encoding": "base64"}
        if self._sync_token:
            # Read your writes on a database with read replicas (what upstash-redis does).
            headers["Upstash-Sync-Token"] = self._sync_token
        return headers

    def _bind(self) -> None:
        """Forget connections and tasks of an event loop other than the running one.

        Some hosts run each invocation in an event loop of its own (``asyncio.run`` per
        request) while the context, made at import, lives on: an httpx connection or a
        task of a finished loop can never be used again, and waiting on one would hang.
        """
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        if self._loop is not None:
            logger.debug("UpstashBackend: a new event loop, new connections")
            self._client = self._streams = None
            self._feeds = {}
            self._poller = None
            self._poll_wakeup = None
        self._loop = loop

    def _commands(self) -> httpx.AsyncClient:
        self._bind()
        if self._client is None:
            self._client = httpx.AsyncClient(
                verify=_tls(),
                timeout=httpx.Timeout(self._timeout),
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            )
        return self._client

    async def _post(self, path: str, body: list[Any], what: str) -> Any:
        """POST one JSON body; the decoded JSON answer of a 200 or a 400.

        Raises:
            UpstashUnavailable: no answer in time, or any other status.
        """
        try:
            response = await self._commands().post(
                self.url + path,
                content=json.dumps(body),
                headers={**self._headers(), "Content-Type": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise _network_error(exc, what) from exc
        if response.status_code not in (200, 400):
            raise _http_error(response, what)
        sync = response.headers.get("Upstash-Sync-Token")
        if sync:
            self._sync_token = sync
        try:
            return response.json()
        except ValueError as exc:
            raise _http_error(response, what) from exc

    @staticmethod
    def _result(answer: Any) -> Any:
        if not isinstance(answer, Mapping):
            raise UpstashUnavailable(
                f"unexpected answer from Upstash: {answer!r:.{_ERROR_TEXT}}",
                status_code=200,
                error="unexpected answer",
            )
        if "error" in answer:
            raise _refused(str(answer["error"]))
        return _decode(answer.get("result"))

    async def _run(self, script: Script, call: Sequence[Any], keys: int = 3) -> Any:
        """Run one script (one request; two the first time a server meets it)."""
        command = _command(script, call, keys)
        try:
            return self._result(await self._post("/", command, command[0]))
        except _CommandError as exc:
            if not str(exc).startswith(NOSCRIPT):
                raise
        return self._result(await self._post("/", _fallback(script, command), "EVAL"))

    async def _pipeline(self, script: Script, calls: Sequence[Sequence[Any]]) -> list[Any]:
        """Run one three-key script for each of ``calls`` in one ``/pipeline`` request;
        each result, or the `_CommandError` its command answered."""
        commands = [_command(script, call, 3) for call in calls]
        answers = await self._post("/pipeline", commands, "/pipeline")
        if not isinstance(answers, list) or len(answers) != len(commands):
            raise UpstashUnavailable(
                "unexpected /pipeline answer from Upstash", status_code=200, error=str(answers)
            )
        results: list[Any] = []
        for command, answer in zip(commands, answers, strict=True):
            try:
                results.append(self._result(answer))
            except _CommandError as exc:
                if not str(exc).startswith(NOSCRIPT):
                    results.append(exc)
                    continue
                try:
                    again = await self._post("/", _fallback(script, command), "EVAL")
                    results.append(self._result(again))
                except _CommandError as refused:
                    results.append(refused)
        return results

    # --- the Backend protocol -------------------------------------------------

    async def claim(
        self, stream_id: str, token: str, *, ttl: float, lease: float, metadata: bytes = b""
    ) -> StreamStatus | None:
        k = self._wire.keys(stream_id)
        call = Wire.claim_call(k, token, ttl, lease, metadata)
        reply = await self._run(self._scripts.claim, call)
        return self._wire.claimed(stream_id, k, reply)

    async def write(
        self,
        stream_id: str,
        token: str,
        start: int,
        chunks: Sequence[Chunk],
        *,
        end: Ended | None,
        ttl: float,
        finished_ttl: float,
        lease: float,
    ) -> bool:
        k = self._wire.keys(stream_id)
        call = self._wire.write_call(k, token, start, chunks, end, ttl, finished_ttl, lease)
        if end is not None:
            self._wire.ended(stream_id)
        (value,) = await self._run(self._scripts.write, call)
        return write_outcome(stream_id, start, value, _refused)

    async def snapshot(self, stream_id: str, start: int, limit: int) -> Snapshot | None:
        call = Wire.snapshot_call(self._wire.keys(stream_id), start, limit)
        return parse_snapshot(await self._run(self._scripts.snapshot, call))

    async def request_stop(self, stream_id: str) -> bool:
        meta = self._wire.keys(stream_id).meta
        return bool(await self._run(self._scripts.stop, [meta], keys=1))

    async def delete(self, stream_id: str, *, ttl: float) -> bool:
        """Delete the stream, leaving a tombstone for ``ttl`` seconds (see `Deletes`);
        its readers here are rung, re-read, find nothing and ask `deleted`."""
        call = self._wire.delete_call(self._wire.keys(stream_id), ttl)
        return bool(await self._run(self._scripts.delete, call))

    async def deleted(self, stream_id: str) -> bool:
        meta = self._wire.keys(stream_id).meta
        return bool(await self._run(self._scripts.deleted, [meta], keys=1))

    async def status(self, stream_id: str) -> StreamStatus | None:
        return status_of(await self.snapshot(stream_id, 0, 0))

    async def subscribe(self, stream_id: str, *, max_buffered_bytes: int) -> Subscription:
        """Start receiving doorbells for ``stream_id``; returns at once.

        The streaming subscribe is made in the background, so that a reader's first read
        of the list runs beside its handshake instead of after it (a resume costs one
        round trip, not two in a row). Invariant 3 holds all the same: until Upstash
        confirms, no announcement is trusted, and the confirmation rings every reader
        that joined meanwhile, so each re-reads after the subscription became active.
        A reader that joins a live feed needs nothing more; one that joins while the
        feed polls is rung by the next poll that sees a change. If Upstash refuses the
        credentials, the reader's `Subscription.get` raises `UpstashUnavailable`.
        """
        self._bind()
        keys = self._wire.keys(stream_id)
        # ``max_buffered_bytes`` bounds live data; doorbells carry none.
        reader = Subscription(
            keys.events, max_buffered_bytes=_DOORBELL_BUDGET, on_close=self._release
        )
        feed = self._feeds.get(keys.events)
        if feed is None:
            feed = self._feeds[keys.events] = _Feed(keys)
            feed.task = asyncio.create_task(self._follow(feed))
        feed.readers.add(reader)
        return reader

    async def _release(self, sub: Subscription) -> None:
        feed = self._feeds.get(sub.key)
        if feed is None or sub not in feed.readers:
            return
        feed.readers.discard(sub)
        if not feed.readers:
            del self._feeds[sub.key]
            if feed.task is not None:
                feed.task.cancel()  # closes its request; nobody waits for it here

    # --- the live feed --------------------------------------------------------

    def _streaming(self) -> httpx.AsyncClient:
        self._bind()
        if self._streams is None:
            # No read timeout (a quiet stream sends nothing for as long as it likes) and
            # no cap on connections: one per followed stream, as many as readers need.
            self._streams = httpx.AsyncClient(
                verify=_tls(),
                timeout=httpx.Timeout(self._timeout, read=None),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
            )
        return self._streams

    async def _follow(self, feed: _Feed) -> None:
        """Keep ``feed`` subscribed; ring its readers on every message; fall back to
        polling whenever the subscription is down, and try it again with backoff."""
        delay = _RETRY_FIRST
        url = f"{self.url}/subscribe/{quote(feed.channel, safe='')}"
        prefix = f"{feed.channel},"
        loop = asyncio.get_running_loop()
        while True:
            # A response held back (a proxy that buffers it) would never confirm: poll
            # meanwhile, and keep waiting for it.
            watchdog = loop.call_later(self._subscribe_timeout, self._unconfirmed, feed)
            try:
                async with self._streaming().stream(
                    "POST", url, headers={**self._headers(), "Accept": "text/event-stream"}
                ) as response:
                    if response.status_code != 200:
                        await response.aread()
                        raise _http_error(response, "subscribe")
                    async for line in response.aiter_lines():
                        if not line.startswith("data:"):
                            continue  # comments, other fields, or a payload's own lines
                        kind, _, rest = line[5:].lstrip(" ").partition(",")
                        if kind == "message" and feed.live:
                            feed.ring()
                        elif kind == "subscribe" and rest.startswith(prefix):
                            delay = _RETRY_FIRST
                            self._confirmed(feed)
                    raise httpx.RemoteProtocolError("Upstash ended the subscription")
            except asyncio.CancelledError:
                raise
            except UpstashUnavailable as exc:
                if exc.status_code in (401, 403):
                    # Wrong credentials: every other request fails the same way.
                    self._feeds.pop(feed.channel, None)
                    feed.fail(exc)
                    return
                self._lost(feed, exc)
            except (httpx.HTTPError, OSError) as exc:
                self._lost(feed, _network_error(exc, "subscribe"))
            finally:
                watchdog.cancel()
            await asyncio.sleep(delay)  # backoff between attempts, not synchronisation
            delay = min(delay * 2, _RETRY_MAX)

    def _confirmed(self, feed: _Feed) -> None:
        feed.live = True
        feed.lost = False
        feed.observed = None
        # Readers that joined before now may have read the list before now; and after
        # a loss, messages may have been published while it was down.
        feed.ring()

    def _unconfirmed(self, feed: _Feed) -> None:
        if not feed.live and not feed.lost and feed.error is None:
            logger.warning(
                "Upstash did not confirm the subscription to %s within %g s: polling",
                feed.channel, self._subscribe_timeout,
            )
            self._fall_back(feed)

    def _lost(self, feed: _Feed, exc: UpstashUnavailable) -> None:
        if feed.live or not feed.lost:
            logger.warning(
                "Upstash subscription to %s unavailable (%s): readers poll the list",
                feed.channel, exc,
            )
        self._fall_back(feed)

    def _fall_back(self, feed: _Feed) -> None:
        """Readers of ``feed`` poll the list until the subscription is back."""
        was_live = feed.live
        feed.live = False
        feed.lost = True
        if was_live:
            feed.ring()  # a message may have been lost with the connection
        if self._poll_wakeup is None:
            self._poll_wakeup = asyncio.Event()
        self._poll_wakeup.set()  # start at the shortest interval
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        """While some feed is down: read the status and length of each such stream in
        one ``/pipeline`` request, and ring the readers of every one that changed."""
        assert self._poll_wakeup is not None
        wakeup = self._poll_wakeup
        delay = _RETRY_FIRST
        while True:
            wakeup.clear()
            feeds = [f for f in self._feeds.values() if f.lost and f.error is None]
            if not feeds:
                return
            changed = False
            try:
                calls = [Wire.snapshot_call(f.keys, 0, 0) for f in feeds]
                results = await self._pipeline(self._scripts.snapshot, calls)
            except BackendUnavailable as exc:
                logger.debug("polling Upstash failed: %s", exc)
            else:
                for feed, result in zip(feeds, results, strict=True):
                    if isinstance(result, Exception):
                        logger.debug("polling %s failed: %s", feed.channel, result)
                        continue
                    snap = parse_snapshot(result)
                    seen = (snap.status, snap.length, snap.lease_alive) if snap else ("gone",)
                    if seen != feed.observed:
                        changed = changed or feed.observed is not None
                        feed.observed = seen
                        feed.ring()
            delay = _RETRY_FIRST if changed else min(delay * 2, _RETRY_MAX)
            try:
                await asyncio.wait_for(wakeup.wait(), delay)
                delay = _RETRY_FIRST  # a feed was just lost: poll soon
            except asyncio.TimeoutError:
                pass

    async def aclose(self) -> None:
        """Close the subscriptions and connections; readers still following get
        `BackendUnavailable`. The backend opens new connections if used again."""
        tasks = [f.task for f in self._feeds.values() if f.task is not None]
        if self._poller is not None:
            tasks.append(self._poller)
            self._poller = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)  # never re-raises the tasks' CancelledError
        feeds, self._feeds = self._feeds, {}
        error = BackendUnavailable("the backend was closed")
        for feed in feeds.values():
            feed.fail(error)
        for client in (self._client, self._streams):
            if client is not None:
                await client.aclose()
        self._client = self._streams = None
        self._poll_wakeup = None
