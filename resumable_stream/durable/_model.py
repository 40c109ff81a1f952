"""What a Durable Streams stream is in storage: its metadata record and its items.

Positions are integers that only grow. A byte stream counts bytes; a JSON stream counts
messages (one item per message, so a read never splits one). An item remembers where the
append that wrote it ended (``batch_end``): a fork's sub-offset may not reach past it.

Offsets on the wire are ``0000000000000000_<position, 16 digits>``: opaque to clients,
sortable as strings, free of ``,&=?/``, never ``-1`` or ``now``, and the shape the
reference server uses (its first part is a read sequence; ours is always zero), so an
offset a client saved from one server means the start of the stream on the other too.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Item",
    "StreamMeta",
    "decode_offset",
    "encode_offset",
    "is_json",
    "is_text",
    "media_type",
]

_OFFSET = re.compile(r"0{16}_(\d{16})")
OFFSET_DIGITS = 16


def encode_offset(position: int) -> str:
    """The wire offset of ``position``."""
    return f"{0:0{OFFSET_DIGITS}d}_{position:0{OFFSET_DIGITS}d}"


def decode_offset(text: str) -> int | None:
    """The position an offset names, or None if it is not one of ours."""
    match = _OFFSET.fullmatch(text)
    if match is None:
        return None
    return int(match.group(1))


def media_type(content_type: str) -> str:
    """``Text/Plain; charset=utf-8`` -> ``text/plain``: what streams are compared by."""
    return content_type.split(";", 1)[0].strip().lower()


def is_json(content_type: str) -> bool:
    return media_type(content_type) == "application/json"


def is_text(content_type: str) -> bool:
    """Text and JSON travel as UTF-8 in SSE; everything else as base64."""
    mt = media_type(content_type)
    return mt.startswith("text/") or mt == "application/json"


@dataclass(frozen=True)
class Item:
    """Stored data starting at position ``start``: bytes, or one JSON message's text."""

    start: int
    data: bytes
    batch_end: int

    def length(self, whole: bool) -> int:
        """Positions it spans: one if positions count whole items, else its bytes."""
        return 1 if whole else len(self.data)

    def encode(self) -> bytes:
        """``start:batch_end:data``, unique per stream (the start is)."""
        return b"%d:%d:" % (self.start, self.batch_end) + self.data

    @classmethod
    def decode(cls, raw: bytes) -> Item:
        start, batch_end, data = raw.split(b":", 2)
        return cls(int(start), data, int(batch_end))


@dataclass
class Producer:
    """An idempotent producer's fencing state: its epoch and last accepted seq."""

    epoch: int
    seq: int


@dataclass
class StreamMeta:
    """Everything about a stream but its data; stored as one JSON document.

    ``version`` grows by one with every commit: writers compare-and-set on it, which
    serialises appends, producers' fencing and closes across processes.
    """

    content_type: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    version: int = 0
    tail: int = 0
    # The earliest position still stored (retention drops what is before it): reading
    # an offset before it answers 410.
    first: int = 0
    closed: bool = False
    ttl: int | None = None
    expires_at: str | None = None
    expires_at_ms: int | None = None
    stream_seq: str | None = None
    producers: dict[str, Producer] = field(default_factory=dict)
    closed_by: tuple[str, int, int] | None = None
    fork: dict[str, Any] | None = None
    refs: int = 0
    soft_deleted: bool = False
    # Streams of ``ctx.resumable_stream`` producers (never stored as metadata): read
    # only, positions count chunks, and a failure is told by ``error``.
    chunked: bool = False
    read_only: bool = False
    error: str | None = None

    @property
    def json_mode(self) -> bool:
        return is_json(self.content_type)

    @property
    def whole_items(self) -> bool:
        """Positions count items (JSON messages, chunks), not bytes."""
        return self.json_mode or self.chunked

    def dumps(self) -> bytes:
        doc = {
            "ct": self.content_type,
            "id": self.id,
            "tail": self.tail,
            "first": self.first,
            "closed": self.closed,
            "ttl": self.ttl,
            "exp": self.expires_at,
            "exp_ms": self.expires_at_ms,
            "seq": self.stream_seq,
            "prod": {k: [p.epoch, p.seq] for k, p in self.producers.items()},
            "closed_by": list(self.closed_by) if self.closed_by else None,
            "fork": self.fork,
            "refs": self.refs,
            "gone": self.soft_deleted,
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def loads(cls, raw: bytes, version: int) -> StreamMeta:
        doc = json.loads(raw)
        closed_by = doc["closed_by"]
        return cls(
            content_type=doc["ct"],
            id=doc["id"],
            version=version,
            tail=doc["tail"],
            first=doc.get("first", 0),
            closed=doc["closed"],
            ttl=doc["ttl"],
            expires_at=doc["exp"],
            expires_at_ms=doc["exp_ms"],
            stream_seq=doc["seq"],
            producers={k: Producer(e, s) for k, (e, s) in doc["prod"].items()},
            closed_by=(closed_by[0], closed_by[1], closed_by[2]) if closed_by else None,
            fork=doc["fork"],
            refs=doc["refs"],
            soft_deleted=doc["gone"],
        )

    def copy(self) -> StreamMeta:
        return StreamMeta.loads(self.dumps(), self.version)
