"""Ctrl-C: exit promptly with code 130 and leave no temporary files behind.

The first SIGINT raises KeyboardInterrupt as usual, so `finally` blocks (atomic_output) clean up.
Framework code can swallow or wrap that exception, or sit in native code for minutes; a
watchdog therefore removes the tracked temporary paths and ends the process with 130 if it
has not finished within GRACE_SECONDS. A second Ctrl-C does the same at once.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

GRACE_SECONDS = 3.0
EXIT_CODE = 130

_tracked: set[Path] = set()
_state: dict = {"interrupted": False, "timer": None}


def track(path: Path) -> None:
    """Remember a temporary path to remove if the process is interrupted."""
    _tracked.add(Path(path))


def untrack(path: Path) -> None:
    _tracked.discard(Path(path))


def was_interrupted() -> bool:
    """True once Ctrl-C was pressed inside `handled()` (errors raised after it mean 130)."""
    return _state["interrupted"]


def _remove_tracked() -> None:
    from .atomic import remove

    for path in list(_tracked):
        remove(path)
        for side in path.parent.glob(f"{path.name}*"):  # side files, e.g. external data
            remove(side)
    _tracked.clear()


def _hard_exit() -> None:
    _remove_tracked()
    try:
        sys.stderr.write("interrupted\n")
        sys.stderr.flush()
    finally:
        os._exit(EXIT_CODE)


def _on_sigint(signum, frame) -> None:
    if _state["interrupted"]:
        _hard_exit()
    _state["interrupted"] = True
    timer = threading.Timer(GRACE_SECONDS, _hard_exit)
    timer.daemon = True
    timer.start()
    _state["timer"] = timer
    raise KeyboardInterrupt


@contextmanager
def handled():
    """Install the Ctrl-C handler for the duration of one command (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state["interrupted"] = False
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if _state["timer"] is not None:  # the command ended in time: no hard exit
            _state["timer"].cancel()
            _state["timer"] = None
