"""users: who is asking (single user, trusted header, OIDC), what they see and touch, quotas;
with a real JobManager running real jobs in threads and real run folders on disk."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from cnnlab import jobs, ownership, runs, session, users
from cnnlab.config import RunConfig
from cnnlab.users import User


def _until(predicate, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.02)


@pytest.fixture
def header_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(users.HEADER_ENV, "X-Forwarded-User")
    monkeypatch.setenv(users.ADMINS_ENV, "root, carol")
    monkeypatch.delenv(users.PROXIES_ENV, raising=False)


def test_single_user_mode_needs_no_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(users.HEADER_ENV, raising=False)
    who = users.identify({"X-Forwarded-User": "mallory"}, "10.1.2.3", "0.0.0.0")
    assert who == User(ownership.SINGLE_USER, admin=True)  # a header means nothing here
    assert users.mode() == "single"


def test_the_user_header_is_believed_only_from_a_trusted_place(
    header_mode, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = {"x-forwarded-user": "alice"}
    assert users.identify(h, "127.0.0.1", "127.0.0.1") == User("alice")  # loopback-bound
    assert users.identify(h, "10.1.2.3", "0.0.0.0") is None  # anyone could have set it
    monkeypatch.setenv(users.PROXIES_ENV, "10.1.0.0/16 192.168.0.9")
    assert users.identify(h, "10.1.2.3", "0.0.0.0") == User("alice")
    assert users.identify(h, "10.2.0.1", "0.0.0.0") is None
    assert users.identify({}, "10.1.2.3", "0.0.0.0") is None  # no header: nobody
    assert users.identify({"X-Forwarded-User": "carol"}, "192.168.0.9", "") == User("carol", True)


def test_oidc_names_the_user_from_streamlit(header_mode) -> None:
    assert users.identify({}, None, None, oidc_name="root", oidc=True) == User("root", True)
    assert users.identify({"X-Forwarded-User": "x"}, None, "127.0.0.1", oidc=True) is None


def test_each_sees_their_own_admins_all() -> None:
    alice, bob, admin = User("alice"), User("bob"), User("root", admin=True)
    assert users.can_see(alice, "alice") and not users.can_see(bob, "alice")
    assert users.can_see(admin, "alice") and users.can_see(bob, users.PUBLIC)
    assert not users.can_see(bob, None) and not users.can_see(bob, "")  # legacy: admins only
    items = [{"owner": "alice", "n": 1}, {"owner": "bob", "n": 2}, {"n": 3}]
    assert [i["n"] for i in users.visible(bob, items)] == [2]
    assert [i["n"] for i in users.visible(admin, items)] == [1, 2, 3]


def _waiter(started: threading.Event | None = None):
    """A job that makes a real run folder, then waits to be stopped."""

    def work(stop_event: threading.Event, emit) -> dict:
        runs.create_run(RunConfig(), ["a", "b"])
        if started is not None:
            started.set()
        stop_event.wait(60)
        return {"status": "stopped"}

    return work


def test_another_users_job_is_invisible_and_untouchable(workspace: Path, header_mode) -> None:
    manager = jobs.JobManager(max_running=4)
    alice = users.UserJobs(manager, User("alice"))
    bob = users.UserJobs(manager, User("bob"))
    admin = users.UserJobs(manager, users.make_user("root"))
    started = threading.Event()
    job = alice.start_callable(_waiter(started), kind="train", name="a's")
    assert started.wait(30)
    try:
        assert [s.job_id for s in alice.list()] == [job.job_id]
        assert bob.list() == [] and bob.snapshot(job.job_id) is None
        assert bob.get(job.job_id) is None and bob.wait(job.job_id, 0.1) is None
        assert bob.stop(job.job_id) is False
        assert manager.snapshot(job.job_id).status == "running"  # bob's stop did nothing
        # the run the job made is alice's
        (summary,) = runs.list_runs()
        assert summary["owner"] == "alice"
        assert users.visible(User("bob"), runs.list_runs()) == []
        # an admin sees it, stops it, and alice's page can say who did
        assert [s.job_id for s in admin.list(active_only=True)] == [job.job_id]
        assert admin.stop(job.job_id)
        snap = alice.wait(job.job_id, 30)
        assert snap.status == "stopped" and snap.stopped_by == "root"
    finally:
        manager.stop(job.job_id)


def test_a_user_at_their_running_quota_queues_without_holding_others_up(
    workspace: Path, header_mode, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(users.QUOTA_RUNNING_ENV, "1")
    monkeypatch.setenv(users.QUOTA_QUEUED_ENV, "1")
    manager = jobs.JobManager(max_running=4)
    alice = users.UserJobs(manager, User("alice"))
    bob = users.UserJobs(manager, User("bob"))
    first = alice.start_callable(_waiter(), kind="train")
    second = alice.start_callable(_waiter(), kind="train")
    theirs = bob.start_callable(_waiter(), kind="train")
    try:
        _until(lambda: manager.snapshot(theirs.job_id).status == "running")
        assert manager.snapshot(first.job_id).status == "running"
        assert manager.snapshot(second.job_id).status == "queued"  # alice runs one at a time
        with pytest.raises(users.QuotaError, match="1 queued"):
            alice.start_callable(_waiter(), kind="train")  # one queued is all she may have
        alice.stop(first.job_id)
        _until(lambda: manager.snapshot(second.job_id).status == "running")
    finally:
        for j in (first, second, theirs):
            manager.stop(j.job_id)
            manager.wait(j.job_id, 30)


def test_the_workspace_share_is_a_quota(
    workspace: Path, header_mode, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ownership.acting_as("alice"):
        run = runs.create_run(RunConfig(), ["a", "b"])
    (run.run_dir / "best.pt").write_bytes(bytes(20_000))
    assert users.usage_bytes("alice") > 20_000 and users.usage_bytes("bob") == 0
    monkeypatch.setenv(users.QUOTA_GB_ENV, "0.00001")  # 10 kB
    with pytest.raises(users.QuotaError, match="GB"):
        users.check_quota(User("alice"), 0, 0)
    users.check_quota(User("bob"), 0, 0)
    users.check_quota(User("root", admin=True), 0, 0)  # admins have no quota


def test_data_sets_in_the_workspace_belong_to_who_brought_them(workspace: Path, header_mode):
    from cnnlab import workspace as ws

    theirs = ws.datasets_dir() / "ants-0123456789ab"
    (theirs / "ants").mkdir(parents=True)
    users.record_dataset(theirs, "alice")
    users.check_dataset(User("alice"), theirs / "ants")
    with pytest.raises(users.NotYoursError):
        users.check_dataset(User("bob"), theirs)
    with pytest.raises(users.NotYoursError):  # nor the workspace's runs or sessions
        users.check_dataset(User("bob"), ws.runs_dir())
    users.check_dataset(User("root", admin=True), theirs)
    users.record_dataset(theirs, "bob")  # bob uploaded the same bytes: it is his too
    users.check_dataset(User("bob"), theirs)


def test_a_session_link_gives_nothing_to_another_user(workspace: Path) -> None:
    sid = session.new_id()
    session.save(sid, {"active_run_id": "r1"}, owner="alice")
    assert session.load(sid, "alice") == {"active_run_id": "r1"}
    assert session.load(sid, "bob") == {}


def test_cnnlab_runs_shows_owners_and_filters_by_user(workspace: Path, capsys) -> None:
    import json

    from cnnlab import cli

    for who in ("alice", "bob"):
        with ownership.acting_as(who):
            runs.create_run(RunConfig(), ["a", "b"])
    assert cli.main(["runs", "--user", "alice", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["owner"] for r in listed] == ["alice"]
    assert cli.main(["runs"]) == 0  # the operator's CLI sees everyone's
    text = capsys.readouterr().out
    assert "alice" in text and "bob" in text


def test_studies_are_stored_under_their_users_name() -> None:
    assert users.own_study(User("alice"), "digits") == "alice/digits"
    assert users.own_study(User("alice"), "alice/digits") == "alice/digits"
    assert users.own_study(User("bob"), "alice/digits") == "bob/alice/digits"  # never alice's
    assert users.own_study(User(ownership.SINGLE_USER, True), "digits") == "digits"  # as before
