"""Tune page: an Optuna study around the same training loop, watched live, best trial -> Train.

Choose what to search (a checkbox per dimension: searched range/choices vs a fixed value), the
sampler, pruner and budget; the study runs as a cnnlab.jobs background job and this page reads the
study's storage once a second in a fragment (trials table, history, per-epoch values with the
pruned trials, importances, parallel coordinates). Trials are ordinary runs in the workspace.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import pandas as pd
import streamlit as st

from cnnlab import jobs, models, plots, preflight, progress, study_storage, tune, users
from cnnlab.config import OPTIMIZERS, STRATEGIES, DataConfig, ModelConfig, TrainConfig
from cnnlab.errors import CnnlabError
from cnnlab.search_space import Choices, Range, SearchSpace
from cnnlab.study_storage import STORAGES_ENV, safe_url
from pages import ui

JOB_ID = "tune_job_id"  # session key: the tuning job this session shows
STUDY = "tune_study"  # session key: (study name, storage URL or None) shown below the controls
_TRAIN, _MODEL = TrainConfig(), ModelConfig()
# dimension -> (label, kind, fixed value when not searched, options for choices); the searched
# ranges and which dimensions a model has come from SearchSpace.default_for
DIMS: dict[str, tuple[str, str, Any, tuple]] = {
    "lr": ("Learning rate", "log", _TRAIN.lr, ()),
    "batch_size": ("Batch size", "choices", _TRAIN.batch_size, (16, 32, 64, 128, 256)),
    "optimizer": ("Optimizer", "choices", _TRAIN.optimizer, OPTIMIZERS),
    "weight_decay": ("Weight decay", "log", _TRAIN.weight_decay, ()),
    "dropout": ("Dropout", "float", _MODEL.dropout, ()),
    "n_blocks": ("Conv blocks", "int", len(tune.TUNE_CHANNELS), ()),
    "base_width": ("First block width", "choices", tune.TUNE_CHANNELS[0], (8, 16, 32, 64)),
    "strategy": ("Transfer strategy", "choices", _MODEL.strategy, STRATEGIES),
}


@st.cache_resource
def _studies() -> dict[str, tuple[str, str | None]]:
    """job id -> (study name, storage), shared by sessions so a reload re-attaches to a study."""
    return {}


def _dimension(name: str, searched: Range | Choices) -> Any:
    """One row: 'search it' checkbox, then a range / choices, or one fixed value."""
    label, kind, fixed, options = DIMS[name]
    c1, c2, c3 = st.columns([1.2, 1, 1])
    on = c1.checkbox(f"Search {label.lower()}", value=True, key=f"tn_{name}_on")
    if kind == "choices":
        if on:
            default = [v for v in searched.values if v in options]
            picked = c2.multiselect(label, options, default=default, key=f"tn_{name}_ch")
            return Choices(tuple(picked))
        return c2.selectbox(label, options, index=options.index(fixed), key=f"tn_{name}_fix")
    fmt = "%.1e" if kind == "log" else ("%d" if kind == "int" else "%.2f")
    cast = int if kind == "int" else float
    if not on:
        return c2.number_input(label, value=cast(fixed), format=fmt, key=f"tn_{name}_fix")
    low = c2.number_input(
        f"{label} from", value=cast(searched.low), format=fmt, key=f"tn_{name}_lo"
    )
    high = c3.number_input("to", value=cast(searched.high), format=fmt, key=f"tn_{name}_hi")
    return Range(low, high, log=kind == "log")


def _controls(dataset: str) -> dict[str, Any] | None:
    """Model, search space, sampler, pruner, budget; returns tune() arguments, None on a bad form."""
    c1, c2, c3 = st.columns(3)
    model = c1.selectbox("Model", models.list_models(), key="tn_model")
    epochs = c2.number_input("Epochs per trial", 1, 200, value=tune.TUNE_EPOCHS, key="tn_epochs")
    chosen = st.session_state.get(ui.DATA_CONFIG)
    chosen = chosen if isinstance(chosen, DataConfig) and chosen.path == dataset else None
    # the Data page's image size, else a run's default: trials then compare settings at the size
    # a run will use (tune's CLI default of 16 px showed here while the data was at 32 px)
    default_size = (chosen or DataConfig(path=dataset)).image_size
    size = c3.number_input("Image size (px)", 8, 512, value=default_size, key="tn_size")
    with st.expander("What to search", expanded=True):
        defaults = SearchSpace.default_for(model)  # the dimensions this model has, and ranges
        space = SearchSpace(**dict.fromkeys(DIMS))
        for name in DIMS:
            if getattr(defaults, name) is not None:
                setattr(space, name, _dimension(name, getattr(defaults, name)))
    c1, c2, c3, c4 = st.columns(4)
    sampler = c1.radio("Sampler", tune.SAMPLERS, format_func=str.upper, key="tn_sampler")
    pruner = c2.radio("Pruner", tune.PRUNERS, key="tn_pruner")
    trials = c3.number_input("Trials", 1, 10_000, value=8, key="tn_trials")
    timeout = c4.number_input("Time limit (s, 0 = none)", 0, 10**6, value=0, key="tn_timeout")
    try:
        base = tune.base_config(dataset, model, int(size), int(epochs))
        if chosen is not None:
            # the Data page's choices (CSV columns, excluded classes, fractions) at tuning's size
            base.data = dataclasses.replace(chosen, image_size=int(size))
        base.validate()
        space.validate(model)
    except CnnlabError as exc:
        ui.show_error(exc)
        return None
    problems = preflight.check(base, ui.scan_dataset(dataset))
    if problems:
        st.warning(
            "**Start is off until this is fixed:**\n" + "\n".join(f"- {p}" for p in problems),
            icon=":material/block:",
        )
        return None
    c1, c2 = st.columns(2)
    name = c1.text_input("Study name", value=tune.default_study_name(base), key="tn_study")
    # never a typed path or URL: the server would open (and create) whatever a visitor names
    storage = c2.selectbox(
        "Storage",
        [None, *study_storage.configured_storages()],
        format_func=lambda u: "SQLite file in the workspace" if u is None else safe_url(u),
        key="tn_storage",
        help=f"Shared storages (e.g. PostgreSQL) are offered by the operator ({STORAGES_ENV})",
    )
    return {
        "base": base,
        "space": space,
        # with users, stored under the user's name: nobody reaches another's study by its name
        "study_name": users.own_study(ui.user(), name.strip() or tune.default_study_name(base)),
        "storage": storage,
        "sampler": sampler,
        "pruner": pruner,
        "n_trials": int(trials),
        "timeout": float(timeout) or None,
    }


def _start(args: dict[str, Any]) -> None:
    study_storage.visitor_storage(args["storage"])  # the one rule, checked again at the door

    def run(stop_event: threading.Event, emit: jobs.Emit) -> dict[str, Any]:
        study = tune.tune(tune.TuneConfig(**args), stop_event=stop_event, on_trial=emit)
        return tune.tune_summary(study)

    job = ui.job_manager().start_callable(run, kind="tune", name=args["study_name"])
    _studies()[job.job_id] = (args["study_name"], args["storage"])
    st.session_state[JOB_ID] = job.job_id
    st.session_state[STUDY] = (args["study_name"], args["storage"])
    st.rerun()


def _train_best(study, summary: dict[str, Any]) -> None:
    """Hand the best trial's config to the Train page with the full epoch budget, say so there,
    and clear the Train page's previous result."""
    cfg = tune.best_config(study)
    trial_epochs = cfg.train.epochs
    cfg.train.epochs = max(TrainConfig().epochs, trial_epochs)
    cfg.name = f"{study.study_name} best (trial {summary['best_trial']})"
    st.session_state[ui.RUN_CONFIG] = cfg
    st.session_state[ui.DATA_CONFIG] = cfg.data
    ui.reset_widgets("t_", TrainConfig.__dataclass_fields__)  # the Train page's, stale now
    st.session_state.pop(ui.TRAIN_JOB_ID, None)  # the Train page starts fresh, not on a result
    st.query_params.pop("job", None)
    st.session_state[ui.LOADED_FROM] = (
        f"Loaded from trial {summary['best_trial']} of study **{study.study_name}** (val "
        f"accuracy {summary['best_value']:.1%}): its settings, with "
        f"{progress.plural(cfg.train.epochs, 'epoch')} instead of the trial's "
        f"{trial_epochs}. Press Start to train it."
    )
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
    figures = (
        (plots.tune_history_figure(study), "tn_hist", "once the first trial completes"),
        (plots.tune_intermediate_figure(study), "tn_inter", "after the first trial's epoch"),
        (plots.tune_importance_figure(study), "tn_imp", "with two complete trials that differ"),
        (plots.tune_parallel_figure(study), "tn_par", "once the first trial completes"),
    )
    for tab, (fig, key, when) in zip(tabs, figures, strict=True):
        if fig is None:
            tab.caption(f"This chart appears {when}.")
        else:
            tab.plotly_chart(fig, key=key)
    if best is not None and not live:
        st.caption(f"Best: trial {summary['best_trial']} (run `{summary['best_run_id']}`)")
        if st.button("Train the best configuration", type="primary", icon=":material/star:"):
            _train_best(study, summary)


@st.fragment(run_every=1)
def _live(job_id: str, name: str, storage: str | None) -> None:
    """Redrawn every second while the study runs; one full rerun when it ends."""
    snap = ui.job_manager().snapshot(job_id)
    if snap is None or not snap.active:
        st.rerun()
    if ui.show_queued(snap):
        return
    elapsed = progress.format_seconds(snap.elapsed_s)
    st.info(f"Study **{name}** is running ({elapsed}).", icon=":material/sync:")
    _study_view(name, storage, live=True)


def main() -> None:
    """Render the page."""
    ui.use_app_navigation()
    st.title("Tune")
    job_id = st.session_state.get(JOB_ID)
    if job_id is None:  # a reload or another tab: re-attach to a running study
        running_jobs = ui.job_manager().list(kind="tune", active_only=True)
        if running_jobs and running_jobs[0].job_id in _studies():
            job_id = st.session_state[JOB_ID] = running_jobs[0].job_id
            st.session_state[STUDY] = _studies()[job_id]
    snap = ui.job_manager().snapshot(job_id) if job_id else None
    running = snap is not None and snap.active
    dataset = st.session_state.get(ui.DATASET_PATH)
    if not running:
        dataset = ui.require_dataset()
    # the form stays while a study runs, so its values are still there when it ends
    args = _controls(dataset) if ui.dataset_ready(dataset) else None
    c1, c2 = st.columns(2)
    idle = args is not None and not running
    why = (
        "A study is running: stop it, or wait for it to end"
        if running
        else "Fix the problems shown above first"
        if args is None
        else "Run the trials in the background"
    )
    if c1.button(
        "Start", type="primary", icon=":material/play_arrow:", disabled=not idle, help=why
    ):
        try:
            _start(args)
        except CnnlabError as exc:
            ui.show_error(exc)
    stop_help = "Stop after the running trial's current batch" if running else "No study runs"
    if c2.button("Stop", icon=":material/stop:", disabled=not running, help=stop_help):
        ui.job_manager().stop(job_id)
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
