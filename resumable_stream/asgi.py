"""Framework-free ASGI helpers: resumable responses, a middleware and a resume endpoint.

* `ResumableStreamMiddleware` wraps any ASGI app. For the requests it is told to
  handle, the app's streaming response becomes the producer of a resumable stream: the
  client gets the body plus an ``X-Stream-Id`` header, and the app keeps running to the
  end even if the client disconnects (it never sees the disconnect). Stopping the
  stream (``DELETE``, ``ctx.stop_stream``), a cut at
  ``max_stream_bytes`` or closing the context cancels the app (its ``finally`` runs;
  the middleware waits up to ``APP_CANCEL_GRACE`` for it). The app's ``send`` waits
  while ``max_buffered_bytes`` of its body wait for the producer, so an app faster
  than storage is held back instead of filling memory. It also serves the resume
  endpoint.
* `ResumableStreamResponse` is an ASGI response for code that wants to be explicit.
* `ResumeEndpoint` is the resume endpoint as a mountable ASGI app.

Resume contract (``GET`` on the resume path): ``200`` with the stream from the
requested position; ``404`` unknown or expired; ``410`` ended with nothing left for
this client, with ``X-Stream-Status: done`` if it completed or ``X-Stream-Status:
failed`` plus ``X-Stream-Error: StreamFailed`` (the producer's source raised, storage
was lost, or it was shut down) or ``ProducerLost`` (its process died) if it failed;
``413`` (``X-Stream-Status: failed``, ``X-Stream-Error: StreamTooLarge``) the stream
was cut at ``max_stream_bytes`` and the client has everything stored before the cut;
a ``200`` whose stream fails mid-body is aborted, never ended cleanly, so the client
resumes and gets the failure; ``400`` a bad position; ``403`` refused by
``authorize``; ``503`` no backend configured, the backend unreachable, or
``max_followers`` readers of this stream already in this process (with
``Retry-After: 1``). The position is ``Last-Event-ID``
(the index of the last SSE event received; ``-1``: from the start) or
``?resumeAt=<characters>`` for other bodies (an SSE client with no event yet sends
``?resumeAt=0`` or ``Last-Event-ID: -1``). A client that gives a
position gets the tail of a stream that finished while it was away. ``DELETE`` on the
same path stops the stream's producer (``202``). ``DELETE`` with ``?delete=1`` deletes
the stream instead (`ResumableStreamContext.delete_stream`), only where the app opted
in with ``allow_delete=True``: ``204`` deleted, ``404`` unknown; without the opt-in it
is refused with ``405`` and nothing changes.

Owners (``owner=``, on the middleware, `ResumeEndpoint` and `ResumableStreamResponse`):
``owner(scope) -> str | None`` says who a request comes from. A stream is bound to the
owner of the request that made it, stored in its metadata under ``"owner"`` (a reserved
key). A resume, stop or delete of an owned stream by anyone else, or by nobody (None),
gets exactly what an unknown id gets (``404``, same body and headers), so the stream's
existence is never confirmed to them; owners are compared in constant time. A stream
made with no owner (None, or no ``owner=``) is readable by anyone, as are streams made
before owners existed. Only an endpoint given ``owner=`` checks: give whatever serves
resumes the same callable as whatever makes the streams (the middleware does both).

Resource caps (`StreamOptions`): a request that would start a stream beyond
``max_streams`` gets ``503`` with ``Retry-After: 1`` before the app runs, and nothing
is stored (503, not 429: the limit is the process's, not the client's rate). A stream
that passes ``max_stream_bytes`` is cut: the response in flight is aborted after the
last stored chunk (never ended cleanly, so no client mistakes it for complete), and
resumes get the stored rest, then ``413``. A body piece larger than
``max_batch_bytes`` is one chunk, stored whole; headers and request bodies are the
server's to limit (uvicorn answers oversized headers itself).

Resume URLs: every resumable response names its resume URL in ``Location``
(relative, this origin: the middleware's ``resume_path``, the resume endpoint's own
path, the explicit response's ``resume_path`` if given), with ``?reconnect=1``. Clients
that follow it after a break (langgraph-sdk's SSE client) reconnect there with ``GET``
and ``Last-Event-ID``. At that URL no position means "from the start", and a completed
stream with nothing left for the client answers ``200`` with an empty body and
``X-Stream-Status: done`` instead of ``410`` (such a client reconnects even after a cut
that fell after the last event, and would take the ``410`` for an error); a failure is
still ``410``/``413``. SSE events are stored as the app wrote them (``event:``,
``data:``, comments and all) and replayed byte for byte, with our ``id:`` added last.

Decisions worth knowing: ids the middleware makes are 128-bit random
(``secrets.token_urlsafe(16)``); the app may supply its own with an ``X-Stream-Id``
response header (taken as it is, latin-1) or the ``stream_id`` hook (any text, no
``/``). The ``X-Stream-Id`` we send is the id's UTF-8, percent-encoded as a URL path
segment (``chat-日本`` is ``chat-%E6%97%A5%E6%9C%AC``, ``50%off`` is ``50%25off``;
random ids are unchanged): header values are latin-1, and the value goes into the
resume URL as it is. The resume endpoint decodes the id from the path once.
Non-2xx responses, responses with a ``Content-Length`` and responses whose whole body
comes in one message pass through untouched. If the backend is down when a stream
starts, the response streams normally without ``X-Stream-Id`` and a warning is logged.
"""

from __future__ import annotations

# The `X as X` names are not in __all__ but stay importable from here, as before (the
# AI SDK layer and resumable_stream.starlette use them); their home is _responder.
from ._endpoint import ResumeEndpoint
from ._http import Owner
from ._middleware import APP_CANCEL_GRACE as APP_CANCEL_GRACE
from ._middleware import ASGIApp, ResumableStreamMiddleware
from ._responder import DEFAULT_PING_INTERVAL as DEFAULT_PING_INTERVAL
from ._responder import RETRY_AFTER as RETRY_AFTER
from ._responder import Authorize, new_stream_id
from ._responder import method_is_head as method_is_head
from ._responder import wants_delete as wants_delete
from ._response import ResumableStreamResponse

__all__ = [
    "ASGIApp",
    "Authorize",
    "Owner",
    "ResumableStreamMiddleware",
    "ResumableStreamResponse",
    "ResumeEndpoint",
    "new_stream_id",
]
