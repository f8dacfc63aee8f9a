"""Run configuration as dataclasses: every field has a default and a comment, JSON round-trips.

`validate()` rejects a bad value with a message naming the field and its allowed range, so the CLI,
the dashboard and tuning all fail the same way on the same mistake.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "onecycle")
SELECT = ("best", "last")  # which epoch's weights a run keeps
RECIPES = ("auto", "fixed")
NORMALIZE = ("dataset", "imagenet", "none")
STRATEGIES = ("feature_extraction", "fine_tune")
DEVICES = ("auto", "cpu", "cuda", "mps")
SPLITS = ("train", "val", "test")  # the three splits of a data set, in this order everywhere
EVAL_SPLITS = tuple(reversed(SPLITS))  # what evaluation offers: the held-out test split first


def _check_range(section: str, name: str, value: float, lo: float, hi: float) -> None:
    if not (lo <= value <= hi):
        raise ConfigError(f"{section}.{name} must be between {lo} and {hi}, got {value}")


def _check_choice(section: str, name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{section}.{name} must be one of {', '.join(choices)}, got {value!r}")


@dataclass
class DataConfig:
    path: str = ""  # image folder (class folders, or train/val/test folders of them), .zip, or .csv
    image_size: int = 32  # square side in pixels every image is resized to (decoded once, cached)
    val_fraction: float = 0.15  # share of each class held out for validation (early stopping)
    test_fraction: float = 0.15  # share of each class kept for the one final test evaluation
    seed: int = 0  # seeds the stratified split, so the same data always splits the same way
    path_column: str = ""  # CSV only: the image path/id column (default: found by name)
    label_column: str = ""  # CSV only: the label column (default: found by name)
    images: str = ""  # CSV only: folder the CSV's paths are relative to (default: the CSV's)
    exclude_classes: list[str] = field(default_factory=list)  # classes left out of the run
    drop_duplicates: bool = False  # keep one file of each group of copies (files stay on disk)
    drop_conflicts: bool = False  # leave out copies whose labels disagree (likely label errors)

    def validate(self) -> None:
        """Raise ConfigError naming the first field out of range."""
        if not self.path:
            raise ConfigError("data.path is empty: give an image folder or a .zip of class folders")
        if (
            self.path_column or self.label_column or self.images
        ) and not self.path.lower().endswith(".csv"):
            raise ConfigError(
                "data.path_column, data.label_column and data.images only apply to a .csv path"
            )
        for name in self.exclude_classes:
            if not isinstance(name, str) or not name.strip():
                raise ConfigError(f"data.exclude_classes holds an empty class name: {name!r}")
        _check_range("data", "image_size", self.image_size, 8, 1024)
        _check_range("data", "val_fraction", self.val_fraction, 0.0, 0.5)
        _check_range("data", "test_fraction", self.test_fraction, 0.0, 0.5)
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ConfigError(
                "data.val_fraction + data.test_fraction must leave >= 10% for training"
            )


@dataclass
class AugmentConfig:
    crop_scale_min: float = (
        0.8  # random resized crop keeps this share of the area at least (1 = off)
    )
    crop_scale_max: float = 1.0  # ... and at most
    hflip: float = (
        0.0  # probability of a horizontal flip (0 = off; 0.5 for photos, 0 for digits/text)
    )
    rotation: float = 10.0  # max rotation in degrees, either way
    brightness: float = 0.1  # colour jitter strength: factor drawn from [1-b, 1+b]
    contrast: float = 0.1  # ... same for contrast
    saturation: float = 0.0  # ... same for saturation
    normalize: str = (
        "dataset"  # mean/std for normalising: the training split's, ImageNet's, or none
    )

    def validate(self) -> None:
        """Raise ConfigError naming the first field out of range."""
        _check_range("augment", "crop_scale_min", self.crop_scale_min, 0.05, 1.0)
        _check_range("augment", "crop_scale_max", self.crop_scale_max, 0.05, 1.0)
        if self.crop_scale_min > self.crop_scale_max:
            raise ConfigError("augment.crop_scale_min must not exceed augment.crop_scale_max")
        _check_range("augment", "hflip", self.hflip, 0.0, 1.0)
        _check_range("augment", "rotation", self.rotation, 0.0, 180.0)
        for name in ("brightness", "contrast", "saturation"):
            _check_range("augment", name, getattr(self, name), 0.0, 1.0)
        _check_choice("augment", "normalize", self.normalize, NORMALIZE)

    @property
    def enabled(self) -> bool:
        """True when any random transform is switched on."""
        return (
            self.crop_scale_min < 1.0
            or self.hflip > 0
            or self.rotation > 0
            or self.brightness > 0
            or self.contrast > 0
            or self.saturation > 0
        )


AUGMENT_PRESETS: dict[str, AugmentConfig] = {
    "none": AugmentConfig(
        crop_scale_min=1.0, hflip=0.0, rotation=0.0, brightness=0.0, contrast=0.0, saturation=0.0
    ),
    "light": AugmentConfig(),  # the defaults: safe for digits and text (no flip) and for photos
    "standard": AugmentConfig(
        crop_scale_min=0.7, hflip=0.5, rotation=15.0, brightness=0.2, contrast=0.2, saturation=0.2
    ),
    "strong": AugmentConfig(
        crop_scale_min=0.4, hflip=0.5, rotation=30.0, brightness=0.4, contrast=0.4, saturation=0.4
    ),
}


@dataclass
class ModelConfig:
    name: str = "custom"  # registry name: custom, simple_cnn, resnet18, resnet34, ...
    channels: list[int] = field(
        default_factory=lambda: [32, 64, 128]
    )  # conv channels, one per block
    kernel_size: int = 3  # conv kernel side (odd; padding keeps the size until the pool)
    batch_norm: bool = True  # BatchNorm after each conv: faster, steadier training
    residual: bool = False  # add a residual (skip) connection around each block's convs
    convs_per_block: int = 1  # convolutions in each block before its pooling
    head_units: int = 128  # hidden units of the classifier head (0 = straight to the classes)
    # average each channel over the last map before the head (any input size, far fewer weights)
    # instead of flattening it; the small-data recipe switches it on
    global_pool: bool = False
    dropout: float = 0.2  # dropout before the classifier's last layer
    # transfer learning (torchvision backbones)
    strategy: str = (
        "fine_tune"  # feature_extraction: train the new head only; fine_tune: head, then backbone
    )
    # imagenet (downloaded once into the torch hub cache), random, a .pth/.pt file, an http(s)
    # URL (downloaded into the same cache), or run:<run_id>
    weights: str = "imagenet"
    freeze_epochs: int = 1  # fine_tune: epochs that train only the head before the backbone thaws
    unfreeze_blocks: int = 0  # fine_tune: backbone stages thawed after that, from the top (0 = all)

    def validate(self) -> None:
        """Raise ConfigError naming the first field out of range."""
        if not self.channels:
            raise ConfigError("model.channels needs at least one block, e.g. [32, 64]")
        if len(self.channels) > 8:
            raise ConfigError(f"model.channels allows at most 8 blocks, got {len(self.channels)}")
        for c in self.channels:
            _check_range("model", "channels", c, 1, 2048)
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"model.kernel_size must be odd (3, 5, 7), got {self.kernel_size}")
        _check_range("model", "kernel_size", self.kernel_size, 1, 11)
        _check_range("model", "convs_per_block", self.convs_per_block, 1, 4)
        _check_range("model", "head_units", self.head_units, 0, 8192)
        _check_range("model", "dropout", self.dropout, 0.0, 0.95)
        _check_choice("model", "strategy", self.strategy, STRATEGIES)
        _check_range("model", "freeze_epochs", self.freeze_epochs, 0, 10_000)
        _check_range("model", "unfreeze_blocks", self.unfreeze_blocks, 0, 1_000)


@dataclass
class TrainConfig:
    epochs: int = 15  # full passes over the training split (early stopping may end sooner)
    batch_size: int = 64  # images per optimisation step
    lr: float = 3e-3  # learning rate of the new/custom layers (peak lr for one-cycle)
    backbone_lr: float = 1e-4  # learning rate of the unfrozen backbone block when fine-tuning
    optimizer: str = "adamw"  # adam, adamw, or sgd (with momentum)
    momentum: float = 0.9  # SGD momentum (ignored by Adam/AdamW)
    weight_decay: float = 5e-4  # L2 penalty (decoupled for AdamW)
    schedule: str = "onecycle"  # constant, cosine decay, or one-cycle (warm-up then anneal)
    label_smoothing: float = 0.1  # softens one-hot targets; helps calibration and generalisation
    mixup: float = 0.0  # MixUp: blend image pairs and their labels, Beta(a, a) weights (0 = off)
    class_weights: bool = False  # weight the loss by inverse class frequency (imbalanced data)
    patience: int = 5  # stop after this many epochs without a lower val loss (0 = never)
    select: str = "best"  # weights kept at the end: the lowest val loss epoch's, or the last's
    # auto: a from-scratch model on a small training split (<= recipe.SMALL images) gets the
    # small-data recipe for every field still at its default (recipe.py; the run's summary lists
    # what changed); fixed: exactly these settings
    recipe: str = "auto"
    seed: int = 0  # seeds weights, shuffling and augmentation: same seed, same CPU result
    device: str = "auto"  # auto picks CUDA, then Apple MPS, then the CPU
    amp: bool = True  # mixed precision (bf16/fp16) on CUDA; ignored on CPU
    channels_last: bool = True  # NHWC memory layout: faster convolutions on CUDA and CPU
    # also fit a pixel SVM on the same split (seconds): summary.json's baseline_accuracy, so a CNN
    # that does not beat a kernel method shows at once
    baseline: bool = True

    def validate(self) -> None:
        """Raise ConfigError naming the first field out of range."""
        _check_range("train", "epochs", self.epochs, 1, 10_000)
        _check_range("train", "batch_size", self.batch_size, 1, 65_536)
        _check_range("train", "lr", self.lr, 1e-8, 10.0)
        _check_range("train", "backbone_lr", self.backbone_lr, 0.0, 10.0)
        _check_choice("train", "optimizer", self.optimizer, OPTIMIZERS)
        _check_range("train", "momentum", self.momentum, 0.0, 0.999)
        _check_range("train", "weight_decay", self.weight_decay, 0.0, 1.0)
        _check_choice("train", "schedule", self.schedule, SCHEDULES)
        _check_range("train", "label_smoothing", self.label_smoothing, 0.0, 0.5)
        _check_range("train", "mixup", self.mixup, 0.0, 10.0)
        _check_range("train", "patience", self.patience, 0, 10_000)
        _check_choice("train", "select", self.select, SELECT)
        _check_choice("train", "recipe", self.recipe, RECIPES)
        _check_choice("train", "device", self.device, DEVICES)


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str = ""  # optional label shown in the runs list

    def validate(self) -> RunConfig:
        """Validate every section; returns self so calls can chain."""
        self.data.validate()
        self.augment.validate()
        self.model.validate()
        self.train.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Indented JSON text."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        """Build from a (possibly partial) dict; unknown keys are an error naming the key."""
        sections = {
            "data": DataConfig,
            "augment": AugmentConfig,
            "model": ModelConfig,
            "train": TrainConfig,
        }
        unknown = set(raw) - set(sections) - {"name"}
        if unknown:
            raise ConfigError(f"unknown config section(s): {', '.join(sorted(unknown))}")
        kwargs: dict[str, Any] = {"name": str(raw.get("name", ""))}
        for key, klass in sections.items():
            kwargs[key] = _section_from_dict(key, klass, raw.get(key) or {})
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        """Parse JSON text."""
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config is not valid JSON: {exc}") from exc

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """Read a config.json file."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        return cls.from_json(p.read_text())


def section_from_dict(section: str, raw: dict[str, Any]) -> Any:
    """One config section ("data", "augment", "model", "train") from a dict: unknown fields
    refused, values coerced to the field's type, then validated (errors name the field)."""
    klass = {"data": DataConfig, "augment": AugmentConfig, "model": ModelConfig,
             "train": TrainConfig}.get(section)  # fmt: skip
    if klass is None:
        raise ConfigError(f"unknown config section {section!r}; use data, augment, model or train")
    value = _section_from_dict(section, klass, raw)
    value.validate()
    return value


def section_from_json(section: str, text: str) -> Any:
    """section_from_dict of JSON text (e.g. a section cached as a string)."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{section} config is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{section} config must be a JSON object, got {type(raw).__name__}")
    return section_from_dict(section, raw)


def section_to_json(value: Any) -> str:
    """A config section as compact JSON text (section_from_json reads it back)."""
    return json.dumps(dataclasses.asdict(value), sort_keys=True)


def _section_from_dict(section: str, klass: type, raw: dict[str, Any]) -> Any:
    names = {f.name: f for f in dataclasses.fields(klass)}
    unknown = set(raw) - set(names)
    if unknown:
        allowed = ", ".join(names)
        raise ConfigError(
            f"unknown field(s) {section}.{', '.join(sorted(unknown))}; allowed: {allowed}"
        )
    values = {}
    for key, value in raw.items():
        default = getattr(klass(), key)
        values[key] = _coerce(section, key, value, default)
    return klass(**values)


_STRING_LISTS = frozenset({"exclude_classes"})


def _coerce(section: str, key: str, value: Any, default: Any) -> Any:
    """Match the default's type so '0.001' from a form or int from JSON become the right kind."""
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("not a whole number")
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, list):
            if key in _STRING_LISTS:  # names may hold spaces: a string is a comma-separated list
                if isinstance(value, str):
                    value = [v.strip() for v in value.split(",") if v.strip()]
                if not isinstance(value, list):
                    raise TypeError("not a list")
                return [str(v) for v in value]
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split() if v]
            return [int(v) for v in value]
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{section}.{key}: cannot use {value!r} ({exc})") from exc
