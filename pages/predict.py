"""Predict page: drop images or take photos, see the top-k classes and a Grad-CAM overlay."""

from __future__ import annotations

import streamlit as st

from cnnlab import runs
from cnnlab.errors import CnnlabError
from pages import predict_view, ui


def main() -> None:
    """Render the page."""
    ui.use_app_navigation()
    st.title("Predict")
    left, right = st.columns([3, 1])
    run_id = ui.choose_trained_run(left, "pr_run")
    try:
        predictor = ui.predictor(run_id, runs.checkpoint_path(run_id).stat().st_mtime)
    except CnnlabError as exc:
        ui.show_error(exc)
        st.stop()
    n_classes = len(predictor.classes)  # top-k past the class count would list nothing more
    if st.session_state.get("pr_k", 0) > n_classes:
        st.session_state["pr_k"] = n_classes
    k = right.number_input("Top-k", 1, n_classes, min(3, n_classes), key="pr_k")
    st.caption(f"Classes: {', '.join(predictor.classes)} · input {predictor.image_size} px")

    sources = predict_view.inputs("pr")
    if not sources:
        st.info("Drop one or more images above, or take a photo, to classify them.",
                icon=":material/upload:")  # fmt: skip
        st.stop()
    predict_view.show(predictor, sources, int(k), "pr")


main()
