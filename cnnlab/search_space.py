"""The search space of a tuning study: which hyperparameters trials vary, and over what range.

Each dimension is searched (a Range or Choices), fixed (a plain value), or None (the base config's
value). `suggest` draws a trial's values; `apply_params` turns base config + values into the
RunConfig the trial trains. JSON format: see assets/search_space.example.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from . import models
from .config import OPTIMIZERS, STRATEGIES, RunConfig
from .errors import ConfigError

CHANNEL_MODELS = ("custom",)  # models whose shape comes from model.channels


@dataclass(frozen=True)
class Range:
    """Search a number between low and high (on a log scale when log=True)."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class Choices:
    """Search one of the listed values."""

    values: tuple[Any, ...]


# A dimension is searched (Range/Choices), fixed (a plain value), or None (the base config's value).
Dim = Range | Choices | int | float | str | None

# name -> (kind, low bound, high bound); kind "float"/"int"/"cat"
_DIMS: dict[str, tuple[str, float, float]] = {
    "lr": ("float", 1e-8, 10.0),
    "batch_size": ("int", 1, 65_536),
    "optimizer": ("cat", 0, 0),
    "weight_decay": ("float", 0.0, 1.0),
    "dropout": ("float", 0.0, 0.95),
    "n_blocks": ("int", 1, 8),
    "base_width": ("int", 1, 2048),
    "strategy": ("cat", 0, 0),
}
_CATEGORIES = {"optimizer": OPTIMIZERS, "strategy": STRATEGIES}


@dataclass
class SearchSpace:
    """What each trial varies; every field is a Range, Choices, a fixed value, or None (= base)."""

    lr: Dim = Range(1e-4, 1e-1, log=True)  # train.lr; bad ends of the range get pruned
    batch_size: Dim = Choices((32, 64, 128))  # train.batch_size
    optimizer: Dim = Choices(("adamw", "sgd"))  # train.optimizer
    weight_decay: Dim = Range(1e-6, 1e-2, log=True)  # train.weight_decay (fix it to allow 0)
    dropout: Dim = Range(0.0, 0.5)  # model.dropout
    n_blocks: Dim = None  # custom CNNs: conv blocks (each doubles the width, halves the size)
    base_width: Dim = None  # custom CNNs: channels of the first block
    strategy: Dim = None  # transfer models: feature_extraction or fine_tune

    @classmethod
    def default_for(cls, model_name: str) -> SearchSpace:
        """The default space for a model: its shape for custom CNNs, the strategy for transfer."""
        space = cls()
        if model_name in CHANNEL_MODELS:
            space.n_blocks, space.base_width = Range(1, 2), Choices((8, 16))
        elif models.is_transfer(model_name):
            space.strategy = Choices(STRATEGIES)
        return space

    def searched(self) -> list[str]:
        """Names of the dimensions trials vary."""
        return [n for n in _DIMS if isinstance(getattr(self, n), Range | Choices)]

    def validate(self, model_name: str | None = None) -> SearchSpace:
        """Raise ConfigError naming the dimension at fault; returns self."""
        for name, (kind, lo, hi) in _DIMS.items():
            _check_dim(name, kind, lo, hi, getattr(self, name))
        if model_name is not None:
            shaped = [n for n in ("n_blocks", "base_width") if getattr(self, n) is not None]
            if shaped and model_name not in CHANNEL_MODELS:
                raise ConfigError(
                    f"search.{shaped[0]} applies to custom CNNs only, not {model_name!r}: "
                    "set it to null or tune model 'custom'"
                )
            if self.strategy is not None and not models.is_transfer(model_name):
                raise ConfigError(
                    f"search.strategy applies to transfer models only, not {model_name!r}: "
                    "set it to null or tune a transfer model such as resnet18"
                )
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict in the format from_dict reads."""
        out: dict[str, Any] = {}
        for name in _DIMS:
            dim = getattr(self, name)
            if isinstance(dim, Range):
                out[name] = {"low": dim.low, "high": dim.high, "log": dim.log}
            elif isinstance(dim, Choices):
                out[name] = {"choices": list(dim.values)}
            else:
                out[name] = dim
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SearchSpace:
        """Parse {"lr": {"low":..,"high":..,"log":true}, "optimizer": {"choices": [..]}, "dropout": 0.2}.

        A key left out keeps the default; null means "use the base config's value"; keys starting
        with "_" are comments.
        """
        if not isinstance(raw, dict):
            raise ConfigError("search space must be a JSON object mapping dimension -> spec")
        raw = {k: v for k, v in raw.items() if not k.startswith("_")}  # "_comment" keys
        unknown = set(raw) - set(_DIMS)
        if unknown:
            raise ConfigError(
                f"unknown search dimension(s) {', '.join(sorted(unknown))}; "
                f"allowed: {', '.join(_DIMS)}"
            )
        space = cls()
        for name, spec in raw.items():
            setattr(space, name, _parse_dim(name, spec))
        return space.validate()

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        """Read a search-space JSON file (see assets/search_space.example.json)."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"search space file {p} does not exist")
        try:
            raw = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"search space file {p} is not valid JSON: {exc}") from exc
        return cls.from_dict(raw)


def _parse_dim(name: str, spec: Any) -> Dim:
    if isinstance(spec, dict):
        keys = set(spec)
        if keys == {"choices"}:
            return Choices(tuple(spec["choices"] or ()))
        if {"low", "high"} <= keys <= {"low", "high", "log"}:
            return Range(spec["low"], spec["high"], bool(spec.get("log", False)))
        raise ConfigError(
            f"search.{name}: give {{'low', 'high'[, 'log']}}, {{'choices': [...]}}, "
            f"a fixed value or null; got keys {sorted(keys)}"
        )
    if isinstance(spec, list):  # shorthand for choices
        return Choices(tuple(spec))
    return spec


def _check_dim(name: str, kind: str, lo: float, hi: float, dim: Dim) -> None:
    if dim is None:
        return
    values: tuple[Any, ...]
    if isinstance(dim, Range):
        if kind == "cat":
            raise ConfigError(f"search.{name} is categorical: give choices, not a range")
        if not dim.low < dim.high:
            raise ConfigError(f"search.{name}: low ({dim.low}) must be below high ({dim.high})")
        if dim.log and dim.low <= 0:
            raise ConfigError(f"search.{name}: a log range needs low > 0, got {dim.low}")
        values = (dim.low, dim.high)
    elif isinstance(dim, Choices):
        if not dim.values:
            raise ConfigError(f"search.{name}: choices must list at least one value")
        values = dim.values
    else:
        values = (dim,)
    for v in values:
        if kind == "cat":
            if v not in _CATEGORIES[name]:
                allowed = ", ".join(_CATEGORIES[name])
                raise ConfigError(f"search.{name}: {v!r} is not one of {allowed}")
            continue
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ConfigError(f"search.{name}: {v!r} is not a number")
        if kind == "int" and not float(v).is_integer():
            raise ConfigError(f"search.{name}: {v!r} must be a whole number")
        if not lo <= v <= hi:
            raise ConfigError(f"search.{name}: {v} is outside {lo}..{hi}")


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Draw every searched dimension from the trial; returns {name: value}."""
    params: dict[str, Any] = {}
    for name in space.searched():
        dim, kind = getattr(space, name), _DIMS[name][0]
        if isinstance(dim, Choices):
            params[name] = trial.suggest_categorical(name, list(dim.values))
        elif kind == "int":
            params[name] = trial.suggest_int(name, int(dim.low), int(dim.high), log=dim.log)
        else:
            params[name] = trial.suggest_float(name, dim.low, dim.high, log=dim.log)
    return params


def apply_params(base: RunConfig, space: SearchSpace, params: dict[str, Any]) -> RunConfig:
    """A copy of base with the space's fixed values and the trial's params filled in."""
    cfg = RunConfig.from_dict(base.to_dict())
    values = {
        n: getattr(space, n) for n in _DIMS if not isinstance(getattr(space, n), Range | Choices)
    }
    values = {n: v for n, v in values.items() if v is not None} | params
    for name, section, attr in (
        ("lr", "train", "lr"),
        ("batch_size", "train", "batch_size"),
        ("optimizer", "train", "optimizer"),
        ("weight_decay", "train", "weight_decay"),
        ("dropout", "model", "dropout"),
        ("strategy", "model", "strategy"),
    ):
        if name in values:
            kind = type(getattr(getattr(cfg, section), attr))
            setattr(getattr(cfg, section), attr, kind(values[name]))
    if "n_blocks" in values or "base_width" in values:
        n = int(values.get("n_blocks", len(cfg.model.channels)))
        width = int(values.get("base_width", cfg.model.channels[0]))
        cfg.model.channels = [min(width * 2**i, 2048) for i in range(n)]  # widths double per block
    return cfg
