"""Errors raised by resumable-stream.

The tree::

    ResumableStreamError
    ├── InvalidArgument (also ValueError)
    │   └── InvalidStreamId
    ├── StreamNotFound (also LookupError)
    ├── StreamAlreadyExists
    ├── StreamFailed            the producer's source raised; carries its message
    │   └── StreamTooLarge      the stream passed ``max_stream_bytes`` and was cut there
    ├── StreamDeleted           ``ctx.delete_stream`` removed the stream while it was read
    ├── ProducerLost            the producer stopped renewing its lease (process died)
    ├── TooManyStreams          ``max_streams`` producers already run in this context
    ├── TooManyFollowers        ``max_followers`` readers already follow this stream here
    └── BackendUnavailable (also ConnectionError)
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailable",
    "InvalidArgument",
    "InvalidStreamId",
    "ProducerLost",
    "ResumableStreamError",
    "StreamAlreadyExists",
    "StreamDeleted",
    "StreamFailed",
    "StreamNotFound",
    "StreamTooLarge",
    "TooManyFollowers",
    "TooManyStreams",
]


def describe(exc: BaseException) -> str:
    """``"Type: message"``: redis-py 8's exceptions print no message in their repr."""
    return f"{type(exc).__name__}: {exc}"


class ResumableStreamError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidArgument(ResumableStreamError, ValueError):
    """An argument is out of range (a negative skip, a bad option)."""


class InvalidStreamId(InvalidArgument):
    """A stream id is empty, too long or not a string."""


class StreamNotFound(ResumableStreamError, LookupError):
    """No stream with this id exists (never created, or expired)."""

    def __init__(self, stream_id: str) -> None:
        super().__init__(f"no stream with id {stream_id!r}")
        self.stream_id = stream_id


class StreamAlreadyExists(ResumableStreamError):
    """`create_new_resumable_stream` was called for an id that is still running."""

    def __init__(self, stream_id: str) -> None:
        super().__init__(f"stream {stream_id!r} already exists and is running")
        self.stream_id = stream_id


class StreamFailed(ResumableStreamError):
    """The producer's source raised; followers get this with the original message.

    Attributes:
        stream_id: the stream's id.
        error: ``"<ExceptionType>: <message>"`` of the source's exception.
    """

    def __init__(self, stream_id: str, error: str) -> None:
        super().__init__(f"stream {stream_id!r} failed: {error}")
        self.stream_id = stream_id
        self.error = error


class StreamTooLarge(StreamFailed):
    """The stream's stored bytes would pass ``StreamOptions.max_stream_bytes``.

    The producer stopped before the chunk that would pass the cap: every chunk before
    it is stored and delivered, that chunk and the rest of the source are not, and the
    stream is marked failed. The original reader and followers in any process get this
    error after the last stored chunk (it is a `StreamFailed`, with ``error`` starting
    with ``"StreamTooLarge:"``), so a cut stream never reads as complete.
    """

    PREFIX = "StreamTooLarge:"

    @classmethod
    def for_limit(cls, stream_id: str, limit: int) -> StreamTooLarge:
        return cls(stream_id, f"{cls.PREFIX} more than max_stream_bytes={limit} bytes")


class StreamDeleted(ResumableStreamError):
    """The stream was deleted (`ResumableStreamContext.delete_stream`) while it was read.

    Every reader of the stream, in any process, the original one included, ends with
    this error; its stored chunks are gone, so nothing more is delivered. A resume that
    starts after the delete gets `StreamNotFound`, as for an id that never existed.
    The deletion travels as a failed end whose error text starts with `PREFIX`.
    """

    PREFIX = "StreamDeleted:"
    ERROR = f"{PREFIX} the stream was deleted"

    def __init__(self, stream_id: str) -> None:
        super().__init__(f"stream {stream_id!r} was deleted")
        self.stream_id = stream_id


class ProducerLost(ResumableStreamError):
    """The stream is still marked running but its producer stopped renewing its lease.

    This happens when the producing process was killed or lost its Redis connection
    for longer than the lease.
    """

    def __init__(self, stream_id: str) -> None:
        super().__init__(f"the producer of stream {stream_id!r} is gone (lease expired)")
        self.stream_id = stream_id


class TooManyStreams(ResumableStreamError):
    """The context already runs ``StreamOptions.max_streams`` producers.

    Raised before anything is stored: the stream does not exist and ``make_stream``
    was not called. Try again later (the HTTP layer answers ``503`` with ``Retry-After``).
    """

    def __init__(self, limit: int) -> None:
        super().__init__(f"this process already runs max_streams={limit} streams")
        self.limit = limit


class TooManyFollowers(ResumableStreamError):
    """This context already has ``StreamOptions.max_followers`` readers of the stream.

    Raised before subscribing; the stream itself is not affected.
    """

    def __init__(self, stream_id: str, limit: int) -> None:
        super().__init__(
            f"stream {stream_id!r} already has max_followers={limit} readers in this process"
        )
        self.stream_id = stream_id
        self.limit = limit


class BackendUnavailable(ResumableStreamError, ConnectionError):
    """The storage backend (Redis) could not be reached while reading a stream."""
