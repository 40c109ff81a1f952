"""The browser client, served by the Python package: one line to mount it.

::

    from resumable_stream.browser import browser_client_app

    app.mount("/_resumable", browser_client_app())   # Starlette, FastAPI

The mounted app serves two dependency-free ES modules that ship in the package
(``resumable_stream/static/``):

* ``/_resumable/resumable-stream.js``: ``ResumableStreamClient`` (start a stream with a
  POST, resume it after a dropped connection or a page reload, exactly once), the
  ``SSEParser`` it uses, and its error classes.
* ``/_resumable/use-resumable-stream.js``: the ``useResumableStream`` React hook; it
  imports ``"react"`` by name (an import map or a bundler supplies it) and the client
  from ``./resumable-stream.js``.

A page then uses ``<script type="module">import { ResumableStreamClient } from
"/_resumable/resumable-stream.js"; ...</script>``. The files' JSDoc is their manual.

Answers: ``200`` with ``Content-Type: text/javascript; charset=utf-8``, an ``ETag``
(a hash of the file) and ``Cache-Control`` (default ``no-cache``: browsers keep the file
but revalidate it, so an upgraded package is picked up at once); ``304`` to a matching
``If-None-Match``; ``404`` for any other path; ``405`` for methods other than GET and
HEAD. Any ASGI server or framework that mounts ASGI apps can serve it; it answers
``lifespan`` events too, so it also runs on its own (``uvicorn`` of an app that is just
``browser_client_app()``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from importlib import resources
from typing import Any

from ._exceptions import InvalidArgument

__all__ = ["CLIENT_FILES", "browser_client_app", "client_source"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CLIENT_FILES = ("resumable-stream.js", "use-resumable-stream.js")
"""The files served, by name (they live in ``resumable_stream/static/``)."""

_CONTENT_TYPE = b"text/javascript; charset=utf-8"


def client_source(name: str = "resumable-stream.js") -> bytes:
    """The bytes of one of `CLIENT_FILES` (to inline it, or serve it another way)."""
    if name not in CLIENT_FILES:
        raise InvalidArgument(f"no such client file: {name!r} (one of {CLIENT_FILES})")
    return resources.files("resumable_stream").joinpath("static").joinpath(name).read_bytes()


async def _respond(
    send: Send, status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes = b""
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": list(headers)})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _etag_matches(if_none_match: bytes, etag: bytes) -> bool:
    tags = [t.strip() for t in if_none_match.split(b",")]
    return b"*" in tags or any(t.removeprefix(b"W/") == etag for t in tags)


def browser_client_app(*, cache_control: str = "no-cache") -> ASGIApp:
    """An ASGI app serving `CLIENT_FILES` by name, at the root of where it is mounted.

    Args:
        cache_control: the ``Cache-Control`` header of the files (``"no-cache"``:
            revalidate each use, with the ETag; give ``"public, max-age=3600"`` to let
            browsers reuse them without asking for an hour).
    """
    files: dict[str, tuple[bytes, bytes]] = {}
    for name in CLIENT_FILES:
        body = client_source(name)
        etag = b'"' + hashlib.sha256(body).hexdigest()[:32].encode("ascii") + b'"'
        files[name] = (body, etag)
    cache = cache_control.encode("latin-1")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            raise RuntimeError("browser_client_app serves HTTP only")
        text = [(b"content-type", b"text/plain; charset=utf-8")]
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            await _respond(send, 405, [*text, (b"allow", b"GET, HEAD")], b"method not allowed")
            return
        # Under a mount, Starlette keeps the whole path in "path" and the mount point in
        # "root_path" (older versions strip the path instead): take what follows it.
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        found = files.get(path.lstrip("/"))
        if found is None:
            await _respond(send, 404, text, b"not found")
            return
        body, etag = found
        headers = [
            (b"etag", etag),
            (b"cache-control", cache),
            (b"x-content-type-options", b"nosniff"),
        ]
        if_none_match = next(
            (v for k, v in scope.get("headers", []) if k.lower() == b"if-none-match"), None
        )
        if if_none_match is not None and _etag_matches(if_none_match, etag):
            await _respond(send, 304, headers)
            return
        headers += [(b"content-type", _CONTENT_TYPE), (b"content-length", b"%d" % len(body))]
        await _respond(send, 200, headers, b"" if method == "HEAD" else body)

    return app
