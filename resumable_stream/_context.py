"""The context: the public entry point, a port of the npm package's context."""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Literal

import anyio
import msgpack

from . import _telemetry
from ._exceptions import (
    BackendUnavailable,
    InvalidArgument,
    ResumableStreamError,
    StreamAlreadyExists,
    StreamNotFound,
    TooManyFollowers,
    TooManyStreams,
    describe,
)
from ._keys import validate_stream_id
from ._lease import LeaseWatch, Liveness, settle
from ._options import StreamOptions
from ._producer import Producer, PushedProducer, PushedSource, WriteClock, close_source
from ._reader import ReaderSource, ResumableStream
from ._retry import LEAST_ATTEMPT, RetryWindow
from ._subscription import LocalFeed, Subscription
from ._types import Chunk, Snapshot, StreamStatus
from .backends._protocol import Backend, Deletes

__all__ = ["ResumableStreamContext", "create_resumable_stream_context"]

logger = logging.getLogger("resumable_stream")

MakeStream = Callable[[], AsyncIterable[Chunk] | Iterable[Chunk] | Any]
"""A zero-argument callable returning an async iterable (or a sync iterable, or an
awaitable of either) of ``str``/``bytes`` chunks."""

# A resume's first read is small, so that it answers fast even when many resumes of
# long streams come at once; the reader then reads the rest in pages of 2,000.
_FIRST_PAGE = 100
_RELEASE = 0.0  # the lease a released claim is left with: lapsed at once
_TOMBSTONE_LEASES = 4  # a deleted stream's tombstone lasts this many leases + retry_window


def _check_skip(skip_characters: int | None) -> int:
    if skip_characters is None:
        return 0
    if isinstance(skip_characters, bool) or not isinstance(skip_characters, int):
        raise InvalidArgument(
            f"skip_characters must be an int, not {type(skip_characters).__name__}"
        )
    if skip_characters < 0:
        raise InvalidArgument(f"skip_characters must be >= 0, got {skip_characters}")
    return skip_characters


def _check_ttl(ttl: object) -> float:
    """A per-stream ``ttl`` in seconds, checked as the context's is (a finite number
    > 0; a bool is refused, not read as 0 or 1)."""
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise InvalidArgument(f"ttl must be a number of seconds, not {type(ttl).__name__}")
    if not 0 < ttl < math.inf:
        raise InvalidArgument(f"ttl must be > 0 seconds (and finite), got {ttl!r}")
    return float(ttl)


async def _iterate_sync(iterable: Iterable[Chunk]) -> AsyncIterator[Chunk]:
    """Iterate a sync iterable in a worker thread: it may block (a sync SDK, file I/O)."""
    iterator = iter(iterable)
    done = object()
    while True:
        chunk: object = await anyio.to_thread.run_sync(next, iterator, done)
        if chunk is done:
            return
        yield chunk  # type: ignore[misc]  # a wrong type fails the stream in the producer


async def _open_source(make_stream: MakeStream) -> AsyncIterator[Chunk]:
    source = make_stream()
    if inspect.isawaitable(source):
        source = await source
    if isinstance(source, (str, bytes, bytearray)):
        raise TypeError("make_stream() returned a str/bytes; return an iterable of chunks")
    if hasattr(source, "__aiter__"):
        return source.__aiter__()
    if hasattr(source, "__iter__"):
        return _iterate_sync(source)
    raise TypeError(
        f"make_stream() must return an async iterable or an iterable of str/bytes, "
        f"not {type(source).__name__}"
    )


class ResumableStreamContext:
    """Creates and resumes streams on one backend. Make one per process and share it.

    Producers run in tasks owned by the context, not by the request that started
    them: they run to the end even when the original reader goes away. Use the
    context as ``async with`` or call `aclose` at shutdown.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        ttl: float = 24 * 3600,
        wait_until: Callable[[asyncio.Task[None]], object] | None = None,
        options: StreamOptions | None = None,
        owns_backend: bool = False,
    ) -> None:
        if not ttl > 0:
            raise InvalidArgument("ttl must be > 0 seconds")
        self.backend = backend
        self.ttl = float(ttl)
        self.options = options or StreamOptions()
        self._wait_until = wait_until
        self._owns_backend = owns_backend
        self._producers: set[asyncio.Task[None]] = set()
        self._clock = WriteClock()  # every producer's writes share its ticks
        self._local: dict[str, Producer] = {}
        self._claiming = 0  # calls between their capacity check and their producer task
        self._followers: dict[str, int] = {}
        self._closed = False

    @property
    def running_streams(self) -> int:
        """Producers this context runs now (those being started included)."""
        return len(self._producers) + self._claiming

    def at_capacity(self) -> bool:
        """True if a new stream would raise `TooManyStreams` now (``max_streams``)."""
        limit = self.options.max_streams
        return limit is not None and self.running_streams >= limit

    def followers(self, stream_id: str) -> int:
        """Readers of ``stream_id`` this context serves now, the original one excepted."""
        return self._followers.get(stream_id, 0)

    async def resumable_stream(
        self,
        stream_id: str,
        make_stream: MakeStream,
        skip_characters: int | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        ttl: float | None = None,
    ) -> ResumableStream | None:
        """Create the stream, or join it if it is running.

        Args:
            stream_id: unique per stream; any string of 1 to 256 characters.
            make_stream: called once, only if this call creates the stream.
            skip_characters: skip this many characters from the start of the stream
                (Python code points for ``str`` chunks, bytes for ``bytes`` chunks;
                the npm package counts UTF-16 units).
            metadata: a small msgpack-serialisable mapping stored with the stream
                (for example an HTTP status and content type); every reader gets it
                as ``stream.metadata``.
            ttl: seconds this stream is kept, instead of the context's ``ttl``; every
                write renews it (``finished_ttl``, if set, still applies once it ends).

        Returns:
            A reader from the start of the stream (after the skipped characters), or
            None if a stream with this id already finished.

        Raises:
            InvalidStreamId: bad ``stream_id``.
            InvalidArgument: bad ``skip_characters``, ``metadata`` or ``ttl``.
            TypeError: ``make_stream`` is not callable or returned no iterable (the
                stream is then marked failed).
            TooManyStreams: ``max_streams`` producers already run in this context and
                no stream with this id exists (a running one is joined, a finished one
                gives None, as usual).
            TooManyFollowers: the stream exists and has ``max_followers`` readers here.
            BackendUnavailable: storage could not be reached.
        """
        stream_id = validate_stream_id(stream_id)
        skip = _check_skip(skip_characters)
        self._check_callable(make_stream)
        packed = _pack_metadata(metadata)
        keep = self.ttl if ttl is None else _check_ttl(ttl)
        if self._closed:
            raise ResumableStreamError("the context is closed: it starts no new producers")
        if self.at_capacity():
            # Full: join the stream if it exists, but never create one.
            status = await self.get_status(stream_id)
            if status is None:
                raise TooManyStreams(self.options.max_streams or 0)
            if status is not StreamStatus.RUNNING:
                return None
            return await self._follow(stream_id, 0, skip, mode="join")
        existing = await self._claim(stream_id, make_stream, skip, metadata, packed, keep)
        if isinstance(existing, ResumableStream):
            return existing
        if existing is not StreamStatus.RUNNING:
            return None
        return await self._follow(stream_id, 0, skip, mode="join")

    async def create_new_resumable_stream(
        self,
        stream_id: str,
        make_stream: MakeStream,
        skip_characters: int | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        ttl: float | None = None,
    ) -> ResumableStream | None:
        """Create a stream and return its original reader.

        Args:
            stream_id: as `resumable_stream`.
            make_stream: as `resumable_stream`.
            skip_characters: as `resumable_stream`.
            metadata: as `resumable_stream`.
            ttl: as `resumable_stream`: this stream's, instead of the context's.

        Returns:
            The original reader, or None if a stream with this id already finished.

        Raises:
            StreamAlreadyExists: a stream with this id is running.
            TooManyStreams: ``max_streams`` producers already run in this context
                (nothing was stored).
            InvalidStreamId, InvalidArgument, TypeError, BackendUnavailable: as
                `resumable_stream`.
        """
        stream_id = validate_stream_id(stream_id)
        skip = _check_skip(skip_characters)
        self._check_callable(make_stream)
        packed = _pack_metadata(metadata)
        keep = self.ttl if ttl is None else _check_ttl(ttl)
        if self._closed:
            raise ResumableStreamError("the context is closed: it starts no new producers")
        if self.at_capacity():
            raise TooManyStreams(self.options.max_streams or 0)
        existing = await self._claim(stream_id, make_stream, skip, metadata, packed, keep)
        if isinstance(existing, ResumableStream):
            return existing
        if existing is StreamStatus.RUNNING:
            # Running, or lost: a lost producer's stream is finished, not taken over.
            snap = await self.backend.snapshot(stream_id, 0, 0)
            if snap is None or (await self._verdict(stream_id, snap))[1] is Liveness.ALIVE:
                raise StreamAlreadyExists(stream_id)
        return None

    @_telemetry.claim_span
    async def _claim(
        self,
        stream_id: str,
        make_stream: MakeStream,
        skip: int,
        metadata: Mapping[str, Any] | None,
        packed: bytes,
        ttl: float,
    ) -> ResumableStream | StreamStatus:
        """Claim the id and start its producer, holding a place under ``max_streams``
        from before the claim until the producer task exists (no await in between
        the capacity check and taking the place).

        A claim is idempotent by its token: a try whose reply was lost is retried
        with the same token (within ``retry_window``, each try with a deadline), and
        the backend answers the retry "yours". A claim whose caller goes away (it is
        cancelled, or every try failed) is released: its lease is made to lapse at
        once, and a record that stored nothing under a lapsed lease is taken over by
        the next claim, so the id is never left poisoned.
        """
        self._claiming += 1
        token = uuid.uuid4().hex
        release = True  # until the answer says "not yours" or the producer owns the claim
        try:
            existing = await self._claim_once(stream_id, token, packed, ttl)
            if existing is not None:
                release = False
                return existing
            if self._closed:  # closed while the claim was out: start nothing untracked
                raise ResumableStreamError("the context is closed: it starts no new producers")
            stream = await self._start(stream_id, token, make_stream, skip, metadata, ttl)
            release = False
            return stream
        except BaseException:
            if release:
                await self._release_claim(stream_id, token, ttl)
            raise
        finally:
            self._claiming -= 1

    async def _claim_once(
        self, stream_id: str, token: str, packed: bytes, ttl: float
    ) -> StreamStatus | None:
        """`Backend.claim`, retried with the same token while the backend is unreachable."""
        window = RetryWindow(self.options.retry_window)
        while True:
            try:
                with anyio.fail_after(window.attempt()):
                    return await self.backend.claim(
                        stream_id, token, ttl=ttl, lease=self.options.lease, metadata=packed
                    )
            except (BackendUnavailable, TimeoutError) as exc:
                if _telemetry.ENABLED:
                    _telemetry.backend_error(exc, "claim")
                if self._closed or window.exhausted():
                    if isinstance(exc, TimeoutError):
                        raise BackendUnavailable(
                            f"no answer to the claim of {stream_id!r} within retry_window "
                            f"({self.options.retry_window} s)"
                        ) from None
                    raise
                await window.pause()

    async def _release_claim(self, stream_id: str, token: str, ttl: float) -> None:
        """Give up a claim that may have landed: its lease lapses now (fenced by the
        token: a claim that never landed, or someone else's stream, is untouched).
        Bounded and shielded; if it fails, the lease lapses on its own."""
        with anyio.move_on_after(LEAST_ATTEMPT, shield=True):
            try:
                # Kept no longer than a finished stream: the next claim takes it over.
                kept = self.options.finished_ttl or ttl
                await self.backend.write(
                    stream_id, token, 0, [], end=None, ttl=kept, finished_ttl=kept,
                    lease=_RELEASE,
                )
            except Exception as exc:  # StaleProducer: the claim never landed
                logger.debug("stream %r: claim released (%s)", stream_id, describe(exc))

    async def resume_existing_stream(
        self,
        stream_id: str,
        skip_characters: int | None = None,
        *,
        after: int | None = None,
    ) -> ResumableStream | None:
        """Join an existing stream, from its start or from a position.

        Args:
            stream_id: the stream's id.
            skip_characters: skip this many characters from the start (or, with
                ``after``, from the first chunk after it).
            after: resume after the chunk with this index (the last one the client
                got, e.g. SSE ``Last-Event-ID``); ``-1`` means from the start.

        Returns:
            A reader. None if the stream finished and ``after`` is not given (as the
            npm package does); with ``after``, None only once the stream has ended
            (done, failed, or its producer lost) with no chunk after ``after``: a
            client that tracks its position gets the tail of a stream that ended
            while it was away. Otherwise a failed stream's reader replays what was
            stored, then raises `StreamFailed` (or `ProducerLost`).

        Raises:
            StreamNotFound: no stream with this id (never created, or expired).
            TooManyFollowers: ``max_followers`` readers of this stream already read
                it through this context.
            InvalidStreamId, InvalidArgument, BackendUnavailable: as `resumable_stream`.
        """
        stream_id = validate_stream_id(stream_id)
        skip = _check_skip(skip_characters)
        if after is None:
            return await self._follow(stream_id, 0, skip, mode="resume")
        if isinstance(after, bool) or not isinstance(after, int) or after < -1:
            raise InvalidArgument(f"after must be an int >= -1, got {after!r}")
        return await self._follow(stream_id, after + 1, skip, mode="after")

    async def stop_stream(self, stream_id: str) -> bool:
        """Stop a running stream's producer, from any process.

        The producer stops pulling from its source and ends the stream as done, so
        every reader ends cleanly. A producer in this process stops at once; one in
        another process at its next write (within ``lease / 3`` when idle).

        Returns:
            True if the stream was running, False if it had ended or does not exist.

        Raises:
            InvalidStreamId, BackendUnavailable: as `resumable_stream`.
        """
        stream_id = validate_stream_id(stream_id)
        local = self._local.get(stream_id)
        # First: a backend that fails to answer must not keep a local producer going.
        stopped = local is not None and local.stop()
        running = await self.backend.request_stop(stream_id)
        return running or stopped

    async def delete_stream(self, stream_id: str) -> bool:
        """Delete a stream from storage, from any process, whatever its state.

        Every key of the stream goes at once. Its producer stops: at once in this
        process, at its next write in another (within ``lease / 3`` when idle). Every
        reader of it, in any process, the original one included, ends with
        `StreamDeleted`; a later resume raises `StreamNotFound`. A short-lived tombstone
        (``4 * lease + retry_window`` seconds) keeps the id from being made again
        meanwhile, by the old producer above all: until it expires, `resumable_stream`
        and `create_new_resumable_stream` answer None for the id, as for a finished one.

        Returns:
            True if a stream was there (running or ended), False if there was none.

        Raises:
            TypeError: the backend cannot delete (it implements no `Deletes`).
            InvalidStreamId, BackendUnavailable: as `resumable_stream`.
        """
        stream_id = validate_stream_id(stream_id)
        backend = self.backend
        if not isinstance(backend, Deletes):
            raise TypeError(
                f"{type(backend).__name__} cannot delete streams: it has no "
                "delete(stream_id, *, ttl) and deleted(stream_id) (see backends.Deletes)"
            )
        options = self.options
        # Outlasts the old producer's next write: a renewal every lease / 3, retried
        # for retry_window; so it is refused by the tombstone, not by an empty key.
        tombstone = _TOMBSTONE_LEASES * options.lease + options.retry_window
        existed = await backend.delete(stream_id, ttl=tombstone)
        # After the backend: if it cannot be reached, nothing changed anywhere.
        local = self._local.get(stream_id)
        running_here = local is not None and local.delete()
        return existed or running_here

    async def has_existing_stream(self, stream_id: str) -> Literal[True, "DONE"] | None:
        """None if there is no such stream, True while it runs, "DONE" once it ended.

        A failed stream counts as "DONE"; `get_status` tells them apart.
        """
        status = await self.get_status(stream_id)
        if status is None:
            return None
        return True if status is StreamStatus.RUNNING else "DONE"

    async def get_status(self, stream_id: str) -> StreamStatus | None:
        """The stream's `StreamStatus`, or None if there is no such stream.

        A running stream whose producer is lost (its lease lapsed, and stayed so for
        ``poll_interval``: such a call waits that long) is FAILED.
        """
        stream_id = validate_stream_id(stream_id)
        snap = await self.backend.snapshot(stream_id, 0, 0)
        if snap is None:
            return None
        last, verdict = await self._verdict(stream_id, snap)
        return StreamStatus.FAILED if verdict is Liveness.LOST else last.status

    async def _verdict(self, stream_id: str, snap: Snapshot) -> tuple[Snapshot, Liveness]:
        """The lease verdict on ``snap``, confirmed now if the lease looks lapsed;
        with the last snapshot read (``snap`` itself unless it had to confirm).

        Raises:
            StreamNotFound: the stream expired while the lapse was being confirmed.
        """
        poll = self.options.poll_interval
        watch = LeaseWatch(poll, self._producer_alive(stream_id))
        last, verdict = await settle(
            snap, watch, lambda: self.backend.snapshot(stream_id, 0, 0), poll
        )
        if last is None:
            raise StreamNotFound(stream_id)
        return last, verdict

    async def aclose(self) -> None:
        """Let running producers finish for up to ``shutdown_grace`` seconds, then
        cancel the rest (their streams are marked failed) and release the backend
        if the context created it."""
        self._closed = True
        tasks = set(self._producers)
        if tasks:
            with anyio.CancelScope(shield=True):
                _, pending = await asyncio.wait(tasks, timeout=self.options.shutdown_grace)
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.wait(pending)
        if self._owns_backend:
            await self.backend.aclose()

    async def __aenter__(self) -> ResumableStreamContext:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @staticmethod
    def _check_callable(make_stream: object) -> None:
        if not callable(make_stream):
            raise TypeError(
                f"make_stream must be a zero-argument callable, not {type(make_stream).__name__}"
            )

    async def _start(
        self,
        stream_id: str,
        token: str,
        make_stream: MakeStream,
        skip: int,
        metadata: Mapping[str, Any] | None,
        ttl: float,
    ) -> ResumableStream:
        # If this raises, `_claim` releases the claim: a stream that stored nothing is
        # never reported as finished, and the next claim of the id starts it afresh.
        source: AsyncIterator[Chunk] | PushedSource
        if isinstance(make_stream, PushedSource):
            source = make_stream  # its caller pushes the chunks: nothing to open
        else:
            source = await _open_source(make_stream)
        if self._closed:  # closed while the source opened: `aclose` would not see it
            await close_source(source, stream_id)
            raise ResumableStreamError("the context is closed: it starts no new producers")
        feed = LocalFeed(stream_id, max_buffered_bytes=self.options.reader_buffer_bytes)
        producer: Producer
        if isinstance(source, PushedSource):
            # Its caller pushes the chunks (`PushedProducer.push`): no source to pull.
            producer = source.producer = PushedProducer(
                self.backend, stream_id, token, source, feed, self.options, ttl, self._clock
            )
        else:
            producer = Producer(
                self.backend, stream_id, token, source, feed, self.options, ttl, self._clock
            )
        task = asyncio.create_task(producer.run(), name=f"resumable-stream producer {stream_id}")
        self._producers.add(task)
        self._local[stream_id] = producer
        task.add_done_callback(self._producers.discard)
        task.add_done_callback(producer.on_task_done)
        task.add_done_callback(lambda _: self._local.pop(stream_id, None))
        if _telemetry.ENABLED:
            _telemetry.stream_started()
        if self._wait_until is not None:
            self._wait_until(task)
        where = ReaderSource(
            stream_id, self.backend, self.options, here=self._producer_alive(stream_id),
            origin_error=lambda: producer.exception,
        )
        return ResumableStream(
            where, feed=feed, start=0, skip_characters=skip, local=True,
            metadata=dict(metadata) if metadata else None,
        )

    @_telemetry.resume_span
    async def _follow(
        self, stream_id: str, start: int, skip: int, *, mode: Literal["join", "resume", "after"]
    ) -> ResumableStream | None:
        """A follower from ``start``, or None when ``mode`` says the stream is finished:
        "join" (`resumable_stream` found it taken): its producer is lost, or it ended
        with nothing from ``start``; "resume" (no position): it is DONE; "after": it
        ended (or its producer is lost) with nothing after the position."""
        limit = self.options.max_followers
        count = self._followers.get(stream_id, 0)
        if limit is not None and count >= limit:
            raise TooManyFollowers(stream_id, limit)
        self._followers[stream_id] = count + 1
        release = _Release(self._followers, stream_id)
        try:
            # Subscribe before reading (backend invariant 3), so nothing falls in between;
            # a producer running here feeds its followers itself (see `Fanout`).
            budget = self.options.reader_buffer_bytes
            producer = self._local.get(stream_id)
            local = None if producer is None else producer.follow(budget)
            feed: Subscription = (
                local
                if local is not None
                else await self.backend.subscribe(stream_id, max_buffered_bytes=budget)
            )
        except BaseException:
            release()
            raise
        try:
            snap = await self.backend.snapshot(stream_id, start, _FIRST_PAGE)
            if snap is None:
                raise StreamNotFound(stream_id)
            if mode == "resume":
                finished = snap.status is StreamStatus.DONE
            elif mode == "after" and start < snap.length:
                finished = False  # there is more to read, whatever the producer's fate
            else:
                last, verdict = await self._verdict(stream_id, snap)
                ended = verdict is Liveness.ENDED and start >= last.length
                finished = verdict is Liveness.LOST or ended
            metadata = _unpack_metadata(snap.metadata)
        except BaseException:
            release()
            with anyio.move_on_after(5.0, shield=True):
                await feed.aclose()
            raise
        if finished:
            release()
            with anyio.move_on_after(5.0, shield=True):
                await feed.aclose()
            return None
        where = ReaderSource(
            stream_id, self.backend, self.options, here=self._producer_alive(stream_id)
        )
        return ResumableStream(
            where, feed=feed, start=start, first=snap, skip_characters=skip,
            metadata=metadata, on_close=release,
        )

    def _producer_alive(self, stream_id: str) -> Callable[[], bool]:
        """Whether this context's own producer of ``stream_id`` still runs and stores.

        The lease tells other processes that a producer lives; this process knows it
        first-hand. An event loop too busy to renew the lease in time (measured in the
        1,000-stream soak: loop turns of seconds) must not end its own followers with
        `ProducerLost` while the producer goes on writing. A producer whose writes
        failed for good (``not writer.stores``) counts as lost, as the lease says.
        """
        producer = self._local.get(stream_id)
        if producer is None:
            return _never
        writer = producer.writer
        return lambda: self._local.get(stream_id) is producer and writer.stores


def _never() -> bool:
    return False


class _Release:
    """Gives back one follower's place, once, however often it is called."""

    __slots__ = ("counts", "stream_id")

    def __init__(self, counts: dict[str, int], stream_id: str) -> None:
        self.counts: dict[str, int] | None = counts
        self.stream_id = stream_id

    def __call__(self) -> None:
        counts, self.counts = self.counts, None
        if counts is None:
            return
        left = counts.get(self.stream_id, 0) - 1
        if left > 0:
            counts[self.stream_id] = left
        else:
            counts.pop(self.stream_id, None)


_MAX_METADATA = 64 * 1024


def _pack_metadata(metadata: Mapping[str, Any] | None) -> bytes:
    if not metadata:
        return b""
    if not isinstance(metadata, Mapping):
        raise InvalidArgument(f"metadata must be a mapping, not {type(metadata).__name__}")
    try:
        packed: bytes = msgpack.packb(dict(metadata))
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgument(f"metadata must be msgpack-serialisable: {exc}") from exc
    if len(packed) > _MAX_METADATA:
        raise InvalidArgument(f"metadata is {len(packed)} bytes; the limit is {_MAX_METADATA}")
    return packed


def _unpack_metadata(packed: bytes) -> dict[str, Any] | None:
    if not packed:
        return None
    result: dict[str, Any] = msgpack.unpackb(packed, raw=False)
    return result


def create_resumable_stream_context(
    redis: Any = None,
    *,
    key_prefix: str = "resumable-stream",
    ttl: float = 24 * 3600,
    wait_until: Callable[[asyncio.Task[None]], object] | None = None,
    options: StreamOptions | None = None,
) -> ResumableStreamContext:
    """Make a context on Redis, on a backend object, or in memory.

    Args:
        redis: a ``redis.asyncio.Redis`` client (plain or Sentinel-managed, from
            ``Sentinel(...).master_for(...)``), a ``redis.asyncio.cluster.RedisCluster``
            (neither is closed by the context), an object implementing the `Backend`
            protocol, or None: then the environment picks, in this order, ``REDIS_URL``
            or ``KV_URL`` (Redis), ``UPSTASH_REDIS_REST_URL`` and ``_TOKEN`` or
            ``KV_REST_API_URL`` and ``_TOKEN`` (Upstash over REST), else memory.
        key_prefix: first part of every Redis key (not for backend objects, which
            carry their own).
        ttl: seconds a stream is kept; every write renews it.
        wait_until: called with each producer task, for hosts that must be told to
            keep running until it finishes (the npm ``waitUntil``).
        options: tuning knobs, see `StreamOptions`.

    Raises:
        TypeError: ``redis`` is none of the above (for example a sync client).
        InvalidArgument: a bad ``key_prefix``, ``ttl`` or option; a REST URL set
            without its token or the other way round.
    """
    owns = False
    backend: Any
    if redis is None:
        from ._environment import backend_from_environment

        backend = backend_from_environment(key_prefix)
        owns = True
    elif _is_async_redis(redis):
        from .backends.redis import RedisBackend

        backend = RedisBackend(redis, key_prefix=key_prefix)
        owns = True  # closes only what the backend made itself, never the user's client
    elif _is_async_cluster(redis):
        from .backends.cluster import RedisClusterBackend

        backend = RedisClusterBackend(redis, key_prefix=key_prefix)
        owns = True
    elif isinstance(redis, Backend):
        if key_prefix != "resumable-stream":
            raise InvalidArgument("key_prefix applies to Redis clients; set it on the backend")
        backend = redis
    else:
        raise TypeError(
            "create_resumable_stream_context() takes a redis.asyncio.Redis or RedisCluster "
            f"client, a Backend or None, not {type(redis).__module__}.{type(redis).__name__}"
        )
    return ResumableStreamContext(
        backend, ttl=ttl, wait_until=wait_until, options=options, owns_backend=owns
    )


def _is_async_redis(obj: object) -> bool:
    try:
        import redis.asyncio as aioredis
    except ImportError:
        return False
    return isinstance(obj, aioredis.Redis)


def _is_async_cluster(obj: object) -> bool:
    try:
        from redis.asyncio.cluster import RedisCluster
    except ImportError:
        return False
    return isinstance(obj, RedisCluster)
