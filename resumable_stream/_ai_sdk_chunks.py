"""The UI message stream protocol of the Vercel AI SDK: chunks, their SSE form, and the
endings this package adds to an answer that stopped or failed before its ``finish``.

Behind `resumable_stream.ai_sdk`, which re-exports the public names.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterable, Mapping
from typing import Any, Literal

from ._sse import EventDecoder

UIMessageChunk = dict[str, Any]
"""One chunk of the UI message stream protocol, as a JSON-ready dict with a ``type``."""

FinishReason = Literal[
    "stop", "length", "content-filter", "tool-calls", "error", "interrupted", "other"
]
"""Why a model stopped, as the ``finish`` chunk's ``finishReason`` says it."""

UI_MESSAGE_STREAM_HEADERS: Mapping[str, str] = {
    "content-type": "text/event-stream",
    "cache-control": "no-cache",
    "x-vercel-ai-ui-message-stream": "v1",
    "x-accel-buffering": "no",
}
"""The headers of a UI message stream response (the AI SDK's own, less ``connection``,
which is the server's business, and forbidden in HTTP/2)."""

DONE = "data: [DONE]\n\n"
"""The event that ends a UI message stream."""

DONE_BYTES = DONE.encode("ascii")
DEFAULT_ERROR_TEXT = "An error occurred."
STOPPED = "stopped"
"""The ``reason`` of the ``abort`` chunk that ends a stopped stream."""


# -- chunk builders ---------------------------------------------------------------------------


def start_chunk(message_id: str | None = None, *, metadata: Any = None) -> UIMessageChunk:
    """``start``: a new assistant message (``messageId`` names it, for resumes)."""
    chunk: UIMessageChunk = {"type": "start"}
    if message_id is not None:
        chunk["messageId"] = message_id
    if metadata is not None:
        chunk["messageMetadata"] = metadata
    return chunk


def start_step_chunk() -> UIMessageChunk:
    """``start-step``: one model call begins (the client adds a ``step-start`` part)."""
    return {"type": "start-step"}


def text_start_chunk(id: str) -> UIMessageChunk:
    """``text-start``: a text part named ``id`` begins."""
    return {"type": "text-start", "id": id}


def text_delta_chunk(id: str, delta: str) -> UIMessageChunk:
    """``text-delta``: ``delta`` is appended to the text part ``id``."""
    return {"type": "text-delta", "id": id, "delta": delta}


def text_end_chunk(id: str) -> UIMessageChunk:
    """``text-end``: the text part ``id`` is complete."""
    return {"type": "text-end", "id": id}


def finish_step_chunk() -> UIMessageChunk:
    """``finish-step``: the model call ends."""
    return {"type": "finish-step"}


def finish_chunk(
    finish_reason: FinishReason | None = None, *, metadata: Any = None
) -> UIMessageChunk:
    """``finish``: the assistant message is complete."""
    chunk: UIMessageChunk = {"type": "finish"}
    if finish_reason is not None:
        chunk["finishReason"] = finish_reason
    if metadata is not None:
        chunk["messageMetadata"] = metadata
    return chunk


def error_chunk(error_text: str) -> UIMessageChunk:
    """``error``: the client's ``onError`` gets ``Error(error_text)``; its status is "error"."""
    return {"type": "error", "errorText": error_text}


def abort_chunk(reason: str | None = None) -> UIMessageChunk:
    """``abort``: the answer was stopped before its end."""
    chunk: UIMessageChunk = {"type": "abort"}
    if reason is not None:
        chunk["reason"] = reason
    return chunk


def encode_chunk(chunk: Mapping[str, Any]) -> str:
    """One SSE event: ``data: <compact JSON>`` and a blank line (JSON has no raw newline)."""
    return f"data: {json.dumps(chunk, separators=(',', ':'), ensure_ascii=False)}\n\n"


async def text_chunks(
    deltas: AsyncIterable[str | None],
    *,
    message_id: str | None = None,
    text_id: str = "text-1",
    finish_reason: FinishReason | None = "stop",
) -> AsyncGenerator[UIMessageChunk, None]:
    """The UI message chunks of a plain text answer, from its text deltas.

    ``start``, ``start-step``, ``text-start``, one ``text-delta`` per non-empty delta
    (OpenAI-style streams send empty ones and ``None``), ``text-end``, ``finish-step``
    and ``finish``: what the AI SDK's own text transport makes of a text stream.

    Args:
        deltas: the model's text pieces, in order.
        message_id: for the ``start`` chunk; `ChatStreams` fills it in if None.
        text_id: the text part's id.
        finish_reason: for the ``finish`` chunk.

    Raises:
        Exception: whatever ``deltas`` raises (`ChatStreams` turns it into an ``error``
            chunk).
    """
    yield start_chunk(message_id)
    yield start_step_chunk()
    yield text_start_chunk(text_id)
    async for delta in deltas:
        if delta:
            yield text_delta_chunk(text_id, delta)
    yield text_end_chunk(text_id)
    yield finish_step_chunk()
    yield finish_chunk(finish_reason)


# -- the endings added to an answer cut short ---------------------------------------------------
#
# Both end with a ``finish``: ``WorkflowChatTransport`` reconnects until it sees one (an
# answer that ends without it would be asked for again and again), and ``useChat`` takes
# a ``finish`` after ``abort`` or ``error`` as a no-op.


def failed_ending(error_text: str) -> list[UIMessageChunk]:
    """The end of an answer whose model raised, or whose stored stream failed."""
    return [error_chunk(error_text), finish_chunk("error")]


def stopped_ending(open_parts: OpenParts) -> list[UIMessageChunk]:
    """The end of a stopped answer: its open parts ended, ``abort``, ``finish``."""
    return [*open_parts.closing_chunks(), abort_chunk(STOPPED), finish_chunk()]


# -- chunks in ------------------------------------------------------------------------------------


def _checked(chunk: object) -> UIMessageChunk:
    if not isinstance(chunk, Mapping) or not isinstance(chunk.get("type"), str):
        raise TypeError(f"a UI message chunk is a dict with a str 'type', not {chunk!r:.80}")
    return dict(chunk)


async def ui_chunks(
    source: AsyncIterable[Mapping[str, Any] | str],
) -> AsyncGenerator[UIMessageChunk, None]:
    """The handler's output as chunk dicts: dicts as they are, SSE text parsed.

    The handler's generator is closed when this one is, so its ``finally`` runs at once
    (a stopped or cut stream stops pulling from it).
    """
    decoder = EventDecoder()
    try:
        async for item in source:
            if isinstance(item, Mapping):
                yield _checked(item)
            elif isinstance(item, str):
                for event in decoder.feed(item):
                    if event.data != "[DONE]":
                        yield _checked(json.loads(event.data))
            else:
                kind = type(item).__name__
                raise TypeError(f"a chat handler yields dicts or SSE text, not {kind}")
        for event in decoder.feed("\n\n"):  # a last event without its blank line
            if event.data != "[DONE]":
                yield _checked(json.loads(event.data))
    finally:
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()


_PART_ENDS = {"text-start": "text-end", "reasoning-start": "reasoning-end"}


class OpenParts:
    """The text and reasoning parts a response has started and not ended, in order."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, str], None] = {}

    def see(self, event: bytes) -> None:
        """Note one stored SSE event (``data: {...}``)."""
        if not event.startswith(b"data: {"):
            return
        try:
            chunk = json.loads(event[len(b"data: ") :])
        except ValueError:
            return
        kind, part = chunk.get("type"), chunk.get("id")
        if not isinstance(part, str):
            return
        if kind in _PART_ENDS:
            self._open[(_PART_ENDS[kind], part)] = None
        elif kind in ("text-end", "reasoning-end"):
            self._open.pop((kind, part), None)

    def closing_chunks(self) -> list[UIMessageChunk]:
        """``text-end`` / ``reasoning-end`` for every part still open."""
        return [{"type": kind, "id": part} for kind, part in self._open]
