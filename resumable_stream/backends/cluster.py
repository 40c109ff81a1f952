"""Redis Cluster backend: the Redis backend's storage, with sharded pub/sub.

Needs the ``redis`` extra and Redis >= 7 (``SPUBLISH``/``SSUBSCRIBE``). It takes the
user's ``redis.asyncio.cluster.RedisCluster`` and never closes it.

Design notes:

* Storage is `RedisBackend`'s, the same scripts with the same arguments
  (``_wire.py``): every key of a stream shares the hash tag ``{<escaped id>}`` (see
  ``_keys.py``), so each script touches one slot, and different streams spread over
  all masters. redis-py follows ``MOVED``/``ASK`` and retries a multi-key script that
  meets ``TRYAGAIN`` during a migration.
* Calls go one by one, each to the master of its slot, through the calls
  `RedisBackend` makes its reads with (``redis._Calls``: in-flight cap,
  ``command_timeout``, NOSCRIPT). Not pipelined: a cluster pipeline splits by slot
  and retries by itself, and a retried write could be applied twice. So there is no
  ``write_soon`` here (the class is no `WritesSoon`).
* Announcements use sharded pub/sub: a classic ``PUBLISH`` is forwarded to every
  node of the cluster, so its cost would grow with the cluster; ``SPUBLISH`` stays on
  the shard that owns the channel's slot (the channel shares the stream's hash tag).
* One pub/sub connection per master that has readers in this process, opened when
  the first reader of a stream on that master arrives, not one per reader and not
  redis-py's ``ClusterPubSub``.
* When a slot moves (a failover or a migration), the old master pushes
  ``sunsubscribe`` for its channels; the hub re-reads the slot map, subscribes on
  the new owner and tells the readers to re-read the list (``_pubsub.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

# The guard comes first: ``_pubsub`` imports redis-py too.
try:
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "the Redis Cluster backend needs redis-py: pip install 'resumable-streams[redis]'"
    ) from exc

from .._subscription import Subscription
from .._types import Chunk, Ended, Snapshot, StreamStatus
from ._pubsub import SHARDED, Dialect, PubSubHub
from ._wire import Wire, decode_event, parse_snapshot, scripts, status_of, write_outcome
from .redis import COMMAND_TIMEOUT, _Calls, _refused, check_timeout

if TYPE_CHECKING:
    from redis.asyncio.connection import AbstractConnection

__all__ = ["RedisClusterBackend"]


class _ShardRouter:
    """Sharded pub/sub on the master that owns a channel's slot."""

    dialect: Dialect = SHARDED

    def __init__(self, cluster: RedisCluster) -> None:
        self._cluster = cluster

    async def locate(self, channel: bytes) -> str:
        await self._cluster.initialize()  # a no-op once the slot map is known
        node = self._cluster.get_node_from_key(channel)  # type: ignore[arg-type]
        if node is None:  # pragma: no cover - only asked for replicas
            raise ConnectionError(f"no node serves {channel!r}")
        return node.name

    def connection(self, server: str) -> AbstractConnection:
        node = self._cluster.get_node(node_name=server)
        if node is None:
            raise ConnectionError(f"{server} left the cluster")
        # A connection of our own, beside the node's pool: redis-py's cluster client
        # disconnects the pools of nodes it gives up on. No retries inside it: the hub
        # re-reads the topology before it tries again.
        kwargs = {**node.connection_kwargs, "retry": Retry(NoBackoff(), 0)}
        connection: AbstractConnection = node.connection_class(**kwargs)
        return connection

    async def refresh(self) -> None:
        await self._cluster.nodes_manager.initialize()


class RedisClusterBackend:
    """Streams stored in a Redis Cluster, readable from any process.

    Args:
        client: a ``redis.asyncio.cluster.RedisCluster``, used as it is
            (``decode_responses`` does not matter) and never closed here.
        key_prefix: first part of every key; must not contain ``{`` or ``}``.
        command_timeout: seconds any one call may take, redirections and redis-py's
            own retries included (see `RedisBackend`).

    Raises:
        TypeError: ``client`` is not a ``RedisCluster``.
        InvalidArgument: a bad ``key_prefix``, or ``command_timeout`` not > 0.
    """

    def __init__(
        self,
        client: RedisCluster,
        *,
        key_prefix: str = "resumable-stream",
        command_timeout: float = COMMAND_TIMEOUT,
    ) -> None:
        if not isinstance(client, RedisCluster):
            raise TypeError(
                "RedisClusterBackend needs a redis.asyncio.cluster.RedisCluster client, "
                f"not {type(client).__name__}"
            )
        self._wire = Wire(key_prefix, publish="SPUBLISH")
        self.key_prefix = self._wire.key_prefix
        self._timeout = check_timeout(command_timeout)
        self._client = client
        self._owned: RedisCluster | None = None
        self._scripts = scripts()
        # redis-py wants initialize() before any command, and commands racing to
        # initialize a fresh (or reset, after CLUSTERDOWN) client fail with an
        # AttributeError (redis-py 8.1); initialize() itself is safe to race and
        # returns at once when the slot map is known.
        self._call = _Calls(
            client,
            max_connections=client.nodes_manager.connection_kwargs.get("max_connections"),
            timeout=self._timeout,
            ready=client.initialize,
        )
        self._hub = PubSubHub(_ShardRouter(client), decode_event)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str = "resumable-stream",
        command_timeout: float = COMMAND_TIMEOUT,
    ) -> RedisClusterBackend:
        """A backend on a cluster client it makes from ``url`` (any one node) and
        closes in `aclose`."""
        check_timeout(command_timeout)  # before a client exists that nobody would close
        backend = cls(
            RedisCluster.from_url(url), key_prefix=key_prefix, command_timeout=command_timeout
        )
        backend._owned = backend._client
        return backend

    async def claim(
        self, stream_id: str, token: str, *, ttl: float, lease: float, metadata: bytes = b""
    ) -> StreamStatus | None:
        k = self._wire.keys(stream_id)
        call = Wire.claim_call(k, token, ttl, lease, metadata)
        reply = await self._call(self._scripts.claim, call)
        return self._wire.claimed(stream_id, k, reply)

    async def write(
        self,
        stream_id: str,
        token: str,
        start: int,
        chunks: Sequence[Chunk],
        *,
        end: Ended | None,
        ttl: float,
        finished_ttl: float,
        lease: float,
    ) -> bool:
        k = self._wire.keys(stream_id)
        call = self._wire.write_call(k, token, start, chunks, end, ttl, finished_ttl, lease)
        if end is not None:
            self._wire.ended(stream_id)
        (value,) = await self._call(self._scripts.write, call)
        return write_outcome(stream_id, start, value, _refused)

    async def snapshot(self, stream_id: str, start: int, limit: int) -> Snapshot | None:
        call = Wire.snapshot_call(self._wire.keys(stream_id), start, limit)
        return parse_snapshot(await self._call(self._scripts.snapshot, call))

    async def request_stop(self, stream_id: str) -> bool:
        meta = self._wire.keys(stream_id).meta
        return bool(await self._call(self._scripts.stop, [meta], keys=1))

    async def delete(self, stream_id: str, *, ttl: float) -> bool:
        """Delete the stream, leaving a tombstone for ``ttl`` seconds (see `Deletes`):
        one script on the stream's slot (its keys and channel share the hash tag)."""
        call = self._wire.delete_call(self._wire.keys(stream_id), ttl)
        return bool(await self._call(self._scripts.delete, call))

    async def deleted(self, stream_id: str) -> bool:
        meta = self._wire.keys(stream_id).meta
        return bool(await self._call(self._scripts.deleted, [meta], keys=1))

    async def status(self, stream_id: str) -> StreamStatus | None:
        return status_of(await self.snapshot(stream_id, 0, 0))

    async def subscribe(self, stream_id: str, *, max_buffered_bytes: int) -> Subscription:
        return await self._hub.subscribe(self._wire.keys(stream_id).events, max_buffered_bytes)

    async def aclose(self) -> None:
        await self._hub.aclose()
        if self._owned is not None:
            await self._owned.aclose()
