"""console: what the CLI prints — JSON, the progress lines, summaries, trial rows."""

from __future__ import annotations

import json
from types import SimpleNamespace

from cnnlab import console, events


def test_print_json_is_indented_and_handles_paths(capsys, tmp_path) -> None:
    console.print_json({"path": tmp_path, "n": 1})
    out = capsys.readouterr().out
    assert json.loads(out) == {"path": str(tmp_path), "n": 1}
    assert out.startswith("{\n  ")


def test_progress_printer_off_prints_nothing(capsys) -> None:
    printer = console.ProgressPrinter(enabled=False)
    printer(events.RunStarted("r1", "/x", 3, 10, 2, 2, "cpu", ["a", "b"]))
    assert capsys.readouterr() == ("", "")


def test_progress_printer_not_on_a_terminal_prints_whole_lines(capsys) -> None:
    printer = console.ProgressPrinter(enabled=True)  # pytest's stderr is not a terminal
    assert not printer.live
    printer(events.RunStarted("r1", "/x", 3, 10, 2, 2, "cpu", ["a", "b"]))
    printer(events.Progress(1, 1, 4, 0.5, 100.0))  # redrawn bars only on a terminal
    row = {k: 0.0 for k in events.EpochEnd.__dataclass_fields__}
    row.update(epoch=1, train_loss=0.7, train_acc=0.6, val_loss=0.65, val_acc=0.7, is_best=True)
    printer(events.EpochEnd(**row))
    err = capsys.readouterr().err
    lines = [line.rstrip() for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[0] == "run r1 on cpu: 10 train / 2 val / 2 test images"
    assert lines[1].startswith("epoch   1/3  train loss 0.7000 acc 0.600  val loss 0.6500")
    assert lines[1].endswith("*")  # the best epoch so far is marked
    assert len(lines) == 2


def test_summary_and_trial_rows(capsys) -> None:
    console.print_summary({"run_id": "r1", "status": "completed", "test_accuracy": 0.91234})
    out = capsys.readouterr().out.splitlines()
    assert "              run_id: r1" in out
    assert "       test_accuracy: 0.9123" in out
    assert "          best_epoch: None" in out  # every key is listed, missing ones as None
    assert console.fmt_param(0.000123456) == "0.000123" and console.fmt_param("adam") == "adam"
    trial = SimpleNamespace(
        number=3, state="PRUNED", value=None, duration=1.5, params={"lr": 0.01, "opt": "sgd"}
    )
    assert console.trial_line(trial) == "    3  PRUNED          -      1.5s  lr=0.01 opt=sgd"
