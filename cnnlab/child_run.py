"""A training run in a child process (`cnnlab train --nproc-per-node N`), followed through its
run folder: how the dashboard trains on several GPUs without torch.distributed in its own process.

The parent picks the run id (env CNNLAB_RUN_ID), so it knows which folder to read: the summary
gives RunStarted, each new metrics.jsonl line an EpochEnd, the final summary Finished. A stop
request becomes SIGTERM to the launcher, which torchrun forwards to every rank (a collective stop).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import ownership, runs, workspace
from .config import RunConfig
from .errors import TrainingError
from .events import EpochEnd, Finished, RunStarted

log = logging.getLogger(__name__)

POLL_S = 0.5


def command(config_path: Path, data_path: str, nproc: int) -> list[str]:
    """The child's command line (the CLI a user would type)."""
    return [
        sys.executable, "-m", "cnnlab", "train", data_path, "--config", str(config_path),
        "--nproc-per-node", str(nproc), "--json",
    ]  # fmt: skip


def follow(
    config: RunConfig,
    nproc: int,
    stop_event: threading.Event,
    emit: Callable[[Any], None],
) -> dict[str, Any]:
    """Run the child to its end, emitting its run folder's progress; returns summary.json."""
    run_id = runs.new_run_id()
    run = runs.Run(run_id, workspace.runs_dir() / run_id)
    with tempfile.TemporaryDirectory(prefix="cnnlab-child-") as tmp:
        cfg_path = Path(tmp) / "config.json"
        cfg_path.write_text(config.to_json())
        out_path, err_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
        # Files, not pipes: nobody reads while the child runs, and a full pipe would block it.
        with out_path.open("w") as out, err_path.open("w") as err:
            proc = subprocess.Popen(
                command(cfg_path, config.data.path, nproc),
                env={
                    **os.environ,
                    "CNNLAB_RUN_ID": run_id,
                    ownership.OWNER_ENV: ownership.current_owner(),
                },
                stdout=out,
                stderr=err,
            )
            seen, started, signalled = 0, False, False
            while True:
                done = proc.poll() is not None
                if stop_event.is_set() and not signalled and not done:
                    proc.send_signal(signal.SIGTERM)
                    signalled = True
                started = started or _emit_started(run, emit)
                seen = _emit_epochs(run, seen, emit)
                if done:
                    break
                time.sleep(POLL_S)
        code = proc.returncode
        summary = runs.read_summary(run)
        if summary.get("status") in ("completed", "stopped"):
            emit(Finished(summary))
            return summary
        lines = err_path.read_text(errors="replace").strip().splitlines()
        reason = next((x for x in reversed(lines) if "error" in x.lower()), None)
        raise TrainingError(
            reason or f"the {nproc}-process training exited with code {code} (run {run_id})"
        )


def _emit_started(run: runs.Run, emit: Callable[[Any], None]) -> bool:
    # summary.json is written atomically, but a reader may still lose a race on some systems:
    # read_summary's {} then means "not yet"
    summary = runs.read_summary(run)
    if "n_train" not in summary:
        return False
    emit(RunStarted.from_summary(summary))
    return True


def _emit_epochs(run: runs.Run, seen: int, emit: Callable[[Any], None]) -> int:
    rows = runs.read_metrics(run)  # a line still being written is skipped: read it next time
    for row in rows[seen:]:
        emit(EpochEnd.from_row(row))
    return max(seen, len(rows))
