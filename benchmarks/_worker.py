"""One measured step in a fresh process: ``python -m benchmarks._worker '<spec json>'``.

A fresh process per step keeps steps apart: no connection pool, task or heap left
over from the previous one, and its peak RSS is the step's own. It prints lines on
stdout: ``READY`` when a step that others wait for is set up, then one line
``RESULT <json>`` (or, with ``result_file`` in the spec, the JSON goes to that file).
"""

from __future__ import annotations

import asyncio
import json
import sys
import traceback
from collections.abc import Callable
from typing import Any

from ._common import install_loop


def announce(line: str) -> None:
    print(line, flush=True)


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    workload = spec["workload"]
    if workload in ("w1", "w2", "w3", "w5", "memory", "memory_stalled", "redis_memory"):
        from . import _inproc

        step: Callable[[dict[str, Any]], Any] = getattr(_inproc, workload)
        result: dict[str, Any] = await step(spec)
        return result
    if workload in ("w2_producer", "w2_followers"):
        from . import _inproc

        role = getattr(_inproc, workload)
        result = await role(spec, announce)
        return result
    if workload in ("w3_http", "w4"):
        from . import _httpbench

        result = await getattr(_httpbench, workload)(spec)
        return result
    if workload == "durable":
        from . import durable

        result = await durable.step(spec)
        return result
    raise ValueError(f"unknown workload {workload!r}")


def main() -> int:
    spec = json.loads(sys.argv[1])
    loop = install_loop(spec.get("loop", "uvloop"))
    try:
        result = asyncio.run(asyncio.wait_for(run(spec), spec.get("budget", 300)))
    except BaseException as exc:  # reported to the parent as a failed step
        traceback.print_exc()
        result = {"exact": False, "error": f"{type(exc).__name__}: {exc}"}
    result["loop"] = loop
    text = json.dumps(result)
    if spec.get("result_file"):
        # A file, not stdout: results carry up to megabytes of timestamps.
        with open(spec["result_file"], "w") as f:
            f.write(text)
        text = "in " + spec["result_file"]
    print("RESULT " + text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
