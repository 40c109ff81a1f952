"""Which redis-py errors mean "Redis cannot serve this right now".

They become `BackendUnavailable` (which the producer retries for a while and readers
report), as opposed to a refusal that no retry fixes. Besides lost connections this
covers what a Redis Cluster or a Sentinel setup answers while it fails over or moves a
slot: a replica that refuses writes, a cluster that is down or has a slot uncovered,
a multi-key command that must be tried again, redirections that never settled.
"""

from __future__ import annotations

from redis import exceptions as redis_errors

__all__ = ["UNAVAILABLE", "unavailable"]

UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,  # also MaxConnectionsError, BusyLoadingError
    redis_errors.TimeoutError,
    OSError,
    redis_errors.ReadOnlyError,  # a former primary, demoted by a failover
    redis_errors.ClusterError,  # CLUSTERDOWN, MASTERDOWN, "TTL exhausted" redirections
    redis_errors.TryAgainError,  # a multi-key command during a slot migration
    redis_errors.RedisClusterException,  # no reachable node, a slot not covered
    # Full: maxmemory with noeviction (or nothing evictable). A new stream is refused
    # typed (HTTP 503; the middleware then streams the response unstored, never a
    # 500), and a producer retries for retry_window in case memory frees up (keys
    # expire), then marks its stream failed with Redis' message.
    redis_errors.OutOfMemoryError,
)

# Error replies that redis-py raises as a plain ResponseError.
_PREFIXES = ("NOREPLICAS",)


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says Redis cannot serve the command now (so a retry may work)."""
    if isinstance(exc, UNAVAILABLE):
        return True
    return isinstance(exc, redis_errors.ResponseError) and str(exc).startswith(_PREFIXES)
