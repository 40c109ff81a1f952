"""``python -m resumable_stream inspect|list``: what Redis holds about streams.

For operators: one stream's state, or the running streams under a key prefix, read
straight from the keys `resumable_stream._keys` lays out (no context, no producer)::

    python -m resumable_stream inspect ID [--redis-url URL] [--key-prefix P] [--json]
    python -m resumable_stream list [--redis-url URL] [--key-prefix P] [--json] [--limit N]

(either with ``--cluster`` to force Redis Cluster mode; it is detected otherwise).

Design decisions:

* The status is the stored one (``running``, ``done``, ``failed``), next to the lease
  (seconds left, null once it lapsed): a running stream whose lease lapsed reads as
  ``running`` with ``lease: null``, and the operator sees both facts rather than our
  verdict on them. One exception, as ``snapshot.lua`` makes it: an ended stream whose
  list holds fewer chunks than its recorded length lost them (eviction, a restart
  without persistence) and is reported ``failed``, as every reader sees it.
* The state is read in one ``MULTI`` (status, length, expiries agree); the chunk sizes
  after it, in pages, up to the length read then: bounded however the stream grows.
* ``list`` walks ``SCAN`` with ``MATCH <prefix>:{*}:meta``: it stops after ``--limit``
  streams or `MAX_SCANS` calls, whichever comes first, and says so. On a Redis Cluster
  it walks every primary in turn (each holds its own slots' keys), the `MAX_SCANS`
  calls shared among them.
* A cluster is found by asking the server given (``INFO cluster``), or forced with
  ``--cluster``: the command then talks to the cluster through ``RedisCluster``,
  which follows slots to their primaries (a stream's keys share one slot, so
  ``inspect``'s ``MULTI`` still runs on one node).
* ``owner`` is the owner the HTTP layer bound the stream to (``owner=``: the
  ``"owner"`` key of the stream's metadata), null for an unbound stream.

Exit codes: 0 found, 1 no such stream (``{"error": "not found", "id": ...}`` with
``--json``), 2 bad arguments, no Redis configured, or Redis unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit, urlunsplit

import msgpack

from ._exceptions import InvalidArgument
from ._keys import StreamKeys, validate_prefix, validate_stream_id
from ._producer import STORAGE_LOST

__all__ = ["MAX_SCANS", "inspect_stream", "list_streams", "main"]

DEFAULT_PREFIX = "resumable-stream"  # create_resumable_stream_context's default
PAGE = 1000  # chunks per LRANGE when summing sizes
SCAN_COUNT = 1000  # the COUNT hint of each SCAN call
MAX_SCANS = 1000  # SCAN calls per `list`: about a million keys visited at most
_GLOB = "\\*?[]"  # characters MATCH reads as a pattern, escaped in the prefix


def _redis() -> Any:
    try:
        import redis.asyncio as aioredis
    except ImportError as exc:
        raise ImportError(
            "`python -m resumable_stream inspect` and `list` need redis-py, the 'redis' "
            "extra: pip install 'resumable-streams[redis]'"
        ) from exc
    return aioredis


def _seconds(pttl: int) -> float | None:
    """PTTL's reply in seconds; None for a key without expiry (-1) or none at all (-2)."""
    return None if pttl < 0 else round(pttl / 1000, 3)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


def _chunk_size(packed: bytes) -> int:
    """UTF-8 bytes of one stored chunk (each list element is one msgpack str or bin)."""
    chunk = msgpack.unpackb(packed, raw=False)
    return len(chunk.encode("utf-8")) if isinstance(chunk, str) else len(chunk)


async def inspect_stream(client: Any, key_prefix: str, stream_id: str) -> dict[str, Any] | None:
    """One stream's state, or None if Redis holds no such stream.

    Args:
        client: a ``redis.asyncio.Redis`` client (its replies not decoded).
        key_prefix: the context's ``key_prefix``.
        stream_id: the stream's id, as the application gave it.

    Returns:
        ``status``, ``chunks``, ``bytes``, ``ttl`` (seconds, None without expiry),
        ``lease`` (seconds left, None if none), ``owner`` (None if unbound), and, for
        text output, ``error`` and ``stop`` (a stop was requested).

    Raises:
        InvalidStreamId, InvalidArgument: a bad id or prefix.
        redis.exceptions.RedisError: Redis could not be read.
    """
    keys = StreamKeys(validate_prefix(key_prefix), validate_stream_id(stream_id))
    async with client.pipeline(transaction=True) as pipe:
        pipe.hmget(keys.meta, "status", "error", "length", "stop", "info")
        pipe.llen(keys.chunks)
        pipe.pttl(keys.meta)
        pipe.pttl(keys.lease)
        (status, error, length, stop, info), chunks, ttl, lease = await pipe.execute()
    if status is None:
        return None
    state = status.decode()
    if state != "running" and length is not None and chunks < int(length):
        state = "failed"  # as snapshot.lua reads it: the stored chunks were lost
        error = STORAGE_LOST.encode()
    size = 0
    for start in range(0, chunks, PAGE):  # up to the length read above: bounded
        page = await client.lrange(keys.chunks, start, min(start + PAGE, chunks) - 1)
        size += sum(_chunk_size(packed) for packed in page)
    return {
        "status": state,
        "chunks": chunks,
        "bytes": size,
        "ttl": _seconds(ttl),
        "lease": _seconds(lease),
        "owner": _owner(info),
        "error": _text(error) or None,
        "stop": stop is not None,
    }


def _pattern(key_prefix: str) -> str:
    escaped = "".join("\\" + c if c in _GLOB else c for c in key_prefix)
    return escaped + ":{*}:meta"


def _stream_id(key: bytes, head: bytes) -> str | None:
    """The id a meta key names (``_keys`` percent-escapes it), or None if it is not
    one of ours (a key that merely matches the pattern)."""
    if not key.startswith(head) or not key.endswith(b"}:meta"):
        return None
    try:
        return unquote_to_bytes(key[len(head) : -len(b"}:meta")]).decode("utf-8")
    except UnicodeDecodeError:
        return None


async def list_streams(
    client: Any, key_prefix: str, *, limit: int = 1000, max_scans: int = MAX_SCANS
) -> tuple[list[dict[str, Any]], bool]:
    """The running streams under ``key_prefix``, as SCAN finds them.

    Args:
        client: a ``redis.asyncio.Redis`` or ``RedisCluster`` client (its replies not
            decoded); a cluster's every primary is scanned.
        key_prefix: the context's ``key_prefix``.
        limit: stop after this many running streams.
        max_scans: stop after this many SCAN calls (all nodes together).

    Returns:
        The streams (``id``, ``chunks``, ``ttl``, ``lease``), in SCAN's order, and
        whether the walk stopped early (more streams may exist).

    Raises:
        InvalidArgument: a bad prefix or limit.
        redis.exceptions.RedisError: Redis could not be read.
    """
    head = validate_prefix(key_prefix).encode() + b":{"
    if limit < 1 or max_scans < 1:
        raise InvalidArgument("limit and max_scans must be >= 1")
    pattern = _pattern(key_prefix)
    found: list[dict[str, Any]] = []
    seen: set[str] = set()  # SCAN may return a key more than once
    scanners = _scanners(client, pattern)
    scans = 0
    for n, scan in enumerate(scanners):
        last = n == len(scanners) - 1
        cursor = 0
        while True:
            if scans >= max_scans:
                return found, True
            scans += 1
            cursor, batch = await scan(cursor)
            ids = [
                i for i in (_stream_id(k, head) for k in batch) if i is not None and i not in seen
            ]
            seen.update(ids)
            for stream in await _running(client, key_prefix, ids):
                found.append(stream)
                if len(found) >= limit:
                    return found, cursor != 0 or not last
            if cursor == 0:
                break
    return found, False


_Scan = Callable[[int], Awaitable[tuple[int, list[bytes]]]]


def _scanners(client: Any, pattern: str) -> list[_Scan]:
    """One SCAN per server to walk: the client's own, or one per cluster primary."""
    get_primaries = getattr(client, "get_primaries", None)
    if get_primaries is None:

        async def scan(cursor: int) -> tuple[int, list[bytes]]:
            reply: tuple[int, list[bytes]] = await client.scan(
                cursor, match=pattern, count=SCAN_COUNT
            )
            return reply

        return [scan]

    def on(node: Any) -> _Scan:
        async def scan(cursor: int) -> tuple[int, list[bytes]]:
            cursors, batch = await client.scan(
                cursor, match=pattern, count=SCAN_COUNT, target_nodes=node
            )
            return int(cursors[node.name]), batch

        return scan

    return [on(node) for node in get_primaries()]


async def _running(client: Any, key_prefix: str, ids: list[str]) -> list[dict[str, Any]]:
    """Those of ``ids`` whose stored status is running, with their figures."""
    if not ids:
        return []
    async with client.pipeline(transaction=False) as pipe:
        for stream_id in ids:
            keys = StreamKeys(key_prefix, stream_id)
            pipe.hget(keys.meta, "status")
            pipe.llen(keys.chunks)
            pipe.pttl(keys.meta)
            pipe.pttl(keys.lease)
        replies = await pipe.execute()
    running = []
    for n, stream_id in enumerate(ids):
        status, chunks, ttl, lease = replies[4 * n : 4 * n + 4]
        if status == b"running":
            running.append(
                {"id": stream_id, "chunks": chunks, "ttl": _seconds(ttl), "lease": _seconds(lease)}
            )
    return running


def redis_url(environ: Mapping[str, str]) -> str | None:
    """The Redis the library would pick from the environment (``REDIS_URL``, then
    ``KV_URL``), or None."""
    for name in ("REDIS_URL", "KV_URL"):
        if environ.get(name):
            return environ[name]
    return None


def _redacted(url: str) -> str:
    """``url`` without its password, for error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m resumable_stream",
        description="Inspect the streams a Redis holds.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--redis-url", help="default: $REDIS_URL, then $KV_URL")
    common.add_argument("--key-prefix", default=DEFAULT_PREFIX, help="default: %(default)s")
    common.add_argument("--json", action="store_true", help="print JSON")
    common.add_argument(
        "--cluster", action="store_true",
        help="the URL is a Redis Cluster node (default: ask it, INFO cluster)",
    )  # fmt: skip
    one = commands.add_parser("inspect", parents=[common], help="one stream's state")
    one.add_argument("stream_id", metavar="ID", help="the id (after --, if it starts with -)")
    many = commands.add_parser("list", parents=[common], help="the running streams")
    many.add_argument("--limit", type=int, default=1000, help="at most this many")
    return parser


def _duration(seconds: float | None) -> str:
    return "none" if seconds is None else f"{seconds:.1f} s"


def _print_stream(stream_id: str, info: dict[str, Any]) -> None:
    rows = [
        ("id", stream_id),
        ("status", info["status"] + (" (stop requested)" if info["stop"] else "")),
        ("chunks", str(info["chunks"])),
        ("bytes", str(info["bytes"])),
        ("ttl", _duration(info["ttl"])),
        ("lease", _duration(info["lease"])),
        ("owner", info["owner"] if info["owner"] is not None else "-"),
    ]
    if info["error"]:
        rows.append(("error", info["error"]))
    for name, value in rows:
        print(f"{name:<8}{value}")


def _print_list(streams: list[dict[str, Any]], truncated: bool) -> None:
    table = [("ID", "CHUNKS", "TTL", "LEASE")] + [
        (s["id"], str(s["chunks"]), _duration(s["ttl"]), _duration(s["lease"]))
        for s in streams
    ]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for name, chunks, ttl, lease in table:
        print(f"{name:<{widths[0]}}  {chunks:<{widths[1]}}  {ttl:<{widths[2]}}  {lease}")
    more = " (stopped early: there may be more)" if truncated else ""
    print(f"{len(streams)} running stream{'' if len(streams) == 1 else 's'}{more}")


_TIMEOUTS = {"socket_connect_timeout": 5, "socket_timeout": 30}


async def is_cluster(client: Any) -> bool:
    """The server says it runs in cluster mode (``INFO cluster``); False if it will
    not say (an ACL that forbids INFO: pass ``--cluster`` then)."""
    from redis.exceptions import ResponseError

    try:
        info = await client.info("cluster")
    except ResponseError:
        return False
    return bool(int(info.get("cluster_enabled", 0)))


async def _connect(aioredis: Any, url: str, *, cluster: bool) -> Any:
    """A client for ``url``: ``RedisCluster`` if asked to or if the server is a
    cluster node, else a plain one."""
    from redis.asyncio.cluster import RedisCluster

    if not cluster:
        client = aioredis.Redis.from_url(url, **_TIMEOUTS)
        try:
            if not await is_cluster(client):
                return client
        except BaseException:
            await client.aclose()
            raise
        await client.aclose()
    made = RedisCluster.from_url(url, **_TIMEOUTS)
    try:
        await made.initialize()
    except BaseException:
        await made.aclose()
        raise
    return made


async def _run(args: argparse.Namespace, url: str) -> int:
    aioredis = _redis()
    from redis.exceptions import RedisClusterException, RedisError

    try:
        client = await _connect(aioredis, url, cluster=args.cluster)
    except (RedisError, RedisClusterException) as exc:  # the latter: --cluster, no cluster
        print(f"error: Redis at {_redacted(url)}: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "inspect":
            info = await inspect_stream(client, args.key_prefix, args.stream_id)
            if info is None:
                if args.json:
                    print(json.dumps({"error": "not found", "id": args.stream_id}))
                else:
                    print(f"error: no stream {args.stream_id!r} under prefix "
                          f"{args.key_prefix!r}", file=sys.stderr)  # fmt: skip
                return 1
            if args.json:
                keys = ("status", "chunks", "bytes", "ttl", "lease", "owner")
                print(json.dumps({k: info[k] for k in keys}, ensure_ascii=False))
            else:
                _print_stream(args.stream_id, info)
            return 0
        streams, truncated = await list_streams(client, args.key_prefix, limit=args.limit)
        if args.json:
            print(json.dumps({"streams": streams, "truncated": truncated}, ensure_ascii=False))
        else:
            _print_list(streams, truncated)
        return 0
    except (RedisError, RedisClusterException) as exc:
        print(f"error: Redis at {_redacted(url)}: {exc}", file=sys.stderr)
        return 2
    finally:
        await client.aclose()


def main(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    """Run ``inspect`` or ``list`` (``argv`` starts with the command); the exit code."""
    args = _parser().parse_args(argv)
    url = args.redis_url or redis_url(os.environ if environ is None else environ)
    if not url:
        print("error: no Redis: pass --redis-url or set REDIS_URL", file=sys.stderr)
        return 2
    if args.command == "list" and args.limit < 1:
        print("error: --limit must be >= 1", file=sys.stderr)
        return 2
    try:
        validate_prefix(args.key_prefix)
        if args.command == "inspect":
            validate_stream_id(args.stream_id)
    except InvalidArgument as exc:  # InvalidStreamId too
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        _redis()
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_run(args, url))


def _owner(info: bytes | None) -> str | None:
    """The bound owner from the stream's packed metadata (what ``owner=`` stored)."""
    if not info:
        return None
    try:
        metadata = msgpack.unpackb(info, raw=False)
    except ValueError:
        return None
    owner = metadata.get("owner") if isinstance(metadata, dict) else None
    return owner if isinstance(owner, str) else None
