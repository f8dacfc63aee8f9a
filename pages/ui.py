"""Shared helpers for the dashboard pages (a helper module, not a page: app.py does not list it).

Session state conventions — the only keys pages share:
- st.session_state["dataset_path"]: str, resolved folder holding the chosen data set's class
  folders (set by the Data page; zips and uploads are already extracted by then).
- st.session_state["data_config"]: cnnlab.config.DataConfig chosen on the Data page (path,
  image_size, val/test fractions, seed); later pages copy it into their RunConfig.
- st.session_state["run_config"]: cnnlab.config.RunConfig being assembled by Augment/Model/Train.
- st.session_state["active_run_id"]: str, the run that Train/Evaluate/Predict show.
- st.session_state["train_job_id"]: str, the cnnlab.jobs job the Train page shows (Home clears
  it for a fresh start; Runs sets it to re-attach to a running or resumed job).
- st.session_state["loaded_from"]: str, a note the Train page shows above its form (Tune's
  "Train the best configuration" says which trial it loaded); cleared by Start.
Pages import these names instead of spelling the strings. SESSION_KEYS (these, and a few
widgets) are saved per browser session (cnnlab.session) under the id in the URL's `?s=`, so a
reload gets them back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import streamlit as st

from cnnlab import baseline, data, evaluate, jobs, scan_cache, session, users
from cnnlab.config import DataConfig, RunConfig
from cnnlab.errors import CnnlabError, DataError
from cnnlab.predict import Predictor
from cnnlab.progress import queued_line
from cnnlab.scan_result import ScanResult

DATASET_PATH = "dataset_path"
DATA_CONFIG = "data_config"
DATA_CSV = "data_csv"  # {path_column, label_column, images} of a chosen labels CSV
RUN_CONFIG = "run_config"
ACTIVE_RUN_ID = "active_run_id"
TRAIN_JOB_ID = "train_job_id"
DATA_SOURCE = "data_source_kept"  # str: the Data page's source choice (its radio's state is
# dropped while another page shows)
LOADED_FROM = "loaded_from"  # str: where the Train page's config came from (Tune's best trial)
DATA_PAGE = "pages/data.py"
QUERY_SESSION = "s"  # URL query: this browser session's id (cnnlab.session)
SESSION_KEYS = (
    DATASET_PATH, DATA_CONFIG, RUN_CONFIG, ACTIVE_RUN_ID, TRAIN_JOB_ID, DATA_SOURCE, DATA_CSV,
)  # fmt: skip
_SESSION_ID = "_session_id"
_SESSION_SAVED = "_session_saved"


def use_app_navigation() -> None:
    """Make a deep link (e.g. /data) on a fresh server go through app.py; call first on every page.

    Streamlit keeps its old multipage mode (run pages/*.py directly, list every file in the
    sidebar) while a `pages/` folder exists and no st.navigation call has run yet in the process,
    so the first visit to /data would skip app.py. Turning that mode off and rerunning goes
    through app.py's st.navigation, which finds the same page by its URL.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        # Once per session: AppTest resets the flag before every run, and a rerun on each
        # would swallow the button click that triggered the run.
        if not st.session_state.get("_app_navigation_fixed"):
            st.session_state["_app_navigation_fixed"] = True
            st.rerun()


@st.cache_resource(show_spinner=False)
def _manager() -> jobs.JobManager:
    return jobs.get_manager()


def job_manager() -> users.UserJobs:
    """The process-wide job manager as this visitor sees it (their own jobs; admins: all):
    every page reaches jobs through this one call."""
    return users.UserJobs(_manager(), user())


def oidc_configured() -> bool:
    """True when secrets.toml has an [auth] section: Streamlit's OIDC login is set up."""
    try:
        return "auth" in st.secrets
    except FileNotFoundError:  # no secrets.toml at all (StreamlitSecretNotFoundError)
        return False


def user() -> users.User:
    """Who this visitor is (cnnlab.users); without a sign-in the configured mode needs, the page
    says so and stops."""
    oidc = oidc_configured()
    name = None
    if oidc:
        if not st.user.get("is_logged_in", False):  # absent before any sign-in
            st.info("Sign in to use this lab.", icon=":material/login:")
            st.button("Sign in", on_click=st.login, type="primary")
            st.stop()
        name = st.user.get("email") or st.user.get("sub")
    who = users.identify(
        dict(st.context.headers or {}),
        st.context.ip_address,
        st.get_option("server.address"),
        oidc_name=str(name) if name else None,
        oidc=oidc,
    )
    if who is None:
        st.error(
            "This server knows its users from the sign-in in front of it, and this request "
            "carries none: open the lab through its sign-in address.",
            icon=":material/lock:",
        )
        st.stop()
    return who


def my_runs(summaries: list[dict]) -> list[dict]:
    """The run summaries this visitor may see (their own; admins: all)."""
    return users.visible(user(), summaries)


def restore_session() -> None:
    """Give this session an id in the URL; a fresh session (a reload) with an id gets its saved
    choices back. Call once per run, before the page."""
    sid = st.session_state.get(_SESSION_ID)
    if sid is None:
        url_id = st.query_params.get(QUERY_SESSION)
        sid = url_id if session.valid_id(url_id) else session.new_id()
        st.session_state[_SESSION_ID] = sid
        for key, value in session.load(sid, user().name).items():
            if key in SESSION_KEYS and key not in st.session_state:
                st.session_state[key] = value
        st.session_state[_SESSION_SAVED] = session.to_record(_session_values())
    if st.query_params.get(QUERY_SESSION) != sid:  # page switches drop the query
        st.query_params[QUERY_SESSION] = sid


def _session_values() -> dict:
    return {k: st.session_state.get(k) for k in SESSION_KEYS}


def save_session() -> None:
    """Write the session's choices when they changed since the last save."""
    sid = st.session_state.get(_SESSION_ID)
    record = session.to_record(_session_values())
    if sid and record != st.session_state.get(_SESSION_SAVED):
        session.save(sid, _session_values(), user().name)
        st.session_state[_SESSION_SAVED] = record


def show_error(exc: CnnlabError) -> None:
    """Render a user error as a message (never a traceback)."""
    st.error(str(exc), icon=":material/error:")


def literal(text: str) -> str:
    """text for st.caption/st.markdown shown as typed: a data set named my_set_v2 stays upright."""
    return "".join("\\" + c if c in "\\`*_[]<>#~|$" else c for c in text)


def dataset_ready(path: str | None) -> bool:
    """True when path is a chosen data set still on disk: a folder or a labels CSV."""
    return bool(path) and (Path(path).is_dir() or scan_cache.is_csv(path))


def chosen_dataset() -> str | None:
    """The session's data set (a folder or a labels CSV) when it is still on disk, else None."""
    path = st.session_state.get(DATASET_PATH)
    return path if dataset_ready(path) else None


def require_dataset() -> str:
    """The chosen data set's folder; otherwise point to the Data page and stop this page."""
    path = chosen_dataset()
    if path:
        return path
    st.info("Choose a data set first.", icon=":material/info:")
    st.page_link(DATA_PAGE, label="Go to the Data page", icon=":material/dataset:")
    st.stop()


def csv_options(path: str) -> dict[str, str]:
    """The column/images options chosen on the Data page for a labels CSV (empty for folders)."""
    return dict(st.session_state.get(DATA_CSV) or {}) if scan_cache.is_csv(path) else {}


def scan_dataset(path: str, progress: data.Progress | None = None) -> ScanResult:
    """data.scan through the process-wide cache keyed by path + mtimes (cnnlab.scan_cache).

    Not st.cache_data: that would copy the result per call and could not report progress.
    """
    if not Path(path).is_dir() and not scan_cache.is_csv(path):  # e.g. deleted since chosen
        raise DataError(
            f"{path} is not a folder (any more): choose the data set again on the Data page."
        )
    return scan_cache.scan(path, progress, csv_options(path))


def progress_bar(label: str):
    """A st.progress bar and a data.Progress callback that drives it."""
    bar = st.progress(0.0, text=label)

    def update(done: int, total: int, stage: str) -> None:
        bar.progress(done / max(total, 1), text=f"{label}: {stage} {done:,}/{total:,}")

    return bar, update


@st.cache_data(show_spinner=False, max_entries=2000)
def thumbnail(path: str, mtime_ns: int, size: int = 96) -> np.ndarray:
    """(size, size, 3) uint8 preview through the training preprocessing; mtime_ns keys the cache."""
    return data.decode_image(Path(path), size).permute(1, 2, 0).numpy()


def session_run_config() -> RunConfig:
    """The session's RunConfig (defaults on first use) with the Data page's data section."""
    cfg = st.session_state.get(RUN_CONFIG) or RunConfig()
    data_cfg = st.session_state.get(DATA_CONFIG)
    if isinstance(data_cfg, DataConfig):
        cfg = dataclasses.replace(cfg, data=data_cfg)
    return cfg


def reset_widgets(prefix: str | tuple[str, ...], names: Iterable[str] | None = None) -> None:
    """Drop widget state so those widgets show their seeded values again: every key starting
    with `prefix`, or with `names` only the keys prefix + name."""
    if names is None:
        stale = [k for k in st.session_state if str(k).startswith(prefix)]
    else:
        prefixes = (prefix,) if isinstance(prefix, str) else prefix
        stale = [f"{p}{n}" for p in prefixes for n in names]
    for key in stale:
        st.session_state.pop(key, None)


def seed_widget(key: str, value) -> None:
    """Give a widget its value from the saved config when it has no state (first visit or back
    from another page: Streamlit drops the state of widgets that were not drawn)."""
    if key not in st.session_state:
        st.session_state[key] = value


TRAIN_PAGE = "pages/train.py"


def choose_trained_run(container, key: str) -> str:
    """A run picker over the runs with a best checkpoint; without any, say so, link Train, stop."""
    summaries = my_runs(evaluate.usable_runs())
    if not summaries:
        st.info("No trained run yet: train a model first.", icon=":material/info:")
        st.page_link(TRAIN_PAGE, label="Go to the Train page", icon=":material/model_training:")
        st.stop()
    ids = [r["run_id"] for r in summaries]
    default = evaluate.default_run(summaries, st.session_state.get(ACTIVE_RUN_ID))
    return container.selectbox("Run", ids, index=ids.index(default), key=key)


@st.cache_resource(show_spinner=False, max_entries=4)
def predictor(run: str, stamp: float) -> Predictor:
    """The Predictor of a run (id or folder) shared by the pages that draw with it; `stamp` is
    best.pt's mtime, so a new checkpoint loads again."""
    return Predictor.from_run(run)


def show_queued(snap) -> bool:
    """Say where a queued job waits (Train and Tune pages); True when it is queued."""
    line = queued_line(snap)
    if line is None:
        return False
    st.info(line, icon=":material/hourglass_top:")
    return True


def short_name(path: str, chars: int) -> str:
    """A file's name cut in the middle to `chars` characters ('IMG_2024…_0042.png'): a caption or
    heading that wraps a long name breaks it mid-word at narrow widths."""
    name = Path(path).name
    if len(name) <= chars:
        return name
    keep = chars - 1
    return f"{name[: keep // 2]}…{name[-(keep - keep // 2) :]}"


def baseline_line(summary: dict) -> None:
    """The run's 'CNN vs pixel baseline' line: a caption when the CNN wins, a warning when not."""
    line = baseline.comparison(summary)
    if line is not None:
        (st.caption if baseline.beaten(summary) else st.warning)(line)
