"""A browser session's choices on disk, so a reload (a fresh front-end session) gets them back.

The dashboard keeps a random session id in the page's URL (`?s=...`) and writes the choices that
matter across pages (data set, data/run config, active run, the job it watches) to
`<workspace>/sessions/<id>.json` whenever they change; a reload of that URL reads them back. Configs
go through RunConfig.from_dict, so a hand-edited or stale record is validated like any config.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import atomic, ownership, reach, workspace
from .config import DataConfig, RunConfig
from .errors import CnnlabError

log = logging.getLogger(__name__)

MAX_RECORDS = 200  # older session records beyond this are removed
_ID = re.compile(r"[0-9a-f]{16}")  # fullmatch: "$" would accept a trailing newline


def new_id() -> str:
    """A fresh random session id (16 hex digits)."""
    return secrets.token_hex(8)


def valid_id(session_id: object) -> bool:
    """True for an id new_id() could have made (so it is safe as a file name)."""
    return isinstance(session_id, str) and _ID.fullmatch(session_id) is not None


def _dir() -> Path:
    path = workspace.home() / "sessions"
    path.mkdir(parents=True, exist_ok=True)
    return path


def to_record(state: dict[str, Any]) -> dict[str, Any]:
    """JSON-able form of the session's choices (configs as dicts, other values as they are)."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if value is None:
            continue
        if isinstance(value, RunConfig):
            out[key] = {"RunConfig": reach.redact_config(value.to_dict())}
        elif isinstance(value, DataConfig):
            out[key] = {"DataConfig": asdict(value)}
        elif isinstance(value, (str, int, float, bool)):
            out[key] = value
        elif isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
            out[key] = dict(value)
    return out


def from_record(record: dict[str, Any]) -> dict[str, Any]:
    """The session values back from a record; a value that fails validation is dropped."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        try:
            if isinstance(value, dict) and "RunConfig" in value:
                out[key] = RunConfig.from_dict(value["RunConfig"]).validate()
            elif isinstance(value, dict) and "DataConfig" in value:
                data_cfg = RunConfig.from_dict({"data": value["DataConfig"]}).data
                data_cfg.validate()
                out[key] = data_cfg
            elif isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
                out[key] = dict(value)  # e.g. the Data page's CSV options
            elif isinstance(value, (str, int, float, bool)):
                out[key] = value
        except CnnlabError as exc:
            log.info("session record: dropping %s (%s)", key, exc)
    return out


OWNER_KEY = "_owner"


def save(session_id: str, state: dict[str, Any], owner: str = ownership.SINGLE_USER) -> None:
    """Write the session's record (atomically) under its owner's name; ignores an invalid id."""
    if not valid_id(session_id):
        return
    atomic.write_json_atomic(_dir() / f"{session_id}.json", {**to_record(state), OWNER_KEY: owner})
    _prune(_dir())


def _prune(folder: Path) -> None:
    """Remove the oldest records beyond MAX_RECORDS; other sessions prune (and save) at the same
    time, so a record may vanish between listing and stat: it is simply gone already."""
    stamped = []
    for path in folder.glob("*.json"):
        try:
            stamped.append((path.stat().st_mtime, path))
        except FileNotFoundError:
            continue
    stamped.sort()
    for _, old in stamped[:-MAX_RECORDS]:
        old.unlink(missing_ok=True)


def load(session_id: str, owner: str = ownership.SINGLE_USER) -> dict[str, Any]:
    """The saved choices of this session id ({} when none, unreadable or someone else's)."""
    if not valid_id(session_id):
        return {}
    path = _dir() / f"{session_id}.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    if not isinstance(record, dict) or record.pop(OWNER_KEY, ownership.SINGLE_USER) != owner:
        return {}  # another user's link (a shared URL) gives nothing of theirs
    return from_record(record)
