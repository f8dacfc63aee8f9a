"""Exclusive advisory locks on files (flock): the one rule for "is someone working on this?".

A run folder and a queued job are "being worked on" while a process holds their lock file; the
kernel drops the lock when that process dies, so the lock, not a pid, decides.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path


def try_lock(path: Path, wait_s: float = 0.0) -> int | None:
    """An fd holding an exclusive flock on path (created if missing), or None while another holds
    it after retrying for wait_s. Closing the fd releases the lock."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.02)


def held(path: Path) -> bool:
    """True while some process holds path's lock; False when nobody does or the file is missing."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False  # no lock file: nobody ever locked it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock taken by the probe
    return False
