"""Who is asking, what they may see and touch, and how much they may use.

Three ways to run the dashboard (docs/serving.md):
- single user (default): no configuration, one implicit user ("local") who sees everything;
- a trusted header (CNNLAB_USER_HEADER, e.g. X-Forwarded-User) set by an authenticating reverse
  proxy, honoured only when the server listens on a loopback address or the request comes from an
  address in CNNLAB_TRUSTED_PROXIES (IPs or networks);
- Streamlit's own OIDC login (st.login / st.user, configured in secrets.toml).
CNNLAB_ADMINS names users who see and act on everything. Runs, data sets, sessions, studies and
jobs carry their owner; everyone else sees and acts only on their own. Quotas per user
(CNNLAB_QUOTA_RUNNING, CNNLAB_QUOTA_QUEUED, CNNLAB_QUOTA_GB; unset or 0: no limit) bind everyone
but admins. The core records the owner of the work it does through `owner` (a job's thread or
child process says whose it is).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from . import ownership, runs, workspace
from .errors import CnnlabError

HEADER_ENV = "CNNLAB_USER_HEADER"
PROXIES_ENV = "CNNLAB_TRUSTED_PROXIES"
ADMINS_ENV = "CNNLAB_ADMINS"
QUOTA_RUNNING_ENV = "CNNLAB_QUOTA_RUNNING"
QUOTA_QUEUED_ENV = "CNNLAB_QUOTA_QUEUED"
QUOTA_GB_ENV = "CNNLAB_QUOTA_GB"
PUBLIC = "*"  # owner of what everyone shares (the demo digits)
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class QuotaError(CnnlabError):
    """A user asked for more than their quota allows."""


class NotYoursError(CnnlabError):
    """A user asked to see or touch what belongs to someone else."""


@dataclass(frozen=True)
class User:
    name: str
    admin: bool = False


def _names(env: str) -> set[str]:
    return {n.strip() for n in os.environ.get(env, "").replace(",", " ").split() if n.strip()}


def make_user(name: str) -> User:
    """A User by name, an admin when CNNLAB_ADMINS lists them."""
    return User(name, admin=name in _names(ADMINS_ENV))


def mode(oidc: bool = False) -> str:
    """'oidc', 'header' or 'single': how the dashboard tells its visitors apart."""
    if oidc:
        return "oidc"
    return "header" if os.environ.get(HEADER_ENV, "").strip() else "single"


def header_trusted(bound_address: str | None, peer: str | None) -> bool:
    """True when the user header may be believed: the server listens on loopback only (only a
    local proxy reaches it), or the request's peer is one of CNNLAB_TRUSTED_PROXIES."""
    if (bound_address or "").strip() in LOOPBACK:
        return True
    if not peer:
        return False
    try:
        ip = ipaddress.ip_address(peer)
    except ValueError:
        return False
    for entry in _names(PROXIES_ENV):
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def identify(
    headers: Mapping[str, str] | None,
    peer: str | None,
    bound_address: str | None,
    oidc_name: str | None = None,
    oidc: bool = False,
) -> User | None:
    """The visitor, or None when the configured way of knowing them gives no one (not signed in,
    no header, or a header from an untrusted peer)."""
    how = mode(oidc)
    if how == "single":
        return User(ownership.SINGLE_USER, admin=True)
    if how == "oidc":
        return make_user(oidc_name) if oidc_name else None
    if not header_trusted(bound_address, peer):
        return None
    wanted = os.environ[HEADER_ENV].strip().lower()
    for key, value in (headers or {}).items():
        if key.lower() == wanted and value.strip():
            return make_user(value.strip())
    return None


def can_see(user: User, owner: str | None) -> bool:
    """May user see (and act on) something owned by owner? Admins: everything; others: their own
    and what is shared. Work from before owners were recorded belongs to admins."""
    return user.admin or owner == PUBLIC or (bool(owner) and owner == user.name)


def check_can_act(user: User, owner: str | None, what: str) -> None:
    """NotYoursError unless user may act on `what` (owned by owner)."""
    if not can_see(user, owner):
        raise NotYoursError(f"{what} is not yours; you can only change your own work")


def visible(user: User, items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The summaries (dicts with an 'owner') user may see."""
    return [i for i in items if can_see(user, i.get("owner"))]


# ------------------------------------------------------------------ data sets
def _owners_file() -> Path:
    return workspace.datasets_dir() / ".owners.json"


def record_dataset(path: str | Path, owner: str) -> None:
    """Note owner as an owner of a data set in the workspace (uploads are shared by content:
    two users uploading the same zip share its folder, and both own it)."""
    name = _dataset_key(path)
    if name is None:
        return
    with FileLock(str(_owners_file()) + ".lock", timeout=30):
        table = _read_owners()
        owners = set(table.get(name, [])) | {owner}
        table[name] = sorted(owners)
        tmp = _owners_file().with_suffix(".tmp")
        tmp.write_text(json.dumps(table, indent=1))
        os.replace(tmp, _owners_file())


def _read_owners() -> dict[str, list[str]]:
    try:
        table = json.loads(_owners_file().read_text())
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) else {}


def _dataset_key(path: str | Path) -> str | None:
    """The workspace data set a path lies in (its folder or file name), None outside it."""
    root = workspace.datasets_dir().resolve()
    resolved = Path(path).expanduser().resolve()
    if root not in resolved.parents:
        return None
    return resolved.relative_to(root).parts[0]


def check_dataset(user: User, path: str | Path) -> None:
    """NotYoursError when a non-admin names another user's data set in the workspace, or any
    other workspace folder (runs, sessions); data outside the workspace is the operator's to
    share through CNNLAB_DATA_ROOTS."""
    if user.admin:
        return
    resolved = Path(path).expanduser().resolve()
    home = workspace.home_path()
    if home != resolved and home not in resolved.parents:
        return
    key = _dataset_key(resolved)
    owners = set(_read_owners().get(key, [])) if key else set()
    if user.name not in owners and PUBLIC not in owners:
        raise NotYoursError(f"{resolved} is not one of your data sets; upload it yourself")


def own_study(user: User, name: str) -> str:
    """The study name a user's study is stored under: with users, prefixed by their name, so
    nobody adds trials to (or reads) another's study by typing its name."""
    if user.name == ownership.SINGLE_USER or name.startswith(f"{user.name}/"):
        return name
    return f"{user.name}/{name}"


# ------------------------------------------------------------------ quotas
def _limit(env: str) -> float:
    try:
        value = float(os.environ.get(env) or 0)
    except ValueError:
        return 0.0
    return max(value, 0.0)


def running_limit(owner: str | None) -> int:
    """How many jobs owner may run at once (0: no limit; admins have none)."""
    if owner is None or make_user(owner).admin:
        return 0
    return int(_limit(QUOTA_RUNNING_ENV))


def usage_bytes(owner: str) -> int:
    """Bytes of the workspace owner's runs and data sets take."""
    total = 0
    folders = []
    try:
        folders += [Path(r["run_dir"]) for r in runs.list_runs() if r.get("owner") == owner]
        table = _read_owners()
        folders += [workspace.datasets_dir() / k for k, v in table.items() if owner in v]
    except (OSError, CnnlabError):
        return total
    for folder in folders:
        paths = [folder] if folder.is_file() else folder.rglob("*")
        for p in paths:
            with contextlib.suppress(OSError):
                if p.is_file() and not p.is_symlink():
                    total += p.stat().st_size
    return total


def check_quota(user: User, running: int, queued: int) -> None:
    """QuotaError when user may not start another job: as many queued as they may have (running
    beyond CNNLAB_QUOTA_RUNNING, a job waits in the queue: jobs.JobManager), or their runs and data
    sets fill their share of the workspace."""
    if user.admin:
        return
    max_queued = _limit(QUOTA_QUEUED_ENV)
    if max_queued and queued >= max_queued:
        raise QuotaError(
            f"you have {running} running and {queued} queued jobs; this server queues at most "
            f"{int(max_queued)} per user: wait for one to start or stop one"
        )
    check_space(user)


def check_space(user: User) -> None:
    """QuotaError when user's runs and data sets fill their share (CNNLAB_QUOTA_GB) of the
    workspace: before a job starts, before an upload is stored."""
    if user.admin:
        return
    max_gb = _limit(QUOTA_GB_ENV)
    if max_gb:
        used = usage_bytes(user.name)
        if used >= max_gb * 1e9:
            raise QuotaError(
                f"your runs and data sets take {used / 1e9:.2f} GB of your {max_gb:g} GB; delete "
                "runs on the Runs page to make room"
            )


# ------------------------------------------------------------------ jobs, seen by one user
class UserJobs:
    """A job manager as one user sees it: only jobs they may see, started under their name and
    within their quota, stopped with their name on it."""

    def __init__(self, manager: Any, user: User) -> None:
        self.manager = manager
        self.user = user

    def _mine(self, job: Any) -> bool:
        return job is not None and can_see(self.user, getattr(job, "owner", None))

    def get(self, job_or_run_id: str):
        """The job, or None when unknown or someone else's."""
        job = self.manager.get(job_or_run_id)
        return job if self._mine(job) else None

    def snapshot(self, job_or_run_id: str):
        """The job's snapshot, or None when unknown or someone else's."""
        snap = self.manager.snapshot(job_or_run_id)
        return snap if self._mine(snap) else None

    def list(self, kind: str | None = None, active_only: bool = False):
        """Snapshots of the jobs this user may see, newest first."""
        return [s for s in self.manager.list(kind, active_only) if self._mine(s)]

    def _check_quota(self) -> None:
        own = [s for s in self.manager.list(active_only=True) if s.owner == self.user.name]
        running = sum(s.status == "running" for s in own)
        check_quota(self.user, running, len(own) - running)

    def start(self, *args: Any, **kwargs: Any):
        """manager.start under this user's name, within their quota."""
        self._check_quota()
        return self.manager.start(*args, owner=self.user.name, **kwargs)

    def start_distributed(self, *args: Any, **kwargs: Any):
        """manager.start_distributed under this user's name, within their quota."""
        self._check_quota()
        return self.manager.start_distributed(*args, owner=self.user.name, **kwargs)

    def start_callable(self, *args: Any, **kwargs: Any):
        """manager.start_callable under this user's name, within their quota."""
        self._check_quota()
        return self.manager.start_callable(*args, owner=self.user.name, **kwargs)

    def resume(self, run_id: str):
        """manager.resume of a run this user may act on, under their name, within their quota."""
        run = runs.load_run(run_id)
        check_can_act(self.user, runs.read_summary(run).get("owner"), f"run {run.run_id}")
        self._check_quota()
        return self.manager.resume(run.run_id, owner=self.user.name)

    def stop(self, job_or_run_id: str) -> bool:
        """Stop a job this user may act on, recording who stopped it; False otherwise."""
        if self.get(job_or_run_id) is None:
            return False
        return self.manager.stop(job_or_run_id, by=self.user.name)

    def wait(self, job_or_run_id: str, timeout: float | None = None):
        """manager.wait for a job this user may see (None otherwise)."""
        if self.get(job_or_run_id) is None:
            return None
        return self.manager.wait(job_or_run_id, timeout)
