"""Augmentation and normalisation of uint8 image batches, on the training device.

Random parameters are drawn per image but applied to the whole batch at once: one `affine_grid` +
`grid_sample` does random resized crop, flip and rotation together, colour jitter is a handful of
per-image scalars. (torchvision.transforms.v2 on a batch shares ONE set of parameters across the
batch, and per-image calls are ~5x slower: see docs/performance.md and
benchmarks/bench_augment.py.)
Validation/test batches only get normalised: resizing already happened once in the data cache.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F

from .config import AugmentConfig
from .errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Rec. 601 luma weights, as torchvision's rgb_to_grayscale uses
_LUMA = (0.299, 0.587, 0.114)
# Outside-the-image samples (rotated corners, crops at the edge) repeat the nearest edge pixel:
# that matches the background whether it is black (digits), white (product shots) or a photo's
# edge, where "zeros" paints black wedges on light images and "reflection" mirrors strokes of a
# digit that touches the border back into the corners.
PADDING_MODE = "border"
Stats = tuple[tuple[float, float, float], tuple[float, float, float]]


def dataset_stats(images: torch.Tensor, chunk_bytes: int = 64 << 20) -> Stats:
    """Per-channel mean and std (in [0, 1] units) of uint8 (N, 3, H, W) images, in bounded memory."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise DataError(
            f"dataset_stats needs a non-empty (N, 3, H, W) batch, got shape {tuple(images.shape)}"
        )
    n, c, h, w = images.shape
    # integer sums are exact and cheap; int32 squares of uint8 (<= 65025) cannot overflow
    step = max(1, chunk_bytes // (c * h * w * 4))
    total = torch.zeros(c, dtype=torch.int64)
    total_sq = torch.zeros(c, dtype=torch.int64)
    for start in range(0, n, step):
        chunk = images[start : start + step].to(torch.int32)
        total += chunk.sum(dim=(0, 2, 3), dtype=torch.int64).cpu()
        total_sq += (chunk * chunk).sum(dim=(0, 2, 3), dtype=torch.int64).cpu()
    count = n * h * w
    mean = total.double() / count / 255.0
    var = (total_sq.double() / count / 255.0**2 - mean**2).clamp_min(0.0)
    # a constant channel (std 0) would divide by zero; 1e-3 keeps it finite and near-zero
    std = var.sqrt().clamp_min(1e-3)
    return tuple(mean.tolist()), tuple(std.tolist())  # type: ignore[return-value]


def normalization(
    cfg: AugmentConfig, train_images: torch.Tensor | None, pretrained: Stats | None = None
) -> Stats:
    """(mean, std) to normalise with: a pretrained model's own (`pretrained`, from its registry
    spec), else per cfg.normalize (ImageNet's, the training split's, or none)."""
    if pretrained is not None:
        return pretrained
    if cfg.normalize == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    if cfg.normalize == "none":
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if train_images is None:
        raise DataError(
            "augment.normalize is 'dataset' but no training images were given to measure"
        )
    return dataset_stats(train_images)


def _random_params(n: int, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """(n, 9) uniforms in [0, 1): one row of parameters per image, drawn in a single call."""
    gen_device = generator.device if generator is not None else device
    # drawn on the generator's device so a CPU generator also drives a CUDA batch reproducibly
    return torch.rand(n, 9, generator=generator, device=gen_device).to(device)


def _geometry(u: torch.Tensor, cfg: AugmentConfig, h: int, w: int) -> torch.Tensor:
    """(N, 2, 3) affine matrices mapping output to input coordinates in [-1, 1] (affine_grid)."""
    if cfg.crop_scale_min < 1.0:
        lo, hi = cfg.crop_scale_min, cfg.crop_scale_max
        area = lo + (hi - lo) * u[:, 0]
        log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[:, 1]
        ratio = torch.exp(log_ratio)
        # crop side as a fraction of the image side; clamped so the crop stays inside the image
        cw = torch.sqrt(area * ratio).clamp(max=1.0)
        ch = torch.sqrt(area / ratio).clamp(max=1.0)
        cx = (1 - cw) * (2 * u[:, 2] - 1)  # crop centre anywhere that keeps the crop inside
        cy = (1 - ch) * (2 * u[:, 3] - 1)
    else:
        cw = ch = torch.ones_like(u[:, 0])
        cx = cy = torch.zeros_like(u[:, 0])
    angle = math.radians(cfg.rotation) * (2 * u[:, 4] - 1)
    flip = torch.where(u[:, 5] < cfg.hflip, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # rotation in pixel space expressed in normalised coords: the h/w factors undo the squash
    theta = torch.stack(
        [
            torch.stack([cos * cw * flip, -sin * ch * (h / w), cx], dim=1),
            torch.stack([sin * cw * flip * (w / h), cos * ch, cy], dim=1),
        ],
        dim=1,
    )
    return theta  # (N, 2, 3)


def augment_batch(
    x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random crop/flip/rotation/colour jitter per image of a uint8 (N, 3, H, W) batch -> float in [0, 1]."""
    out = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    n, _, h, w = out.shape
    if n == 0 or not cfg.enabled:
        return out
    u = _random_params(n, out.device, generator)
    if cfg.crop_scale_min < 1.0 or cfg.rotation > 0:
        grid = F.affine_grid(_geometry(u, cfg, h, w), [n, 3, h, w], align_corners=False)
        out = F.grid_sample(
            out, grid, mode="bilinear", padding_mode=PADDING_MODE, align_corners=False
        )
    elif cfg.hflip > 0:
        # flip only: an exact pixel copy, no resampling blur
        flip = (u[:, 5] < cfg.hflip).view(n, 1, 1, 1)
        out = torch.where(flip, out.flip(-1), out)
    jitter = cfg.brightness > 0 or cfg.contrast > 0 or cfg.saturation > 0
    if cfg.brightness > 0:
        out = out * (1 + cfg.brightness * (2 * u[:, 6] - 1)).view(n, 1, 1, 1)
    if cfg.contrast > 0:
        factor = (1 + cfg.contrast * (2 * u[:, 7] - 1)).view(n, 1, 1, 1)
        grey = _grey(out).mean(dim=(1, 2, 3), keepdim=True)  # (N, 1, 1, 1) mean grey per image
        out = out * factor + grey * (1 - factor)
    if cfg.saturation > 0:
        factor = (1 + cfg.saturation * (2 * u[:, 8] - 1)).view(n, 1, 1, 1)
        out = out * factor + _grey(out) * (1 - factor)
    if jitter:
        out = out.clamp_(0.0, 1.0)
    return out


def _grey(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma of an RGB batch."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return _LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b


@lru_cache(maxsize=16)
def _affine(
    mean: tuple[float, ...], std: tuple[float, ...], device: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 3, 1, 1) scale and shift so that x * scale + shift == (x - mean) / std; cached per device
    so the training loop does not copy two tiny tensors to the GPU on every batch."""
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return 1.0 / s, -m / s


def prepare_batch(
    x: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    cfg: AugmentConfig | None = None,
    train: bool = False,
    generator: torch.Generator | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> normalised float batch; train=True augments first (same device as x)."""
    if train and cfg is not None and cfg.enabled:
        out = augment_batch(x, cfg, generator)
    else:
        out = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    scale, shift = _affine(tuple(map(float, mean)), tuple(map(float, std)), str(out.device))
    out = torch.addcmul(shift, out, scale)  # one fused pass: out * scale + shift
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def preview(images: torch.Tensor, cfg: AugmentConfig, n: int = 4, seed: int = 0) -> torch.Tensor:
    """n augmented copies of each uint8 (N, 3, H, W) image -> uint8 (N, n, 3, H, W), via augment_batch."""
    count, c, h, w = images.shape
    generator = torch.Generator(device=images.device).manual_seed(seed)
    copies = images.repeat_interleave(n, dim=0)  # (N*n, 3, H, W): image 0 x n, image 1 x n, ...
    out = augment_batch(copies, cfg, generator)
    return (out * 255.0).round_().to(torch.uint8).view(count, n, c, h, w)
