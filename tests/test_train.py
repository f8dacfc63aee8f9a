"""fit(): learning on real digits, best-checkpoint restore, early stop, user stop, NaN, determinism."""

from __future__ import annotations

import threading

import pytest
import torch

from cnnlab import data, epoch, fit_setup, models, runs, train
from cnnlab.config import DataConfig
from cnnlab.errors import TrainingError
from cnnlab.events import EpochEnd, Progress


@pytest.fixture(scope="module")
def prepared(digits_dir, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("CNNLAB_HOME", str(tmp_path_factory.mktemp("train-home")))
    yield data.prepare(DataConfig(path=str(digits_dir), image_size=16))
    mp.undo()


def test_fit_learns_digits_and_writes_a_complete_run(digits_dir, prepared, workspace, tiny_config):
    events = []
    summary = train.fit(tiny_config(digits_dir, epochs=4), data=prepared, callbacks=[events.append])
    assert summary["status"] == "completed"
    assert summary["test_accuracy"] > 0.85, summary
    assert summary["epochs_run"] == 4
    for key in (
        "run_id",
        "run_dir",
        "best_epoch",
        "stopped_early",
        "val_accuracy",
        "train_images_per_s",
        "seconds",
        "device",
    ):
        assert key in summary
    kinds = [e.kind for e in events]
    assert kinds[0] == "RunStarted" and kinds[-1] == "Finished"
    assert kinds.count("EpochEnd") == 4 and "Progress" in kinds
    run = runs.load_run(summary["run_id"])
    rows = runs.read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert run.best_path.is_file() and run.last_path.is_file()
    split = runs.read_split(run)
    assert sum(len(v) for v in split["files"].values()) == prepared.images.shape[0]


def test_checkpoint_reloads_and_reproduces_test_accuracy(
    digits_dir, prepared, workspace, tiny_config
):
    summary = train.fit(tiny_config(digits_dir), data=prepared)
    model, config, classes, ckpt = models.load_trained(summary["run_id"])
    assert classes == prepared.classes and config.data.image_size == 16
    ctx = epoch.BatchContext(
        torch.device("cpu"), tuple(ckpt["mean"]), tuple(ckpt["std"]), None, False, False
    )
    test_x, test_y = prepared.subset("test")
    _, acc = epoch.evaluate_split(model, test_x, test_y, ctx)
    assert acc == pytest.approx(summary["test_accuracy"], abs=1e-6)


def test_best_epoch_is_restored_after_early_stopping(
    digits_dir, prepared, workspace, tiny_config, monkeypatch
):
    # The loop's own patience and restore code, fed a scripted validation-loss sequence so the
    # stop does not hang on how noisy a learning rate makes the curve on this machine.
    script = [0.9, 0.7, 0.8, 0.75, 0.1]  # best at epoch 2; patience 2 stops after epoch 4
    real_evaluate = epoch.evaluate_split
    val_calls = []

    def scripted(model, images, labels, ctx, rows=None):
        loss, acc = real_evaluate(model, images, labels, ctx, rows=rows)
        if len(val_calls) < 4:  # the per-epoch val passes; then the final val and test passes
            val_calls.append(loss)
            return script[len(val_calls) - 1], acc
        return loss, acc

    monkeypatch.setattr(fit_setup, "evaluate_split", scripted)
    cfg = tiny_config(digits_dir, epochs=12, patience=2, schedule="constant")
    summary = train.fit(cfg, data=prepared)
    run = runs.load_run(summary["run_id"])
    rows = runs.read_metrics(run)
    assert [r["val_loss"] for r in rows] == script[:4]  # epoch 5 (loss 0.1) never ran
    assert summary["stopped_early"] is True and summary["status"] == "completed"
    assert summary["best_epoch"] == 2 and summary["epochs_run"] == 4
    assert [r["best_epoch"] for r in rows] == [1, 2, 2, 2]
    best = runs.read_checkpoint(run.best_path)
    last = runs.read_checkpoint(run.last_path)
    assert best["epoch"] == 2 and last["epoch"] == 4
    # the summary's val loss is the restored epoch-2 model's real loss, not the last epoch's
    assert summary["val_loss"] == pytest.approx(val_calls[1], rel=1e-5)
    assert summary["val_loss"] != pytest.approx(val_calls[3], rel=1e-5)


def test_same_seed_gives_the_same_metrics_on_cpu(digits_dir, prepared, workspace, tiny_config):
    a = train.fit(tiny_config(digits_dir, epochs=2, seed=7), data=prepared)
    b = train.fit(tiny_config(digits_dir, epochs=2, seed=7), data=prepared)
    ra = runs.read_metrics(runs.load_run(a["run_id"]))
    rb = runs.read_metrics(runs.load_run(b["run_id"]))
    assert [r["val_loss"] for r in ra] == [r["val_loss"] for r in rb]
    assert a["test_accuracy"] == b["test_accuracy"]


def test_stop_request_is_honoured_within_a_batch(digits_dir, prepared, workspace, tiny_config):
    stop = threading.Event()
    seen = []

    def on_event(event):
        seen.append(event)
        if isinstance(event, Progress):
            stop.set()

    cfg = tiny_config(digits_dir, epochs=50, batch_size=8)
    summary = train.fit(cfg, data=prepared, callbacks=[on_event], stop_event=stop)
    assert summary["status"] == "stopped"
    progress = [e for e in seen if isinstance(e, Progress)]
    assert len(progress) == 1  # nothing trained after the stop was seen
    assert summary["epochs_run"] < 50


@pytest.fixture
def exploding_model():
    """A registered model whose activations overflow after a few steps, as a diverging net does."""

    class Exploding(torch.nn.Module):
        def __init__(self, n_classes):
            super().__init__()
            self.fc = torch.nn.Linear(3, n_classes)
            self.register_buffer("steps", torch.zeros((), dtype=torch.long))

        def forward(self, x):
            if self.training:
                self.steps += 1
            scale = 1e30 ** self.steps.clamp(max=20).float()  # inf from the 2nd step on
            return self.fc(x.mean((2, 3))) * scale

    models.register_model("test_exploding")(lambda cfg, n, size: Exploding(n))
    yield "test_exploding"
    models.MODELS.pop("test_exploding")


def test_nan_loss_stops_with_a_clear_error(
    digits_dir, prepared, workspace, exploding_model, tiny_config
):
    cfg = tiny_config(digits_dir, epochs=3)
    cfg.model.name = exploding_model
    events = []
    with pytest.raises(TrainingError, match="learning rate is most likely too high"):
        train.fit(cfg, data=prepared, callbacks=[events.append])
    assert events[-1].kind == "Failed"
    failed = [r for r in runs.list_runs() if r["status"] == "failed"]
    assert failed and "NaN" in failed[0]["error"]


def test_class_weights_balance_inverse_frequency():
    labels = torch.tensor([0] * 90 + [1] * 10)
    w = epoch.class_weights(labels, 2)
    assert w[1] / w[0] == pytest.approx(9.0)
    assert w.mean() == pytest.approx(1.0)


def test_resume_after_stop_matches_an_uninterrupted_run(
    digits_dir, prepared, workspace, tiny_config
):
    full = train.fit(tiny_config(digits_dir, epochs=4, seed=3), data=prepared)

    stop = threading.Event()

    def stop_after_epoch_2(event):
        if isinstance(event, EpochEnd) and event.epoch == 2:
            stop.set()

    cfg = tiny_config(digits_dir, epochs=4, seed=3)
    part = train.fit(cfg, data=prepared, callbacks=[stop_after_epoch_2], stop_event=stop)
    assert part["status"] == "stopped" and part["epochs_run"] == 2
    resumed = train.resume(part["run_id"], data=prepared)
    assert resumed["status"] == "completed" and resumed["epochs_run"] == 4
    rows = runs.read_metrics(runs.load_run(part["run_id"]))
    full_rows = runs.read_metrics(runs.load_run(full["run_id"]))
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    # model, optimizer, schedule and RNG restored: the curves continue exactly as without the stop
    assert [r["val_loss"] for r in rows] == pytest.approx(
        [r["val_loss"] for r in full_rows], rel=1e-5
    )
    assert resumed["test_accuracy"] == pytest.approx(full["test_accuracy"], abs=1e-6)


def test_a_completed_run_cannot_be_resumed(digits_dir, prepared, workspace, tiny_config):
    done = train.fit(tiny_config(digits_dir, epochs=1), data=prepared)
    with pytest.raises(TrainingError, match="is completed"):
        train.resume(done["run_id"], data=prepared)


def test_stop_while_preparing_data_creates_no_run(tmp_path, workspace, tiny_config):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(40):
            Image.new("RGB", (20, 20), (i * 5, 0, 0)).save(tmp_path / "data" / cls / f"{i}.png")
    stop = threading.Event()
    stop.set()  # e.g. the user pressed Stop while the folder was still being scanned
    summary = train.fit(tiny_config(tmp_path / "data"), stop_event=stop)
    assert summary["status"] == "stopped" and summary["epochs_run"] == 0
    assert runs.list_runs() == []


def test_class_weighted_loss_trains(digits_dir, prepared, workspace, tiny_config):
    summary = train.fit(tiny_config(digits_dir, epochs=2, class_weights=True), data=prepared)
    assert summary["status"] == "completed" and summary["test_accuracy"] > 0.5
