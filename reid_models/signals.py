"""Stopping long work when the user asks: a process-wide flag that loops check between batches.

A signal handler cannot stop a training thread (Python delivers signals to the main thread only,
and scenarios train in worker threads), so the handler only sets the flag, and every batch loop
(training, feature extraction, filter scoring) calls `check()`, which raises `StopRequested`.
The work stops at the next batch, with the last epoch's checkpoint intact for the re-run.

`StopRequested` derives from BaseException, as KeyboardInterrupt does, so that `except
Exception` handlers (retries, fallbacks) let it through.
"""

from __future__ import annotations

import os
import select
import signal
import threading

_requested = threading.Event()
_signal_number: int | None = None
_reason: str | None = None  # a cancel's: the required piece that failed


class StopRequested(BaseException):
    """The user asked the process to stop (SIGINT or SIGTERM), or a required piece of the run
    failed and the work beside it is cancelled; raised at the next batch."""

    def __init__(self, signal_number: int | None, reason: str | None = None) -> None:
        super().__init__(reason or f"stopped by {signal.Signals(signal_number or signal.SIGINT).name}")
        self.signal_number = signal_number
        self.reason = reason


def request_stop(signal_number: int = signal.SIGINT) -> None:
    """Ask every loop of this process to stop at its next batch (first request's signal wins)."""
    global _signal_number
    if not _requested.is_set():
        _signal_number = signal_number
        _requested.set()


def cancel(reason: str) -> None:
    """Stop the work running beside a required piece that failed (e.g. the thin network's
    pretraining when the source model's fails): the same next-batch stop, without a signal."""
    global _reason
    if not _requested.is_set():
        _reason = reason
        _requested.set()


def stop_requested() -> int | None:
    """The signal that asked to stop, or None while nobody has (a cancel has no signal)."""
    return _signal_number if _requested.is_set() else None


def check() -> None:
    """Raise StopRequested if a stop or a cancel was asked for; call it once per batch."""
    if _requested.is_set():
        raise StopRequested(_signal_number if _reason is None else None, _reason)


def reset() -> None:
    """Forget a stop request (tests, and a long-lived process that starts new work)."""
    global _signal_number, _reason
    _requested.clear()
    _signal_number = None
    _reason = None


def reset_cancel() -> None:
    """Forget an earlier run's cancel (not a signal: the user's stop still stands)."""
    if _reason is not None:
        reset()


def exit_code(signal_number: int) -> int:
    """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + signal_number


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def stop_with_parent(parent: int | None = None) -> bool:
    """Ask the kernel for SIGTERM when this process's parent dies (Linux), so a command run under
    another program (`dvc repro`) stops when that program is stopped alone, instead of running on
    as an orphan. `parent`: the PID expected as parent (default: the current one); if it has
    already gone, SIGTERM is raised at once. False where the kernel offers no such signal."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid() if parent is None else parent
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        return False
    if os.getppid() != parent:  # it died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:  # "pid (comm) state ppid ...": comm may hold spaces
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def _is_dvc(pid: int) -> bool:
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        words = cmdline.read().decode(errors="replace").split("\0")
    names = [word.rsplit("/", 1)[-1] for word in words[:3]]
    return "dvc" in names  # `dvc repro` or `python -m dvc repro`


def nearest_dvc_ancestor() -> int | None:
    """PID of the `dvc` process this one runs under (through any shell dvc put between), if any."""
    pid = os.getppid()
    while pid > 1:
        try:
            if _is_dvc(pid):
                return pid
            pid = _parent_of(pid)
        except (OSError, ValueError, IndexError):
            return None
    return None


def stop_with_process(pid: int) -> bool:
    """Send this process SIGTERM when process `pid` (an ancestor, not only the parent) ends.

    The parent-death signal covers only the direct parent; `dvc repro` runs its commands through
    `/bin/sh -c`, and when `sh` does not exec the command (dash, CI's shell) stopping dvc leaves
    `sh` alive and the stage training on. A pidfd (Linux 5.3+) becomes readable when `pid` exits,
    without the PID-reuse race of polling; a daemon thread waits on it."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux, an old kernel, or already gone
        return False

    def wait_then_stop() -> None:
        select.select([pidfd], [], [])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait_then_stop, name=f"stop-with-{pid}", daemon=True).start()
    return True
