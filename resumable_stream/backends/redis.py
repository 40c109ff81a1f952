"""Redis backend: chunks in a list, state in a hash, announcements on pub/sub.

Needs the ``redis`` extra (redis-py >= 5, asyncio client). It takes the user's
``redis.asyncio.Redis`` client, including a Sentinel-managed one
(``Sentinel(...).master_for(...)``), and never closes it. For a Redis Cluster see
`resumable_stream.backends.cluster`.

Design notes (and the measured facts that shaped them):

* Live announcements go through a `PubSubHub` (``_pubsub.py``): one pub/sub
  connection per backend shared by every reader of the process, confirmed before
  ``subscribe()`` returns, re-subscribed with a `Resync` after any loss. A connection
  per reader hits redis-py's pool limit at the 101st reader and costs a handshake per
  resume. Behind a Sentinel the connection follows the primary: after a failover it
  reconnects to whichever server the sentinels name.
* Commands are capped at half the client's pool size in flight: redis-py's asyncio
  pool raises ``MaxConnectionsError`` instead of waiting, and a burst of 200
  resumes would otherwise exhaust the default pool of 100.
* Writes go through ``write.lua``, capped at ``max_batch_chunks`` values per stream
  because ``unpack`` in Lua fails near 8,000 values. On one server (or behind a
  Sentinel) the writes of every stream of the process are coalesced: whatever was
  asked while the previous batch was on the wire goes out as one pipeline, one round
  trip, on one pooled connection (`_Batcher`; claims go the same way), and its writes
  (chunks, ends, lease renewals) as one ``write.lua`` call of up to 1,000 streams, which
  answers each stream on its own. A call through redis-py's ``execute_command`` costs
  ~50 us of Python (the profile in benchmarks/README.md); a stream's part of a shared
  call a few. A batch is sent without redis-py's automatic retry:
  a resent write could be applied twice, and the producer retries by itself, with
  its index check (``write.lua`` refuses a write that does not start at the stored
  length) telling it whether a lost reply's write landed.
* Every call has a deadline of its own, ``command_timeout`` (2 s): redis-py 5 to 7 set
  no socket timeout by default, and a half-open connection (a dead NAT entry, a frozen
  server) neither answers nor closes, so one pipeline stuck on it would hold every
  stream's writes and renewals for as long as the kernel takes to give up. Past the
  deadline the connection is dropped, never given back with replies unread, the
  callers get `BackendUnavailable` and the next pipeline connects afresh.
* A snapshot is ``snapshot.lua`` for the stream's state and, in the same ``MULTI``,
  an ``LRANGE`` of the page, when hiredis parses the replies: inside Lua each of a
  page's elements is copied into a Lua string and back (717 against 81 us of server
  time for 2,000). Over ``maxmemory`` Redis refuses anything queued in a ``MULTI``,
  so such a read goes through the script alone, as it does where redis-py's own
  parser reads (~2 us of Python per element: the script joins the page into one).
* `aclose` fails every call still queued or on the wire with `BackendUnavailable`.
* Scripts run with binary replies whatever the client's ``decode_responses``: chunks
  are msgpack, and the user's client is used as it is.
* What goes on the wire (keys, script arguments, replies, pub/sub messages) is
  ``_wire.py``'s, shared with the cluster and Upstash backends; this module only
  carries it: pipelines (`_Batcher`) and calls one by one (`_Calls`, which the cluster
  backend holds too).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from .._exceptions import BackendUnavailable, InvalidArgument, describe
from .._subscription import Subscription
from .._types import Chunk, Ended, Snapshot, StreamStatus

try:
    import redis.asyncio as aioredis
    from redis import exceptions as redis_errors
    from redis._parsers.base import BaseParser
    from redis.client import NEVER_DECODE
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "the Redis backend needs redis-py: pip install 'resumable-streams[redis]'"
    ) from exc

from ._pubsub import CLASSIC, Dialect, PubSubHub
from ._redis_errors import unavailable
from ._wire import (
    Script,
    Wire,
    WritePart,
    decode_event,
    parse_snapshot,
    scripts,
    status_of,
    write_outcome,
)
from ._wire import pack_call as _pack

if TYPE_CHECKING:
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.connection import AbstractConnection

__all__ = ["RedisBackend"]

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


class _Calls:
    """Script calls one at a time through redis-py's ``execute_command``.

    `RedisBackend` reads this way (snapshots, stops); `RedisClusterBackend` makes every
    call this way, redis-py routing each to the master of its slot. Each call runs
    within the in-flight cap and ``command_timeout``, with binary replies, its script
    loaded on NOSCRIPT (a fresh server, or a replica that was just promoted).

    Args:
        client: the user's client.
        max_connections: its pool's size (None: redis-py's default, 100); half of it,
            at most 64, is the in-flight cap (redis-py's asyncio pool raises
            ``MaxConnectionsError`` instead of waiting for a free connection).
        timeout: ``command_timeout``, checked.
        ready: awaited before every command, inside the deadline (the cluster's
            ``initialize``).
    """

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        *,
        max_connections: int | None,
        timeout: float,
        ready: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self._client = client
        self._limit = max(1, min(64, (max_connections or 100) // 2))
        self._slots: asyncio.Semaphore | None = None  # made inside the running loop
        self._timeout = timeout
        self._ready = ready

    async def __call__(self, script: Script, call: Sequence[Any], keys: int = 3) -> Any:
        """Run ``script`` on ``call``, its first ``keys`` parts the keys; its reply.

        redis-py disconnects a connection whose command is cancelled half way, so a
        call past its deadline never leaves a reply on a pooled one.

        Raises:
            BackendUnavailable: no answer within ``command_timeout``, or Redis cannot
                serve the call now.
            redis.exceptions.ResponseError: the script refused (``STALE ...``).
        """
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._limit)
        try:
            async with self._slots, _deadline(self._timeout):
                if self._ready is not None:
                    await self._ready()
                command = ("EVALSHA", script.sha, keys, *call)
                # NEVER_DECODE: binary replies even from a client that decodes responses.
                options: dict[str, Any] = {NEVER_DECODE: []}
                try:
                    return await self._client.execute_command(*command, **options)
                except redis_errors.NoScriptError:
                    await self._client.script_load(script.text)
                    return await self._client.execute_command(*command, **options)
        except Exception as exc:
            error = _failure(exc, self._timeout)
            if error is exc:
                raise
            raise error from exc

    async def transaction(self, script: Script, packed: bytes, queued: int) -> list[Any]:
        """``packed`` (``MULTI``, ``queued`` commands, ``EXEC``) on a pooled connection
        of a plain client, within the cap and ``command_timeout``; ``EXEC``'s replies,
        a refused command's error in its place. Sent again once, after loading
        ``script``, if the server did not have it.

        Raises:
            BackendUnavailable: as `__call__`.
            redis.exceptions.ResponseError: the transaction itself was refused.
        """
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._limit)
        try:
            async with self._slots, _deadline(self._timeout):
                replies = await self._exec(packed, queued)
                if any(isinstance(r, redis_errors.NoScriptError) for r in replies):
                    await self._client.script_load(script.text)
                    replies = await self._exec(packed, queued)
                return replies
        except Exception as exc:
            error = _failure(exc, self._timeout)
            if error is exc:
                raise
            raise error from exc

    async def _exec(self, packed: bytes, queued: int) -> list[Any]:
        assert isinstance(self._client, aioredis.Redis)  # one server: not a cluster's
        pool = self._client.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            # Retried as redis-py retries a command (the client's `retry`, on a broken
            # connection: a pooled one cut since): a transaction that only reads.
            replies: list[Any] = await connection.retry.call_with_retry(
                lambda: _exchange(connection, packed, queued),
                lambda _: connection.disconnect(),
            )
            return replies
        except redis_errors.ResponseError:
            raise  # refused once every reply was read: the connection is clean
        except BaseException:
            # Replies may be left unread on the socket: never give it back as it is.
            await connection.disconnect(nowait=True)
            raise
        finally:
            await pool.release(connection)


async def _exchange(connection: AbstractConnection, packed: bytes, queued: int) -> list[Any]:
    """Send a ``MULTI`` of ``queued`` commands and read every reply; ``EXEC``'s.

    Raises:
        redis.exceptions.ResponseError: a command refused as it was queued (over
            ``maxmemory`` Redis refuses anything queued, reads too), or ``EXEC``.
    """
    await connection.send_packed_command(packed, check_health=False)
    read = connection.read_response
    refused: redis_errors.ResponseError | None = None
    for _ in range(queued + 1):  # +OK, then +QUEUED for each
        try:
            await read(disable_decoding=True, timeout=math.inf)
        except redis_errors.ResponseError as exc:
            refused = refused or exc  # EXEC then answers EXECABORT
    try:
        replies: list[Any] = await read(disable_decoding=True, timeout=math.inf)
    except redis_errors.ResponseError:
        if refused is not None:
            raise refused from None
        raise
    return replies


# A script call: its RESP head, the script, its arguments (or the whole command packed
# already) and the caller's future.
_Call = tuple[bytes, Script, "Sequence[Any] | bytes", "asyncio.Future[Any]"]
# One stream's write: its part of a write.lua call, its id and start, the caller's future.
_Write = tuple[WritePart, str, int, "asyncio.Future[bool]"]

_MAX_PIPELINE = 512  # claims per pipeline: bounds one reply's size and latency
_MAX_STREAMS = 1000  # streams per write.lua call
_MAX_CALL_BYTES = 1 << 20  # bytes per write.lua call; a larger write goes alone
_MAX_PIPELINE_BYTES = 8 << 20  # writes per pipeline, by size; the rest take the next


class _Batcher:
    """Every stream's claims and writes, coalesced into pipelines, one in flight.

    A call made while a pipeline is on the wire waits for the next one, so the number
    of round trips follows the number of loop turns, not the number of streams; a
    lone slow stream still gets its write sent at once (the next loop turn). The
    writes of a pipeline (chunks, ends, lease renewals) go out as few ``write.lua``
    calls of many streams each: one script run and one reply per call, not per stream.
    """

    def __init__(self, client: aioredis.Redis, wire: Wire, script: Script, timeout: float) -> None:
        # One connection at a time, outside the in-flight cap of the other commands
        # (which leaves half the pool free): a crowd of readers' snapshots must never
        # hold up the writes, whose lease renewals keep their streams alive.
        self._pool = client.connection_pool
        self._client = client
        self._wire = wire
        self._script = script
        self._queue: list[_Call] = []
        self._writes: list[_Write] = []
        self._sending: list[_Call] = []  # the pipeline on the wire
        self._task: asyncio.Task[None] | None = None
        self._timeout = timeout

    def submit(self, script: Script, args: Sequence[Any]) -> asyncio.Future[Any]:
        """Queue one call of a three-key ``script`` (keys, then arguments); the future
        gets its reply."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((script.head, script, args, future))
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        return future

    def write(self, part: WritePart, stream_id: str, start: int) -> asyncio.Future[bool]:
        """Queue one stream's write; the future gets its stop flag, or what refused it
        (`write_outcome`)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._writes.append((part, stream_id, start, future))
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        return future

    def _write_calls(self) -> list[_Call]:
        """The queued writes as ``write.lua`` calls, up to ``_MAX_PIPELINE_BYTES``; each
        call's future hands every stream its own value of the reply (`_hand_out`)."""
        writes: list[_Write] = []
        size = 0
        taken = 0
        for write in self._writes:
            taken += 1
            if write[3].done():
                continue  # a cancelled caller
            writes.append(write)
            size += len(write[0].args)
            if size >= _MAX_PIPELINE_BYTES:
                break
        del self._writes[:taken]
        # Chunks first: under maxmemory they are refused, the rest is not (write.lua).
        if any(not write[0].chunks for write in writes):
            writes = [w for w in writes if w[0].chunks] + [w for w in writes if not w[0].chunks]
        calls: list[_Call] = []
        loop = asyncio.get_running_loop()
        for group in _groups(writes):
            future: asyncio.Future[Any] = loop.create_future()
            future.add_done_callback(functools.partial(_hand_out, writes=group))
            packed = self._wire.write_command(self._script, [write[0] for write in group])
            calls.append((self._script.head, self._script, packed, future))
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
            while self._queue or self._writes:
                calls = self._queue[:_MAX_PIPELINE]
                del self._queue[:_MAX_PIPELINE]
                calls = [call for call in calls if not call[3].done()]  # cancelled callers
                if self._writes:
                    calls += self._write_calls()
                if calls:
                    self._sending = calls
                    await self._send(calls)
                    self._sending = []
        except BaseException as exc:
            # Cancelled (aclose) or a bug: nobody may wait forever on a call, queued or
            # on the wire (a write call's future hands the error to its writes).
            futures: list[asyncio.Future[Any]] = [call[3] for call in self._sending + self._queue]
            futures += [write[3] for write in self._writes]
            error = "the backend was closed" if isinstance(exc, asyncio.CancelledError) else (
                f"writes stopped: {exc!r}"
            )
            for future in futures:
                if not future.done():
                    future.set_exception(BackendUnavailable(error))
            self._sending = []
            self._queue.clear()
            self._writes.clear()
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
            # (`_deadline`: asyncio's own timeout, half the cost of anyio's scope,
            # once per pipeline.)
            async with _deadline(self._timeout):
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
        except Exception as exc:
            error = _failure(exc, self._timeout)
            for call in calls:
                if not call[3].done():
                    call[3].set_exception(error)
            return
        for (_, _, _, future), reply in zip(calls, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(_mapped(reply))
            else:
                future.set_result(reply)

    async def _pipeline(self, calls: list[_Call]) -> list[Any]:
        """Send the calls back to back, then read every reply (an error reply is
        returned in its place, so one refused call does not fail the others)."""
        connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            packed = b"".join([
                call[2] if isinstance(call[2], bytes) else _pack(call[0], call[2])
                for call in calls
            ])
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


def _groups(writes: list[_Write]) -> list[list[_Write]]:
    """``writes`` cut into calls of at most ``_MAX_STREAMS`` streams and, past one
    stream, ``_MAX_CALL_BYTES``: a script blocks the server while it runs."""
    groups: list[list[_Write]] = []
    group: list[_Write] = []
    size = 0
    for write in writes:
        grown = size + len(write[0].args)
        if group and (len(group) == _MAX_STREAMS or grown > _MAX_CALL_BYTES):
            groups.append(group)
            group, grown = [], len(write[0].args)
        group.append(write)
        size = grown
    if group:
        groups.append(group)
    return groups


def _hand_out(reply: asyncio.Future[Any], writes: list[_Write]) -> None:
    """Hand each write its value of a ``write.lua`` reply (or the call's error)."""
    error: BaseException | None = (
        BackendUnavailable("the write was cancelled") if reply.cancelled() else reply.exception()
    )
    values: list[Any] = []
    if error is None:
        values = reply.result()
        if not isinstance(values, list) or len(values) != len(writes):
            error = BackendUnavailable(f"write.lua answered {values!r:.80} for {len(writes)}")
    for n, (_, stream_id, start, future) in enumerate(writes):
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
            continue
        try:
            future.set_result(write_outcome(stream_id, start, values[n], _refused))
        except Exception as exc:
            future.set_exception(exc)


def _mapped(exc: Exception) -> Exception:
    """``exc`` as a caller gets it: `BackendUnavailable` (caused by it) if Redis cannot
    serve the call now, else ``exc`` itself."""
    if not unavailable(exc):
        return exc
    error = BackendUnavailable(f"Redis unavailable: {describe(exc)}")
    error.__cause__ = exc
    return error


def _failure(exc: Exception, timeout: float) -> Exception:
    """`_mapped`, and a call past its deadline (``command_timeout``, ``timeout`` s) as
    `BackendUnavailable` too: what a call or a pipeline that raised ``exc`` raises."""
    if isinstance(exc, TimeoutError):
        error = BackendUnavailable(f"Redis did not answer within {timeout:g} s (command_timeout)")
        error.__cause__ = exc
        return error
    return _mapped(exc)


def _refused(text: str) -> Exception:
    """An error Redis answered one stream's command inside ``write.lua``, as redis-py
    would raise it: a full Redis (``OOM``) is `BackendUnavailable`, retried a while."""
    return _mapped(BaseParser.parse_error(text))  # type: ignore[no-untyped-call]


def _parses_in_c(client: aioredis.Redis) -> bool:
    """Whether ``client``'s connections parse replies with hiredis."""
    try:
        from redis._parsers import _AsyncHiredisParser
        from redis.asyncio.connection import DefaultParser
    except ImportError:  # pragma: no cover - a redis-py without them
        return False
    kwargs = getattr(client.connection_pool, "connection_kwargs", {})
    return kwargs.get("parser_class", DefaultParser) is _AsyncHiredisParser


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
        self._wire = Wire(key_prefix)
        self.key_prefix = self._wire.key_prefix
        self._timeout = check_timeout(command_timeout)
        self._client = client
        self._owned: aioredis.Redis | None = None
        self._scripts = scripts()
        # Claims, writes and renewals: pipelined, outside the in-flight cap.
        self._batcher = _Batcher(client, self._wire, self._scripts.write, self._timeout)
        # Snapshots and stops: one by one, within the cap.
        max_connections = getattr(client.connection_pool, "max_connections", None)
        self._call = _Calls(client, max_connections=max_connections, timeout=self._timeout)
        self._hub = PubSubHub(_ServerRouter(client), decode_event)
        # Pages read beside the script (`Wire.snapshot_transaction`) where hiredis
        # parses the reply: its elements cost next to nothing there, and Redis far
        # less. redis-py's own parser spends ~2 us of Python per element, so there
        # the script joins the page into one string instead.
        self._paged = _parses_in_c(client)

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

    async def claim(
        self, stream_id: str, token: str, *, ttl: float, lease: float, metadata: bytes = b""
    ) -> StreamStatus | None:
        k = self._wire.keys(stream_id)
        call = Wire.claim_call(k, token, ttl, lease, metadata)
        reply = await self._batcher.submit(self._scripts.claim, call)
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
        # First: a chunk msgpack cannot encode (a str with a lone surrogate) raises
        # here, before anything was sent, as in `write_soon`.
        part = self._wire.write_part(
            self._wire.keys(stream_id), token, start, chunks, end, ttl, finished_ttl, lease
        )
        if end is not None:
            self._wire.ended(stream_id)
        return await self._batcher.write(part, stream_id, start)

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
        `WritesSoon`); None for the end of a stream (`write` forgets its keys)."""
        if end is not None:
            return None
        part = self._wire.write_part(
            self._wire.keys(stream_id), token, start, chunks, None, ttl, finished_ttl, lease
        )
        return self._batcher.write(part, stream_id, start)

    async def snapshot(self, stream_id: str, start: int, limit: int) -> Snapshot | None:
        k = self._wire.keys(stream_id)
        if self._paged and limit > 0:
            script = self._scripts.snapshot
            packed = Wire.snapshot_transaction(script, k, start, limit)
            try:
                state, elements = await self._call.transaction(script, packed, 2)
            except BackendUnavailable as exc:
                if not isinstance(exc.__cause__, redis_errors.OutOfMemoryError):
                    raise
                # Over maxmemory Redis refuses whatever is queued in a MULTI, reads
                # too; a script that only reads still runs: read through it.
            else:
                for reply in (state, elements):
                    if isinstance(reply, Exception):
                        raise _mapped(reply)
                return parse_snapshot(state, elements)
        call = Wire.snapshot_call(k, start, limit)
        return parse_snapshot(await self._call(self._scripts.snapshot, call))

    async def request_stop(self, stream_id: str) -> bool:
        meta = self._wire.keys(stream_id).meta
        return bool(await self._call(self._scripts.stop, [meta], keys=1))

    async def delete(self, stream_id: str, *, ttl: float) -> bool:
        """Delete the stream, leaving a tombstone for ``ttl`` seconds (see `Deletes`)."""
        call = self._wire.delete_call(self._wire.keys(stream_id), ttl)
        return bool(await self._call(self._scripts.delete, call))

    async def deleted(self, stream_id: str) -> bool:
        meta = self._wire.keys(stream_id).meta
        return bool(await self._call(self._scripts.deleted, [meta], keys=1))

    async def status(self, stream_id: str) -> StreamStatus | None:
        return status_of(await self.snapshot(stream_id, 0, 0))

    async def subscribe(self, stream_id: str, *, max_buffered_bytes: int) -> Subscription:
        return await self._hub.subscribe(self._wire.keys(stream_id).events, max_buffered_bytes)

    async def aclose(self) -> None:
        await self._batcher.aclose()
        await self._hub.aclose()
        if self._owned is not None:
            await self._owned.aclose()
