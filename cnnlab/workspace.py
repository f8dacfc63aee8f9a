"""Where cnnlab keeps its files: CNNLAB_HOME (default ~/.cnnlab) and its sub-folders."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DataError


def home() -> Path:
    """The workspace root, created on first use."""
    root = Path(os.environ.get("CNNLAB_HOME", "~/.cnnlab")).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _sub(name: str) -> Path:
    path = home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def datasets_dir() -> Path:
    """Extracted uploads and demo data sets."""
    return _sub("datasets")


def cache_dir() -> Path:
    """Decoded uint8 tensor caches, keyed by content hash and size."""
    return _sub("cache")


def runs_dir() -> Path:
    """One folder per run."""
    return _sub("runs")


def studies_url() -> str:
    """The embedded default Optuna storage: an SQLite file in the workspace."""
    return f"sqlite:///{home() / 'studies.db'}"


def data_roots() -> list[Path]:
    """Folders the dashboard may read server-side datasets from (CNNLAB_DATA_ROOTS, os.pathsep-separated)."""
    raw = os.environ.get("CNNLAB_DATA_ROOTS", "")
    roots = [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]
    return roots or [home()]


def check_inside_roots(path: str | Path) -> Path:
    """Resolve a server-side dataset path and refuse it unless it lies inside an allowed root."""
    resolved = Path(path).expanduser().resolve()
    for root in data_roots():
        if resolved == root or root in resolved.parents:
            return resolved
    allowed = ", ".join(str(r) for r in data_roots())
    raise DataError(
        f"{resolved} is outside the allowed data folders ({allowed}); "
        "move the data there or add its folder to CNNLAB_DATA_ROOTS."
    )
