"""Train page: hyperparameters, Start/Stop, live loss and accuracy curves of a background job.

Training runs in its own process (a cnnlab.jobs durable job); this page only reads job snapshots. While the job runs, the
live view (pages/live.py) polls the job's feed from the browser and redraws the progress line and
curves in place (the running training loss within the epoch, validation at epoch ends) without
re-running this script; without the feed (`streamlit run app.py`, AppTest) a fragment re-runs every
second instead. Either triggers one full rerun when the job ends so the summary appears. The job registry is process-wide, so a
reload or a second tab re-attaches to a running job. Start is off, with the reasons listed, while
cnnlab.preflight finds a problem that would make the run fail.
"""

from __future__ import annotations

import dataclasses

import streamlit as st
import torch

from cnnlab import (
    job_state,
    kfold,
    lr_finder,
    plots,
    preflight,
    progress,
    run_table,
)
from cnnlab.archive import dataset_name
from cnnlab.config import (
    DEVICES,
    OPTIMIZERS,
    RECIPES,
    SCHEDULES,
    DataConfig,
    RunConfig,
    TrainConfig,
)
from cnnlab.errors import CnnlabError
from cnnlab.events import Preparing
from pages import live, ui

JOB_ID = ui.TRAIN_JOB_ID  # session key: the job this session shows
STOP_WAIT_S = 3.0  # how long the Stop click waits for the job to wind down before redrawing
QUERY_LR = "lr"  # the LR finder's job id in the URL: a reload shows the sweep again
QUERY_JOB = "job"  # the same job id in the URL, so reloading this tab re-attaches to its own job
SUGGESTED_LR = "suggested_lr"  # session key: the LR finder's suggestion
LR_RESULT = "_lr_result"  # session key: the LR finder's whole result (for its chart)
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
    "recipe",
)
RECIPE_LABELS = {"auto": "Auto: small-data recipe when it fits", "fixed": "Fixed: exactly these"}


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
    c3.selectbox(
        "Recipe",
        RECIPES,
        format_func=RECIPE_LABELS.get,
        key="t_recipe",
        help="Auto: a model trained from scratch on a small data set gets the small-data recipe "
        "(longer schedule, residual net, stronger augmentation, MixUp) for every setting still at "
        "its default; the line under Start says what it changes",
    )
    return dataclasses.replace(tc, **{n: st.session_state[f"t_{n}"] for n in WIDGET_FIELDS})


def _start_lr_sweep(cfg: RunConfig) -> None:
    """The sweep as a background job (its id in the URL, so a reload finds it again)."""

    def sweep(_stop, emit) -> lr_finder.LRFinderResult:
        return lr_finder.find_lr(cfg, progress=lambda d, t, s: emit(Preparing(d, t, s)))

    job = ui.job_manager().start_callable(sweep, kind="lr_find", name="LR finder")
    st.query_params[QUERY_LR] = job.job_id


@st.fragment(run_every=1)
def _lr_progress(job_id: str) -> None:
    """The running sweep's progress; one full rerun when it ends (its result shows then)."""
    snap = ui.job_manager().snapshot(job_id)
    if snap is None or not snap.active:
        st.rerun()
    p = snap.preparing or {}
    done, total = int(p.get("done") or 0), int(p.get("total") or 0)
    stage = {"lr sweep": "step"}.get(p.get("stage"), p.get("stage") or "starting")
    text = f"Finding a learning rate: {stage} {done:,}/{total:,}" if total else (
        "Finding a learning rate: starting…")  # fmt: skip
    st.progress(done / total if total else 0.0, text=text)


def _lr_job() -> job_state.JobSnapshot | None:
    """The LR sweep this tab started (named in the URL), finished results taken in once."""
    job_id = st.query_params.get(QUERY_LR)
    snap = ui.job_manager().snapshot(job_id) if job_id else None
    if snap is None or snap.active:
        return snap
    if snap.status == "completed" and isinstance(snap.result, lr_finder.LRFinderResult):
        st.session_state[SUGGESTED_LR] = snap.result.suggestion
        st.session_state[LR_RESULT] = snap.result
    elif snap.status == "failed":
        st.error(f"The LR finder failed: {snap.error}", icon=":material/error:")
    del st.query_params[QUERY_LR]
    return None


def _lr_tools(cfg: RunConfig) -> None:
    """The LR finder and, once it has run, 'use suggested' and its curve; side by side."""
    running = _lr_job()
    suggested = st.session_state.get(SUGGESTED_LR)
    with st.container(horizontal=True):
        find = st.button(
            "Find a learning rate",
            help="A short sweep of increasing learning rates (in the background)",
            disabled=running is not None,
        )
        if suggested:
            st.button(f"Use suggested lr {suggested:.1e}", on_click=_use_suggested)
    if find:
        _start_lr_sweep(cfg)
        st.rerun()
    if running is not None:
        _lr_progress(running.job_id)
    result = st.session_state.get(LR_RESULT)
    if result is not None:
        with st.expander(f"LR finder: suggestion {result.suggestion:.1e}"):
            st.caption(
                "Suggested: fastai's valley rule, two thirds down the longest stretch where the "
                "loss keeps falling; the steepest point is marked too (more cautious)."
            )
            st.plotly_chart(plots.lr_finder_figure(result))


def _folds_offer(cfg: RunConfig | None) -> int:
    """On a small data set, offer K-fold cross-validation before the run; the K chosen, or 0."""
    if cfg is None:
        return 0
    try:
        counts = ui.scan_dataset(cfg.data.path).counts
    except CnnlabError:
        return 0
    if not kfold.small_data(counts):
        return 0
    c1, c2 = st.columns([3, 1])
    on = c1.checkbox(
        "Cross-validate first (small data set: one split's accuracy is noise)", key="t_cv",
        help="K quick-to-read models, each validated on another fold of train+val: mean ± sd of "
        "the val accuracy and the spread per class, then the run itself",
    )  # fmt: skip
    k = int(c2.number_input("Folds", 2, 10, 5, key="t_cv_folds", disabled=not on))
    return k if on else 0


def _start(cfg: RunConfig, gpus: int = 1, folds: int = 0) -> None:
    try:
        # Several GPUs: a child `cnnlab train --nproc-per-node N` (torch.distributed) instead.
        manager = ui.job_manager()
        if folds:

            def with_folds(stop_event, emit):
                return kfold.train_with_folds(cfg, folds, callbacks=(emit,), stop_event=stop_event)

            job = manager.start_callable(with_folds, kind="train", name=cfg.name)
        else:
            job = manager.start_distributed(cfg, gpus) if gpus > 1 else manager.start(cfg)
    except CnnlabError as exc:
        ui.show_error(exc)
        return
    st.session_state[JOB_ID] = job.job_id
    st.query_params[QUERY_JOB] = job.job_id
    st.session_state.pop(ui.ACTIVE_RUN_ID, None)  # set again once the new run has an id
    st.session_state.pop(ui.LOADED_FROM, None)
    st.rerun()


def _result(snap: job_state.JobSnapshot) -> None:
    """The finished job: error, or the summary with links onwards."""
    live.caption(snap)
    if snap.status == "failed":
        st.error(f"Training failed: {snap.error}", icon=":material/error:")
        return
    if snap.status == "interrupted":
        _interrupted(snap)
        return
    if snap.started_at is None:
        st.warning("Cancelled while queued: it never started.")
        return
    s = snap.summary or {}
    if snap.run_id:
        st.session_state[ui.ACTIVE_RUN_ID] = snap.run_id
    epochs_run = s.get("epochs_run") or 0
    if snap.status == "stopped":
        who = snap.stopped_by
        by = "you" if who in (None, ui.user().name) else who
        st.warning(f"Stopped by {by} after {progress.plural(epochs_run, 'epoch')}.")
    elif s.get("stopped_early"):
        waited = epochs_run - (s.get("best_epoch") or 0)
        st.info(
            f"Early stopping: the validation loss did not improve for "
            f"{progress.plural(waited, 'epoch')}, so training stopped at epoch {epochs_run}; "
            "the best epoch's weights were kept."
        )
    live.curves(snap)
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Kept epoch" if s.get("select") == "last" else "Best epoch",
              run_table.best_epoch_text(s))  # fmt: skip
    for col, key, label in (
        (c2, "val_accuracy", "Val accuracy"),
        (c3, "test_accuracy", "Test accuracy"),
    ):
        col.metric(label, f"{s[key]:.1%}" if isinstance(s.get(key), float) else "–")
    seconds = s.get("seconds") or snap.run_seconds  # a resumed run's total, earlier parts too
    c4.metric("Time", progress.format_seconds(seconds))
    ui.baseline_line(s)
    cv = s.get("cross_validation")
    if cv:
        st.markdown(
            f"**{cv['folds']}-fold cross-validation:** val accuracy "
            f"{cv['val_accuracy_mean']:.1%} ± {cv['val_accuracy_sd']:.1%} over {cv['n_images']} "
            "train + val images; per class (recall over the folds):"
        )
        st.dataframe([{"class": c, **{k: round(v, 3) for k, v in m.items()}}
                      for c, m in cv["per_class"].items()], hide_index=True)  # fmt: skip
    st.caption(f"Run `{snap.run_id}` · {s.get('device', '')}")
    with st.container(horizontal=True):
        st.page_link("pages/evaluate.py", label="Evaluate this run", icon=":material/analytics:")
        st.page_link("pages/predict.py", label="Predict with it", icon=":material/image_search:")


def _interrupted(snap: job_state.JobSnapshot) -> None:
    """A job whose process died (the server restarted): say so, offer to resume its run."""
    done = len(snap.epochs)
    st.warning(
        f"Interrupted after {progress.plural(done, 'epoch')}: {snap.error}",
        icon=":material/warning:",
    )
    if snap.epochs:
        live.curves(snap)
    if snap.resumable and st.button("Resume", icon=":material/resume:", key="t_resume"):
        try:
            job = ui.job_manager().resume(snap.run_id)
        except CnnlabError as exc:
            ui.show_error(exc)
            return
        st.session_state[JOB_ID] = job.job_id
        st.query_params[QUERY_JOB] = job.job_id
        st.rerun()


def _current_job() -> str | None:
    """This session's job (or the one named in the URL after a reload), else the running job of
    the active run, else one the user re-attaches to."""
    manager = ui.job_manager()
    for ident in (st.session_state.get(JOB_ID), st.query_params.get(QUERY_JOB)):
        job = manager.get(ident) if ident else None
        if job is not None:
            st.session_state[JOB_ID] = job.job_id
            st.query_params[QUERY_JOB] = job.job_id
            return job.job_id
    active = st.session_state.get(ui.ACTIVE_RUN_ID)
    job = manager.get(active) if active else None
    if job is not None and job.active:
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
    # a name given with another data set (the demo's) does not follow the user to this one
    name = base.name if base.data.path == dataset else ""
    loaded = st.session_state.get(ui.LOADED_FROM)
    if loaded:
        st.success(loaded, icon=":material/star:")
    st.caption(
        f"Start trains model **{base.model.name}** · {data_cfg.image_size} px · data "
        f"`{dataset_name(dataset)}` (change them on the Data, Augment and Model pages)"
    )
    with st.expander("Hyperparameters", expanded=not running):
        tc = _hyperparameters(base.train)
        st.button("Reset to defaults", on_click=_reset_defaults)
        cfg = dataclasses.replace(base, data=data_cfg, train=tc, name=name)
        st.session_state[ui.RUN_CONFIG] = cfg  # other pages (and a return visit) see these values
        _lr_tools(cfg)
    return cfg


def _blockers(cfg: RunConfig | None, running: bool) -> list[str]:
    """Why Start is off (empty when it is on): a run in progress, no data, preflight problems."""
    if running:
        return ["A run is in progress: stop it, or wait for it to end."]
    if cfg is None:
        return ["Choose a data set on the Data page first."]
    try:
        scan = ui.scan_dataset(cfg.data.path)
    except CnnlabError as exc:
        return [str(exc)]
    return [str(p) for p in preflight.check(cfg, scan)]


def main() -> None:
    """Render the page."""
    ui.use_app_navigation()
    st.title("Train")
    # the job comes first: a reload (fresh session, no data chosen) must still find a running job
    job_id = _current_job()
    snap = ui.job_manager().snapshot(job_id) if job_id else None
    running = snap is not None and snap.active
    if snap is None:
        dataset: str | None = ui.require_dataset()
    else:  # watching a job needs no data; starting another one does
        dataset = ui.chosen_dataset()

    cfg = _controls(dataset, running) if dataset else None
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    all_gpus = n_gpus > 1 and st.checkbox(f"Use all {n_gpus} GPUs", key="t_all_gpus")
    blockers = _blockers(cfg, running)
    folds = 0 if blockers or all_gpus else _folds_offer(cfg)
    c1, c2 = st.columns(2)
    start = c1.button(
        "Start",
        type="primary",
        icon=":material/play_arrow:",
        disabled=bool(blockers),
        help=blockers[0] if blockers else "Train with these settings in the background",
    )
    if start and cfg is not None:
        _start(cfg, n_gpus if all_gpus else 1, folds)
    stop = c2.button(
        "Stop",
        icon=":material/stop:",
        disabled=not running,
        help="Stop after the current batch; the best epoch so far is kept"
        if running
        else "Nothing is training now",
    )
    if stop:
        ui.job_manager().stop(job_id)
        # fit honours a stop within one batch and then evaluates the test split once: wait for
        # that here so this rerun shows the result instead of the next fragment tick doing it
        after = ui.job_manager().wait(job_id, timeout=STOP_WAIT_S)
        if after is not None and after.active:
            st.toast("Stopping after the current batch…")
        st.rerun()
    if cfg is not None and not running:
        scan = None if blockers else ui.scan_dataset(cfg.data.path)
        for note in preflight.run_warnings(cfg, scan):
            st.warning(note, icon=":material/warning:")
        # the recipe's line; the pretrained route is proposed on the Model page
        for note in preflight.run_notes(cfg, scan, pretrained=False) if scan else ():
            st.caption(note[:1].upper() + note[1:])
    if blockers and not running:
        st.warning(
            "**Start is off until this is fixed:**\n" + "\n".join(f"- {b}" for b in blockers),
            icon=":material/block:",
        )

    if running:
        live.watch(job_id)
    elif snap is not None:
        _result(snap)
    if not running and live.served():
        live.preload()  # the next Start's curves then draw at once, without a parse beside them


main()
