"""Runs as rows for a table or a picker: durations, accuracies (a pruned run's last value), names.

Pure functions of runs.list_runs() summaries plus the run folders, used by the Runs and Home pages
(and anything else listing runs), so no page computes them itself.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from . import runs
from .config import RunConfig
from .errors import CnnlabError

COMPARE_DEFAULT = 3  # newest runs preselected for a comparison
MIN_COMPARE_EPOCHS = 2  # a run with fewer epochs (e.g. pruned after one) is not preselected


def config_of(run_id: str) -> RunConfig | None:
    """A run's config.json, or None when it cannot be read (shown as blanks)."""
    try:
        return runs.read_config(runs.load_run(run_id))
    except CnnlabError:
        return None


def metrics_of(run_id: str) -> list[dict[str, Any]]:
    """A run's per-epoch rows ([] when it has none or was deleted meanwhile)."""
    try:
        return runs.read_metrics(runs.load_run(run_id))
    except CnnlabError:
        return []


def duration(summary: dict[str, Any]) -> float | None:
    """Seconds the run trained (so far, while running); None when unknown."""
    if isinstance(summary.get("seconds"), (int, float)):
        return float(summary["seconds"])
    if summary.get("status") == "running" and isinstance(summary.get("created"), (int, float)):
        return time.time() - summary["created"]
    return None


def accuracy(summary: dict[str, Any], key: str = "val_accuracy") -> float | None:
    """The run's accuracy; a pruned or stopped-before-the-end run without one gets its last
    epoch's validation accuracy (key val_accuracy only)."""
    value = summary.get(key)
    if isinstance(value, (int, float)):
        return float(value)
    if key != "val_accuracy":
        return None
    rows = metrics_of(summary.get("run_id", ""))
    last = rows[-1].get("val_acc") if rows else None
    return float(last) if isinstance(last, (int, float)) else None


def best_epoch_text(summary: dict[str, Any]) -> str:
    """'3', '40 (last)' (the run kept its last epoch), 'pruned' (Optuna stopped it) or '–'."""
    if summary.get("status") == "pruned":
        return "pruned"
    best = summary.get("best_epoch")
    if not best:
        return "–"
    return f"{best} (last)" if summary.get("select") == "last" else str(best)


def label(summary: dict[str, Any]) -> str:
    """The run's name with a short id ('demo digits · 8f3a'), or its id when it has no name."""
    name = summary.get("name") or ""
    run_id = summary.get("run_id", "?")
    return f"{name} · {run_id[-4:]}" if name else run_id


def _pct(value: float | None) -> float | None:
    return round(100 * value, 1) if value is not None else None


def table_rows(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run: status, model, key hyperparameters, accuracies, duration, created."""
    rows = []
    for s in summaries:
        cfg = config_of(s["run_id"])
        tc = cfg.train if cfg else None
        created = s.get("created")
        rows.append(
            {
                "run": s["run_id"],
                "name": s.get("name") or "",
                "status": s.get("status", "?"),
                "model": s.get("model") or (cfg.model.name if cfg else ""),
                "lr": tc.lr if tc else None,
                "batch": tc.batch_size if tc else None,
                "optimizer": tc.optimizer if tc else "",
                "epochs": f"{s.get('epochs_run', '–')}/{tc.epochs if tc else '?'}",
                "best epoch": best_epoch_text(s),
                "val acc %": _pct(accuracy(s)),
                "test acc %": _pct(accuracy(s, "test_accuracy")),
                "duration s": duration(s),
                "created": datetime.fromtimestamp(created) if isinstance(created, float) else None,
                "label fixes": fixes_text(s),
                "cv acc %": cv_text(s),
            }
        )
    return rows


def fixes_text(summary: dict[str, Any]) -> str:
    """The label overrides a run trained with: '3 relabelled, 1 excluded', or '' for none."""
    used = summary.get("overrides") or {}
    parts = [f"{used[k]} {k}" for k in ("relabelled", "excluded") if used.get(k)]
    return ", ".join(parts)


def cv_text(summary: dict[str, Any]) -> str:
    """`train --folds`' cross-validated val accuracy: '96.1 ± 1.2 (5 folds)', or ''."""
    cv = summary.get("cross_validation") or {}
    mean, sd = cv.get("val_accuracy_mean"), cv.get("val_accuracy_sd")
    if not isinstance(mean, (int, float)) or not isinstance(sd, (int, float)):
        return ""
    return f"{100 * mean:.1f} ± {100 * sd:.1f} ({cv.get('folds')} folds)"


def compare_default(summaries: list[dict[str, Any]]) -> list[str]:
    """The newest runs worth comparing: at least MIN_COMPARE_EPOCHS epochs, not pruned."""
    picked = []
    for s in summaries:
        if s.get("status") == "pruned":
            continue
        if len(metrics_of(s["run_id"])) >= MIN_COMPARE_EPOCHS:
            picked.append(s["run_id"])
        if len(picked) == COMPARE_DEFAULT:
            break
    return picked
