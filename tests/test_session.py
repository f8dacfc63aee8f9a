"""session: ids checked by full match, records saved and pruned by many sessions at once."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from cnnlab import session


def test_ids_match_whole_strings_only(workspace: Path) -> None:
    good = session.new_id()
    assert session.valid_id(good)
    for bad in (good + "\n", good + "0", good[:-1], good.upper(), "../" + good, None, 12):
        assert not session.valid_id(bad), repr(bad)
    session.save(good + "\n", {"active_run_id": "x"})
    session.save(good, {"active_run_id": "x"})
    names = [p.name for p in (workspace / "sessions").iterdir()]
    assert names == [f"{good}.json"]  # no file whose name ends in a newline
    assert session.load(good + "\n") == {}
    assert session.load(good) == {"active_run_id": "x"}


def test_sessions_saving_at_once_while_pruning_never_fail(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session, "MAX_RECORDS", 5)  # every save prunes others' records
    errors: list[BaseException] = []

    def visitor() -> None:
        try:
            for _ in range(40):
                session.save(session.new_id(), {"active_run_id": "r"})
        except BaseException as exc:  # noqa: BLE001 - any failure is the finding
            errors.append(exc)

    threads = [threading.Thread(target=visitor) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(list((workspace / "sessions").glob("*.json"))) <= 5 + 8
