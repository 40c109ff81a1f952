"""The replay-then-follow merge of one reader, as one pure object: no I/O, no clock.

A reader has two sources for the same sequence of chunks: snapshots read from
storage (status, stored length, chunks from a position) and live events from its
subscription (`Appended`, `Ended`, `Resync`, or a quiet period with none). Live
events may come late, twice, overlapping, out of order or not at all; a snapshot is
always true when it is read. `Merge` turns both into one answer, a `Step`:

* ``DELIVER``: hand out ``merge.batch`` (chunks with indices ``merge.batch_start``,
  ``+ 1``...), then call `Merge.step` for what comes next;
* ``READ``: read storage from ``merge.pos`` and pass the snapshot to `Merge.snapshot`;
* ``WAIT``: wait for the next live event (or a quiet period) and pass it to
  `Merge.event`;
* ``DONE``, ``FAILED`` (``merge.error``, ``merge.exception``), ``LOST``: the end.

Every decision is taken here and only here: a chunk below ``pos`` is dropped, one
beyond it means an event was lost (read storage), an end announced beyond ``pos``
is read first, a stream ends normally only when storage or the producer said DONE at
a length the reader has reached. A running stream's producer is judged by the watch
(`LeaseWatch`: one verdict for the whole package) on each snapshot that leaves the
reader caught up; a fresh live chunk tells it the producer lives.

So a reader yields every index once, in order, from its start, whatever the timing
of its inputs; ``tests/test_merge.py`` drives this object directly to show it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol

from ._lease import Liveness
from ._types import Appended, Chunk, Ended, Event, Snapshot, StreamStatus

__all__ = ["Merge", "Step", "Watch"]


class Step(enum.Enum):
    """What the reader does next."""

    DELIVER = "deliver"  # hand out merge.batch from merge.batch_start, then step()
    READ = "read"  # snapshot from merge.pos, then snapshot()
    WAIT = "wait"  # next live event (None for a quiet period), then event()
    DONE = "done"  # normal end: every chunk of a DONE stream was handed out
    FAILED = "failed"  # the stream failed: merge.error / merge.exception
    LOST = "lost"  # the producer's lease lapsed, confirmed: nobody will end it


DELIVER, READ, WAIT, DONE, FAILED, LOST = Step  # module constants: cheaper look-ups
_NOTHING: Sequence[Chunk] = ()


class Watch(Protocol):
    """The lease verdict over successive snapshots (`LeaseWatch` in the reader)."""

    def observe(self, snap: Snapshot) -> Liveness: ...

    def progress(self) -> None: ...


class Merge:
    """One reader's position in a stream and every decision about it.

    Args:
        start: index of the first chunk to hand out.
        watch: judges a running stream's producer on snapshots (see `Watch`).
        skip: characters (or bytes) to drop from the start, across chunk boundaries.
        live: the live feed carries every chunk from ``start`` (the original reader's
            local feed): wait for it first instead of reading storage.

    Inputs are passed only when the last step asked for them: `snapshot` after READ
    (or WAIT: a snapshot is always true), `event` after WAIT; after DELIVER, `step`.
    """

    __slots__ = (
        "_rest", "_rest_start", "_then", "_watch",
        "batch", "batch_start", "error", "exception", "liveness", "pos", "skip", "status",
    )  # fmt: skip

    def __init__(self, start: int, watch: Watch, *, skip: int = 0, live: bool = False) -> None:
        self.pos = start  # every index below has been handed out (or skipped)
        self.skip = skip
        self.status = StreamStatus.RUNNING
        self.batch: Sequence[Chunk] = _NOTHING
        self.batch_start = start
        self.error: str | None = None
        self.exception: BaseException | None = None
        self.liveness: Liveness | None = None  # the watch's verdict on the last snapshot
        self._watch = watch
        # Chunks accepted (``pos`` is past them) but not handed out yet: what follows
        # a chunk cut by ``skip``.
        self._rest: Sequence[Chunk] = _NOTHING
        self._rest_start = start
        self._then = WAIT if live else READ  # the step once the batch is handed out

    def step(self) -> Step:
        """What to do now that the last batch is handed out (the same answer again
        until an input arrives: a read or a wait that was cancelled is asked again)."""
        if self._rest:
            return self._hand_out()
        return self._then

    def event(self, event: Event | None) -> Step:
        """A live event, or None for a quiet period (``poll_interval`` with nothing)."""
        if type(event) is Appended:
            start = event.start
            pos = self.pos
            if start == pos and not self.skip:
                # The common case, kept short: the next chunks, nothing to cut.
                chunks = event.chunks
                if not chunks:
                    return WAIT
                self._watch.progress()
                self.batch = chunks
                self.batch_start = pos
                self.pos = pos + len(chunks)
                self._then = WAIT
                return DELIVER
            if start > pos:
                return self._next(READ)  # a message was lost: fill the gap from storage
            fresh = event.chunks[pos - start :]
            if not fresh:
                return WAIT  # a duplicate
            self._watch.progress()
            return self._accept(fresh, WAIT)
        if type(event) is Ended:
            if event.length > self.pos:
                return self._next(READ)  # chunks were announced that we do not have
            if event.status is StreamStatus.DONE:
                return self._next(DONE)
            self.error = event.error
            self.exception = event.exception
            return self._next(FAILED)
        # Resync (messages may be missed) or a quiet period (one may have been).
        return self._next(READ)

    def snapshot(self, snap: Snapshot, start: int) -> Step:
        """What storage said: ``snap.chunks`` start at index ``start``."""
        pos = self.pos
        if start > pos:
            return self._next(READ)  # not where we are (never from a reader): again
        chunks = snap.chunks
        if start < pos:
            chunks = chunks[pos - start :]
        end = pos + len(chunks)
        # Judged on every snapshot (its length is the whole stream's, whatever the
        # page), acted on once caught up: what is stored is handed out first.
        self.liveness = verdict = self._watch.observe(snap)
        if end < snap.length:
            then = READ  # more is stored than this page held
        elif snap.status is StreamStatus.DONE:
            then = DONE
        elif snap.status is StreamStatus.FAILED:
            self.error = snap.error
            then = FAILED
        else:
            then = LOST if verdict is Liveness.LOST else WAIT
        if not chunks:
            return self._next(then)
        return self._accept(chunks, then)

    def _accept(self, chunks: Sequence[Chunk], then: Step) -> Step:
        """Take ``chunks`` (from ``pos``), hand them out, then go on with ``then``."""
        self._rest = chunks
        self._rest_start = self.pos
        self.pos += len(chunks)
        self._then = then
        if then is DONE or then is FAILED or then is LOST:
            self._set_status(then)
        return self._hand_out()

    def _next(self, then: Step) -> Step:
        self._then = then
        if then is DONE or then is FAILED or then is LOST:
            self._set_status(then)
        return then

    def _set_status(self, then: Step) -> None:
        self.status = StreamStatus.DONE if then is DONE else StreamStatus.FAILED

    def _hand_out(self) -> Step:
        """The next batch of ``_rest``, after what is left to skip (then ``_then``)."""
        rest = self._rest
        start = self._rest_start
        skip = self.skip
        if skip:
            for i, chunk in enumerate(rest):
                if not skip:  # skipped exactly up to here: the rest goes out whole
                    rest = rest[i:]
                    start += i
                    break
                n = len(chunk)
                if skip >= n:
                    skip -= n  # dropped whole
                    continue
                # Cut this one: it goes out alone, the rest next time.
                self.skip = 0
                self.batch = (chunk[skip:],)
                self.batch_start = start + i
                self._rest = rest[i + 1 :]
                self._rest_start = start + i + 1
                return DELIVER
            else:
                self.skip = skip
                self._rest = _NOTHING
                return self._then
            self.skip = 0
        self.batch = rest
        self.batch_start = start
        self._rest = _NOTHING
        return DELIVER
