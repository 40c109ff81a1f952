"""An example app under uvicorn (or hypercorn) in a subprocess on a free loopback port.

Used by the example-app, browser and AI SDK tests. ``REDIS_URL``/``KV_URL`` are removed
from the child's environment (streams in memory) unless ``env`` puts one back.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from .servers import free_port

ROOT = Path(__file__).resolve().parent.parent


class AppProcess:
    """``target`` (``module:app``, maybe with server options) served in a subprocess."""

    def __init__(
        self,
        target: str,
        log: IO[bytes],
        *,
        env: Mapping[str, str] | None = None,
        server: str = "uvicorn",
    ) -> None:
        self.target = target
        self.log = log  # the server's output, shown if it fails to start
        self.env = dict(env or {})
        self.server = server
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        if self.server == "hypercorn":
            return [
                sys.executable, "-m", "hypercorn", *self.target.split(),
                "--bind", f"127.0.0.1:{self.port}", "--graceful-timeout", "5",
            ]  # fmt: skip
        return [
            sys.executable, "-m", "uvicorn", *self.target.split(),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--no-access-log", "--timeout-graceful-shutdown", "5",
        ]  # fmt: skip

    def start(self, timeout: float = 30.0) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "KV_URL")}
        env.update(self.env)
        for _attempt in range(3):  # another process may take the port before the server does
            self.port = free_port()
            self.process = subprocess.Popen(
                self._command(), cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT
            )
            if self._wait_ready(timeout):
                return
            self.stop()
        raise RuntimeError(f"{self.target} did not start:\n{self.output()}")

    def _wait_ready(self, timeout: float) -> bool:
        """True once the port accepts connections (the server binds after app startup)."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.05)  # polling a process we get no event from
        return False

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None
