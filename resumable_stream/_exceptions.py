"""Errors raised by resumable-stream.

The tree::

    ResumableStreamError
    ├── InvalidArgument (also ValueError)
    │   └── InvalidStreamId
    ├── StreamNotFound (also LookupError)
    ├── StreamAlreadyExists
    ├── StreamFailed            the producer's source raised; carries its message
    ├── ProducerLost            the producer stopped renewing its lease (process died)
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
    "StreamFailed",
    "StreamNotFound",
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


class ProducerLost(ResumableStreamError):
    """The stream is still marked running but its producer stopped renewing its lease.

    This happens when the producing process was killed or lost its Redis connection
    for longer than the lease.
    """

    def __init__(self, stream_id: str) -> None:
        super().__init__(f"the producer of stream {stream_id!r} is gone (lease expired)")
        self.stream_id = stream_id


class BackendUnavailable(ResumableStreamError, ConnectionError):
    """The storage backend (Redis) could not be reached while reading a stream."""
