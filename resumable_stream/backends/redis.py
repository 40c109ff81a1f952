"""Redis backend: chunks in a list, state in a hash, announcements on pub/sub.

Needs the ``redis`` extra (redis-py >= 5, asyncio client). It takes the user's
``redis.asyncio.Redis`` client and never closes it.

Design notes (facts from ``shared/NOTES.md`` that shaped them):

* One pub/sub connection per backend, shared by every reader of the process, with a
  dispatcher task routing messages to per-reader queues. A connection per reader
  hits redis-py's pool limit at the 101st reader and costs a handshake per resume.
* ``subscribe()`` returns only after the server's confirmation: redis-py's
  ``PubSub.subscribe()`` returns before it, and a chunk announced in between would
  be missed by a reader that reads the list too early.
* Every later confirmation for a channel (redis-py re-subscribes after a reconnect)
  pushes `Resync` to that channel's readers: messages may have been lost meanwhile.
* Commands are capped at half the client's pool size in flight: redis-py's asyncio
  pool raises ``MaxConnectionsError`` instead of waiting, and a burst of 200
  resumes would otherwise exhaust the default pool of 100.
* Writes go through ``write.lua``, capped at ``max_batch_chunks`` values per call
  because ``unpack`` in Lua fails near 8,000 values.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

import msgpack

from .._exceptions import BackendUnavailable, describe
from .._keys import StreamKeys, validate_prefix
from .._subscription import RESYNC, Subscription
from .._types import Appended, Chunk, Ended, Event, Snapshot, StreamStatus
from ._protocol import StaleProducer

try:
    import redis.asyncio as aioredis
    from redis import exceptions as redis_errors
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "the Redis backend needs redis-py: pip install 'resumable-stream[redis]'"
    ) from exc

if TYPE_CHECKING:
    from redis.asyncio.client import PubSub

__all__ = ["RedisBackend"]

logger = logging.getLogger("resumable_stream")

_CONNECTION_ERRORS = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)
_SUBSCRIBE_TIMEOUT = 10.0
_APPEND = msgpack.packb(0)
_END = msgpack.packb(1)


def _lua(name: str) -> str:
    return resources.files(__package__).joinpath("lua").joinpath(name).read_text("utf-8")


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def decode_event(data: bytes) -> Event:
    """Decode one pub/sub message written by ``write.lua``."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    kind = next(unpacker)
    if kind == 0:
        start = next(unpacker)
        return Appended(start, tuple(unpacker))
    status, length, error = unpacker
    return Ended(StreamStatus(status), length, error or None)


class RedisBackend:
    """Streams stored in Redis, readable from any process.

    Args:
        client: a ``redis.asyncio.Redis``. If it decodes responses, a sibling client
            with the same settings but binary replies is made (and closed by `aclose`).
        key_prefix: first part of every key; must not contain ``{`` or ``}``.
    """

    def __init__(self, client: aioredis.Redis, *, key_prefix: str = "resumable-stream") -> None:
        if not isinstance(client, aioredis.Redis):
            raise TypeError(
                f"RedisBackend needs a redis.asyncio.Redis client, not {type(client).__name__}"
            )
        self.key_prefix = validate_prefix(key_prefix)
        self._owned: aioredis.Redis | None = None
        pool = client.connection_pool
        if pool.connection_kwargs.get("decode_responses"):
            kwargs = {**pool.connection_kwargs, "decode_responses": False}
            # from_pool: the new client owns its pool and disconnects it in aclose().
            client = aioredis.Redis.from_pool(
                type(pool)(connection_class=pool.connection_class, **kwargs)
            )
            self._owned = client
        self._client = client
        max_connections = getattr(pool, "max_connections", None) or 100
        self._limit = max(1, min(64, max_connections // 2))
        self._slots: asyncio.Semaphore | None = None
        self._claim = client.register_script(_lua("claim.lua"))
        self._write = client.register_script(_lua("write.lua"))
        self._snapshot = client.register_script(_lua("snapshot.lua"))
        self._stop = client.register_script(_lua("stop.lua"))
        self._packer = msgpack.Packer()
        self._hub = _PubSubHub(client)

    @classmethod
    def from_url(cls, url: str, *, key_prefix: str = "resumable-stream") -> RedisBackend:
        """A backend on a client it makes from ``url`` and closes in `aclose`."""
        backend = cls(aioredis.Redis.from_url(url), key_prefix=key_prefix)
        backend._owned = backend._client
        return backend

    def _keys(self, stream_id: str) -> StreamKeys:
        return StreamKeys(self.key_prefix, stream_id)

    async def _call(self, command: Callable[..., Awaitable[Any]], **kwargs: Any) -> Any:
        """Run one command within the in-flight cap, mapping connection errors."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._limit)
        try:
            async with self._slots:
                return await command(**kwargs)
        except _CONNECTION_ERRORS as exc:
            raise BackendUnavailable(f"Redis unreachable: {exc}") from exc

    async def claim(
        self, stream_id: str, token: str, *, ttl: float, lease: float, metadata: bytes = b""
    ) -> StreamStatus | None:
        k = self._keys(stream_id)
        status = await self._call(
            self._claim,
            keys=[k.meta, k.chunks, k.lease],
            args=[token, _ms(ttl), _ms(lease), metadata],
        )
        return None if status is None else StreamStatus(status.decode())

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
        k = self._keys(stream_id)
        pack = self._packer.pack
        if end is None:
            end_status = end_error = end_message = b""
        else:
            end_status = end.status.value.encode()
            end_error = (end.error or "").encode()
            end_message = (
                _END + pack(end.status.value) + pack(start + len(chunks)) + pack(end.error or "")
            )
        args: list[Any] = [
            token, start, _ms(ttl), _ms(finished_ttl), _ms(lease), k.events,
            end_status, end_error, end_message, _APPEND + pack(start),
        ]
        args.extend(pack(chunk) for chunk in chunks)
        try:
            _, stop = await self._call(self._write, keys=[k.meta, k.chunks, k.lease], args=args)
        except redis_errors.ResponseError as exc:
            if str(exc).startswith("STALE"):
                raise StaleProducer(f"stream {stream_id!r}: {exc}") from exc
            raise
        return bool(stop)

    async def snapshot(self, stream_id: str, start: int, limit: int) -> Snapshot | None:
        k = self._keys(stream_id)
        reply = await self._call(
            self._snapshot, keys=[k.meta, k.chunks, k.lease], args=[start, limit]
        )
        if reply is None:
            return None
        status, error, length, lease, raw, metadata = reply
        unpackb = msgpack.unpackb
        return Snapshot(
            status=StreamStatus(status.decode()),
            length=length,
            chunks=[unpackb(c, raw=False) for c in raw],
            lease_alive=bool(lease),
            error=error.decode() or None,
            metadata=metadata,
        )

    async def request_stop(self, stream_id: str) -> bool:
        stopped = await self._call(self._stop, keys=[self._keys(stream_id).meta], args=[])
        return bool(stopped)

    async def status(self, stream_id: str) -> StreamStatus | None:
        snap = await self.snapshot(stream_id, 0, 0)
        if snap is None:
            return None
        if snap.status is StreamStatus.RUNNING and not snap.lease_alive:
            return StreamStatus.FAILED  # the producer died
        return snap.status

    async def subscribe(self, stream_id: str, *, max_buffered_bytes: int) -> Subscription:
        return await self._hub.subscribe(self._keys(stream_id).events, max_buffered_bytes)

    async def aclose(self) -> None:
        await self._hub.aclose()
        if self._owned is not None:
            await self._owned.aclose()


class _Channel:
    __slots__ = ("confirmed", "error", "subscribers")

    def __init__(self) -> None:
        self.subscribers: set[Subscription] = set()
        self.confirmed = asyncio.Event()
        self.error: BaseException | None = None


class _PubSubHub:
    """One pub/sub connection shared by all readers, and the task that drains it."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._pubsub: PubSub | None = None
        self._task: asyncio.Task[None] | None = None
        self._channels: dict[bytes, _Channel] = {}
        self._lock: asyncio.Lock | None = None

    async def subscribe(self, channel: str, max_buffered_bytes: int) -> Subscription:
        if self._lock is None:
            self._lock = asyncio.Lock()
        name = channel.encode()
        sub = Subscription(channel, max_buffered_bytes=max_buffered_bytes, on_close=self._release)
        record = self._channels.get(name)
        if record is None:
            record = self._channels[name] = _Channel()
            record.subscribers.add(sub)
            try:
                async with self._lock:
                    if self._pubsub is None:
                        self._pubsub = self._client.pubsub()
                    pubsub = self._pubsub
                    await pubsub.subscribe(name)
                    if self._task is None:
                        self._task = asyncio.create_task(self._dispatch(pubsub))
            except _CONNECTION_ERRORS as exc:
                self._drop(name, record)
                raise BackendUnavailable(f"Redis pub/sub unreachable: {exc}") from exc
            except BaseException:
                self._drop(name, record)
                raise
        else:
            record.subscribers.add(sub)
        try:
            await asyncio.wait_for(record.confirmed.wait(), _SUBSCRIBE_TIMEOUT)
        except asyncio.TimeoutError:
            await sub.aclose()
            raise BackendUnavailable("Redis did not confirm the subscription in time") from None
        except BaseException:
            await sub.aclose()
            raise
        if record.error is not None:
            await sub.aclose()
            raise BackendUnavailable(f"Redis pub/sub failed: {record.error}") from record.error
        return sub

    def _drop(self, name: bytes, record: _Channel) -> None:
        if self._channels.get(name) is record:
            del self._channels[name]

    async def _release(self, sub: Subscription) -> None:
        name = sub.key.encode()
        record = self._channels.get(name)
        if record is None or sub not in record.subscribers:
            return
        record.subscribers.discard(sub)
        if record.subscribers:
            return
        del self._channels[name]
        pubsub = self._pubsub
        if pubsub is None or self._lock is None:
            return
        try:
            async with self._lock:
                await pubsub.unsubscribe(name)
        except _CONNECTION_ERRORS as exc:
            # The dispatcher notices a dead connection and fails the remaining readers.
            logger.debug("unsubscribe from %s failed: %s", sub.key, exc)

    async def _dispatch(self, pubsub: PubSub) -> None:
        try:
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is None:
                    continue
                kind = message["type"]
                record = self._channels.get(message["channel"])
                if record is None:
                    continue
                if kind == "message":
                    event = decode_event(message["data"])
                    for sub in record.subscribers:
                        sub.push(event)
                elif kind == "subscribe":
                    if not record.confirmed.is_set():
                        record.confirmed.set()
                    else:
                        # A re-subscription (reconnect): messages may have been lost.
                        for sub in record.subscribers:
                            sub.push(RESYNC)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("Redis pub/sub connection lost: %s", describe(exc))
            error = BackendUnavailable(f"Redis pub/sub connection lost: {exc}")
            channels, self._channels = self._channels, {}
            for record in channels.values():
                record.error = error
                record.confirmed.set()
                for sub in record.subscribers:
                    sub.fail(error)
            self._pubsub = None
            self._task = None
            try:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            except Exception as close_exc:  # the connection is already broken
                logger.debug("closing the broken pub/sub connection: %s", describe(close_exc))

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # never re-raises the task's CancelledError
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        error = BackendUnavailable("the backend was closed")
        for record in self._channels.values():
            for sub in record.subscribers:
                sub.fail(error)
        self._channels.clear()
