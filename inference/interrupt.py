"""Ctrl-C for the kit's long commands: the first press asks the run to stop (it keeps what is done, writes it marked
partial and exits 130), a second press quits at once.

vLLM's engine core runs in a child process of the same process group, so the terminal's SIGINT reaches it too and
it shuts itself down; a run that was asked to stop must not take that for a crash (`Predictor.interrupt()`).
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Callable

EXIT_CODE = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C


class Interrupt:
    """A SIGINT handler for the main thread: `stop` is set on the first press and `on_stop` callbacks run; a second
    press writes `quit_message` and exits the process with 130 at once."""

    def __init__(self, quit_message: str = "interrupted again: quitting now") -> None:
        self.stop = threading.Event()
        self.quit_message = quit_message
        self.on_stop: list[Callable[[], None]] = []
        self._previous = None

    def __enter__(self) -> "Interrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.stop.is_set():
            os.write(2, f"\n{self.quit_message}\n".encode())
            os._exit(EXIT_CODE)
        self.stop.set()
        for callback in self.on_stop:
            callback()

    def is_set(self) -> bool:
        return self.stop.is_set()


def exit_now(code: int = EXIT_CODE) -> None:
    """Leave without waiting for worker threads still inside an engine call (they hold nothing that needs saving
    once the outputs are written)."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
