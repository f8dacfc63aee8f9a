"""Tests for cnnlab.tune and cnnlab.search_space: real studies on tiny digits, real run folders.

Trials train the small custom CNN on 12 px digits for 2-3 epochs, so each takes about a second.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import optuna
import pytest

from cnnlab import cli, plots, runs, trial_runner, tune
from cnnlab.data import prepare
from cnnlab.errors import ConfigError
from cnnlab.events import EpochEnd, Event
from cnnlab.search_space import Choices, Range, SearchSpace, apply_params

REPO = Path(__file__).resolve().parent.parent
SIZE = 12
# Only the learning rate searched; everything else small and fixed, so trials are fast.
LR_ONLY = SearchSpace(
    lr=Range(1e-5, 1e-2, log=True),
    batch_size=128,
    optimizer="adamw",
    weight_decay=0.0,
    dropout=0.0,
    n_blocks=2,
    base_width=8,
)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory):
    """One CNNLAB_HOME for the module (the studies below share its SQLite file)."""
    path = tmp_path_factory.mktemp("tune-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_HOME", str(path))
        mp.delenv("CNNLAB_DATA_ROOTS", raising=False)
        yield path


@pytest.fixture(scope="module")
def base(home: Path, digits_dir: Path):
    """Tuning base config: 12 px digits, 3 epochs per trial."""
    return tune.base_config(digits_dir, image_size=SIZE, epochs=3)


@pytest.fixture(scope="module")
def prepared(base):
    """The digits decoded once for every study in this module."""
    return prepare(base.data)


@pytest.fixture(scope="module")
def pruned_study(base, prepared):
    """A TPE study whose third trial uses an awful learning rate, so the median pruner stops it."""
    study = tune.open_study("pruning", sampler="tpe")
    for lr in (3e-3, 5e-3, 1e-5):  # two good trials set the median, the third is far below it
        study.enqueue_trial({"lr": lr})
    events: list[trial_runner.TrialEvent] = []
    study = tune.tune(
        tune.TuneConfig(base, LR_ONLY, study_name="pruning", n_trials=4),
        data=prepared,
        on_trial=events.append,
    )
    return study, events


# ---------------------------------------------------------------- search space
def test_space_parses_ranges_choices_fixed_and_null():
    space = SearchSpace.from_dict(
        {
            "_comment": "ignored",
            "lr": {"low": 1e-4, "high": 1e-2, "log": True},
            "optimizer": ["adamw", "sgd"],
            "dropout": 0.25,
            "weight_decay": None,
        }
    )
    assert space.lr == Range(1e-4, 1e-2, log=True)
    assert space.optimizer == Choices(("adamw", "sgd"))
    assert space.dropout == 0.25 and space.weight_decay is None
    assert "dropout" not in space.searched() and "lr" in space.searched()
    assert SearchSpace.from_dict(space.to_dict()) == space


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"lr": {"low": 0.1, "high": 0.01}}, "search.lr"),
        ({"lr": {"low": 0.0, "high": 0.1, "log": True}}, "search.lr"),
        ({"optimizer": {"choices": ["adamw", "lion"]}}, "search.optimizer"),
        ({"optimizer": {"low": 1, "high": 2}}, "search.optimizer"),
        ({"batch_size": {"choices": [32.5]}}, "search.batch_size"),
        ({"dropout": {"low": 0.0, "high": 2.0}}, "search.dropout"),
        ({"n_blocks": {"from": 1}}, "search.n_blocks"),
        ({"momentum": 0.9}, "momentum"),
    ],
)
def test_space_errors_name_the_field(raw, field):
    with pytest.raises(ConfigError, match=field):
        SearchSpace.from_dict(raw)


def test_space_dimensions_must_fit_the_model():
    with pytest.raises(ConfigError, match="search.n_blocks applies to custom CNNs"):
        SearchSpace(n_blocks=Range(1, 3)).validate("resnet18")
    with pytest.raises(ConfigError, match="search.strategy applies to transfer models"):
        SearchSpace(strategy=Choices(("fine_tune",))).validate("custom")
    assert SearchSpace.default_for("resnet18").strategy is not None
    assert SearchSpace.default_for("custom").n_blocks is not None


def test_apply_params_maps_every_dimension(base):
    space = SearchSpace(optimizer="sgd", dropout=None)
    cfg = apply_params(
        base,
        space,
        {"lr": 0.01, "batch_size": 32, "weight_decay": 1e-4, "n_blocks": 3, "base_width": 8},
    )
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.optimizer) == (0.01, 32, "sgd")
    assert cfg.train.weight_decay == 1e-4
    assert cfg.model.channels == [8, 16, 32]  # widths double per block
    assert cfg.model.dropout == base.model.dropout  # null keeps the base value
    assert base.train.lr != 0.01  # the base is copied, never changed


def test_example_space_file_loads():
    space = SearchSpace.load(REPO / "assets" / "search_space.example.json").validate("custom")
    assert {"lr", "n_blocks", "base_width"} <= set(space.searched())


# ---------------------------------------------------------------- studies
def test_study_prunes_and_links_trials_to_runs(pruned_study):
    study, events = pruned_study
    summary = tune.tune_summary(study)
    assert summary["n_trials"] == 4 and [e.number for e in events] == [0, 1, 2, 3]
    assert summary["n_pruned"] >= 1 and study.trials[2].state == optuna.trial.TrialState.PRUNED
    assert summary["best_value"] > 0.5 and summary["best_params"]["lr"] > 1e-4
    for trial in study.trials:
        run = runs.load_run(trial.user_attrs["run_id"])
        run_summary = runs.read_summary(run)
        assert (run_summary["study"], run_summary["trial"]) == ("pruning", trial.number)
        epochs = [r["val_acc"] for r in runs.read_metrics(run)]
        assert epochs == [trial.intermediate_values[e] for e in sorted(trial.intermediate_values)]
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert run_summary["status"] == "pruned" and len(epochs) < 3  # stopped at once
        else:
            assert run_summary["status"] == "completed"
            assert trial.value == max(epochs)  # the objective is the best val accuracy
    best = tune.best_config(study)
    assert best.train.lr == summary["best_params"]["lr"] and best.model.channels == [8, 16]


def test_tune_figures(pruned_study):
    study, _ = pruned_study
    inter = plots.tune_intermediate_figure(study)
    lengths = sorted(len(trace.x) for trace in inter.data)
    assert len(inter.data) == 4 and lengths[0] < 3 == lengths[-1]  # the pruned trial is shorter
    assert plots.tune_history_figure(study).data
    assert plots.tune_parallel_figure(study).data
    assert plots.tune_importance_figure(study) is not None
    assert plots.tune_importance_figure(optuna.create_study(direction="maximize")) is None


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_samplers_run_and_resume_continues_numbering(sampler, base, prepared):
    name = f"resume-{sampler}"
    kwargs = dict(study_name=name, sampler=sampler, pruner="none")
    small = apply_params(base, LR_ONLY, {})
    small.train.epochs = 1
    study = tune.tune(tune.TuneConfig(small, LR_ONLY, n_trials=2, **kwargs), data=prepared)
    assert [t.number for t in study.trials] == [0, 1]
    study = tune.tune(
        tune.TuneConfig(small, LR_ONLY, n_trials=3, **kwargs), data=prepared
    )  # resumes: one more trial
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert len({t.params["lr"] for t in study.trials}) == 3  # a resumed seed does not replay
    assert len({t.user_attrs["run_id"] for t in study.trials}) == 3
    assert (
        tune.tune(tune.TuneConfig(small, LR_ONLY, n_trials=3, **kwargs), data=prepared)
        .trials[-1]
        .number
        == 2
    )  # full: no-op


def test_failed_trial_is_recorded_and_study_goes_on(base, prepared):
    space = SearchSpace(**{**LR_ONLY.__dict__, "n_blocks": Choices((2, 5))})
    study = tune.open_study("failing", sampler="random")
    study.enqueue_trial({"lr": 3e-3, "n_blocks": 5})  # 5 blocks do not fit 12 px: ConfigError
    study.enqueue_trial({"lr": 3e-3, "n_blocks": 2})
    short = apply_params(base, LR_ONLY, {})
    short.train.epochs = 1
    study = tune.tune(
        tune.TuneConfig(short, space, study_name="failing", n_trials=2), data=prepared
    )
    first, *rest = study.trials  # --trials counts finished trials: a failure is made up for
    assert first.state == optuna.trial.TrialState.FAIL and "12 px" in first.user_attrs["error"]
    assert runs.read_summary(runs.load_run(first.user_attrs["run_id"]))["status"] == "failed"
    assert len(rest) == 2 and all(t.state != optuna.trial.TrialState.FAIL for t in rest)
    assert tune.tune_summary(study)["n_failed"] == 1


def test_stop_event_ends_the_study_and_marks_the_running_trial(base, prepared):
    stop = threading.Event()

    def stop_after_first_epoch(event: Event) -> None:
        if isinstance(event, EpochEnd):
            stop.set()

    study = tune.tune(
        tune.TuneConfig(base, LR_ONLY, study_name="stopping", n_trials=5),
        data=prepared,
        stop_event=stop,
        fit_callbacks=(stop_after_first_epoch,),
    )
    (trial,) = study.trials  # no new trial is asked for once stop is set
    assert trial.state == optuna.trial.TrialState.FAIL
    assert "stopped by the user" in trial.user_attrs["error"]


def test_tune_needs_a_budget_and_valid_names(base):
    with pytest.raises(ConfigError, match="sampler"):
        tune.make_sampler("grid", 0)
    with pytest.raises(ConfigError, match="pruner"):
        tune.make_pruner("hyperband")
    with pytest.raises(ConfigError, match="budget"):
        trial_runner.run_trials(tune.open_study("nobudget"), lambda t: 0.0)
    with pytest.raises(ConfigError, match="storage"):
        tune.open_storage("nosuchdb://x")


# ---------------------------------------------------------------- CLI
def _space_file(tmp_path: Path) -> Path:
    path = tmp_path / "space.json"
    path.write_text(json.dumps(LR_ONLY.to_dict()))
    return path


def test_cli_json_contract_and_resume(home, digits_dir, tmp_path, capsys):
    args = ["tune", str(digits_dir), "--space", str(_space_file(tmp_path)), "--epochs", "1"]
    args += ["--image-size", str(SIZE), "--study", "cli", "--sampler", "random", "--json"]
    assert cli.main([*args, "--trials", "2"]) == 0
    first = json.loads(capsys.readouterr().out)  # stdout holds only the one JSON object
    assert cli.main([*args, "--trials", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("study", "best_value", "best_params", "n_complete", "n_pruned", "n_failed"):
        assert key in out
    assert out["study"] == "cli" and first["n_trials"] == 2 and out["n_trials"] == 3
    assert [t["number"] for t in out["trials"]] == [0, 1, 2]
    assert {"number", "state", "value", "params", "run_id", "duration"} <= set(out["trials"][0])
    assert out["best_value"] == max(t["value"] for t in out["trials"])


def test_cli_table_and_errors(home, digits_dir, tmp_path, capsys):
    args = ["tune", str(digits_dir), "--space", str(_space_file(tmp_path)), "--epochs", "1"]
    assert cli.main([*args, "--image-size", str(SIZE), "--trials", "1", "--study", "t"]) == 0
    out = capsys.readouterr().out
    assert "    0  complete" in out and "best trial 0: val_acc" in out and "lr: " in out
    bad = tmp_path / "bad.json"
    bad.write_text('{"dropout": {"low": 0.5, "high": 0.1}}')
    assert cli.main(["tune", str(digits_dir), "--trials", "1", "--space", str(bad)]) == 2
    assert "search.dropout" in capsys.readouterr().err


@pytest.mark.slow
def test_two_worker_processes_share_one_sqlite_study(home, digits_dir, base, prepared, tmp_path):
    n = 4
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    cmd = [sys.executable, "-m", "cnnlab.cli", "tune", str(digits_dir), "--trials", str(n)]
    cmd += ["--storage", storage, "--study", "s", "--space", str(_space_file(tmp_path))]
    cmd += ["--epochs", "1", "--image-size", str(SIZE), "--pruner", "none", "--json"]
    env = {**os.environ, "CNNLAB_HOME": str(home)}  # the decoded digits are cached there already
    workers = [  # identical flags, identical seed: the workers must still not duplicate
        subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0]
    assert all(json.loads(o)["study"] == "s" for o in outs)
    study = tune.load_study("s", storage)
    trials = study.trials
    assert sorted(t.number for t in trials) == list(range(n))  # none lost, none extra
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.params["lr"] for t in trials}) == n  # n distinct configurations
    run_ids = {t.user_attrs["run_id"] for t in trials}
    assert len(run_ids) == n
    pids = {runs.read_summary(runs.load_run(r))["pid"] for r in run_ids}
    assert len(pids) == 2  # both workers took trials
