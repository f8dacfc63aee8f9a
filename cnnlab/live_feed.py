"""A running job as one JSON-ready dict, for a page that polls it instead of re-running a script:
the progress line, the run's caption, and the loss/accuracy figures.

Figures are the plots module's own (the finished run's charts, minus the diagnosis), rebuilt only
when the job has new points and at most every REDRAW_S while it runs, and shared by every page
watching the same job: building a Plotly figure holds the GIL beside the training thread.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import plots, progress, runs, workspace
from .archive import dataset_name
from .errors import CnnlabError
from .job_state import JobSnapshot
from .jobs import JobManager

REDRAW_S = 2.0  # the figures are rebuilt (and redrawn by the pages) at most this often
# Streamlit draws its charts in "Source Sans" on a white page with light grid lines; figures drawn
# outside st.plotly_chart get the same look from this layout. No template: Plotly's default one
# would travel inside every figure (~7 KB) and paint it grey.
_GRID = {"gridcolor": "#e6eaf1", "zerolinecolor": "#d5dae5", "linecolor": "#d5dae5"}
PAGE_LAYOUT = {
    "font": {"family": '"Source Sans", "Source Sans Pro", sans-serif', "color": "#31333f"},
    "paper_bgcolor": "rgba(0,0,0,0)",
    "plot_bgcolor": "rgba(0,0,0,0)",
    "xaxis": _GRID,
    "yaxis": _GRID,
    "title": {"x": 0, "font": {"size": 16, "weight": 600}},
}
FIGURES = ("loss", "acc")
NO_LOSS_YET = "The loss curve appears with the first batches."
NO_ACC_YET = "Accuracy is measured at the end of each epoch."


def sign(job_id: str) -> str:
    """The signature a feed URL for job_id carries; the key lives in the workspace, so a page
    left open across a server restart keeps its feed."""
    key = workspace.secret_key("feed")
    return hmac.new(key, job_id.encode(), hashlib.sha256).hexdigest()[:32]


def phase(snap: JobSnapshot) -> str:
    """What a watching page re-runs its script for when it changes: the job's status (it
    started, ended) and its run id (the run got one)."""
    return f"{snap.status}:{snap.run_id or ''}"


def run_caption(run_id: str) -> str | None:
    """'Run <id> (name): model custom · 16 px · 15 epochs · lr 1.0e-03 · data digits' from the
    run's own saved settings, or None while its config is not readable yet."""
    try:
        cfg = runs.read_config(runs.load_run(run_id))
    except CnnlabError:
        return None
    name = runs.run_name(cfg)
    name = f" ({name})" if name else ""
    return (
        f"Run {run_id}{name}: model {cfg.model.name} · {cfg.data.image_size} px · "
        f"{progress.plural(cfg.train.epochs, 'epoch')} · lr {cfg.train.lr:.1e} · "
        f"data {dataset_name(cfg.data.path)}"
    )


def live_figures(snap: JobSnapshot, names: Iterable[str] = FIGURES) -> dict[str, Any]:
    """The named figures ("loss", "acc") of a running job as Plotly JSON dicts; None for a figure
    with no points yet."""
    rows = progress.thin(snap.epochs)
    build = {
        "loss": lambda: plots.loss_figure(rows, curve=snap.curve) if rows or snap.curve else None,
        "acc": lambda: plots.accuracy_figure(rows) if rows else None,
    }
    out = {}
    for name in names:
        fig = build[name]()
        out[name] = None if fig is None else _on_page(fig.to_plotly_json())
    return out


def _on_page(fig: dict[str, Any]) -> dict[str, Any]:
    """fig (Plotly JSON) with PAGE_LAYOUT merged in: on the dict, because fig.update_layout
    re-validates the whole layout (half the cost of building the figure)."""
    layout = fig["layout"]
    layout.pop("template", None)
    for key, value in PAGE_LAYOUT.items():
        layout[key] = {**layout.get(key, {}), **value} if isinstance(value, dict) else value
    return fig


@dataclass
class _Drawn:
    """The figures last built for one job, and what they were built from."""

    curve_version: int
    n_epochs: int
    at: float
    figures: dict[str, Any]
    revs: dict[str, int]  # per figure, grows when it changes: what a page sends back as `have`


class LiveFeed:
    """Payloads of running jobs, with a per-job cache of their figures (one per process)."""

    def __init__(self, manager: JobManager, clock: Callable[[], float] = time.monotonic) -> None:
        self._manager = manager
        self._clock = clock
        self._lock = threading.Lock()
        self._drawn: dict[str, _Drawn] = {}
        self._captions: dict[str, str] = {}

    def payload(
        self, job_id: str, have: Mapping[str, int] | None = None, figures: bool = True
    ) -> dict[str, Any] | None:
        """The job's state for a page holding figure revisions `have` ({"loss": 3, "acc": 1});
        a figure comes along only when the page's revision is not the current one, and none
        when the page asks for none (figures=False: it is not ready to draw). None when the job
        is unknown."""
        snap = self._manager.snapshot(job_id)
        if snap is None:
            return None
        frac, text = progress.progress_line(snap)
        have = have or {}
        drawn = self._figures(snap) if figures else None
        return {
            "job": snap.job_id,
            "status": snap.status,
            "active": snap.active,
            "run_id": snap.run_id,
            "phase": phase(snap),
            "caption": self._caption(snap.run_id),
            "queued": progress.queued_line(snap),
            "progress": {"fraction": frac, "text": text},
            "empty": {"loss": NO_LOSS_YET, "acc": NO_ACC_YET},
            "revs": dict(drawn.revs) if drawn else dict(have),
            "figures": {
                n: f
                for n, f in (drawn.figures if drawn else {}).items()
                if have.get(n) != drawn.revs[n]
            },
        }

    def _figures(self, snap: JobSnapshot) -> _Drawn:
        """The cached figures, rebuilt when the job has new points, at most every REDRAW_S while
        it runs (a redraw costs the browser ~20-40 ms a chart; the demo's epochs take a second)
        and at once when it ends; the accuracy figure only when there is a new epoch."""
        now = self._clock()
        with self._lock:
            old = self._drawn.get(snap.job_id)
            n_epochs = len(snap.epochs)
            if old is not None and (
                old.curve_version == snap.curve_version or (snap.active and now - old.at < REDRAW_S)
            ):
                return old
            names = FIGURES if old is None or n_epochs != old.n_epochs else ("loss",)
            figures = {**(old.figures if old else {}), **live_figures(snap, names)}
            revs = {n: (old.revs[n] if old else 0) + (n in names) for n in FIGURES}
            self._drawn[snap.job_id] = new = _Drawn(
                curve_version=snap.curve_version,
                n_epochs=n_epochs,
                at=now,
                figures=figures,
                revs=revs,
            )
            self._forget_released()
            return new

    def _caption(self, run_id: str | None) -> str | None:
        """The run's caption, read from its folder once (None until it is readable)."""
        if not run_id:
            return None
        if run_id not in self._captions:
            text = run_caption(run_id)
            if text is None:
                return None
            with self._lock:
                if len(self._captions) > 64:  # runs watched by this process: keep it bounded
                    self._captions.clear()
                self._captions[run_id] = text
        return self._captions[run_id]

    def _forget_released(self) -> None:
        """Drop the figures of jobs the manager no longer keeps (called under the lock)."""
        for job_id in [j for j in self._drawn if self._manager.get(j, stored=False) is None]:
            del self._drawn[job_id]


_feed: LiveFeed | None = None
_feed_lock = threading.Lock()


def get_feed(manager: JobManager) -> LiveFeed:
    """The process-wide LiveFeed over `manager` (created on first use)."""
    global _feed
    with _feed_lock:
        if _feed is None or _feed._manager is not manager:
            _feed = LiveFeed(manager)
        return _feed
