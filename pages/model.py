"""Model page: a custom CNN or a transfer backbone, with a live layer summary.

Reads widgets -> builds a ModelConfig -> writes it into st.session_state["run_config"]; the summary
(layer, output shape, parameters, trainable) is recomputed by cnnlab.models whenever a control
changes, cached on the config's JSON so reruns of the same config are free.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import streamlit as st

from cnnlab import (
    archive,
    config,
    models,
    preflight,
    reach,
    recipe,
    runs,
    weights,
    workspace,
)
from cnnlab.config import ModelConfig, RunConfig
from cnnlab.errors import CnnlabError, WeightsError
from pages import ui

SUMMARY_CLASSES = 10  # head size used for the summary when the data's classes are not known yet
WEIGHT_SOURCES = {
    "imagenet": "ImageNet (downloaded once, then cached)",
    "url": "A URL (http/https, downloaded into the same cache)",
    "file": "A weights file (.pth/.pt)",
    "run": "One of my runs",
    "random": "Random (train from scratch)",
}


def _n_classes() -> int:
    """The chosen data set's class count (scan cached process-wide), else a stand-in."""
    path = ui.chosen_dataset()
    if path:
        try:
            n = len(ui.scan_dataset(path).classes)
        except CnnlabError:
            n = 0
        if n >= 2:
            return n
    return SUMMARY_CLASSES


def _use_pretrained() -> None:
    """The pretrained route for a small set (a button callback): ResNet-18 at 112 px, a quarter
    of 224 px's compute, fine-tuned."""
    st.session_state["m_family"] = "Transfer learning"
    st.session_state["m_backbone"] = recipe.PRETRAINED
    st.session_state["m_image_size"] = 112


def _small_data_advice(cfg: RunConfig) -> None:
    """For a small set trained from scratch: the pretrained route first, or why it is closed."""
    path = ui.chosen_dataset()
    transfer = st.session_state.get("m_family") == "Transfer learning"  # chosen in this run
    if not path or transfer or models.is_transfer(cfg.model.name):
        return
    try:
        scan = ui.scan_dataset(path)
    except CnnlabError:
        return  # the Data page says what is wrong with it
    n_train = preflight.training_images(cfg, scan)
    plan = recipe.plan(cfg, n_train)
    if plan.applies and any(key.startswith("model.") for key in plan.changes):
        # the summary below shows these settings; the run will train the recipe's net
        st.caption(f"At training, the {plan.line()}")
    advice = recipe.pretrained_advice(cfg, n_train)
    if advice is None:
        return
    st.info(advice.line[:1].upper() + advice.line[1:], icon=":material/lightbulb:")
    if advice.open:
        st.button(f"Use {recipe.PRETRAINED}", on_click=_use_pretrained, type="primary",
                  help="Fine-tune an ImageNet-pretrained ResNet-18 at 112 px")  # fmt: skip


def _use_simple_cnn() -> None:
    """The tutorial's SimpleCNN (two conv layers) at its 64 px input (a button callback)."""
    st.session_state["m_family"] = "Custom CNN"
    st.session_state["m_custom_name"] = "simple_cnn"
    st.session_state["m_image_size"] = 64


@st.cache_data(max_entries=64, show_spinner=False)
def _summarise(
    model_json: str, n_classes: int, image_size: int, epochs: int, pending: bool
) -> dict[str, Any]:
    """Build the model (weights included) once per config; a weights problem is returned as text.

    `pending` weights (a download not made yet) are not fetched here: the Download button or the
    start of training does that, with a progress bar. The summary then uses a random-init twin,
    as it does when the weights cannot be used: shapes and counts do not depend on them.
    """
    cfg = config.section_from_json("model", model_json)  # validated, like any config
    twin = dataclasses.replace(cfg, weights="random")
    weights_error = None
    if pending:
        model = models.create_model(twin, n_classes, image_size)
    else:
        try:
            model = models.create_model(cfg, n_classes, image_size)
        except WeightsError as exc:
            weights_error = _page_words(exc)
            model = models.create_model(twin, n_classes, image_size)
    s = models.layer_summary(model, image_size)
    return {
        "rows": s.as_records(),
        "total": s.total_params,
        "trainable": s.trainable_params,
        "frozen": s.frozen_params,
        "weights_error": weights_error,
        "phases": models.phase_plan(model, cfg, epochs),
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
    kind = "url" if weights.is_url(current) else kind
    kind = kind if kind in WEIGHT_SOURCES else "file"
    ui.seed_widget("m_weights_kind", kind)
    kind = st.radio(
        "Weights", list(WEIGHT_SOURCES), format_func=WEIGHT_SOURCES.get, key="m_weights_kind"
    )
    if kind in ("imagenet", "random"):
        return kind
    if kind == "url":
        ui.seed_widget("m_weights_url", current if weights.is_url(current) else "")
        url = st.text_input("Weights URL (http:// or https://)", key="m_weights_url").strip()
        if not url:
            return "random"
        try:
            weights.remote_url(url, models.get_spec("custom"))  # http(s) with a file name
            reach.check_weights_url(url)  # a host the operator allows
        except CnnlabError as exc:
            st.error(str(exc))
            return "random"
        return url
    if kind == "run":
        choices = [
            r["run_id"] for r in ui.my_runs(runs.list_runs()) if r.get("status") == "completed"
        ]
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


def _zoo_label(name: str) -> str:
    row = _zoo()[name]
    return f"{name} · {row['params'] / 1e6:.1f}M params · {row['image_size']} px"


@st.cache_data(show_spinner=False)
def _zoo() -> dict[str, dict[str, Any]]:
    """The registry's transfer models as `cnnlab models` describes them."""
    return {n: models.describe(n) for n in models.list_models() if models.is_transfer(n)}


def _transfer_controls(cfg: RunConfig) -> tuple[ModelConfig, float, float]:
    names = list(_zoo())
    m = cfg.model
    if not models.is_transfer(m.name):  # coming from a custom CNN: start from ImageNet weights
        m = dataclasses.replace(m, weights="imagenet")
    ui.seed_widget("m_backbone", m.name if m.name in names else names[0])
    ui.seed_widget("m_strategy", m.strategy)
    ui.seed_widget("m_dropout", m.dropout)
    ui.seed_widget("m_freeze_epochs", m.freeze_epochs)
    name = st.selectbox("Backbone", names, format_func=_zoo_label, key="m_backbone")
    st.caption(f"When to pick it: {_zoo()[name]['pick']}. All models: `cnnlab models`.")
    strategy = st.radio(
        "Strategy",
        ["feature_extraction", "fine_tune"],
        format_func=lambda s: {
            "feature_extraction": "Feature extraction (train the new head only)",
            "fine_tune": "Fine-tune (the head first, then the whole network)",
        }[s],
        key="m_strategy",
    )
    c1, c2, c3 = st.columns(3)
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
    freeze = c3.number_input(
        "Head-only epochs first",
        0,
        1000,
        key="m_freeze_epochs",
        disabled=strategy != "fine_tune",
        help="fastai's fine_tune: train the new head alone, then unfreeze the backbone",
    )
    dropout = st.slider("Dropout before the head", 0.0, 0.9, step=0.05, key="m_dropout")
    source = _weights_source(m)
    model = dataclasses.replace(
        m, name=name, strategy=strategy, dropout=dropout, weights=source, freeze_epochs=int(freeze)
    )
    note = models.random_backbone_warning(model)
    if note:
        st.warning(note, icon=":material/warning:")
    return model, float(head_lr), float(backbone_lr)


def _page_words(exc: WeightsError) -> str:
    """A weights error in this page's words: the CLI's "weights 'random'" is the option
    'Random (train from scratch)' here."""
    return exc.worded(f"'{WEIGHT_SOURCES['random']}'")


def _download(model_cfg: ModelConfig) -> None:
    """Offer to download the chosen weights now, with a progress bar (training would anyway)."""
    spec = models.get_spec(model_cfg.name)
    url = weights.remote_url(model_cfg.weights, spec)
    st.info(
        f"Weights {Path(url or '').name} are not downloaded yet: they download when training "
        f"starts, or now. Cache: {weights.cache_dir()}"
    )
    failure = weights.last_failure(model_cfg.weights, spec)
    if failure:  # Start stays off (the pre-flight lists it) until a download succeeds
        st.error(_page_words(failure), icon=":material/cloud_off:")
    if st.button("Download the weights now", key="m_download"):
        bar, update = ui.progress_bar("Weights")
        try:
            models.fetch_weights(model_cfg, update)
        except CnnlabError:
            bar.empty()
        st.rerun()  # a failure is shown above (recorded by the core), a success clears it


def main() -> None:
    """Render the page."""
    ui.use_app_navigation()
    st.title("Model")
    cfg = ui.session_run_config()
    _small_data_advice(cfg)
    st.button(
        "Use the classic SimpleCNN",
        on_click=_use_simple_cnn,
        help="The two-convolution CNN of the classic PyTorch image-classification tutorial, at "
        "64 px: a small, quick baseline to compare your own model against",
    )
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
    native = models.default_input_size(model_cfg.name)
    if native and size < native // 2:
        st.caption(f"{model_cfg.name} was trained at {native} px; very small inputs lose accuracy.")
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
        pending = weights.needs_download(model_cfg.weights, models.get_spec(model_cfg.name))
        info = _summarise(
            config.section_to_json(model_cfg), n_classes, size, train_cfg.epochs, pending
        )
    except CnnlabError as exc:
        ui.show_error(exc)
        return
    except RuntimeError as exc:  # e.g. the input is too small for this many poolings
        st.error(f"This model cannot take {size} px inputs: {exc}")
        return
    if info["weights_error"]:
        st.warning(info["weights_error"])
    if pending:
        _download(model_cfg)
    st.subheader("Summary")
    c1, c2, c3 = st.columns(3)
    c1.metric("Parameters", f"{info['total']:,}")
    c2.metric("Trainable", f"{info['trainable']:,}")
    c3.metric("Frozen", f"{info['frozen']:,}")
    if len(info["phases"]) > 1 or models.is_transfer(model_cfg.name):
        st.caption(f"Trainable parameters per phase over {train_cfg.epochs} epochs:")
        st.dataframe(
            [
                {
                    "phase": p["phase"],
                    "epochs": f"{p['first_epoch']}-{p['last_epoch']}",
                    "trainable": p["trainable"],
                }
                for p in info["phases"]
            ],
            hide_index=True,
        )
    st.dataframe(info["rows"], hide_index=True, width="stretch")
    st.caption(f"Head sized for {n_classes} classes; output shapes exclude the batch dimension.")


try:
    main()
except CnnlabError as exc:  # e.g. an uploaded weights file that cannot be used
    ui.show_error(exc)
