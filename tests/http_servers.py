"""Serve an ASGI app with a real HTTP server on a free loopback port, for the HTTP tests.

Each `LiveServer` runs its server in a thread of its own, on an event loop of its own:

* ``uvicorn``: uvloop and httptools (``uvicorn.Config(loop="uvloop", http="httptools")``;
  the thread's loop comes from that config's own loop factory).
* ``hypercorn``: the stock asyncio loop, HTTP/1.1 over h11.
* ``granian``: the embedded server (``granian.server.embed.Server``), which takes an app
  object and runs it on the thread's asyncio loop; its request I/O is Rust (hyper).

The app, its context and its Redis client are made on the server's loop (``make_app`` is
awaited there), and the test talks to them only over TCP, through `LiveServer.run` (a
coroutine run on the server's loop) or through a `Probe`: named events that work across
the two loops. So the client (the test's loop) and the server never share a loop, as in
production, and nothing waits by sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx

from .servers import free_port

__all__ = ["SERVER_KINDS", "CrossLoopEvent", "LiveServer", "Probe", "serving"]

T = TypeVar("T")
ASGIApp = Callable[..., Awaitable[None]]
Cleanup = Callable[[], Awaitable[None]]
AppFactory = Callable[[], Awaitable[tuple[ASGIApp, Cleanup]]]

SERVER_KINDS = ("uvicorn", "hypercorn", "granian")
STARTUP_TIMEOUT = 15.0
# granian's embedded server stops its Rust runtime after `serve()` returns, with no
# completion to wait on; if the thread closes its loop first, a runtime thread calling
# back into it panics ("panic in a function that cannot unwind"). Give it this long.
GRANIAN_WIND_DOWN = 0.3


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class CrossLoopEvent:
    """An event that can be set from any thread and awaited from any event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        with self._lock:
            if self._set:
                return
            self._set = True
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(_wake, future)

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._set:
                return
            future: asyncio.Future[None] = loop.create_future()
            entry = (loop, future)
            self._waiters.append(entry)
        try:
            await future
        finally:
            with self._lock, contextlib.suppress(ValueError):
                self._waiters.remove(entry)


class Probe:
    """What the app and the test share: named `CrossLoopEvent`s and notes.

    The app sets events (``"<key>:paused"``, ``"<key>:completed"``, ...) and waits on
    the ones the test sets (``"<key>:go"``); it writes plain values into ``notes``
    before setting the event that tells the test to read them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, CrossLoopEvent] = {}
        self.notes: dict[str, Any] = {}

    def event(self, name: str) -> CrossLoopEvent:
        with self._lock:
            found = self._events.get(name)
            if found is None:
                found = self._events[name] = CrossLoopEvent()
            return found

    def release_all(self) -> None:
        """Set every event, so that no app code stays parked at a gate."""
        with self._lock:
            events = list(self._events.values())
        for event in events:
            event.set()


class LiveServer:
    """One ASGI app under one real server, in a thread, on 127.0.0.1."""

    def __init__(self, kind: str, make_app: AppFactory, probe: Probe | None = None) -> None:
        if kind not in SERVER_KINDS:
            raise ValueError(f"unknown server kind {kind!r}")
        self.kind = kind
        self.probe = probe or Probe()
        self._make_app = make_app
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._sock: socket.socket | None = None
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_type = ""
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- the test's side ------------------------------------------------------------------

    def start(self) -> None:
        if self.kind == "granian":
            self.port = free_port()  # granian binds by address and port only
        else:
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind(("127.0.0.1", 0))
            self._sock.listen(128)
            self.port = int(self._sock.getsockname()[1])
        self._thread = threading.Thread(
            target=self._thread_main, name=f"{self.kind}-{self.port}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(STARTUP_TIMEOUT):
            raise RuntimeError(f"{self.kind} did not start within {STARTUP_TIMEOUT} s")
        if self._error is not None:
            raise RuntimeError(f"{self.kind} failed to start") from self._error
        self._check_serving()

    def _check_serving(self) -> None:
        """Any HTTP answer (a 404 is fine) proves the server accepts and serves."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            try:
                httpx.get(f"{self.url}/__not_a_route__", timeout=5.0, trust_env=False)
                return
            except httpx.TransportError:
                # granian may not have bound its port yet: there is no event for that.
                if time.monotonic() > deadline or self._error is not None:
                    raise
                time.sleep(0.02)

    def stop(self) -> None:
        self.probe.release_all()
        if self._thread is None:
            return
        loop, stop = self.loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        self._thread.join(STARTUP_TIMEOUT + 10)
        if self._thread.is_alive():
            raise RuntimeError(f"{self.kind} on port {self.port} did not stop")
        self._thread = None
        if self._error is not None:
            raise RuntimeError(f"{self.kind} failed") from self._error

    async def run(self, make: Callable[[], Awaitable[T]], timeout: float = 10.0) -> T:
        """Await ``make()`` on the server's loop (where the app's context lives)."""
        assert self.loop is not None

        async def call() -> T:
            return await make()

        future = asyncio.run_coroutine_threadsafe(call(), self.loop)
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)

    # -- the server thread's side ---------------------------------------------------------

    def _loop_factory(self) -> Callable[[], asyncio.AbstractEventLoop] | None:
        if self.kind == "uvicorn":
            import uvicorn

            return uvicorn.Config(app=_no_app, loop="uvloop").get_loop_factory()
        return None

    def _thread_main(self) -> None:
        try:
            _run_in_new_loop(self._main(), self._loop_factory())
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()
            if self._sock is not None:
                self._sock.close()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop_type = f"{type(self.loop).__module__}.{type(self.loop).__name__}"
        self._stop = asyncio.Event()
        app, cleanup = await self._make_app()
        try:
            if self.kind == "uvicorn":
                await self._serve_uvicorn(app)
            elif self.kind == "hypercorn":
                await self._serve_hypercorn(app)
            else:
                await self._serve_granian(app)
        finally:
            await cleanup()

    async def _serve_uvicorn(self, app: ASGIApp) -> None:
        import uvicorn

        config = uvicorn.Config(
            app,
            loop="uvloop",
            http="httptools",
            ws="none",
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        assert self._sock is not None
        assert self._stop is not None
        task = asyncio.create_task(server.serve(sockets=[self._sock]))
        self._ready.set()
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        stop.cancel()
        await task

    async def _serve_hypercorn(self, app: ASGIApp) -> None:
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        assert self._sock is not None
        assert self._stop is not None
        config = Config()
        config.bind = [f"fd://{self._sock.detach()}"]  # hypercorn owns the socket now
        self._sock = None
        config.accesslog = None
        config.loglevel = "WARNING"
        config.graceful_timeout = 2.0
        self._ready.set()
        await serve(app, config, shutdown_trigger=self._stop.wait, mode="asgi")

    async def _serve_granian(self, app: ASGIApp) -> None:
        from granian.constants import HTTPModes, Interfaces
        from granian.server.embed import Server

        assert self._stop is not None
        logging.getLogger("_granian").setLevel(logging.WARNING)
        server = Server(
            app,
            address="127.0.0.1",
            port=self.port,
            interface=Interfaces.ASGINL,  # no lifespan: the app is made before serving
            http=HTTPModes.http1,
            websockets=False,
            log_enabled=False,
        )
        task = asyncio.create_task(server.serve())
        self._ready.set()
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        server.stop()  # type: ignore[no-untyped-call]
        await task
        await asyncio.sleep(GRANIAN_WIND_DOWN)  # see GRANIAN_WIND_DOWN


def _run_in_new_loop(
    main: Awaitable[None], factory: Callable[[], asyncio.AbstractEventLoop] | None
) -> None:
    """``asyncio.run`` with a loop factory (``asyncio.Runner`` is Python 3.11+)."""
    loop = factory() if factory is not None else asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(main)
    finally:
        try:
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


async def _no_app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
    raise RuntimeError("placeholder app: only used to read uvicorn's loop factory")


@contextlib.contextmanager
def serving(kind: str, make_app: AppFactory, probe: Probe | None = None) -> Iterator[LiveServer]:
    """Start a `LiveServer`, yield it, stop it (releasing every probe event first)."""
    server = LiveServer(kind, make_app, probe)
    server.start()
    try:
        yield server
    finally:
        server.stop()
