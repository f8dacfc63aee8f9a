"""Model page: a custom CNN or a transfer backbone, with a live layer summary.

Reads widgets -> builds a ModelConfig -> writes it into st.session_state["run_config"]; the summary
(layer, output shape, parameters, trainable) is recomputed by cnnlab.models whenever a control
changes, cached on the config's JSON so reruns of the same config are free.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import streamlit as st

from cnnlab import archive, models, runs, workspace
from cnnlab.config import ModelConfig, RunConfig
from cnnlab.errors import CnnlabError, WeightsError
from pages import ui

SUMMARY_CLASSES = 10  # head size used for the summary when the data's classes are not known yet
WEIGHT_SOURCES = {
    "imagenet": "ImageNet (local torch cache)",
    "file": "A weights file (.pth/.pt)",
    "run": "One of my runs",
    "random": "Random (train from scratch)",
}


def _n_classes() -> int:
    """The chosen data set's class count (scan cached process-wide), else a stand-in."""
    path = st.session_state.get(ui.DATASET_PATH)
    if path and Path(path).is_dir():
        try:
            n = len(ui.scan_dataset(path).classes)
        except CnnlabError:
            n = 0
        if n >= 2:
            return n
    return SUMMARY_CLASSES


def _use_simple_cnn() -> None:
    """The guide's SimpleCNN at its 64 px input (a button callback: runs before the widgets)."""
    st.session_state["m_family"] = "Custom CNN"
    st.session_state["m_custom_name"] = "simple_cnn"
    st.session_state["m_image_size"] = 64


@st.cache_data(max_entries=64, show_spinner=False)
def _summarise(model_json: str, n_classes: int, image_size: int) -> dict[str, Any]:
    """Build the model (weights included) once per config; a weights problem is returned as text."""
    cfg = ModelConfig(**json.loads(model_json))
    weights_error = None
    try:
        model = models.create_model(cfg, n_classes, image_size)
    except WeightsError as exc:
        weights_error = str(exc)
        # the shapes and counts do not depend on the weights: summarise a random-init twin
        model = models.create_model(
            dataclasses.replace(cfg, weights="random"), n_classes, image_size
        )
    s = models.summary(model, image_size)
    return {
        "rows": s.as_records(),
        "total": s.total_params,
        "trainable": s.trainable_params,
        "frozen": s.frozen_params,
        "weights_error": weights_error,
    }


def _custom_controls(cfg: ModelConfig) -> ModelConfig:
    names = [n for n in models.list_models() if not models.is_transfer(n)]
    ui.seed_widget("m_custom_name", cfg.name if cfg.name in names else names[0])
    name = st.selectbox("Architecture", names, key="m_custom_name")
    if name != "custom":
        ui.seed_widget("m_dropout", cfg.dropout)
        dropout = st.slider("Dropout", 0.0, 0.9, step=0.05, key="m_dropout")
        return dataclasses.replace(cfg, name=name, dropout=dropout, weights="random")
    ui.seed_widget("m_blocks", len(cfg.channels))
    blocks = st.number_input("Conv blocks", 1, 8, key="m_blocks")
    cols = st.columns(int(blocks))
    channels = []
    for i, col in enumerate(cols):
        # a new block starts at twice the previous one's channels, as in most CNNs
        guess = cfg.channels[i] if i < len(cfg.channels) else min(2048, 2 * channels[-1])
        ui.seed_widget(f"m_ch_{i}", guess)
        channels.append(int(col.number_input(f"Block {i + 1}", 1, 2048, key=f"m_ch_{i}")))
    c1, c2 = st.columns(2)
    ui.seed_widget("m_kernel", cfg.kernel_size)
    ui.seed_widget("m_convs", cfg.convs_per_block)
    ui.seed_widget("m_head", cfg.head_units)
    ui.seed_widget("m_dropout", cfg.dropout)
    ui.seed_widget("m_bn", cfg.batch_norm)
    ui.seed_widget("m_residual", cfg.residual)
    kernel = c1.selectbox("Kernel size", [1, 3, 5, 7], key="m_kernel")
    convs = c2.number_input("Convs per block", 1, 4, key="m_convs")
    head = c1.number_input("Head units (0 = none)", 0, 8192, step=32, key="m_head")
    dropout = c2.slider("Dropout", 0.0, 0.9, step=0.05, key="m_dropout")
    bn = c1.checkbox("BatchNorm", key="m_bn")
    residual = c2.checkbox("Residual connections", key="m_residual")
    return dataclasses.replace(
        cfg,
        name="custom",
        channels=channels,
        kernel_size=int(kernel),
        convs_per_block=int(convs),
        head_units=int(head),
        dropout=float(dropout),
        batch_norm=bool(bn),
        residual=bool(residual),
        weights="random",
    )


def _weights_source(cfg: ModelConfig) -> str:
    """The weights string for ModelConfig: imagenet, random, a file path, or run:<id>."""
    current = cfg.weights
    kind = current.split(":")[0] if current.startswith("run:") else current
    kind = kind if kind in WEIGHT_SOURCES else "file"
    ui.seed_widget("m_weights_kind", kind)
    kind = st.radio(
        "Weights", list(WEIGHT_SOURCES), format_func=WEIGHT_SOURCES.get, key="m_weights_kind"
    )
    if kind in ("imagenet", "random"):
        return kind
    if kind == "run":
        choices = [r["run_id"] for r in runs.list_runs() if r.get("status") == "completed"]
        if not choices:
            st.info("No finished runs yet: train one first, or pick another weights source.")
            return "random"
        run_id = st.selectbox("Run", choices, key="m_weights_run")
        return f"run:{run_id}"
    upload = st.file_uploader("Upload a .pth/.pt file", type=["pth", "pt"], key="m_weights_upload")
    if upload is not None:
        # the browser-supplied name is never used as a path: archive makes a safe one
        return str(archive.save_uploaded_weights(upload.getvalue(), upload.name))
    ui.seed_widget("m_weights_path", "" if kind != "file" or current in WEIGHT_SOURCES else current)
    typed = st.text_input("...or a path on the server", key="m_weights_path")
    if not typed:
        return "random"
    try:
        return str(workspace.check_inside_roots(typed))
    except CnnlabError as exc:
        st.error(str(exc))
        return "random"


def _transfer_controls(cfg: RunConfig) -> tuple[ModelConfig, float, float]:
    names = [n for n in models.list_models() if models.is_transfer(n)]
    m = cfg.model
    if not models.is_transfer(m.name):  # coming from a custom CNN: start from ImageNet weights
        m = dataclasses.replace(m, weights="imagenet")
    ui.seed_widget("m_backbone", m.name if m.name in names else names[0])
    ui.seed_widget("m_strategy", m.strategy)
    ui.seed_widget("m_dropout", m.dropout)
    name = st.selectbox("Backbone", names, key="m_backbone")
    strategy = st.radio(
        "Strategy",
        ["feature_extraction", "fine_tune"],
        format_func=lambda s: {
            "feature_extraction": "Feature extraction (train the new head only)",
            "fine_tune": "Fine-tune (head + the last backbone block)",
        }[s],
        key="m_strategy",
    )
    c1, c2 = st.columns(2)
    ui.seed_widget("m_head_lr", cfg.train.lr)
    ui.seed_widget("m_backbone_lr", cfg.train.backbone_lr)
    head_lr = c1.number_input("Head learning rate", 1e-6, 1.0, format="%.0e", key="m_head_lr")
    backbone_lr = c2.number_input(
        "Backbone learning rate",
        0.0,
        1.0,
        format="%.0e",
        key="m_backbone_lr",
        disabled=strategy != "fine_tune",
    )
    dropout = st.slider("Dropout before the head", 0.0, 0.9, step=0.05, key="m_dropout")
    weights = _weights_source(m)
    model = dataclasses.replace(m, name=name, strategy=strategy, dropout=dropout, weights=weights)
    return model, float(head_lr), float(backbone_lr)


def main() -> None:
    """Render the page."""
    ui.use_app_navigation()
    st.title("Model")
    cfg = ui.session_run_config()
    st.button("Use the guide's SimpleCNN", on_click=_use_simple_cnn, help="simple_cnn at 64 px")
    ui.seed_widget(
        "m_family", "Transfer learning" if models.is_transfer(cfg.model.name) else "Custom CNN"
    )
    family = st.radio("Model", ["Custom CNN", "Transfer learning"], horizontal=True, key="m_family")
    train_cfg = cfg.train
    if family == "Custom CNN":
        model_cfg = _custom_controls(cfg.model)
    else:
        model_cfg, head_lr, backbone_lr = _transfer_controls(cfg)
        train_cfg = dataclasses.replace(cfg.train, lr=head_lr, backbone_lr=backbone_lr)

    ui.seed_widget("m_image_size", cfg.data.image_size)
    size = int(
        st.number_input("Input size (px, the data's image size)", 8, 1024, key="m_image_size")
    )
    if models.is_transfer(model_cfg.name) and size < 64:
        st.caption("ImageNet backbones were trained at 224 px; very small inputs lose accuracy.")
    data_cfg = dataclasses.replace(cfg.data, image_size=size)
    st.session_state[ui.DATA_CONFIG] = data_cfg
    try:
        model_cfg.validate()
    except CnnlabError as exc:
        st.error(str(exc))
        return
    st.session_state[ui.RUN_CONFIG] = dataclasses.replace(
        cfg, data=data_cfg, model=model_cfg, train=train_cfg
    )

    n_classes = _n_classes()
    try:
        info = _summarise(json.dumps(dataclasses.asdict(model_cfg)), n_classes, size)
    except CnnlabError as exc:
        ui.show_error(exc)
        return
    except RuntimeError as exc:  # e.g. the input is too small for this many poolings
        st.error(f"This model cannot take {size} px inputs: {exc}")
        return
    if info["weights_error"]:
        st.warning(info["weights_error"])
    st.subheader("Summary")
    c1, c2, c3 = st.columns(3)
    c1.metric("Parameters", f"{info['total']:,}")
    c2.metric("Trainable", f"{info['trainable']:,}")
    c3.metric("Frozen", f"{info['frozen']:,}")
    st.dataframe(info["rows"], hide_index=True, width="stretch")
    st.caption(f"Head sized for {n_classes} classes; output shapes exclude the batch dimension.")


try:
    main()
except CnnlabError as exc:  # e.g. an uploaded weights file that cannot be used
    ui.show_error(exc)
