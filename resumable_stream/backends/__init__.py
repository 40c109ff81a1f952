"""Storage backends: `MemoryBackend` (one process), `RedisBackend` and
`RedisClusterBackend` (any number of processes).

``RedisBackend`` (one server, or a Sentinel-managed primary) lives in
`resumable_stream.backends.redis`, ``RedisClusterBackend`` in
`resumable_stream.backends.cluster`; both need the ``redis`` extra and are imported
only when used.
"""

from __future__ import annotations

from ._protocol import Backend, StaleProducer
from .memory import MemoryBackend

__all__ = ["Backend", "MemoryBackend", "StaleProducer"]
