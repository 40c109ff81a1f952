"""Two processes of ``examples/durable_streams_app.py`` on one Redis serve one stream.

Writers append through both processes at once: every append is stored exactly once,
each writer's appends in its order. A long-poll in one process is woken by an append in
the other. An idempotent producer is fenced across processes: a newer epoch claimed in
one makes the old epoch's writes fail in the other, and a retry of an accepted batch
through the other process is a duplicate, not a second copy.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import Iterator

import httpx
import pytest

from .app_process import AppProcess
from .servers import RedisServer

pytestmark = pytest.mark.timeout(120)
TIMEOUT = httpx.Timeout(20.0)
WRITERS = 8  # per process
APPENDS = 25  # per writer


@pytest.fixture
def pair(redis_server: RedisServer) -> Iterator[tuple[str, str]]:
    env = {
        "REDIS_URL": redis_server.url,
        "DURABLE_STREAMS_PREFIX": f"ds-procs-{uuid.uuid4().hex[:8]}",
        "DURABLE_STREAMS_LONG_POLL_TIMEOUT": "15",
    }
    with tempfile.TemporaryFile() as log_a, tempfile.TemporaryFile() as log_b:
        a = AppProcess("examples.durable_streams_app:app", log_a, env=env)
        b = AppProcess("examples.durable_streams_app:app", log_b, env=env)
        a.start()
        try:
            b.start()
            try:
                yield a.url, b.url
            finally:
                b.stop()
        finally:
            a.stop()


async def read_all(client: httpx.AsyncClient, url: str) -> list[object]:
    """The whole JSON stream, page by page (bounded)."""
    messages: list[object] = []
    offset = "-1"
    for _ in range(1000):
        reply = await client.get(url, params={"offset": offset})
        assert reply.status_code == 200
        messages += reply.json()
        offset = reply.headers["stream-next-offset"]
        if reply.headers.get("stream-up-to-date") == "true":
            return messages
    raise AssertionError("the stream did not end within 1000 pages")


async def test_appends_exactly_once_in_order_across_processes(pair: tuple[str, str]) -> None:
    path = f"/v1/stream/procs-{uuid.uuid4().hex[:8]}"
    a, b = pair
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        created = await client.put(f"{a}{path}", headers={"content-type": "application/json"})
        assert created.status_code == 201

        async def writer(base: str, name: str) -> None:
            for i in range(APPENDS):
                reply = await client.post(f"{base}{path}", json={"w": name, "i": i})
                assert reply.status_code == 204, reply.text

        await asyncio.gather(
            *(writer(a, f"a{k}") for k in range(WRITERS)),
            *(writer(b, f"b{k}") for k in range(WRITERS)),
        )
        for base in (a, b):
            messages = await read_all(client, f"{base}{path}")
            assert len(messages) == 2 * WRITERS * APPENDS
            seen: dict[str, list[int]] = {}
            for m in messages:
                assert isinstance(m, dict)
                seen.setdefault(m["w"], []).append(m["i"])
            assert seen == {f"{p}{k}": list(range(APPENDS)) for p in "ab" for k in range(WRITERS)}


async def test_long_poll_in_one_process_wakes_on_append_in_the_other(
    pair: tuple[str, str],
) -> None:
    path = f"/v1/stream/wake-{uuid.uuid4().hex[:8]}"
    a, b = pair
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        created = await client.put(f"{a}{path}", headers={"content-type": "text/plain"})
        tail = created.headers["stream-next-offset"]
        waiting = asyncio.ensure_future(
            client.get(f"{b}{path}", params={"offset": tail, "live": "long-poll"})
        )
        appended = await client.post(
            f"{a}{path}", content=b"across", headers={"content-type": "text/plain"}
        )
        assert appended.status_code == 204
        reply = await waiting
        assert (reply.status_code, reply.text) == (200, "across")
        assert reply.headers["stream-next-offset"] == appended.headers["stream-next-offset"]


async def test_producer_fenced_across_processes(pair: tuple[str, str]) -> None:
    path = f"/v1/stream/fence-{uuid.uuid4().hex[:8]}"
    a, b = pair

    def producer(epoch: int, seq: int) -> dict[str, str]:
        return {
            "content-type": "text/plain",
            "producer-id": "p",
            "producer-epoch": str(epoch),
            "producer-seq": str(seq),
        }

    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        await client.put(f"{a}{path}", headers={"content-type": "text/plain"})
        first = await client.post(f"{a}{path}", content=b"0", headers=producer(0, 0))
        assert first.status_code == 200
        # The same batch retried through the other process: a duplicate.
        retry = await client.post(f"{b}{path}", content=b"0", headers=producer(0, 0))
        assert retry.status_code == 204
        assert retry.headers["producer-seq"] == "0"
        # A restarted producer claims epoch 1 through process B...
        claimed = await client.post(f"{b}{path}", content=b"1", headers=producer(1, 0))
        assert claimed.status_code == 200
        # ...and the zombie on epoch 0 is fenced in process A.
        zombie = await client.post(f"{a}{path}", content=b"z", headers=producer(0, 1))
        assert zombie.status_code == 403
        assert zombie.headers["producer-epoch"] == "1"

        # Pipelined batches of epoch 1, racing through both processes: the server takes
        # them in seq order (a gap is refused with 409 and the batch retried), once each.
        async def send(seq: int) -> None:
            for _ in range(200):
                base = a if seq % 2 else b
                reply = await client.post(
                    f"{base}{path}", content=f"<{seq}>".encode(), headers=producer(1, seq)
                )
                if reply.status_code in (200, 204):
                    return
                assert reply.status_code == 409, reply.text
                await asyncio.sleep(0.005)  # back off before re-sending a batch that came early
            raise AssertionError(f"seq {seq} never accepted")

        await asyncio.gather(*(send(seq) for seq in range(1, 21)))
        body = (await client.get(f"{b}{path}", params={"offset": "-1"})).text
        assert body == "01" + "".join(f"<{s}>" for s in range(1, 21))


async def test_stream_recreated_elsewhere_is_not_written_as_the_old_one(
    pair: tuple[str, str],
) -> None:
    """Process A last wrote the stream at some version; B deletes it and makes a new one
    under the same path, up to that same version. A's next append meets the new stream
    (here: its content type), not the metadata it remembers."""
    path = f"/v1/stream/aba-{uuid.uuid4().hex[:8]}"
    a, b = pair
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        assert (
            await client.put(f"{a}{path}", headers={"content-type": "text/plain"})
        ).status_code == 201
        first = await client.post(
            f"{a}{path}", content=b"x", headers={"content-type": "text/plain"}
        )
        assert first.status_code == 204
        assert (await client.delete(f"{b}{path}")).status_code == 204
        json_type = {"content-type": "application/json"}
        assert (await client.put(f"{b}{path}", headers=json_type)).status_code == 201
        assert (
            await client.post(f"{b}{path}", content=b"[1]", headers=json_type)
        ).status_code == 204
        again = await client.post(
            f"{a}{path}", content=b"y", headers={"content-type": "text/plain"}
        )
        assert again.status_code == 409
        assert (await client.get(f"{a}{path}", params={"offset": "-1"})).json() == [1]
