"""Model registry: custom CNN builder, the guide's SimpleCNN, torchvision transfer backbones.

`create_model(cfg, num_classes, image_size)` is the one entry point; models are registered by a
decorator (timm style) so tests loop over every one. Pretrained weights never come from the network:
torchvision's ImageNet files are read from the local torch hub cache, or from a file / one of your
runs. `summary()` lists per-layer output shapes and parameter counts for the dashboard and the CLI.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torchvision.models as tvm
from torch import nn

from . import weights
from .config import ModelConfig, TrainConfig
from .errors import ConfigError
from .summary import LayerRow, ModelSummary, summarize  # noqa: F401  (LayerRow re-exported)

log = logging.getLogger(__name__)

Builder = Callable[[ModelConfig, int, int], nn.Module]
TRANSFER_INPUT_SIZE = 224  # ImageNet backbones were trained at 224 px


@dataclass(frozen=True)
class ModelSpec:
    name: str  # registry key (ModelConfig.name)
    build: Builder  # (cfg, num_classes, image_size) -> nn.Module with freshly initialised weights
    transfer: bool  # a torchvision backbone: strategies, ImageNet weights, 224 px default
    imagenet: tvm.WeightsEnum | None = None  # torchvision weights read from the local hub cache


MODELS: dict[str, ModelSpec] = {}


def register_model(
    name: str, transfer: bool = False, imagenet: tvm.WeightsEnum | None = None
) -> Callable[[Builder], Builder]:
    """Decorator adding a builder to MODELS under `name`; a second model with the same name is refused."""

    def decorator(build: Builder) -> Builder:
        if name in MODELS:
            raise ConfigError(
                f"model name {name!r} is already registered by {MODELS[name].build.__qualname__}; "
                "choose another name"
            )
        MODELS[name] = ModelSpec(name, build, transfer, imagenet)
        return build

    return decorator


def list_models() -> list[str]:
    """Registered model names in registration order (custom models first)."""
    return list(MODELS)


def is_transfer(name: str) -> bool:
    """True for torchvision transfer-learning backbones."""
    return _spec(name).transfer


def default_input_size(name: str) -> int | None:
    """The input size a model was designed for (224 for ImageNet backbones), None when any size fits."""
    return TRANSFER_INPUT_SIZE if is_transfer(name) else None


def _spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ConfigError(f"model.name {name!r} is unknown; registered models: {', '.join(MODELS)}")
    return MODELS[name]


def create_model(cfg: ModelConfig, num_classes: int, image_size: int) -> nn.Module:
    """Build the model named by cfg.name, load cfg.weights and freeze per cfg.strategy (transfer only)."""
    spec = _spec(cfg.name)
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
    model = spec.build(cfg, num_classes, image_size)
    weights.load_weights(model, cfg.weights, spec.name, spec.imagenet, _head_prefixes(model))
    if spec.transfer:
        _apply_strategy(model, cfg.strategy)
    return model


# --------------------------------------------------------------------------- custom CNNs


class ConvBlock(nn.Module):
    """`convs` x (Conv -> [BN] -> ReLU), optionally with a residual connection around them.

    Pooling is NOT inside the block, so the block's output (the last conv stage before pooling) is
    the higher-resolution map Grad-CAM and feature-map views want.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, convs: int, bn: bool, residual: bool):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(convs):
            # bias is redundant right before a BatchNorm (its shift absorbs it)
            layers.append(
                nn.Conv2d(
                    c_in if i == 0 else c_out, c_out, kernel, padding=kernel // 2, bias=not bn
                )
            )
            if bn:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.ReLU())
        self.residual = residual
        # ResNet order: with a skip connection the last ReLU comes after the addition
        self.body = nn.Sequential(*(layers[:-1] if residual else layers))
        if residual:  # registered after body, so first_conv() finds the body's conv first
            proj: list[nn.Module] = [nn.Conv2d(c_in, c_out, 1, bias=not bn)]
            if bn:
                proj.append(nn.BatchNorm2d(c_out))
            # 1x1 projection only when the channel count changes; otherwise the identity
            self.shortcut: nn.Module = nn.Sequential(*proj) if c_in != c_out else nn.Identity()
            self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)  # (B, c_out, H, W): padding k//2 keeps H, W
        if self.residual:
            y = self.act(y + self.shortcut(x))
        return y


class CustomCNN(nn.Module):
    """Blocks of convolutions, each followed by MaxPool(2), then a flatten -> MLP classifier head."""

    def __init__(self, cfg: ModelConfig, num_classes: int, image_size: int):
        super().__init__()
        blocks = len(cfg.channels)
        max_blocks = int(math.floor(math.log2(image_size))) if image_size >= 1 else 0
        if blocks > max_blocks:
            raise ConfigError(
                f"model.channels has {blocks} blocks but a {image_size} px image allows at most "
                f"{max_blocks} (each block halves the size); remove blocks or raise data.image_size"
            )
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in cfg.channels:
            conv = ConvBlock(
                c_in, c_out, cfg.kernel_size, cfg.convs_per_block, cfg.batch_norm, cfg.residual
            )
            layers += [conv, nn.MaxPool2d(2)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        side = image_size
        for _ in cfg.channels:
            side //= 2  # MaxPool2d(2) floors; the convs keep the size
        flat = c_in * side * side
        if cfg.head_units > 0:
            head: list[nn.Module] = [nn.Flatten()]
            if cfg.dropout > 0:
                head.append(nn.Dropout(cfg.dropout))
            head += [nn.Linear(flat, cfg.head_units), nn.ReLU(), nn.Dropout(cfg.dropout)]
            head.append(nn.Linear(cfg.head_units, num_classes))
        else:
            head = [nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(flat, num_classes)]
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SimpleCNN(nn.Module):
    """The guide's SimpleCNN, same attribute names so its state_dict keys load as they are."""

    def __init__(self, num_classes: int, image_size: int = 64, dropout: float = 0.5):
        super().__init__()
        side = image_size // 2 // 2  # two MaxPool(2) halvings; 16 at the guide's 64 px
        if side < 1:
            raise ConfigError(f"simple_cnn needs images of at least 4 px, got {image_size}")
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(64 * side * side, 128)
        self.fc2 = nn.Linear(128, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        return self.fc2(self.dropout(x))


@register_model("custom")
def custom(cfg: ModelConfig, num_classes: int, image_size: int) -> nn.Module:
    """The configurable CNN (channels, kernel, BN, residual, head) from ModelConfig."""
    return CustomCNN(cfg, num_classes, image_size)


@register_model("simple_cnn")
def simple_cnn(cfg: ModelConfig, num_classes: int, image_size: int) -> nn.Module:
    """The guide's two-conv SimpleCNN (dropout from cfg; it has no parameters)."""
    return SimpleCNN(num_classes, image_size, cfg.dropout)


# --------------------------------------------------------------------------- transfer models


def _new_head(model: nn.Module, num_classes: int, dropout: float) -> None:
    """Replace the ImageNet classifier by one for num_classes (dropout in front of it)."""
    if isinstance(model, tvm.ResNet):
        model.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(model.fc.in_features, num_classes))
        return
    # MobileNetV3 / EfficientNet: Sequential(..., Dropout, Linear)
    for m in model.classifier:
        if isinstance(m, nn.Dropout):
            m.p = dropout
    last = model.classifier[-1]
    model.classifier[-1] = nn.Linear(last.in_features, num_classes)


def _transfer(factory: Callable[..., nn.Module]) -> Builder:
    def build(cfg: ModelConfig, num_classes: int, image_size: int) -> nn.Module:
        model = factory(weights=None)  # never let torchvision download; weights load later
        _new_head(model, num_classes, cfg.dropout)
        return model

    build.__qualname__ = factory.__name__
    return build


register_model("resnet18", transfer=True, imagenet=tvm.ResNet18_Weights.DEFAULT)(
    _transfer(tvm.resnet18)
)
register_model("resnet34", transfer=True, imagenet=tvm.ResNet34_Weights.DEFAULT)(
    _transfer(tvm.resnet34)
)
register_model("resnet50", transfer=True, imagenet=tvm.ResNet50_Weights.DEFAULT)(
    _transfer(tvm.resnet50)
)
register_model(
    "mobilenet_v3_small", transfer=True, imagenet=tvm.MobileNet_V3_Small_Weights.DEFAULT
)(_transfer(tvm.mobilenet_v3_small))
register_model("efficientnet_b0", transfer=True, imagenet=tvm.EfficientNet_B0_Weights.DEFAULT)(
    _transfer(tvm.efficientnet_b0)
)


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)  # torch.compile wraps the module


def _head(model: nn.Module) -> nn.Module | None:
    """The classifier trained at the head lr (None for custom models: one group)."""
    model = _unwrap(model)
    if isinstance(model, tvm.ResNet):
        return model.fc
    if isinstance(model, (tvm.MobileNetV3, tvm.EfficientNet)):
        return model.classifier
    return None


def _last_block(model: nn.Module) -> nn.Module | None:
    """The backbone block `fine_tune` unfreezes: ResNet layer4; MobileNet/EfficientNet the last
    two feature stages (the last inverted-residual stage + the final 1x1 conv, which alone is tiny)."""
    model = _unwrap(model)
    if isinstance(model, tvm.ResNet):
        return model.layer4
    if isinstance(model, (tvm.MobileNetV3, tvm.EfficientNet)):
        return model.features[-2:]
    return None


def _apply_strategy(model: nn.Module, strategy: str) -> None:
    model.requires_grad_(False)
    trainable = [_head(model)]
    if strategy == "fine_tune":
        trainable.append(_last_block(model))
    for part in trainable:
        part.requires_grad_(True)


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
    """Optimizer groups of trainable params: head at train.lr, unfrozen backbone at train.backbone_lr."""
    head = _head(model)
    if head is None or not is_transfer(model_cfg.name):
        params = [p for p in model.parameters() if p.requires_grad]
        return [{"name": "all", "params": params, "lr": train_cfg.lr}]
    head_ids = {id(p) for p in head.parameters()}
    head_params = [p for p in head.parameters() if p.requires_grad]
    backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    groups = [{"name": "head", "params": head_params, "lr": train_cfg.lr}]
    if backbone:
        groups.append({"name": "backbone", "params": backbone, "lr": train_cfg.backbone_lr})
    return groups


def target_layer(model: nn.Module) -> nn.Module:
    """The last convolutional stage (Grad-CAM / feature maps): before pooling and the classifier."""
    model = _unwrap(model)
    if isinstance(model, tvm.ResNet):
        return model.layer4
    if isinstance(model, (tvm.MobileNetV3, tvm.EfficientNet)):
        return model.features[-1]
    if isinstance(model, SimpleCNN):
        return model.conv2
    if isinstance(model, CustomCNN):
        return [m for m in model.features if isinstance(m, ConvBlock)][-1]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"{type(model).__name__} has no convolution layer to visualise")
    return convs[-1]


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The first nn.Conv2d (its filters see RGB directly, so they can be drawn as images)."""
    for m in _unwrap(model).modules():
        if isinstance(m, nn.Conv2d):
            return m
    raise ConfigError(f"{type(model).__name__} has no convolution layer")


def _head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of the layers that depend on the class count (or, for flatten heads, on
    the image size): these may be skipped when a checkpoint's shapes differ."""
    model = _unwrap(model)
    if isinstance(model, tvm.ResNet):
        return ("fc.",)
    if isinstance(model, (tvm.MobileNetV3, tvm.EfficientNet)):
        return ("classifier.",)
    if isinstance(model, SimpleCNN):
        return ("fc1.", "fc2.")
    return ("head.",)


_BLOCK_TYPES = (ConvBlock, tvm.resnet.BasicBlock, tvm.resnet.Bottleneck)


def summary(model: nn.Module, image_size: int) -> ModelSummary:
    """Per-layer output shapes and parameter counts; residual blocks also get a row as a whole."""
    return summarize(model, image_size, _BLOCK_TYPES)
