"""The small-data recipe: what a from-scratch CNN needs to beat a kernel method on a few hundred images.

`train.recipe = "auto"` (the default) applies it when the model is trained from scratch (no
pretrained backbone) and the training split is small (<= SMALL images); every field it sets keeps
the user's value when the user changed it from the default, so each choice stays overridable.
`resolve()` is the one place that decides, called by fit(), the pre-flight and the pages.
The values were chosen by measurement on real small sets: benchmarks/bench_small_data.py and the
table in docs/performance.md.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from . import models, weights
from .config import RunConfig

# Training images at most for the small-data recipe: the sets it was measured on have 280-450;
# at 1,257 (the demo digits) the plain defaults already score ~0.996 in seconds, where the recipe
# measured 0.989-0.996 in minutes (docs/performance.md)
SMALL = 1_000
PRETRAINED = "resnet18"  # what the pretrained route proposes: small, fast on a CPU, strong
# Images seen in training (epochs x training images): the schedule is sized from the data, so a
# few hundred images get many epochs and a couple of thousand get few, a few minutes either way.
IMAGES_SEEN = 30_000
MIN_EPOCHS, MAX_EPOCHS = 20, 100

# section.field -> value. A wider, deeper residual net with global pooling (few weights in the
# head), stronger augmentation and MixUp, a one-cycle schedule sized from the data and run to its
# end (no early stop: its high-lr middle would trip patience); the lowest-val-loss epoch's
# weights are still the ones kept (train.select "last" is there for whoever wants the last).
SMALL_DATA: dict[str, Any] = {
    "model.channels": [32, 64, 128, 256],
    "model.convs_per_block": 2,
    "model.residual": True,
    "model.global_pool": True,
    "model.head_units": 0,
    "model.dropout": 0.3,
    "augment.crop_scale_min": 0.5,
    "augment.hflip": 0.5,
    "augment.rotation": 15.0,
    "augment.brightness": 0.2,
    "augment.contrast": 0.2,
    "augment.saturation": 0.2,
    "train.mixup": 0.2,
    "train.patience": 0,
}


@dataclass
class Plan:
    """What the recipe does to one config: `changes` maps section.field -> (yours, recipe's)."""

    applies: bool
    reason: str  # one line: why it applies or not
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def line(self) -> str:
        """The one line the CLI and the pages show."""
        if not self.applies:
            return f"recipe: {self.reason}"
        if not self.changes:
            return f"small-data recipe ({self.reason}): your settings already cover it"
        keys = set(self.changes)
        parts = [
            text
            for text, hit in (
                (f"{self.changes.get('train.epochs', (0, 0))[1]} epochs", "train.epochs" in keys),
                ("a residual net with global pooling", any(k.startswith("model.") for k in keys)),
                ("stronger augmentation", any(k.startswith("augment.") for k in keys)),
                ("MixUp", "train.mixup" in keys),
            )
            if hit
        ]
        return (
            f"small-data recipe ({self.reason}): {', '.join(parts)}; {len(keys)} setting(s) "
            "changed (train.recipe 'fixed' uses yours as they are)"
        )


def epochs_for(n_train: int) -> int:
    """The recipe's epoch count for a training split of n_train images."""
    return max(MIN_EPOCHS, min(MAX_EPOCHS, round(IMAGES_SEEN / max(n_train, 1))))


def _defaults() -> dict[str, Any]:
    base = RunConfig()
    return {key: _get(base, key) for key in (*SMALL_DATA, "train.epochs")}


def _get(config: RunConfig, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def plan(config: RunConfig, n_train: int | None) -> Plan:
    """Whether the recipe applies to this config and training split, and what it would change."""
    if config.train.recipe != "auto":
        return Plan(False, "fixed: your settings are used as they are")
    if models.is_transfer(config.model.name):
        return Plan(False, "not applied: a pretrained backbone brings its own features")
    if config.model.name != "custom":
        return Plan(False, f"not applied: {config.model.name} is a fixed architecture")
    if n_train is None:
        return Plan(False, "not applied: the training split's size is unknown")
    if n_train > SMALL:
        return Plan(False, f"not applied: {n_train} training images (more than {SMALL:,})")
    wanted = {**SMALL_DATA, "train.epochs": epochs_for(n_train)}
    # each block halves the side: a small input gets the first blocks only (8 px: three)
    fits = max(1, int(math.log2(max(config.data.image_size, 2))))
    if "model.channels" in wanted:  # (the benchmark leaves the model out to measure it)
        wanted["model.channels"] = wanted["model.channels"][:fits]
    defaults = _defaults()
    changes = {
        key: (_get(config, key), value)
        for key, value in wanted.items()
        if _get(config, key) == defaults[key] and _get(config, key) != value
    }
    return Plan(True, f"{n_train} training images, model trained from scratch", changes)


def apply(config: RunConfig, p: Plan) -> RunConfig:
    """A copy of config with the plan's changes made (config itself is not touched)."""
    out = copy.deepcopy(config)
    for key, (_, value) in p.changes.items():
        section, name = key.split(".")
        setattr(getattr(out, section), name, copy.deepcopy(value))
    return out


def resolve(config: RunConfig, n_train: int | None) -> tuple[RunConfig, Plan]:
    """(the config a run trains with, the plan that made it): the one rule for every caller."""
    p = plan(config, n_train)
    return (apply(config, p) if p.applies and p.changes else config), p


def summary_entry(p: Plan) -> dict[str, Any]:
    """summary.json's `recipe`: applied or not, why, and each changed field (yours -> recipe's)."""
    return {
        "applied": p.applies and bool(p.changes),
        "reason": p.reason,
        "changes": {k: {"yours": a, "recipe": b} for k, (a, b) in p.changes.items()},
    }


def fields() -> list[str]:
    """Every section.field the recipe may set (for docs and the Train page's explanation)."""
    return [*SMALL_DATA, "train.epochs"]


@dataclass
class Advice:
    """The pretrained route for a small set: the line to show, and whether it is open here."""

    line: str
    open: bool  # the weights are cached or downloadable: offer the switch


def pretrained_advice(config: RunConfig, n_train: int | None) -> Advice | None:
    """For a small data set trained from scratch: propose the pretrained route when its weights
    are cached or downloadable, or say why not and that the recipe trains instead."""
    if n_train is None or n_train > SMALL or models.is_transfer(config.model.name):
        return None
    spec = models.get_spec(PRETRAINED)
    url = weights.imagenet_url(spec)
    if url is None:
        return None
    if weights.cached_path(url).is_file():
        where = "its ImageNet weights are cached here"
    else:
        why = weights.unreachable(url)
        if why is not None:
            how = " with the small-data recipe" if plan(config, n_train).applies else ""
            return Advice(f"pretrained weights cannot be downloaded here ({why}): training "
                          f"from scratch{how}", open=False)  # fmt: skip
        where = "its ImageNet weights download once on first use"
    return Advice(
        f"{n_train} training images: a pretrained {PRETRAINED} usually beats training from "
        f"scratch on so few ({where}): `--model {PRETRAINED}`, or 'Use {PRETRAINED}' on the "
        "Model page",
        open=True,
    )
