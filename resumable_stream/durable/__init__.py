"""The Durable Streams protocol (durable-streams/durable-streams ``PROTOCOL.md``), served
over our stores: resumable, append-only HTTP streams that any Durable Streams client
(TypeScript, Python, ...) can create, append to, and read, from any process.

    from resumable_stream.durable import DurableStreamsApp, MemoryStorage

    app = DurableStreamsApp(MemoryStorage(), path_prefix="/v1/stream/")

`RedisStorage` keeps the streams in Redis (or Redis Cluster), so every process behind
a load balancer serves the same streams (appends exactly once and in order, producers
fenced); `UpstashStorage` does the same over Upstash's REST API.
"""

from __future__ import annotations

from ._app import DurableStreamsApp
from ._redis import RedisStorage
from ._storage import DurableStorage, MemoryStorage, Watch
from ._upstash import UpstashStorage

__all__ = [
    "DurableStorage",
    "DurableStreamsApp",
    "MemoryStorage",
    "RedisStorage",
    "UpstashStorage",
    "Watch",
]
