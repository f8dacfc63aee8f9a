"""Pre-flight check: every problem known to make a run fail, found before a run is created.

`check(config)` lists them all (a bad field, a missing data folder, a class too small to split, a
model that does not fit the image size, a weights file or run that is not there...), so the
CLI refuses with the whole list before it makes a run folder and the Train and Tune pages disable
Start and show the list. `ensure(config)` raises them as one PreflightError.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from . import data, models, splits, weights
from .config import RunConfig
from .errors import CnnlabError


class PreflightError(CnnlabError):
    """A run would fail: the message lists every blocking problem."""


@dataclass(frozen=True)
class Problem:
    where: str  # what is at fault: "data", "model", "model.weights", "config"
    message: str  # what is wrong and what to do

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def _weights_problems(config: RunConfig) -> list[Problem]:
    """A weights file or run that is not there. ImageNet weights and URLs are not checked: a
    missing file is downloaded when the run starts (and that error names what to do)."""
    m = config.model
    try:
        spec = models.get_spec(m.name)
    except CnnlabError as exc:
        return [Problem("model", str(exc))]
    problems = []
    if config.data.image_size < spec.min_size:
        problems.append(
            Problem("data.image_size", f"{m.name} needs images of at least {spec.min_size} px, "
                    f"got {config.data.image_size}: choose a larger image size on the Data page")
        )  # fmt: skip
    if m.weights == "random":
        return problems
    if m.weights == "imagenet" or weights.is_url(m.weights):
        failure = weights.last_failure(m.weights, spec)
        if failure:  # this process tried already: a run would fail the same way
            problems.append(Problem("model.weights", f"{failure}; then try again with "
                                    "'Download the weights now' on the Model page"))  # fmt: skip
        return problems
    if m.weights.startswith("run:"):
        from . import runs  # lazy: runs imports models

        try:
            runs.checkpoint_path(m.weights.removeprefix("run:"))
        except CnnlabError as exc:
            problems.append(Problem("model.weights", str(exc)))
    elif not Path(m.weights).expanduser().is_file():
        problems.append(
            Problem("model.weights", f"weights file {m.weights} does not exist: choose another "
                    "file, or 'Random (train from scratch)' on the Model page")
        )  # fmt: skip
    return problems


def _data_problems(
    config: RunConfig, scan: data.ScanResult | None
) -> tuple[list[Problem], data.ScanResult | None]:
    """The data set as the run will see it: scanned with the CSV options, then filtered (excluded
    classes, dropped copies) before the size rule. `scan` is the unfiltered scan, if at hand."""
    d = config.data
    try:
        if scan is None:
            if not d.path:
                return [Problem("data", "no data set chosen: give an image folder or a .zip")], None
            scan = data.scan(d.path, path_column=d.path_column, label_column=d.label_column,
                             images=d.images)  # fmt: skip
        scan = data.filter_scan(scan, d.exclude_classes, d.drop_duplicates, d.drop_conflicts)
    except CnnlabError as exc:
        return [Problem("data", str(exc))], None
    problems = []
    if len(scan.classes) < 2:
        problems.append(
            Problem("data", f"{scan.root} has {len(scan.classes)} usable class(es): a classifier "
                    "needs at least 2 class folders with images")
        )  # fmt: skip
    small = splits.too_small(scan, d.val_fraction, d.test_fraction)
    if small:
        need = splits.images_needed(scan, d.val_fraction, d.test_fraction)
        problems.append(Problem("data", splits.too_small_message(small, need)))
    return problems, scan


def _model_problems(config: RunConfig, n_classes: int) -> list[Problem]:
    """Build a custom CNN once (cheap) to catch one too deep for the image size."""
    try:
        if models.is_transfer(config.model.name) or n_classes < 2:
            return []
        models.create_model(
            dataclasses.replace(config.model, weights="random"),
            n_classes,
            config.data.image_size,
        )
    except CnnlabError as exc:
        return [Problem("model", str(exc))]
    except RuntimeError as exc:  # torch's shape errors: a model too deep for small images
        return [Problem("model", f"{config.model.name} does not fit {config.data.image_size} px "
                        f"images ({exc}); use a larger image size or fewer blocks")]  # fmt: skip
    return []


def check(config: RunConfig, scan: data.ScanResult | None = None) -> list[Problem]:
    """Every blocking problem of this config (empty when a run can start). `scan` (the config's
    data set, already scanned, not yet filtered) saves scanning it again."""
    try:
        config.validate()
    except CnnlabError as exc:
        return [Problem("config", str(exc))]  # later checks would trip over the same field
    problems = _weights_problems(config)
    data_problems, scan = _data_problems(config, scan)
    problems += data_problems
    if scan is not None and not data_problems:
        problems += _model_problems(config, len(scan.classes))
    return problems


def ensure(config: RunConfig, scan: data.ScanResult | None = None) -> None:
    """Raise PreflightError listing every problem check() finds; return quietly otherwise."""
    problems = check(config, scan)
    if problems:
        raise PreflightError(
            f"cannot start the run ({len(problems)} problem(s)): "
            + "; ".join(str(p) for p in problems)
        )


def batch_warning(batch_size: int, n_train: int) -> str | None:
    """What a batch larger than the training split does (one step per epoch, of every image)."""
    if n_train < 1 or batch_size <= n_train:
        return None
    return (
        f"batch size {batch_size} is larger than the {n_train} training images: each epoch is "
        f"one step and the effective batch is {n_train}; lower the batch size (e.g. "
        f"{max(1, n_train // 8)}) for more steps per epoch"
    )


def run_warnings(config: RunConfig, scan: data.ScanResult | None = None) -> list[str]:
    """What does not block a run but changes what it does: a batch larger than the training
    split, a frozen random backbone. `scan` as for check()."""
    out = []
    try:
        note = models.random_backbone_warning(config.model)
    except CnnlabError:  # an unknown model: check() says so
        note = None
    if note:
        out.append(note)
    problems, scan = _data_problems(config, scan)
    if problems or scan is None:
        return out
    d = config.data
    try:
        n_train = len(splits.split(scan, d.val_fraction, d.test_fraction, d.seed).train)
    except CnnlabError:
        return out
    note = batch_warning(config.train.batch_size, n_train)
    return out + ([note] if note else [])
