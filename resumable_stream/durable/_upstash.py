"""Durable Streams on Upstash (or Vercel KV) over its REST API, for hosts without TCP.

The keys and scripts of `RedisStorage` (so one database can be served over TCP and REST
at once), through Upstash's documented HTTP API with httpx:

* commands and scripts: ``POST /`` with a JSON array, replies under
  ``Upstash-Encoding: base64`` (every string base64, but the status ``OK``); script
  arguments travel base64 too and the backends' ``lua/rest_args.lua``, put before each script,
  decodes them (a JSON body cannot carry bytes that are not UTF-8). ``EVALSHA`` first,
  ``EVAL`` on ``NOSCRIPT``.
* announcements: the streaming subscribe, ``POST /subscribe/<channel>`` (server-sent
  events ``data: subscribe,<channel>,<n>`` once confirmed, then
  ``data: message,<channel>,<payload>``): one per process.

Every request has a deadline (``command_timeout``); past it, or on a status other than
200 and 400, the call raises `BackendUnavailable` (HTTP 503).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any
from urllib.parse import quote

from .._exceptions import BackendUnavailable

# The REST encoding of the backend's own Upstash wire: one copy of it.
from ..backends.upstash import _arg
from ..backends.upstash import _decode as _decoded
from ._redis import COMMAND_TIMEOUT, DEFAULT_RETENTION, SCRIPTS, ScriptedStorage, lua

__all__ = ["UpstashStorage"]


class UpstashStorage(ScriptedStorage):
    """Streams in an Upstash database, over its REST API.

    Args:
        url: the database's REST URL (``UPSTASH_REDIS_REST_URL``).
        token: its REST token (``UPSTASH_REDIS_REST_TOKEN``).
        key_prefix: first part of every key and of the announcement channel.
        retention: seconds a stream with neither TTL nor Expires-At lives after its
            last write.
        command_timeout: seconds any one request may take.

    Raises:
        InvalidArgument: a bad duration.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        key_prefix: str = "ds",
        retention: float = DEFAULT_RETENTION,
        command_timeout: float = COMMAND_TIMEOUT,
    ) -> None:
        super().__init__(
            key_prefix=key_prefix, retention=retention, command_timeout=command_timeout
        )
        import httpx

        self.url = url.rstrip("/")
        self._auth = {"Authorization": f"Bearer {token}", "Upstash-Encoding": "base64"}
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(command_timeout))
        self._streams = httpx.AsyncClient(timeout=httpx.Timeout(command_timeout, read=None))
        backend_lua = resources.files("resumable_stream.backends") / "lua"
        prelude = (backend_lua / "rest_args.lua").read_text(encoding="utf-8")
        self._scripts = {}
        for name in SCRIPTS:
            text = prelude + "\n" + lua(f"{name}.lua")
            self._scripts[name] = (text, hashlib.sha1(text.encode()).hexdigest())

    async def _command(self, command: list[Any]) -> Any:
        """One command; its decoded result. A command error raises `_CommandError`."""
        import httpx

        try:
            response = await self._client.post(
                self.url,
                content=json.dumps(command),
                headers={**self._auth, "Content-Type": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"Upstash unreachable: {exc!r}") from exc
        if response.status_code not in (200, 400):
            raise BackendUnavailable(f"Upstash answered {response.status_code}")
        try:
            answer = response.json()
        except ValueError as exc:
            raise BackendUnavailable("Upstash answered no JSON") from exc
        if "error" in answer:
            raise _CommandError(str(answer["error"]))
        return _decoded(answer.get("result"))

    async def _hmget(self, key: str, fields: list[str]) -> list[bytes | None]:
        reply: list[bytes | None] = await self._command(["HMGET", key, *fields])
        return reply

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        text, sha = self._scripts[name]
        tail = [str(len(keys)), *keys, *(_arg(a) for a in args)]
        try:
            return await self._command(["EVALSHA", sha, *tail])
        except _CommandError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise BackendUnavailable(f"Upstash: {exc}") from exc
        try:
            return await self._command(["EVAL", text, *tail])
        except _CommandError as exc:
            raise BackendUnavailable(f"Upstash: {exc}") from exc

    async def _messages(self) -> AsyncIterator[bytes | None]:
        url = f"{self.url}/subscribe/{quote(self._channel, safe='')}"
        prefix = f"{self._channel},"
        async with self._streams.stream(
            "POST", url, headers={**self._auth, "Accept": "text/event-stream"}
        ) as response:
            if response.status_code != 200:
                raise BackendUnavailable(f"Upstash subscribe answered {response.status_code}")
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                kind, _, rest = line[5:].lstrip(" ").partition(",")
                if kind == "subscribe" and rest.startswith(prefix):
                    yield None
                elif kind == "message" and rest.startswith(prefix):
                    yield rest[len(prefix) :].encode("utf-8", "surrogateescape")

    async def aclose(self) -> None:
        """Stop the subscription and close the HTTP clients."""
        await self._stop_feed()
        await self._client.aclose()
        await self._streams.aclose()


class _CommandError(Exception):
    """Upstash answered the command with an error (HTTP 400)."""
