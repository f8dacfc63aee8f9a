"""How much memory a new job may use: CNNLAB_JOB_MEMORY, else what the machine (and its cgroup)
has available now, less a reserve for the server."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .errors import CnnlabError

MEMORY_RESERVE = 512 * 2**20  # left to the server and the system when the limit is automatic


def parse_size(text: str) -> int:
    """'2G', '512M', '1.5g', '1000000' -> bytes; CnnlabError on anything else."""
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(float(t))
    except ValueError:
        raise CnnlabError(f"{text!r} is not a memory size: use e.g. 2G or 512M") from None


def available_memory() -> int:
    """Bytes a new job may use: CNNLAB_JOB_MEMORY when set, else the memory available now
    (MemAvailable, or the cgroup's limit when lower) minus a reserve for the server."""
    env = os.environ.get("CNNLAB_JOB_MEMORY", "").strip()
    if env:
        return parse_size(env)
    avail = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    if avail is None:
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            limit = int(Path(path).read_text().strip())
            current_path = Path(path).with_name(
                "memory.current" if path.endswith("max") else "memory.usage_in_bytes"
            )
            used = int(current_path.read_text().strip())
            avail = min(avail, max(0, limit - used))
    return max(0, avail - MEMORY_RESERVE)
