# /// script
# requires-python = ">=3.10"
# dependencies = ["resumable-streams[redis]", "uvicorn[standard]"]
# ///
"""The Durable Streams protocol under ``/v1/stream/``, on Redis when ``REDIS_URL`` is set
(every process behind a load balancer then serves the same streams), on Upstash over
REST with ``UPSTASH_REDIS_REST_URL`` and ``UPSTASH_REDIS_REST_TOKEN``, else in memory.

    uvicorn examples.durable_streams_app:app
    uvicorn --app-dir examples durable_streams_app:app

    curl -X PUT -H 'Content-Type: text/plain' localhost:8000/v1/stream/hello
    curl -X POST -H 'Content-Type: text/plain' -d 'hi' localhost:8000/v1/stream/hello
    curl 'localhost:8000/v1/stream/hello?offset=-1'
    curl -N 'localhost:8000/v1/stream/hello?offset=-1&live=sse'

Streams that Python producers make with ``ctx.resumable_stream(stream_id, ...)`` on the
same backend (this module's ``ctx``, or any process's context on the same Redis and key
prefix) are readable, not writable, at ``/v1/stream/resumable/<stream_id>``.

Settings: ``DURABLE_STREAMS_LONG_POLL_TIMEOUT`` (seconds a long-poll waits before its
204, default 20), ``DURABLE_STREAMS_PREFIX`` (the Redis key prefix of the protocol's
streams, default ``ds``), ``RESUMABLE_STREAM_PREFIX`` (the producers' key prefix,
default ``resumable-stream``).
"""

from __future__ import annotations

import os

from resumable_stream import create_resumable_stream_context
from resumable_stream.durable import (
    DurableStorage,
    DurableStreamsApp,
    MemoryStorage,
    RedisStorage,
    UpstashStorage,
)


def _storage() -> DurableStorage:
    prefix = os.environ.get("DURABLE_STREAMS_PREFIX", "ds")
    url = os.environ.get("REDIS_URL")
    if url:
        return RedisStorage.from_url(url, key_prefix=prefix)
    rest_url, token = os.environ.get("UPSTASH_REDIS_REST_URL"), os.environ.get(
        "UPSTASH_REDIS_REST_TOKEN"
    )
    if rest_url and token:
        return UpstashStorage(rest_url, token, key_prefix=prefix)
    return MemoryStorage()


# The environment picks the producers' backend too, in the same order.
ctx = create_resumable_stream_context(
    key_prefix=os.environ.get("RESUMABLE_STREAM_PREFIX", "resumable-stream")
)

app = DurableStreamsApp(
    _storage(),
    path_prefix="/v1/stream/",
    long_poll_timeout=float(os.environ.get("DURABLE_STREAMS_LONG_POLL_TIMEOUT", "20")),
    close_storage=True,
    resumable_backend=ctx.backend,
    on_shutdown=[ctx.aclose],
)
