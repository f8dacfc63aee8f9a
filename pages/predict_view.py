"""What the Predict page and the served demo (`cnnlab serve`) both draw (a helper module, not a page):
image inputs (file drop beside the camera, with a "keep predicting" mode) and one image's result
(model input, Grad-CAM, top-k bars).
"""

from __future__ import annotations

import streamlit as st

from cnnlab import data, explain, plots
from cnnlab.errors import CnnlabError
from cnnlab.predict import Predictor
from pages import ui
from pages.ui import show_error

MAX_SHOWN = 12  # images analysed per rerun (each needs a Grad-CAM backward pass)
HEADING_NAME_CHARS = (
    24  # a longer file name is cut in the middle (whole on hover): no mid-word wrap
)
HISTORY = 6  # camera snapshots kept in "keep predicting" mode (newest first)
Source = tuple[str, bytes]


def inputs(prefix: str) -> list[Source]:
    """The file drop and, beside it, the camera: (name, bytes) of every image to predict, camera
    first. In "keep predicting" mode each snapshot is kept (newest first) and the camera reopens
    for the next one."""
    left, right = st.columns([3, 2])
    uploads = left.file_uploader(
        "Images",
        type=sorted(e.lstrip(".") for e in data.IMAGE_EXTENSIONS),
        accept_multiple_files=True,
        key=f"{prefix}_files",
    )
    sources = [(f.name, f.getvalue()) for f in uploads or []]
    with right:
        if not st.toggle("Use the camera", key=f"{prefix}_cam"):
            return sources
        keep = st.toggle(
            "Keep predicting",
            key=f"{prefix}_keep",
            help="Predict each snapshot and reopen the camera for the next one; the last "
            f"{HISTORY} snapshots stay below.",
        )
        count_key, shots_key = f"{prefix}_shot_n", f"{prefix}_shots"
        n = st.session_state.get(count_key, 0)
        shot = st.camera_input("Take a photo", key=f"{prefix}_shot_{n}")
    if shot is not None and keep:
        shots = st.session_state.get(shots_key, [])
        st.session_state[shots_key] = [(f"snapshot {n + 1}", shot.getvalue()), *shots][:HISTORY]
        st.session_state[count_key] = n + 1  # a new widget key: the camera opens live again
        st.rerun()
    if keep:
        return [*st.session_state.get(shots_key, []), *sources]
    st.session_state.pop(shots_key, None)
    return ([("camera photo", shot.getvalue())] if shot is not None else []) + sources


def show(predictor: Predictor, sources: list[Source], k: int, prefix: str) -> None:
    """Top-k and Grad-CAM of each image (the first MAX_SHOWN); unreadable ones get an error."""
    if len(sources) > MAX_SHOWN:
        st.caption(f"Showing the first {MAX_SHOWN} of {len(sources)} images.")
    for i, (name, payload) in enumerate(sources[:MAX_SHOWN]):
        try:
            image = predictor.load(payload, name)
        except CnnlabError as exc:
            show_error(exc)
            continue
        top = predictor.top_k(predictor.probabilities(image[None]), int(k))[0]
        short = ui.short_name(name, HEADING_NAME_CHARS)
        st.subheader(
            f"{short}: {top[0][0]} ({top[0][1]:.1%})", help=name if short != name else None
        )
        c1, c2, c3 = st.columns([1, 1, 2])
        c1.image(explain.display_image(image, 192), caption="model input")
        try:
            cam, cls, prob = explain.saliency(predictor, image, size=192)
            c2.image(cam, caption=f"Grad-CAM for {cls} ({prob:.0%})")
        except CnnlabError as exc:
            c2.warning(f"No Grad-CAM for this model: {exc}")
        c3.plotly_chart(plots.topk_figure(top), key=f"{prefix}_top_{i}")
