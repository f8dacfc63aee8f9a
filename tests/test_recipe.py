"""The small-data recipe: when it applies, what it changes (never a field you set), what a run
records, and the pretrained route checked against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from pathlib import Path

import pytest

from cnnlab import cli, models, preflight, recipe, runs, train, weights
from cnnlab.config import RunConfig


def _config(path: str = "x", **train_kw) -> RunConfig:
    config = RunConfig()
    config.data.path = path
    for key, value in train_kw.items():
        setattr(config.train, key, value)
    return config


def test_a_small_set_from_scratch_gets_the_recipe() -> None:
    config, plan = recipe.resolve(_config(), 315)
    assert plan.applies and "315 training images" in plan.line()
    for key, value in recipe.SMALL_DATA.items():
        section, name = key.split(".")
        assert getattr(getattr(config, section), name) == value
    assert config.train.epochs == recipe.epochs_for(315) == 95  # 30k images seen
    assert RunConfig().train.epochs == 15  # the input config is not touched


def test_fields_you_set_are_yours() -> None:
    mine = _config(epochs=20, mixup=0.0)
    mine.model.channels = [16, 32]
    config, plan = recipe.resolve(mine, 300)
    assert config.train.epochs == 20 and config.model.channels == [16, 32]
    assert "train.epochs" not in plan.changes and "model.channels" not in plan.changes
    # a value equal to its default counts as the default: mixup 0.0 is the recipe's to set
    assert config.train.mixup == recipe.SMALL_DATA["train.mixup"] and config.model.residual


@pytest.mark.parametrize(
    ("change", "n_train", "why"),
    [
        ({"recipe": "fixed"}, 300, "fixed"),
        ({}, 5_000, "5000 training images"),
        ({}, None, "unknown"),
    ],
)
def test_when_it_does_not_apply(change, n_train, why) -> None:
    config, plan = recipe.resolve(_config(**change), n_train)
    assert not plan.applies and why in plan.line()
    assert config.train.epochs == 15 and config.model.global_pool is False


@pytest.mark.parametrize(("name", "why"), [("resnet18", "pretrained"), ("simple_cnn", "fixed")])
def test_fixed_architectures_and_backbones_keep_their_settings(name, why) -> None:
    config = _config()
    config.model.name = name
    assert why in recipe.plan(config, 300).reason


def test_the_schedule_is_sized_from_the_data() -> None:
    assert recipe.epochs_for(100) == recipe.MAX_EPOCHS
    assert recipe.epochs_for(600) == 50
    assert recipe.epochs_for(recipe.SMALL) == 30
    assert recipe.epochs_for(5_000) == recipe.MIN_EPOCHS == 20  # 6 would be too few


def test_a_run_records_what_the_recipe_changed(colours_dir: Path, workspace: Path) -> None:
    config = _config(str(colours_dir), epochs=2, batch_size=8, device="cpu", baseline=False)
    config.data.image_size = 16
    summary = train.fit(config)
    entry = summary["recipe"]
    assert entry["applied"] and entry["changes"]["train.mixup"] == {"yours": 0.0, "recipe": 0.2}
    assert "train.epochs" not in entry["changes"]  # 2 was set
    rows = runs.read_metrics(runs.load_run(summary["run_id"]))
    assert summary["best_epoch"] == min(rows, key=lambda r: r["val_loss"])["epoch"]
    saved = runs.read_config(runs.load_run(summary["run_id"]))
    assert saved.model.global_pool and saved.train.mixup == recipe.SMALL_DATA["train.mixup"]
    # the saved config is what ran: training from it again changes nothing more
    assert recipe.plan(saved, summary["n_train"]).changes == {}


def test_fixed_is_recorded_and_select_last_keeps_the_last_epoch(
    colours_dir: Path, workspace: Path
) -> None:
    config = _config(str(colours_dir), epochs=3, batch_size=8, device="cpu", recipe="fixed",
                     select="last", patience=0)  # fmt: skip
    config.data.image_size = 16
    summary = train.fit(config)
    assert summary["recipe"] == {
        "applied": False,
        "reason": "fixed: your settings are used as they are",
        "changes": {},
    }
    assert summary["best_epoch"] == summary["epochs_run"] == 3 and summary["select"] == "last"


def test_the_cli_says_it_in_one_line(colours_dir: Path, workspace: Path, capsys) -> None:
    argv = ["train", str(colours_dir), "--epochs", "1", "--image-size", "16", "--batch-size", "8",
            "--device", "cpu", "--no-baseline", "--json"]  # fmt: skip
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "note: small-data recipe (" in captured.err
    assert json.loads(captured.out)["recipe"]["applied"] is True
    assert cli.main([*argv, "--recipe", "fixed"]) == 0
    captured = capsys.readouterr()
    assert "note: recipe: fixed" in captured.err
    assert json.loads(captured.out)["recipe"]["applied"] is False


# ---------------------------------------------------------------- the pretrained route
class _Files(http.server.ThreadingHTTPServer):
    """A real file server on 127.0.0.1 (GET only, as the simplest mirrors are)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                body = files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.daemon_threads = True
        threading.Thread(target=self.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """CNNLAB_WEIGHTS_MIRROR on a local server holding resnet18's file name, an empty cache."""
    name = Path(models.get_spec("resnet18").weights.url).name
    server = _Files({f"/{name}": b"x" * 64})
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(weights.MIRROR_ENV, server.base)
    monkeypatch.setattr(weights, "_PROBED", {})
    yield server
    server.shutdown()
    server.server_close()


def test_downloadable_weights_are_proposed_first(mirror) -> None:
    advice = recipe.pretrained_advice(_config(), 300)
    assert advice.open and "download once on first use" in advice.line
    assert "--model resnet18" in advice.line


def test_cached_weights_are_proposed_without_the_network(mirror, monkeypatch) -> None:
    url = weights.imagenet_url(models.get_spec("resnet18"))
    path = weights.cached_path(url)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"cached")
    monkeypatch.setenv(weights.MIRROR_ENV, "http://127.0.0.1:1")  # nothing listens there
    monkeypatch.setattr(weights, "cached_path", lambda _url: path)
    advice = recipe.pretrained_advice(_config(), 300)
    assert advice.open and "cached here" in advice.line


def test_unreachable_weights_fall_back_to_the_recipe_in_one_line(mirror, monkeypatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # bound, never listening: connections are refused
        monkeypatch.setenv(weights.MIRROR_ENV, f"http://127.0.0.1:{closed}")
        advice = recipe.pretrained_advice(_config(), 300)
    assert not advice.open
    assert advice.line.startswith("pretrained weights cannot be downloaded here (127.0.0.1")
    assert advice.line.endswith("training from scratch with the small-data recipe")


def test_a_missing_file_names_the_status(mirror, monkeypatch) -> None:
    monkeypatch.setenv(weights.MIRROR_ENV, mirror.base + "/elsewhere")
    advice = recipe.pretrained_advice(_config(), 300)
    assert not advice.open and "HTTP 404" in advice.line


def test_no_advice_for_big_sets_or_backbones(mirror) -> None:
    assert recipe.pretrained_advice(_config(), 5_000) is None
    config = _config()
    config.model.name = "resnet18"
    assert recipe.pretrained_advice(config, 300) is None


def test_run_notes_carry_both_lines(colours_dir: Path, workspace: Path, mirror) -> None:
    notes = preflight.run_notes(_config(str(colours_dir)))
    assert notes[0].startswith("small-data recipe (")
    assert "a pretrained resnet18 usually beats" in notes[1]
