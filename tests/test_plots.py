"""plots (evaluation/prediction figures): traces, annotations and shapes, without a browser."""

from __future__ import annotations

import numpy as np

from cnnlab import evaluate, lr_finder, plots


def _rows(n: int = 7):
    train_loss = np.linspace(1.5, 0.1, n)
    val_loss = [1.4, 0.95, 0.8, 0.85, 0.95, 1.1, 1.3][:n]
    return [
        {"epoch": i + 1, "train_loss": float(a), "val_loss": b, "train_acc": 0.5 + i / 20,
         "val_acc": 0.5 + i / 40}
        for i, (a, b) in enumerate(zip(train_loss, val_loss, strict=True))
    ]  # fmt: skip


def test_loss_figure_marks_best_epoch_and_overfitting() -> None:
    rows = _rows()
    diagnosis = evaluate.diagnose(rows)
    fig = plots.loss_figure(rows, diagnosis)
    assert [t.name for t in fig.data] == ["train", "validation"]
    assert list(fig.data[1].x) == [1, 2, 3, 4, 5, 6, 7]  # one point per epoch
    shapes = fig.layout.shapes
    rect = [s for s in shapes if s.type == "rect"][0]
    line = [s for s in shapes if s.type == "line"][0]
    assert (rect.x0, rect.x1) == (3.5, 7.5)  # overfitting from epoch 4 to the end
    assert line.x0 == line.x1 == 3  # best epoch
    texts = [a.text for a in fig.layout.annotations]
    assert "overfitting" in texts and "best epoch 3" in texts


def test_loss_figure_without_diagnosis_and_gaps() -> None:
    rows = _rows(3)
    rows[1]["val_loss"] = None  # e.g. an empty validation split
    fig = plots.loss_figure(rows)
    assert not fig.layout.shapes
    assert list(fig.data[1].y) == [1.4, None, 0.8]


def test_accuracy_figure() -> None:
    fig = plots.accuracy_figure(_rows())
    assert len(fig.data) == 2 and tuple(fig.layout.yaxis.range) == (0, 1.02)


def test_confusion_figure_counts_and_normalised() -> None:
    m = [[5, 1, 0], [2, 2, 0], [0, 0, 0]]
    fig = plots.confusion_figure(m, ["a", "b", "c"])
    assert np.array_equal(np.array(fig.data[0].z), m)
    assert list(fig.data[0].x) == ["a", "b", "c"]
    norm = plots.confusion_figure(m, ["a", "b", "c"], normalized=True)
    z = np.array(norm.data[0].z)
    assert np.allclose(z.sum(axis=1), [1, 1, 0])  # an empty row stays 0, no NaN
    assert norm.data[0].text[0][1] == "0.17"


def test_per_class_and_topk_figures() -> None:
    per_class = {"cat": {"precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 10},
                 "dog": {"precision": 0.7, "recall": 0.6, "f1": 0.65, "support": 12}}  # fmt: skip
    fig = plots.per_class_figure(per_class)
    assert [t.name for t in fig.data] == ["precision", "recall", "f1"]
    assert list(fig.data[2].y) == [0.85, 0.65]
    top = plots.topk_figure([("cat", 0.7), ("dog", 0.2), ("cow", 0.1)])
    assert list(top.data[0].y) == ["cow", "dog", "cat"]  # most likely drawn on top
    assert top.data[0].text[-1] == "70.0%"


def test_lr_finder_figure() -> None:
    lrs = list(np.logspace(-6, 0, 50))
    losses = list(np.linspace(2.3, 1.0, 50))
    result = lr_finder.LRFinderResult(lrs, losses, losses, lrs[20], lrs[40], False)
    fig = plots.lr_finder_figure(result)
    assert fig.layout.xaxis.type == "log"
    assert fig.data[1].x[0] == lrs[20] and fig.data[1].y[0] == losses[20]


def test_loss_figure_draws_the_running_loss_within_epochs() -> None:
    rows = _rows(2)
    curve = [(0.25, 2.0), (0.5, 1.8), (1.0, 1.5), (1.5, 1.2), (2.0, 1.0), (2.25, 0.9)]
    fig = plots.loss_figure(rows, curve=curve)
    names = [t.name for t in fig.data]
    assert names == ["train (running)", "train (epoch mean)", "validation"]
    assert list(fig.data[0].x) == [0.25, 0.5, 1.0, 1.5, 2.0, 2.25]  # fractional epochs
    assert fig.data[2].mode == "lines+markers" and list(fig.data[2].x) == [
        1,
        2,
    ]  # val at epoch ends
    assert fig.layout.xaxis.dtick == 1  # whole-epoch ticks


def test_loss_figure_labels_do_not_share_a_corner() -> None:
    rows = _rows()
    fig = plots.loss_figure(rows, evaluate.diagnose(rows))
    positions = {
        a.text: (a.yanchor, a.y) for a in fig.layout.annotations
    }  # the two labels sit at different heights
    assert positions["overfitting"] != positions["best epoch 3"]


def test_confusion_cells_are_clickable_markers() -> None:
    m = [[5, 1, 0], [2, 2, 0], [0, 0, 3]]
    fig = plots.confusion_figure(m, ["a", "b", "c"])
    cells = fig.data[1]
    assert cells.type == "scatter" and cells.marker.opacity == 0 and len(cells.x) == 9
    i = list(map(tuple, cells.customdata)).index((1, 0))  # true b, predicted a
    assert (cells.y[i], cells.x[i], cells.text[i]) == ("b", "a", "2")
    event = {"selection": {"points": [{"customdata": [1, 0], "x": "a", "y": "b"}]}}
    assert plots.confusion_cell(event) == (1, 0)
    assert plots.confusion_cell({"selection": {"points": []}}) is None
    assert plots.confusion_cell(None) is None


def test_overlay_names_runs_in_distinct_colours() -> None:
    rows = {"r1": _rows(3), "r2": _rows(3)}
    fig = plots.overlay_figure(rows, "val_acc", labels={"r1": "demo digits", "r2": "r2"})
    assert [t.name for t in fig.data] == ["demo digits", "r2"]
    assert fig.data[0].line.color != fig.data[1].line.color


def test_tune_figures_wait_for_data_and_use_whole_numbers() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize")
    running = study.ask()  # the first trial, still running: nothing to draw yet
    assert plots.tune_history_figure(study) is None
    assert plots.tune_intermediate_figure(study) is None
    assert plots.tune_parallel_figure(study) is None
    running.report(0.5, 1)
    assert plots.tune_intermediate_figure(study) is not None  # its first epoch is there
    running.suggest_float("lr", 1e-4, 1e-1, log=True)
    study.tell(running, 0.6)
    for value in (0.7, 0.4):
        t = study.ask()
        t.suggest_float("lr", 1e-4, 1e-1, log=True)
        for epoch in range(1, 3):
            t.report(value, epoch)
        study.tell(t, value)
    history = plots.tune_history_figure(study)
    assert history.layout.xaxis.dtick == 1 and history.layout.xaxis.rangemode == "nonnegative"
    # the best point is not clipped (issue 28 polish): room on both ends, markers drawn whole
    assert tuple(history.layout.xaxis.range) == (-0.5, 2.5)
    assert all(t.cliponaxis is False for t in history.data)
    inter = plots.tune_intermediate_figure(study)
    assert inter.layout.showlegend and inter.layout.xaxis.dtick == 1


def test_epoch_axes_have_a_fixed_range_from_the_last_epoch() -> None:
    # plotly's autorange also makes room for the best-epoch label: on an 800 px window the
    # Runs page's loss chart ran from epoch -7; a set range cannot stretch
    rows = _rows()
    loss = plots.loss_figure(rows, evaluate.diagnose(rows))
    assert tuple(loss.layout.xaxis.range) == (1 - plots.EPOCH_PAD, 7 + plots.EPOCH_PAD)
    running = plots.loss_figure(rows[:2], curve=[(0.1, 2.0), (2.25, 0.9)])
    assert tuple(running.layout.xaxis.range) == (0 - plots.EPOCH_PAD, 2.25 + plots.EPOCH_PAD)
    # thinned rows (every 3rd epoch of 30, the last kept): the axis still ends at epoch 30
    thinned = [{"epoch": e, "train_acc": 0.5, "val_acc": 0.5} for e in (*range(1, 30, 3), 30)]
    acc = plots.accuracy_figure(thinned)
    assert tuple(acc.layout.xaxis.range) == (1 - plots.EPOCH_PAD, 30 + plots.EPOCH_PAD)
    assert acc.layout.xaxis.dtick == 3
