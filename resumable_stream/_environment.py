"""Which backend ``create_resumable_stream_context(None)`` uses, from the environment.

The order, first match wins (the names the npm original and Vercel's integrations use):

1. ``REDIS_URL``, then ``KV_URL``: Redis over TCP (`RedisBackend`);
2. ``UPSTASH_REDIS_REST_URL`` with ``UPSTASH_REDIS_REST_TOKEN``: Upstash over REST;
3. ``KV_REST_API_URL`` with ``KV_REST_API_TOKEN`` (Vercel KV): Upstash over REST;
4. nothing: streams live in this process's memory.

One line is logged per call saying which was chosen. A REST URL without its token (or
a token without its URL) is refused rather than skipped: a typo in a deployment's
settings must not quietly put streams in memory, where no other instance sees them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from ._exceptions import InvalidArgument
from .backends._protocol import Backend

__all__ = ["backend_from_environment"]

logger = logging.getLogger("resumable_stream")

REST_PAIRS = (
    ("UPSTASH_REDIS_REST_URL", "UPSTASH_REDIS_REST_TOKEN"),
    ("KV_REST_API_URL", "KV_REST_API_TOKEN"),
)


def backend_from_environment(
    key_prefix: str, environ: Mapping[str, str] | None = None
) -> Backend:
    """The backend the environment names (see the module docstring for the order).

    Args:
        key_prefix: first part of every key, for the Redis and Upstash backends.
        environ: the variables to read; ``os.environ`` if None.

    Returns:
        A backend owned by the caller (close it with ``aclose``).

    Raises:
        InvalidArgument: a REST URL is set without its token, or the other way round,
            and no earlier choice applies; or a bad ``key_prefix``.
        ImportError: the chosen backend's extra is not installed.
    """
    env = os.environ if environ is None else environ
    for name in ("REDIS_URL", "KV_URL"):
        url = env.get(name)
        if url:
            from .backends.redis import RedisBackend

            logger.info("resumable-stream: using Redis from $%s", name)
            return RedisBackend.from_url(url, key_prefix=key_prefix)
    for url_name, token_name in REST_PAIRS:
        url, token = env.get(url_name), env.get(token_name)
        if url and token:
            from .backends.upstash import UpstashBackend

            logger.info("resumable-stream: using Upstash over REST from $%s", url_name)
            return UpstashBackend(url, token, key_prefix=key_prefix)
        if url or token:
            missing = token_name if url else url_name
            raise InvalidArgument(
                f"${url_name if url else token_name} is set but ${missing} is not: "
                "set both to use Upstash over REST, or neither"
            )
    from .backends.memory import MemoryBackend

    logger.info(
        "resumable-stream: no REDIS_URL, KV_URL, UPSTASH_REDIS_REST_URL or KV_REST_API_URL; "
        "streams live in this process's memory"
    )
    return MemoryBackend()
