"""What the app's callables of `ChatStreams` get: the chat request, the stop.

Behind `resumable_stream.ai_sdk`.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._http import Scope


@dataclass(frozen=True)
class ChatRequest:
    """A ``POST {api}`` request of a chat transport, as the app's handler sees it.

    Attributes:
        id: the chat's id: the body's ``id`` (``DefaultChatTransport`` sends it), else
            the answer's run id (``WorkflowChatTransport`` sends none unless its body
            option adds one), so the answer is a chat of its own.
        messages: the chat's UI messages, as sent (dicts with ``id``, ``role``, ``parts``).
        trigger: ``"submit-message"`` or ``"regenerate-message"`` (None if absent).
        message_id: the request's ``messageId`` (the message to regenerate or replace).
        response_message_id: the id the answer's ``start`` chunk carries (unless the
            handler's own ``start`` chunk names one): store the answer under it.
        body: the whole JSON body, with any fields the transport's ``body`` option adds.
        scope: the ASGI scope (headers, client, path...).
        run_id: the id of the answer's stream (the ``x-workflow-run-id`` and
            ``X-Stream-Id`` response headers name it).
    """

    id: str
    messages: list[dict[str, Any]]
    trigger: str | None
    message_id: str | None
    response_message_id: str
    body: dict[str, Any] = field(repr=False)
    scope: Scope = field(repr=False)
    run_id: str = ""

    @property
    def last_user_text(self) -> str:
        """The text parts of the last user message, joined ("" if there is none)."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                parts = message.get("parts") or []
                return "".join(
                    str(p.get("text", "")) for p in parts
                    if isinstance(p, dict) and p.get("type") == "text"
                )  # fmt: skip
        return ""


ChatHandler = Callable[
    [ChatRequest],
    AsyncIterable[Mapping[str, Any] | str] | Awaitable[AsyncIterable[Mapping[str, Any] | str]],
]
"""``handler(request)``: the answer, as an async iterable of UI message chunks (dicts)
or of SSE text (``data: ...`` events, split anywhere); an ``async def`` returning one
works too. ``[DONE]`` is added for it (one it yields is dropped)."""


@dataclass(frozen=True)
class ChatStop:
    """A ``POST {api}/{id}/stop`` that stopped (or found ended) a chat's answer, for
    ``on_stop``: persist ``assistant_message``, the client's partial answer, if sent.

    Attributes:
        chat_id: the chat.
        stream_id: the answer's stream (its run id).
        stopped: True if it was running and is stopped now, False if it had ended.
        assistant_message: the body's ``assistantMessage`` (None if absent).
        scope: the ASGI scope of the stop request.
    """

    chat_id: str
    stream_id: str
    stopped: bool
    assistant_message: dict[str, Any] | None = field(repr=False)
    scope: Scope = field(repr=False)


OnStop = Callable[[ChatStop], Awaitable[None] | None]
