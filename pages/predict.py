"""Predict page: drop images (or take a photo), see the top-k classes and a Grad-CAM overlay."""

from __future__ import annotations

import streamlit as st

from cnnlab import data, explain, plots, runs
from cnnlab.errors import CnnlabError
from cnnlab.predict import Predictor
from pages import ui

MAX_SHOWN = 12  # images analysed per rerun (each needs a Grad-CAM backward pass)


@st.cache_resource(show_spinner=False, max_entries=4)
def _predictor(run_id: str, stamp: float) -> Predictor:
    return Predictor.from_run(run_id)  # stamp: best.pt's mtime, so a new checkpoint reloads


ui.use_app_navigation()
st.title("Predict")
left, right = st.columns([3, 1])
run_id = ui.choose_trained_run(left, "pr_run")
try:
    predictor = _predictor(run_id, runs.checkpoint_path(run_id).stat().st_mtime)
except CnnlabError as exc:
    ui.show_error(exc)
    st.stop()
n_classes = len(predictor.classes)  # top-k past the class count would list nothing more
if st.session_state.get("pr_k", 0) > n_classes:
    st.session_state["pr_k"] = n_classes
k = right.number_input("Top-k", 1, n_classes, min(3, n_classes), key="pr_k")
st.caption(f"Classes: {', '.join(predictor.classes)} · input {predictor.image_size} px")

uploads = st.file_uploader(
    "Images",
    type=sorted(e.lstrip(".") for e in data.IMAGE_EXTENSIONS),
    accept_multiple_files=True,
    key="pr_files",
)
sources = [(f.name, f.getvalue()) for f in uploads or []]
if st.toggle("Use the camera", key="pr_cam"):
    shot = st.camera_input("Take a photo", key="pr_shot")
    if shot is not None:
        sources.insert(0, ("camera photo", shot.getvalue()))
if not sources:
    st.info("Drop one or more images above to classify them.", icon=":material/upload:")
    st.stop()
if len(sources) > MAX_SHOWN:
    st.caption(f"Showing the first {MAX_SHOWN} of {len(sources)} images.")

for i, (name, payload) in enumerate(sources[:MAX_SHOWN]):
    try:
        image = predictor.load(payload, name)
    except CnnlabError as exc:
        ui.show_error(exc)
        continue
    top = predictor.top_k(predictor.probabilities(image[None]), int(k))[0]
    st.subheader(f"{name}: {top[0][0]} ({top[0][1]:.1%})")
    c1, c2, c3 = st.columns([1, 1, 2])
    c1.image(explain.display_image(image, 192), caption="model input")
    try:
        cam, cls, prob = explain.saliency(predictor, image, size=192)
        c2.image(cam, caption=f"Grad-CAM for {cls} ({prob:.0%})")
    except CnnlabError as exc:
        c2.warning(f"No Grad-CAM for this model: {exc}")
    c3.plotly_chart(plots.topk_figure(top), key=f"pr_top_{i}")
