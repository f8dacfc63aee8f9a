"""The hand-built CNNs: a configurable CustomCNN (blocks of convs, optional BN/residual) and the
guide's SimpleCNN (same attribute names, so its state dicts load as they are)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ModelConfig
from .errors import ConfigError


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
        flat = c_in if cfg.global_pool else c_in * side * side
        pool: list[nn.Module] = [nn.AdaptiveAvgPool2d(1)] if cfg.global_pool else []
        if cfg.head_units > 0:
            head: list[nn.Module] = [*pool, nn.Flatten()]
            if cfg.dropout > 0:
                head.append(nn.Dropout(cfg.dropout))
            head += [nn.Linear(flat, cfg.head_units), nn.ReLU(), nn.Dropout(cfg.dropout)]
            head.append(nn.Linear(cfg.head_units, num_classes))
        else:
            head = [*pool, nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(flat, num_classes)]
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
