"""The model registry (timm style): one `ModelSpec` per model says how to build it and where its
parts are, so nothing else in cnnlab needs an isinstance chain over architectures.

A spec names modules by their dotted path (`model.get_submodule` style; a negative index such as
`features.-1` counts from the end of a Sequential). Adding a backbone is one `_torchvision(...)`
line below. With the optional `timm` extra installed, `timm/<name>` resolves any timm model.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torchvision.models as tvm
from torch import nn

from .cnn import CustomCNN, SimpleCNN
from .config import ModelConfig
from .errors import ConfigError

log = logging.getLogger(__name__)

Builder = Callable[[ModelConfig, int, int], nn.Module]
Stats = tuple[tuple[float, float, float], tuple[float, float, float]]
TIMM_PREFIX = "timm/"


@dataclass(frozen=True)
class ModelSpec:
    name: str  # registry key (ModelConfig.name)
    build: Builder  # (cfg, num_classes, image_size) -> model, fresh weights, head sized for the classes
    transfer: bool = (
        False  # pretrained backbone: strategies, fine-tune phases, its own normalisation
    )
    weights: tvm.WeightsEnum | None = None  # torchvision ImageNet weights (`weights imagenet`)
    input_size: int | None = None  # the side its weights were trained at; None: any size fits
    min_size: int = 8  # smallest input side that makes sense for it
    stats: Stats | None = None  # (mean, std) its pretrained weights expect; None: per AugmentConfig
    head: str | None = None  # classifier module: replaced per data set, trained at train.lr
    fresh_ok: tuple[str, ...] = ()  # more state-dict prefixes that depend on classes / image size
    # backbone stages from input to output, for fine-tuning phases and gradual unfreezing:
    # "a,b" groups several modules, "x.*" makes each child of x a stage
    blocks: tuple[str, ...] = ()
    cam_layer: str | None = None  # Grad-CAM / feature-map layer (the last spatial stage)
    cam_layout: str = "nchw"  # its output layout: nchw, nhwc (swin) or tokens (ViT, cls first)
    params: int | None = None  # parameter count with the 1000-class ImageNet head
    pick: str = ""  # one line: when to pick it
    source: str = "custom"  # custom, torchvision or timm
    builtin_pretrained: bool = False  # the builder itself loads `imagenet` (timm's pretrained=True)


MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a spec; a second model with the same name is refused."""
    if spec.name in MODELS:
        raise ConfigError(
            f"model name {spec.name!r} is already registered by "
            f"{MODELS[spec.name].build.__qualname__}; choose another name"
        )
    MODELS[spec.name] = spec
    return spec


def register_model(
    name: str, transfer: bool = False, imagenet: tvm.WeightsEnum | None = None
) -> Callable[[Builder], Builder]:
    """Decorator registering a bare builder (no head/blocks/CAM metadata: generic fallbacks apply)."""

    def decorator(build: Builder) -> Builder:
        register(ModelSpec(name, build, transfer, imagenet))
        return build

    return decorator


def list_models() -> list[str]:
    """Registered model names in registration order (custom models first; timm/* not listed)."""
    return list(MODELS)


def get_spec(name: str) -> ModelSpec:
    """The spec of `name` (a registered model or `timm/<name>`); unknown names list the registry."""
    if name in MODELS:
        return MODELS[name]
    if name.startswith(TIMM_PREFIX):
        return _timm_spec(name.removeprefix(TIMM_PREFIX))
    raise ConfigError(
        f"model.name {name!r} is unknown; registered models: {', '.join(MODELS)} "
        f"(or timm/<name> with the timm extra); `cnnlab models` describes each"
    )


def is_transfer(name: str) -> bool:
    """True for pretrained backbones (torchvision or timm)."""
    return get_spec(name).transfer


def default_input_size(name: str) -> int | None:
    """The input side a model's weights were trained at (224 for most ImageNet backbones)."""
    return get_spec(name).input_size


# ------------------------------------------------------------------ module paths


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at a dotted path; integer parts index Sequential/ModuleList (negative ok)."""
    mod = model
    for part in path.split(".") if path else []:
        if part.lstrip("-").isdigit() and isinstance(mod, (nn.Sequential, nn.ModuleList)):
            mod = mod[int(part)]
        elif isinstance(getattr(mod, part, None), nn.Module):
            mod = getattr(mod, part)
        else:
            raise ConfigError(f"{type(model).__name__} has no module {path!r} (at {part!r})")
    return mod


def set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Replace the submodule at a dotted path."""
    parent_path, _, last = path.rpartition(".")
    parent = get_module(model, parent_path)
    if last.lstrip("-").isdigit() and isinstance(parent, (nn.Sequential, nn.ModuleList)):
        parent[int(last)] = new
    else:
        setattr(parent, last, new)


def module_path(model: nn.Module, path: str) -> str:
    """The canonical named_modules() name of a path (negative indices resolved)."""
    target = get_module(model, path)
    return next(n for n, m in model.named_modules() if m is target)


def block_modules(model: nn.Module, spec: ModelSpec) -> list[list[nn.Module]]:
    """The spec's backbone stages as lists of modules, input side first ("x.*" expanded)."""
    stages: list[list[nn.Module]] = []
    for entry in spec.blocks:
        if entry.endswith(".*"):
            stages += [[child] for child in get_module(model, entry[:-2]).children()]
        else:
            stages.append([get_module(model, p) for p in entry.split(",")])
    return stages


def replace_head(model: nn.Module, head: str, num_classes: int, dropout: float) -> None:
    """Give the classifier at `head` num_classes outputs, with `dropout` in front of its Linear."""
    old = get_module(model, head)
    if isinstance(old, nn.Linear):
        set_module(
            model, head, nn.Sequential(nn.Dropout(dropout), nn.Linear(old.in_features, num_classes))
        )
        return
    layers = list(old.children())
    last = max(i for i, m in enumerate(layers) if isinstance(m, nn.Linear))
    has_dropout = False
    for m in layers:
        if isinstance(m, nn.Dropout):
            m.p, has_dropout = dropout, True
    fresh = nn.Linear(layers[last].in_features, num_classes)
    old[last] = fresh if has_dropout else nn.Sequential(nn.Dropout(dropout), fresh)


# ------------------------------------------------------------------ custom CNNs


def custom(cfg: ModelConfig, num_classes: int, image_size: int) -> nn.Module:
    """The configurable CNN (channels, kernel, BN, residual, head) from ModelConfig."""
    return CustomCNN(cfg, num_classes, image_size)


def simple_cnn(cfg: ModelConfig, num_classes: int, image_size: int) -> nn.Module:
    """The guide's two-conv SimpleCNN (dropout from cfg; it has no parameters)."""
    return SimpleCNN(num_classes, image_size, cfg.dropout)


register(
    ModelSpec(
        "custom",
        custom,
        min_size=8,
        head="head",
        blocks=("features.*",),
        cam_layer="features.-2",  # the last ConvBlock (features ends with its MaxPool)
        pick="your own CNN: blocks, channels, BN, residual; small images (digits, icons) from scratch",
    )
)
register(
    ModelSpec(
        "simple_cnn",
        simple_cnn,
        min_size=4,
        head="fc2",
        fresh_ok=("fc1.",),  # its flatten size follows the image size
        blocks=("conv1", "conv2"),
        cam_layer="conv2",
        pick="the guide's two-conv CNN at 64 px: a baseline to compare against",
    )
)


# ------------------------------------------------------------------ torchvision zoo


def _transfer_builder(factory: Callable[..., nn.Module], head: str) -> Builder:
    def build(cfg: ModelConfig, num_classes: int, image_size: int) -> nn.Module:
        model = factory(weights=None)  # never let torchvision download: weights.py does, checked
        replace_head(model, head, num_classes, cfg.dropout)
        return model

    build.__qualname__ = factory.__name__
    return build


def _torchvision(
    name: str,
    weights: tvm.WeightsEnum,
    head: str,
    blocks: tuple[str, ...],
    cam: str,
    pick: str,
    cam_layout: str = "nchw",
) -> None:
    preset = weights.transforms()  # ImageClassification: crop size, mean, std of the recipe
    register(
        ModelSpec(
            name,
            _transfer_builder(getattr(tvm, name), head),
            transfer=True,
            weights=weights,
            input_size=int(preset.crop_size[0]),
            min_size=max(int(s) for s in weights.meta["min_size"]),
            stats=(tuple(preset.mean), tuple(preset.std)),  # type: ignore[arg-type]
            head=head,
            blocks=blocks,
            cam_layer=cam,
            cam_layout=cam_layout,
            params=int(weights.meta["num_params"]),
            pick=pick,
            source="torchvision",
        )
    )


# head, backbone stages and Grad-CAM layer of each torchvision family
_RESNET = ("fc", ("conv1,bn1", "layer1", "layer2", "layer3", "layer4"), "layer4")
_FEATURES = ("classifier", ("features.*",), "features.-1")  # built as features + classifier
_REGNET = ("fc", ("stem", "trunk_output.*"), "trunk_output")
_SWIN = ("head", ("features.*", "norm"), "features.-1")
# name, ImageNet weights, layout, when to pick it (the zoo's "when to pick it" column)
_ZOO = (
    ("resnet18", tvm.ResNet18_Weights.DEFAULT, _RESNET,
     "the safe first choice: fast, robust, fine on a CPU"),
    ("resnet34", tvm.ResNet34_Weights.DEFAULT, _RESNET,
     "a deeper resnet18 when it underfits and a GPU is at hand"),
    ("resnet50", tvm.ResNet50_Weights.DEFAULT, _RESNET,
     "the classic strong baseline; wants a GPU"),
    ("mobilenet_v3_small", tvm.MobileNet_V3_Small_Weights.DEFAULT, _FEATURES,
     "tiniest and fastest: CPU-only machines, phones, quick experiments"),
    ("mobilenet_v3_large", tvm.MobileNet_V3_Large_Weights.DEFAULT, _FEATURES,
     "small and fast with clearly better accuracy than the small one"),
    ("efficientnet_b0", tvm.EfficientNet_B0_Weights.DEFAULT, _FEATURES,
     "best accuracy per parameter at 224 px; a good default on a GPU"),
    ("efficientnet_b1", tvm.EfficientNet_B1_Weights.DEFAULT, _FEATURES,
     "b0 scaled up (240 px) when b0 underfits"),
    ("efficientnet_b2", tvm.EfficientNet_B2_Weights.DEFAULT, _FEATURES,
     "b0 scaled up further (288 px): fine detail, slower"),
    ("regnet_y_400mf", tvm.RegNet_Y_400MF_Weights.DEFAULT, _REGNET,
     "mobile-sized, strong ImageNet recipe: a fast alternative to resnet18"),
    ("regnet_y_800mf", tvm.RegNet_Y_800MF_Weights.DEFAULT, _REGNET,
     "twice regnet_y_400mf's compute for a few points more"),
    ("convnext_tiny", tvm.ConvNeXt_Tiny_Weights.DEFAULT, _FEATURES,
     "modern CNN, top accuracy of the zoo's CNNs; GPU, 100+ images per class"),
    ("swin_t", tvm.Swin_T_Weights.DEFAULT, _SWIN,
     "the transformer choice (224 px); data that needs global context"),
)  # fmt: skip
for _name, _weights, _layout, _pick in _ZOO:
    # swin's stages hand out channels-last maps: Grad-CAM reads them as such
    _torchvision(_name, _weights, *_layout, _pick,
                 cam_layout="nhwc" if _layout is _SWIN else "nchw")  # fmt: skip


# ------------------------------------------------------------------ timm (optional extra)


def timm_available() -> bool:
    """True when the optional timm package is installed (`pip install .[timm]`)."""
    return importlib.util.find_spec("timm") is not None


@functools.lru_cache(maxsize=64)
def _timm_spec(timm_name: str) -> ModelSpec:
    """A spec for timm model `timm_name`, read from a parameter-free (meta device) instance."""
    if not timm_available():
        raise ConfigError(
            f"model timm/{timm_name} needs the optional timm package: pip install 'cnnlab[timm]'"
        )
    import timm  # optional dependency: imported only when a timm/ model is asked for

    if not timm.is_model(timm_name):
        raise ConfigError(
            f"timm has no model {timm_name!r}; list them with python -c "
            "\"import timm; print(timm.list_models('*resnet*'))\""
        )
    with torch.device("meta"):  # shapes and names only: no memory, no weights, no download
        probe = timm.create_model(timm_name, pretrained=False)
    cfg = probe.pretrained_cfg
    info = getattr(probe, "feature_info", None) or []
    stages = tuple(f["module"] for f in info if f.get("module"))
    layout = "tokens" if "vit" in timm_name or "deit" in timm_name else "nchw"

    def build(mcfg: ModelConfig, num_classes: int, image_size: int) -> nn.Module:
        return timm.create_model(
            timm_name,
            pretrained=mcfg.weights == "imagenet",  # timm downloads from the Hugging Face Hub
            num_classes=num_classes,
            drop_rate=mcfg.dropout,
        )

    build.__qualname__ = f"timm.create_model({timm_name!r})"
    return ModelSpec(
        TIMM_PREFIX + timm_name,
        build,
        transfer=True,
        input_size=int(cfg.get("input_size", (3, 224, 224))[-1]),
        min_size=32,
        stats=(tuple(cfg.get("mean")), tuple(cfg.get("std"))),  # type: ignore[arg-type]
        head=cfg.get("classifier"),
        blocks=stages,
        cam_layer=stages[-1] if stages else None,
        cam_layout=layout,
        params=sum(p.numel() for p in probe.parameters()),
        pick="a timm model (weights from the Hugging Face Hub)",
        source="timm",
        builtin_pretrained=True,
    )


def describe(spec: ModelSpec) -> dict[str, Any]:
    """One registry row for `cnnlab models` and the Model page (JSON-able)."""
    params = spec.params
    if params is None:  # custom models: count at their defaults, 10 classes, 32 px
        size = max(spec.min_size, 32)
        model = spec.build(ModelConfig(name=spec.name), 10, size)
        params = sum(p.numel() for p in model.parameters())
    return {
        "name": spec.name,
        "source": spec.source,
        "transfer": spec.transfer,
        "params": params,
        "image_size": spec.input_size,
        "min_size": spec.min_size,
        "weights_url": spec.weights.url if spec.weights is not None else None,
        "pick": spec.pick,
    }
