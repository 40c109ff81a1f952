"""Resumable streams for Python: a port of Vercel's npm ``resumable-stream``.

Every chunk is stored (in Redis, or in memory for one process) and announced, so
any reader, in any process, can join a running stream from its start or from a
position, even after the producing process is gone.
"""

from __future__ import annotations

from ._context import ResumableStreamContext, create_resumable_stream_context
from ._exceptions import (
    BackendUnavailable,
    InvalidArgument,
    InvalidStreamId,
    ProducerLost,
    ResumableStreamError,
    StreamAlreadyExists,
    StreamDeleted,
    StreamFailed,
    StreamNotFound,
    StreamTooLarge,
    TooManyFollowers,
    TooManyStreams,
)
from ._options import StreamOptions
from ._reader import ResumableStream
from ._types import Chunk, IndexedChunk, StreamStatus
from .backends import Backend, MemoryBackend

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendUnavailable",
    "Chunk",
    "IndexedChunk",
    "InvalidArgument",
    "InvalidStreamId",
    "MemoryBackend",
    "ProducerLost",
    "ResumableStream",
    "ResumableStreamContext",
    "ResumableStreamError",
    "StreamAlreadyExists",
    "StreamDeleted",
    "StreamFailed",
    "StreamNotFound",
    "StreamOptions",
    "StreamStatus",
    "StreamTooLarge",
    "TooManyFollowers",
    "TooManyStreams",
    "__version__",
    "create_resumable_stream_context",
]
