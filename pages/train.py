"""Train page: hyperparameters, Start/Stop, live loss and accuracy curves of a background job.

Training runs in a cnnlab.jobs thread; this page only reads job snapshots. While the job runs, a
fragment re-runs every second to redraw the curves (one point per epoch) and the progress bar, and
triggers one full rerun when the job ends so the summary appears. The job registry is
process-wide, so a reload or a second tab re-attaches to a running job.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

import streamlit as st
import torch

from cnnlab import evaluate, jobs, plots
from cnnlab.config import DEVICES, OPTIMIZERS, SCHEDULES, DataConfig, RunConfig, TrainConfig
from cnnlab.errors import CnnlabError
from pages import ui

JOB_ID = ui.TRAIN_JOB_ID  # session key: the job this session shows
STOP_WAIT_S = 3.0  # how long the Stop click waits for the job to wind down before redrawing
QUERY_JOB = "job"  # the same job id in the URL, so reloading this tab re-attaches to its own job
SUGGESTED_LR = "suggested_lr"  # session key: the LR finder's suggestion
MAX_POINTS = 300  # epochs drawn at most: Streamlit re-sends the whole figure every second
DEFAULTS = TrainConfig()
# TrainConfig fields with a widget here; backbone_lr lives on the Model page, the rest in configs
WIDGET_FIELDS = (
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "weight_decay",
    "schedule",
    "label_smoothing",
    "patience",
    "seed",
    "device",
    "class_weights",
)


@st.cache_resource
def _jobs() -> jobs.JobManager:
    return jobs.get_manager()


def _reset_defaults() -> None:
    for name in WIDGET_FIELDS:
        st.session_state[f"t_{name}"] = getattr(DEFAULTS, name)


def _use_suggested() -> None:
    st.session_state["t_lr"] = float(st.session_state[SUGGESTED_LR])


def _hyperparameters(tc: TrainConfig) -> TrainConfig:
    """Render the hyperparameter widgets (seeded from tc); returns the TrainConfig they describe."""
    for name in WIDGET_FIELDS:
        ui.seed_widget(f"t_{name}", getattr(tc, name))

    def hint(name: str) -> str:
        return f"Default: {getattr(DEFAULTS, name)}"

    c1, c2, c3 = st.columns(3)
    c1.number_input("Epochs", 1, 10_000, key="t_epochs", help=hint("epochs"))
    c2.number_input("Batch size", 1, 65_536, key="t_batch_size", help=hint("batch_size"))
    c3.number_input("Learning rate", 1e-8, 10.0, format="%.1e", key="t_lr", help=hint("lr"))
    c1.selectbox("Optimizer", OPTIMIZERS, key="t_optimizer", help=hint("optimizer"))
    c2.number_input(
        "Weight decay", 0.0, 1.0, format="%.1e", key="t_weight_decay", help=hint("weight_decay")
    )
    c3.selectbox("Schedule", SCHEDULES, key="t_schedule", help=hint("schedule"))
    c1.slider("Label smoothing", 0.0, 0.5, step=0.05, key="t_label_smoothing")
    c2.number_input("Patience (0 = off)", 0, 10_000, key="t_patience", help=hint("patience"))
    c3.number_input("Seed", 0, 2**31 - 1, key="t_seed", help=hint("seed"))
    c1.selectbox("Device", DEVICES, key="t_device", help=hint("device"))
    c2.checkbox("Class weights", key="t_class_weights", help="For imbalanced classes")
    return dataclasses.replace(tc, **{n: st.session_state[f"t_{n}"] for n in WIDGET_FIELDS})


def _lr_tools(cfg: RunConfig) -> None:
    """'Use suggested' and, once cnnlab.lr_finder exists, the LR finder."""
    c1, c2 = st.columns(2)
    suggested = st.session_state.get(SUGGESTED_LR)
    if suggested:
        c1.button(f"Use suggested lr {suggested:.1e}", on_click=_use_suggested)
    if importlib.util.find_spec("cnnlab.lr_finder") is None:
        return
    if c2.button("Find a learning rate", help="A short sweep of increasing learning rates"):
        from cnnlab import lr_finder

        try:
            with st.spinner("Sweeping learning rates…"):
                result = lr_finder.find_lr(cfg)
        except CnnlabError as exc:
            ui.show_error(exc)
            return
        st.session_state[SUGGESTED_LR] = result.suggestion
        st.session_state["_lr_result"] = result
        st.rerun()  # so the 'use suggested' button shows the new value
    result = st.session_state.get("_lr_result")
    if result is not None and hasattr(plots, "lr_finder_figure"):
        with st.expander(f"LR finder: suggestion {result.suggestion:.1e}"):
            st.plotly_chart(plots.lr_finder_figure(result))


def _start(cfg: RunConfig, gpus: int = 1) -> None:
    try:
        # Several GPUs: a child `cnnlab train --nproc-per-node N` (torch.distributed) instead.
        job = _jobs().start_distributed(cfg, gpus) if gpus > 1 else _jobs().start(cfg)
    except CnnlabError as exc:
        ui.show_error(exc)
        return
    st.session_state[JOB_ID] = job.job_id
    st.query_params[QUERY_JOB] = job.job_id
    st.session_state.pop(ui.ACTIVE_RUN_ID, None)  # set again once the new run has an id
    st.rerun()


def _thin(rows: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    """At most ~MAX_POINTS rows, always keeping the last one."""
    step = max(1, -(-len(rows) // MAX_POINTS))
    return (
        list(rows[::step]) if not rows or (len(rows) - 1) % step == 0 else [*rows[::step], rows[-1]]
    )


def _progress(snap: jobs.JobSnapshot) -> None:
    """Progress bar: data preparation first, then epoch/batch with ETA and images/s."""
    if snap.run_info is None:
        p = snap.preparing
        frac = p["done"] / max(p["total"], 1) if p else 0.0
        text = f"Preparing data: {p['stage']} {p['done']:,}/{p['total']:,}" if p else "Starting…"
        if p and p["stage"].startswith("downloading"):  # weights, before the data (bytes)
            text = f"{p['stage']}: {p['done'] / 1e6:.1f}/{p['total'] / 1e6:.1f} MB"
        st.progress(min(frac, 1.0), text=text)
        return
    planned = snap.epochs_planned or 1
    p = snap.progress
    done = len(snap.epochs)
    if p and p["epoch"] == done + 1:
        frac = (done + p["batch"] / max(p["n_batches"], 1)) / planned
        text = f"Epoch {p['epoch']}/{planned} · batch {p['batch']}/{p['n_batches']}"
        text += f" · {p['images_per_s']:,.0f} images/s"
    elif done == 0:
        frac, text = 0.0, f"Epoch 1/{planned} starting…"
    else:
        frac, text = done / planned, f"Epoch {done}/{planned} done"
    if snap.eta_s is not None:
        text += f" · ETA {snap.eta_s:,.0f} s"
    st.progress(min(frac, 1.0), text=text)


def _curves(snap: jobs.JobSnapshot) -> None:
    if not snap.epochs:
        st.caption("The curves appear after the first epoch.")
        return
    rows = _thin(snap.epochs)
    c1, c2 = st.columns(2)
    c1.plotly_chart(plots.loss_figure(rows, evaluate.diagnose(rows)), key="t_loss_chart")
    c2.plotly_chart(plots.accuracy_figure(rows), key="t_acc_chart")


@st.fragment(run_every=1)
def _live(job_id: str) -> None:
    """Redrawn every second while the job runs; one full rerun when it ends."""
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
    if snap.run_id and st.session_state.get(ui.ACTIVE_RUN_ID) != snap.run_id:
        st.session_state[ui.ACTIVE_RUN_ID] = snap.run_id
    _progress(snap)
    _curves(snap)


def _result(snap: jobs.JobSnapshot) -> None:
    """The finished job: error, or the summary with links onwards."""
    if snap.status == "failed":
        st.error(f"Training failed: {snap.error}", icon=":material/error:")
        return
    if snap.started_at is None:
        st.warning("Cancelled while queued: it never started.")
        return
    s = snap.summary or {}
    if snap.run_id:
        st.session_state[ui.ACTIVE_RUN_ID] = snap.run_id
    if snap.status == "stopped":
        st.warning(f"Stopped by you after {s.get('epochs_run', 0)} epoch(s).")
    elif s.get("stopped_early"):
        waited = s.get("epochs_run", 0) - (s.get("best_epoch") or 0)
        st.info(
            f"Early stopping: the validation loss did not improve for {waited} epochs, so "
            f"training stopped at epoch {s.get('epochs_run')}; the best epoch's weights were kept."
        )
    _curves(snap)
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Best epoch", s.get("best_epoch") or "–")
    for col, key, label in (
        (c2, "val_accuracy", "Val accuracy"),
        (c3, "test_accuracy", "Test accuracy"),
    ):
        col.metric(label, f"{s[key]:.1%}" if isinstance(s.get(key), float) else "–")
    c4.metric("Time", f"{s.get('seconds') or snap.elapsed_s:,.1f} s")
    st.caption(f"Run `{snap.run_id}` · {s.get('device', '')}")
    l1, l2 = st.columns(2)
    l1.page_link("pages/evaluate.py", label="Evaluate this run", icon=":material/analytics:")
    l2.page_link("pages/predict.py", label="Predict with it", icon=":material/image_search:")


def _current_job() -> str | None:
    """This session's job (or the one named in the URL after a reload), else the active run's
    job, else one the user re-attaches to."""
    manager = _jobs()
    candidates = (
        st.session_state.get(JOB_ID),
        st.query_params.get(QUERY_JOB),
        st.session_state.get(ui.ACTIVE_RUN_ID),
    )
    for ident in candidates:
        job = manager.get(ident) if ident else None
        if job is not None:
            st.session_state[JOB_ID] = job.job_id
            st.query_params[QUERY_JOB] = job.job_id
            return job.job_id
    running = manager.list(kind="train", active_only=True)
    if running:
        labels = {
            s.job_id: f"{s.run_id or 'starting'} ({len(s.epochs)} epochs done)" for s in running
        }
        st.info("Training is running in the background.", icon=":material/sync:")
        pick = st.selectbox("Running jobs", list(labels), format_func=labels.get, key="t_attach")
        if st.button("Attach", icon=":material/link:"):
            st.session_state[JOB_ID] = pick
            st.rerun()
    return None


def _controls(dataset: str, running: bool) -> RunConfig:
    """Hyperparameters and the LR tools; returns the RunConfig that Start would train."""
    base = st.session_state.get(ui.RUN_CONFIG) or RunConfig()
    data_cfg = st.session_state.get(ui.DATA_CONFIG) or base.data or DataConfig()
    data_cfg = dataclasses.replace(data_cfg, path=dataset)
    st.caption(
        f"Model **{base.model.name}** · {data_cfg.image_size} px · data `{dataset}` "
        "(change them on the Data, Augment and Model pages)"
    )
    with st.expander("Hyperparameters", expanded=not running):
        tc = _hyperparameters(base.train)
        st.button("Reset to defaults", on_click=_reset_defaults)
        cfg = dataclasses.replace(base, data=data_cfg, train=tc)
        st.session_state[ui.RUN_CONFIG] = cfg  # other pages (and a return visit) see these values
        _lr_tools(cfg)
    return cfg


def main() -> None:
    """Render the page."""
    ui.use_app_navigation()
    st.title("Train")
    # the job comes first: a reload (fresh session, no data chosen) must still find a running job
    job_id = _current_job()
    snap = _jobs().snapshot(job_id) if job_id else None
    running = snap is not None and snap.active
    if snap is None:
        dataset: str | None = ui.require_dataset()
    else:  # watching a job needs no data; starting another one does
        dataset = st.session_state.get(ui.DATASET_PATH)
        dataset = dataset if dataset and Path(dataset).is_dir() else None

    cfg = _controls(dataset, running) if dataset else None
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    all_gpus = n_gpus > 1 and st.checkbox(f"Use all {n_gpus} GPUs", key="t_all_gpus")
    c1, c2 = st.columns(2)
    start = c1.button(
        "Start", type="primary", icon=":material/play_arrow:", disabled=running or cfg is None
    )
    if start and cfg is not None:
        _start(cfg, n_gpus if all_gpus else 1)
    if c2.button("Stop", icon=":material/stop:", disabled=not running):
        _jobs().stop(job_id)
        # fit honours a stop within one batch and then evaluates the test split once: wait for
        # that here so this rerun shows the result instead of the next fragment tick doing it
        after = _jobs().wait(job_id, timeout=STOP_WAIT_S)
        if after is not None and after.active:
            st.toast("Stopping after the current batch…")
        st.rerun()

    if snap is None:
        return
    if running:
        _live(job_id)
    else:
        _result(snap)


main()
