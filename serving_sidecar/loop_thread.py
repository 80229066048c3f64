"""The sidecar's private event-loop thread and the asyncio helpers its background clients share.

`LoopThread` hosts the event sink, alert sink and config consumer inside a
*sync* ranker process; `cancel_requested` tells a real cancellation from the
stray CancelledError aiokafka can raise on stop.  No I/O of its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from serving_sidecar.errors import SidecarError

T = TypeVar("T")


class LoopThread:
    """A daemon thread running a private asyncio event loop.

    Hosts the sidecar's background clients (event sink, alert sink, config
    consumer) inside a *sync* ranker process; several clients may share one.
    `run(coro)` runs a coroutine there and waits for its result.  Start it from
    the thread that owns the ranker (the loop thread itself is a daemon, so a
    forgotten `stop()` never keeps the process alive).
    """

    def __init__(self, name: str = "rectune-sidecar-loop") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop (raises `SidecarError` before `start()`)."""
        if self._loop is None:
            msg = f"{self.name}: the loop thread is not started"
            raise SidecarError(msg, hint="call start() first")
        return self._loop

    def start(self) -> LoopThread:
        """Start the thread and wait until its loop runs; idempotent."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()
        self._ready.wait()
        return self

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        loop.call_soon(self._ready.set)
        try:
            loop.run_forever()
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule `coro` on the loop from any other thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run `coro` on the loop and wait for its result (not from the loop thread itself)."""
        if self._thread is threading.current_thread():
            coro.close()
            msg = f"{self.name}: run() called from the loop thread would deadlock"
            raise SidecarError(msg, hint="await the coroutine instead")
        return self.submit(coro).result(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the loop (cancelling what still runs on it) and join the thread; idempotent."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout_s)
        self._thread = None
        self._loop = None
        self._ready.clear()


def cancel_requested() -> bool:
    """True if someone really asked the current task to stop (`Task.cancel()`), Python 3.11+.

    aiokafka 0.14 was measured to let a CancelledError escape `stop()` with the
    broker down although nobody cancelled the caller; the sidecar's background
    loops re-raise a CancelledError only when this says it is a real request.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def in_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
