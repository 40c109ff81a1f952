"""The small HTTP pieces of the AI SDK chat routes: endpoints, bodies, ids, answers.

Behind `resumable_stream.ai_sdk`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from ._http import Receive, Scope, Send, path_segments

MAX_CHAT_ID_LENGTH = 200


class Endpoint:
    """An ASGI app calling one coroutine: Starlette takes a bound method for a
    request/response function, so the routes are objects of their own."""

    __slots__ = ("_serve",)

    def __init__(self, serve: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self._serve = serve

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError("the AI SDK chat routes serve HTTP only")
        await self._serve(scope, receive, send)


def valid_chat_id(value: object) -> bool:
    """A non-empty str of at most `MAX_CHAT_ID_LENGTH` that is valid text: a lone
    surrogate (``json.loads`` hands them out) names no key, so it is a ``400``."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_CHAT_ID_LENGTH:
        return False
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


def path_id(scope: Scope, path_param: str, last: str) -> str | None:
    """The id in ``{api}/{id}/<last>``: the path parameter if the router gave one, else
    the segment before ``last``; None if there is none or it is no valid chat id."""
    params = scope.get("path_params") or {}
    value = params.get(path_param)
    if value is None:
        try:
            segments = path_segments(scope)  # decoded once: an id may hold "%"
        except ValueError:
            return None  # not UTF-8: no chat has that id
        if len(segments) >= 2 and segments[-1] == last:
            value = segments[-2]
    return value if valid_chat_id(value) else None


class BadStartIndex(ValueError):
    """``startIndex`` is there but is no integer."""


def start_index(scope: Scope) -> int | None:
    """The ``startIndex`` query parameter (`WorkflowChatTransport`'s), None if absent.

    Raises:
        BadStartIndex: it is not a (possibly negative) decimal integer.
    """
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    values = query.get("startIndex")
    if not values:
        return None
    text = values[-1].strip()
    digits = text[1:] if text.startswith("-") else text
    if not digits.isdigit() or not digits.isascii() or len(digits) > 18:
        raise BadStartIndex(text)
    return int(text)


class ClientGone(Exception):
    """The client disconnected before its request body was read."""


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None if it is larger than ``limit`` bytes.

    Raises:
        ClientGone: the client disconnected first.
    """
    pieces: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        if message["type"] != "http.request":
            continue
        piece = message.get("body", b"")
        size += len(piece)
        if size > limit:
            return None
        pieces.append(piece)
        if not message.get("more_body", False):
            return b"".join(pieces)


async def no_content(send: Send) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def json_response(send: Send, status: int, value: Any) -> None:
    body = json.dumps(value, separators=(",", ":")).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
