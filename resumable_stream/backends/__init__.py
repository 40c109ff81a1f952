"""Storage backends: `MemoryBackend` (one process), `RedisBackend`,
`RedisClusterBackend` and `UpstashBackend` (any number of processes).

``RedisBackend`` (one server, or a Sentinel-managed primary) lives in
`resumable_stream.backends.redis`, ``RedisClusterBackend`` in
`resumable_stream.backends.cluster`; both need the ``redis`` extra. ``UpstashBackend``
(Upstash or Vercel KV over HTTPS, for serverless hosts) lives in
`resumable_stream.backends.upstash` and needs the ``upstash`` extra. Each is imported
only when used, so that its driver stays optional.

A backend of your own implements `Backend` with the public types here only (`Snapshot`,
`Subscription` and the live events `Appended`, `Ended`, `Resync`), optionally
`WritesSoon` and `Deletes` (which `ctx.delete_stream` needs), and checks itself with
`resumable_stream.testing`.
"""

from __future__ import annotations

from .._subscription import Subscription
from .._types import Appended, Ended, Resync, Snapshot
from ._protocol import Backend, Deletes, StaleProducer, WritesSoon
from .memory import MemoryBackend

__all__ = [
    "Appended",
    "Backend",
    "Deletes",
    "Ended",
    "MemoryBackend",
    "Resync",
    "Snapshot",
    "StaleProducer",
    "Subscription",
    "WritesSoon",
]
