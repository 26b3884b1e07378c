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

GRACE_SECONDS = 2.0
EXIT_CODE = 130

_tracked: set[Path] = set()
_state: dict = {"interrupted": False, "timer": None, "armed": False}
_lock = threading.Lock()


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
    _start_watchdog()
    raise KeyboardInterrupt


def _start_watchdog() -> None:
    with _lock:
        _state["interrupted"] = True
        if _state["timer"] is None:
            timer = threading.Timer(GRACE_SECONDS, _hard_exit)
            timer.daemon = True
            timer.start()
            _state["timer"] = timer


def _listen(reader: int) -> None:
    """Python runs signal handlers only between bytecodes, which can be minutes away while
    a framework sits in native code; the C-level handler writes to the wakeup fd at once,
    and this thread starts the watchdog from there."""
    try:
        while _state["armed"]:
            data = os.read(reader, 64)
            if not data:
                return
            if signal.SIGINT in data and _state["armed"]:
                _start_watchdog()
    finally:
        os.close(reader)


@contextmanager
def handled():
    """Install the Ctrl-C handling for the duration of one command (main thread only)."""
    if threading.current_thread() is not threading.main_thread() or _state["armed"]:
        yield
        return
    _state["interrupted"] = False
    previous = signal.signal(signal.SIGINT, _on_sigint)
    reader, writer = os.pipe()  # a pipe, not a socket: tests block socket creation
    os.set_blocking(writer, False)
    previous_fd = signal.set_wakeup_fd(writer, warn_on_full_buffer=False)
    _state["armed"] = True
    threading.Thread(target=_listen, args=(reader,), daemon=True).start()
    try:
        yield
    finally:
        _state["armed"] = False
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGINT, previous)
        try:
            os.write(writer, b"\0")  # wake the listener so it ends and closes its end
        except OSError:
            pass
        os.close(writer)
        with _lock:
            if _state["timer"] is not None:  # the command ended in time: no hard exit
                _state["timer"].cancel()
                _state["timer"] = None
