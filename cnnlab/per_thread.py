"""A value one thread sets for a with-block (the owner a job's runs get, the workspace a job's
queue lives in), then puts back."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def bound(store: threading.local, name: str, value: Any) -> Iterator[None]:
    """Within the block, this thread's store.<name> is value; after it, what it was before."""
    before = getattr(store, name, None)
    setattr(store, name, value)
    try:
        yield
    finally:
        setattr(store, name, before)
