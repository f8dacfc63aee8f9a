"""One data set's label fixes as a value: which images are relabelled, which are left out, and the
changes that led there (for undo). Stored and applied by `overrides`; carried by every scan."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import DataError


@dataclass
class Overrides:
    relabel: dict[str, str] = field(default_factory=dict)  # path (relative to root) -> class
    exclude: list[str] = field(default_factory=list)  # paths left out, sorted
    history: list[dict[str, Any]] = field(default_factory=list)  # changes, oldest first (undo)

    @property
    def n_changes(self) -> int:
        """Images relabelled or excluded."""
        return len(set(self.relabel) | set(self.exclude))

    def __bool__(self) -> bool:
        return bool(self.relabel or self.exclude)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the file's body, without the data set's path)."""
        return {"relabel": dict(sorted(self.relabel.items())), "exclude": sorted(self.exclude),
                "history": list(self.history)}  # fmt: skip

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Overrides:
        """Inverse of to_dict; wrong types are a DataError (a hand-edited file)."""
        relabel, exclude = raw.get("relabel") or {}, raw.get("exclude") or []
        if not isinstance(relabel, dict) or not isinstance(exclude, list):
            raise DataError("overrides file: 'relabel' must map paths to classes and 'exclude' "
                            "must list paths; fix or delete the file")  # fmt: skip
        return cls({str(k): str(v) for k, v in relabel.items()}, sorted(map(str, exclude)),
                   list(raw.get("history") or []))  # fmt: skip

    def report(self) -> dict[str, Any]:
        """`inspect --json`'s "overrides": counts plus the relabel and exclude lists."""
        return {"relabelled": len(self.relabel), "excluded": len(self.exclude),
                "relabel": dict(sorted(self.relabel.items())), "exclude": sorted(self.exclude)}  # fmt: skip
