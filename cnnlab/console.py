"""What the CLI shows on a terminal: JSON output, the live progress bar, run summaries, trial rows.

Per-command text tables are in console_tables.

Only the CLI prints; the core reports through events and logging.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from . import baseline, events


def print_json(payload: Any) -> None:
    """Indented JSON on stdout (the --json contract)."""
    print(json.dumps(payload, indent=2, default=str))


def is_tty() -> bool:
    """True when stderr is a terminal (live, redrawn lines make sense)."""
    return sys.stderr.isatty()


class ProgressPrinter:
    """A one-line terminal progress bar: epoch, batch, loss, accuracy, ETA."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.live = enabled and is_tty()  # \r-redrawn lines only make sense on a terminal
        self.t0 = time.perf_counter()
        self.epochs = 0

    def __call__(self, event) -> None:
        if not self.enabled:
            return
        if isinstance(event, events.RunStarted):
            self.epochs = event.epochs
            lead = "\n" if self.live else ""  # end the \r-redrawn data-preparation line
            print(
                f"{lead}run {event.run_id} on {event.device}: {event.n_train} train / {event.n_val} val / "
                f"{event.n_test} test images",
                file=sys.stderr,
            )
        elif isinstance(event, events.Preparing) and event.stage.startswith("downloading"):
            self._download(event)
        elif isinstance(event, events.Preparing) and self.live:
            print(
                f"\r{event.stage}: {event.done}/{event.total}", end="", file=sys.stderr, flush=True
            )
        elif isinstance(event, events.Progress) and self.live:
            done = (event.epoch - 1 + event.batch / event.n_batches) / max(self.epochs, 1)
            elapsed = time.perf_counter() - self.t0
            eta = elapsed / max(done, 1e-9) * (1 - done)
            bar = "#" * int(done * 20)
            print(
                f"\r[{bar:<20}] epoch {event.epoch}/{self.epochs} batch {event.batch}/{event.n_batches} "
                f"loss {event.loss:.4f}  {event.images_per_s:,.0f} img/s  ETA {eta:4.0f}s ",
                end="",
                file=sys.stderr,
                flush=True,
            )
        elif isinstance(event, events.FoldEnd):
            how = "saved earlier" if event.resumed else f"{event.seconds:.1f}s"
            what = "step" if event.stage == "learning-curve" else "fold"
            print(f"\r{event.stage} {what} {event.fold}/{event.folds}: held-out accuracy "
                  f"{event.accuracy:.4f} ({how})" + " " * 30, file=sys.stderr, flush=True)  # fmt: skip
            self.t0 = time.perf_counter()  # the next model's ETA starts now
        elif isinstance(event, events.EpochEnd):
            mark = " *" if event.is_best else ""
            print(
                f"\repoch {event.epoch:>3}/{self.epochs}  train loss {event.train_loss:.4f} acc "
                f"{event.train_acc:.3f}  val loss {event.val_loss:.4f} acc {event.val_acc:.3f}  "
                f"{event.seconds:.1f}s{mark}" + " " * 20,
                file=sys.stderr,
            )

    def _download(self, event) -> None:
        """A byte-count bar for a weights download (one start line when not on a terminal)."""
        mb, total = event.done / 1e6, event.total / 1e6
        if not self.live:
            if event.done == 0:
                print(f"{event.stage} ({total:.1f} MB)...", file=sys.stderr, flush=True)
            return
        frac = event.done / event.total if event.total else 0.0
        end = "\n" if event.total and event.done >= event.total else ""
        print(
            f"\r{event.stage} [{'#' * int(frac * 20):<20}] {mb:.1f}/{total:.1f} MB",
            end=end,
            file=sys.stderr,
            flush=True,
        )


def print_summary(summary: dict) -> None:
    """The key fields of a run summary, one per line."""

    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    for key in (
        "run_id",
        "status",
        "best_epoch",
        "epochs_run",
        "stopped_early",
        "val_accuracy",
        "test_accuracy",
        "baseline_accuracy",
        "train_images_per_s",
        "seconds",
        "device",
        "run_dir",
    ):
        print(f"{key:>20}: {fmt(summary.get(key))}")
    line = baseline.comparison(summary)
    if line:
        print(line)


def print_run(summary: dict, as_json: bool) -> None:
    """A finished `train` or `resume` run: its summary as JSON, or its key fields."""
    if as_json:
        print_json(summary)
    else:
        print_summary(summary)


def print_folds(summary: dict, as_json: bool, final: bool) -> None:
    """`train --folds`: the summary as JSON, or the cross-validation then the final run's fields."""
    if as_json:
        print_json(summary)
        return
    print_cross_validation(summary["cross_validation"])
    if final:
        print_summary(summary)


def print_cross_validation(cv: dict) -> None:
    """`train --folds`: mean +- sd val accuracy over the folds and the spread per class."""
    print(f"{cv['folds']}-fold cross-validation on {cv['n_images']} images: val accuracy "
          f"{cv['val_accuracy_mean']:.4f} +- {cv['val_accuracy_sd']:.4f} (folds: "
          f"{', '.join(f'{a:.3f}' for a in cv['fold_accuracies'])})")  # fmt: skip
    width = max(len(c) for c in cv["per_class"])
    for cls, m in cv["per_class"].items():
        print(f"  {cls:<{width}}  recall {m['mean']:.3f} +- {m['sd']:.3f}  "
              f"(min {m['min']:.3f}, max {m['max']:.3f})")  # fmt: skip


def fmt_param(value: Any) -> str:
    """A hyperparameter value for a table cell (floats to 3 significant digits)."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def trial_line(event) -> str:
    """One row of the live trials table."""
    value = "-" if event.value is None else f"{event.value:.4f}"
    params = " ".join(f"{k}={fmt_param(v)}" for k, v in event.params.items())
    return f"{event.number:>5}  {event.state:<8}  {value:>7}  {event.duration:>7.1f}s  {params}"
