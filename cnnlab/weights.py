"""Pretrained weights: ImageNet from the local torch cache only, a file, or one of the user's runs.

Every file is read with torch.load(weights_only=True): weights are data, never code. Nothing is ever
downloaded (there may be no network): a missing file is an error saying where to put it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torchvision.models as tvm
from torch import nn

from .errors import WeightsError

log = logging.getLogger(__name__)


def hub_file(weights: tvm.WeightsEnum) -> Path:
    """Where torchvision keeps these weights in the local torch hub cache (never downloaded)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def _read_state(path: Path, what: str) -> dict[str, torch.Tensor]:
    """torch.load(weights_only=True) a raw state dict or one under model/state_dict/model_state."""
    if not path.is_file():
        raise WeightsError(
            f"weights file {path} does not exist; give a .pth/.pt file, or use weights 'random'"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors come in many types; all mean "not a plain state dict"
        raise WeightsError(
            f"cannot read {what} {path} as a weights-only state dict: {exc}"
        ) from exc
    if isinstance(obj, dict):
        for key in ("model_state", "state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{what} {path} holds no state dict (a mapping of names to tensors)")
    # DataParallel / torch.compile prefixes would hide every key
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in obj.items()}


def load_weights(
    model: nn.Module,
    source: str,
    name: str,
    imagenet: tvm.WeightsEnum | None,
    heads: tuple[str, ...],
) -> None:
    """Load `source` (imagenet, random, a file, run:<id>) into model; `heads` may stay fresh."""
    if source == "random":
        return
    if source == "imagenet":
        if imagenet is None:
            log.info("model %s has no ImageNet weights; starting from random init", name)
            return
        path = hub_file(imagenet)
        if not path.is_file():
            raise WeightsError(
                f"ImageNet weights for {name} are not in the local torch cache: put the file "
                f"{path} there (download {imagenet.url} on a machine with internet), "
                "or set model weights to 'random' or to a .pth file"
            )
        _load_state(model, _read_state(path, "ImageNet weights"), str(path), heads)
        return
    if source.startswith("run:"):
        from . import runs  # lazy: runs imports models to rebuild checkpoints

        path = Path(runs.checkpoint_path(source.removeprefix("run:")))
        _load_state(model, _read_state(path, "run checkpoint"), source, heads)
        return
    path = Path(source).expanduser()
    _load_state(model, _read_state(path, "weights file"), str(path), heads)


def _load_state(
    model: nn.Module, state: dict[str, torch.Tensor], origin: str, heads: tuple[str, ...]
) -> None:
    """Load every backbone tensor (all must fit) and the head tensors whose shapes fit."""
    own = model.state_dict()
    # num_batches_tracked is absent from older checkpoints and harmless to leave at 0
    backbone = [k for k in own if not k.startswith(heads) and not k.endswith("num_batches_tracked")]
    fits = {k for k in own if k in state and state[k].shape == own[k].shape}
    misfits = [k for k in backbone if k not in fits]
    extra = [k for k in state if k not in own and not k.startswith(heads)]
    if misfits or extra:
        hint = ", ".join((misfits or extra)[:3])
        raise WeightsError(
            f"{origin} does not fit model {type(model).__name__}: "
            f"{len(backbone) - len(misfits)} of {len(backbone)} backbone tensors match and "
            f"{len(extra)} are unknown (e.g. {hint}); pick the architecture these weights were saved from"
        )
    model.load_state_dict({k: state[k] for k in fits}, strict=False)
    fresh = [k for k in own if k.startswith(heads) and k not in fits]
    log.info("loaded %d tensors from %s; %d head tensors kept fresh", len(fits), origin, len(fresh))
