"""Home page: what cnnlab is, where the user is in the workflow, the demo path, recent runs.

"Try it on the demo digits" picks the built-in digits, a small fast model and a short training,
then opens the Train page: a newcomer presses Start and watches the curves grow.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from cnnlab import demo, evaluate, run_table, runs
from cnnlab.archive import dataset_name
from cnnlab.config import DataConfig, RunConfig
from cnnlab.device import describe_device
from cnnlab.errors import CnnlabError
from cnnlab.progress import format_seconds
from pages import ui

RECENT = 5  # runs listed under "Recent runs"
DEMO_NAME = "demo digits"  # the demo run's name (how Home finds this machine's last demo time)
# docs/performance.md times the default demo run (data cached); no benchmark file keeps the
# figure, so the page gives the order of magnitude instead of a number that can go stale
MEASURED = "seconds, as measured on an idle 2-core CPU; longer while the machine is busy"
# Widget-state prefixes of the Augment, Model and Train pages: cleared by the demo path so those
# pages show the demo's settings instead of values left from an earlier visit.
WIDGET_PREFIXES = ("a_", "m_", "t_")


def demo_config(path: str) -> RunConfig:
    """The defaults with the recipe fixed (32 px, custom CNN, 15 epochs): test accuracy ~1.0 on
    the digits in about 6 s on two CPU cores (docs/performance.md). The digits' 1,257 training
    images are past the small-data recipe's 1,000 anyway; pinned, the demo stays seconds long."""
    config = RunConfig(data=DataConfig(path=path), name=DEMO_NAME)
    config.train.recipe = "fixed"
    return config


@st.cache_resource(show_spinner=False)
def _device_label() -> str:
    return describe_device("auto")


def _start_demo() -> None:
    """Select the demo digits with the demo settings and open the Train page."""
    with st.spinner("Writing the demo digits (first time only)…"):
        path = str(demo.ensure_demo_digits())
    cfg = demo_config(path)
    ui.reset_widgets(WIDGET_PREFIXES)
    st.session_state.pop(ui.TRAIN_JOB_ID, None)  # the Train page starts fresh, not on an old job
    st.session_state[ui.DATASET_PATH] = path
    st.session_state[ui.DATA_CONFIG] = cfg.data
    st.session_state[ui.RUN_CONFIG] = cfg
    st.switch_page("pages/train.py")


def _demo_time(run_list: list[dict[str, Any]]) -> str:
    """How long the demo takes: this machine's last finished demo run, else the documented
    measurement, saying which."""
    for r in run_list:
        seconds = run_table.duration(r)
        if r.get("name") == DEMO_NAME and r.get("status") == "completed" and seconds:
            return (
                f"{format_seconds(seconds)} here last time, on {r.get('device') or 'this machine'}"
            )
    return MEASURED


def _steps(run_list: list[dict[str, Any]]) -> None:
    """The workflow as steps, each ticked when done, with a link to its page; 'Next' is the
    first step not done, so the ticks and the hint never disagree."""
    dataset = st.session_state.get(ui.DATASET_PATH)
    cfg = st.session_state.get(ui.RUN_CONFIG)
    usable = {
        r["run_id"]: r for r in ui.my_runs(evaluate.usable_runs())
    }  # runs with a best checkpoint
    active = st.session_state.get(ui.ACTIVE_RUN_ID)
    active = active if active in usable else None
    stopped = sum(r.get("status") in ("stopped", "interrupted") for r in usable.values())
    train_detail = (
        f"{len(usable)} trained run(s)"
        + (f", {stopped} stopped (resume on Runs)" if stopped else "")
        if usable
        else "no trained run yet"
    )
    steps = [
        ("pages/data.py", "1. Data", ui.dataset_ready(dataset),
         f"`{dataset_name(dataset)}`" if dataset else "choose a folder, zip or the demo"),
        ("pages/augment.py", "2. Augment", cfg is not None,
         "random crops, flips, jitter" if cfg is None else "set"),
        ("pages/model.py", "3. Model", cfg is not None,
         cfg.model.name if cfg is not None else "custom CNN or transfer"),
        ("pages/train.py", "4. Train", bool(usable), train_detail),
        ("pages/evaluate.py", "5. Evaluate", bool(active),
         f"run `{active}`" if active else "pick a trained run"),
        ("pages/predict.py", "6. Predict", bool(active), "classify new images"),
    ]  # fmt: skip
    cols = st.columns(3) + st.columns(3)  # two rows of three: labels stay whole on a laptop
    for col, (page, label, done, detail) in zip(cols, steps, strict=True):
        with col.container(border=True):
            icon = ":material/check_circle:" if done else ":material/radio_button_unchecked:"
            st.page_link(page, label=label, icon=icon)
            st.caption(detail)
    missing = next((s for s in steps if not s[2]), None)
    if missing is not None:
        st.caption(f"Next: **{missing[1][3:]}**.")


def _recent(run_list: list[dict[str, Any]]) -> None:
    st.subheader("Recent runs")
    if not run_list:
        st.caption("None yet: the demo above makes the first one.")
        return
    rows = [
        {
            "run": r["run_id"],
            "status": r.get("status", "?"),
            "model": r.get("model", ""),
            "val acc": "–" if (acc := run_table.accuracy(r)) is None else f"{acc:.1%}",
            "test acc": f"{r['test_accuracy']:.1%}"
            if isinstance(r.get("test_accuracy"), float)
            else "–",
        }
        for r in run_list[:RECENT]
    ]
    st.dataframe(rows, hide_index=True, width="stretch")
    st.page_link(
        "pages/runs.py", label="All runs: compare, open, delete", icon=":material/history:"
    )


def main() -> None:
    """Render the page."""
    ui.use_app_navigation()
    st.title("cnnlab")
    st.markdown(
        "Train image classifiers on your own labelled images, in your browser, on this machine.  \n"
        "Bring a folder with one sub-folder per class, build or pick a CNN, watch it learn, "
        "tune it, and see where it goes wrong.  \n"
        "Every run is saved with its config, so the command line can repeat it exactly."
    )
    st.caption(f"Device in use: **{_device_label()}**")
    run_list = ui.my_runs(runs.list_runs())

    with st.container(border=True):
        c1, c2 = st.columns([2, 1], vertical_alignment="center")
        c1.markdown(
            "**New here?** Train a small CNN on 1,797 handwritten digits: one click picks the "
            "data and settings, then press **Start** on the Train page and watch it learn "
            f"({_demo_time(run_list)}; the Train page shows the time left)."
        )
        if c2.button("Try it on the demo digits", type="primary", icon=":material/bolt:"):
            _start_demo()

    st.subheader("Workflow")
    _steps(run_list)
    _recent(run_list)


try:
    main()
except CnnlabError as exc:
    ui.show_error(exc)
