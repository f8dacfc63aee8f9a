"""Build, freeze and inspect models from the registry; rebuild a trained model from its run.

`create_model(cfg, num_classes, image_size)` is the one entry point: it builds the registry's model,
loads cfg.weights (see weights.py) and puts a transfer model in its first training phase.
Transfer strategies follow fastai: `feature_extraction` trains only the new head; `fine_tune` trains
the head for `model.freeze_epochs` epochs, then unfreezes the backbone (or its last
`model.unfreeze_blocks` stages) at `train.backbone_lr`. `set_phase(model, cfg, epoch)` switches
phases; the optimizer holds every group from the start, and frozen layers simply get no gradients.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import registry, runs, weights
from .cnn import ConvBlock, CustomCNN, SimpleCNN  # noqa: F401  (re-exported)
from .config import ModelConfig, RunConfig, TrainConfig
from .errors import ConfigError, WeightsError
from .model_summary import ModelSummary, summarize
from .registry import (  # noqa: F401  (re-exported: models is the public face of the registry)
    MODELS,
    ModelSpec,
    block_modules,
    custom,
    default_input_size,
    get_module,
    get_spec,
    is_transfer,
    list_models,
    module_path,
    register,
    register_model,
    simple_cnn,
)

log = logging.getLogger(__name__)

_SPEC_ATTR = "_cnnlab_model"  # the registry name, set on every model create_model builds


def create_model(
    cfg: ModelConfig,
    num_classes: int,
    image_size: int,
    progress: weights.Progress | None = None,
) -> nn.Module:
    """Build the model named by cfg.name, load cfg.weights and set its first training phase."""
    spec = get_spec(cfg.name)
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
    if spec.builtin_pretrained and cfg.weights == "imagenet":
        try:
            model = spec.build(cfg, num_classes, image_size)
        except (OSError, RuntimeError, ValueError) as exc:  # hub download errors (timm)
            raise WeightsError(
                f"cannot get pretrained weights for {cfg.name}: {type(exc).__name__}: {exc}; use ",
                random_tail=" or a local .pth file",
            ) from exc
    else:
        model = spec.build(cfg, num_classes, image_size)
    setattr(model, _SPEC_ATTR, spec.name)
    weights.load_weights(model, cfg.weights, spec, head_prefixes(model), progress)
    set_phase(model, cfg, epoch=1)
    return model


def weights_are_remote(cfg: ModelConfig) -> bool:
    """True for weights fetched by fetch_weights (ImageNet, a URL) or none (random); False for a
    local file or run checkpoint, which only loading the model checks."""
    return cfg.weights in ("random", "imagenet") or weights.is_url(cfg.weights)


def fetch_weights(cfg: ModelConfig, progress: weights.Progress | None = None) -> Path | None:
    """Download cfg.weights into the cache if needed (before data work); the local file or None."""
    spec = get_spec(cfg.name)
    return weights.resolve(cfg.weights, spec, progress)


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)  # torch.compile wraps the module


def spec_of(model: nn.Module) -> ModelSpec | None:
    """The registry spec a model was built from (None for a model built elsewhere)."""
    name = getattr(_unwrap(model), _SPEC_ATTR, None)
    return MODELS.get(name) if name in MODELS else (get_spec(name) if name else None)


def _head(model: nn.Module) -> nn.Module | None:
    """The classifier trained at the head lr (None when the spec names none)."""
    spec = spec_of(model)
    return get_module(_unwrap(model), spec.head) if spec and spec.head else None


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of the layers that depend on the class count (or, for flatten heads, on
    the image size): these may be skipped when a checkpoint's shapes differ."""
    spec = spec_of(model)
    if spec is None or spec.head is None:
        return ("head.",)
    return (module_path(_unwrap(model), spec.head) + ".", *spec.fresh_ok)


# ------------------------------------------------------------------ fine-tuning phases


def _wanted(model: nn.Module, cfg: ModelConfig, epoch: int) -> set[int] | None:
    """ids of the parameters that train in `epoch` (1-based); None: every parameter trains."""
    spec = spec_of(model)
    head = _head(model)
    if spec is None or not spec.transfer or head is None:
        return None
    want = {id(p) for p in head.parameters()}
    if cfg.strategy == "fine_tune" and epoch > cfg.freeze_epochs:
        if cfg.unfreeze_blocks <= 0:
            return None
        stages = block_modules(_unwrap(model), spec)[-cfg.unfreeze_blocks :]
        want |= {id(p) for stage in stages for m in stage for p in m.parameters()}
    return want


def random_backbone_warning(cfg: ModelConfig) -> str | None:
    """What freezing a randomly initialised backbone costs (feature_extraction, or fine_tune's
    head-only epochs, with weights 'random'), or None."""
    if cfg.weights != "random" or not is_transfer(cfg.name):
        return None
    if cfg.strategy == "feature_extraction":
        when = "every epoch"
        fix = "choose the fine_tune strategy with 0 head-only epochs"
    elif cfg.freeze_epochs > 0:
        when = f"the first {cfg.freeze_epochs} epoch(s)"
        fix = "set the head-only epochs (--freeze-epochs) to 0"
    else:
        return None
    return (
        f"weights 'random' (\"Random (train from scratch)\") with {cfg.strategy}: the backbone "
        f"is random but frozen for {when}, so only the head learns then; use ImageNet weights, "
        f"or {fix} to train the whole model"
    )


def set_phase(model: nn.Module, cfg: ModelConfig, epoch: int) -> bool:
    """Set requires_grad for `epoch` (1-based) per cfg.strategy; True when anything changed.

    Call at the start of each epoch; BatchNorm layers whose parameters are all frozen keep their
    statistics (freeze_bn_stats, called by the training loop after model.train()).
    """
    want = _wanted(model, cfg, epoch)
    changed = False
    for p in model.parameters():
        flag = want is None or id(p) in want
        if p.requires_grad != flag:
            p.requires_grad_(flag)
            changed = True
    if changed and epoch > 1:
        log.info("epoch %d: %s trainable parameters", epoch, f"{trainable_count(model):,}")
    return changed


def trainable_count(model: nn.Module) -> int:
    """Parameters that currently train."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def phase_plan(model: nn.Module, cfg: ModelConfig, epochs: int) -> list[dict[str, Any]]:
    """The training phases of cfg on `model`: phase name, epochs covered, trainable parameters."""
    head = _head(model)
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    rows: list[dict[str, Any]] = []
    for epoch in range(1, epochs + 1):
        want = _wanted(model, cfg, epoch)
        if want is None:
            phase = "whole model"
        elif want == head_ids:
            phase = "head only"
        else:
            phase = f"head + last {cfg.unfreeze_blocks} stage(s)"
        if rows and rows[-1]["phase"] == phase:
            rows[-1]["last_epoch"] = epoch
            continue
        count = sum(p.numel() for p in model.parameters() if want is None or id(p) in want)
        rows.append({"phase": phase, "first_epoch": epoch, "last_epoch": epoch, "trainable": count})
    return rows


def freeze_bn_stats(model: nn.Module) -> nn.Module:
    """Put BatchNorm layers whose parameters are all frozen in eval mode; call after model.train().

    A frozen backbone must keep ImageNet's running mean/var: in train mode BN would use (and
    overwrite them with) the statistics of small batches of a different data set.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters())
            if params and not any(p.requires_grad for p in params):
                m.eval()
    return model


def param_groups(
    model: nn.Module, model_cfg: ModelConfig, train_cfg: TrainConfig
) -> list[dict[str, Any]]:
    """Optimizer groups: head at train.lr and (fine_tune) the whole backbone at train.backbone_lr.

    Every parameter that will ever train is in a group from the start, frozen or not, so phases
    switch by requires_grad alone (the optimizer skips parameters without gradients).
    """
    head = _head(model)
    spec = spec_of(model)
    if head is None or spec is None or not spec.transfer:
        params = [p for p in model.parameters() if p.requires_grad]
        return [{"name": "all", "params": params, "lr": train_cfg.lr}]
    head_ids = {id(p) for p in head.parameters()}
    groups = [{"name": "head", "params": list(head.parameters()), "lr": train_cfg.lr}]
    if model_cfg.strategy == "fine_tune":
        backbone = [p for p in model.parameters() if id(p) not in head_ids]
        groups.append({"name": "backbone", "params": backbone, "lr": train_cfg.backbone_lr})
    return groups


def input_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) a pretrained model's weights expect, None for models trained from scratch."""
    spec = get_spec(name)
    return spec.stats if spec.transfer else None


# ------------------------------------------------------------------ layers to look at


def target_layer(model: nn.Module) -> nn.Module:
    """The Grad-CAM / feature-map layer: the spec's, else the last convolution."""
    spec = spec_of(model)
    if spec is not None and spec.cam_layer:
        return get_module(_unwrap(model), spec.cam_layer)
    convs = [m for m in _unwrap(model).modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"{type(model).__name__} has no convolution layer to visualise")
    return convs[-1]


def cam_layout(model: nn.Module) -> str:
    """Layout of target_layer's output: nchw, nhwc or tokens."""
    spec = spec_of(model)
    return spec.cam_layout if spec is not None else "nchw"


def map_layers(model: nn.Module) -> list[str]:
    """Names of the layers worth showing as feature maps: convolutions, the spec's stages that
    hold weights, and the CAM layer, in named_modules order."""
    inner = _unwrap(model)
    chosen = {id(m) for m in inner.modules() if isinstance(m, nn.Conv2d)}
    spec = spec_of(model)
    if spec is not None:
        for stage in block_modules(inner, spec):
            chosen |= {id(m) for m in stage if next(m.parameters(), None) is not None}
        if spec.cam_layer:
            chosen.add(id(get_module(inner, spec.cam_layer)))
    return [n for n, m in inner.named_modules() if n and id(m) in chosen]


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The first nn.Conv2d (its filters see RGB directly, so they can be drawn as images)."""
    for m in _unwrap(model).modules():
        if isinstance(m, nn.Conv2d):
            return m
    raise ConfigError(f"{type(model).__name__} has no convolution layer")


def layer_summary(model: nn.Module, image_size: int) -> ModelSummary:
    """Per-layer output shapes and parameter counts; backbone stages also get a row as a whole."""
    spec = spec_of(model)
    stages = block_modules(_unwrap(model), spec) if spec is not None else []
    return summarize(model, image_size, {id(m) for stage in stages for m in stage})


def timm_available() -> bool:
    """True when the optional timm extra is installed (timm/<name> models can be built)."""
    return registry.timm_available()


# ------------------------------------------------------------------ trained runs


def load_trained(
    run: str | Path | runs.Run, which: str = "best", device: str | torch.device = "cpu"
) -> tuple[nn.Module, RunConfig, list[str], dict[str, Any]]:
    """Rebuild a run's model from best.pt/last.pt: (model in eval mode, RunConfig, classes, ckpt).

    Loaded with weights_only=True: a checkpoint is data, never code.
    """
    path = runs.checkpoint_path(run, which)
    ckpt = runs.read_checkpoint(path, device)
    config = RunConfig.from_dict(ckpt["config"])
    config.model.weights = "random"  # the state dict below carries the trained weights
    classes = list(ckpt["classes"])
    model = create_model(config.model, len(classes), config.data.image_size)
    model.load_state_dict(ckpt["model_state"])
    model.to(device).eval()
    return model, config, classes, ckpt


def describe(name: str) -> dict[str, Any]:
    """Model `name`'s registry row as `cnnlab models` and the Model page show it (JSON-able)."""
    return registry.describe(get_spec(name))
