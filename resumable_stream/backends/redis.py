"""Redis backend: chunks in a list, state in a hash, announcements on pub/sub.

Needs the ``redis`` extra (redis-py >= 5, asyncio client). It takes the user's
``redis.asyncio.Redis`` client, including a Sentinel-managed one
(``Sentinel(...).master_for(...)``), and never closes it. For a Redis Cluster see
`resumable_stream.backends.cluster`.

Design notes (facts from ``shared/NOTES.md`` that shaped them):

* Live announcements go through a `PubSubHub` (``_pubsub.py``): one pub/sub
  connection per backend shared by every reader of the process, confirmed before
  ``subscribe()`` returns, re-subscribed with a `Resync` after any loss. A connection
  per reader hits redis-py's pool limit at the 101st reader and costs a handshake per
  resume. Behind a Sentinel the connection follows the primary: after a failover it
  reconnects to whichever server the sentinels name.
* Commands are capped at half the client's pool size in flight: redis-py's asyncio
  pool raises ``MaxConnectionsError`` instead of waiting, and a burst of 200
  resumes would otherwise exhaust the default pool of 100.
* Writes go through ``write.lua``, capped at ``max_batch_chunks`` values per call
  because ``unpack`` in Lua fails near 8,000 values. On one server (or behind a
  Sentinel) the writes of every stream of the process are coalesced: whatever was
  asked while the previous batch was on the wire goes out as one pipeline, one round
  trip, on one pooled connection (`_Batcher`; claims go the same way). A call through redis-py's
  ``execute_command`` costs ~50 us of Python (the profile in benchmarks/README.md);
  a pipelined script call a few. A batch is sent without redis-py's automatic retry:
  a resent write could be applied twice, and the producer retries by itself, with
  its index check (``write.lua`` refuses a write that does not start at the stored
  length) telling it whether a lost reply's write landed.
* Every call has a deadline of its own, ``command_timeout`` (2 s): redis-py 5 to 7 set
  no socket timeout by default, and a half-open connection (a dead NAT entry, a frozen
  server) neither answers nor closes, so one pipeline stuck on it would hold every
  stream's writes and renewals for as long as the kernel takes to give up. Past the
  deadline the connection is dropped, never given back with replies unread, the
  callers get `BackendUnavailable` and the next pipeline connects afresh.
* `aclose` fails every call still queued or on the wire with `BackendUnavailable`.
* Scripts run with binary replies whatever the client's ``decode_responses``: chunks
  are msgpack, and the user's client is used as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import math
import sys
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

import anyio
import msgpack

from .._exceptions import BackendUnavailable, InvalidArgument, describe
from .._keys import StreamKeys, validate_prefix
from .._subscription import Subscription
from .._types import Appended, Chunk, Ended, Event, Snapshot, StreamStatus
from ._protocol import StaleProducer

try:
    import redis.asyncio as aioredis
    from redis import exceptions as redis_errors
    from redis.client import NEVER_DECODE
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "the Redis backend needs redis-py: pip install 'resumable-stream[redis]'"
    ) from exc

from ._pubsub import CLASSIC, Dialect, PubSubHub, Router
from ._redis_errors import unavailable

if TYPE_CHECKING:
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.connection import AbstractConnection

__all__ = ["RedisBackend"]

_APPEND = msgpack.packb(0)
_END = msgpack.packb(1)


@functools.lru_cache(maxsize=4096)
def _stream_keys(prefix: str, stream_id: str) -> StreamKeys:
    """A stream's keys, for readers and one-off commands."""
    return StreamKeys(prefix, stream_id)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _lease_ms(seconds: float) -> int:
    """A write's lease in ms; 0 (a released claim) deletes the lease now."""
    return 0 if seconds <= 0 else _ms(seconds)


if sys.version_info >= (3, 11):
    _deadline = asyncio.timeout  # half the cost of anyio's cancel scope, per snapshot
else:  # pragma: no cover - Python 3.10

    @contextlib.asynccontextmanager
    async def _deadline(seconds: float) -> AsyncIterator[None]:
        with anyio.fail_after(seconds):
            yield


COMMAND_TIMEOUT = 2.0  # seconds: the default deadline of one call (``command_timeout``)


def check_timeout(value: float) -> float:
    """``command_timeout``, checked.

    Raises:
        InvalidArgument: not a number > 0 (an infinite one is allowed: no deadline).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidArgument(f"command_timeout must be a number > 0, not {value!r}")
    return float(value)


def _index(value: object) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"not an index: {value!r:.40}")
    return value


def decode_event(data: bytes) -> Event:
    """Decode one pub/sub message written by ``write.lua``.

    Anyone who can ``PUBLISH`` can put anything on a stream's channel, so every field
    is checked: a reader must never see an `Appended` whose start is not an index.

    Raises:
        ValueError: ``data`` is not a message ``write.lua`` writes (msgpack's own
            errors are ValueErrors too).
    """
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    try:
        kind = next(unpacker)
        if kind == 0 and type(kind) is int:
            start = _index(next(unpacker))
            chunks = tuple(unpacker)
            if not chunks or not all(type(c) is str or type(c) is bytes for c in chunks):
                raise ValueError("an append without chunks, or with a chunk of another type")
            return Appended(start, chunks)
        if kind == 1 and type(kind) is int:
            status, length, error = unpacker
            ended = StreamStatus(status)
            if ended is StreamStatus.RUNNING or not isinstance(error, str):
                raise ValueError(f"not an end: {status!r:.40}, {error!r:.40}")
            return Ended(ended, _index(length), error or None)
    except StopIteration:
        raise ValueError("a truncated message") from None
    raise ValueError(f"unknown message kind {kind!r:.40}")


class _Script:
    """One of the Lua scripts, run by SHA with binary replies, loaded on NOSCRIPT
    (a fresh server, or a replica that was just promoted)."""

    def __init__(self, client: aioredis.Redis | RedisCluster, name: str) -> None:
        self._client = client
        self.text = resources.files(__package__).joinpath("lua").joinpath(name).read_text("utf-8")
        self.sha = hashlib.sha1(self.text.encode()).hexdigest()
        # EVALSHA <sha> 3, packed once: a stream's three keys.
        self.head = self.head_for(3)

    def head_for(self, keys: int) -> bytes:
        """``EVALSHA <sha> <keys>`` in RESP, the first three parts of a call."""
        n = str(keys).encode()
        return b"$7\r\nEVALSHA\r\n$40\r\n%s\r\n$%d\r\n%s\r\n" % (
            self.sha.encode(), len(n), n
        )

    async def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        command = ("EVALSHA", self.sha, len(keys), *keys, *args)
        # NEVER_DECODE: binary replies even from a client that decodes responses.
        options: dict[str, Any] = {NEVER_DECODE: []}
        try:
            return await self._client.execute_command(*command, **options)
        except redis_errors.NoScriptError:
            await self._client.script_load(self.text)
            return await self._client.execute_command(*command, **options)


_Call = tuple[bytes, "_Script", Sequence[Any], "asyncio.Future[Any]"]
# A lease renewal: keys, token, stored length, ttl ms, lease ms, the caller's future.
_Renewal = tuple[Sequence[str], str, int, int, int, "asyncio.Future[Any]"]


def _pack(head: bytes, args: Sequence[Any]) -> bytes:
    """One command in RESP after its first arguments, pre-packed in ``head``.

    redis-py's ``pack_command`` costs more than the rest of a batched write (it
    re-joins its buffer once per argument); the arguments here are only bytes,
    str (keys, token, channel: UTF-8) and int.
    """
    parts = [b"*%d\r\n" % (len(args) + 3), head]
    append = parts.append
    for arg in args:
        if type(arg) is not bytes:
            arg = arg.encode() if type(arg) is str else str(int(arg)).encode()
        append(b"$%d\r\n" % len(arg))
        append(arg)
        append(b"\r\n")
    return b"".join(parts)

_MAX_PIPELINE = 512  # script calls per pipeline: bounds one reply's size and latency
_MAX_RENEWALS = 1000  # streams per renew.lua call


class _Batcher:
    """Every stream's claims and writes, coalesced into pipelines, one in flight.

    A call made while a pipeline is on the wire waits for the next one, so the number
    of round trips follows the number of loop turns, not the number of streams; a
    lone slow stream still gets its write sent at once (the next loop turn).
    """

    def __init__(self, client: aioredis.Redis, renew: _Script, command_timeout: float) -> None:
        # One connection at a time, outside the in-flight cap of the other commands
        # (which leaves half the pool free): a crowd of readers' snapshots must never
        # hold up the writes, whose lease renewals keep their streams alive.
        self._pool = client.connection_pool
        self._client = client
        self._renew = renew
        self._queue: list[_Call] = []
        self._renewals: list[_Renewal] = []
        self._sending: list[_Call] = []  # the pipeline on the wire
        self._task: asyncio.Task[None] | None = None
        self._timeout = command_timeout

    def submit(self, script: _Script, args: Sequence[Any]) -> asyncio.Future[Any]:
        """Queue one call of a three-key ``script`` (keys, then arguments); the future
        gets its reply."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((script.head, script, args, future))
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        return future

    def renew(
        self, keys: Sequence[str], token: str, stored: int, ttl: int, lease: int
    ) -> asyncio.Future[Any]:
        """Queue a lease renewal (a write of no chunks); renewals due together go out
        as one ``renew.lua`` call (10,000 idle streams cost a few calls, not 10,000).
        The future gets what ``write.lua`` would answer, or its STALE error."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._renewals.append((keys, token, stored, ttl, lease, future))
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        return future

    def _renewal_calls(self) -> list[_Call]:
        """The queued renewals as ``renew.lua`` calls, by expiry settings, each call's
        future fanning its reply out to the renewals' own."""
        groups: dict[tuple[int, int], list[_Renewal]] = {}
        for renewal in self._renewals:
            if not renewal[5].done():
                groups.setdefault((renewal[3], renewal[4]), []).append(renewal)
        self._renewals.clear()
        calls: list[_Call] = []
        loop = asyncio.get_running_loop()
        for (ttl, lease), group in groups.items():
            for first in range(0, len(group), _MAX_RENEWALS):
                part = group[first : first + _MAX_RENEWALS]
                args: list[Any] = [key for renewal in part for key in renewal[0]]
                args += [ttl, lease]
                for renewal in part:
                    args += [renewal[1], renewal[2]]
                future: asyncio.Future[Any] = loop.create_future()
                future.add_done_callback(functools.partial(_fan_out, renewals=part))
                calls.append((self._renew.head_for(3 * len(part)), self._renew, args, future))
        return calls

    async def aclose(self) -> None:
        """Stop sending; callers of queued calls and of the pipeline on the wire get
        `BackendUnavailable` (a call on the wire may have been applied all the same)."""
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        try:
            while self._queue or self._renewals:
                calls = self._queue[:_MAX_PIPELINE]
                del self._queue[:_MAX_PIPELINE]
                calls = [call for call in calls if not call[3].done()]  # cancelled callers
                if self._renewals:
                    calls += self._renewal_calls()
                if calls:
                    self._sending = calls
                    await self._send(calls)
                    self._sending = []
        except BaseException as exc:
            # Cancelled (aclose) or a bug: nobody may wait forever on a call, queued or
            # on the wire (a renewal call's future fans the error out to its renewals).
            futures = [call[3] for call in self._sending + self._queue]
            futures += [r[5] for r in self._renewals]
            error = "the backend was closed" if isinstance(exc, asyncio.CancelledError) else (
                f"writes stopped: {exc!r}"
            )
            for future in futures:
                if not future.done():
                    future.set_exception(BackendUnavailable(error))
            self._sending = []
            self._queue.clear()
            self._renewals.clear()
            raise
        finally:
            self._task = None

    async def _send(self, calls: list[_Call]) -> None:
        try:
            # The deadline of this pipeline, whatever the client's socket timeout (none
            # by default): a half-open connection neither answers nor closes, and every
            # stream's writes and renewals wait behind the one pipeline in flight. Past
            # it the connection is dropped (`_pipeline`), its callers get
            # `BackendUnavailable` (the producer retries; write.lua's index check tells
            # it whether the write landed) and the next pipeline connects afresh.
            with anyio.fail_after(self._timeout):
                replies = await self._pipeline(calls)
                missing = [
                    n for n, r in enumerate(replies) if isinstance(r, redis_errors.NoScriptError)
                ]
                if missing:
                    # A fresh server or a promoted replica: nothing ran; load and resend.
                    for script in {calls[n][1] for n in missing}:
                        await self._client.script_load(script.text)
                    again = await self._pipeline([calls[n] for n in missing])
                    for n, reply in zip(missing, again, strict=True):
                        replies[n] = reply
        except TimeoutError as exc:
            error: BaseException = BackendUnavailable(
                f"Redis did not answer within {self._timeout:g} s (command_timeout)"
            )
            error.__cause__ = exc
            for call in calls:
                if not call[3].done():
                    call[3].set_exception(error)
            return
        except Exception as exc:
            error = exc
            if unavailable(exc):
                error = BackendUnavailable(f"Redis unavailable: {describe(exc)}")
                error.__cause__ = exc
            for call in calls:
                if not call[3].done():
                    call[3].set_exception(error)
            return
        for (_, _, _, future), reply in zip(calls, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _pipeline(self, calls: list[_Call]) -> list[Any]:
        """Send the calls back to back, then read every reply (an error reply is
        returned in its place, so one refused write does not fail the others)."""
        connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            packed = b"".join([_pack(head, args) for head, _, args, _ in calls])
            # One deadline (`_send`'s) bounds the whole pipeline, not each reply: a timer
            # per reply costs more than reading it.
            await connection.send_packed_command(packed, check_health=False)
            replies: list[Any] = []
            read = connection.read_response
            for _ in calls:
                try:
                    replies.append(await read(disable_decoding=True, timeout=math.inf))
                except redis_errors.ResponseError as exc:
                    replies.append(exc)
            return replies
        except BaseException:
            # Replies may be left unread on the socket: never give it back as it is.
            await connection.disconnect(nowait=True)
            raise
        finally:
            await self._pool.release(connection)


def _fan_out(reply: asyncio.Future[Any], renewals: list[_Renewal]) -> None:
    """Hand each renewal its part of a ``renew.lua`` reply, in ``write.lua``'s terms."""
    error: BaseException | None = (
        BackendUnavailable("renewal cancelled") if reply.cancelled() else reply.exception()
    )
    for n, (_, _, stored, _, _, future) in enumerate(renewals):
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        elif (code := reply.result()[n]) >= 0:
            future.set_result([stored, code])
        elif code == -1:
            future.set_exception(
                redis_errors.ResponseError("STALE not the producer of a running stream")
            )
        else:
            future.set_exception(
                redis_errors.ResponseError(f"STALE renewal at {stored}: stored length differs")
            )


def _write_error(stream_id: str, exc: redis_errors.ResponseError) -> Exception:
    """What a refused ``write.lua`` call means to the producer."""
    if str(exc).startswith("STALE"):
        return StaleProducer(f"stream {stream_id!r}: {exc}")
    if unavailable(exc):
        return BackendUnavailable(f"Redis unavailable: {describe(exc)}")
    return exc


class _ServerRouter:
    """Classic pub/sub on one server, or on whichever primary the sentinels name."""

    dialect: Dialect = CLASSIC

    def __init__(self, client: aioredis.Redis) -> None:
        self._pool = client.connection_pool

    async def locate(self, channel: bytes) -> str:
        return ""  # one server announces everything

    def connection(self, server: str) -> AbstractConnection:
        # A connection of the client's kind (a Sentinel pool's asks the sentinels for
        # the primary whenever it connects), owned by the hub, outside the pool.
        connection: AbstractConnection = self._pool.make_connection()  # type: ignore[no-untyped-call]
        return connection

    async def refresh(self) -> None:
        pass  # the connection finds the current primary by itself


class RedisBackend:
    """Streams stored in Redis, readable from any process.

    Args:
        client: a ``redis.asyncio.Redis`` (plain or Sentinel-managed), used as it is
            (``decode_responses`` does not matter) and never closed here.
        key_prefix: first part of every key; must not contain ``{`` or ``}``.
        command_timeout: seconds any one call may take (a pipeline of claims, writes
            and renewals; a snapshot; a stop), whatever the client's socket timeout.
            Past it the connection is dropped, never reused, and the call raises
            `BackendUnavailable`: one half-open connection holds the other streams
            up for at most this long.

    Raises:
        TypeError: ``client`` is not a ``redis.asyncio.Redis``.
        InvalidArgument: a bad ``key_prefix``, or ``command_timeout`` not > 0.
    """

    _publish = "PUBLISH"
    _batcher: _Batcher | None

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        key_prefix: str = "resumable-stream",
        command_timeout: float = COMMAND_TIMEOUT,
    ) -> None:
        if not isinstance(client, aioredis.Redis):
            raise TypeError(
                f"RedisBackend needs a redis.asyncio.Redis client, not {type(client).__name__}"
            )
        max_connections = getattr(client.connection_pool, "max_connections", None)
        self._setup(client, key_prefix, _ServerRouter(client), max_connections, command_timeout)
        self._batcher = _Batcher(client, _Script(client, "renew.lua"), self._timeout)

    def _setup(
        self,
        client: aioredis.Redis | RedisCluster,
        key_prefix: str,
        router: Router,
        max_connections: int | None,
        command_timeout: float,
    ) -> None:
        """What every Redis flavour shares: scripts, in-flight cap, the pub/sub hub."""
        self.key_prefix = validate_prefix(key_prefix)
        self._timeout = check_timeout(command_timeout)
        self._client = client
        self._owned: aioredis.Redis | RedisCluster | None = None
        self._limit = max(1, min(64, (max_connections or 100) // 2))
        self._slots: asyncio.Semaphore | None = None
        self._claim = _Script(client, "claim.lua")
        self._write = _Script(client, "write.lua")
        self._snapshot = _Script(client, "snapshot.lua")
        self._stop = _Script(client, "stop.lua")
        self._packer = msgpack.Packer()
        self._hub = PubSubHub(router, decode_event)
        # Cluster pipelines split by slot and retry by themselves: writes go one by one.
        self._batcher = None
        # Keys of the streams this process produces, made once: a write's other
        # arguments cost less than escaping the id again (module-level LRU for the rest).
        self._live: dict[str, StreamKeys] = {}

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str = "resumable-stream",
        command_timeout: float = COMMAND_TIMEOUT,
    ) -> RedisBackend:
        """A backend on a client it makes from ``url`` and closes in `aclose`."""
        check_timeout(command_timeout)  # before a client exists that nobody would close
        backend = cls(
            aioredis.Redis.from_url(url), key_prefix=key_prefix, command_timeout=command_timeout
        )
        backend._owned = backend._client
        return backend

    async def _ready(self) -> None:
        """Before every command: nothing to prepare on one server."""

    def _keys(self, stream_id: str) -> StreamKeys:
        keys = self._live.get(stream_id)
        return keys if keys is not None else _stream_keys(self.key_prefix, stream_id)

    def _slot(self) -> asyncio.Semaphore:
        """The in-flight cap, made inside the running loop."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._limit)
        return self._slots

    async def _call(self, script: _Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one script within the in-flight cap and ``command_timeout``, mapping
        unavailability. redis-py disconnects a connection whose command is cancelled
        half way, so a call past its deadline never leaves a reply on a pooled one."""
        try:
            async with self._slot(), _deadline(self._timeout):
                await self._ready()
                return await script(keys, args)
        except TimeoutError as exc:
            raise BackendUnavailable(
                f"Redis did not answer within {self._timeout:g} s (command_timeout)"
            ) from exc
        except Exception as exc:
            if unavailable(exc):
                raise BackendUnavailable(f"Redis unavailable: {describe(exc)}") from exc
            raise

    async def claim(
        self, stream_id: str, token: str, *, ttl: float, lease: float, metadata: bytes = b""
    ) -> StreamStatus | None:
        k = self._keys(stream_id)
        keys, args = [k.meta, k.chunks, k.lease], [token, _ms(ttl), _ms(lease), metadata]
        if self._batcher is not None:
            try:
                status = await self._batcher.submit(self._claim, [*keys, *args])
            except redis_errors.ResponseError as exc:
                if unavailable(exc):
                    raise BackendUnavailable(f"Redis unavailable: {describe(exc)}") from exc
                raise
        else:
            status = await self._call(self._claim, keys, args)
        if status is None:
            self._live[stream_id] = k  # until its end is written
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
        keys = [k.meta, k.chunks, k.lease]
        # First: a chunk msgpack cannot encode (a str with a lone surrogate) raises
        # here, before anything was sent, as in `write_soon`.
        args = self._write_args(k, token, start, chunks, end, ttl, finished_ttl, lease)
        if end is not None:
            self._live.pop(stream_id, None)  # the last write of this producer
        try:
            if self._batcher is not None and not chunks and end is None:
                _, stop = await self._batcher.renew(keys, token, start, _ms(ttl), _lease_ms(lease))
            elif self._batcher is not None:
                _, stop = await self._batcher.submit(self._write, [*keys, *args])
            else:
                _, stop = await self._call(self._write, keys, args)
        except redis_errors.ResponseError as exc:
            error = _write_error(stream_id, exc)
            if error is exc:
                raise
            raise error from exc
        return bool(stop)

    def _write_args(
        self,
        k: StreamKeys,
        token: str,
        start: int,
        chunks: Sequence[Chunk],
        end: Ended | None,
        ttl: float,
        finished_ttl: float,
        lease: float,
    ) -> list[Any]:
        """``write.lua``'s arguments after its keys (see the script's header)."""
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
            token, start, _ms(ttl), _ms(finished_ttl), _lease_ms(lease), k.events,
            end_status, end_error, end_message, _APPEND + pack(start), self._publish,
        ]
        args.extend(pack(chunk) for chunk in chunks)
        return args

    def write_soon(
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
    ) -> asyncio.Future[bool] | None:
        """`write`, queued for the next pipeline without a task of its own (see
        `Backend`); None on a cluster, whose writes go one by one."""
        if self._batcher is None or end is not None:
            return None
        k = self._keys(stream_id)
        args = self._write_args(k, token, start, chunks, None, ttl, finished_ttl, lease)
        reply = self._batcher.submit(self._write, [k.meta, k.chunks, k.lease, *args])
        result: asyncio.Future[bool] = reply.get_loop().create_future()

        def done(reply: asyncio.Future[Any]) -> None:
            if result.done():
                return
            if reply.cancelled():
                result.cancel()
                return
            exc = reply.exception()
            if exc is None:
                result.set_result(bool(reply.result()[1]))
            elif isinstance(exc, redis_errors.ResponseError):
                result.set_exception(_write_error(stream_id, exc))
            else:
                result.set_exception(exc)

        reply.add_done_callback(done)
        return result

    async def snapshot(self, stream_id: str, start: int, limit: int) -> Snapshot | None:
        k = self._keys(stream_id)
        reply = await self._call(self._snapshot, [k.meta, k.chunks, k.lease], [start, limit])
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
        stopped = await self._call(self._stop, [self._keys(stream_id).meta], [])
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
        if self._batcher is not None:
            await self._batcher.aclose()
        await self._hub.aclose()
        if self._owned is not None:
            await self._owned.aclose()
