"""Data page: choose a data set (demo, zip, folder upload, server path), check it, split it."""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from cnnlab import archive, data, demo, plots, workspace
from cnnlab.config import DataConfig
from cnnlab.errors import CnnlabError
from pages import ui

SOURCES = ("Demo digits", "Upload a zip", "Upload a folder", "Path on this server")
IMAGE_SIZES = (16, 24, 32, 48, 64, 96, 128, 160, 224)
SAMPLES_PER_CLASS = 6
MAX_CLASSES_SHOWN = 30
IMBALANCE_RATIO = 1.5  # largest / smallest class above this is flagged


def _uploaded_once(key: str, make) -> str:
    """Extract an upload once per session (hashing a big upload on every rerun is slow)."""
    memo = st.session_state.setdefault("_data_uploads", {})
    if key not in memo:
        with st.status("Unpacking the upload…") as status:
            _, progress = ui.progress_bar("Unpacking")
            try:
                memo[key] = str(make(progress))
            except CnnlabError:
                status.update(label="The upload could not be unpacked", state="error")
                raise
            status.update(label="Upload unpacked", state="complete")
    return memo[key]


def _path_entered() -> None:
    """Enter in the path field loads it, as the button does."""
    st.session_state["_data_path_entered"] = True


def _choose_source() -> str | None:
    """Render the source picker; returns a newly chosen path or None."""
    # the radio's own state is dropped while another page shows: keep the choice apart
    ui.seed_widget("data_source", st.session_state.get(ui.DATA_SOURCE, SOURCES[0]))
    source = st.radio("Source", SOURCES, horizontal=True, key="data_source")
    st.session_state[ui.DATA_SOURCE] = source
    if source == "Demo digits":
        st.caption("scikit-learn's 1,797 handwritten digits, 10 classes, written as PNGs.")
        if st.button("Use the demo digits", icon=":material/bolt:"):
            return str(demo.ensure_demo_digits())
    elif source == "Upload a zip":
        up = st.file_uploader("A .zip with one folder per class", type=["zip"])
        if up is not None:
            return _uploaded_once(
                up.file_id, lambda p: archive.save_uploaded_zip(up.getvalue(), up.name, p)
            )
    elif source == "Upload a folder":
        # a folder of hundreds of files would list a chip per file: hide them, count them
        st.html("<style>.st-key-data_folder [data-testid='stFileUploaderFile'],"
                ".st-key-data_folder [data-testid='stFileUploaderPagination']"
                "{display: none}</style>")  # fmt: skip
        ups = st.file_uploader(
            "A folder with one sub-folder per class",
            accept_multiple_files="directory",
            key="data_folder",
        )
        if ups:
            st.caption(f"{len(ups):,} files uploaded.")
            top = ups[0].name.replace("\\", "/").split("/", 1)[0] or "upload"
            return _uploaded_once(
                "|".join(sorted(u.file_id for u in ups)),
                lambda _p: archive.save_uploaded_files([(u.name, u.getvalue()) for u in ups], top),
            )
    else:
        roots = ", ".join(f"`{r}`" for r in workspace.data_roots())
        st.caption(f"Allowed folders: {roots} (set CNNLAB_DATA_ROOTS to change).")
        raw = st.text_input(
            "Folder or .zip on this server", key="data_server_path", on_change=_path_entered
        )
        clicked = st.button(
            "Use this path",
            disabled=not raw.strip(),
            help="Type a path first" if not raw.strip() else "Read this folder or .zip",
        )
        if (clicked or st.session_state.pop("_data_path_entered", False)) and raw.strip():
            checked = workspace.check_inside_roots(raw.strip())
            with st.status("Reading…"):
                return str(data.resolve_dataset(checked))  # a server-side .zip is extracted
    return None


def _show_samples(result: data.ScanResult) -> None:
    st.subheader("Samples")
    firsts: dict[int, list[Path]] = {}
    for f, label in zip(result.files, result.labels, strict=True):
        firsts.setdefault(label, [])
        if len(firsts[label]) < SAMPLES_PER_CLASS:
            firsts[label].append(f)
    for label, name in enumerate(result.classes[:MAX_CLASSES_SHOWN]):
        thumbs = [ui.thumbnail(str(f), f.stat().st_mtime_ns) for f in firsts[label]]
        st.image(thumbs, caption=[name] * len(thumbs), width=72)
    if len(result.classes) > MAX_CLASSES_SHOWN:
        st.caption(f"… and {len(result.classes) - MAX_CLASSES_SHOWN} more classes.")


def _show_dataset(path: str) -> None:
    bar, progress = ui.progress_bar("Checking every image")
    try:
        result = ui.scan_dataset(path, progress)
    except CnnlabError:
        st.session_state.pop(ui.DATASET_PATH, None)  # unusable: later pages must not use it
        st.session_state.pop(ui.DATA_CONFIG, None)
        raise
    finally:
        bar.empty()
    counts = result.counts
    c1, c2, c3 = st.columns(3)
    c1.metric("Classes", len(result.classes))
    c2.metric("Usable images", f"{result.n_images:,}")
    c3.metric("Problems", len(result.problems))

    st.plotly_chart(plots.class_counts_figure(counts))
    ratio = max(counts.values()) / min(counts.values())
    if ratio >= IMBALANCE_RATIO:
        small = min(counts, key=counts.get)
        st.warning(
            f"Classes are imbalanced: the largest has {ratio:,.{0 if ratio >= 10 else 1}f} times "
            "the images of the smallest "
            f"({small!r}, {counts[small]}). Consider class weights on the Train page."
        )
    _show_samples(result)

    st.subheader("Problems")
    if result.problems:
        st.dataframe(
            [{"file": p.path, "reason": p.reason} for p in result.problems],
            hide_index=True, width="stretch",
        )  # fmt: skip
    else:
        st.success("Every file is a usable image.")

    st.subheader("Split")
    # Start from the config other pages (Home demo, Augment, Model) may have set: widget state is
    # dropped when the user leaves this page, the config in session_state is not.
    prev = st.session_state.get(ui.DATA_CONFIG) or DataConfig()
    for key, value in (("data_val", prev.val_fraction), ("data_test", prev.test_fraction),
                       ("data_size", prev.image_size), ("data_seed", prev.seed)):  # fmt: skip
        st.session_state.setdefault(key, value)
    sizes = sorted({*IMAGE_SIZES, int(st.session_state["data_size"])})
    c1, c2, c3, c4 = st.columns(4)
    val = c1.slider("Validation fraction", 0.0, 0.4, step=0.05, key="data_val")
    test = c2.slider("Test fraction", 0.0, 0.4, step=0.05, key="data_test")
    size = c3.select_slider("Image size (px)", sizes, key="data_size")
    seed = int(c4.number_input("Seed", 0, 2**31 - 1, key="data_seed"))
    cfg = DataConfig(path=path, image_size=size, val_fraction=val, test_fraction=test, seed=seed)
    try:
        cfg.validate()
        parts = data.split(result, val, test, seed)
    except CnnlabError:
        st.session_state.pop(ui.DATA_CONFIG, None)
        raise
    rows = [{"class": c, **row, "total": sum(row.values())} for c, row in
            parts.per_class(result).items()]  # fmt: skip
    rows.append({"class": "all", **parts.sizes(), "total": result.n_images})
    st.dataframe(rows, hide_index=True, width="stretch")
    st.session_state[ui.DATA_CONFIG] = cfg

    if st.button(f"Decode and cache at {size} px", icon=":material/memory:"):
        bar, progress = ui.progress_bar("Decoding")
        start = time.perf_counter()
        images = data.load_tensors(result.files, size, progress)
        bar.empty()
        st.success(
            f"{tuple(images.shape)} uint8 tensor ready in {time.perf_counter() - start:.1f} s; "
            "training will read it from the cache."
        )


ui.use_app_navigation()
st.title("Data")
st.caption("An image folder with one sub-folder per class (or a .zip of one).")
try:
    chosen = _choose_source()
    if chosen:  # store the folder that holds the class folders (past a lone wrapper folder)
        resolved = str(data.resolve_dataset(chosen))
        if resolved != st.session_state.get(ui.DATASET_PATH):
            st.session_state[ui.DATASET_PATH] = resolved
            st.rerun()  # app.py drew the sidebar before this page ran: redraw it with the name
    current = st.session_state.get(ui.DATASET_PATH)
    if current:
        st.divider()
        st.markdown(f"**Data set:** `{current}`")
        _show_dataset(current)
    else:
        hint = {
            "Demo digits": "press **Use the demo digits**",
            "Upload a zip": "drop a .zip with one folder per class above",
            "Upload a folder": "choose a folder with one sub-folder per class above",
        }.get(st.session_state.get("data_source"), "type a path above and press Enter")
        st.info(f"No data set loaded yet: {hint}.", icon=":material/info:")
except CnnlabError as exc:
    ui.show_error(exc)
