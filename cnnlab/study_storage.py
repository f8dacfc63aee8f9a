"""Where Optuna studies live: SQLite (the workspace default), PostgreSQL or MySQL via a SQLAlchemy URL.

Opening is safe when many workers start at once on a fresh database (a file lock next to SQLite, a
PostgreSQL advisory lock, a MySQL named lock, plus retries on duplicate errors); the storage records
heartbeats so a dead worker's trial is failed and retried; a missing driver is one line naming the
package; passwords are never shown (safe_url).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import random
import time
import warnings
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import optuna
from filelock import FileLock

from . import workspace
from .errors import ConfigError

log = logging.getLogger(__name__)

HEARTBEAT_S = 10  # a worker's running trial proves it is alive this often ...
GRACE_FACTOR = 3  # ... and is marked failed (then retried) after this many missed heartbeats
MAX_RETRY = 3  # retries of a trial whose worker died
LOCK_KEY = 0x636E6E6C6162  # "cnnlab": the PostgreSQL advisory lock key (any constant bigint)
DRIVERS = {  # SQLAlchemy dialect -> what to install when its driver is missing
    "postgresql": "pip install 'cnnlab[postgres]' (psycopg 3: psycopg[binary])",
    "postgresql+psycopg": "pip install 'cnnlab[postgres]' (psycopg 3: psycopg[binary])",
    "postgresql+psycopg2": "pip install psycopg2-binary",
    "mysql": "pip install mysqlclient (or use mysql+pymysql:// with pip install pymysql)",
    "mysql+pymysql": "pip install pymysql",
}


STORAGES_ENV = "CNNLAB_STORAGES"  # storage URLs the operator offers dashboard visitors (spaces)


def configured_storages() -> list[str]:
    """The storage URLs the operator configured for the dashboard (CNNLAB_STORAGES)."""
    return os.environ.get(STORAGES_ENV, "").split()


def visitor_storage(choice: str | None) -> str | None:
    """A storage a dashboard visitor may use: None (the workspace's SQLite file) or one of the
    configured URLs; a typed path or URL is refused before anything is opened or created."""
    if choice is None or choice in configured_storages():
        return choice
    raise ConfigError(
        f"study storage {safe_url(choice)} is not one this server offers; pick the workspace's "
        f"SQLite file or a storage the operator listed in {STORAGES_ENV}"
    )


def safe_url(url: str) -> str:
    """The storage URL with its password hidden (for messages, logs, pages and JSON)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not parseable by SQLAlchemy: hide everything between :// and @
        head, sep, tail = url.partition("://")
        return head + sep + tail.rpartition("@")[2] if "@" in tail else url


def _scrub(text: str, url: str) -> str:
    """text without url's password (driver errors sometimes echo the connection string)."""
    try:
        from sqlalchemy.engine import make_url

        password = make_url(url).password
    except Exception:
        password = None
    text = text.replace(url, safe_url(url))
    return text.replace(str(password), "***") if password else text


@contextlib.contextmanager
def storage_lock(url: str):
    """One worker at a time per storage: SQLite -> a lock file, PostgreSQL -> an advisory lock,
    MySQL -> a named lock; other storages: no lock (creation retries on duplicates instead)."""
    lock_path = ask_lock_path(url)
    if lock_path is not None:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(lock_path, timeout=120):
            yield
        return
    dialect = url.split(":", 1)[0].split("+", 1)[0]
    if dialect not in ("postgresql", "mysql"):
        yield
        return
    import sqlalchemy as sa

    engine = _lock_engine(url)
    with engine.connect() as conn:
        if dialect == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": LOCK_KEY})
        else:
            conn.execute(sa.text("SELECT GET_LOCK('cnnlab-optuna', 120)"))
        try:
            yield
        finally:
            if dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
            else:
                conn.execute(sa.text("SELECT RELEASE_LOCK('cnnlab-optuna')"))
            conn.commit()


@lru_cache(maxsize=8)
def _lock_engine(url: str):
    import sqlalchemy as sa

    return sa.create_engine(url, poolclass=sa.pool.NullPool)


def with_retries(what: Callable[[], Any], url: str) -> Any:
    """what(), retried with backoff on duplicate/integrity errors of a concurrent creation."""
    import sqlalchemy.exc as sa_exc

    for attempt in range(6):
        try:
            return what()
        except (sa_exc.IntegrityError, sa_exc.ProgrammingError) as exc:
            if attempt == 5:
                raise
            log.info("storage %s busy (%s): retrying", safe_url(url), type(exc).__name__)
            time.sleep(0.2 * 2**attempt * (1 + random.random()))
    raise AssertionError("unreachable")


@lru_cache(maxsize=8)
def _rdb_storage(url: str, heartbeat: int | None = HEARTBEAT_S) -> optuna.storages.RDBStorage:
    # One engine per URL per process: the dashboard re-reads the study every second.
    kwargs: dict[str, Any] = {}
    if ask_lock_path(url) is not None:
        # Wait up to 30 s for another worker's write instead of failing with "database is locked".
        kwargs = {"connect_args": {"timeout": 30}}
    else:
        kwargs = {"pool_pre_ping": True}  # a server may drop idle connections between trials
    hb: dict[str, Any] = {}
    if heartbeat:
        # optuna 4.9 renamed RetryFailedTrialCallback (the old name now warns of its removal).
        retry_cls = getattr(
            optuna.storages,
            "RetryHeartbeatStaleTrialCallback",
            optuna.storages.RetryFailedTrialCallback,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = retry_cls(max_retry=MAX_RETRY)
        params = inspect.signature(optuna.storages.RDBStorage).parameters
        cb_name = (  # renamed in optuna 4.x; the old name warns
            "heartbeat_stale_trial_callback"
            if "heartbeat_stale_trial_callback" in params
            else "failed_trial_callback"
        )
        hb = {
            "heartbeat_interval": heartbeat,
            "grace_period": heartbeat * GRACE_FACTOR,
            cb_name: retry,
        }
    # Workers creating a fresh database at once race on its schema: take turns.
    with storage_lock(url), warnings.catch_warnings():
        # heartbeats are marked experimental since optuna 2.8; they are what workers rely on.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return with_retries(
            lambda: optuna.storages.RDBStorage(url, engine_kwargs=kwargs, **hb), url
        )


def open_storage(url: str | None = None, heartbeat: int | None = HEARTBEAT_S):
    """The Optuna storage for a URL (default: the workspace's SQLite file), with heartbeats."""
    url = url or workspace.studies_url()
    try:
        return _rdb_storage(url, heartbeat)
    except ModuleNotFoundError as exc:
        dialect = url.split(":", 1)[0]
        hint = DRIVERS.get(dialect) or f"install the Python package {exc.name!r}"
        raise ConfigError(
            f"the database driver for {safe_url(url)} is not installed ({exc.name}): {hint}"
        ) from None
    except Exception as exc:  # SQLAlchemy raises many kinds (bad URL, no server, bad password)
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        reason = _scrub(first[0] if first else type(exc).__name__, url)
        raise ConfigError(f"cannot open the study storage {safe_url(url)}: {reason}") from None


def ask_lock_path(storage: str | None = None) -> Path | None:
    """The lock file serialising 'count, then ask' for an SQLite storage (None for servers)."""
    url = storage or workspace.studies_url()
    if url.startswith("sqlite:///") and ":memory:" not in url:
        return Path(url.removeprefix("sqlite:///") + ".lock")
    return None
