"""Plotly figure builders: pure functions of plain data, tested without a browser.

Figures stay small (one point per epoch, one bar per class) because Streamlit re-sends the whole
figure on every update.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

_LAYOUT = {"margin": {"l": 50, "r": 20, "t": 40, "b": 40}, "height": 340}
EPOCH_PAD = 0.3  # epochs of room on both ends of an epoch axis (markers are not cut in half)
TRAIN_COLOUR, VAL_COLOUR = "#1f77b4", "#ff7f0e"
# a qualitative palette (Plotly's D3), so compared runs never come out in similar blues
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")  # fmt: skip


# ---------------------------------------------------------------- curves, evaluation and prediction
def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float | None]]:
    """(epochs, values) of one metric; a missing or non-number value becomes a gap (None)."""
    epochs = [int(r["epoch"]) for r in rows]
    values = [
        float(r[key]) if isinstance(r.get(key), (int, float)) and np.isfinite(r[key]) else None
        for r in rows
    ]
    return epochs, values


def loss_figure(
    rows: Sequence[dict[str, Any]],
    diagnosis=None,
    curve: Sequence[tuple[float, float]] = (),
) -> go.Figure:
    """Train/val loss per epoch; with `curve` ((fractional epoch, the epoch's mean loss so far) from the
    batches) the running training loss within epochs; with an evaluate.Diagnosis: the best epoch
    and the overfitting region."""
    fig = go.Figure()
    if curve:
        x, y = zip(*curve, strict=True)
        fig.add_trace(
            go.Scatter(
                x=list(x),
                y=list(y),
                mode="lines",
                name="train (running)",
                line={"color": TRAIN_COLOUR, "width": 1.5},
                opacity=0.6,
            )
        )
    for key, name, colour in (
        ("train_loss", "train (epoch mean)" if curve else "train", TRAIN_COLOUR),
        ("val_loss", "validation", VAL_COLOUR),
    ):
        x, y = _series(rows, key)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=name, line={"color": colour}))
    if diagnosis is not None and diagnosis.best_epoch is not None:
        if diagnosis.overfitting_from is not None:
            fig.add_vrect(
                x0=diagnosis.overfitting_from - 0.5,
                x1=diagnosis.last_epoch + 0.5,
                fillcolor="red",
                opacity=0.12,
                line_width=0,
                annotation_text="overfitting",
                annotation_position="bottom right",  # the best-epoch label sits at the top
            )
        fig.add_vline(
            x=diagnosis.best_epoch,
            line_dash="dash",
            line_color="green",
            annotation_text=f"best epoch {diagnosis.best_epoch}",
            annotation_position="top left",
        )
    _epoch_axis(fig, max([_last_epoch(rows), *(x for x, _ in curve[-1:])]), first=0 if curve else 1)
    fig.update_layout(title="Loss", xaxis_title="epoch", yaxis_title="loss", **_LAYOUT)
    return fig


def _last_epoch(rows: Sequence[dict[str, Any]]) -> int:
    """The last row's epoch (rows may be thinned: their count is not the epoch count)."""
    return max((int(r["epoch"]) for r in rows), default=0)


def _epoch_axis(fig: go.Figure, last: float, first: int = 1) -> None:
    """Ticks on whole epochs only (plotly would put some at 1.5, 2.5 on short runs), from 0 when
    the within-epoch curve starts there; a fixed range, because plotly's autorange also makes
    room for the best-epoch label, which on a narrow chart stretched the axis to epoch -7."""
    n_epochs = math.ceil(last)
    fig.update_xaxes(
        tick0=0 if n_epochs < 10 else 1,
        dtick=max(1, -(-n_epochs // 10)),
        range=[first - EPOCH_PAD, max(last, first) + EPOCH_PAD],
    )


def accuracy_figure(rows: Sequence[dict[str, Any]]) -> go.Figure:
    """Train/val accuracy per epoch (0-1)."""
    fig = go.Figure()
    for key, name, colour in (
        ("train_acc", "train", TRAIN_COLOUR),
        ("val_acc", "validation", VAL_COLOUR),
    ):
        x, y = _series(rows, key)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=name,
                                 line={"color": colour}))  # fmt: skip
    _epoch_axis(fig, _last_epoch(rows))
    fig.update_layout(title="Accuracy", xaxis_title="epoch", yaxis_title="accuracy", **_LAYOUT)
    fig.update_yaxes(range=[0, 1.02])
    return fig


def learning_curve_figure(report: dict[str, Any]) -> go.Figure:
    """`learning-curve`'s train and val accuracy vs images per class, its reading as subtitle."""
    x = [p["images_per_class"] for p in report["points"]]
    fig = go.Figure()
    for key, name, colour in (("train_accuracy", "train", TRAIN_COLOUR),
                              ("val_accuracy", "validation", VAL_COLOUR)):  # fmt: skip
        fig.add_trace(go.Scatter(x=x, y=[p[key] for p in report["points"]], mode="lines+markers",
                                 name=name, line={"color": colour}))  # fmt: skip
    fig.update_layout(title=f"Learning curve: {report['reading']}",
                      xaxis_title="training images per class", yaxis_title="accuracy",
                      **_LAYOUT)  # fmt: skip
    fig.update_yaxes(range=[0, 1.02])
    return fig


_METRIC_TITLES = {
    "val_loss": "Validation loss",
    "train_loss": "Training loss",
    "val_acc": "Validation accuracy",
    "train_acc": "Training accuracy",
}


def overlay_figure(
    runs_rows: dict[str, Sequence[dict[str, Any]]],
    metric: str,
    labels: dict[str, str] | None = None,
) -> go.Figure:
    """One line per run of one per-epoch metric (e.g. val_acc), to compare runs on one chart;
    `labels` names the runs in the legend (their ids otherwise), each in its own colour."""
    fig = go.Figure()
    for i, (run_id, rows) in enumerate(runs_rows.items()):
        x, y = _series(rows, metric)
        name = (labels or {}).get(run_id) or str(run_id)
        colour = PALETTE[i % len(PALETTE)]
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=name, line={"color": colour}))
    title = _METRIC_TITLES.get(metric, metric)
    _epoch_axis(fig, max((_last_epoch(r) for r in runs_rows.values()), default=0))
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
            hoverinfo="skip",  # the cell markers below answer the hover (and the click)
        )
    )
    fig.update_layout(
        title="Confusion matrix" + (" (row-normalised)" if normalized else ""),
        xaxis_title="predicted",
        yaxis_title="true",
        **{**_LAYOUT, "height": max(340, 28 * len(labels) + 120)},
    )
    # Plotly heatmaps cannot be selected through st.plotly_chart(on_select=...): an invisible
    # square marker on every cell centre takes the click instead (customdata = [true, predicted]).
    n = len(labels)
    fig.add_trace(
        go.Scatter(
            x=[labels[p] for t in range(n) for p in range(n)],
            y=[labels[t] for t in range(n) for p in range(n)],
            customdata=[[t, p] for t in range(n) for p in range(n)],
            text=[text[t][p] for t in range(n) for p in range(n)],
            mode="markers",
            marker={"symbol": "square", "size": max(8, min(40, 600 // max(n, 1))), "opacity": 0},
            hovertemplate="true %{y}, predicted %{x}: %{text}<extra>click for the images</extra>",
            showlegend=False,
            name="cells",
        )
    )
    fig.update_layout(clickmode="event+select", dragmode=False)
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category")
    return fig


def confusion_cell(selection: Any) -> tuple[int, int] | None:
    """(true, predicted) class indices of the cell a st.plotly_chart selection event picked."""
    points = (selection or {}).get("selection", {}).get("points", [])
    for point in points:
        data = point.get("customdata")
        if isinstance(data, (list, tuple)) and len(data) == 2:
            return int(data[0]), int(data[1])
    return None


def class_counts_figure(counts: dict[str, int]) -> go.Figure:
    """Bars of usable images per class (the Data page's balance check)."""
    fig = go.Figure(go.Bar(x=list(counts), y=list(counts.values()), marker_color="#3b6fd4"))
    fig.update_layout(
        title="Images per class", xaxis_title="class", yaxis_title="usable images",
        xaxis_type="category", height=320, margin={"l": 10, "r": 10, "t": 40, "b": 10},
    )  # fmt: skip
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
    """Smoothed loss vs learning rate (log x) with the suggested (valley) lr and the steepest
    descent marked on the curve (lr_finder result)."""
    fig = go.Figure(go.Scatter(x=result.lrs, y=result.losses, mode="lines", name="smoothed loss"))
    # Markers on the curve instead of add_vline: shapes on a log axis need log10 coordinates
    # and their annotations are easily misplaced.
    log_lrs = np.log(np.asarray(result.lrs))
    marks = [(result.suggestion, "suggested (valley)", "green", "top right")]
    steepest = result.steepest
    if steepest is not None and not np.isclose(steepest, result.suggestion):
        marks.append((steepest, "steepest", "#7f7f7f", "bottom left"))
    for lr, label, colour, position in marks:
        i = int(np.argmin(np.abs(log_lrs - np.log(lr))))
        fig.add_trace(
            go.Scatter(
                x=[result.lrs[i]],
                y=[result.losses[i]],
                mode="markers+text",
                marker={"size": 12, "color": colour},
                text=[f"{label} {lr:.1e}"],
                textposition=position,
                name=label,
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


def _finished(study) -> list:
    """The study's complete and pruned trials (what the tuning charts can draw)."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(deepcopy=False, states=states)


def _whole_numbers(axis_len: int) -> dict[str, Any]:
    """Axis settings for trial numbers or epochs: integer ticks, never 0.5 or -1."""
    return {"tick0": 0, "dtick": max(1, -(-axis_len // 10)), "rangemode": "nonnegative"}


def tune_history_figure(study) -> go.Figure | None:
    """Each finished trial's val accuracy and the best so far, by trial number; None until a
    trial completed (Optuna would draw empty axes and log a warning)."""
    import optuna
    from optuna.visualization import plot_optimization_history

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return None
    fig = plot_optimization_history(study, target_name="val accuracy")
    last = max(t.number for t in complete)
    # room around the first and last trial, and markers drawn whole at the top (a best of 1.0)
    fig.update_xaxes(**_whole_numbers(last + 1), range=[-0.5, last + 0.5])
    fig.update_traces(cliponaxis=False)
    return _tune_layout(fig, "Optimization history")


def tune_intermediate_figure(study) -> go.Figure | None:
    """Val accuracy per epoch of every trial, a legend entry each; pruned trials end early (that
    is the pruning). None until a trial reported an epoch."""
    from optuna.visualization import plot_intermediate_values

    trials = [t for t in _finished(study) if t.intermediate_values] or [
        t for t in study.get_trials(deepcopy=False) if t.intermediate_values
    ]
    if not trials:
        return None
    fig = plot_intermediate_values(study)
    epochs = max(max(t.intermediate_values) for t in trials)
    fig.update_xaxes(title="epoch", **_whole_numbers(epochs + 1))
    fig.update_yaxes(title="val accuracy")
    fig.update_layout(showlegend=True)
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


def tune_parallel_figure(study) -> go.Figure | None:
    """Parallel coordinates: one line per complete trial through its parameter values; None
    until a trial completed."""
    import optuna
    from optuna.visualization import plot_parallel_coordinate

    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        return None
    fig = plot_parallel_coordinate(study, target_name="val accuracy")
    return _tune_layout(fig, "Parallel coordinates")
