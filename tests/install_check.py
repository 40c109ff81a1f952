"""Check an installation of resumable-streams with one extra (or none): a script, no pytest.

    python tests/install_check.py EXTRA            # in a venv with resumable-streams[EXTRA]
    python tests/install_check.py EXTRA --simulate # in a full venv, hiding what EXTRA lacks

EXTRA is ``none``, ``redis``, ``starlette``, ``client``, ``upstash`` or ``all``. It checks
that the core works with nothing but its own dependencies (the in-memory backend runs a
stream end to end, the framework-free ASGI, browser and AI SDK modules import), that
each integration the extra provides imports and builds its main object, and that each
one it does not provide fails with an ``ImportError`` that names the extra to install.

``scripts/test`` (wheel mode) runs it in a fresh venv per extra, from outside the
checkout; ``tests/test_packaging.py`` runs it with ``--simulate``, which blocks the
driver modules the extra would not install, so the default test run checks the guards.
Exits 0 and prints one line on success; raises on the first failure.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.abc
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

# The driver modules each extra installs.
PROVIDES: dict[str, set[str]] = {
    "none": set(),
    "redis": {"redis"},
    "starlette": {"starlette"},
    "client": {"httpx"},
    "upstash": {"httpx"},
}
PROVIDES["all"] = set().union(*PROVIDES.values())

# Each integration: its module, the driver it needs, the extra its error must name.
INTEGRATIONS = [
    ("resumable_stream.backends.redis", "redis", "redis"),
    ("resumable_stream.backends.cluster", "redis", "redis"),
    ("resumable_stream.starlette", "starlette", "starlette"),
    ("resumable_stream.client", "httpx", "client"),
    ("resumable_stream.backends.upstash", "httpx", "upstash"),
]

# Modules that need no extra at all.
CORE = [
    "resumable_stream",
    "resumable_stream.asgi",
    "resumable_stream.browser",
    "resumable_stream.ai_sdk",
    "resumable_stream.backends",
]


class _Hide(importlib.abc.MetaPathFinder):
    """Make top-level modules unimportable, as if their distribution were not installed."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r} (hidden)", name=fullname)
        return None


async def _memory_round_trip() -> None:
    from resumable_stream import MemoryBackend, create_resumable_stream_context

    async def source() -> AsyncIterator[str]:
        for word in ("core", " ", "only"):
            yield word

    async with create_resumable_stream_context(MemoryBackend()) as ctx:
        stream = await ctx.resumable_stream("install-check", source)
        assert stream is not None
        assert [chunk async for chunk in stream] == ["core", " ", "only"]
        again = await ctx.resume_existing_stream("install-check", after=0)
        assert again is not None
        assert [chunk async for chunk in again] == [" ", "only"]


def _build(module_name: str, module: Any) -> None:
    """Make each integration's main object, so an import that half works fails here."""
    if module_name == "resumable_stream.backends.redis":
        import redis.asyncio

        module.RedisBackend(redis.asyncio.Redis())  # connects lazily: no server needed
    elif module_name == "resumable_stream.starlette":
        response = module.ResumableStreamingResponse(iter(["x"]), context=None)
        assert response.stream_id
    elif module_name == "resumable_stream.client":
        module.ResumableStreamClient(base_url="http://127.0.0.1:9")
    elif module_name == "resumable_stream.backends.upstash":
        module.UpstashBackend("https://example.invalid", "token")


def check(extra: str, *, simulate: bool) -> None:
    provided = PROVIDES[extra]
    if simulate:
        missing = PROVIDES["all"] - provided
        for name in list(sys.modules):
            if name.split(".")[0] in missing | {"resumable_stream"}:
                del sys.modules[name]
        sys.meta_path.insert(0, _Hide(missing))

    for name in CORE:
        importlib.import_module(name)
    asyncio.run(_memory_round_trip())

    for module_name, driver, needs in INTEGRATIONS:
        if driver in provided:
            _build(module_name, importlib.import_module(module_name))
            continue
        wanted = f"resumable-streams[{needs}]"
        try:
            importlib.import_module(module_name)
        except ImportError as exc:
            message = str(exc)
        else:
            raise AssertionError(f"{module_name} imported without {driver} ({extra})")
        if wanted not in message:
            raise AssertionError(f"{module_name}: {message!r} does not name {wanted}")

    import resumable_stream

    print(f"install check [{extra}]: ok ({resumable_stream.__file__})")


def main(argv: Sequence[str]) -> None:
    args = [a for a in argv if a != "--simulate"]
    if len(args) != 1 or args[0] not in PROVIDES:
        raise SystemExit(f"usage: install_check.py {{{','.join(PROVIDES)}}} [--simulate]")
    check(args[0], simulate="--simulate" in argv)


if __name__ == "__main__":
    main(sys.argv[1:])
