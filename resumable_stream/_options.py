"""Tuning knobs of a context. Durations are float seconds, sizes are bytes."""

from __future__ import annotations

from dataclasses import dataclass

from ._exceptions import InvalidArgument

__all__ = ["StreamOptions"]


@dataclass(frozen=True)
class StreamOptions:
    """Options that rarely need changing; the defaults suit LLM answers.

    Attributes:
        finished_ttl: expiry of a stream's keys once it has ended; ``None`` keeps ``ttl``.
        lease: how long a producer's claim lives without renewal. Followers end with
            `ProducerLost` within about ``lease + 2 * poll_interval`` after its process dies
            (a lapsed lease is confirmed a ``poll_interval`` later: a stalled loop renews late).
        poll_interval: how long a follower waits for a live message before it
            re-reads the stored state (this is also how it notices a lost producer).
        write_interval: the tick of the write clock: a stream's chunks are written
            at the next multiple of it (in loop time), so a fast source's chunks
            gather into fewer, larger writes and every stream of the process writes
            in the same loop turn (the Redis backend sends those as one pipeline).
            Followers see chunks up to this much later; the original reader is not
            delayed. 0 writes every chunk at once.
        max_batch_chunks: chunks per write; Redis' Lua ``unpack`` fails near 8,000.
        max_batch_bytes: bytes per write (a batch always holds at least one chunk).
        max_buffered_bytes: chunks waiting for the backend before the producer stops
            pulling from its source (only reached when the backend is far slower
            than the source).
        reader_buffer_bytes: live data queued for one reader before it is dropped and
            the reader re-reads from storage instead; bounds memory per slow reader.
        shutdown_grace: how long `aclose()` lets running producers finish before it
            cancels them and marks their streams failed.
        retry_window: how long the producer keeps retrying a write while the backend
            is unreachable (a Redis restart, a failover, a network cut) before it gives
            up, logs, and marks the stream failed. The original reader is unaffected
            either way; chunks that arrive meanwhile wait in memory (up to
            ``max_buffered_bytes``, then the source waits). If Redis comes back
            without the stream's keys (a restart without persistence), the producer
            marks the stream failed ("storage lost") instead of writing on. A producer
            cut off from a Redis that stays up for longer than ``lease`` lets its lease
            lapse: followers elsewhere end with `ProducerLost` meanwhile, and if the
            link comes back within the window it writes on (writes are fenced by its
            token, not by the lease), so a later resume gets the whole stream.
        max_streams: producers this context runs at once (None: no cap). One more
            raises `TooManyStreams` before anything is stored.
        max_followers: readers of one stream this context serves at once, not
            counting the original reader (None: no cap). One more raises
            `TooManyFollowers`.
        max_stream_bytes: cap on one stream's stored chunk bytes (UTF-8 bytes for
            ``str`` chunks; None: no cap). The chunk that would pass it is not stored:
            the producer closes its source and marks the stream failed, and every
            reader gets `StreamTooLarge` after the last stored chunk.
    """

    finished_ttl: float | None = None
    lease: float = 5.0
    poll_interval: float = 2.0
    write_interval: float = 0.002
    max_batch_chunks: int = 1000
    max_batch_bytes: int = 1 << 20
    max_buffered_bytes: int = 8 << 20
    reader_buffer_bytes: int = 4 << 20
    shutdown_grace: float = 10.0
    retry_window: float = 5.0
    max_streams: int | None = None
    max_followers: int | None = None
    max_stream_bytes: int | None = None

    def __post_init__(self) -> None:
        for name in ("lease", "poll_interval"):
            if not getattr(self, name) > 0:
                raise InvalidArgument(f"{name} must be > 0")
        sizes = ("max_batch_chunks", "max_batch_bytes", "max_buffered_bytes", "reader_buffer_bytes")
        for name in sizes:
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{name} must be >= 1")
        if self.max_batch_chunks > 4000:
            raise InvalidArgument("max_batch_chunks must be <= 4000 (Lua unpack limit)")
        if self.write_interval < 0:
            raise InvalidArgument("write_interval must be >= 0")
        if self.finished_ttl is not None and not self.finished_ttl > 0:
            raise InvalidArgument("finished_ttl must be > 0")
        if self.shutdown_grace < 0:
            raise InvalidArgument("shutdown_grace must be >= 0")
        if self.retry_window < 0:
            raise InvalidArgument("retry_window must be >= 0")
        for name in ("max_streams", "max_followers", "max_stream_bytes"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise InvalidArgument(f"{name} must be None or an int >= 1")
