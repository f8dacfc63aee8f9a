"""Data page: choose a data set (demo, zip, folder upload, server path, labels CSV), check it,
see its duplicates, leave classes or copies out, split it."""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from cnnlab import archive, data, demo, duplicates, plots, splits, users, workspace
from cnnlab.config import DataConfig
from cnnlab.errors import CnnlabError
from cnnlab.scan_result import ScanResult
from pages import labels, ui

SOURCES = (
    "Demo digits", "Upload a zip", "Upload a folder", "Path on this server", "CSV of labels",
)  # fmt: skip
SPLIT_SOURCE = {
    "folders": "given by the data set's train / val / test folders",
    "csv": "given by the CSV's split column",
    "random": "random, stratified per class (seeded)",
}
MAX_GROUPS_SHOWN = 12  # duplicate groups drawn with thumbnails
IMAGE_SIZES = (16, 24, 32, 48, 64, 96, 128, 160, 224)
SAMPLES_PER_CLASS = 6
MAX_CLASSES_SHOWN = 30
IMBALANCE_RATIO = 1.5  # largest / smallest class above this is flagged


def _uploaded_once(key: str, make) -> str:
    """Extract an upload once per session (hashing a big upload on every rerun is slow)."""
    memo = st.session_state.setdefault("_data_uploads", {})
    if key not in memo:
        users.check_space(ui.user())  # a full share takes no more uploads
        with st.status("Unpacking the upload…") as status:
            _, progress = ui.progress_bar("Unpacking")
            try:
                memo[key] = str(make(progress))
                users.record_dataset(memo[key], ui.user().name)  # others cannot pick it
            except CnnlabError:
                status.update(label="The upload could not be unpacked", state="error")
                raise
            status.update(label="Upload unpacked", state="complete")
    return memo[key]


def _path_entered() -> None:
    """Enter in the path field loads it, as the button does."""
    st.session_state["_data_path_entered"] = True


def _one_file(label: str, ext: str, key: str):
    """A file uploader for one `ext` file (".zip", ".csv"). Another kind of file is refused with
    a message naming it, and its chip is cleared: the browser's own type filter left a red chip
    that said nothing and stayed."""
    turn = st.session_state.get(f"{key}_turn", 0)
    up = st.file_uploader(label, key=f"{key}_{turn}", help=f"one {ext} file")
    if up is not None and not up.name.lower().endswith(ext):
        st.session_state[f"{key}_turn"] = turn + 1  # a new widget: the refused file's chip goes
        st.session_state[f"{key}_refused"] = up.name
        st.rerun()
    refused = st.session_state.get(f"{key}_refused")
    if up is not None:
        st.session_state.pop(f"{key}_refused", None)
    elif refused:
        st.error(
            f"{refused} is not a {ext} file; choose a {ext} file here.", icon=":material/block:"
        )
    return up


def _choose_source() -> str | None:
    """Render the source picker; returns a newly chosen path or None."""
    # the radio's own state is dropped while another page shows: keep the choice apart
    ui.seed_widget("data_source", st.session_state.get(ui.DATA_SOURCE, SOURCES[0]))
    source = st.radio("Source", SOURCES, horizontal=True, key="data_source")
    st.session_state[ui.DATA_SOURCE] = source
    if source == "Demo digits":
        st.caption("scikit-learn's 1,797 handwritten digits, 10 classes, written as PNGs.")
        if st.button("Use the demo digits", icon=":material/bolt:"):
            digits = demo.ensure_demo_digits()
            users.record_dataset(digits, users.PUBLIC)  # the same for everyone
            return str(digits)
    elif source == "Upload a zip":
        up = _one_file("A .zip with one folder per class", ".zip", "data_zip")
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
    elif source == "CSV of labels":
        return _choose_csv()
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
            users.check_dataset(ui.user(), checked)
            with st.status("Reading…"):
                folder = data.resolve_dataset(checked)  # a server-side .zip is extracted
            users.record_dataset(folder, ui.user().name)
            return str(folder)
    return None


def _choose_csv() -> str | None:
    """A labels CSV: uploaded with a zip of its images, or both on this server."""
    st.caption(
        "A CSV with a header row: an image column (path, file, filename, image, image_id or id; "
        "ids may leave out the extension), a label column (label, class, category or target) "
        "and, optionally, a split column (train / val / test)."
    )
    with st.expander("Column names (when the CSV uses other names)"):
        c1, c2 = st.columns(2)
        path_column = c1.text_input("Image column", key="data_csv_path_column").strip()
        label_column = c2.text_input("Label column", key="data_csv_label_column").strip()
    mode = st.radio(
        "Where are the images?", ("Upload the CSV and a zip of the images", "On this server"),
        horizontal=True, key="data_csv_mode",
    )  # fmt: skip
    options = {"path_column": path_column, "label_column": label_column}
    if mode.startswith("Upload"):
        up_csv = _one_file("Labels CSV", ".csv", "data_csv_file")
        up_zip = _one_file("Zip of the images", ".zip", "data_csv_zip")
        if up_csv is None or up_zip is None:
            return None
        images = _uploaded_once(
            up_zip.file_id, lambda p: archive.save_uploaded_zip(up_zip.getvalue(), up_zip.name, p)
        )
        csv_path = _uploaded_once(
            up_csv.file_id, lambda _p: archive.save_uploaded_csv(up_csv.getvalue(), up_csv.name)
        )
        st.session_state[ui.DATA_CSV] = {**options, "images": images}
        return csv_path
    roots = ", ".join(f"`{r}`" for r in workspace.data_roots())
    st.caption(f"Allowed folders: {roots} (set CNNLAB_DATA_ROOTS to change).")
    raw = st.text_input("CSV on this server", key="data_csv_server_path").strip()
    images_raw = st.text_input(
        "Images folder (empty: the CSV's paths are relative to its own folder)",
        key="data_csv_server_images",
    ).strip()
    # never greyed out: the path box only commits its text when it loses focus, so a typed path
    # would leave the button off until then; an empty box is said on the click instead
    if st.button("Use this CSV"):
        if not raw:
            st.warning("Type the CSV's path first.", icon=":material/edit:")
            return None
        checked = workspace.check_inside_roots(raw)
        images = str(workspace.check_inside_roots(images_raw)) if images_raw else ""
        for path in (checked, images):
            if path:
                users.check_dataset(ui.user(), path)
        st.session_state[ui.DATA_CSV] = {**options, "images": images}
        return str(checked)
    return None


def _show_samples(result: ScanResult) -> None:
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


def _show_duplicates(result: ScanResult) -> tuple[bool, bool]:
    """The groups of copies with thumbnails; returns the chosen (drop duplicates, drop conflicts)."""
    st.subheader("Duplicates")
    groups = result.duplicate_groups()
    prev = st.session_state.get(ui.DATA_CONFIG) or DataConfig()
    st.session_state.setdefault("data_drop_duplicates", prev.drop_duplicates)
    st.session_state.setdefault("data_drop_conflicts", prev.drop_conflicts)
    if not groups:
        st.success("No two images are copies of each other.")
        return False, False
    conflicts = [g for g in groups if duplicates.conflicting(g, result.labels)]
    leaks = duplicates.across_splits(groups, result.given)
    text = f"{len(groups)} group(s) of copies ({sum(len(g.members) for g in groups)} files)"
    if conflicts:
        text += f"; {len(conflicts)} carry different labels — likely labelling errors"
    if leaks:
        text += (
            f". {len(leaks)} group(s) have copies in different given splits (e.g. train and "
            "test): the model is scored on pictures it trained on, which inflates that accuracy "
            "— Drop duplicates keeps one copy of each (the test one)."
        )
    elif result.given:
        text += ". No copies cross the given splits; copies carved from train stay together."
    else:
        text += ". Copies always share a split here, so they cannot inflate the test accuracy."
    st.warning(text)
    shown = sorted(groups, key=lambda g: not duplicates.conflicting(g, result.labels))
    for g in shown[:MAX_GROUPS_SHOWN]:
        flag = " · **different labels**" if duplicates.conflicting(g, result.labels) else ""
        st.markdown(f"{g.kind} copies{flag}")
        thumbs = [ui.thumbnail(str(result.files[i]), result.files[i].stat().st_mtime_ns)
                  for i in g.members[:8]]  # fmt: skip
        # class and split, then the file name alone: a whole path broke mid-word under 96 px
        captions = [
            f"{result.classes[result.labels[i]]}"
            + (f" · {result.given[i]}" if result.given and result.given[i] else "")
            + f" · {result.files[i].name}"
            for i in g.members[:8]
        ]
        st.image(thumbs, caption=captions, width=128)
    if len(groups) > MAX_GROUPS_SHOWN:
        st.caption(
            f"… and {len(groups) - MAX_GROUPS_SHOWN} more groups (`cnnlab inspect` lists all)."
        )
    c1, c2 = st.columns(2)
    drop_dups = c1.checkbox(
        "Drop duplicates",
        key="data_drop_duplicates",
        help="Keep one copy of each group: the test copy when there is one",
    )
    drop_conflicts = c2.checkbox(
        "Drop conflicting labels",
        key="data_drop_conflicts",
        help="Leave out every copy whose labels disagree",
    )
    st.caption("Recorded in the run's config; your files are never deleted.")
    return drop_dups, drop_conflicts


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
    c3.metric("Problems", f"{sum(p.count for p in result.problems):,}")
    st.markdown(f"**Splits:** {SPLIT_SOURCE[result.split_source]}.")

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

    drop_dups, drop_conflicts = _show_duplicates(result)
    labels.fixes_bar(path, result)  # relabelled / excluded images: count, undo, corrected CSV

    st.subheader("Split")
    # Start from the config other pages (Home demo, Augment, Model) may have set: widget state is
    # dropped when the user leaves this page, the config in session_state is not.
    prev = st.session_state.get(ui.DATA_CONFIG) or DataConfig()
    same = prev.path == path
    for key, value in (("data_val", prev.val_fraction), ("data_test", prev.test_fraction),
                       ("data_size", prev.image_size), ("data_seed", prev.seed),
                       ("data_exclude", [c for c in prev.exclude_classes if c in result.classes]
                        if same else [])):  # fmt: skip
        st.session_state.setdefault(key, value)
    sizes = sorted({*IMAGE_SIZES, int(st.session_state["data_size"])})
    given = set(result.given)
    for name, label in (("val", "validation"), ("test", "test")):
        if result.given and name not in given:
            st.info(
                f"The data set gives no {label} split: the {label.capitalize()} fraction below "
                "carves one from its train split.",
                icon=":material/info:",
            )
    c1, c2, c3, c4 = st.columns(4)
    val, test = float(st.session_state["data_val"]), float(st.session_state["data_test"])
    for col, name, label, key in ((c1, "val", "Validation fraction", "data_val"),
                                  (c2, "test", "Test fraction", "data_test")):  # fmt: skip
        if name in given:  # given by the layout: nothing to choose
            n = sum(s == name for s in result.given)
            col.caption(f"{label.split()[0]} split: given by the data set ({n:,} images).")
        elif name == "val":
            val = col.slider(label, 0.0, 0.4, step=0.05, key=key)
        else:
            test = col.slider(label, 0.0, 0.4, step=0.05, key=key)
    size = c3.select_slider("Image size (px)", sizes, key="data_size")
    seed = int(c4.number_input("Seed", 0, 2**31 - 1, key="data_seed"))
    st.session_state["data_exclude"] = [
        c for c in st.session_state["data_exclude"] if c in result.classes
    ]
    exclude = st.multiselect("Exclude classes", result.classes, key="data_exclude")
    cfg = DataConfig(
        path=path, image_size=size, val_fraction=val, test_fraction=test, seed=seed,
        exclude_classes=list(exclude), drop_duplicates=drop_dups, drop_conflicts=drop_conflicts,
        **ui.csv_options(path),
    )  # fmt: skip
    try:
        cfg.validate()
        kept = data.filter_scan(result, exclude, drop_dups, drop_conflicts)
        ready = splits.readiness(kept, val, test)  # a split the layout gives is not carved
        st.caption(
            f"Each class needs at least {ready.need} images: one to train on"
            + (", one for validation" if ready.carve_val else "")
            + (", one for the test" if ready.carve_test else "")
            + (f". Too small now: {', '.join(ready.too_small)} — exclude them or set a fraction "
               "to 0." if ready.too_small else ".")
        )  # fmt: skip
        parts = data.split(kept, val, test, seed)
    except CnnlabError:
        st.session_state.pop(ui.DATA_CONFIG, None)
        raise
    for warning in kept.warnings + data.split_warnings(val, test, kept):
        if warning.startswith("the layout gives no"):
            continue  # said above the split controls, in the page's words
        st.warning(warning, icon=":material/warning:")
    rows = [{"class": c, **row, "total": sum(row.values())} for c, row in
            parts.per_class(kept).items()]  # fmt: skip
    rows.append({"class": "all", **parts.sizes(), "total": kept.n_images})
    st.dataframe(rows, hide_index=True, width="stretch")
    st.session_state[ui.DATA_CONFIG] = cfg

    labels.check_panel(path, result)

    if st.button(f"Decode and cache at {size} px", icon=":material/memory:"):
        bar, progress = ui.progress_bar("Decoding")
        start = time.perf_counter()
        images = data.load_tensors(kept.files, size, progress)
        bar.empty()
        st.success(
            f"{tuple(images.shape)} uint8 tensor ready in {time.perf_counter() - start:.1f} s; "
            "training will read it from the cache."
        )


def main() -> None:
    """Render the page."""
    ui.use_app_navigation()
    st.title("Data")
    st.caption(
        "An image folder with one sub-folder per class, train / val / test folders of those, a .zip "
        "of either, or a CSV of file names and labels."
    )
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


main()
