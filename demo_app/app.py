"""The demo of one run, served by `cnnlab serve RUN_ID`: its model card, then a file drop and the
camera with top-k and Grad-CAM. Nothing else of the lab (data, training, other runs) is reachable.

It lives in its own folder on purpose: Streamlit lists a `pages/` folder beside the main script as
pages of the app, and this app must have exactly one. demo_server.py serves it with the predict
API (pages/predict_api.py) pinned to the same run.
"""

from __future__ import annotations

import logging
from typing import Any

import streamlit as st

from cnnlab import model_card, predict_api, runs
from cnnlab.errors import CnnlabError
from pages import predict_view, ui

log = logging.getLogger(__name__)
st.set_page_config(page_title="cnnlab demo", page_icon=":material/image_search:", layout="wide")


@st.cache_resource(show_spinner="Reading the model card…", max_entries=2)
def _card(run_dir: str, stamp: int) -> dict[str, Any]:
    return model_card.build_card(run_dir)  # stamp: best.pt's mtime, so a new checkpoint reloads


def _pct(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else "–"


def show_card(card: dict[str, Any]) -> None:
    """The run's model card: what it recognises, how well, on what data, when."""
    st.title(card["name"])
    st.caption(f"Classes: {', '.join(card['classes'])}")
    sizes = card["dataset_size"]
    with st.container(horizontal=True):
        st.metric("Test accuracy", _pct(card["test_accuracy"]))
        st.metric("Classes", len(card["classes"]))
        st.metric("Input size", f"{card['image_size']} px")
        st.metric("Trained", card["trained"] or "–")
        st.metric("Data set", f"{sizes['total']} images", help=", ".join(
            f"{k}: {v}" for k, v in sizes.items() if k != "total"))  # fmt: skip
    recall = card["per_class_recall"]
    with st.expander("Per-class recall on the test split", expanded=False):
        if recall is None:
            st.caption(f"Not available: {card['per_class_recall_note']}.")
        else:
            st.dataframe(
                {"class": list(recall), "test recall": list(recall.values())},
                hide_index=True,
                column_config={
                    "test recall": st.column_config.ProgressColumn(
                        format="percent", min_value=0.0, max_value=1.0
                    )
                },
            )
    st.caption(
        f"Model {card['model']} · run `{card['run_id']}` · data set {card['dataset']} · "
        "also answers `POST /api/cnnlab/predict` (see docs/serving.md)"
    )


def main() -> None:
    """Render the demo."""
    served = predict_api.served_run()
    if not served:
        st.error("No run to show: start this demo with `cnnlab serve RUN_ID`.")
        return
    try:
        run = runs.load_run(served)
        stamp = runs.checkpoint_path(run).stat().st_mtime_ns
        card = _card(str(run.run_dir), stamp)
        # the pages' cached Predictor, not the API's: Grad-CAM hooks the model while the API
        # may be predicting
        predictor = ui.predictor(str(run.run_dir), stamp)
    except CnnlabError as exc:  # logged for the operator; the visitor learns no server path
        log.warning("cnnlab serve: run %s cannot be shown: %s", served, exc)
        st.error("This demo's model is not available right now.", icon=":material/error:")
        return
    show_card(card)
    n_classes = len(predictor.classes)
    k = st.columns([1, 4])[0].number_input(
        "Top-k", 1, min(10, n_classes), min(3, n_classes), key="demo_k"
    )
    sources = predict_view.inputs("demo")
    if not sources:
        st.info("Drop images above, or take a photo, to see what the model says.",
                icon=":material/upload:")  # fmt: skip
        return
    predict_view.show(predictor, sources, int(k), "demo")


main()
