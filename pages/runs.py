"""Runs page: every saved run in a table, curves of several overlaid, one run opened in detail.

A run is a folder in the workspace (cnnlab.runs); this page reads them fresh on every rerun, so
runs started from the CLI show up too. The opened run can be shown on Evaluate and Predict,
watched on the Train page while a job of this server trains it, resumed (a queued job) when it
stopped or was interrupted after an epoch, shared as a demo (`cnnlab serve`), repeated from the
command line with its config.json, or deleted.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

import streamlit as st

from cnnlab import app_launcher, evaluate, job_state, plots, run_table, runs, train, workspace
from cnnlab.config import RunConfig
from cnnlab.errors import CnnlabError
from cnnlab.progress import format_seconds
from pages import ui

TRAIN_PAGE = ui.TRAIN_PAGE
CONFIRM_DELETE = "runs_confirm_delete"  # session key: the run whose deletion awaits a yes
DELETED = "runs_deleted"  # session key: the run just deleted (confirmed after the rerun)
OPEN_RUN = "runs_open"  # session key (the selectbox): the run shown in detail


def _table(summaries: list[dict[str, Any]]) -> None:
    st.dataframe(
        run_table.table_rows(summaries),
        hide_index=True,
        width="stretch",
        column_config={
            "lr": st.column_config.NumberColumn(format="%.1e"),
            "val acc %": st.column_config.NumberColumn(
                format="%.1f", help="Best epoch's; a pruned run's last epoch"
            ),
            "test acc %": st.column_config.NumberColumn(format="%.1f"),
            "duration s": st.column_config.NumberColumn(format="%.1f"),
            "created": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
        },
    )


def _compare(summaries: list[dict[str, Any]]) -> None:
    """Overlay the loss and accuracy curves of the runs the user picks."""
    st.subheader("Compare")
    # straight from the folder: a run deleted meanwhile (another tab, the CLI) just drops out
    with_curves = [
        s["run_id"]
        for s in summaries
        if runs.Run(s["run_id"], workspace.runs_dir() / s["run_id"]).metrics_path.is_file()
    ]
    if not with_curves:
        st.caption("Runs get curves once they finish an epoch.")
        return
    st.session_state.setdefault("runs_compare", run_table.compare_default(summaries))
    st.session_state["runs_compare"] = [
        r for r in st.session_state["runs_compare"] if r in with_curves
    ]
    labels = {s["run_id"]: run_table.label(s) for s in summaries}
    picked = st.multiselect(
        "Runs to compare", with_curves, format_func=labels.get, key="runs_compare"
    )
    split = st.radio("Curves of", ["validation", "train"], horizontal=True, key="runs_split")
    if not picked:
        return
    prefix = "val" if split == "validation" else "train"
    rows = {run_id: run_table.metrics_of(run_id) for run_id in picked}
    c1, c2 = st.columns(2)
    c1.plotly_chart(plots.overlay_figure(rows, f"{prefix}_loss", labels), key="runs_overlay_loss")
    c2.plotly_chart(plots.overlay_figure(rows, f"{prefix}_acc", labels), key="runs_overlay_acc")


def _live_job(run_id: str) -> job_state.JobSnapshot | None:
    """This server's job training run_id, if it is still going."""
    snap = ui.job_manager().snapshot(run_id)
    return snap if snap is not None and snap.active else None


def _follow_on_train_page(job_id: str, run_id: str, cfg: RunConfig | None) -> None:
    """Make the Train page show this job (and its data set, which that page requires)."""
    st.session_state[ui.TRAIN_JOB_ID] = job_id
    st.session_state[ui.ACTIVE_RUN_ID] = run_id
    if (
        cfg is not None
        and ui.dataset_ready(cfg.data.path)
        and not st.session_state.get(ui.DATASET_PATH)
    ):
        st.session_state[ui.DATASET_PATH] = cfg.data.path
        d = cfg.data
        st.session_state[ui.DATA_CSV] = {
            "path_column": d.path_column, "label_column": d.label_column, "images": d.images,
        }  # fmt: skip
    st.switch_page(TRAIN_PAGE)


def _resume(run_id: str, cfg: RunConfig | None) -> None:
    """Queue a job that resumes run_id (in its own process) and follow it on the Train page."""
    try:
        job = ui.job_manager().resume(run_id)
    except CnnlabError as exc:
        ui.show_error(exc)
        return
    _follow_on_train_page(job.job_id, run_id, cfg)


def _delete(run_id: str) -> None:
    """The delete button, then a confirmation step; refuses a run that is still training here."""
    if st.session_state.get(CONFIRM_DELETE) != run_id:
        if st.button("Delete run…", icon=":material/delete:", key="runs_delete"):
            st.session_state[CONFIRM_DELETE] = run_id
            st.rerun()
        return
    if _live_job(run_id) is not None:
        st.error("This run is still training: stop it on the Train page first, then delete it.")
        st.session_state.pop(CONFIRM_DELETE, None)
        return
    st.warning(
        f"Delete run `{run_id}` with its checkpoints and metrics? This cannot be undone.",
        icon=":material/warning:",
    )
    c1, c2 = st.columns(2)
    if c1.button("Yes, delete it", type="primary", key="runs_delete_yes"):
        runs.delete_run(run_id)
        st.session_state.pop(CONFIRM_DELETE, None)
        if st.session_state.get(ui.ACTIVE_RUN_ID) == run_id:
            st.session_state.pop(ui.ACTIVE_RUN_ID)
        st.session_state.pop(OPEN_RUN, None)
        st.session_state[DELETED] = run_id  # confirmed on the next run (a toast would be lost)
        st.rerun()
    if c2.button("Cancel", key="runs_delete_no"):
        st.session_state.pop(CONFIRM_DELETE, None)
        st.rerun()


def _actions(run_id: str, status: str, cfg: RunConfig | None) -> None:
    """Use / watch / resume buttons for the opened run (they wrap on a narrow window)."""
    with st.container(horizontal=True):
        if st.button(
            "Show it on Evaluate and Predict",
            icon=":material/check_circle:",
            key="runs_use",
            help="Evaluate and Predict open on this run",
        ):
            st.session_state[ui.ACTIVE_RUN_ID] = run_id
            st.toast(f"Evaluate and Predict now show {run_id}")
        live = _live_job(run_id)
        if live is not None:
            if st.button("Watch it train", icon=":material/monitoring:", key="runs_attach"):
                _follow_on_train_page(live.job_id, run_id, cfg)
        elif status == "running":
            st.caption("Running in another process (e.g. the CLI): its curves grow on refresh.")
        if runs.load_run(run_id).best_path.is_file():
            with st.popover("Share as a demo", icon=":material/share:"):
                _share(run_id)
        if status in train.RESUMABLE:
            if not runs.load_run(run_id).last_path.is_file():
                st.caption("It never finished an epoch (no last.pt): nothing to resume from.")
            elif st.button("Resume training", icon=":material/resume:", key="runs_resume"):
                _resume(run_id, cfg)


def _share(run_id: str) -> None:
    """The command that serves this run alone as a demo (model card, camera, predict API)."""
    st.markdown(
        "Serve this run alone, without the rest of the lab: visitors see its model card and can "
        "drop or photograph images; programs can call its predict API."
    )
    st.code(app_launcher.serve_command(run_id), language="bash")
    st.caption(
        "Run it on this machine; open http://localhost:8502. Add `--address 0.0.0.0` to let "
        "others on the network in (docs/serving.md)."
    )


def _diagnosis_text(diagnosis: evaluate.Diagnosis) -> None:
    for f in diagnosis.findings:  # one: the verdict
        st.markdown(f"**{diagnosis.label}:** {f.message}  \n→ {f.suggestion}")


def _repeat(run_id: str, cfg: RunConfig | None) -> None:
    """The config as JSON, a download button, and the CLI line that repeats the run."""
    st.markdown("**Repeat it from the command line**")
    if cfg is None:
        st.caption("This run's config.json cannot be read.")
        return
    text = cfg.to_json()
    st.download_button(
        "Download config.json",
        text,
        file_name="config.json",
        mime="application/json",
        icon=":material/download:",
        key="runs_download",
    )
    st.code(f"cnnlab train {shlex.quote(cfg.data.path or 'DATA')} --config config.json", "bash")
    with st.expander("config.json"):
        st.json(json.loads(text))


def _open(summaries: list[dict[str, Any]]) -> None:
    """The detail view of one run: summary, actions, curves, diagnosis, config."""
    st.subheader("Open a run")
    ids = [s["run_id"] for s in summaries]
    active = st.session_state.get(ui.ACTIVE_RUN_ID)
    if st.session_state.get(OPEN_RUN) not in ids:
        st.session_state[OPEN_RUN] = active if active in ids else ids[0]
    labels = {
        s["run_id"]: f"{run_table.label(s)} · {s.get('model', '?')} · {s.get('status')}"
        for s in summaries
    }
    run_id = st.selectbox("Run", ids, format_func=labels.get, key=OPEN_RUN)
    summary = next(s for s in summaries if s["run_id"] == run_id)
    status = summary.get("status", "?")
    cfg = run_table.config_of(run_id)

    with st.container(horizontal=True):  # metrics wrap instead of being cut on a narrow window
        st.metric("Status", status)
        st.metric("Best epoch", run_table.best_epoch_text(summary))
        for key, label in (("val_accuracy", "Val accuracy"), ("test_accuracy", "Test accuracy")):
            value = run_table.accuracy(summary, key)
            st.metric(label, f"{value:.1%}" if value is not None else "–")
        seconds = run_table.duration(summary)
        st.metric("Duration", format_seconds(seconds) if seconds is not None else "–")
    if summary.get("damage"):
        st.error(
            f"This run folder is damaged: {summary['damage']}. Other runs are not affected; "
            "delete it below, or repair the file by hand.",
            icon=":material/broken_image:",
        )
    elif summary.get("error"):
        st.error(f"This run failed: {summary['error']}", icon=":material/error:")
    _actions(run_id, status, cfg)

    rows = run_table.metrics_of(run_id)
    if rows:
        diagnosis = evaluate.diagnose(rows)
        c1, c2 = st.columns(2)
        c1.plotly_chart(plots.loss_figure(rows, diagnosis), key="runs_loss")
        c2.plotly_chart(plots.accuracy_figure(rows), key="runs_acc")
        st.markdown("**Diagnosis**")
        _diagnosis_text(diagnosis)
    else:
        st.caption("No finished epoch yet: no curves to show.")
    _repeat(run_id, cfg)
    with st.expander("summary.json"):
        st.json(summary)
    _delete(run_id)


def main() -> None:
    """Render the page."""
    ui.use_app_navigation()
    st.title("Runs")
    summaries = ui.my_runs(runs.list_runs())
    deleted_last = not summaries and st.session_state.pop(DELETED, None)
    if deleted_last:
        st.success(f"Deleted run `{deleted_last}`.", icon=":material/delete:")
    if not summaries:
        st.info("No runs yet: train a model and it appears here.", icon=":material/info:")
        st.page_link(TRAIN_PAGE, label="Go to the Train page", icon=":material/model_training:")
        st.page_link(
            "pages/home.py", label="Or try the demo digits from Home", icon=":material/home:"
        )
        return
    deleted = st.session_state.pop(DELETED, None)
    if deleted:
        st.success(f"Deleted run `{deleted}`.", icon=":material/delete:")
    st.caption(f"{len(summaries)} run(s) in `{workspace.runs_dir()}`, newest first.")
    damaged = [s for s in summaries if s.get("status") == "damaged"]
    if damaged:
        st.warning(
            "Damaged run folder(s): "
            + "; ".join(f"`{s['run_id']}`: {s.get('damage')}" for s in damaged),
            icon=":material/broken_image:",
        )
    _table(summaries)
    _compare(summaries)
    _open(summaries)


try:
    main()
except CnnlabError as exc:
    ui.show_error(exc)
