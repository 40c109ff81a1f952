"""The Redis wire format, written once for every backend that speaks it.

`RedisBackend` (TCP, pipelined), `RedisClusterBackend` (TCP, one call per slot) and
`UpstashBackend` (REST) store a stream byte for byte alike: the same keys, the same Lua
scripts called with the same arguments, the same pub/sub messages, so that any of them
reads what another wrote. What differs is only how a call travels, and that is all
their modules do. Everything else lives here:

* the scripts (``lua/*.lua``): text, SHA, and the RESP head of a call
  (``EVALSHA <sha> <number of keys>``); `pack_call` packs the rest of a call;
* durations in milliseconds (`ms`, `lease_ms`);
* each call's keys and arguments, in the order they follow ``EVALSHA <sha> <n>``
  (`Wire`), and the replies of ``claim.lua`` and ``snapshot.lua``;
* the messages ``write.lua`` publishes (`APPEND`, `END`, `decode_event`);
* what a write's reply means (`write_outcome`), and a deletion (`Wire.delete_call`).

No driver is imported here: the Upstash backend needs only httpx. A script that the
server does not know answers an error starting with `NOSCRIPT`; each transport then
loads it (``SCRIPT LOAD``, or ``EVAL`` over REST) and sends the call again.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any, NamedTuple

import msgpack

from .._exceptions import StreamDeleted
from .._keys import StreamKeys, validate_prefix
from .._types import Appended, Chunk, Ended, Event, Snapshot, StreamStatus
from ._protocol import StaleProducer

__all__ = [
    "APPEND",
    "END",
    "NOSCRIPT",
    "Script",
    "Scripts",
    "WRITE_FIXED",
    "Wire",
    "WritePart",
    "decode_event",
    "lease_ms",
    "ms",
    "pack_call",
    "parse_snapshot",
    "scripts",
    "status_of",
    "stream_keys",
    "write_outcome",
]

# Message kinds, the first msgpack value of every message write.lua publishes.
APPEND = msgpack.packb(0)  # then the start index, then the chunks
END = msgpack.packb(1)  # then the status, the length, the error text
NOSCRIPT = "NOSCRIPT"  # how a server that lacks a script refuses its EVALSHA


def ms(seconds: float) -> int:
    """A duration in ms for a script, at least 1 (``PEXPIRE 0`` would delete now)."""
    return max(1, int(seconds * 1000))


def lease_ms(seconds: float) -> int:
    """A write's lease in ms; 0 (a released claim) deletes the lease now."""
    return 0 if seconds <= 0 else ms(seconds)


def _lua(name: str) -> str:
    return resources.files(__package__).joinpath("lua").joinpath(name).read_text("utf-8")


class Script:
    """One Lua script: its text (behind a prelude, over REST), its SHA, and ``head``,
    the RESP of ``EVALSHA <sha> 3`` (a stream's three keys), packed once."""

    __slots__ = ("head", "name", "sha", "text")

    def __init__(self, name: str, prelude: str = "") -> None:
        self.name = name
        self.text = prelude + _lua(name)
        self.sha = hashlib.sha1(self.text.encode()).hexdigest()
        self.head = self.head_for(3)

    def head_for(self, keys: int) -> bytes:
        """``EVALSHA <sha> <keys>`` in RESP, the first three parts of a call."""
        n = str(keys).encode()
        return b"$7\r\nEVALSHA\r\n$40\r\n%s\r\n$%d\r\n%s\r\n" % (self.sha.encode(), len(n), n)


class Scripts(NamedTuple):
    """Every script a backend runs."""

    claim: Script
    write: Script
    snapshot: Script
    stop: Script
    delete: Script
    deleted: Script


@functools.cache
def scripts(*, rest: bool = False) -> Scripts:
    """The scripts, read once per process; with ``rest``, each behind
    ``lua/rest_args.lua``, which decodes the base64 arguments a JSON body carries."""
    prelude = ""
    if rest:
        prelude = _lua("rest_args.lua")
    names = ("claim", "write", "snapshot", "stop", "delete", "deleted")
    return Scripts(*(Script(f"{name}.lua", prelude) for name in names))


def pack_call(head: bytes, args: Sequence[Any]) -> bytes:
    """One script call in RESP: ``head`` (see `Script.head_for`), then ``args``.

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


_MULTI = b"*1\r\n$5\r\nMULTI\r\n"
_EXEC = b"*1\r\n$4\r\nEXEC\r\n"


def _bulk(*values: str | bytes | int) -> bytes:
    """``values`` as RESP bulk strings, back to back."""
    out = []
    for value in values:
        data = value if type(value) is bytes else str(value).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


@functools.lru_cache(maxsize=4096)
def _write_fixed(
    k: StreamKeys, token: str, ttl: float, finished_ttl: float, lease: float
) -> tuple[bytes, bytes]:
    """The RESP of what does not change between a stream's writes: its three keys, and
    the first five of its arguments (token, expiries in ms, channel). Cached by the
    seconds as given: converting them costs a third of packing a one-chunk write."""
    fixed = _bulk(token, ms(ttl), ms(finished_ttl), lease_ms(lease), k.events)
    return _bulk(k.meta, k.chunks, k.lease), fixed


_NO_END = _bulk(b"", b"", b"")
WRITE_FIXED = 11  # write.lua's arguments per stream before its chunks


class WritePart(NamedTuple):
    """One stream's part of a ``write.lua`` call, in RESP, ready to join others."""

    keys: bytes  # its three keys
    args: bytes  # its arguments
    nargs: int  # how many arguments ``args`` holds
    chunks: bool  # whether it carries chunks (these go first: see write.lua)


@functools.lru_cache(maxsize=4096)
def stream_keys(prefix: str, stream_id: str) -> StreamKeys:
    """A stream's keys, for readers and one-off commands."""
    return StreamKeys(prefix, stream_id)


class Wire:
    """One backend's side of the scripts: its keys, and each call's keys and arguments.

    Args:
        key_prefix: first part of every key; must not contain ``{`` or ``}``.
        publish: how ``write.lua`` announces: ``PUBLISH``, or ``SPUBLISH`` on a
            Redis Cluster (the message stays on the shard of the stream's slot).

    Raises:
        InvalidArgument: a bad ``key_prefix``.
    """

    __slots__ = ("_live", "_pack", "_publish", "key_prefix", "publish")

    def __init__(self, key_prefix: str, *, publish: str = "PUBLISH") -> None:
        self.key_prefix = validate_prefix(key_prefix)
        self.publish = publish
        self._publish = _bulk(publish)
        self._pack = msgpack.Packer().pack
        # Keys of the streams this process produces, made once: a write's other
        # arguments cost less than escaping the id again (`stream_keys` for the rest).
        self._live: dict[str, StreamKeys] = {}

    def keys(self, stream_id: str) -> StreamKeys:
        keys = self._live.get(stream_id)
        return keys if keys is not None else stream_keys(self.key_prefix, stream_id)

    @staticmethod
    def claim_call(
        k: StreamKeys, token: str, ttl: float, lease: float, metadata: bytes
    ) -> list[Any]:
        """``claim.lua``'s three keys and its arguments (see the script's header)."""
        return [k.meta, k.chunks, k.lease, token, ms(ttl), ms(lease), metadata]

    def claimed(self, stream_id: str, keys: StreamKeys, reply: bytes | None) -> StreamStatus | None:
        """``claim.lua``'s reply: None, the caller produces (its keys are kept until its
        end is written), or the status the stream has."""
        if reply is None:
            self._live[stream_id] = keys
            return None
        return StreamStatus(reply.decode())

    def write_call(
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
        """A ``write.lua`` call of one stream: its three keys and the arguments (see the
        script's header); the reply holds one value, for `write_outcome`.

        Raises:
            UnicodeEncodeError: a str chunk holding a lone surrogate, which msgpack
                cannot encode; nothing was sent.
        """
        end_status, end_error, end_message = self._end(start + len(chunks), end)
        pack = self._pack
        args: list[Any] = [
            k.meta, k.chunks, k.lease, self.publish,
            token, ms(ttl), ms(finished_ttl), lease_ms(lease), k.events,
            start, end_status, end_error, end_message, APPEND + pack(start), len(chunks),
        ]  # fmt: skip
        args.extend(pack(chunk) for chunk in chunks)
        return args

    def write_part(
        self,
        k: StreamKeys,
        token: str,
        start: int,
        chunks: Sequence[Chunk],
        end: Ended | None,
        ttl: float,
        finished_ttl: float,
        lease: float,
    ) -> WritePart:
        """`write_call` as one stream's part of a call of many (`write_command`).

        What stays the same for a stream's every write is packed once
        (`_write_fixed`); per write only the start, the end and the chunks are.

        Raises:
            UnicodeEncodeError: as `write_call`; nothing was sent.
        """
        keys, fixed = _write_fixed(k, token, ttl, finished_ttl, lease)
        pack = self._pack
        index = b"%d" % start
        header = APPEND + pack(start)
        n = b"%d" % len(chunks)
        parts = [
            fixed, b"$%d\r\n%s\r\n" % (len(index), index),
            _NO_END if end is None else _bulk(*self._end(start + len(chunks), end)),
            b"$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(header), header, len(n), n),
        ]  # fmt: skip
        for chunk in chunks:
            value = pack(chunk)
            parts.append(b"$%d\r\n%s\r\n" % (len(value), value))
        return WritePart(keys, b"".join(parts), WRITE_FIXED + len(chunks), bool(chunks))

    def write_command(self, script: Script, parts: Sequence[WritePart]) -> bytes:
        """One ``write.lua`` call of every stream in ``parts``, in their order, in RESP;
        its reply holds a value per part, for `write_outcome`."""
        count = 4 + 3 * len(parts) + sum(part.nargs for part in parts)  # + EVALSHA, sha, n, publish
        out = [b"*%d\r\n" % count, script.head_for(3 * len(parts))]
        out += [part.keys for part in parts]
        out.append(self._publish)
        out += [part.args for part in parts]
        return b"".join(out)

    def _end(self, length: int, end: Ended | None) -> tuple[bytes, bytes, bytes]:
        """An end's three arguments: its status, its error text, and its message."""
        if end is None:
            return b"", b"", b""
        pack = self._pack
        message = END + pack(end.status.value) + pack(length) + pack(end.error or "")
        return end.status.value.encode(), (end.error or "").encode(), message

    @staticmethod
    def snapshot_call(k: StreamKeys, start: int, limit: int) -> list[Any]:
        """``snapshot.lua``'s three keys and its arguments."""
        return [k.meta, k.chunks, k.lease, start, limit]

    @staticmethod
    def snapshot_transaction(script: Script, k: StreamKeys, start: int, limit: int) -> bytes:
        """A snapshot as ``MULTI``, ``snapshot.lua`` for the state alone, ``LRANGE`` of
        the page, ``EXEC``: as atomic as the script's own read, and Redis hands out
        the page's elements without copying each into Lua and back (~0.3 us each:
        717 against 81 us of server time per page of 2,000). Its replies are `EXEC`'s
        two, for `parse_snapshot`."""
        return b"".join((
            _MULTI,
            pack_call(script.head, [k.meta, k.chunks, k.lease, start, 0]),
            b"*4\r\n$6\r\nLRANGE\r\n" + _bulk(k.chunks, start, start + limit - 1),
            _EXEC,
        ))

    def delete_call(self, k: StreamKeys, ttl: float) -> list[Any]:
        """``delete.lua``'s three keys and its arguments: the tombstone's expiry and the
        end it announces (failed at length 0: every reader is at or past it, so none
        tries to read chunks that are gone)."""
        message = END + self._pack("failed") + self._pack(0) + self._pack(StreamDeleted.ERROR)
        return [k.meta, k.chunks, k.lease, ms(ttl), k.events, message, self.publish]

    def ended(self, stream_id: str) -> None:
        """The last write of this process's producer is on its way: forget its keys."""
        self._live.pop(stream_id, None)


def parse_snapshot(reply: Any, elements: list[bytes] | None = None) -> Snapshot | None:
    """``snapshot.lua``'s reply (binary, as the script returns it), and the page's
    list elements when they were read beside it (`Wire.snapshot_transaction`); None:
    no stream.

    Raises:
        ValueError: the page does not hold the number of chunks the script counted.
    """
    if reply is None:
        return None
    status, error, length, lease, page, metadata, count = reply
    if elements is not None:
        page, count = b"".join(elements), len(elements)
    chunks: list[Chunk] = []
    if count:
        # The page is the stored msgpack values back to back: one C-level decode.
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(page), 1 << 20))
        unpacker.feed(page)
        chunks = list(unpacker)
        if len(chunks) != count:
            raise ValueError(f"a snapshot page of {count} chunks decoded to {len(chunks)}")
    return Snapshot(
        status=StreamStatus(status.decode()),
        length=length,
        chunks=chunks,
        lease_alive=bool(lease),
        error=error.decode() or None,
        metadata=metadata,
    )


def status_of(snap: Snapshot | None) -> StreamStatus | None:
    """`Backend.status` from a snapshot: FAILED for a running stream whose lease lapsed."""
    if snap is None:
        return None
    if snap.status is StreamStatus.RUNNING and not snap.lease_alive:
        return StreamStatus.FAILED  # the producer died
    return snap.status


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
            # Inline checks, no generator: this runs for every message of every reader.
            start = next(unpacker)
            if type(start) is not int or start < 0:
                raise ValueError(f"not an index: {start!r:.40}")
            chunks = tuple(unpacker)
            if not chunks:
                raise ValueError("an append without chunks")
            for chunk in chunks:
                if type(chunk) is not str and type(chunk) is not bytes:
                    raise ValueError(f"a chunk of another type: {type(chunk).__name__}")
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


_REFUSALS = {
    -1: "STALE not the producer of a running stream",
    -2: "STALE write at {start}: the stored length differs",
    -3: "STALE deleted: the stream was deleted",
}


def write_outcome(
    stream_id: str, start: int, value: Any, refused: Callable[[str], Exception]
) -> bool:
    """One stream's value in a ``write.lua`` reply: True if a stop was requested.

    Raises:
        StaleProducer: refused (not its stream any more, or not at the stored length;
            ``deleted`` for a tombstone's).
        Exception: ``refused(text)``, for an error Redis answered one of the stream's
            commands (the transport knows which of them a retry may fix).
    """
    if type(value) is int:
        if value >= 0:
            return value == 1
        text = _REFUSALS.get(value)
        if text is not None:
            raise StaleProducer(
                f"stream {stream_id!r}: {text.format(start=start)}", deleted=value == -3
            )
        raise ValueError(f"write.lua answered {value} for stream {stream_id!r}")
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    raise refused(str(value))
