"""Server-Sent Events framing, without I/O, for storing a response one event per chunk.

A resumed client names the last event it saw (``Last-Event-ID``), so each stored chunk must
be exactly one event carrying its own id: `EventSplitter` cuts the body at event
boundaries byte-for-byte, and `with_id` stamps each event with its chunk index.
"""

from __future__ import annotations

import re

from ._exceptions import InvalidArgument

__all__ = [
    "PING",
    "EventDecoder",
    "EventSplitter",
    "ServerSentEvent",
    "is_event_stream",
    "is_text",
    "parse_last_event_id",
    "with_id",
]

PING = b": ping\n\n"
"""A comment event: keeps idle connections and proxies alive, and clients ignore it."""

_CR = 0x0D
_LF = 0x0A
_EOL = re.compile(rb"[\r\n]")
_TEXT_EOL = re.compile(r"\r\n|\r|\n")
_MAX_ID_DIGITS = 20
_DIGITS = re.compile(r"[0-9]+")
_TEXT_TYPES = frozenset(
    {
        "application/json",
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
        "application/javascript",
    }
)
_UTF8 = frozenset({"utf-8", "utf8"})


class EventSplitter:
    """Cut an SSE byte stream, fed in arbitrary pieces, into complete events.

    A block is an event's lines plus the blank line that ends it, exactly as received.
    Lines end in CRLF, LF or CR (WHATWG). Scanning resumes where it stopped, so many
    small feeds cost linear time overall.
    """

    __slots__ = ("_buf", "_line", "_scan")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._line = 0  # where the current line starts; a blank line ends the block
        self._scan = 0  # where to look for the next CR/LF

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the blocks it completes, in order."""
        if not data:
            return []
        buf = self._buf
        if (
            not buf
            and data.endswith(b"\n\n")
            and data.find(b"\n\n") == len(data) - 2
            and data[0] != _LF
            and _CR not in data
        ):
            # The common case, one whole event per write (LF line ends): no scan.
            return [bytes(data)]
        buf += data
        blocks: list[bytes] = []
        start = 0  # where the current block starts
        line = self._line
        scan = self._scan
        size = len(buf)
        while True:
            m = _EOL.search(buf, scan)
            if m is None:
                scan = size
                break
            i = m.start()
            if buf[i] == _CR:
                if i + 1 == size:
                    # CR, or the first half of a CRLF: undecided until more data.
                    scan = i
                    break
                end = i + 2 if buf[i + 1] == _LF else i + 1
            else:
                end = i + 1
            if i == line:
                blocks.append(bytes(buf[start:end]))
                start = end
            line = scan = end
        if start:
            del buf[:start]
            line -= start
            scan -= start
        self._line = line
        self._scan = scan
        return blocks

    def flush(self) -> bytes:
        """Return what is left at the end of the body (maybe ``b""``) and reset.

        Usually an incomplete event, which clients never dispatch. But if the body ends in
        a CR that is a blank line, the event is complete: `with_id` tells them apart.
        """
        tail = bytes(self._buf)
        self._buf = bytearray()
        self._line = self._scan = 0
        return tail


def _blank_line_start(block: bytes) -> int | None:
    """Where the final blank line of ``block`` starts, or None if it does not end in one."""
    if block.endswith(b"\r\n"):
        cut = len(block) - 2
    elif block.endswith((b"\n", b"\r")):
        cut = len(block) - 1
    else:
        return None
    # The blank line's terminator must follow another terminator (or nothing).
    if cut == 0 or block[cut - 1] in (_CR, _LF):
        return cut
    return None


def with_id(block: bytes, event_id: int) -> bytes:
    """Return ``block`` with ``id: <event_id>`` as its last field, overriding any app id.

    The last ``id`` field of an event wins, so ours goes just before the blank line.
    Blocks with nothing to dispatch (only blank lines) and incomplete tails (no final
    blank line: clients drop them) come back unchanged.
    """
    cut = _blank_line_start(block)
    if cut is None or not block[:cut].strip(b"\r\n"):
        return block
    return b"%sid: %d\n%s" % (block[:cut], event_id, block[cut:])


def _media_type(content_type: str) -> tuple[str, list[str]]:
    kind, *params = content_type.split(";")
    return kind.strip().lower(), params


def is_event_stream(content_type: str | None) -> bool:
    """True for ``text/event-stream``, whatever its parameters."""
    if content_type is None:
        return False
    return _media_type(content_type)[0] == "text/event-stream"


def is_text(content_type: str | None) -> bool:
    """True if a body of this type may be decoded as UTF-8 text.

    A declared charset other than UTF-8 makes it false: decoding it as UTF-8 would be wrong.
    """
    if content_type is None:
        return False
    kind, params = _media_type(content_type)
    main, slash, sub = kind.partition("/")
    if not slash or not main or not sub:
        return False
    if not (main == "text" or kind in _TEXT_TYPES or sub.endswith("+json")):
        return False
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').strip().lower()
            if charset not in _UTF8:
                return False
    return True


def parse_last_event_id(value: str | None) -> int | None:
    """Parse a ``Last-Event-ID`` header: None if absent or empty, else a chunk index,
    or ``-1`` for ``"-1"``: no event yet, so from the start (what a client that has
    none may say, as it would with ``?resumeAt=0``).

    Raises `InvalidArgument` (a ``ValueError``) for anything else but a non-negative
    decimal integer, so that a bad header is a client error rather than a silent replay
    from the start.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text == "-1":
        return -1
    if len(text) > _MAX_ID_DIGITS:
        raise InvalidArgument(
            f"Last-Event-ID is {len(text)} characters long; at most {_MAX_ID_DIGITS} digits"
        )
    if not _DIGITS.fullmatch(text):
        raise InvalidArgument(f"Last-Event-ID must be a non-negative decimal integer, not {text!r}")
    return int(text)


class ServerSentEvent:
    """One dispatched event, as a client sees it."""

    __slots__ = ("data", "event", "id", "retry")

    def __init__(self, data: str, event: str, id: str | None, retry: int | None) -> None:
        self.data = data
        self.event = event
        self.id = id
        self.retry = retry

    def __repr__(self) -> str:
        return f"ServerSentEvent(event={self.event!r}, id={self.id!r}, data={self.data!r})"


class EventDecoder:
    """Client-side SSE parsing (the WHATWG algorithm), fed text as it arrives.

    ``last_event_id`` persists across events, as the spec's "last event ID" does;
    ``retry`` is the last reconnection time the server asked for, in milliseconds.
    """

    def __init__(self) -> None:
        self._buffer = ""
        self._data: list[str] = []
        self._event = ""
        self._pending_cr = False
        self._started = False
        self.last_event_id: str | None = None
        self.retry: int | None = None

    def feed(self, text: str) -> list[ServerSentEvent]:
        if not self._started and text:
            self._started = True
            if text.startswith("\ufeff"):
                text = text[1:]
        if self._pending_cr and text.startswith("\n"):
            text = text[1:]  # the second half of a CRLF split across feeds
        self._pending_cr = False
        self._buffer += text
        events: list[ServerSentEvent] = []
        start = 0
        # Only CR, LF and CRLF end lines here (str.splitlines knows many more).
        for match in _TEXT_EOL.finditer(self._buffer):
            if match.group() == "\r" and match.end() == len(self._buffer):
                self._pending_cr = True  # maybe a CRLF whose LF is in the next feed
            event = self._line(self._buffer[start : match.start()])
            if event is not None:
                events.append(event)
            start = match.end()
        self._buffer = self._buffer[start:]
        return events

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry" and value.isdigit() and value.isascii():
            self.retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return ServerSentEvent("\n".join(data), event or "message", self.last_event_id, self.retry)
