"""The Train page's live view of a running job, and the charts of a finished one (a helper module,
not a page).

While a job trains, a Streamlit fragment re-running every second makes the browser re-render the
page each time; on a small machine that CPU comes out of training (docs/performance.md). Here the
browser polls a JSON route instead (`routes()`, mounted by server.py through `st.App`) and updates
the progress bar and Plotly charts in place (live_chart.js, a components.v2 component). The page
re-runs only when the job's phase changes. Under a plain `streamlit run app.py` or AppTest the
route does not exist (`served()` is False) and a fragment redraws every second instead. Both paths
draw the same figures from one cache with one redraw throttle: cnnlab.live_feed's.
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path

import plotly
import plotly.utils
import streamlit as st
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from cnnlab import evaluate, jobs, live_feed, plots, progress, users
from cnnlab.job_state import JobSnapshot
from pages import ui

INTERVAL_MS = 1000  # how often a watching page polls
API = "api/cnnlab"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
FALLBACK = "_live_fallback"  # session key: the route was unreachable, use the fragment instead
FINISHED = "_t_figures"  # session key: a finished job's figures, with what they were drawn from
CAPTIONS = "_t_run_caption"  # session key: run id -> its caption (read once per run)
_served = False
# The page hands the browser a feed URL signed for one job, after checking the visitor may see
# it; the route answers only signed URLs (any sign-in mode) and, with a trusted user header,
# only that user's (or an admin's) jobs. The key is the workspace's (live_feed.sign).

HTML = """
<div class="cnnlab-live">
  <div class="cnnlab-live-caption" data-part="caption" data-testid="cnnlab-live-caption"></div>
  <div class="cnnlab-live-queued" data-part="queued" hidden></div>
  <div class="cnnlab-live-text" data-part="text" data-testid="cnnlab-live-progress"></div>
  <div class="cnnlab-live-bar"><div class="cnnlab-live-fill" data-part="fill"></div></div>
  <div class="cnnlab-live-charts">
    <div class="cnnlab-live-chart" data-testid="cnnlab-live-chart"><div data-part="loss"></div></div>
    <div class="cnnlab-live-chart" data-testid="cnnlab-live-chart"><div data-part="acc"></div></div>
  </div>
  <div class="cnnlab-live-error" data-part="error" role="status"></div>
</div>
"""
CSS = """
.cnnlab-live { font-family: var(--st-font, "Source Sans", sans-serif); }
.cnnlab-live-caption, .cnnlab-live-chart > :not([data-drawn]) {
  color: rgba(49, 51, 63, 0.6); font-size: 0.875rem;
}
.cnnlab-live-queued { background: rgba(28, 131, 225, 0.1); padding: 0.75rem 1rem;
  border-radius: 0.5rem; margin: 0.5rem 0; }
.cnnlab-live-text { font-size: 0.875rem; margin: 0.5rem 0 0.25rem; }
.cnnlab-live-bar { height: 0.5rem; border-radius: 0.25rem; background: #f0f2f6; overflow: hidden; }
.cnnlab-live-fill { height: 100%; width: 0; background: var(--st-primary-color, #3b6fd4); }
.cnnlab-live-charts { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; margin-top: 1rem; }
.cnnlab-live-chart { min-height: 340px; }
.cnnlab-live-error { color: #bd4043; font-size: 0.875rem; }
@media (max-width: 700px) { .cnnlab-live-charts { grid-template-columns: 1fr; } }
"""
_component = st.components.v2.component(
    "cnnlab_live_view",
    html=HTML,
    css=CSS,
    js=(Path(__file__).with_name("live_chart.js")).read_text(encoding="utf-8"),
    isolate_styles=False,  # Plotly puts its stylesheet (hover labels, mode bar) in the page head
)


def _base() -> str:
    """'/' or '/<server.baseUrlPath>/': Streamlit's own routes carry the base path, ours too."""
    base = str(st.get_option("server.baseUrlPath") or "").strip("/")
    return f"/{base}/" if base else "/"


def token(job_id: str) -> str:
    """The signature a feed URL for job_id carries."""
    return live_feed.sign(job_id)


def _allowed(request: Request, job_id: str) -> bool:
    """The URL is signed for this job, and a trusted user header (if any) names its owner or an
    admin."""
    if not hmac.compare_digest(request.query_params.get("t", ""), token(job_id)):
        return False
    if users.mode() != "header":
        return True
    snap = jobs.get_manager().snapshot(job_id)
    peer = request.client.host if request.client else None
    who = users.identify(request.headers, peer, st.get_option("server.address"))
    return who is not None and snap is not None and users.can_see(who, snap.owner)


def _feed(request: Request) -> Response:
    job_id = request.path_params["job_id"]
    if not _allowed(request, job_id):  # the same answer as an unknown job: nothing to probe
        return JSONResponse({"error": f"no job {job_id!r} in this server"}, status_code=404)
    try:  # the figure revisions the page holds, e.g. ?loss=3&acc=1; figures=0: none this time
        have = {n: int(request.query_params.get(n, 0)) for n in live_feed.FIGURES}
        figures = bool(int(request.query_params.get("figures", 1)))
    except ValueError:
        return JSONResponse({"error": "figure revisions are whole numbers"}, status_code=400)
    payload = live_feed.get_feed(jobs.get_manager()).payload(job_id, have, figures=figures)
    if payload is None:
        return JSONResponse({"error": f"no job {job_id!r} in this server"}, status_code=404)
    # Plotly's encoder writes NaN/inf as null and numpy values as numbers: JSON.parse accepts it
    body = json.dumps(payload, cls=plotly.utils.PlotlyJSONEncoder)
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})


def _plotly_js(_request: Request) -> Response:
    # versioned URL (see view()), so the browser may keep it for a year
    return FileResponse(PLOTLY_JS, headers={"Cache-Control": "public, max-age=31536000"})


def routes() -> list[Route]:
    """The live feed's HTTP routes, for `st.App(routes=...)`; marks the feed as served."""
    global _served
    _served = True
    base = _base()
    return [
        Route(f"{base}{API}/jobs/{{job_id}}/live", _feed, methods=["GET"]),
        Route(f"{base}{API}/plotly-{plotly.__version__}.min.js", _plotly_js, methods=["GET"]),
    ]


def served() -> bool:
    """True when this server answers the live feed (started through server.py) and this session
    has not found it unreachable."""
    return _served and not st.session_state.get(FALLBACK)


def _lost() -> None:
    st.session_state[FALLBACK] = True  # e.g. a proxy forwarding only Streamlit's own paths


def view(job_id: str, phase: str) -> None:
    """Mount the live view of job_id; the script re-runs when the job's phase leaves `phase`."""
    base = _base()
    _component(
        key="cnnlab_live_view",
        data={
            "job": job_id,
            "phase": phase,
            "url": f"{base}{API}/jobs/{job_id}/live?t={token(job_id)}",
            "plotly_url": f"{base}{API}/plotly-{plotly.__version__}.min.js",
            "interval_ms": INTERVAL_MS,
            "redraw_ms": int(live_feed.REDRAW_S * 1000),
        },
        on_phase_change=lambda: None,
        on_lost_change=_lost,
    )


def preload() -> None:
    """Load the live view's Plotly in the browser now, while nothing trains (hidden, no job)."""
    _component(
        key="cnnlab_live_preload",
        data={"job": None, "plotly_url": f"{_base()}{API}/plotly-{plotly.__version__}.min.js"},
    )


def watch(job_id: str) -> None:
    """Show the running job job_id: the browser-side live view when the feed is served, else a
    fragment redrawn every second; either re-runs the whole page once the job ends."""
    if served():
        _feed_view(job_id)
    else:
        _fragment_view(job_id)


@st.fragment
def _feed_view(job_id: str) -> None:
    """The browser updates the progress and curves from the live feed by itself; this re-runs
    only when the job's phase changes, and once more in full when it ends."""
    snap = ui.job_manager().snapshot(job_id)
    if snap is None or not snap.active or not served():
        st.rerun()
    _follow_run(snap)
    view(job_id, live_feed.phase(snap))


@st.fragment(run_every=1)
def _fragment_view(job_id: str) -> None:
    """Without the live feed (`streamlit run app.py`, AppTest): the feed's payload drawn with
    Streamlit elements every second while the job runs; one full rerun when it ends."""
    snap = ui.job_manager().snapshot(job_id)
    if snap is None or not snap.active:
        st.rerun()
    if ui.show_queued(snap):
        return
    _follow_run(snap)
    caption(snap)
    payload = live_feed.get_feed(jobs.get_manager()).payload(job_id)
    if payload is None:  # released between the two reads: the next rerun shows the result
        return
    st.progress(payload["progress"]["fraction"], text=payload["progress"]["text"])
    figures = payload["figures"]  # the page holds no revisions: every figure comes along
    _draw(figures.get("loss"), figures.get("acc"))


def _follow_run(snap: JobSnapshot) -> None:
    """Make the job's run the session's active run once it has an id."""
    if snap.run_id and st.session_state.get(ui.ACTIVE_RUN_ID) != snap.run_id:
        st.session_state[ui.ACTIVE_RUN_ID] = snap.run_id


def caption(snap: JobSnapshot) -> None:
    """What the shown job trains: the run's own saved settings, not this session's form (read
    once per run: the fragment calls this every second)."""
    if not snap.run_id:
        return
    memo = st.session_state.setdefault(CAPTIONS, {})
    if snap.run_id not in memo:
        text = live_feed.run_caption(snap.run_id)
        if text is None:
            return
        memo.clear()
        memo[snap.run_id] = text
    st.caption(ui.literal(memo[snap.run_id]))


def curves(snap: JobSnapshot) -> None:
    """A finished job's loss (with the curve's diagnosis) and accuracy charts, built once."""
    if not snap.epochs and not snap.curve:
        _draw(None, None)
        return
    key = (snap.job_id, snap.curve_version, len(snap.epochs))
    memo = st.session_state.get(FINISHED)
    if memo is None or memo["key"] != key:
        rows = progress.thin(snap.epochs)
        diagnosis = evaluate.diagnose(list(snap.epochs))
        memo = {"key": key, "loss": plots.loss_figure(rows, diagnosis, curve=snap.curve),
                "acc": plots.accuracy_figure(rows) if snap.epochs else None}  # fmt: skip
        st.session_state[FINISHED] = memo
    _draw(memo["loss"], memo["acc"])


def _draw(loss, acc) -> None:
    """The loss and accuracy charts side by side; a line in place of one without points. An
    unchanged figure is sent as it was, which the browser does not redraw."""
    if loss is None:
        st.caption(live_feed.NO_LOSS_YET)
        return
    c1, c2 = st.columns(2)
    c1.plotly_chart(loss, key="t_loss_chart")
    if acc is not None:
        c2.plotly_chart(acc, key="t_acc_chart")
    else:
        c2.caption(live_feed.NO_ACC_YET)
