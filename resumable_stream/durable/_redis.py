"""Durable Streams in Redis: every process serves the same streams.

Per stream, two keys in one hash slot (the path is the hash tag, so Redis Cluster keeps
them together): a hash with the version, the stream id and the metadata JSON, and a
sorted set of items scored by start position. ``lua/commit.lua`` is the compare-and-set
of the storage contract; ``lua/read.lua`` reads metadata and items in one step.

Announcements: every commit publishes the stream's path on one channel per key prefix.
Each process holds one subscription to it (not one per reader: the connection pool
would run out, and each resume would pay a handshake), confirmed before any reader
relies on it, and wakes its local waiters by path. When the subscription breaks, every
waiter is woken to re-read, and it is made again.

Every key carries an expiry: the stream's own (TTL or Expires-At), else ``retention``
seconds after its last write. Every Redis call has a deadline (``command_timeout``);
past it, or when Redis is unreachable, the call raises `BackendUnavailable` (HTTP 503).

Two transports share all of this: `RedisStorage` (redis-py, over TCP) and
`UpstashStorage` (Upstash's REST API, in ``_upstash.py``): same keys, same scripts, so
one database can be served both ways.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib import resources
from typing import Any, TypeVar

from .._exceptions import BackendUnavailable, InvalidArgument
from ._model import Item, StreamMeta
from ._storage import Watch, Watchers, expiry_ms

__all__ = ["RedisStorage", "ScriptedStorage"]

T = TypeVar("T")
logger = logging.getLogger(__name__)
DEFAULT_RETENTION = 7 * 24 * 3600.0
COMMAND_TIMEOUT = 5.0
RECONNECT_DELAY = 0.5
SCRIPTS = ("commit", "read", "touch")


def lua(name: str) -> str:
    return (resources.files(__package__) / "lua" / name).read_text(encoding="utf-8")


class ScriptedStorage(abc.ABC):
    """The storage contract over a Redis-like server; subclasses bring the transport:
    `_hmget`, `_script` (one of `SCRIPTS`), and `_messages` (the subscription)."""

    def __init__(self, *, key_prefix: str, retention: float, command_timeout: float) -> None:
        if not retention > 0 or not command_timeout > 0:
            raise InvalidArgument("retention and command_timeout must be > 0 seconds")
        self.key_prefix = key_prefix
        self._retention = retention
        self._timeout = command_timeout
        self._channel = f"{key_prefix}:ds:changed"
        self._watchers = Watchers()
        self._feed: asyncio.Task[None] | None = None
        self._feed_ready: asyncio.Future[None] | None = None

    # -- the transport ----------------------------------------------------------------

    @abc.abstractmethod
    async def _hmget(self, key: str, fields: list[str]) -> list[bytes | None]:
        """HMGET, within the deadline."""

    @abc.abstractmethod
    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run ``lua/<name>.lua``, within the deadline."""

    @abc.abstractmethod
    def _messages(self) -> AsyncIterator[bytes | None]:
        """The subscription to the channel: None once confirmed, then each message."""

    # -- the contract -----------------------------------------------------------------

    def _keys(self, path: str) -> list[str]:
        base = f"{self.key_prefix}:ds:{{{path}}}"
        return [f"{base}:m", f"{base}:i"]

    async def load(self, path: str) -> StreamMeta | None:
        version, raw = await self._hmget(self._keys(path)[0], ["v", "m"])
        if version is None or raw is None:
            return None
        return StreamMeta.loads(raw, int(version))

    async def read(
        self, path: str, start: int, max_items: int
    ) -> tuple[StreamMeta | None, list[Item]]:
        reply = await self._script("read", self._keys(path), [start, max_items])
        if not reply:
            return None, []
        version, raw, first, rest = reply
        if version is None or raw is None:
            return None, []
        items = [Item.decode(m) for m in (*first, *rest)]
        return StreamMeta.loads(raw, int(version)), items

    async def commit(
        self,
        path: str,
        expected_version: int,
        meta: StreamMeta | None,
        items: Sequence[Item] = (),
        *,
        expected_id: str = "",
    ) -> bool:
        now = int(time.time() * 1000)
        if meta is None:
            args: list[Any] = [expected_version, b"", expected_id, now, self._channel, path, 0]
        else:
            expires = expiry_ms(meta, now, self._retention)
            assert expires is not None  # retention is never None here
            args = [expected_version, meta.dumps(), meta.id, expires, self._channel, path]
            args.append(meta.first)
            for item in items:
                args.append(item.start)
                args.append(item.encode())
        return bool(await self._script("commit", self._keys(path), args))

    async def touch(self, path: str, meta: StreamMeta) -> None:
        if meta.ttl is None:
            return
        await self._script("touch", self._keys(path), [meta.id, meta.ttl * 1000])

    def watch(self, path: str) -> AbstractAsyncContextManager[Watch]:
        return self._watch(path)

    @asynccontextmanager
    async def _watch(self, path: str) -> AsyncIterator[Watch]:
        await self._ensure_feed()
        async with self._watchers.watch(path) as watch:
            yield watch

    async def _ensure_feed(self) -> None:
        """Start the process's subscription once; return when it is confirmed."""
        if self._feed is None or self._feed.done():
            self._feed_ready = asyncio.get_running_loop().create_future()
            self._feed = asyncio.create_task(self._run_feed(self._feed_ready))
        assert self._feed_ready is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._feed_ready), self._timeout)
        except asyncio.TimeoutError:
            raise BackendUnavailable("the subscription was not confirmed in time") from None

    async def _run_feed(self, ready: asyncio.Future[None]) -> None:
        """Wake local waiters for every announced path, for as long as the store lives."""
        while True:
            try:
                async for message in self._messages():
                    if message is None:
                        if not ready.done():
                            ready.set_result(None)
                        # (Re)subscribed: what was announced meanwhile is re-read by all.
                        self._watchers.wake_all()
                    else:
                        self._watchers.wake(message.decode("utf-8", "surrogateescape"))
                raise ConnectionError("the subscription ended")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("durable streams: subscription lost, re-subscribing: %r", exc)
                # Waiters re-read now (their wait is bounded anyway); subscribe again.
                self._watchers.wake_all()
                await asyncio.sleep(RECONNECT_DELAY)  # backoff, not synchronisation

    async def _stop_feed(self) -> None:
        if self._feed is not None:
            self._feed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feed
            self._feed = None
        self._watchers.wake_all()

    async def aclose(self) -> None:
        await self._stop_feed()


class RedisStorage(ScriptedStorage):
    """Streams in Redis (plain, Sentinel-managed, or Redis Cluster).

    Args:
        client: a ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster`` with
            ``decode_responses=False``; used as it is and never closed here (unless made
            by `from_url`).
        key_prefix: first part of every key and of the announcement channel.
        retention: seconds a stream with neither TTL nor Expires-At lives after its
            last write.
        command_timeout: seconds any one Redis call may take.

    Raises:
        InvalidArgument: a client that decodes responses, or a bad duration.
    """

    def __init__(
        self,
        client: Any,
        *,
        key_prefix: str = "ds",
        retention: float = DEFAULT_RETENTION,
        command_timeout: float = COMMAND_TIMEOUT,
    ) -> None:
        kwargs: dict[str, Any] = getattr(client, "get_connection_kwargs", dict)()
        if kwargs.get("decode_responses"):
            raise InvalidArgument("RedisStorage needs a client with decode_responses=False")
        super().__init__(
            key_prefix=key_prefix, retention=retention, command_timeout=command_timeout
        )
        self._client = client
        self._owned: Any = None
        self._scripts = {name: client.register_script(lua(f"{name}.lua")) for name in SCRIPTS}

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStorage:
        """A store on a client made from ``url`` (closed by `aclose`)."""
        from redis.asyncio import Redis

        client = Redis.from_url(url, socket_timeout=options.get("command_timeout", COMMAND_TIMEOUT))
        storage = cls(client, **options)
        storage._owned = client
        return storage

    async def _call(self, call: Awaitable[T]) -> T:
        from redis import exceptions

        try:
            return await asyncio.wait_for(call, self._timeout)
        except asyncio.TimeoutError:
            raise BackendUnavailable(f"Redis did not answer in {self._timeout} s") from None
        except (exceptions.ConnectionError, exceptions.TimeoutError, OSError) as exc:
            raise BackendUnavailable(f"Redis unavailable: {exc}") from exc

    async def _hmget(self, key: str, fields: list[str]) -> list[bytes | None]:
        reply: list[bytes | None] = await self._call(self._client.hmget(key, fields))
        return reply

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return await self._call(self._scripts[name](keys=keys, args=args))

    async def _messages(self) -> AsyncIterator[bytes | None]:
        pubsub = self._client.pubsub()
        try:
            await asyncio.wait_for(pubsub.subscribe(self._channel), self._timeout)
            # subscribe() returns before the server confirms: wait for the reply, or a
            # commit announced in between would be missed.
            while True:
                message = await asyncio.wait_for(
                    pubsub.get_message(timeout=self._timeout), self._timeout + 1
                )
                if message is not None and message["type"] == "subscribe":
                    break
            yield None
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None and message["type"] == "message":
                    data = message["data"]
                    yield data if isinstance(data, bytes) else str(data).encode()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pubsub.aclose(), self._timeout)

    async def aclose(self) -> None:
        """Stop the subscription; close the client if `from_url` made it."""
        await self._stop_feed()
        if self._owned is not None:
            await self._owned.aclose()
            self._owned = None
