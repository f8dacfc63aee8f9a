"""A process-wide cache of data set scans (cnnlab.data.scan) shared by every dashboard session.

The key is the folder and its class (or split/class) folders' mtimes, or a labels CSV's mtime and
column options, plus the label overrides file's mtime: adding or removing images, or a label fix,
scans again. A small LRU under a lock; treat the results as read-only (they are shared).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from . import data, overrides
from .scan_result import ScanResult

CACHE_SIZE = 8  # scans kept (each holds one entry per image)

_lock = threading.Lock()
_items: OrderedDict[tuple, ScanResult] = OrderedDict()


def is_csv(path: str) -> bool:
    """True when path is an existing labels CSV file (else it names a folder, or nothing)."""
    return path.lower().endswith(".csv") and Path(path).is_file()


def _data_key(path: str, csv_options: dict[str, str]) -> tuple:
    """The folder and its class (or split/class) folders' mtimes: adding or removing files there
    changes the key; for a CSV, its mtime and options."""
    root = Path(path)
    if is_csv(path):
        return (str(root.resolve()), root.stat().st_mtime_ns, tuple(sorted(csv_options.items())))
    stamps = [(p.name, p.stat().st_mtime_ns) for p in sorted(root.iterdir()) if p.is_dir()]
    for p in sorted(root.iterdir()):
        if p.is_dir():  # split folders hold the class folders one level down
            stamps += [(f"{p.name}/{q.name}", q.stat().st_mtime_ns) for q in sorted(p.iterdir())
                       if q.is_dir()]  # fmt: skip
    return (str(root.resolve()), root.stat().st_mtime_ns, tuple(stamps))


def _overrides_stamp(path: str) -> int:
    """The label overrides file's mtime (0 without one): a label fix scans again (cheap: cached)."""
    try:
        return overrides.file_for(path).stat().st_mtime_ns
    except OSError:
        return 0


def scan(
    path: str, progress: data.Progress | None = None, csv_options: dict[str, str] | None = None
) -> ScanResult:
    """data.scan(path, progress, **csv_options), served from the cache while nothing changed."""
    options = dict(csv_options or {})
    key = (_data_key(path, options), _overrides_stamp(path))
    with _lock:
        if key in _items:
            _items.move_to_end(key)
            return _items[key]
    # scanned outside the lock: sessions scanning other data sets do not wait for this one
    result = data.scan(path, progress, **options)
    with _lock:
        _items[key] = result
        while len(_items) > CACHE_SIZE:
            _items.popitem(last=False)
    return result


def clear() -> None:
    """Forget every cached scan (tests start from an empty cache)."""
    with _lock:
        _items.clear()
