"""Events that fit() sends to callbacks: plain dataclasses, so UI, CLI and tuning only listen."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Event:
    @property
    def kind(self) -> str:
        return type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict with a 'kind' key."""
        return {"kind": self.kind, **asdict(self)}


@dataclass
class RunStarted(Event):
    run_id: str
    run_dir: str
    epochs: int
    n_train: int
    n_val: int
    n_test: int
    device: str
    classes: list[str] = field(default_factory=list)

    @classmethod
    def from_summary(cls, summary: dict[str, Any]) -> RunStarted:
        """The event a run's summary.json stands for, once it holds the split sizes."""
        s = summary
        return cls(s["run_id"], s["run_dir"], s.get("epochs_planned", 0), s["n_train"],
                   s["n_val"], s["n_test"], s.get("device", ""), list(s.get("classes", [])))  # fmt: skip


@dataclass
class Preparing(Event):
    done: int
    total: int
    stage: str


@dataclass
class Progress(Event):
    epoch: int
    batch: int
    n_batches: int
    loss: float
    images_per_s: float


@dataclass
class EpochEnd(Event):
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float
    images_per_s: float
    best_epoch: int
    is_best: bool

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> EpochEnd:
        """The event for one metrics.jsonl row (extra keys, e.g. train_seconds, ignored)."""
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})


@dataclass
class FoldEnd(Event):
    """One quick model of a K-fold check / cross-validation / learning curve is done."""

    stage: str  # "check-labels", "cross-validation" or "learning-curve"
    fold: int  # 1-based
    folds: int
    accuracy: float  # on the images it held out
    seconds: float
    resumed: bool = False  # read back from an earlier, interrupted check


@dataclass
class Finished(Event):
    summary: dict[str, Any]


@dataclass
class Failed(Event):
    message: str


Callback = Callable[[Event], None]
