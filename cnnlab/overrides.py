"""Label fixes kept beside the data, never in it: relabel or exclude single images per data set.

Each data set (its resolved folder / zip / CSV path) has one JSON file in
`<workspace>/overrides/`; the user's images and CSV are never touched. `data.scan` applies the
file (relabelled images change class, excluded ones leave the scan); a run stores the overrides it
used in its folder, so evaluating or resuming it later sees the same labels. Every change is
logged, so the last one can be undone.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from . import atomic, workspace
from .errors import DataError
from .override_set import Overrides

if TYPE_CHECKING:
    from .scan_result import ScanResult

log = logging.getLogger(__name__)

VERSION = 1
FILE_NAME = "overrides.json"  # what a run folder keeps: the overrides its data used


def dataset_key(path: str | Path) -> str:
    """The data set's identity: its resolved path (a folder, .zip or .csv)."""
    return str(Path(path).expanduser().resolve())


def file_for(path: str | Path) -> Path:
    """The overrides file of a data set (it may not exist yet)."""
    key = dataset_key(path)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(key).name)[:40] or "data"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return workspace.home_path() / "overrides" / f"{slug}-{digest}.json"


def load(path: str | Path) -> Overrides:
    """The data set's overrides (empty when it has none, or when the workspace cannot be read:
    warned once, like the caches, so a locked-down workspace never blocks reading the data)."""
    file = file_for(path)
    try:
        return read_file(file)
    except DataError as exc:
        if not isinstance(exc.__cause__, PermissionError):
            raise
        workspace.warn_once(f"overrides-{file.parent}", f"{exc}; scanning without label fixes")
        return Overrides()


def read_file(file: Path) -> Overrides:
    """Overrides stored in file (a workspace file or a run's copy); empty when missing."""
    try:
        raw = json.loads(file.read_text())
    except (FileNotFoundError, NotADirectoryError):  # no file (or no workspace): no overrides
        return Overrides()
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the label overrides {file} ({exc}); fix or delete it "
                        "(the images are untouched)") from exc  # fmt: skip
    if not isinstance(raw, dict):
        raise DataError(f"the label overrides {file} are not a JSON object; fix or delete it")
    return Overrides.from_dict(raw)


def save(path: str | Path, ov: Overrides) -> None:
    """Write the data set's overrides atomically."""
    file = file_for(path)
    workspace._make_dir(file.parent, "the overrides folder ", "make the workspace writable")
    atomic.write_json_atomic(
        file, {"version": VERSION, "dataset": dataset_key(path), **ov.to_dict()}
    )


def _change(path: str | Path, edit) -> Overrides:
    """Read, edit, write under a lock (two clicks in two tabs never lose one)."""
    file = file_for(path)
    workspace._make_dir(file.parent, "the overrides folder ", "make the workspace writable")
    with FileLock(str(file) + ".lock", timeout=30):
        ov = read_file(file)
        edit(ov)
        save(path, ov)
    return ov


def _state(ov: Overrides, rel: str) -> dict[str, Any]:
    return {"relabel": ov.relabel.get(rel), "exclude": rel in ov.exclude}


def _set(ov: Overrides, rel: str, state: dict[str, Any]) -> None:
    if state.get("relabel"):
        ov.relabel[rel] = state["relabel"]
    else:
        ov.relabel.pop(rel, None)
    if state.get("exclude"):
        ov.exclude = sorted(set(ov.exclude) | {rel})
    else:
        ov.exclude = [p for p in ov.exclude if p != rel]


def relabel(path: str | Path, rel: str, new_class: str) -> Overrides:
    """Give image rel (relative to the data set's root) the class new_class."""
    rel, new_class = _clean(rel), str(new_class).strip()
    if not new_class:
        raise DataError("relabel: the new class name is empty")

    def edit(ov: Overrides) -> None:
        ov.history.append({"path": rel, "action": "relabel", "to": new_class,
                           "before": _state(ov, rel)})  # fmt: skip
        _set(ov, rel, {"relabel": new_class, "exclude": False})

    return _change(path, edit)


def exclude(path: str | Path, rel: str) -> Overrides:
    """Leave image rel out of scans and runs (the file stays on disk)."""
    rel = _clean(rel)

    def edit(ov: Overrides) -> None:
        ov.history.append({"path": rel, "action": "exclude", "before": _state(ov, rel)})
        _set(ov, rel, {"relabel": ov.relabel.get(rel), "exclude": True})

    return _change(path, edit)


def undo(path: str | Path) -> dict[str, Any] | None:
    """Undo the last change; returns it (None when there was nothing to undo)."""
    undone: list[dict[str, Any]] = []

    def edit(ov: Overrides) -> None:
        if ov.history:
            last = ov.history.pop()
            _set(ov, last["path"], last.get("before") or {})
            undone.append(last)

    _change(path, edit)
    return undone[0] if undone else None


def clear(path: str | Path) -> None:
    """Forget every override of the data set."""
    _change(path, lambda ov: _set_all(ov, Overrides()))


def _set_all(ov: Overrides, new: Overrides) -> None:
    ov.relabel, ov.exclude, ov.history = new.relabel, new.exclude, new.history


def _clean(rel: str) -> str:
    rel = str(rel).replace("\\", "/").strip()
    if not rel or rel.startswith("/") or ".." in rel.split("/"):
        raise DataError(f"{rel!r} is not a path inside the data set (give it relative to its root)")
    return rel


def apply(result: ScanResult, ov: Overrides) -> ScanResult:
    """The scan with ov applied: excluded images left out, relabelled ones moved to their class.

    A relabel to a class the scan does not have, or an override of a file no longer there, is
    skipped with a warning. Files stay grouped by class (the scan's order).
    """
    if not ov:
        return result
    index = {c: i for i, c in enumerate(result.classes)}
    rels = [result.rel(i) for i in range(result.n_images)]
    present = set(rels)
    excluded = set(ov.exclude) & present
    labels = list(result.labels)
    applied: dict[str, str] = {}
    unknown = sorted({c for p, c in ov.relabel.items() if p in present and c not in index})
    for i, rel in enumerate(rels):
        new = ov.relabel.get(rel)
        if new is not None and new in index and rel not in excluded:
            labels[i] = index[new]
            applied[rel] = new
    stale = (set(ov.relabel) | set(ov.exclude)) - present
    warnings = list(result.warnings)
    if unknown:
        warnings.append(f"label overrides name class(es) not in the data set: "
                        f"{', '.join(unknown)} (those relabels are skipped)")  # fmt: skip
    if stale:
        warnings.append(f"{len(stale)} label override(s) name files no longer in the data set")
    keep = [i for i, rel in enumerate(rels) if rel not in excluded]
    keep.sort(key=lambda i: (labels[i], i))  # files stay grouped by class
    used_classes = sorted({labels[i] for i in keep})
    if len(used_classes) < 2:
        raise DataError("the label overrides leave fewer than 2 classes; undo some of them")
    classes = [result.classes[c] for c in used_classes]
    if len(classes) < len(result.classes):  # a class every image left: out, like an empty folder
        gone = sorted(set(result.classes) - set(classes))
        warnings.append(f"the label overrides leave no images in class(es) {', '.join(gone)}")
        remap = {c: j for j, c in enumerate(used_classes)}
        labels = [remap.get(c, -1) for c in labels]

    def pick(values: list) -> list:
        return [values[i] for i in keep] if values else []

    used = Overrides(applied, sorted(excluded))
    return dataclasses.replace(
        result, classes=classes, files=pick(result.files), labels=[labels[i] for i in keep],
        given=pick(result.given), exact=pick(result.exact), near=pick(result.near),
        warnings=warnings, overrides=used,
    )  # fmt: skip


def corrected_csv(result: ScanResult) -> str:
    """The scan (overrides applied) as CSV text: path (relative to the root), label[, split].

    Read it back with `--images ROOT` (or place it in the root folder).
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    with_split = bool(result.given)
    writer.writerow(["path", "label", "split"] if with_split else ["path", "label"])
    for i in range(result.n_images):
        row = [result.rel(i), result.classes[result.labels[i]]]
        writer.writerow(row + [result.given[i]] if with_split else row)
    return out.getvalue()
