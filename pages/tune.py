"""Tune page: an Optuna study around the same training loop, watched live, best trial -> Train.

Choose what to search (a checkbox per dimension: searched range/choices vs a fixed value), the
sampler, pruner and budget; the study runs as a cnnlab.jobs background job and this page reads the
study's storage once a second in a fragment (trials table, history, per-epoch values with the
pruned trials, importances, parallel coordinates). Trials are ordinary runs in the workspace.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from cnnlab import jobs, models, plots, tune
from cnnlab.config import OPTIMIZERS, STRATEGIES, TrainConfig
from cnnlab.errors import CnnlabError
from cnnlab.search_space import Choices, Range, SearchSpace
from pages import ui

JOB_ID = "tune_job_id"  # session key: the tuning job this session shows
STUDY = "tune_study"  # session key: (study name, storage URL or None) shown below the controls
# dimension -> (label, kind, searched default, fixed default, options for choices)
DIMS: dict[str, tuple[str, str, Any, Any, tuple]] = {
    "lr": ("Learning rate", "log", (1e-4, 1e-1), 3e-3, ()),
    "batch_size": ("Batch size", "choices", (32, 64, 128), 64, (16, 32, 64, 128, 256)),
    "optimizer": ("Optimizer", "choices", ("adamw", "sgd"), "adamw", OPTIMIZERS),
    "weight_decay": ("Weight decay", "log", (1e-6, 1e-2), 5e-4, ()),
    "dropout": ("Dropout", "float", (0.0, 0.5), 0.2, ()),
    "n_blocks": ("Conv blocks", "int", (1, 2), 2, ()),
    "base_width": ("First block width", "choices", (8, 16), 16, (8, 16, 32, 64)),
    "strategy": ("Transfer strategy", "choices", STRATEGIES, "fine_tune", STRATEGIES),
}


@st.cache_resource
def _jobs() -> jobs.JobManager:
    return jobs.get_manager()


@st.cache_resource
def _studies() -> dict[str, tuple[str, str | None]]:
    """job id -> (study name, storage), shared by sessions so a reload re-attaches to a study."""
    return {}


def _dims_for(model: str) -> list[str]:
    """The dimensions that apply to a model (shape for custom CNNs, strategy for transfer)."""
    names = ["lr", "batch_size", "optimizer", "weight_decay", "dropout"]
    if model in ("custom",):
        names += ["n_blocks", "base_width"]
    elif models.is_transfer(model):
        names.append("strategy")
    return names


def _dimension(name: str) -> Any:
    """One row: 'search it' checkbox, then a range / choices, or one fixed value."""
    label, kind, searched, fixed, options = DIMS[name]
    c1, c2, c3 = st.columns([1.2, 1, 1])
    on = c1.checkbox(f"Search {label.lower()}", value=True, key=f"tn_{name}_on")
    if kind == "choices":
        if on:
            picked = c2.multiselect(label, options, default=list(searched), key=f"tn_{name}_ch")
            return Choices(tuple(picked))
        return c2.selectbox(label, options, index=options.index(fixed), key=f"tn_{name}_fix")
    fmt = "%.1e" if kind == "log" else ("%d" if kind == "int" else "%.2f")
    cast = int if kind == "int" else float
    if not on:
        return c2.number_input(label, value=cast(fixed), format=fmt, key=f"tn_{name}_fix")
    low = c2.number_input(f"{label} from", value=cast(searched[0]), format=fmt, key=f"tn_{name}_lo")
    high = c3.number_input("to", value=cast(searched[1]), format=fmt, key=f"tn_{name}_hi")
    return Range(low, high, log=kind == "log")


def _controls(dataset: str) -> dict[str, Any] | None:
    """Model, search space, sampler, pruner, budget; returns tune() arguments, None on a bad form."""
    c1, c2, c3 = st.columns(3)
    model = c1.selectbox("Model", models.list_models(), key="tn_model")
    epochs = c2.number_input("Epochs per trial", 1, 200, value=tune.TUNE_EPOCHS, key="tn_epochs")
    size = c3.number_input("Image size (px)", 8, 512, value=tune.TUNE_IMAGE_SIZE, key="tn_size")
    with st.expander("What to search", expanded=True):
        space = SearchSpace(**dict.fromkeys(DIMS))
        for name in _dims_for(model):
            setattr(space, name, _dimension(name))
    c1, c2, c3, c4 = st.columns(4)
    sampler = c1.radio("Sampler", tune.SAMPLERS, format_func=str.upper, key="tn_sampler")
    pruner = c2.radio("Pruner", tune.PRUNERS, key="tn_pruner")
    trials = c3.number_input("Trials", 1, 10_000, value=8, key="tn_trials")
    timeout = c4.number_input("Time limit (s, 0 = none)", 0, 10**6, value=0, key="tn_timeout")
    try:
        base = tune.base_config(dataset, model, int(size), int(epochs))
        space.validate(model)
    except CnnlabError as exc:
        ui.show_error(exc)
        return None
    c1, c2 = st.columns(2)
    name = c1.text_input("Study name", value=tune.default_study_name(base), key="tn_study")
    storage = c2.text_input(
        "Storage URL",
        placeholder="SQLite file in the workspace",
        type="password",  # a PostgreSQL/MySQL URL may hold a password: never show it
        help="e.g. postgresql://user:password@host/db to share a study between machines",
    )
    return {
        "base": base,
        "space": space,
        "study_name": name.strip() or tune.default_study_name(base),
        "storage": storage.strip() or None,
        "sampler": sampler,
        "pruner": pruner,
        "n_trials": int(trials),
        "timeout": float(timeout) or None,
    }


def _start(args: dict[str, Any]) -> None:
    def run(stop_event: threading.Event, emit: jobs.Emit) -> dict[str, Any]:
        study = tune.tune(**args, stop_event=stop_event, on_trial=emit)
        return tune.tune_summary(study)

    job = _jobs().start_callable(run, kind="tune", name=args["study_name"])
    _studies()[job.job_id] = (args["study_name"], args["storage"])
    st.session_state[JOB_ID] = job.job_id
    st.session_state[STUDY] = (args["study_name"], args["storage"])
    st.rerun()


def _train_best(study) -> None:
    """Hand the best trial's config to the Train page (its widgets re-seed from it)."""
    cfg = tune.best_config(study)
    st.session_state[ui.RUN_CONFIG] = cfg
    st.session_state[ui.DATA_CONFIG] = cfg.data
    for name in TrainConfig.__dataclass_fields__:  # the Train page's widget keys, stale now
        st.session_state.pop(f"t_{name}", None)
    st.switch_page("pages/train.py")


def _table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    flat = [
        {
            "trial": r["number"],
            "state": r["state"],
            "val acc": r["value"],
            "epochs": r["epochs"],
            "seconds": None if r["duration"] is None else round(r["duration"], 1),
            **r["params"],
            "run": r["run_id"],
            "error": r["error"],
        }
        for r in rows
    ]
    return pd.DataFrame(flat).set_index("trial")


def _study_view(name: str, storage: str | None, live: bool) -> None:
    """Counts, the trials table and the four charts of one study."""
    try:
        study = tune.load_study(name, storage)
    except CnnlabError:
        st.caption("Preparing the data; the first trial starts in a moment…")
        return
    summary = tune.tune_summary(study)
    c1, c2, c3, c4, c5 = st.columns(5)
    c1.metric("Trials", summary["n_trials"])
    c2.metric("Complete", summary["n_complete"])
    c3.metric("Pruned", summary["n_pruned"])
    c4.metric("Failed", summary["n_failed"])
    best = summary["best_value"]
    c5.metric("Best val acc", "–" if best is None else f"{best:.1%}")
    if not summary["trials"]:
        return
    st.dataframe(_table(summary["trials"]), width="stretch")
    tabs = st.tabs(["History", "Per epoch", "Importance", "Parallel coordinates"])
    tabs[0].plotly_chart(plots.tune_history_figure(study), key="tn_hist")
    tabs[1].plotly_chart(plots.tune_intermediate_figure(study), key="tn_inter")
    importance = plots.tune_importance_figure(study)
    if importance is None:
        tabs[2].caption("Importances need at least two complete trials that differ.")
    else:
        tabs[2].plotly_chart(importance, key="tn_imp")
    tabs[3].plotly_chart(plots.tune_parallel_figure(study), key="tn_par")
    if best is not None and not live:
        st.caption(f"Best: trial {summary['best_trial']} (run `{summary['best_run_id']}`)")
        if st.button("Train the best configuration", type="primary", icon=":material/star:"):
            _train_best(study)


@st.fragment(run_every=1)
def _live(job_id: str, name: str, storage: str | None) -> None:
    """Redrawn every second while the study runs; one full rerun when it ends."""
    snap = _jobs().snapshot(job_id)
    if snap is None or not snap.active:
        st.rerun()
    if snap.status == "queued":
        st.info(
            f"Queued, position {snap.queue_position}: starts when a running job ends "
            "(Stop cancels it).",
            icon=":material/hourglass_top:",
        )
        return
    st.info(f"Study **{name}** is running ({snap.elapsed_s:,.0f} s).", icon=":material/sync:")
    _study_view(name, storage, live=True)


def main() -> None:
    """Render the page."""
    ui.use_app_navigation()
    st.title("Tune")
    job_id = st.session_state.get(JOB_ID)
    if job_id is None:  # a reload or another tab: re-attach to a running study
        running_jobs = _jobs().list(kind="tune", active_only=True)
        if running_jobs and running_jobs[0].job_id in _studies():
            job_id = st.session_state[JOB_ID] = running_jobs[0].job_id
            st.session_state[STUDY] = _studies()[job_id]
    snap = _jobs().snapshot(job_id) if job_id else None
    running = snap is not None and snap.active
    dataset = st.session_state.get(ui.DATASET_PATH)
    if not running:
        dataset = ui.require_dataset()
    # the form stays while a study runs, so its values are still there when it ends
    args = _controls(dataset) if dataset and Path(dataset).is_dir() else None
    c1, c2 = st.columns(2)
    idle = args is not None and not running
    if c1.button("Start", type="primary", icon=":material/play_arrow:", disabled=not idle):
        _start(args)
    if c2.button("Stop", icon=":material/stop:", disabled=not running):
        _jobs().stop(job_id)
        st.toast("Stopping: the running trial ends after its current batch…")
    shown = st.session_state.get(STUDY)
    if running:
        _live(job_id, *shown)
        return
    if snap is not None and snap.status == "failed":
        st.error(f"The study failed: {snap.error}", icon=":material/error:")
    if shown:
        _study_view(*shown, live=False)


main()
