"""The Durable Streams operations, written once over `DurableStorage`.

Every write is "load, decide, compare-and-set, retry on a lost race": the decision
(status code, fencing, closure) is a pure function of the loaded metadata and the
request, so it is the same on every store and in every process. A lost race means
another writer committed in between; the next attempt sees its result.

Forks copy the inherited items at creation (the protocol leaves the mechanism open):
a fork then reads like any stream and outlives its source for free. The source keeps
a reference count only so that deleting it while forks exist soft-deletes it (410),
as the protocol asks.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime

from ._model import Item, Producer, StreamMeta, decode_offset, encode_offset, media_type
from ._storage import DurableStorage

__all__ = ["Reply", "Service"]

# Decimal, no sign, no leading zero: how the protocol writes TTLs, epochs and seqs.
_INT = re.compile(r"0|[1-9][0-9]*")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})")
MAX_SAFE_INTEGER = 2**53 - 1
DEFAULT_CONTENT_TYPE = "application/octet-stream"
# Compare-and-set attempts before a write gives up with 503: only reached when
# hundreds of writers race on one stream at once.
MAX_ATTEMPTS = 1000
PAGE_ITEMS = 1000
CACHED_STREAMS = 1024  # metadata kept per process for the next append (see _append)


class BadRequest(Exception):
    """The request is malformed: 400 with this message."""


@dataclass
class Reply:
    """An HTTP answer: status, headers and body."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def _error(status: int, message: str, **headers: str) -> Reply:
    return Reply(status, {"content-type": "text/plain; charset=utf-8", **headers}, message.encode())


def header_text(text: str) -> str:
    """``text`` as a header value: printable ASCII, one line, at most 200 characters."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in text)
    return cleaned[:200]


def is_true(value: str | None) -> bool:
    """``Stream-Closed`` counts only when exactly ``true`` (any case)."""
    return value is not None and value.lower() == "true"


def parse_ttl(value: str | None) -> int | None:
    if value is None:
        return None
    if _INT.fullmatch(value) is None:
        raise BadRequest("Stream-TTL must be a non-negative integer without sign or zeros")
    return int(value)


def parse_expires_at(value: str | None) -> int | None:
    """RFC 3339 -> ms since the epoch."""
    if value is None:
        return None
    if _RFC3339.fullmatch(value) is None:
        raise BadRequest("Stream-Expires-At must be an RFC 3339 timestamp")
    text = value.replace("z", "Z").replace("t", "T")
    head, sep, frac = text.partition(".")
    if sep:
        digits = re.match(r"\d+", frac)
        assert digits is not None
        text = f"{head}.{digits.group()[:6].ljust(6, '0')}{frac[digits.end() :]}"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise BadRequest(f"Stream-Expires-At: {exc}") from None
    return int(moment.timestamp() * 1000)


def parse_int(name: str, value: str) -> int:
    if _INT.fullmatch(value) is None or int(value) > MAX_SAFE_INTEGER:
        raise BadRequest(f"{name} must be an integer from 0 to 2^53-1")
    return int(value)


def messages_of(body: bytes, *, allow_empty: bool) -> list[bytes]:
    """A JSON body as stored messages: one level of array flattened."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not valid JSON") from None
    values = value if isinstance(value, list) else [value]
    if not values and not allow_empty:
        raise BadRequest("an empty JSON array appends nothing")
    return [json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode() for v in values]


def items_of(meta: StreamMeta, body: bytes, *, allow_empty: bool) -> list[Item]:
    """The items ``body`` appends at ``meta.tail``."""
    start = meta.tail
    if meta.json_mode:
        if not body and allow_empty:
            return []
        messages = messages_of(body, allow_empty=allow_empty)
        end = start + len(messages)
        return [Item(start + i, m, end) for i, m in enumerate(messages)]
    if not body:
        return []
    return [Item(start, body, start + len(body))]


@dataclass(frozen=True)
class ProducerHeaders:
    id: str
    epoch: int
    seq: int

    @classmethod
    def parse(cls, pid: str | None, epoch: str | None, seq: str | None) -> ProducerHeaders | None:
        given = [v is not None for v in (pid, epoch, seq)]
        if not any(given):
            return None
        if not all(given):
            raise BadRequest("Producer-Id, Producer-Epoch and Producer-Seq go together")
        assert pid is not None
        assert epoch is not None
        assert seq is not None
        if not pid:
            raise BadRequest("Producer-Id must not be empty")
        return cls(pid, parse_int("Producer-Epoch", epoch), parse_int("Producer-Seq", seq))


@dataclass(frozen=True)
class AppendRequest:
    content_type: str | None
    body: bytes
    close: bool
    stream_seq: str | None
    producer: ProducerHeaders | None


@dataclass(frozen=True)
class CreateRequest:
    content_type: str | None
    body: bytes
    close: bool
    ttl: int | None
    expires_at: str | None
    expires_at_ms: int | None
    forked_from: str | None
    fork_offset: str | None
    fork_sub_offset: int


def offset_headers(meta: StreamMeta, **extra: str) -> dict[str, str]:
    headers = {"stream-next-offset": encode_offset(meta.tail), **extra}
    if meta.closed:
        headers["stream-closed"] = "true"
    return headers


@dataclass
class ReadResult:
    """A catch-up read: ``items`` cover ``[start, end)``; ``meta`` as read with them."""

    meta: StreamMeta
    items: list[Item]
    start: int
    end: int

    @property
    def up_to_date(self) -> bool:
        return self.end >= self.meta.tail

    @property
    def closed(self) -> bool:
        """EOF: the stream is closed and this read reached its end."""
        return self.meta.closed and self.up_to_date

    def body(self) -> bytes:
        if self.meta.json_mode:
            return b"[" + b",".join(i.data for i in self.items) + b"]"
        return b"".join(i.data for i in self.items)


class Service:
    """The protocol's decisions over a store.

    Args:
        storage: where streams live.
        max_read_bytes: the most a catch-up response carries (more: read on from
            ``Stream-Next-Offset``).
        max_retained: positions (bytes; JSON: messages) kept per stream; older ones are
            dropped, and reading them answers 410. None keeps everything.
    """

    def __init__(
        self,
        storage: DurableStorage,
        *,
        max_read_bytes: int = 1 << 20,
        max_retained: int | None = None,
    ) -> None:
        self.storage = storage
        self.max_read_bytes = max_read_bytes
        self.max_retained = max_retained
        # Writes to one stream from this process take turns: they would only lose
        # compare-and-set races to each other (one store round trip each, for nothing).
        # Other processes still race, and the compare-and-set settles those.
        self._turns: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._cache: OrderedDict[str, StreamMeta] = OrderedDict()

    @asynccontextmanager
    async def _turn(self, path: str) -> AsyncIterator[None]:
        entry = self._turns.get(path)
        if entry is None:
            entry = self._turns[path] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._turns[path]

    def _retain(self, meta: StreamMeta) -> None:
        """Retention: move ``first`` up so at most ``max_retained`` positions stay."""
        if self.max_retained is not None:
            meta.first = max(meta.first, meta.tail - self.max_retained)

    # -- create ---------------------------------------------------------------

    async def create(self, path: str, req: CreateRequest) -> Reply:
        if req.ttl is not None and req.expires_at is not None:
            raise BadRequest("Stream-TTL and Stream-Expires-At exclude each other")
        if req.forked_from is None and (req.fork_offset is not None or req.fork_sub_offset):
            raise BadRequest("Stream-Fork-Offset needs Stream-Forked-From")
        for _ in range(MAX_ATTEMPTS):
            existing = await self.storage.load(path)
            if existing is not None:
                return self._existing(existing, req)
            if req.forked_from is not None:
                reply = await self._fork(path, req)
            else:
                meta = StreamMeta(
                    content_type=req.content_type or DEFAULT_CONTENT_TYPE,
                    ttl=req.ttl,
                    expires_at=req.expires_at,
                    expires_at_ms=req.expires_at_ms,
                )
                items = items_of(meta, req.body, allow_empty=True)
                meta.tail = items[-1].start + items[-1].length(meta.whole_items) if items else 0
                meta.closed = req.close
                self._retain(meta)
                reply = await self._commit_new(path, meta, items)
            if reply is not None:
                return reply
        return _error(503, "too many concurrent writers")

    async def _commit_new(self, path: str, meta: StreamMeta, items: list[Item]) -> Reply | None:
        if not await self.storage.commit(path, 0, meta, items):
            return None
        return Reply(
            201, offset_headers(meta, **{"content-type": meta.content_type, "location": path})
        )

    def _existing(self, meta: StreamMeta, req: CreateRequest) -> Reply:
        if meta.soft_deleted:
            return _error(409, "a deleted stream with live forks holds this path")
        same = (req.content_type is None and req.forked_from is not None) or media_type(
            req.content_type or DEFAULT_CONTENT_TYPE
        ) == media_type(meta.content_type)
        fork = meta.fork or {}
        same = (
            same
            and meta.closed == req.close
            and (req.forked_from or None) == (fork.get("from") or None)
            and (req.fork_offset is None or req.fork_offset == fork.get("offset"))
            and req.fork_sub_offset == fork.get("sub", 0)
        )
        if req.forked_from is None or req.ttl is not None or req.expires_at is not None:
            same = same and req.ttl == meta.ttl and req.expires_at_ms == meta.expires_at_ms
        if not same:
            return _error(409, "a stream with another configuration exists at this path")
        return Reply(200, offset_headers(meta, **{"content-type": meta.content_type}))

    async def _fork(self, path: str, req: CreateRequest) -> Reply | None:
        assert req.forked_from is not None
        source = await self.storage.load(req.forked_from)
        if source is None:
            return _error(404, "no source stream at Stream-Forked-From")
        if source.soft_deleted:
            return _error(409, "the source stream is deleted")
        if req.content_type is not None and media_type(req.content_type) != media_type(
            source.content_type
        ):
            return _error(409, "a fork keeps its source's content type")
        if req.fork_offset is None:
            if req.fork_sub_offset:
                raise BadRequest("Stream-Fork-Sub-Offset needs Stream-Fork-Offset")
            anchor = source.tail
        else:
            anchor = self._position(source, req.fork_offset)
            if anchor > source.tail:
                raise BadRequest("Stream-Fork-Offset is past the source's tail")
        if anchor < source.first:
            return _error(410, "Stream-Fork-Offset is before the source's retained data")
        fork_at = anchor
        if req.fork_sub_offset:
            _, items = await self.storage.read(req.forked_from, anchor, 1)
            holder = next((i for i in items if i.start <= anchor < i.batch_end), None)
            if anchor >= source.tail or holder is None:
                raise BadRequest("Stream-Fork-Sub-Offset is past the source's data")
            if anchor + req.fork_sub_offset > holder.batch_end:
                raise BadRequest("Stream-Fork-Sub-Offset is past the next data boundary")
            fork_at = anchor + req.fork_sub_offset
        if not await self._adjust_refs(req.forked_from, source.id, +1):
            return None
        inherited = await self._copy(req.forked_from, source.id, source.first, fork_at)
        if inherited is None:
            await self._adjust_refs(req.forked_from, source.id, -1)
            return None
        ttl, expires_at, expires_at_ms = req.ttl, req.expires_at, req.expires_at_ms
        if ttl is None and expires_at is None:
            ttl, expires_at, expires_at_ms = source.ttl, source.expires_at, source.expires_at_ms
        meta = StreamMeta(
            content_type=source.content_type,
            ttl=ttl,
            expires_at=expires_at,
            expires_at_ms=expires_at_ms,
            tail=fork_at,
            first=source.first,
            fork={
                "from": req.forked_from,
                "offset": req.fork_offset if req.fork_offset is not None else encode_offset(anchor),
                "sub": req.fork_sub_offset,
                "source_id": source.id,
            },
        )
        items = inherited + items_of(meta, req.body, allow_empty=True)
        if items:
            meta.tail = max(meta.tail, items[-1].start + items[-1].length(meta.whole_items))
        meta.closed = req.close
        reply = await self._commit_new(path, meta, items)
        if reply is None:
            await self._adjust_refs(req.forked_from, source.id, -1)
        return reply

    async def _copy(self, path: str, stream_id: str, start: int, end: int) -> list[Item] | None:
        """The items of ``path`` in ``[start, end)``, cut there; None if the stream
        changed (or dropped them meanwhile)."""
        out: list[Item] = []
        pos = start
        while pos < end:
            meta, items = await self.storage.read(path, pos, PAGE_ITEMS)
            if meta is None or meta.id != stream_id:
                return None
            part, pos_next = _cut(items, pos, end, meta.whole_items)
            if pos_next <= pos:
                return None
            # The fork's own boundary ends its copy of a batch cut by a sub-offset.
            out.extend(Item(i.start, i.data, min(i.batch_end, end)) for i in part)
            pos = pos_next
        return out

    async def _adjust_refs(self, path: str, stream_id: str, delta: int) -> bool:
        """Count a fork in or out of its source; a soft-deleted source with no fork
        left goes for good, and releases its own source in turn."""
        for _ in range(MAX_ATTEMPTS):
            meta = await self.storage.load(path)
            if meta is None or meta.id != stream_id:
                return False
            if delta > 0 and meta.soft_deleted:
                return False
            version = meta.version
            meta.refs = max(0, meta.refs + delta)
            if meta.soft_deleted and meta.refs == 0:
                if await self.storage.commit(path, version, None, expected_id=meta.id):
                    await self._release(meta)
                    return True
                continue
            if await self.storage.commit(path, version, meta, expected_id=meta.id):
                return True
        return False

    async def _release(self, meta: StreamMeta) -> None:
        if meta.fork is not None:
            await self._adjust_refs(meta.fork["from"], meta.fork["source_id"], -1)

    # -- delete ---------------------------------------------------------------

    async def delete(self, path: str) -> Reply:
        self._cache.pop(path, None)
        for _ in range(MAX_ATTEMPTS):
            meta = await self.storage.load(path)
            if meta is None:
                return _error(404, "no such stream")
            if meta.soft_deleted:
                return _error(410, "the stream is deleted")
            version = meta.version
            if meta.refs > 0:
                meta.soft_deleted = True
                if await self.storage.commit(path, version, meta, expected_id=meta.id):
                    return Reply(204)
                continue
            if await self.storage.commit(path, version, None, expected_id=meta.id):
                await self._release(meta)
                return Reply(204)
        return _error(503, "too many concurrent writers")

    # -- append ---------------------------------------------------------------

    async def append(self, path: str, req: AppendRequest) -> Reply:
        if not req.body and not req.close:
            raise BadRequest("an empty body appends nothing (close with Stream-Closed: true)")
        async with self._turn(path):
            return await self._append(path, req)

    async def _append(self, path: str, req: AppendRequest) -> Reply:
        # The metadata this process committed last is usually still current (writers
        # of a stream tend to stay on one process): start from it, and the
        # compare-and-set (version and stream id) refuses it if it is not. An answer
        # that commits nothing is only given from freshly loaded metadata.
        cached = self._cache.pop(path, None)
        for _ in range(MAX_ATTEMPTS):
            meta = cached if cached is not None else await self.storage.load(path)
            from_cache, cached = cached is not None, None
            if meta is None:
                return _error(404, "no such stream")
            if meta.soft_deleted:
                return _error(410, "the stream is deleted")
            decided = self._decide_append(meta, req)
            if isinstance(decided, Reply):
                if from_cache:
                    continue
                return decided
            version, items, reply = decided
            if await self.storage.commit(path, version, meta, items, expected_id=meta.id):
                meta.version = version + 1
                self._remember(path, meta)
                reply.headers.update(offset_headers(meta))
                return reply
        return _error(503, "too many concurrent writers")

    def _remember(self, path: str, meta: StreamMeta) -> None:
        self._cache[path] = meta
        self._cache.move_to_end(path)
        while len(self._cache) > CACHED_STREAMS:
            self._cache.popitem(last=False)

    def _decide_append(
        self, meta: StreamMeta, req: AppendRequest
    ) -> Reply | tuple[int, list[Item], Reply]:
        """The answer to ``req`` on ``meta``, or the commit to make (``meta`` updated)."""
        version = meta.version
        producer = req.producer
        state = meta.producers.get(producer.id) if producer is not None else None
        if producer is not None and state is not None and producer.epoch < state.epoch:
            return _error(403, "stale producer epoch", **{"producer-epoch": str(state.epoch)})
        if meta.closed:
            if producer is not None and meta.closed_by == (
                producer.id,
                producer.epoch,
                producer.seq,
            ):
                return Reply(
                    204,
                    offset_headers(
                        meta,
                        **{
                            "producer-epoch": str(producer.epoch),
                            "producer-seq": str(producer.seq),
                        },
                    ),
                )
            if not req.body and req.close:
                return Reply(204, offset_headers(meta))
            return _error(409, "the stream is closed", **offset_headers(meta))
        if req.body:
            if req.content_type is None:
                raise BadRequest("Content-Type is required with a body")
            if media_type(req.content_type) != media_type(meta.content_type):
                return _error(409, "Content-Type does not match the stream's")
        items = items_of(meta, req.body, allow_empty=False) if req.body else []
        reply = Reply(204)
        if producer is not None:
            if state is None or producer.epoch > state.epoch:
                if producer.seq != 0:
                    if state is not None:
                        raise BadRequest("a new Producer-Epoch starts at Producer-Seq 0")
                    return _error(
                        409,
                        "Producer-Seq gap",
                        **{
                            "producer-expected-seq": "0",
                            "producer-received-seq": str(producer.seq),
                        },
                    )
            elif producer.seq <= state.seq:
                return Reply(
                    204,
                    offset_headers(
                        meta,
                        **{"producer-epoch": str(state.epoch), "producer-seq": str(state.seq)},
                    ),
                )
            elif producer.seq > state.seq + 1:
                return _error(
                    409,
                    "Producer-Seq gap",
                    **{
                        "producer-expected-seq": str(state.seq + 1),
                        "producer-received-seq": str(producer.seq),
                    },
                )
        # After the producer's dedupe: a retry is a duplicate, not a Stream-Seq regression.
        if (
            req.stream_seq is not None
            and meta.stream_seq is not None
            and req.stream_seq.encode() <= meta.stream_seq.encode()
        ):
            return _error(409, "Stream-Seq must grow")
        if producer is not None:
            meta.producers[producer.id] = Producer(producer.epoch, producer.seq)
            # New data is 200; a close that appends nothing is 204 like any close.
            reply = Reply(
                200 if items else 204,
                {"producer-epoch": str(producer.epoch), "producer-seq": str(producer.seq)},
            )
        if req.stream_seq is not None:
            meta.stream_seq = req.stream_seq
        if items:
            meta.tail = items[-1].start + items[-1].length(meta.whole_items)
            self._retain(meta)
        if req.close:
            meta.closed = True
            if producer is not None:
                meta.closed_by = (producer.id, producer.epoch, producer.seq)
        return version, items, reply

    # -- read -----------------------------------------------------------------

    def _position(self, meta: StreamMeta, offset: str) -> int:
        if offset == "-1":
            return 0
        if offset == "now":
            return meta.tail
        position = decode_offset(offset)
        if position is None:
            raise BadRequest("malformed offset")
        return position

    async def head(self, path: str) -> Reply:
        meta = await self.storage.load(path)
        if meta is None:
            return _error(404, "no such stream")
        if meta.soft_deleted:
            return _error(410, "the stream is deleted")
        headers = offset_headers(meta, **{"content-type": meta.content_type})
        if meta.ttl is not None:
            headers["stream-ttl"] = str(meta.ttl)
        if meta.expires_at is not None:
            headers["stream-expires-at"] = meta.expires_at
        if meta.error is not None:
            headers["stream-error"] = header_text(meta.error)
        headers["cache-control"] = "no-store"
        return Reply(200, headers)

    async def locate(self, path: str, offset: str) -> tuple[StreamMeta, int] | Reply:
        """The stream and the position ``offset`` names in it, or the error reply."""
        meta = await self.storage.load(path)
        if meta is None:
            return _error(404, "no such stream")
        if meta.soft_deleted:
            return _error(410, "the stream is deleted")
        position = self._position(meta, offset)
        if position > meta.tail:
            raise BadRequest("the offset is past the stream's tail")
        if position < meta.first:
            return _error(410, "the offset is before the data the stream retains")
        return meta, position

    async def read(self, path: str, start: int) -> ReadResult | Reply:
        """Items from ``start`` (at most ``max_read_bytes``), renewing a TTL."""
        meta, items = await self.storage.read(path, start, PAGE_ITEMS)
        if meta is None:
            return _error(404, "no such stream")
        if meta.soft_deleted:
            return _error(410, "the stream is deleted")
        if start < meta.first:
            return _error(410, "the offset is before the data the stream retains")
        part, end = _cut(items, start, meta.tail, meta.whole_items, self.max_read_bytes)
        if meta.ttl is not None:
            await self.storage.touch(path, meta)
        return ReadResult(meta, part, start, max(end, start))


def _cut(
    items: Sequence[Item], start: int, end: int, whole: bool, max_bytes: int | None = None
) -> tuple[list[Item], int]:
    """The parts of ``items`` within ``[start, end)``, in order, at most about
    ``max_bytes`` (``whole``: items are never cut; else bytes are cut anywhere); and
    where they end. Items wholly inside are passed on as they are (no copy)."""
    out: list[Item] = []
    size = 0
    pos = start
    for item in items:
        first = item.start
        length = 1 if whole else len(item.data)
        stop = first + length
        if stop <= pos:
            continue
        if first >= end or first > pos:
            break
        if whole:
            if max_bytes is not None and out and size + len(item.data) > max_bytes:
                break
            out.append(item)
            size += len(item.data)
            pos = stop
            continue
        lo = pos - first
        hi = (end if stop > end else stop) - first
        if max_bytes is not None:
            room = max_bytes - size
            if room <= 0:
                break
            if hi - lo > room:
                hi = lo + room
        if lo == 0 and hi == length:
            out.append(item)
        else:
            out.append(Item(first + lo, item.data[lo:hi], item.batch_end))
        size += hi - lo
        pos = first + hi
        if pos < stop and pos < end:
            break
    return out, pos
