"""Storage backends: `MemoryBackend` (one process), `RedisBackend`,
`RedisClusterBackend` and `UpstashBackend` (any number of processes).

``RedisBackend`` (one server, or a Sentinel-managed primary) lives in
`resumable_stream.backends.redis`, ``RedisClusterBackend`` in
`resumable_stream.backends.cluster`; both need the ``redis`` extra. ``UpstashBackend``
(Upstash or Vercel KV over HTTPS, for serverless hosts) lives in
`resumable_stream.backends.upstash` and needs the ``upstash`` extra. Each is imported
only when used, so that its driver stays optional.
"""

from __future__ import annotations

from ._protocol import Backend, StaleProducer
from .memory import MemoryBackend

__all__ = ["Backend", "MemoryBackend", "StaleProducer"]
