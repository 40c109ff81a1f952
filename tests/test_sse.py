"""SSE framing: splitting a body into events byte-exactly, and stamping event ids."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resumable_stream._sse import (
    PING,
    EventSplitter,
    is_event_stream,
    is_text,
    parse_last_event_id,
    with_id,
)


def split_all(feeds: list[bytes]) -> tuple[list[bytes], bytes]:
    splitter = EventSplitter()
    blocks: list[bytes] = []
    for data in feeds:
        blocks.extend(splitter.feed(data))
    return blocks, splitter.flush()


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# --- A tiny WHATWG event-stream parser, to check what a client would see. ---


@dataclass
class Parsed:
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, data, last id)
    last_event_id: str = ""


_LINE = re.compile(r"([^\r\n]*)(\r\n|\r|\n)")


def parse(body: bytes) -> Parsed:
    """Interpret ``body`` as a client would (lines without a terminator are dropped)."""
    text = body.decode("utf-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    out = Parsed()
    data: list[str] = []
    event_type = ""
    for m in _LINE.finditer(text):
        line = m.group(1)
        if not line:
            if data:
                out.events.append((event_type or "message", "\n".join(data), out.last_event_id))
            data, event_type = [], ""
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event_type = value
        elif name == "id" and "\0" not in value:
            out.last_event_id = value
    return out


# --- EventSplitter ---


def test_simple_events() -> None:
    body = b"data: a\n\ndata: b\nid: 7\n\n: ping\n\n"
    assert split_all([body]) == ([b"data: a\n\n", b"data: b\nid: 7\n\n", b": ping\n\n"], b"")


def test_empty_feeds_and_empty_body() -> None:
    assert split_all([]) == ([], b"")
    assert split_all([b"", b"data: a\n", b"", b"\n", b""]) == ([b"data: a\n\n"], b"")


def test_crlf_split_across_feeds_is_one_terminator() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b"data: a\r") == []
    assert splitter.feed(b"\ndata: b\r") == []
    assert splitter.feed(b"\n\r") == []
    assert splitter.feed(b"\n") == [b"data: a\r\ndata: b\r\n\r\n"]
    assert splitter.flush() == b""


def test_cr_at_end_waits_for_next_feed() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b"data: a\n\r") == []  # the blank line may be CRLF
    assert splitter.feed(b"\ndata: b") == [b"data: a\n\r\n"]
    assert splitter.flush() == b"data: b"


def test_cr_at_end_decided_by_next_non_lf_byte() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b"data: a\r\r") == []
    assert splitter.feed(b"d") == [b"data: a\r\r"]
    assert splitter.flush() == b"d"


def test_cr_cr_is_a_blank_line() -> None:
    assert split_all([b"data: a\r\rdata: b\r\r\n"]) == (
        [b"data: a\r\r", b"data: b\r\r\n"],
        b"",
    )


def test_lf_crlf_is_a_blank_line() -> None:
    assert split_all([b"data: a\n\r\ndata: b\n\r\n"]) == ([b"data: a\n\r\n", b"data: b\n\r\n"], b"")


def test_crlf_crlf() -> None:
    body = b"event: x\r\ndata: a\r\n\r\ndata: b\r\n\r\n"
    expected = [b"event: x\r\ndata: a\r\n\r\n", b"data: b\r\n\r\n"]
    assert split_all([body]) == (expected, b"")
    assert split_all(bytewise(body)) == (expected, b"")


def test_byte_by_byte() -> None:
    body = b"data: a\n\n: c\r\rdata: b\r\nid: 1\r\n\r\n\n"
    expected = [b"data: a\n\n", b": c\r\r", b"data: b\r\nid: 1\r\n\r\n", b"\n"]
    assert split_all(bytewise(body)) == (expected, b"")


def test_leading_blank_line_is_its_own_block() -> None:
    assert split_all([b"\ndata: a\n\n"]) == ([b"\n", b"data: a\n\n"], b"")
    assert split_all([b"\r\n\r\n"]) == ([b"\r\n", b"\r\n"], b"")


def test_no_trailing_blank_line_flush_returns_tail() -> None:
    assert split_all([b"data: a\n\ndata: b\n"]) == ([b"data: a\n\n"], b"data: b\n")
    assert split_all([b"data: a"]) == ([], b"data: a")
    assert split_all([b"data: a\r"]) == ([], b"data: a\r")


def test_body_ending_in_cr_blank_line_is_returned_by_flush() -> None:
    # The last CR might have been half a CRLF until the body ended.
    blocks, tail = split_all([b"data: a\r\rdata: b\r\r"])
    assert blocks == [b"data: a\r\r"]
    assert tail == b"data: b\r\r"
    assert parse(with_id(tail, 3)).events == [("message", "b", "3")]


def test_flush_resets() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b"data: a\n\ndata: b\r") == [b"data: a\n\n"]
    assert splitter.flush() == b"data: b\r"
    assert splitter.flush() == b""
    assert splitter.feed(b"\ndata: c\n\n") == [b"\n", b"data: c\n\n"]


def test_large_event_fed_in_small_pieces() -> None:
    event = b"data: " + b"x" * 200_000 + b"\n\n"
    pieces = [event[i : i + 7] for i in range(0, len(event), 7)]
    assert split_all(pieces) == ([event], b"")


def test_many_events_in_one_feed() -> None:
    events = [b"data: %d\n\n" % i for i in range(10_000)]
    assert split_all([b"".join(events)]) == (events, b"")


# --- Property tests ---

_FIELD_LINES = st.one_of(
    st.text(
        alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"),
        min_size=1,
        max_size=20,
    ).map(lambda s: s.encode()),
    st.sampled_from([b"data: x", b"data:", b"id: 5", b"event: e", b": ping", b"retry: 10"]),
)
_TERMS = st.sampled_from([b"\n", b"\r", b"\r\n"])
_LINES_OF_EVENT = st.lists(st.tuples(_FIELD_LINES, _TERMS), max_size=5)
_EVENT = st.tuples(_LINES_OF_EVENT, _TERMS)


def _build_events(raw: list[tuple[list[tuple[bytes, bytes]], bytes]]) -> list[bytes]:
    """Join lines into events; a CR never precedes an LF that starts a blank line."""
    events: list[bytes] = []
    previous_term = b""
    for lines, blank in raw:
        parts: list[bytes] = []
        for content, term in lines:
            parts.append(content + term)
            previous_term = term
        if previous_term == b"\r" and blank == b"\n":
            blank = b"\r\n"  # "\r" + "\n" would be one terminator, not a blank line
        parts.append(blank)
        previous_term = blank
        events.append(b"".join(parts))
    return events


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    feeds: list[bytes] = []
    last = 0
    for p in points:
        feeds.append(data[last:p])
        last = p
    feeds.append(data[last:])
    return feeds


@given(
    raw=st.lists(_EVENT, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=30),
)
def test_property_splitter_returns_the_original_events(
    raw: list[tuple[list[tuple[bytes, bytes]], bytes]], cuts: list[int]
) -> None:
    events = _build_events(raw)
    body = b"".join(events)
    blocks, tail = split_all(_cut(body, cuts))
    if body.endswith(b"\r"):
        # A final lone-CR blank line is only known at the end of the body.
        assert blocks == events[:-1]
        assert tail == events[-1]
    else:
        assert blocks == events
        assert tail == b""


@given(
    body=st.binary(max_size=300).map(
        lambda b: b.translate(bytes.maketrans(b"abc", b"\r\n\n"))  # plenty of terminators
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=30),
)
def test_property_byte_exact(body: bytes, cuts: list[int]) -> None:
    blocks, tail = split_all(_cut(body, cuts))
    assert b"".join(blocks) + tail == body
    # Splitting does not depend on how the body was cut into feeds.
    assert split_all([body]) == (blocks, tail)


@given(raw=st.lists(_EVENT, min_size=1, max_size=8), first_id=st.integers(0, 2**64))
def test_property_with_id_keeps_data_and_sets_id(
    raw: list[tuple[list[tuple[bytes, bytes]], bytes]], first_id: int
) -> None:
    events = _build_events(raw)
    for n, event in enumerate(events, start=first_id):
        original = parse(event)
        stamped = parse(with_id(event, n))
        assert [(t, d) for t, d, _ in stamped.events] == [(t, d) for t, d, _ in original.events]
        if event.strip(b"\r\n"):
            assert stamped.last_event_id == str(n)
            assert all(i == str(n) for _, _, i in stamped.events)
        else:
            assert with_id(event, n) == event


# --- with_id ---


def test_with_id_is_the_last_field() -> None:
    assert with_id(b"data: a\n\n", 4) == b"data: a\nid: 4\n\n"
    assert with_id(b"event: e\ndata: a\ndata: b\n\n", 0) == b"event: e\ndata: a\ndata: b\nid: 0\n\n"


def test_with_id_overrides_the_apps_id() -> None:
    stamped = with_id(b"id: app-1\ndata: a\n\n", 9)
    assert stamped == b"id: app-1\ndata: a\nid: 9\n\n"
    assert parse(stamped).events == [("message", "a", "9")]
    assert parse(stamped).last_event_id == "9"


def test_with_id_crlf_and_cr_blocks() -> None:
    assert with_id(b"data: a\r\n\r\n", 1) == b"data: a\r\nid: 1\n\r\n"
    assert with_id(b"data: a\r\r", 1) == b"data: a\rid: 1\n\r"
    assert with_id(b"data: a\r\r\n", 1) == b"data: a\rid: 1\n\r\n"
    assert with_id(b"data: a\n\r\n", 1) == b"data: a\nid: 1\n\r\n"
    for block in (b"data: a\r\n\r\n", b"data: a\r\r", b"data: a\r\r\n", b"data: a\n\r\n"):
        assert parse(with_id(block, 1)).events == [("message", "a", "1")]


def test_with_id_blank_only_block_unchanged() -> None:
    for block in (b"\n", b"\r", b"\r\n", b"\n\n", b"\r\n\r\n", b""):
        assert with_id(block, 5) == block


def test_with_id_comment_only_block_gets_id() -> None:
    assert with_id(PING, 2) == b": ping\nid: 2\n\n"
    assert parse(with_id(PING, 2)) == Parsed(events=[], last_event_id="2")


def test_with_id_incomplete_tail_unchanged() -> None:
    for tail in (b"data: a", b"data: a\n", b"data: a\r\n", b"data: a\r", b"data: a\n\ndata: b"):
        assert with_id(tail, 5) == tail


def test_with_id_large_number() -> None:
    assert with_id(b"data: a\n\n", 10**19) == b"data: a\nid: 10000000000000000000\n\n"


def test_splitter_then_with_id_round_trip() -> None:
    body = b"data: a\r\n\r\n: ping\n\nevent: x\rdata: b\rid: z\r\r\ndata: c\n\n"
    blocks, tail = split_all(bytewise(body))
    assert tail == b""
    stamped = b"".join(with_id(b, i) for i, b in enumerate(blocks))
    assert parse(stamped).events == [("message", "a", "0"), ("x", "b", "2"), ("message", "c", "3")]
    assert [(t, d) for t, d, _ in parse(body).events] == [
        (t, d) for t, d, _ in parse(stamped).events
    ]


# --- Content types ---


def test_ping_is_a_comment_event() -> None:
    assert PING == b": ping\n\n"
    assert split_all([PING]) == ([PING], b"")
    assert parse(PING).events == []


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("text/event-stream", True),
        ("text/event-stream; charset=utf-8", True),
        ("Text/Event-Stream;charset=UTF-8", True),
        ("  text/event-stream  ", True),
        ("text/plain", False),
        ("text/event-streams", False),
        ("application/json", False),
        ("", False),
        (None, False),
    ],
)
def test_is_event_stream(content_type: str | None, expected: bool) -> None:
    assert is_event_stream(content_type) is expected


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("text/plain", True),
        ("text/html; charset=utf-8", True),
        ("TEXT/PLAIN; Charset=UTF8", True),
        ('text/plain; charset="utf-8"', True),
        ("text/event-stream", True),
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("application/x-ndjson", True),
        ("application/ndjson", True),
        ("application/jsonl", True),
        ("application/vnd.api+json", True),
        ("application/problem+JSON", True),
        ("application/javascript", True),
        ("text/plain; charset=iso-8859-1", False),
        ("text/plain; charset=us-ascii", False),
        ("application/json; charset=utf-16", False),
        ("application/octet-stream", False),
        ("application/xml", False),
        ("image/png", False),
        ("application/jsonp", False),
        ("text", False),
        ("/json", False),
        ("", False),
        (None, False),
    ],
)
def test_is_text(content_type: str | None, expected: bool) -> None:
    assert is_text(content_type) is expected


# --- Last-Event-ID ---


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("0", 0),
        ("42", 42),
        (" 42\t", 42),
        ("007", 7),
        ("9" * 20, int("9" * 20)),
        ("-1", -1),  # no event yet: from the start
        (" -1 ", -1),
    ],
)
def test_parse_last_event_id(value: str | None, expected: int | None) -> None:
    assert parse_last_event_id(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        *("-2", "-0", "--1", "+1", "1.5", "1e3", "abc", "1_000", "0x10", "\u0661", "1 2"),
        *("9" * 21, "1" * 10_000),
    ],
)
def test_parse_last_event_id_rejects(value: str) -> None:
    with pytest.raises(ValueError, match="Last-Event-ID"):
        parse_last_event_id(value)
