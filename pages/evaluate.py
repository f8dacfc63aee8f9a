"""Evaluate page: test metrics, confusion (click a cell -> its images), worst predictions,
per-class bars, curve diagnosis, first-layer filters and feature maps, export downloads."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from cnnlab import evaluate, explain, export, plots, runs
from cnnlab.config import EVAL_SPLITS
from cnnlab.errors import CnnlabError
from cnnlab.predict import Predictor
from pages import labels, ui

GALLERY = 24  # images shown per confusion cell
NAME_CHARS = 16  # file names in captions are shortened in the middle to this many characters


def _short(path: str) -> str:
    """A file name short enough for a 96 px caption ('IMG_2024…_0042.png'), never wrapped."""
    return ui.short_name(path, NAME_CHARS)


@st.cache_resource(show_spinner="Evaluating the run...", max_entries=4)
def _evaluation(run_id: str, split: str, stamp: float) -> evaluate.EvalResult:
    return evaluate.evaluate_run(run_id, split)  # stamp: best.pt's mtime, so a rerun re-evaluates


def _gallery(result: evaluate.EvalResult, indices: list[int], caption) -> None:
    if not indices:
        st.caption("No images.")
        return
    images = [explain.display_image(result.images[i]) for i in indices]
    st.image(images, caption=[caption(i) for i in indices], width=96)


def _fix_grid(
    result: evaluate.EvalResult, indices: list[int], caption, data_path: str, where: str
) -> None:
    """The images with a caption and one-click fixes (relabel as predicted, exclude)."""
    if not indices:
        st.caption("No images.")
        return
    cols = st.columns(6)
    for n, i in enumerate(indices):
        with cols[n % 6]:
            st.image(explain.display_image(result.images[i]), caption=caption(i), width=96)
            predicted = result.classes[int(result.y_pred[i])]
            if predicted != result.classes[int(result.y_true[i])]:
                rel = result.paths[i].replace("\\", "/")
                labels.fix_buttons(data_path, rel, predicted, key=f"ev_fix_{where}_{rel}")


def _confusion_tab(result: evaluate.EvalResult, run_id: str, split: str, data_path: str) -> None:
    """Click a cell of the confusion matrix (or pick one) to see its images; mistakes get fixes."""
    normalized = st.toggle("Row-normalised", key="ev_norm")
    cm = result.confusion
    cells = sorted(
        ((t, p) for t in range(len(cm)) for p in range(len(cm)) if cm[t, p]),
        key=lambda tp: (tp[0] == tp[1], -cm[tp]),  # mistakes first, biggest first
    )
    by_label = {
        f"true {result.classes[c[0]]} → predicted {result.classes[c[1]]} ({cm[c]})": c
        for c in cells
    }
    st.caption("Click a cell to see its images (or pick one below).")
    event = st.plotly_chart(
        plots.confusion_figure(result.confusion, result.classes, normalized),
        on_select="rerun",
        selection_mode="points",
        key=f"ev_confusion_{run_id}_{split}_{normalized}",
    )
    clicked = plots.confusion_cell(event)
    if clicked is not None and clicked != st.session_state.get("_ev_clicked"):
        st.session_state["_ev_clicked"] = clicked  # a new click wins over the dropdown once
        label = next((k for k, c in by_label.items() if c == clicked), None)
        if label is None:
            st.caption(
                f"No images in true {result.classes[clicked[0]]} → predicted "
                f"{result.classes[clicked[1]]}."
            )
        else:
            st.session_state["ev_cell"] = label
    if st.session_state.get("ev_cell") not in by_label:
        st.session_state.pop("ev_cell", None)
    choice = st.selectbox("Show the images of a cell", list(by_label), key="ev_cell")
    if choice is not None:
        cell = by_label[choice]
        idx = result.cell_indices(result.classes[cell[0]], result.classes[cell[1]])[:GALLERY]
        caption = lambda i: f"{result.probs[i].max():.0%} · {_short(result.paths[i])}"  # noqa: E731
        if cell[0] == cell[1]:
            _gallery(result, idx, caption)
        else:  # mistakes: one click relabels as predicted or leaves the image out
            _fix_grid(result, idx, caption, data_path, "cell")


def _worst_tab(result: evaluate.EvalResult, data_path: str) -> None:
    """The mistakes with the highest loss first, each with one-click fixes."""
    wrong = [w for w in result.worst(len(result.paths)) if w["true"] != w["predicted"]][:GALLERY]
    st.caption(
        "Mistakes with the highest loss first: confidently wrong predictions, or mislabelled "
        "images. Each shows true → predicted, the confidence in the prediction and in the "
        "true class."
    )
    if not wrong:
        st.success("No mistakes on this split.")
    else:
        by_index = {w["index"]: w for w in wrong}
        true_prob = {
            w["index"]: float(result.probs[w["index"], result.classes.index(w["true"])])
            for w in wrong
        }
        _fix_grid(result, list(by_index), lambda i: (
            f"{by_index[i]['true']} → {by_index[i]['predicted']} {by_index[i]['confidence']:.0%}"
            f" (true {true_prob[i]:.0%}) · {_short(result.paths[i])}"), data_path,
                  "worst")  # fmt: skip
        st.caption("A fix applies from the next scan and run; this evaluation keeps the labels "
                   "the run trained with.")  # fmt: skip


def _per_class_tab(result: evaluate.EvalResult) -> None:
    """Per-class bars and table, and the most confused pairs."""
    st.plotly_chart(plots.per_class_figure(result.per_class))
    st.dataframe([{"class": c, **m} for c, m in result.per_class.items()], hide_index=True)
    if result.most_confused():
        st.dataframe(result.most_confused(), hide_index=True)


def _diagnosis_tab(run: runs.Run) -> None:
    """The run's curve verdict and its loss and accuracy curves."""
    rows = runs.read_metrics(run)
    diagnosis = evaluate.diagnose(rows)
    for f in diagnosis.findings:  # one: the verdict
        st.markdown(f"**{diagnosis.label}** — {f.message}  \n*Try:* {f.suggestion}")
    st.plotly_chart(plots.loss_figure(rows, diagnosis))
    st.plotly_chart(plots.accuracy_figure(rows))


def _inside_tab(result: evaluate.EvalResult, predictor: Predictor) -> None:
    """First-layer filters and the feature maps of one image at a chosen layer."""
    filters = explain.first_layer_filters(predictor.model)
    st.caption(f"First-layer filters ({len(filters)}): what the first convolution looks for.")
    st.image([explain.display_image(f, 48) for f in filters[:64]], width=48)
    pick = st.selectbox(
        "Image", range(result.n), format_func=lambda i: Path(result.paths[i]).name, key="ev_img"
    )
    layer = st.selectbox("Layer", explain.layer_names(predictor.model), key="ev_layer")
    maps = explain.feature_maps(
        predictor.model, predictor.preprocess(result.images[pick][None]), layer
    )
    st.image(explain.display_image(result.images[pick], 128), caption="input")
    st.image([explain.display_image(m, 64) for m in maps], width=64)


def _export_tab(run_id: str) -> None:
    """Export buttons (ONNX, .pt2), each checked, with its download once made."""
    for fmt, label in (("onnx", "ONNX"), ("pt2", "PyTorch ExportedProgram (.pt2)")):
        if st.button(f"Export {label}", key=f"ev_export_{fmt}"):
            try:
                with st.spinner(f"Exporting and checking {label}..."):
                    done = export.export_run(run_id, fmt)
                st.session_state[f"ev_exported_{fmt}"] = (run_id, export.bundle_zip(done))
                st.success(
                    f"Checked on {done.n_checked} images ({done.checked_on}): {done.model_path}"
                )
            except CnnlabError as exc:
                ui.show_error(exc)
        saved = st.session_state.get(f"ev_exported_{fmt}")
        if saved and saved[0] == run_id:
            st.download_button(f"Download {label} (.zip)", saved[1], f"{run_id}-{fmt}.zip",
                               mime="application/zip", key=f"ev_dl_{fmt}")  # fmt: skip


def main() -> None:
    """Render the page."""
    ui.use_app_navigation()
    st.title("Evaluate")
    left, right = st.columns([3, 1])
    run_id = ui.choose_trained_run(left, "ev_run")
    split = right.selectbox("Split", EVAL_SPLITS, key="ev_split")
    try:
        run = runs.load_run(run_id)
        stamp = runs.checkpoint_path(run).stat().st_mtime  # RunNotFoundError if it was deleted
        result = _evaluation(run_id, split, stamp)
        predictor = ui.predictor(run_id, stamp)
    except CnnlabError as exc:
        ui.show_error(exc)
        st.stop()

    c1, c2, c3 = st.columns(3)
    c1.metric("Accuracy", f"{result.accuracy:.2%}")
    c2.metric("Loss", f"{result.loss:.4f}")
    c3.metric("Images", f"{result.n:,}")
    ui.baseline_line(runs.read_summary(run))
    tabs = st.tabs(
        ["Confusion", "Worst predictions", "Per class", "Diagnosis", "Look inside", "Export",
         "More data?"]
    )  # fmt: skip
    config = runs.read_config(run)
    labels.fixes_bar(config.data.path)
    with tabs[0]:
        _confusion_tab(result, run_id, split, config.data.path)
    with tabs[1]:
        _worst_tab(result, config.data.path)
    with tabs[2]:
        _per_class_tab(result)
    with tabs[3]:
        _diagnosis_tab(run)
    with tabs[4]:
        _inside_tab(result, predictor)
    with tabs[5]:
        _export_tab(run_id)
    with tabs[6]:
        labels.curve_panel(run_id, config)


main()
