"""Config dataclasses: defaults validate, JSON round-trips, bad values name the field."""

import json
from pathlib import Path

import pytest

from cnnlab.config import AUGMENT_PRESETS, RunConfig
from cnnlab.errors import ConfigError


def _valid() -> RunConfig:
    cfg = RunConfig()
    cfg.data.path = "/some/folder"
    return cfg


def test_defaults_validate_and_round_trip():
    cfg = _valid().validate()
    again = RunConfig.from_json(cfg.to_json())
    assert again == cfg
    assert again.model.channels == [32, 64, 128]


def test_partial_dict_fills_defaults_and_coerces_types():
    cfg = RunConfig.from_dict(
        {
            "data": {"path": "x", "image_size": "48"},
            "train": {"lr": "0.01", "class_weights": "true"},
        }
    )
    assert cfg.data.image_size == 48 and isinstance(cfg.data.image_size, int)
    assert cfg.train.lr == pytest.approx(0.01)
    assert cfg.train.class_weights is True
    assert cfg.train.epochs == 15


@pytest.mark.parametrize(
    ("section", "field", "value", "needle"),
    [
        ("train", "lr", 50.0, "train.lr"),
        ("train", "optimizer", "rmsprop", "train.optimizer must be one of adam, adamw, sgd"),
        ("model", "kernel_size", 4, "model.kernel_size must be odd"),
        ("model", "dropout", 1.5, "model.dropout"),
        ("data", "image_size", 4, "data.image_size must be between 8 and 1024"),
        ("augment", "hflip", 2.0, "augment.hflip"),
        ("train", "schedule", "step", "train.schedule"),
    ],
)
def test_bad_values_name_the_field(section, field, value, needle):
    cfg = _valid()
    setattr(getattr(cfg, section), field, value)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        cfg.validate()


def test_unknown_keys_are_rejected_by_name():
    with pytest.raises(ConfigError, match="train.lerning_rate"):
        RunConfig.from_dict({"train": {"lerning_rate": 0.1}})
    with pytest.raises(ConfigError, match="unknown config section"):
        RunConfig.from_dict({"trainer": {}})


def test_empty_path_and_bad_json_are_clear():
    with pytest.raises(ConfigError, match="data.path is empty"):
        RunConfig().validate()
    with pytest.raises(ConfigError, match="not valid JSON"):
        RunConfig.from_json("{nope")


def test_load_reads_a_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"data": {"path": "d"}, "model": {"channels": "16, 32"}}))
    cfg = RunConfig.load(path)
    assert cfg.model.channels == [16, 32]
    with pytest.raises(ConfigError, match="does not exist"):
        RunConfig.load(tmp_path / "missing.json")


def test_presets_are_valid_and_ordered_by_strength():
    for preset in AUGMENT_PRESETS.values():
        preset.validate()
    assert not AUGMENT_PRESETS["none"].enabled
    assert AUGMENT_PRESETS["strong"].rotation > AUGMENT_PRESETS["light"].rotation


def test_the_example_config_in_assets_is_complete_and_valid():
    path = Path(__file__).resolve().parents[1] / "assets" / "config.example.json"
    cfg = RunConfig.load(path)
    cfg.data.path = "/data"
    cfg.validate()
    assert set(json.loads(path.read_text())) == set(RunConfig().to_dict())  # every section


def test_each_section_round_trips_validated() -> None:
    from cnnlab import config as config_mod

    model = config_mod.ModelConfig(channels=[8, 16], dropout=0.3)
    text = config_mod.section_to_json(model)
    assert config_mod.section_from_json("model", text) == model
    with pytest.raises(config_mod.ConfigError, match="model.dropout"):
        config_mod.section_from_dict("model", {"dropout": 7})  # validated, unlike Model(**raw)
    with pytest.raises(config_mod.ConfigError, match="unknown field"):
        config_mod.section_from_dict("train", {"epochz": 3})
    with pytest.raises(config_mod.ConfigError, match="unknown config section"):
        config_mod.section_from_dict("optimizer", {})
