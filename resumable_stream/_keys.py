"""Stream ids and the Redis key layout.

Every key of one stream shares the hash tag ``{<escaped id>}`` so that a stream lives
in one Redis Cluster slot::

    <prefix>:{<id>}:meta     hash: status, producer token, error
    <prefix>:{<id>}:chunks   list: one msgpack-encoded chunk per element
    <prefix>:{<id>}:lease    string: the producer token, with a PX expiry
    <prefix>:{<id>}:events   pub/sub channel (not a key)

The id is percent-escaped (``%``, ``{``, ``}``, whitespace and control characters), an
injective mapping: no id can close its tag early or collide with another id's keys.
"""

from __future__ import annotations

from urllib.parse import quote

from ._exceptions import InvalidArgument, InvalidStreamId

__all__ = ["MAX_STREAM_ID_LENGTH", "StreamKeys", "validate_prefix", "validate_stream_id"]

MAX_STREAM_ID_LENGTH = 256
_SAFE = "!\"#$&'()*+,-./:;<=>?@[\\]^_`|~"


def validate_stream_id(stream_id: object) -> str:
    """Return ``stream_id`` if usable, else raise `InvalidStreamId`.

    Usable: a non-empty ``str`` of at most `MAX_STREAM_ID_LENGTH` characters that is
    valid Unicode text. A lone surrogate (``"a\\ud800"``, which ``json.loads`` and
    ``surrogateescape`` decoding hand out) has no UTF-8 form, so it could name no key,
    no URL and no header: it is refused here rather than failing deep in a backend.

    Raises:
        InvalidStreamId: not a str, empty, too long, or holding a lone surrogate.
    """
    if not isinstance(stream_id, str):
        raise InvalidStreamId(f"stream id must be a str, not {type(stream_id).__name__}")
    if not stream_id:
        raise InvalidStreamId("stream id must not be empty")
    if len(stream_id) > MAX_STREAM_ID_LENGTH:
        raise InvalidStreamId(
            f"stream id is {len(stream_id)} characters long; the limit is {MAX_STREAM_ID_LENGTH}"
        )
    if not stream_id.isascii():
        try:
            stream_id.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidStreamId(
                f"stream id holds a lone surrogate at {exc.start}: {stream_id!r}"
            ) from None
    return stream_id


def validate_prefix(prefix: object) -> str:
    if not isinstance(prefix, str) or not prefix:
        raise InvalidArgument("key_prefix must be a non-empty str")
    if "{" in prefix or "}" in prefix:
        raise InvalidArgument("key_prefix must not contain '{' or '}' (they delimit the hash tag)")
    return prefix


class StreamKeys:
    """The names of one stream's keys and channel."""

    __slots__ = ("chunks", "events", "lease", "meta")

    def __init__(self, prefix: str, stream_id: str) -> None:
        base = f"{prefix}:{{{quote(stream_id, safe=_SAFE)}}}"
        self.meta = f"{base}:meta"
        self.chunks = f"{base}:chunks"
        self.lease = f"{base}:lease"
        self.events = f"{base}:events"
