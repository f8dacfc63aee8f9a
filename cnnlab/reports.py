"""The reports the CLI prints, built from the core without printing: a data set's inspection, its
label fixes, a run's evaluation, the model zoo, a failed training run.

Their `--json` form is a contract read by outside scripts: keys are only ever added. The core
modules are imported inside each function so that `cnnlab runs` does not pay for torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import CnnlabError


def inspect_report(
    path: str,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    *,
    path_column: str = "",
    label_column: str = "",
    images: str = "",
    exclude_classes: list[str] | None = None,
    drop_duplicates: bool = False,
    drop_conflicts: bool = False,
) -> dict:
    """What `cnnlab inspect --json` prints: classes, counts, problems, split, duplicates."""
    from . import data, duplicates, overrides, splits

    full = data.scan(path, path_column=path_column, label_column=label_column, images=images)
    scan = data.filter_scan(full, exclude_classes or [], drop_duplicates, drop_conflicts)
    split = data.split(scan, val_fraction, test_fraction, seed)
    groups = scan.duplicate_groups()
    paths = [scan.rel(i) for i in range(scan.n_images)]
    class_of = [scan.classes[label] for label in scan.labels]
    return {
        "path": str(Path(path).resolve()),
        "root": str(scan.root),
        "classes": scan.classes,
        "counts": scan.counts,
        "n_images": scan.n_images,
        "problems": [
            {"path": p.path, "reason": p.reason, **({"count": p.count} if p.count > 1 else {})}
            for p in scan.problems
        ],
        "split": split.sizes(),
        "split_per_class": split.per_class(scan),
        "split_source": scan.split_source,
        "duplicates": duplicates.describe(groups, paths, class_of, split.of()),
        "excluded_classes": list(exclude_classes or []),
        "n_dropped": full.n_images - scan.n_images,
        "min_per_class": splits.readiness(scan, val_fraction, test_fraction).need,
        "warnings": scan.warnings + data.split_warnings(val_fraction, test_fraction, scan),
        "overrides": {**full.overrides.report(), "file": str(overrides.file_for(path))},
    }


def overrides_report(data: str) -> dict[str, Any]:
    """What `cnnlab overrides --json` prints: the data set's relabelled and excluded images."""
    from . import overrides

    ov = overrides.load(data)
    return {**ov.report(), "file": str(overrides.file_for(data)), "can_undo": bool(ov.history)}


def evaluate_report(
    run: str, split: str = "test", folder: str | None = None, device: str | None = None
) -> dict[str, Any]:
    """What `cnnlab evaluate --json` prints: a split's (or a labelled folder's) metrics and the
    run's curve diagnosis."""
    from . import evaluate, runs

    loaded = runs.load_run(run)
    if folder:
        result = evaluate.evaluate_folder(loaded, folder, device=device)
    else:
        result = evaluate.evaluate_run(loaded, split, device=device)
    diagnosis = evaluate.diagnose_run(loaded)
    return {"run_id": loaded.run_id, **result.to_dict(), "diagnosis": diagnosis.to_dict()}


def models_report() -> list[dict[str, Any]]:
    """What `cnnlab models --json` prints: one row per model, with whether its ImageNet weights
    are in the cache already."""
    from . import models, weights

    rows = []
    for name in models.list_models():
        spec = models.get_spec(name)
        row = models.describe(name)
        url = weights.imagenet_url(spec)
        row["weights_cached"] = url is not None and weights.cached_path(url).is_file()
        rows.append(row)
    return rows


def failure_report(run_id: str | None, error: str) -> dict[str, Any]:
    """The one JSON object a failed `train/resume --json` prints: the run's summary when the run
    failed or was interrupted (its status and error), else {"status": "failed", "error": ...}."""
    from . import runs

    report: dict[str, Any] = {"status": "failed", "error": error, "run_id": None, "run_dir": None}
    if run_id:
        try:
            run = runs.load_run(run_id)
        except CnnlabError:
            pass  # no run folder was made (a pre-flight problem, an unknown run)
        else:
            summary = runs.read_summary(run)
            report.update(run_id=run.run_id, run_dir=str(run.run_dir))
            if summary.get("status") in ("failed", "interrupted"):
                report = {"error": error, **summary, **report, "status": summary["status"]}
    return report
