"""What each mode runs: the steps of every workload, in order.

A step is one fresh process (Python or Node) measuring one variant at one size, or
for W2 across processes a producer process and a followers process. Repeats are
interleaved (plain, ours, npm, plain, ours, npm, ...) so that a noisy moment of a
shared machine hits every variant alike; summaries take the median.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WORKLOADS = ("w1", "w2", "w3", "w4", "w5", "memory", "durable")
TITLES = {
    "w1": "W1 fan-in: N streams x chunks x 32 B, producer and original reader in one process",
    "w2": "W2 followers: 1 producer, 10 followers (its context, another context, a second process)",
    "w3": "W3 resume: time to first chunk of a running stream holding 10,000 chunks",
    "w4": "W4 over HTTP: uvicorn (uvloop, httptools), SSE of 64 B events",
    "w5": "W5 slow producer: 100 streams, a chunk every 20 ms",
    "memory": "Memory: process RSS per running stream and per follower; Redis memory",
    "durable": "Durable Streams servers: ours (memory, Redis), rakaia-streams, the Node reference",
}


@dataclass(frozen=True)
class Step:
    workload: str  # the report section
    runner: str  # "python", "node", "w2_cross_python", "w2_cross_node"
    spec: dict[str, Any]
    repeat: int = 0

    @property
    def label(self) -> str:
        shown = {k: v for k, v in self.spec.items() if k not in ("workload", "url", "budget")}
        return " ".join(f"{k}={v}" for k, v in shown.items())


@dataclass(frozen=True)
class Sizes:
    w1_streams: tuple[int, ...]
    w1_chunks: int
    w1_raw_max_streams: int  # write-through raw costs a round trip per chunk: keep it short
    w1_repeats: int
    w1_big_repeats: int  # for 1,000 streams
    w2_chunks: int
    w2_followers: int
    w2_repeats: int
    w3_stored: int
    w3_singles: int
    w3_burst: int
    w3_http_singles: int
    w4_events_one: int
    w4_requests_one: int
    w4_clients: tuple[int, ...]
    w4_events_many: int
    w4_repeats: int
    w5_streams: int
    w5_chunks: int
    mem_streams: tuple[int, ...]
    mem_stalled_chunks: tuple[int, ...]
    redis_mem: tuple[tuple[int, int, int], ...]  # (streams, chunks, chunk bytes)
    budget: float


FULL = Sizes(
    w1_streams=(1, 10, 100, 1000),
    w1_chunks=1000,
    w1_raw_max_streams=100,
    w1_repeats=3,
    w1_big_repeats=1,
    w2_chunks=10_000,
    w2_followers=10,
    w2_repeats=3,
    w3_stored=10_000,
    w3_singles=20,
    w3_burst=200,
    w3_http_singles=10,
    w4_events_one=2000,
    w4_requests_one=10,
    w4_clients=(1, 100),
    w4_events_many=1000,
    w4_repeats=3,
    w5_streams=100,
    w5_chunks=200,
    mem_streams=(1000, 10_000),
    mem_stalled_chunks=(20_000, 80_000),
    redis_mem=((100, 1000, 32), (20, 1000, 1024)),
    budget=300.0,
)
QUICK = Sizes(
    w1_streams=(1, 10, 100),
    w1_chunks=200,
    w1_raw_max_streams=10,
    w1_repeats=1,
    w1_big_repeats=1,
    w2_chunks=1000,
    w2_followers=3,
    w2_repeats=1,
    w3_stored=1000,
    w3_singles=3,
    w3_burst=20,
    w3_http_singles=2,
    w4_events_one=200,
    w4_requests_one=1,
    w4_clients=(1, 10),
    w4_events_many=200,
    w4_repeats=1,
    w5_streams=10,
    w5_chunks=10,
    mem_streams=(200,),
    mem_stalled_chunks=(2000,),
    redis_mem=((10, 200, 32),),
    budget=40.0,
)


def plan(sizes: Sizes, *, node: bool, only: tuple[str, ...] = WORKLOADS) -> list[Step]:
    steps: list[Step] = []
    budget = sizes.budget

    def add(section: str, runner: str, repeat: int = 0, **spec: Any) -> None:
        if section in only:
            steps.append(Step(section, runner, {**spec, "budget": budget}, repeat))

    # W1: fan-in, every variant at every size.
    for streams in sizes.w1_streams:
        repeats = sizes.w1_big_repeats if streams >= 1000 else sizes.w1_repeats
        for repeat in range(repeats):
            impls = ["plain", "plain_task", "raw_shared", "ours", "ours_memory", "raw_batched"]
            if streams <= sizes.w1_raw_max_streams:
                impls.append("raw")
            for impl in impls:
                add("w1", "python", repeat, workload="w1", impl=impl, streams=streams,
                    chunks=sizes.w1_chunks, chunk_bytes=32)
            if node:
                for impl in ("node_plain", "npm"):
                    add("w1", "node", repeat, workload="w1", impl=impl, streams=streams,
                        chunks=sizes.w1_chunks, chunk_bytes=32)
    # W2: followers, same process and a second process.
    w2 = {"chunks": sizes.w2_chunks, "chunk_bytes": 32, "followers": sizes.w2_followers}
    for repeat in range(sizes.w2_repeats):
        add("w2", "python", repeat, workload="w2", impl="ours", mode="same", **w2)
        add("w2", "python", repeat, workload="w2", impl="ours", mode="context", **w2)
        add("w2", "w2_cross_python", repeat, workload="w2", impl="ours", mode="cross", **w2)
        # The floor under followers that read Redis: stored behind on the same clock,
        # followed through redis-py pub/sub; nothing resumable.
        add("w2", "python", repeat, workload="w2", impl="raw_shared", mode="same", **w2)
        add("w2", "w2_cross_python", repeat, workload="w2", impl="raw_shared", mode="cross",
            **w2)
        if node:
            add("w2", "node", repeat, workload="w2", impl="npm", mode="same", **w2)
            add("w2", "node", repeat, workload="w2", impl="npm", mode="context", **w2)
            add("w2", "w2_cross_node", repeat, workload="w2", impl="npm", mode="cross", **w2)
    # W3: resume, in process (ours, npm) and through HTTP (ours).
    w3 = {"stored": sizes.w3_stored, "chunk_bytes": 32, "burst": sizes.w3_burst}
    add("w3", "python", workload="w3", impl="ours", singles=sizes.w3_singles, **w3)
    add("w3", "python", workload="w3", impl="plain", singles=sizes.w3_singles, **w3)
    add("w3", "python", workload="w3", impl="raw", singles=sizes.w3_singles, **w3)
    if node:
        add("w3", "node", workload="w3", impl="npm", singles=sizes.w3_singles, **w3)
    add("w3", "python", workload="w3_http", impl="ours_http", stored=sizes.w3_stored,
        singles=sizes.w3_http_singles, burst=sizes.w3_burst)
    # W4: over HTTP, three ways to serve the same generator.
    for repeat in range(sizes.w4_repeats):
        for clients in sizes.w4_clients:
            events = sizes.w4_events_one if clients == 1 else sizes.w4_events_many
            requests = sizes.w4_requests_one if clients == 1 else 1
            for variant in ("plain", "plain_stored", "middleware", "explicit"):
                add("w4", "python", repeat, workload="w4", impl=variant, variant=variant,
                    clients=clients, events=events, requests=requests)
    # W5: slow producer.
    for impl in ("plain", "plain_task", "raw_shared", "raw_shared_sub", "ours", "ours_context",
                 "raw"):
        add("w5", "python", workload="w5", impl=impl, streams=sizes.w5_streams,
            chunks=sizes.w5_chunks, chunk_bytes=32, delay=0.02)
    # Memory.
    for streams in sizes.mem_streams:
        for impl in ("plain", "ours", "ours_memory"):
            add("memory", "python", workload="memory", impl=impl, streams=streams)
    for chunks in sizes.mem_stalled_chunks:
        add("memory", "python", workload="memory_stalled", impl="ours", chunks=chunks,
            chunk_bytes=1024)
    for streams, chunks, size in sizes.redis_mem:
        for impl in ("ours", "raw"):
            add("memory", "python", workload="redis_memory", impl=impl, streams=streams,
                chunks=chunks, chunk_bytes=size)
    # Durable Streams: every server in one step (benchmarks/durable.py), its own budget.
    # A quick run takes it only when asked (--only durable): it installs two other servers.
    quick = sizes.budget < FULL.budget
    if "durable" in only and (not quick or only != WORKLOADS):
        steps.append(Step("durable", "python", {"workload": "durable", "quick": quick,
                                                "budget": 120.0 if quick else 900.0}))
    return steps
