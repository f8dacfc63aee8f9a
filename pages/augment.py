"""Augment page: every random transform with its control, presets, and a live preview grid.

The grid runs the same few images through `cnnlab.augment.preview`, i.e. `augment_batch`, the exact
function training calls on every batch, so what you see here is what the model sees. The
AugmentConfig is written into st.session_state["run_config"].augment on every change.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import streamlit as st
import torch

from cnnlab import augment, data, demo, workspace
from cnnlab.config import AUGMENT_PRESETS, NORMALIZE, AugmentConfig, DataConfig
from cnnlab.errors import CnnlabError
from pages import ui

IMAGE_SIZES = (16, 24, 32, 48, 64, 96, 128, 160, 224)
N_IMAGES = 4  # rows of the grid per page: one image per class, every class over the pages
N_COPIES = 5  # augmented copies of each image
DISPLAY_PX = 72  # small images are blown up (nearest) to about this width to stay visible
PHOTOS_DIR = "demo-photos"
# AugmentConfig field -> widget key; the crop range is one two-handled slider
KEYS = {
    "hflip": "a_hflip",
    "rotation": "a_rotation",
    "brightness": "a_brightness",
    "contrast": "a_contrast",
    "saturation": "a_saturation",
    "normalize": "a_normalize",
}


def _seed_widgets(aug: AugmentConfig, force: bool = False) -> None:
    """Put a config's values into the widgets (first visit, or a preset when force=True)."""
    values = {key: getattr(aug, name) for name, key in KEYS.items()}
    values["a_crop"] = (aug.crop_scale_min, aug.crop_scale_max)
    for key, value in values.items():
        if force or key not in st.session_state:
            st.session_state[key] = value


def _from_widgets() -> AugmentConfig:
    """The AugmentConfig the controls describe."""
    lo, hi = st.session_state["a_crop"]
    values = {name: st.session_state[key] for name, key in KEYS.items()}
    return AugmentConfig(crop_scale_min=float(lo), crop_scale_max=float(hi), **values)


def _apply_preset() -> None:
    """Selectbox callback: fill the controls from the chosen preset (keeps the normalisation)."""
    name = st.session_state["a_preset"]
    if name in AUGMENT_PRESETS:
        preset = AUGMENT_PRESETS[name]
        _seed_widgets(dataclasses.replace(preset, normalize=st.session_state["a_normalize"]), True)


def _matching_preset(aug: AugmentConfig) -> str:
    """The preset whose transforms equal aug's (slider floats compared with a tolerance)."""
    have = dataclasses.asdict(aug)
    for name, preset in AUGMENT_PRESETS.items():
        want = dataclasses.asdict(dataclasses.replace(preset, normalize=aug.normalize))
        if all(v == have[k] or abs(float(v) - float(have[k])) < 1e-6 for k, v in want.items()
               if k != "normalize"):  # fmt: skip
            return name
    return "custom"


def _controls(aug: AugmentConfig) -> tuple[AugmentConfig, int]:
    """Render the controls (seeded from aug); returns the AugmentConfig and image size they set."""
    _seed_widgets(aug)
    # the preset box names the preset the controls match, or "custom" once one is moved
    st.session_state["a_preset"] = _matching_preset(_from_widgets())
    st.selectbox(
        "Preset",
        [*AUGMENT_PRESETS, "custom"],
        key="a_preset",
        on_change=_apply_preset,
        help="Fills the controls below; change any control afterwards to customise.",
    )
    size = st.select_slider(
        "Resize to (px)",
        IMAGE_SIZES,
        key="a_size",
        help="Every image is squashed to this square size once, when the data is decoded "
        "(training and validation alike). Same setting as the Data page's image size.",
    )
    st.slider(
        "Random resized crop: share of the area kept",
        0.05,
        1.0,
        step=0.05,
        key="a_crop",
        help="Each training image is cropped to a random share of its area in this range "
        "(aspect 3:4 to 4:3) and resized back. (1.0, 1.0) turns it off.",
    )
    st.slider(
        "Horizontal flip probability",
        0.0,
        1.0,
        step=0.05,
        key="a_hflip",
        help="0.5 for photos; 0 for digits and text, which a mirror turns into other symbols.",
    )
    st.slider("Rotation (± degrees)", 0.0, 180.0, step=1.0, key="a_rotation")
    st.slider("Brightness jitter", 0.0, 1.0, step=0.05, key="a_brightness")
    st.slider("Contrast jitter", 0.0, 1.0, step=0.05, key="a_contrast")
    st.slider("Saturation jitter", 0.0, 1.0, step=0.05, key="a_saturation")
    st.selectbox(
        "Normalise with",
        NORMALIZE,
        key="a_normalize",
        help="The training split's mean/std, ImageNet's (always used by transfer models), or none.",
    )
    return _from_widgets(), int(size)


def _sample_files() -> tuple[list[Path], list[str], str]:
    """One image per class of the chosen data set (a page of N_IMAGES classes at a time, picked
    below the grid), else the demo photos."""
    path = ui.chosen_dataset()
    if path:
        result = ui.scan_dataset(path)
        firsts: dict[int, Path] = {}
        for f, label in zip(result.files, result.labels, strict=True):
            firsts.setdefault(label, f)
        labels = sorted(firsts)
        pages = max(1, -(-len(labels) // N_IMAGES))
        page = min(int(st.session_state.get("a_page", 1)), pages)
        shown = labels[(page - 1) * N_IMAGES : page * N_IMAGES]
        where = Path(path).name
        if pages > 1:
            where += f", classes {(page - 1) * N_IMAGES + 1}-{(page - 1) * N_IMAGES + len(shown)}"
            where += f" of {len(labels)}"
        return [firsts[i] for i in shown], [result.classes[i] for i in shown], where

    photos = workspace.datasets_dir() / PHOTOS_DIR
    if not photos.is_dir():
        demo.write_photos(photos)
    files = sorted(photos.glob("*/*.jpg"))
    return files, [f.parent.name for f in files], "the demo photos (no data set chosen yet)"


def _class_pages() -> None:
    """The page picker under the grid when the data set has more classes than one page shows."""
    path = ui.chosen_dataset()
    if not path:
        return
    n = len(ui.scan_dataset(path).classes)
    pages = max(1, -(-n // N_IMAGES))
    if pages > 1:
        st.number_input(
            f"Classes page (of {pages})", 1, pages, key="a_page",
            help=f"{N_IMAGES} classes a page; every class of the data set is on one of them",
        )  # fmt: skip


@st.cache_data(max_entries=32, show_spinner=False)
def _decode(paths: tuple[str, ...], size: int) -> np.ndarray:
    """uint8 (N, 3, size, size): the same decode (data.decode_image) the training cache uses."""
    return torch.stack([data.decode_image(Path(p), size) for p in paths]).numpy()


def _for_display(img: np.ndarray) -> np.ndarray:
    """(3, H, W) uint8 -> (H', W', 3), blown up by an integer factor so small images stay crisp."""
    factor = max(1, DISPLAY_PX // img.shape[-1])
    hwc = img.transpose(1, 2, 0)
    return hwc.repeat(factor, axis=0).repeat(factor, axis=1)


def _grid(images: np.ndarray, names: list[str], cfg: AugmentConfig, compare: bool) -> None:
    """One row per image: (validation view,) then N_COPIES draws of the training augmentation."""
    seed = int(st.session_state.get("a_seed", 0))
    copies = augment.preview(torch.from_numpy(images), cfg, n=N_COPIES, seed=seed).numpy()
    for img, row, name in zip(images, copies, names, strict=True):
        shown = [_for_display(c) for c in row]
        captions = [f"train #{i + 1}" for i in range(len(shown))]
        if compare:
            shown.insert(0, _for_display(img))
            captions.insert(0, "validation")
        st.markdown(f"**{name}**")
        st.image(shown, caption=captions, width=DISPLAY_PX)


def _preview(aug: AugmentConfig, size: int) -> None:
    """The toggle, the reshuffle button and the grid of augmented samples."""
    st.subheader("Preview")
    try:
        with st.spinner("Reading sample images…"):
            files, names, source = _sample_files()
            images = _decode(tuple(str(f) for f in files), size)
    except CnnlabError as exc:
        ui.show_error(exc)
        return
    c1, c2 = st.columns([3, 2])
    compare = c1.toggle(
        "Show the validation view",
        value=True,
        key="a_compare",
        help="The first image of each row is what validation and test see: resize + normalise.",
    )
    if c2.button("New random draws", icon=":material/casino:"):
        st.session_state["a_seed"] = int(st.session_state.get("a_seed", 0)) + 1
    st.caption(
        f"Images from {source}, {size} px, through `cnnlab.augment.augment_batch` (the code "
        "training runs). Normalisation is not shown: it only rescales the colours for the model."
    )
    if not aug.enabled:
        st.info("Every transform is off: training images are used as they are.")
    _grid(images, names, aug, compare)
    _class_pages()


def main() -> None:
    """Render the page."""
    ui.use_app_navigation()
    st.title("Augment")
    st.caption(
        "Random changes applied to each training image, a new draw every epoch, so the model "
        "learns what matters rather than memorising pixels. Validation and test images are only "
        "resized and normalised."
    )
    cfg = ui.session_run_config()
    st.session_state.setdefault("a_size", cfg.data.image_size)
    if st.session_state["a_size"] not in IMAGE_SIZES:
        st.session_state["a_size"] = min(IMAGE_SIZES, key=lambda s: abs(s - cfg.data.image_size))
    left, right = st.columns([1, 2], gap="large")
    with left:
        aug, size = _controls(cfg.augment)
    try:
        aug.validate()
    except CnnlabError as exc:
        ui.show_error(exc)
        return
    cfg = dataclasses.replace(cfg, augment=aug, data=dataclasses.replace(cfg.data, image_size=size))
    st.session_state[ui.RUN_CONFIG] = cfg
    if isinstance(st.session_state.get(ui.DATA_CONFIG), DataConfig):
        st.session_state[ui.DATA_CONFIG] = cfg.data
    with right:
        _preview(aug, size)


main()
