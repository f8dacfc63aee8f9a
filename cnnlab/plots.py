"""Plotly figure builders: pure functions of plain data, tested without a browser.

Figures stay small (one point per epoch, one bar per class) because Streamlit re-sends the whole
figure on every update.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

_LAYOUT = {"margin": {"l": 50, "r": 20, "t": 40, "b": 40}, "height": 340}


# ---------------------------------------------------------------- curves, evaluation and prediction
def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float | None]]:
    """(epochs, values) of one metric; a missing or non-number value becomes a gap (None)."""
    epochs = [int(r["epoch"]) for r in rows]
    values = [
        float(r[key]) if isinstance(r.get(key), (int, float)) and np.isfinite(r[key]) else None
        for r in rows
    ]
    return epochs, values


def loss_figure(rows: Sequence[dict[str, Any]], diagnosis=None) -> go.Figure:
    """Train/val loss per epoch; with an evaluate.Diagnosis: best-epoch marker, shaded overfitting."""
    fig = go.Figure()
    for key, name in (("train_loss", "train"), ("val_loss", "validation")):
        x, y = _series(rows, key)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=name))
    if diagnosis is not None and diagnosis.best_epoch is not None:
        if diagnosis.overfitting_from is not None:
            fig.add_vrect(
                x0=diagnosis.overfitting_from - 0.5,
                x1=diagnosis.last_epoch + 0.5,
                fillcolor="red",
                opacity=0.12,
                line_width=0,
                annotation_text="overfitting",
                annotation_position="top left",
            )
        fig.add_vline(
            x=diagnosis.best_epoch,
            line_dash="dash",
            line_color="green",
            annotation_text=f"best epoch {diagnosis.best_epoch}",
            annotation_position="top right",
        )
    _epoch_axis(fig, len(rows))
    fig.update_layout(title="Loss", xaxis_title="epoch", yaxis_title="loss", **_LAYOUT)
    return fig


def _epoch_axis(fig: go.Figure, n_epochs: int) -> None:
    """Ticks on whole epochs only (plotly would put some at 1.5, 2.5 on short runs)."""
    fig.update_xaxes(tick0=1, dtick=max(1, -(-n_epochs // 10)))


def accuracy_figure(rows: Sequence[dict[str, Any]]) -> go.Figure:
    """Train/val accuracy per epoch (0-1)."""
    fig = go.Figure()
    for key, name in (("train_acc", "train"), ("val_acc", "validation")):
        x, y = _series(rows, key)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=name))
    _epoch_axis(fig, len(rows))
    fig.update_layout(title="Accuracy", xaxis_title="epoch", yaxis_title="accuracy", **_LAYOUT)
    fig.update_yaxes(range=[0, 1.02])
    return fig


_METRIC_TITLES = {
    "val_loss": "Validation loss",
    "train_loss": "Training loss",
    "val_acc": "Validation accuracy",
    "train_acc": "Training accuracy",
}


def overlay_figure(runs_rows: dict[str, Sequence[dict[str, Any]]], metric: str) -> go.Figure:
    """One line per run of one per-epoch metric (e.g. val_acc), to compare runs on one chart."""
    fig = go.Figure()
    for run_id, rows in runs_rows.items():
        x, y = _series(rows, metric)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=str(run_id)))
    title = _METRIC_TITLES.get(metric, metric)
    _epoch_axis(fig, max((len(r) for r in runs_rows.values()), default=0))
    fig.update_layout(title=title, xaxis_title="epoch", yaxis_title=metric, **_LAYOUT)
    if metric.endswith("_acc"):
        fig.update_yaxes(range=[0, 1.02])
    return fig


def confusion_figure(
    matrix: np.ndarray | list[list[int]], classes: Sequence[str], normalized: bool = False
) -> go.Figure:
    """Confusion heatmap: rows are true classes, columns predicted; counts or row shares."""
    m = np.asarray(matrix, dtype=np.float64)
    if normalized:
        rows = m.sum(axis=1, keepdims=True)
        m = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    labels = [str(c) for c in classes]
    text = [[f"{v:.2f}" if normalized else f"{int(v)}" for v in row] for row in m]
    fig = go.Figure(
        go.Heatmap(
            z=m,
            x=labels,
            y=labels,
            text=text,
            texttemplate="%{text}" if len(labels) <= 20 else None,
            colorscale="Blues",
            hovertemplate="true %{y}, predicted %{x}: %{text}<extra></extra>",
        )
    )
    fig.update_layout(
        title="Confusion matrix" + (" (row-normalised)" if normalized else ""),
        xaxis_title="predicted",
        yaxis_title="true",
        **{**_LAYOUT, "height": max(340, 28 * len(labels) + 120)},
    )
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category")
    return fig


def per_class_figure(per_class: dict[str, dict[str, float]]) -> go.Figure:
    """Grouped bars of precision, recall and F1 per class."""
    classes = list(per_class)
    fig = go.Figure()
    for metric in ("precision", "recall", "f1"):
        fig.add_trace(go.Bar(x=classes, y=[per_class[c][metric] for c in classes], name=metric))
    fig.update_layout(title="Per-class metrics", barmode="group", yaxis_range=[0, 1.02], **_LAYOUT)
    fig.update_xaxes(type="category")
    return fig


def topk_figure(top: Sequence[tuple[str, float]]) -> go.Figure:
    """Horizontal bars of the top-k (class, probability), most likely on top."""
    names = [str(c) for c, _ in top][::-1]
    probs = [float(p) for _, p in top][::-1]
    fig = go.Figure(go.Bar(x=probs, y=names, orientation="h", text=[f"{p:.1%}" for p in probs]))
    fig.update_layout(
        xaxis_range=[0, 1], xaxis_title="probability", **{**_LAYOUT, "height": 60 + 36 * len(top)}
    )
    fig.update_yaxes(type="category")
    return fig


def lr_finder_figure(result) -> go.Figure:
    """Smoothed loss vs learning rate (log x) with the suggested lr marked (lr_finder result)."""
    fig = go.Figure(go.Scatter(x=result.lrs, y=result.losses, mode="lines", name="smoothed loss"))
    # A marker on the curve instead of add_vline: shapes on a log axis need log10 coordinates
    # and their annotations are easily misplaced.
    i = int(np.argmin(np.abs(np.log(np.asarray(result.lrs)) - np.log(result.suggestion))))
    fig.add_trace(
        go.Scatter(
            x=[result.lrs[i]],
            y=[result.losses[i]],
            mode="markers+text",
            marker={"size": 12, "color": "green"},
            text=[f"suggested {result.suggestion:.2g}"],
            textposition="top right",
            name="suggested lr",
        )
    )
    fig.update_xaxes(type="log", title="learning rate")
    fig.update_layout(title="Learning-rate finder", yaxis_title="loss", **_LAYOUT)
    return fig


# ---------------------------------------------------------------- tuning (Optuna studies)
# Optuna's own plotly builders, given one look; optuna is imported lazily so the other figures
# do not pay for it.
def _tune_layout(fig: go.Figure, title: str) -> go.Figure:
    fig.update_layout(title=title, **_LAYOUT)
    return fig


def tune_history_figure(study) -> go.Figure:
    """Each finished trial's val accuracy and the best so far, by trial number."""
    from optuna.visualization import plot_optimization_history

    fig = plot_optimization_history(study, target_name="val accuracy")
    return _tune_layout(fig, "Optimization history")


def tune_intermediate_figure(study) -> go.Figure:
    """Val accuracy per epoch of every trial; pruned trials end early (that is the pruning)."""
    from optuna.visualization import plot_intermediate_values

    fig = plot_intermediate_values(study)
    fig.update_xaxes(title="epoch")
    fig.update_yaxes(title="val accuracy")
    return _tune_layout(fig, "Val accuracy per epoch (pruned trials stop early)")


def tune_importance_figure(study) -> go.Figure | None:
    """fANOVA importance of each searched parameter; None until 2 trials completed."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.visualization import plot_param_importances

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    varied = {k for t in complete for k in t.params if t.params[k] != complete[0].params.get(k)}
    if len(complete) < 2 or not varied:
        return None  # importances need at least two complete trials that differ
    fig = plot_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    return _tune_layout(fig, "Parameter importance")


def tune_parallel_figure(study) -> go.Figure:
    """Parallel coordinates: one line per complete trial through its parameter values."""
    from optuna.visualization import plot_parallel_coordinate

    fig = plot_parallel_coordinate(study, target_name="val accuracy")
    return _tune_layout(fig, "Parallel coordinates")
