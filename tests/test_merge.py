"""The reader's merge, driven directly: no backend, no event loop.

A model stream grows by batches and ends (done, failed, or its producer dies and its
lease lapses); an adversarial network loses, duplicates, reorders and overlaps its
`Appended` events, drops `Ended`, and injects `Resync` and quiet periods; snapshots
come in small pages, sometimes from behind the reader's position. Whatever the
interleaving, the merge hands out exactly a prefix of the stream, each index once and
in order, and ends normally only when the stream is done and everything was handed out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from resumable_stream._lease import Lapse, Liveness, judge
from resumable_stream._merge import DELIVER, DONE, FAILED, LOST, READ, WAIT, Merge, Step
from resumable_stream._types import Appended, Ended, Event, Resync, Snapshot, StreamStatus

POLL = 1.0  # the quiet period and the lease's confirmation interval, in model seconds


class Clock:
    def __init__(self) -> None:
        self.now = 0.0


class ModelWatch:
    """`LeaseWatch` on the model's clock: the same `judge`, another time source."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.first: Lapse | None = None

    def observe(self, snap: Snapshot) -> Liveness:
        verdict, self.first = judge(
            snap, here=False, first=self.first, now=self.clock.now, confirm_after=POLL
        )
        return verdict

    def progress(self) -> None:
        self.first = None


@dataclass
class World:
    """The stream as storage holds it, and the live events on their way."""

    chunks: list[str]
    ending: str  # "done", "failed" or "lost"
    stored: int = 0
    status: StreamStatus = StreamStatus.RUNNING
    lease_alive: bool = True
    wire: list[Event] = field(default_factory=list)

    def snapshot(self, start: int, page: int) -> Snapshot:
        error = "RuntimeError: boom" if self.status is StreamStatus.FAILED else None
        return Snapshot(
            self.status,
            self.stored,
            self.chunks[start : min(start + page, self.stored)],
            lease_alive=self.lease_alive,
            error=error,
        )

    @property
    def finished(self) -> bool:
        return self.status is not StreamStatus.RUNNING or not self.lease_alive


def announce(data: st.DataObject, world: World, event: Event, *, reliable: bool) -> None:
    """Put ``event`` on the wire, as an unreliable network (or a local feed) would."""
    if reliable:
        if data.draw(st.integers(0, 9)) == 0:  # the local feed overflowed
            world.wire.clear()
            world.wire.append(Resync())
        else:
            world.wire.append(event)
        return
    copies = data.draw(st.integers(0, 2))  # lost, once, or twice
    for _ in range(copies):
        at = data.draw(st.integers(0, len(world.wire)))  # anywhere: reordered
        world.wire.insert(at, event)
    if isinstance(event, Appended) and event.start and data.draw(st.booleans()):
        # One that overlaps what came before (a re-sent batch, a shifted split).
        back = data.draw(st.integers(1, event.start))
        start = event.start - back
        world.wire.append(Appended(start, world.chunks[start : event.start + len(event.chunks)]))
    if data.draw(st.integers(0, 7)) == 0:
        world.wire.append(Resync())


def produce(data: st.DataObject, world: World, *, reliable: bool) -> None:
    """The producer's next move: store a batch, or end."""
    total = len(world.chunks)
    if world.stored < total:
        n = data.draw(st.integers(1, total - world.stored))
        start = world.stored
        world.stored += n
        announce(data, world, Appended(start, world.chunks[start : start + n]), reliable=reliable)
        return
    if world.ending == "lost":
        world.lease_alive = False  # it died: no end is ever announced
        return
    world.status = StreamStatus.DONE if world.ending == "done" else StreamStatus.FAILED
    error = None if world.ending == "done" else "RuntimeError: boom"
    announce(data, world, Ended(world.status, world.stored, error), reliable=reliable)


@dataclass
class Run:
    delivered: list[tuple[int, str]]
    end: Step | None
    merge: Merge


def drive(data: st.DataObject, world: World, start: int, skip: int, *, live: bool) -> Run:
    clock = Clock()
    merge = Merge(start, ModelWatch(clock), skip=skip, live=live)
    delivered: list[tuple[int, str]] = []
    step = merge.step()
    for turn in range(2000):
        if not world.finished and data.draw(st.integers(0, 2)) == 0:
            produce(data, world, reliable=live)
            continue
        if step is DELIVER:
            delivered.extend((merge.batch_start + i, chunk) for i, chunk in enumerate(merge.batch))
            step = merge.step()
        elif step is READ:
            page = data.draw(st.integers(1, 4))
            behind = data.draw(st.integers(0, min(2, merge.pos)))  # an older position
            at = merge.pos - behind
            step = merge.snapshot(world.snapshot(at, page + behind), at)
        elif step is WAIT:
            if world.wire and data.draw(st.integers(0, 4)):
                event = world.wire.pop(data.draw(st.integers(0, len(world.wire) - 1)))
                step = merge.event(event)
            elif live and not world.finished:
                produce(data, world, reliable=True)  # the original reader never polls
            else:
                clock.now += POLL  # poll_interval of quiet
                step = merge.event(None)
        else:
            return Run(delivered, step, merge)
        assert turn < 1900, "the merge did not reach an end"
    raise AssertionError("unreachable")


def check(run: Run, world: World, start: int, skip: int) -> None:
    chunks = world.chunks
    indices = [i for i, _ in run.delivered]
    # Each index once, in order, without a gap, from the first one handed out.
    if indices:
        assert indices == list(range(indices[0], indices[0] + len(indices)))
        assert indices[0] >= start
    # Exactly what the stream holds, after the skipped characters.
    text = "".join(c for _, c in run.delivered)
    whole = "".join(chunks[start:])[skip:]
    assert whole.startswith(text)
    for n, (i, chunk) in enumerate(run.delivered):
        assert chunk == chunks[i] or (n == 0 and chunks[i].endswith(chunk))
    # A normal end only for a done stream, and only once all of it was handed out.
    everything = text == "".join(chunks[start : world.stored])[skip:]
    if run.end is DONE:
        assert world.ending == "done"
        assert world.status is StreamStatus.DONE
        assert everything
        assert world.stored == len(chunks)
        assert run.merge.status is StreamStatus.DONE
    elif run.end is FAILED:
        assert world.ending == "failed"
        assert everything
        assert run.merge.error == "RuntimeError: boom"
        assert run.merge.status is StreamStatus.FAILED
    else:
        assert run.end is LOST
        assert world.ending == "lost"
        assert not world.lease_alive
        assert everything
        assert run.merge.status is StreamStatus.FAILED


chunk_text = st.text(alphabet="abé😀", min_size=0, max_size=4)


@settings(max_examples=400, deadline=None)
@given(
    chunks=st.lists(chunk_text, min_size=0, max_size=12),
    ending=st.sampled_from(["done", "failed", "lost"]),
    data=st.data(),
)
def test_a_follower_gets_a_prefix_each_index_once(
    chunks: list[str], ending: str, data: st.DataObject
) -> None:
    world = World(chunks=[f"{i}:{c}" for i, c in enumerate(chunks)], ending=ending)
    # Joined at any time: storage already holds some of it.
    world.stored = data.draw(st.integers(0, len(chunks)))
    start = data.draw(st.integers(0, world.stored))
    run = drive(data, world, start, 0, live=False)
    check(run, world, start, 0)


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(chunk_text, min_size=0, max_size=10),
    ending=st.sampled_from(["done", "failed", "lost"]),
    data=st.data(),
)
def test_skip_characters_across_chunks(chunks: list[str], ending: str, data: st.DataObject) -> None:
    world = World(chunks=chunks, ending=ending)
    skip = data.draw(st.integers(0, sum(map(len, chunks)) + 2))
    run = drive(data, world, 0, skip, live=False)
    check(run, world, 0, skip)


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(chunk_text, min_size=0, max_size=12),
    ending=st.sampled_from(["done", "failed"]),
    data=st.data(),
)
def test_the_original_reader_on_its_local_feed(
    chunks: list[str], ending: str, data: st.DataObject
) -> None:
    """In order and complete, unless it overflows into a `Resync`; no quiet polls."""
    world = World(chunks=[f"{i}:{c}" for i, c in enumerate(chunks)], ending=ending)
    run = drive(data, world, 0, 0, live=True)
    check(run, world, 0, 0)


def test_a_step_is_asked_again_until_its_input_arrives() -> None:
    """A cancelled read or wait leaves the merge as it was: the same step again."""
    merge = Merge(0, ModelWatch(Clock()))
    assert merge.step() is READ
    assert merge.step() is READ
    assert merge.snapshot(Snapshot(StreamStatus.RUNNING, 2, ["a", "b"]), 0) is DELIVER
    assert (merge.batch_start, list(merge.batch)) == (0, ["a", "b"])
    assert merge.step() is WAIT
    assert merge.step() is WAIT
    assert merge.event(Appended(1, ["b", "c"])) is DELIVER  # overlapping: trimmed
    assert (merge.batch_start, list(merge.batch)) == (2, ["c"])
    assert merge.event(Appended(5, ["f"])) is READ  # a gap: read storage
    assert merge.step() is READ


def test_a_lapse_is_confirmed_a_poll_later_and_a_live_chunk_clears_it() -> None:
    clock = Clock()
    merge = Merge(0, ModelWatch(clock))
    lapsed = Snapshot(StreamStatus.RUNNING, 1, ["a"], lease_alive=False)
    assert merge.snapshot(lapsed, 0) is DELIVER
    assert merge.step() is WAIT  # seen lapsed once: keep following
    assert merge.liveness is Liveness.LAPSED
    assert merge.event(Appended(1, ["b"])) is DELIVER  # the producer lives
    assert merge.step() is WAIT
    clock.now += POLL
    assert merge.event(None) is READ
    again = Snapshot(StreamStatus.RUNNING, 2, [], lease_alive=False)
    assert merge.snapshot(again, 2) is WAIT  # a new lapse, not the old one confirmed
    clock.now += POLL
    assert merge.event(None) is READ
    assert merge.snapshot(again, 2) is LOST
    assert merge.status is StreamStatus.FAILED
