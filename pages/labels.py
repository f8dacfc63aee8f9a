"""Label-fix widgets shared by the Data and Evaluate pages (a helper module, not a page).

Every click goes to cnnlab.overrides (a file in the workspace); the user's images and CSV are
never changed. The page's scan cache is keyed by the overrides file, so the next rerun shows the fix.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from cnnlab import kfold, label_check, learning_curve, overrides, plots
from cnnlab.config import RunConfig
from cnnlab.errors import CnnlabError
from cnnlab.scan_result import ScanResult
from pages import ui

REPORT = "_label_check"  # session key: (data set path, check-labels report)
CURVE = "_learning_curve"  # session key: (run id, learning-curve report)
SHOWN = 40  # suspects drawn with a thumbnail and fix buttons


def _relabel(path: str, rel: str, cls: str) -> None:
    overrides.relabel(path, rel, cls)
    st.toast(f"{rel} relabelled {cls} (the file is unchanged)")


def _exclude(path: str, rel: str) -> None:
    overrides.exclude(path, rel)
    st.toast(f"{rel} left out (the file is unchanged)")


def _undo(path: str) -> None:
    last = overrides.undo(path)
    if last:
        st.toast(f"undone: {last['action']} {last['path']}")


def fix_buttons(path: str, rel: str, suggested: str, key: str) -> None:
    """'→ class' and 'Exclude' buttons for one image of the data set at path."""
    with st.container(horizontal=True):
        st.button(f"→ {suggested}", key=f"{key}_r", on_click=_relabel, args=(path, rel, suggested),
                  help=f"Relabel as {suggested} (an override; the file stays where it is)")  # fmt: skip
        st.button("Exclude", key=f"{key}_x", on_click=_exclude, args=(path, rel),
                  help="Leave this image out of scans and runs (the file stays)")  # fmt: skip


def fixes_bar(path: str, result: ScanResult | None = None) -> None:
    """How many images are relabelled / excluded, with Undo, Clear and the corrected CSV."""
    ov = overrides.load(path)
    if not ov and not ov.history:
        return
    st.markdown(
        f"**Label fixes:** {len(ov.relabel)} relabelled, {len(ov.exclude)} excluded "
        f"(kept in the workspace; your files are unchanged)"
    )
    with st.container(horizontal=True):
        st.button("Undo last fix", icon=":material/undo:", key="lf_undo", on_click=_undo,
                  args=(path,), disabled=not ov.history)  # fmt: skip
        st.button("Clear all fixes", key="lf_clear", on_click=overrides.clear, args=(path,))
        if result is not None:
            st.download_button("Download corrected CSV", overrides.corrected_csv(result),
                               f"{Path(path).name}-corrected.csv", mime="text/csv",
                               key="lf_csv")  # fmt: skip


def _check_config(path: str) -> RunConfig:
    """The session's run config on this data set, made quick (16 px, 5 epochs, small CNN)."""
    cfg = ui.session_run_config()
    if cfg.data.path != path:
        cfg.data.path = path
    return kfold.quick(cfg)


def check_panel(path: str, result: ScanResult) -> None:
    """The label check: K quick models, then the suspects with one-click fixes."""
    st.subheader("Label check")
    st.caption(
        "K quick models, each trained without one fold, give every image an out-of-fold "
        "prediction; confident learning (cleanlab) ranks the labels they doubt, and copies with "
        "different labels join them. Stopped midway, the next check reuses the finished folds."
    )
    c1, c2 = st.columns([1, 3])
    folds = int(c1.number_input("Folds", 2, 10, 5, key="lc_folds"))
    if c2.button("Check labels", icon=":material/fact_check:", key="lc_run"):
        bar = st.progress(0.0, text="Checking labels")

        def show(event) -> None:
            if event.kind == "FoldEnd":
                bar.progress(event.fold / event.folds, text=f"fold {event.fold}/{event.folds}: "
                             f"held-out accuracy {event.accuracy:.1%}")  # fmt: skip

        try:
            report = label_check.check_labels(_check_config(path), folds, callbacks=[show])
        except CnnlabError as exc:
            ui.show_error(exc)
            return
        bar.empty()
        st.session_state[REPORT] = (path, report)
    saved = st.session_state.get(REPORT)
    if not saved or saved[0] != path:
        return
    report = saved[1]
    ov = overrides.load(path)
    done = set(ov.relabel) | set(ov.exclude)
    open_ = [s for s in report["suspects"] if s["path"] not in done]
    st.markdown(
        f"**{len(report['suspects'])} suspects** in {report['n_images']:,} images "
        f"(out-of-fold accuracy {report['oof_accuracy']:.1%}, {report['folds']} folds, "
        f"{report['seconds']:.0f} s); {len(report['suspects']) - len(open_)} fixed, most likely "
        "errors first:"
    )
    cols = st.columns(4)
    for n, s in enumerate(open_[:SHOWN]):
        with cols[n % 4]:
            file = result.root / s["path"]
            if file.is_file():
                st.image(ui.thumbnail(str(file), file.stat().st_mtime_ns), width=72)
            st.caption(f"`{s['path']}` labelled **{s['given']}**, looks like **{s['suggested']}** "
                       f"({s['confidence']:.0%})")  # fmt: skip
            fix_buttons(path, s["path"], s["suggested"], key=f"lc_{s['path']}")


def curve_panel(run_id: str, config: RunConfig) -> None:
    """The learning-curve button and chart for a run's config (Evaluate page)."""
    st.caption(
        "Trains quick models on 10 %, 25 %, 50 % and all of this run's training split and scores "
        "each on the same val split: is accuracy still rising with more images per class?"
    )
    if st.button("Draw the learning curve", icon=":material/trending_up:", key="ev_curve"):
        bar = st.progress(0.0, text="Learning curve")

        def show(event) -> None:
            if event.kind == "FoldEnd":
                bar.progress(event.fold / event.folds,
                             text=f"step {event.fold}/{event.folds}")  # fmt: skip

        try:
            report = learning_curve.learning_curve(kfold.quick(config), callbacks=[show])
        except CnnlabError as exc:
            ui.show_error(exc)
            return
        bar.empty()
        st.session_state[CURVE] = (run_id, report)
    saved = st.session_state.get(CURVE)
    if saved and saved[0] == run_id:
        report = saved[1]
        st.markdown(f"**{report['reading'].capitalize()}.**")
        st.plotly_chart(plots.learning_curve_figure(report))
