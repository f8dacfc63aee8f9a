"""What a scan of a data set found: its classes, usable images and their labels, given splits,
copies' fingerprints, and the problems and warnings met on the way. Made by `data.scan`, read by
`splits`, `overrides` and the pages."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from . import duplicates
from .layouts import Problem
from .override_set import Overrides


@dataclass
class ScanResult:
    root: Path  # the folder holding the class folders (or the CSV's images folder)
    classes: list[str]  # usable classes, sorted by name; label i is classes[i]
    files: list[Path]  # absolute paths of the usable images, grouped by class
    labels: list[int]  # class index of each file
    problems: list[Problem] = field(default_factory=list)  # skipped files/classes and why
    split_source: str = "random"  # "folders" | "csv" (the layout gives splits) | "random"
    given: list[str] = field(default_factory=list)  # per file: its given split, or "" (or empty)
    exact: list[str] = field(default_factory=list)  # per file: hash of its decoded pixels
    near: list[str] = field(default_factory=list)  # per file: small perceptual hash
    warnings: list[str] = field(default_factory=list)  # usable, but worth knowing
    # the label overrides applied (relabelled / excluded images); see cnnlab.overrides
    overrides: Overrides = field(default_factory=Overrides)

    @property
    def counts(self) -> dict[str, int]:
        """Usable images per class, in class order."""
        counts = dict.fromkeys(self.classes, 0)
        for label in self.labels:
            counts[self.classes[label]] += 1
        return counts

    @property
    def n_images(self) -> int:
        """Number of usable images."""
        return len(self.files)

    def duplicate_groups(self) -> list[duplicates.Group]:
        """Groups of exact / near copies among the usable images."""
        if not self.near:
            return []
        return duplicates.find_groups(self.exact, self.near)

    def rel(self, i: int) -> str:
        """File i relative to the root, with POSIX separators."""
        return os.path.relpath(self.files[i], self.root).replace(os.sep, "/")
