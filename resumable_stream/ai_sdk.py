"""Resumable chats for the Vercel AI SDK: what ``useChat({ resume: true })`` and
``WorkflowChatTransport`` need.

The AI SDK's two chat transports (``ai`` 5 to 7, UI message stream protocol v1) talk to
these routes, and `ChatStreams` serves them all around the app's own generator of UI
message chunks:

* ``POST {api}`` with ``{id, messages, trigger, messageId, ...}``: the answer as SSE,
  ``data: <chunk JSON>`` per chunk and ``data: [DONE]`` at the end, with the protocol's
  headers (`UI_MESSAGE_STREAM_HEADERS`) and ``x-workflow-run-id``, the answer's stream id
  (its *run id*). The answer is stored as a resumable stream, and the chat's *active
  stream* is recorded for ``GET``. ``WorkflowChatTransport`` sends no ``id`` (unless its
  body carries one): such an answer is a chat of its own, named by its run id.
* ``GET {api}/{chatId}/stream`` (``DefaultChatTransport.reconnectToStream``): ``204`` if
  the chat has no active stream, else ``200`` with the active stream **from its first
  chunk**, then live to its end: the client rebuilds the message from the ``start``
  chunk, so a replay of the tail only would break it.
* ``GET {api}/{runId}/stream?startIndex=N`` (``WorkflowChatTransport``, when the answer
  breaks before its ``finish``, N being the chunks it has): the answer from its chunk N,
  then live to its end; also after the end, until the stream expires. A negative N
  counts from the tail, and the answer then carries ``x-workflow-stream-tail-index``
  (the index of the last chunk stored when it was asked). The id may also be a chat's
  (the transport's page-reload resume): its active answer. ``404`` if there is none
  (never ``204``, which that transport would read as a break, and ask again).
* ``POST {api}/{id}/stop`` (the stop route of the AI SDK's docs), with an optional body
  ``{activeStreamId, assistantMessage}``: stops the chat's (or the run's) answer from any
  process with `ResumableStreamContext.stop_stream`, keeping what was written; the
  chat's active stream is cleared only if it still is the one stopped, and a stale stop
  (``activeStreamId`` names another) changes nothing. ``200 {"success": true,
  "stopped": bool}``; ``on_stop`` gets the client's partial message to save.
* ``DELETE {api}/{chatId}/stream`` (ours, the older stop): stops the active stream the
  same way, ``202``, or ``204`` if none. With ``allow_delete=True``,
  ``DELETE {api}/{chatId}/stream?delete=1`` deletes the active answer's stream instead
  (`ChatStreams.delete`): ``204``; without the opt-in it gets ``405``.
* With ``owner=``, each answer's stream is bound to the owner of the ``POST`` that made
  it; a ``GET``, stop or ``DELETE`` by anyone else (or by nobody) gets exactly what a
  chat with no active answer gets, so an answer is never confirmed to another user.

Decisions worth knowing:

* **The active-stream pointer** lives in the context's own backend, as a tiny stream
  named ``ai-sdk:chat:<chatId>`` used as a register: an append-only log of stream ids
  ("" once cleared) whose last entry is the value. Every process appends with one
  well-known token, so the backend's atomic append-at-index (the contract's invariant
  2) makes it a compare-and-set: a write that lost a race is refused and retried. It
  expires ``pointer_ttl`` seconds after its last write (the context's ``ttl`` by
  default) and grows by two short entries per answer. A ``POST`` sets it once its stream
  exists and before answering; the stream's end (done, failed, stopped) clears it only if
  it still names that stream, so a newer ``POST`` of the same chat is never cleared by an
  older one. ``GET`` also checks the stream itself, so a pointer left behind by a dead
  process answers ``204`` too.
* **Chunk N is stored chunk N**: each UI chunk is one stored chunk (and one SSE event,
  whose ``id:`` is N), so ``startIndex`` needs no index of its own.
* **Message ids**: the ``start`` chunk always carries a ``messageId`` (the app's, or
  one made here: the id of the assistant message being continued, else a new one), so a
  client that resumes replaces its partial message instead of appending a second copy.
* **The end of every response is well-formed, and ends with ``finish``**: the stored
  stream ends with ``[DONE]``; an app whose generator raises gets an ``error`` chunk (its
  text from ``on_error``, "An error occurred." by default, as the AI SDK masks errors),
  ``finish`` (``finishReason: "error"``) and ``[DONE]``; a stopped stream (stored without
  ``[DONE]``, since the producer stops pulling at once) gets ``text-end``/
  ``reasoning-end`` for the parts still open, ``abort``, ``finish`` and ``[DONE]`` added
  on the way out, the same for every reader (numbered on after the stored chunks); a
  stream that failed in storage or lost its producer gets ``error``, ``finish`` and
  ``[DONE]``. ``WorkflowChatTransport`` asks again until it sees a ``finish``; ``useChat``
  ignores one after ``abort`` or ``error``. Only a backend that goes away mid-response
  aborts the response, so the client retries.
* SSE events carry ``id:`` lines and quiet streams get ``: ping`` comments, as
  everywhere in this package; the AI SDK's parser (``eventsource-parser``) follows the
  SSE spec and ignores both. The ``X-Stream-Id`` header names the stored stream, so the
  generic `resumable_stream.asgi.ResumeEndpoint` can serve it too.
* If the backend is down when a ``POST`` comes, the answer streams without being
  stored (a warning is logged): the chat works, it just cannot be resumed. At
  ``max_streams`` a ``POST`` gets ``503`` (``Retry-After: 1``) and the chat's running
  answer, if any, stays its active stream; at ``max_followers`` a ``GET`` gets ``503``; an
  answer cut at ``max_stream_bytes`` ends with an ``error`` chunk.
"""

from __future__ import annotations

from ._ai_sdk_chunks import (
    DONE,
    UI_MESSAGE_STREAM_HEADERS,
    FinishReason,
    UIMessageChunk,
    abort_chunk,
    encode_chunk,
    error_chunk,
    finish_chunk,
    finish_step_chunk,
    start_chunk,
    start_step_chunk,
    text_chunks,
    text_delta_chunk,
    text_end_chunk,
    text_start_chunk,
)
from ._ai_sdk_requests import ChatHandler, ChatRequest, ChatStop
from ._ai_sdk_routes import ChatStreams

__all__ = [
    "DONE",
    "UI_MESSAGE_STREAM_HEADERS",
    "ChatHandler",
    "ChatRequest",
    "ChatStop",
    "ChatStreams",
    "FinishReason",
    "UIMessageChunk",
    "abort_chunk",
    "encode_chunk",
    "error_chunk",
    "finish_chunk",
    "finish_step_chunk",
    "start_chunk",
    "start_step_chunk",
    "text_chunks",
    "text_delta_chunk",
    "text_end_chunk",
    "text_start_chunk",
]
