"""Live announcements from Redis: dedicated pub/sub connections shared by every reader.

A `PubSubHub` keeps one pub/sub connection (a *link*) per Redis server it needs and
one task per link that reads it, routing each message to the readers of its channel.
A `Router` says which server announces a channel and how to reach it:

* one server, or the primary a Sentinel names: classic ``SUBSCRIBE``, one link;
* a Redis Cluster: sharded ``SSUBSCRIBE`` on the master that owns the channel's slot,
  so one link per master with readers, never one per reader.

Design notes (facts measured on this machine, from redis-py and the servers themselves):

* ``subscribe()`` returns only after the server's confirmation: a chunk announced
  before it would be missed by a reader that reads the list too early.
* A channel can lose its subscription: the link's connection breaks, the server drops
  a sharded subscription when the channel's slot moves to another master (by a
  failover or a migration, it pushes ``sunsubscribe``), or it answers ``SSUBSCRIBE``
  with ``MOVED``. The channel is then *repaired*: the topology is re-read, the channel
  is subscribed again where it now lives and, once that is confirmed, its readers get
  `RESYNC` (messages may have been lost meanwhile; they re-read the stored list from
  their position). Readers also re-read after ``poll_interval`` of silence, so a
  repair in progress costs latency, never a gap.
* A channel that cannot be repaired within ``REPAIR_TIMEOUT`` fails its readers with
  `BackendUnavailable`.
* Anyone who can ``PUBLISH`` can put anything on a stream's channel. A message that
  does not decode (or decodes to nonsense: a start that is not an index) is dropped
  and logged, once per channel per `GARBAGE_LOG_INTERVAL`; the link stays. Dropping
  the link instead would make every reader of the process re-read, as often as
  someone cares to publish.
* Error replies carry no channel name, so an error on a link re-subscribes every
  channel still waiting there for a confirmation; a duplicate ``SSUBSCRIBE`` is
  harmless. Only a confirmation of a pending subscription counts.
* Links are plain redis-py connections read with ``read_response``, not redis-py's
  ``PubSub``: its reconnect replays every sharded channel in one ``SSUBSCRIBE``,
  which a cluster refuses (``CROSSSLOT``) as soon as they span slots.
* A link can stall without breaking: a half-open connection (a dead NAT entry, a
  frozen server, a cable pulled) neither answers nor closes, and without a socket
  timeout a read waits forever. redis-py's own ``health_check_interval`` does not
  catch it on a pub/sub connection: ``PubSub`` only *sends* a ``PING`` when it is
  next read and never checks that a reply comes. So each link has a watchdog task
  with a health interval (the client's ``health_check_interval`` if it sets one,
  else `HEALTH_INTERVAL`): a link quiet for half the interval is sent a ``PING``;
  nothing at all back by the end of the interval, or a subscription left without
  any command reply for a whole interval, drops the link, and its channels are
  repaired on a new connection with a `RESYNC`. Any reply counts as life, messages
  included, so a busy link under load is never pinged into a reconnect; a link whose
  backlog delays a confirmation by a whole interval is reconnected, which costs its
  readers a re-read, never a gap. Opening a link is bounded by the same interval.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import anyio
from redis import exceptions as redis_errors

from .._exceptions import BackendUnavailable, InvalidArgument, describe
from .._subscription import RESYNC, Subscription, event_size
from .._types import Event
from ._redis_errors import UNAVAILABLE

if TYPE_CHECKING:
    from redis.asyncio.connection import AbstractConnection

__all__ = [
    "CLASSIC", "HEALTH_INTERVAL", "REPAIR_TIMEOUT", "SHARDED", "Dialect", "PubSubHub", "Router"
]

logger = logging.getLogger("resumable_stream")

SUBSCRIBE_TIMEOUT = 10.0
HEALTH_INTERVAL = 3.0  # a stalled link is dropped within this long after its last reply
REPAIR_TIMEOUT = 10.0  # a failover takes a few seconds (node timeout plus election)
GARBAGE_LOG_INTERVAL = 10.0  # at most one "undecodable message" line per channel this often
_RETRY_FIRST, _RETRY_MAX = 0.05, 1.0


class Dialect(NamedTuple):
    """The commands and message kinds of one flavour of pub/sub."""

    subscribe: str
    unsubscribe: str
    message: bytes
    confirmed: bytes
    dropped: bytes


CLASSIC = Dialect("SUBSCRIBE", "UNSUBSCRIBE", b"message", b"subscribe", b"unsubscribe")
SHARDED = Dialect("SSUBSCRIBE", "SUNSUBSCRIBE", b"smessage", b"ssubscribe", b"sunsubscribe")


class Router(Protocol):
    """Where a channel is announced and how to reach that server."""

    @property
    def dialect(self) -> Dialect: ...

    async def locate(self, channel: bytes) -> str:
        """The name of the server to subscribe to ``channel`` on."""
        ...

    def connection(self, server: str) -> AbstractConnection:
        """A new, not yet connected connection to ``server``, owned by the caller."""
        ...

    async def refresh(self) -> None:
        """Re-read the topology: a subscription was lost and may have moved."""
        ...


class _Channel:
    """One channel's readers and where it is subscribed."""

    __slots__ = (
        "attempts", "confirmed", "dropped", "error", "link", "logged_at", "lost_at",
        "subscribed_once", "subscribers",
    )

    def __init__(self) -> None:
        self.subscribers: set[Subscription] = set()
        # Set while the subscription is active (or once it failed): a new reader of a
        # channel under repair waits for the repair, as invariant 3 wants.
        self.confirmed = asyncio.Event()
        self.subscribed_once = False
        self.error: BaseException | None = None
        self.link: _Link | None = None  # None while it waits for a repair
        self.lost_at: float | None = None  # when it lost its subscription, until confirmed again
        self.attempts = 0  # repairs tried since then
        self.dropped = 0  # undecodable messages dropped since the last log line
        self.logged_at: float | None = None  # when that line was logged (loop time)


class _Link:
    """One dedicated pub/sub connection to one server, the task that reads it and the
    watchdog that drops it when it stalls."""

    __slots__ = (
        "channels", "connection", "interval", "last_reply", "last_seen", "lock", "pending",
        "server", "task", "waiter", "watchdog",
    )

    def __init__(self, server: str, connection: AbstractConnection, interval: float) -> None:
        self.server = server
        self.connection = connection
        self.interval = interval  # health interval: see the module notes
        self.channels: set[bytes] = set()  # subscribed here, or subscribing
        # Subscribe sent, confirmation not seen yet: when each was sent (loop time).
        self.pending: dict[bytes, float] = {}
        self.lock = asyncio.Lock()  # one command written at a time
        self.task: asyncio.Task[None] | None = None
        self.watchdog: asyncio.Task[None] | None = None
        now = asyncio.get_running_loop().time()
        self.last_seen = now  # anything read: a message, a confirmation, a PONG
        self.last_reply = now  # a reply to one of our commands (not a message)
        self.waiter: asyncio.Future[None] | None = None  # resolved by the next thing read

    async def send(self, command: str, channel: bytes | None = None) -> None:
        """Write one command; its reply comes to the reading task."""
        args = (command,) if channel is None else (command, channel)
        async with self.lock:
            # No health check: it would read a reply that belongs to the reading task.
            await self.connection.send_command(*args, check_health=False)


class PubSubHub:
    """The live feed of every reader of one backend.

    Args:
        router: where channels live (one server, a Sentinel's primary, a cluster).
        decode: turns a message's payload into an `Event`.
        repair_timeout: seconds a lost channel may take to be subscribed again before
            its readers get `BackendUnavailable`.
        health_interval: seconds after its last reply within which a stalled link is
            dropped and its channels repaired (module notes), unless the client's
            connections set their own ``health_check_interval``.

    Raises:
        InvalidArgument: ``health_interval`` is not > 0.
    """

    def __init__(
        self,
        router: Router,
        decode: Callable[[bytes], Event],
        *,
        repair_timeout: float = REPAIR_TIMEOUT,
        health_interval: float = HEALTH_INTERVAL,
    ) -> None:
        if not health_interval > 0:
            raise InvalidArgument("health_interval must be > 0")
        self._router = router
        self._repair_timeout = repair_timeout
        self._health_interval = health_interval
        self._dialect = router.dialect
        self._decode = decode
        self._channels: dict[bytes, _Channel] = {}
        self._links: dict[str, _Link] = {}
        self._lost: set[bytes] = set()
        self._repairer: asyncio.Task[None] | None = None
        self._open_lock: asyncio.Lock | None = None  # made inside the running loop
        self._connecting: asyncio.Future[None] | None = None  # a link being opened
        self._generation = 0  # bumped by aclose: links opened before are not kept

    @property
    def connections(self) -> int:
        """How many pub/sub connections are open (at most one per server)."""
        return len(self._links)

    async def subscribe(self, channel: str, max_buffered_bytes: int) -> Subscription:
        """Subscribe a new reader to ``channel``; returns once the server confirmed.

        Raises:
            BackendUnavailable: no connection, or no confirmation within 10 s.
        """
        name = channel.encode()
        sub = Subscription(channel, max_buffered_bytes=max_buffered_bytes, on_close=self._release)
        record = self._channels.get(name)
        if record is None:
            record = self._channels[name] = _Channel()
        record.subscribers.add(sub)
        if record.link is None:
            # A new channel, or one under repair: subscribe now. If the server cannot
            # be reached, this reader fails at once (the repair goes on for the others).
            try:
                await self._attach(name, record)
            except BaseException as exc:
                await sub.aclose()
                if record.subscribers and record.link is None and name in self._channels:
                    self._mark_lost(name, record)  # cancelled half way: finish it for them
                if isinstance(exc, UNAVAILABLE):
                    raise BackendUnavailable(
                        f"Redis pub/sub unreachable: {describe(exc)}"
                    ) from exc
                raise
        try:
            await asyncio.wait_for(record.confirmed.wait(), SUBSCRIBE_TIMEOUT)
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

    async def _attach(self, name: bytes, record: _Channel) -> None:
        """Send the subscribe for ``name`` on the link of the server that announces it."""
        link = await self._link(await self._router.locate(name))
        if self._channels.get(name) is not record or record.link is not None:
            return  # released, or attached by someone else, meanwhile
        record.link = link
        link.channels.add(name)
        link.pending[name] = asyncio.get_running_loop().time()
        try:
            await link.send(self._dialect.subscribe, name)
        except UNAVAILABLE as exc:
            await self._lose(link, exc)  # the repair takes this channel over as well

    async def _link(self, server: str) -> _Link:
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            link = self._links.get(server)
            if link is not None:
                return link
            connection = self._router.connection(server)
            # The client's own interval if it set one (redis-py's default 0 means off).
            interval = float(getattr(connection, "health_check_interval", 0) or 0)
            interval = interval if interval > 0 else self._health_interval
            generation = self._generation
            # A future of its own, so that `aclose` can cancel the handshake: a subscribe
            # waiting on it then fails at once instead of at the end of the interval.
            connecting = self._connecting = asyncio.ensure_future(
                connection.connect()  # type: ignore[no-untyped-call]
            )
            try:
                # Bounded: a black-holed server accepts nothing and answers nothing, and
                # the handshake has no timeout unless the client set socket timeouts.
                with anyio.fail_after(interval):
                    await connecting
                if generation != self._generation:
                    raise asyncio.CancelledError  # closed just as it connected
            except TimeoutError:
                await _disconnect(connection)
                raise redis_errors.TimeoutError(
                    f"no pub/sub connection to {server or 'Redis'} within {interval:g} s"
                ) from None
            except asyncio.CancelledError:
                await _disconnect(connection)
                if generation != self._generation:
                    raise BackendUnavailable("the backend was closed") from None
                raise
            except BaseException:
                await _disconnect(connection)
                raise
            finally:
                if self._connecting is connecting:
                    self._connecting = None
            link = self._links[server] = _Link(server, connection, interval)
            link.task = asyncio.create_task(self._read(link))
            link.watchdog = asyncio.create_task(self._watch(link))
            return link

    async def _read(self, link: _Link) -> None:
        """Route every message of ``link`` until its connection breaks."""
        dialect = self._dialect
        channels = self._channels
        read = link.connection.read_response
        clock = asyncio.get_running_loop().time
        try:
            while True:
                try:
                    # math.inf: block without the client's socket_timeout (redis-py >= 5).
                    reply: Any = await read(
                        disable_decoding=True, timeout=math.inf, push_request=True
                    )
                except redis_errors.ResponseError as exc:
                    link.last_seen = link.last_reply = clock()
                    self._on_error_reply(link, exc)
                    continue
                # Life on the link, for the watchdog.
                link.last_seen = clock()
                waiter = link.waiter
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
                if not isinstance(reply, list) or len(reply) < 3:
                    link.last_reply = link.last_seen  # a PONG (RESP2: ["pong", ""] or +PONG)
                    continue
                kind, name = reply[0], reply[1]
                if kind == dialect.message:
                    record = channels.get(name)
                    if record is not None:
                        try:
                            event = self._decode(reply[2])
                        except Exception as exc:
                            # Anyone who can PUBLISH can put anything on a channel: drop
                            # it, keep the link (dropping it would make every reader of
                            # the process re-read, as often as someone publishes).
                            self._garbage(name, record, clock(), exc)
                            continue
                        # Measured once for every reader of the process, not once each.
                        size = event_size(event)
                        for sub in record.subscribers:
                            sub.push(event, size)
                    continue
                link.last_reply = link.last_seen
                if kind == dialect.confirmed:
                    self._on_confirmed(link, name)
                elif kind == dialect.dropped:
                    self._on_dropped(link, name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._lose(link, exc)

    async def _watch(self, link: _Link) -> None:
        """Drop ``link`` once it has stalled (module notes): nothing read for a whole
        health interval though a ``PING`` was sent half way, or a subscription without
        any command reply for a whole interval."""
        loop = asyncio.get_running_loop()
        interval = link.interval
        half = interval / 2
        while True:
            now = loop.time()
            wake = link.last_seen + half
            if link.pending:
                oldest = min(link.pending.values())
                if link.last_reply < oldest:
                    if now - oldest >= interval:
                        await self._lose(link, redis_errors.TimeoutError(
                            f"no confirmation of a subscription within {interval:g} s"
                        ))
                        return
                    wake = min(wake, oldest + interval)
            if now < wake:
                await asyncio.sleep(wake - now)  # the next deadline; the link may live on
                continue
            # Quiet for half the interval: a PING must bring something back in the other.
            asked = now
            waiter = link.waiter = loop.create_future()
            try:
                try:
                    with anyio.fail_after(half):
                        await link.send("PING")
                        await waiter
                    continue
                except TimeoutError:
                    # A blocked event loop delays our reader as much as this timer: let
                    # the reader take what arrived meanwhile before judging the link
                    # (the waiter itself is cancelled by now, so ask the clock).
                    for _ in range(3):
                        await asyncio.sleep(0)
                    if link.last_seen >= asked:
                        continue
                    error: BaseException = redis_errors.TimeoutError(
                        f"no reply to PING within {half:g} s, {interval:g} s after the last"
                    )
                except UNAVAILABLE as exc:
                    error = exc  # the reader sees the broken connection too; either repairs
            finally:
                link.waiter = None
            await self._lose(link, error)
            return

    @staticmethod
    def _garbage(name: bytes, record: _Channel, now: float, exc: Exception) -> None:
        """Log an undecodable message, at most once per channel per `GARBAGE_LOG_INTERVAL`
        (a flood of them must not flood the log either)."""
        record.dropped += 1
        if record.logged_at is not None and now - record.logged_at < GARBAGE_LOG_INTERVAL:
            return
        logger.warning(
            "dropped %d undecodable message(s) on %s: %s",
            record.dropped, _text(name), describe(exc),
        )
        record.logged_at = now
        record.dropped = 0

    def _on_confirmed(self, link: _Link, name: bytes) -> None:
        record = self._channels.get(name)
        if record is None or record.link is not link or name not in link.pending:
            return  # a stale or duplicate confirmation
        del link.pending[name]
        record.lost_at = None
        record.attempts = 0
        record.confirmed.set()
        if record.subscribed_once:
            # Subscribed again after a loss: messages may have been missed meanwhile.
            for sub in record.subscribers:
                sub.push(RESYNC)
        record.subscribed_once = True

    def _on_dropped(self, link: _Link, name: bytes) -> None:
        """The server ended a subscription we still want (its slot moved away), or
        acknowledged one we released."""
        record = self._channels.get(name)
        if record is None or record.link is not link or name in link.pending:
            return
        logger.info("Redis dropped the subscription to %s: re-subscribing", _text(name))
        link.channels.discard(name)
        self._mark_lost(name, record)

    def _on_error_reply(self, link: _Link, exc: redis_errors.ResponseError) -> None:
        """An error reply (MOVED, CLUSTERDOWN, ...) to a command of unknown channel."""
        logger.info("Redis refused a pub/sub command on %s: %s", link.server, describe(exc))
        for name in list(link.pending):
            record = self._channels.get(name)
            del link.pending[name]
            link.channels.discard(name)
            if record is not None and record.link is link:
                self._mark_lost(name, record)

    async def _lose(self, link: _Link, exc: BaseException) -> None:
        """``link``'s connection broke: close it and repair its channels elsewhere."""
        if self._links.get(link.server) is link:
            del self._links[link.server]
            logger.warning(
                "Redis pub/sub connection to %s lost: %s", link.server or "Redis", describe(exc)
            )
            for name in link.channels:
                record = self._channels.get(name)
                if record is not None and record.link is link:
                    self._mark_lost(name, record)
            link.channels.clear()
            link.pending.clear()
        current = asyncio.current_task()
        for task in (link.task, link.watchdog):
            if task is not None and task is not current:
                task.cancel()
        await _disconnect(link.connection)

    def _mark_lost(self, name: bytes, record: _Channel) -> None:
        record.link = None
        record.confirmed.clear()
        if record.lost_at is None:
            record.lost_at = asyncio.get_running_loop().time()
        self._lost.add(name)
        if self._repairer is None:
            self._repairer = asyncio.create_task(self._repair())

    async def _repair(self) -> None:
        """Subscribe lost channels again where they now live, with backoff, until each
        is confirmed again or ``repair_timeout`` has passed since it was lost."""
        loop = asyncio.get_running_loop()
        try:
            while self._lost:
                attempts = max(
                    (self._channels[n].attempts for n in self._lost if n in self._channels),
                    default=0,
                )
                if attempts:
                    # Backoff while the servers fail over or settle a migration.
                    await asyncio.sleep(min(_RETRY_FIRST * 2 ** (attempts - 1), _RETRY_MAX))
                try:
                    await self._router.refresh()
                except UNAVAILABLE as exc:
                    logger.debug("reading the Redis topology failed: %s", describe(exc))
                lost, self._lost = self._lost, set()
                for name in lost:
                    record = self._channels.get(name)
                    if record is None or record.link is not None:
                        continue  # released, or repaired already
                    lost_at = record.lost_at if record.lost_at is not None else loop.time()
                    if loop.time() - lost_at >= self._repair_timeout:
                        self._fail(name, record, BackendUnavailable(
                            f"Redis pub/sub not restored within {self._repair_timeout:g} s"
                        ))
                        continue
                    record.attempts += 1
                    try:
                        await self._attach(name, record)
                    except Exception as exc:
                        if isinstance(exc, UNAVAILABLE):
                            self._lost.add(name)  # try again after the backoff
                        else:
                            self._fail(name, record, BackendUnavailable(
                                f"Redis pub/sub could not be restored: {describe(exc)}"
                            ))
        finally:
            self._repairer = None

    def _fail(self, name: bytes, record: _Channel, error: BaseException) -> None:
        """Give up on ``name``: its readers get ``error``."""
        record.error = error
        record.confirmed.set()
        for sub in record.subscribers:
            sub.fail(error)
        if self._channels.get(name) is record:
            del self._channels[name]
        self._lost.discard(name)
        link = record.link
        if link is not None:
            link.channels.discard(name)
            link.pending.pop(name, None)

    async def _release(self, sub: Subscription) -> None:
        name = sub.key.encode()
        record = self._channels.get(name)
        if record is None or sub not in record.subscribers:
            return
        record.subscribers.discard(sub)
        if not record.subscribers:
            await self._forget(name, record)

    async def _forget(self, name: bytes, record: _Channel) -> None:
        """No reader is left on ``name``: unsubscribe."""
        if self._channels.get(name) is record:
            del self._channels[name]
        self._lost.discard(name)
        link, record.link = record.link, None
        if link is None:
            return
        link.channels.discard(name)
        link.pending.pop(name, None)
        try:
            await link.send(self._dialect.unsubscribe, name)
        except UNAVAILABLE as exc:
            # The link's reader notices the dead connection and repairs the others.
            logger.debug("unsubscribe from %s failed: %s", _text(name), describe(exc))

    async def aclose(self) -> None:
        """Close every link; readers still subscribed get `BackendUnavailable`. A later
        `subscribe` opens links again, as a redis-py client reconnects."""
        self._generation += 1
        if self._connecting is not None:
            self._connecting.cancel()
        links = list(self._links.values())
        self._links.clear()
        tasks = [
            task for link in links for task in (link.task, link.watchdog) if task is not None
        ]
        if self._repairer is not None:
            tasks.append(self._repairer)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)  # never re-raises the tasks' CancelledError
        for link in links:
            await _disconnect(link.connection)
        error = BackendUnavailable("the backend was closed")
        for record in self._channels.values():
            record.error = error
            record.confirmed.set()
            for sub in record.subscribers:
                sub.fail(error)
        self._channels.clear()
        self._lost.clear()


def _text(name: bytes) -> str:
    return name.decode("utf-8", "replace")


async def _disconnect(connection: AbstractConnection) -> None:
    try:
        await connection.disconnect()
    except Exception as exc:  # the connection is broken already
        logger.debug("closing a pub/sub connection: %s", describe(exc))
