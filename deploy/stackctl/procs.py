"""Processes of this host by pid: is it alive, its descendants, stop it (a signal, then SIGKILL)."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import psutil


def alive(pid: int) -> bool:
    try:
        process = psutil.Process(pid)
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def descendants(pid: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def signal_if_alive(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def stop(pid: int, sig: signal.Signals, grace: float, wait_first: float = 0) -> None:
    """Send `sig` (after `wait_first` seconds for the process to end by itself), SIGKILL after `grace`."""
    if wait_for_exit(pid, wait_first):
        return
    signal_if_alive(pid, sig)
    if not wait_for_exit(pid, grace):
        signal_if_alive(pid, signal.SIGKILL)


def wait_for_exit(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)
