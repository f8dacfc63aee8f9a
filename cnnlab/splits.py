"""Which image goes where: given or random train/val/test splits, excluded classes, dropped copies.

`split` keeps splits the layout gives (split folders, a CSV split column), carves a missing val or
test split from train, and otherwise shuffles each class with a seed; copies of one picture (see
`duplicates`) always move together, so a copy in train cannot leak into test. `filter_scan` leaves
classes and copies out of a run without touching the user's files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import duplicates
from .config import SPLITS
from .errors import DataError

if TYPE_CHECKING:
    from .scan_result import ScanResult


@dataclass
class Split:
    train: list[int]  # indexes into ScanResult.files
    val: list[int]
    test: list[int]

    def sizes(self) -> dict[str, int]:
        """Images in each split."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def per_class(self, scan: ScanResult) -> dict[str, dict[str, int]]:
        """{class: {"train": n, "val": n, "test": n}} for the given scan."""
        table = {c: {"train": 0, "val": 0, "test": 0} for c in scan.classes}
        for name, idx in (("train", self.train), ("val", self.val), ("test", self.test)):
            for i in idx:
                table[scan.classes[scan.labels[i]]][name] += 1
        return table

    def of(self) -> dict[int, str]:
        """{file index: split name}."""
        return {i: name for name in SPLITS for i in getattr(self, name)}

    def to_dict(self) -> dict[str, list[int]]:
        """Plain dict for split.json."""
        return {"train": list(self.train), "val": list(self.val), "test": list(self.test)}

    @classmethod
    def from_dict(cls, raw: dict[str, list[int]]) -> Split:
        """Inverse of to_dict."""
        return cls(list(raw["train"]), list(raw["val"]), list(raw["test"]))


def filter_scan(
    result: ScanResult,
    exclude_classes: Sequence[str] = (),
    drop_duplicates: bool = False,
    drop_conflicts: bool = False,
) -> ScanResult:
    """The scan without excluded classes and dropped copies (files on disk are never touched)."""
    unknown = sorted(set(exclude_classes) - set(result.classes))
    if unknown:
        raise DataError(
            f"cannot exclude class(es) {', '.join(unknown)}: not in the data set "
            f"(classes: {', '.join(result.classes)})"
        )
    drop = set()
    if drop_duplicates or drop_conflicts:
        groups = result.duplicate_groups()
        drop = duplicates.dropped(groups, result.labels, result.given, drop_duplicates,
                                  drop_conflicts)  # fmt: skip
    excluded = {result.classes.index(c) for c in exclude_classes}
    keep = [i for i in range(result.n_images) if i not in drop and result.labels[i] not in excluded]
    classes = [c for i, c in enumerate(result.classes) if i not in excluded]
    if len(classes) < 2:
        raise DataError(
            f"excluding {', '.join(exclude_classes)} leaves {len(classes)} class(es); a "
            "classifier needs at least 2"
        )
    if not drop and not excluded:
        return result
    relabel = {result.classes.index(c): j for j, c in enumerate(classes)}

    def pick(values: list) -> list:
        return [values[i] for i in keep] if values else []

    out = dataclasses.replace(
        result, classes=classes, files=pick(result.files),
        labels=[relabel[result.labels[i]] for i in keep], given=pick(result.given),
        exact=pick(result.exact), near=pick(result.near), warnings=list(result.warnings),
    )  # fmt: skip
    if drop:
        out.warnings.append(f"{len(drop)} duplicate file(s) left out of this run (not deleted)")
    return out


def _carved_fractions(scan: ScanResult, val_fraction: float, test_fraction: float):
    """The (val, test) fractions split() carves from train: 0 for a split the layout gives."""
    given = set(scan.given)
    return (0.0 if "val" in given else val_fraction, 0.0 if "test" in given else test_fraction)


def _too_small_message(small: dict[str, int], need: int) -> str:
    """What the size rule found and what to do, in one line."""
    listed = ", ".join(f"{c!r} ({n})" for c, n in small.items())
    return (
        f"class(es) with too few usable images to split: {listed}; each needs at least {need} "
        "(one to train on, one per validation/test split carved from it) — add images, exclude "
        "the class (--exclude-class / the Data page), or set the validation/test fractions to 0"
    )


@dataclass(frozen=True)
class Readiness:
    """Whether a filtered scan can be split and trained on, and what each class needs."""

    need: int  # images each class needs in its training pool
    carve_val: bool  # a validation split is carved from train (not given, fraction > 0)
    carve_test: bool  # a test split is carved from train
    too_small: dict[str, int]  # {class: images in its training pool} of the classes under need
    problems: tuple[str, ...]  # what blocks a run, one line each with what to do

    @property
    def ready(self) -> bool:
        """True when nothing blocks training on this scan."""
        return not self.problems


def readiness(scan: ScanResult, val_fraction: float, test_fraction: float) -> Readiness:
    """The one data-readiness rule, on the scan as filtered (excluded classes and dropped copies
    already left out): split, the pre-flight, `cnnlab inspect` and the Data page all use it.

    A class needs one image to train on plus one per split carved from its training pool (a split
    the layout gives is not carved, so it costs nothing); a classifier needs two classes."""
    carve_val, carve_test = _carved_fractions(scan, val_fraction, test_fraction)
    need = 1 + (carve_val > 0) + (carve_test > 0)
    pool = dict.fromkeys(scan.classes, 0)
    for i, label in enumerate(scan.labels):
        if not scan.given or scan.given[i] in ("", "train"):
            pool[scan.classes[label]] += 1
    # a class only in a given val/test split is not carved (scan warned about it)
    small = {c: n for c, n in pool.items() if 0 < n < need}
    problems = []
    if len(scan.classes) < 2:
        problems.append(
            f"{scan.root} has {len(scan.classes)} usable class(es): a classifier needs at least 2 "
            "class folders with images"
        )
    if small:
        problems.append(_too_small_message(small, need))
    return Readiness(need, carve_val > 0, carve_test > 0, small, tuple(problems))


def _units(scan: ScanResult) -> dict[int, list[int]]:
    """{first member: every member} of each duplicate group (copies share one split)."""
    return {g.members[0]: list(g.members) for g in scan.duplicate_groups()}


def _carve(
    scan: ScanResult, idx: list[int], units: dict[int, list[int]], val_fraction: float,
    test_fraction: float, seed: int,
) -> Split:  # fmt: skip
    """Stratified, seeded split of the files idx; duplicate groups move as one unit."""
    pool = set(idx)
    head_of = {m: head for head, members in units.items() for m in members}
    by_class: dict[int, list[list[int]]] = {i: [] for i in range(len(scan.classes))}
    placed: set[int] = set()
    for i in idx:  # sorted, so i is the first member of its unit: the unit goes with i's class
        if i in placed:
            continue
        unit = [m for m in units[head_of[i]] if m in pool] if i in head_of else [i]
        placed.update(unit)
        by_class[scan.labels[i]].append(unit)
    rng = np.random.default_rng(seed)
    out = Split([], [], [])
    for group in by_class.values():
        n = sum(len(u) for u in group)
        if n == 0:
            continue  # a class only in a given val/test split: scan warned about it
        n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
        n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
        while n_val + n_test > n - 1:  # keep at least one training image
            if n_val >= n_test:
                n_val -= 1
            else:
                n_test -= 1
        val: list[int] = []
        test: list[int] = []
        for j in rng.permutation(len(group)):
            if len(val) < n_val:
                val += group[j]
            elif len(test) < n_test:
                test += group[j]
            else:
                out.train += group[j]
        out.val += val
        out.test += test
    for name in SPLITS:
        getattr(out, name).sort()
    return out


def split(
    scan: ScanResult, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> Split:
    """Stratified, seeded train/val/test split; every class lands in every non-empty split.

    Given splits (split folders, a CSV split column) are kept; a missing val or test split is
    carved from train with its fraction. Copies of one picture always share a split.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise DataError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be >= 0 "
            "and leave some images for training"
        )
    ready = readiness(scan, val_fraction, test_fraction)
    if ready.too_small:
        raise DataError(_too_small_message(ready.too_small, ready.need))
    units = _units(scan)
    if not scan.given:
        return _carve(scan, list(range(scan.n_images)), units, val_fraction, test_fraction, seed)
    parts = {name: [i for i, s in enumerate(scan.given) if s == name] for name in SPLITS}
    parts["train"] += [i for i, s in enumerate(scan.given) if not s]  # CSV rows with no split
    carved = _carve(
        scan, sorted(parts["train"]), units,
        0.0 if parts["val"] else val_fraction, 0.0 if parts["test"] else test_fraction, seed,
    )  # fmt: skip
    return Split(
        carved.train, sorted(parts["val"] or carved.val), sorted(parts["test"] or carved.test)
    )


def split_warnings(val_fraction: float, test_fraction: float, result: ScanResult) -> list[str]:
    """What a zero val or test fraction costs (unless the layout gives that split)."""
    given = set(result.given)
    out = []
    if val_fraction == 0 and "val" not in given:
        out.append("val_fraction is 0: no validation split, so no early stopping and the last "
                   "epoch's weights are kept instead of the best")  # fmt: skip
    if test_fraction == 0 and "test" not in given:
        out.append("test_fraction is 0: no test split, so the run reports no test accuracy")
    return out
