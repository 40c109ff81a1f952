"""The Durable Streams protocol under ``/v1/stream/``, on Redis when ``REDIS_URL`` is set
(every process behind a load balancer then serves the same streams), else in memory.

    uvicorn examples.durable_streams_app:app
    uvicorn --app-dir examples durable_streams_app:app

    curl -X PUT -H 'Content-Type: text/plain' localhost:8000/v1/stream/hello
    curl -X POST -H 'Content-Type: text/plain' -d 'hi' localhost:8000/v1/stream/hello
    curl 'localhost:8000/v1/stream/hello?offset=-1'
    curl -N 'localhost:8000/v1/stream/hello?offset=-1&live=sse'

``DURABLE_STREAMS_LONG_POLL_TIMEOUT`` (seconds, default 20) sets how long a long-poll
waits before its 204.
"""

from __future__ import annotations

import os

from resumable_stream.durable import DurableStorage, DurableStreamsApp, MemoryStorage


def _storage() -> DurableStorage:
    url = os.environ.get("REDIS_URL")
    if not url:
        return MemoryStorage()
    from resumable_stream.durable import RedisStorage

    return RedisStorage.from_url(url, key_prefix=os.environ.get("DURABLE_STREAMS_PREFIX", "ds"))


app = DurableStreamsApp(
    _storage(),
    path_prefix="/v1/stream/",
    long_poll_timeout=float(os.environ.get("DURABLE_STREAMS_LONG_POLL_TIMEOUT", "20")),
    close_storage=True,
)
