"""The demo's terminal and signals: a console with a live status line, and a latch for Ctrl-C.

Used by `rectune.demo` only (its main thread).  `Console` prints rows above a
status line that is redrawn in place on a terminal and becomes a plain
periodic line off one (CI, logs, pipes).  `SignalLatch` turns SIGINT/SIGTERM
into a flag the demo polls between steps, so shutdown is always orderly.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable
from contextlib import suppress
from types import FrameType, TracebackType
from typing import Self, TextIO

__all__ = ["Console", "Interrupted", "SignalLatch"]


class Console:
    """Everything the demo prints: rows and notes, plus a live status line.

    On a terminal the status line is redrawn in place (rows are printed above
    it); otherwise (CI, logs, pipes) it becomes a plain progress line every
    `log_every_s`.  Used only by the demo's main thread.
    """

    def __init__(self, out: TextIO, err: TextIO, *, status_every_s: float, log_every_s: float) -> None:
        self.out = out
        self.err = err
        self.tty = out.isatty()
        self.every_s = status_every_s if self.tty else log_every_s
        self._status = ""
        self._last_s = -math.inf

    def say(self, text: str = "") -> None:
        """Print a line above the status line."""
        self._clear()
        self.out.write(text + "\n")
        self._redraw()

    def error(self, text: str) -> None:
        """Print a line to stderr (status line cleared first so they do not mix)."""
        self._clear()
        self.out.flush()
        self.err.write(text + "\n")
        self.err.flush()
        self._redraw()

    def status(self, render: Callable[[int | None], str], now_s: float, *, force: bool = False) -> None:
        """Show the progress line: redrawn in place every `status_every_s` on a TTY, else a line per `log_every_s`.

        `render(width)` makes the line; `width` is the terminal's (None off a
        terminal), and a line still too wide is cut so the redraw never wraps.
        """
        if not force and now_s - self._last_s < self.every_s:
            return
        self._last_s = now_s
        if self.tty:
            width = shutil.get_terminal_size((120, 24)).columns - 1
            text = render(width)
            self._clear()
            self._status = text if len(text) <= width else text[: max(width - 3, 0)] + "..."
            self._redraw()
        else:
            self.say(render(None))

    def end_status(self) -> None:
        """Remove the live status line (before the summary and on exit)."""
        self._clear()
        self._status = ""
        self.out.flush()

    def _clear(self) -> None:
        if self.tty and self._status:
            self.out.write("\r\x1b[K")

    def _redraw(self) -> None:
        if self.tty and self._status:
            self.out.write(self._status)
        self.out.flush()


class SignalLatch:
    """Turns SIGINT/SIGTERM into a flag the demo polls, so shutdown is always orderly.

    Installed by `rectune.demo.run_plan` for the whole run: a Ctrl-C during
    start-up lets the current step finish and then stops what was started;
    during the run it ends traffic and skips the drain; during shutdown a
    repeat only prints a note (every stop is bounded).  Previous handlers
    come back on exit.  Off the main thread (where Python cannot install
    handlers) it does nothing.
    """

    def __init__(self, repeat_note: str) -> None:
        self.signum: int | None = None
        self._repeat_note = repeat_note.encode()
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            return
        # A raw write: the handler may interrupt a buffered print, which must not be re-entered.
        with suppress(OSError, ValueError):
            os.write(sys.stderr.fileno(), self._repeat_note)

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]  # whatever getsignal gave back


class Interrupted(Exception):
    """Raised inside the demo when the latch saw a signal; carries the exit code."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.code = 128 + signum
