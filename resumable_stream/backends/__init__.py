"""Storage backends: `MemoryBackend` (one process) and `RedisBackend` (any number).

``RedisBackend`` lives in `resumable_stream.backends.redis` and needs the ``redis``
extra; it is imported only when used.
"""

from __future__ import annotations

from ._protocol import Backend, StaleProducer
from .memory import MemoryBackend

__all__ = ["Backend", "MemoryBackend", "StaleProducer"]
