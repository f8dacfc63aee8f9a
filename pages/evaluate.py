"""Evaluate page: test metrics, confusion (click a cell -> its images), worst predictions,
per-class bars, curve diagnosis, first-layer filters and feature maps, export downloads."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from cnnlab import evaluate, explain, export, plots, runs
from cnnlab.errors import CnnlabError
from cnnlab.predict import Predictor
from pages import ui

GALLERY = 24  # images shown per confusion cell


@st.cache_resource(show_spinner="Evaluating the run...", max_entries=4)
def _evaluation(run_id: str, split: str, stamp: float) -> evaluate.EvalResult:
    return evaluate.evaluate_run(run_id, split)  # stamp: best.pt's mtime, so a rerun re-evaluates


@st.cache_resource(show_spinner=False, max_entries=4)
def _predictor(run_id: str, stamp: float) -> Predictor:
    return Predictor.from_run(run_id)


def _gallery(result: evaluate.EvalResult, indices: list[int], caption) -> None:
    if not indices:
        st.caption("No images.")
        return
    images = [explain.display_image(result.images[i]) for i in indices]
    st.image(images, caption=[caption(i) for i in indices], width=96)


ui.use_app_navigation()
st.title("Evaluate")
left, right = st.columns([3, 1])
run_id = ui.choose_trained_run(left, "ev_run")
split = right.selectbox("Split", evaluate.SPLITS, key="ev_split")
try:
    run = runs.load_run(run_id)
    stamp = runs.checkpoint_path(run).stat().st_mtime  # RunNotFoundError if it was deleted
    result = _evaluation(run_id, split, stamp)
    predictor = _predictor(run_id, stamp)
except CnnlabError as exc:
    ui.show_error(exc)
    st.stop()

c1, c2, c3 = st.columns(3)
c1.metric("Accuracy", f"{result.accuracy:.2%}")
c2.metric("Loss", f"{result.loss:.4f}")
c3.metric("Images", f"{result.n:,}")
tabs = st.tabs(
    ["Confusion", "Worst predictions", "Per class", "Diagnosis", "Look inside", "Export"]
)

with tabs[0]:
    normalized = st.toggle("Row-normalised", key="ev_norm")
    st.plotly_chart(plots.confusion_figure(result.confusion, result.classes, normalized))
    cm = result.confusion
    cells = sorted(
        ((t, p) for t in range(len(cm)) for p in range(len(cm)) if cm[t, p]),
        key=lambda tp: (tp[0] == tp[1], -cm[tp]),  # mistakes first, biggest first
    )
    by_label = {
        f"true {result.classes[c[0]]} → predicted {result.classes[c[1]]} ({cm[c]})": c
        for c in cells
    }
    choice = st.selectbox("Show the images of a cell", list(by_label), key="ev_cell")
    if choice is not None:
        cell = by_label[choice]
        idx = result.cell_indices(result.classes[cell[0]], result.classes[cell[1]])[:GALLERY]
        _gallery(
            result, idx, lambda i: f"{result.probs[i].max():.0%} · {Path(result.paths[i]).name}"
        )

with tabs[1]:
    worst = result.worst()
    st.caption("Highest loss first: confidently wrong predictions, or mislabelled images.")
    by_index = {w["index"]: w for w in worst}
    _gallery(result, list(by_index), lambda i: (f"{by_index[i]['true']} → {by_index[i]['predicted']} "
                                                f"({by_index[i]['confidence']:.0%})"))  # fmt: skip

with tabs[2]:
    st.plotly_chart(plots.per_class_figure(result.per_class))
    st.dataframe([{"class": c, **m} for c, m in result.per_class.items()], hide_index=True)
    if result.most_confused():
        st.dataframe(result.most_confused(), hide_index=True)

with tabs[3]:
    rows = runs.read_metrics(run)
    diagnosis = evaluate.diagnose(rows)
    for f in diagnosis.findings:
        st.markdown(
            f"**{f.kind.replace('_', ' ').capitalize()}** — {f.message}  \n*Try:* {f.suggestion}"
        )
    st.plotly_chart(plots.loss_figure(rows, diagnosis))
    st.plotly_chart(plots.accuracy_figure(rows))

with tabs[4]:
    filters = explain.first_layer_filters(predictor.model)
    st.caption(f"First-layer filters ({len(filters)}): what the first convolution looks for.")
    st.image([explain.display_image(f, 48) for f in filters[:64]], width=48)
    pick = st.selectbox(
        "Image", range(result.n), format_func=lambda i: result.paths[i], key="ev_img"
    )
    layer = st.selectbox("Layer", explain.layer_names(predictor.model), key="ev_layer")
    maps = explain.feature_maps(
        predictor.model, predictor.preprocess(result.images[pick][None]), layer
    )
    st.image(explain.display_image(result.images[pick], 128), caption="input")
    st.image([explain.display_image(m, 64) for m in maps], width=64)

with tabs[5]:
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
