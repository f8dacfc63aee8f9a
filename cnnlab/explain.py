"""Look inside a trained CNN: Grad-CAM saliency, first-layer filters, feature maps of any layer.

Grad-CAM is written here (a forward hook + autograd.grad, ~25 lines) rather than taken from
`grad-cam` or `captum`: `grad-cam` pulls in OpenCV, matplotlib, scipy, ttach and tqdm, `captum`
pulls in matplotlib, and either would serve one function; the algorithm is short and tested here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import models
from .errors import ConfigError

# A perceptual "turbo"-like colour map as anchor points (value -> RGB), interpolated linearly;
# enough for a heatmap and avoids depending on matplotlib for one lookup table.
_CMAP_X = np.linspace(0.0, 1.0, 7)
_CMAP_RGB = np.array(
    [
        [48, 18, 59],
        [70, 107, 227],
        [40, 187, 236],
        [49, 242, 153],
        [162, 252, 60],
        [237, 208, 58],
        [180, 4, 38],
    ],
    dtype=np.float64,
)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (H, W) -> uint8 RGB (H, W, 3)."""
    v = np.clip(np.nan_to_num(values.astype(np.float64)), 0.0, 1.0)
    rgb = np.stack([np.interp(v, _CMAP_X, _CMAP_RGB[:, c]) for c in range(3)], axis=-1)
    return rgb.round().astype(np.uint8)


def display_image(image: np.ndarray | torch.Tensor, size: int = 96) -> np.ndarray:
    """A small uint8 image (3, H, W), (H, W, 3) or (H, W) enlarged to about `size` px, crisp pixels."""
    img = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(1, 2, 0)
    factor = max(1, size // max(img.shape[0], 1))
    # nearest-neighbour: a 16 px digit or a 3x3 filter stays readable instead of a blur
    return img.repeat(factor, axis=0).repeat(factor, axis=1)


def grad_cam(
    model: nn.Module, x: torch.Tensor, target: int | None = None, layer: nn.Module | None = None
) -> tuple[np.ndarray, int]:
    """Grad-CAM of one normalised image x (1, 3, H, W): heatmap (H, W) in [0, 1] and the class used.

    The class defaults to the predicted one. Channels of the target layer's activation A (1, K, h, w)
    are weighted by their mean gradient of the class score, summed and ReLU'd (Selvaraju et al.).
    """
    layer = layer if layer is not None else models.target_layer(model)
    store: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: store.update(act=out))
    was_training = model.training
    model.eval()
    try:
        # autograd.grad w.r.t. the activation only: no .grad is left on the model's parameters,
        # and it works when the weights are frozen because the input requires a gradient.
        with torch.enable_grad():
            logits = model(x.detach().requires_grad_(True))
            cls = int(logits.argmax(1)[0]) if target is None else int(target)
            (grad,) = torch.autograd.grad(logits[0, cls], store["act"])
    finally:
        handle.remove()
        model.train(was_training)
    layout = models.cam_layout(model) if layer is None else "nchw"
    act, grad = _as_maps(store["act"].detach(), layout), _as_maps(grad.detach(), layout)
    # act, grad: (1, K, h, w) each
    weights = grad.mean(dim=(2, 3), keepdim=True)  # (1, K, 1, 1): global-average-pooled gradients
    cam = F.relu((weights * act).sum(1, keepdim=True))  # (1, 1, h, w)
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    cam = cam - cam.min()
    peak = float(cam.max())
    heat = (cam / peak) if peak > 1e-12 else torch.zeros_like(cam)
    return heat.cpu().numpy().astype(np.float32), cls


def _as_maps(t: torch.Tensor, layout: str) -> torch.Tensor:
    """A layer output as (B, K, h, w) maps: NHWC (swin) permuted, ViT tokens (class token first)
    laid back on their square grid."""
    if layout == "nhwc" and t.ndim == 4:
        return t.permute(0, 3, 1, 2)
    if layout == "tokens" and t.ndim == 3:
        n = t.shape[1]
        side = int(round((n - 1) ** 0.5))
        start = n - side * side  # 1 class token (more for distilled ViTs)
        return t[:, start:].transpose(1, 2).reshape(t.shape[0], t.shape[2], side, side)
    return t


def overlay(image: np.ndarray | torch.Tensor, heat: np.ndarray, alpha: float = 0.45,
            size: int | None = None) -> np.ndarray:  # fmt: skip
    """Blend a colour-mapped heatmap onto an image: uint8 (H, W, 3), upsampled to `size` if given.

    `image` is uint8 (3, H, W) (a tensor from decode_image) or (H, W, 3); `heat` is (h, w) in [0, 1].
    """
    img = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
        img = img.transpose(1, 2, 0)
    side = size or img.shape[0]
    img_t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
    img_t = F.interpolate(img_t, size=(side, side), mode="bilinear", align_corners=False)
    heat_t = torch.from_numpy(np.ascontiguousarray(heat, dtype=np.float32))[None, None]
    heat_t = F.interpolate(heat_t, size=(side, side), mode="bilinear", align_corners=False)
    base = img_t[0].permute(1, 2, 0).numpy()
    colour = colormap(heat_t[0, 0].numpy()).astype(np.float64)
    blended = (1 - alpha) * base + alpha * colour
    return np.clip(blended, 0, 255).round().astype(np.uint8)


def first_layer_filters(model: nn.Module) -> np.ndarray:
    """The first convolution's kernels as uint8 RGB images (K, kh, kw, 3), each scaled to 0-255."""
    conv = models.first_conv(model)
    w = conv.weight.detach().float().cpu()  # (K, C_in, kh, kw)
    if w.shape[1] == 1:
        w = w.repeat(1, 3, 1, 1)
    elif w.shape[1] != 3:
        raise ConfigError(
            f"the first convolution sees {w.shape[1]} channels, not RGB: its filters are not images"
        )
    lo = w.amin(dim=(1, 2, 3), keepdim=True)
    hi = w.amax(dim=(1, 2, 3), keepdim=True)
    w = (w - lo) / (hi - lo).clamp(min=1e-12)  # per filter, so weak filters stay visible
    return (w * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def layer_names(model: nn.Module) -> list[str]:
    """Names (as in named_modules) of the layers whose feature maps can be shown, input first."""
    names = models.map_layers(model)
    if not names:
        raise ConfigError(f"{type(model).__name__} has no convolution layer to show")
    return names


@torch.inference_mode()
def feature_maps(
    model: nn.Module, x: torch.Tensor, layer_name: str, max_maps: int = 32
) -> np.ndarray:
    """Activations of one layer for one normalised image x (1, 3, H, W): uint8 (M, h, w).

    Each map is scaled to 0-255 on its own; the `max_maps` most active channels are kept, in order.
    """
    modules = dict(model.named_modules())
    if layer_name not in modules:
        raise ConfigError(
            f"no layer {layer_name!r} in the model; choose one of {', '.join(layer_names(model))}"
        )
    store: dict[str, torch.Tensor] = {}
    handle = modules[layer_name].register_forward_hook(lambda _m, _i, out: store.update(a=out))
    model.eval()
    try:
        model(x)
    finally:
        handle.remove()
    layout = models.cam_layout(model) if not isinstance(modules[layer_name], nn.Conv2d) else "nchw"
    act = _as_maps(store["a"], layout)[0].float().cpu()  # (K, h, w)
    if act.ndim != 3:
        raise ConfigError(f"layer {layer_name!r} does not output feature maps (shape {act.shape})")
    strongest = act.mean(dim=(1, 2)).topk(min(max_maps, act.shape[0])).indices.sort().values
    act = act[strongest]
    lo = act.amin(dim=(1, 2), keepdim=True)
    hi = act.amax(dim=(1, 2), keepdim=True)
    act = (act - lo) / (hi - lo).clamp(min=1e-12)
    return (act * 255).round().to(torch.uint8).numpy()


def saliency(
    predictor, image: torch.Tensor, target: int | None = None, size: int = 224
) -> tuple[np.ndarray, str, float]:
    """Grad-CAM overlay (size x size x 3 uint8) of one uint8 image (3, S, S) for a Predictor.

    Returns (overlay, class explained, its probability); the class defaults to the top-1.
    """
    x = predictor.preprocess(image[None])
    heat, cls = grad_cam(predictor.model, x, target)
    prob = float(predictor.probabilities(image[None])[0, cls])
    return overlay(image, heat, size=size), predictor.classes[cls], prob


def tile(maps: np.ndarray, columns: int = 8, cell: int = 64, gap: int = 2) -> np.ndarray:
    """Feature maps uint8 (M, h, w) as one grey image grid (rows x columns of `cell` px tiles)."""
    n = maps.shape[0]
    cols = max(1, min(columns, n))
    rows = -(-n // cols)
    grid = np.full((rows * (cell + gap) - gap, cols * (cell + gap) - gap), 255, dtype=np.uint8)
    for i, m in enumerate(maps):
        big = display_image(m, cell)[:cell, :cell]
        r, c = divmod(i, cols)
        y, x = r * (cell + gap), c * (cell + gap)
        grid[y : y + big.shape[0], x : x + big.shape[1]] = big
    return grid


def write_explanation(
    predictor, image_path: str | Path, out_dir: str | Path, layers: list[str] | None = None
) -> dict[str, Any]:
    """Write input.png, gradcam.png and features-<layer>.png (every map layer by default) for one
    image: what the dashboard's Predict and Evaluate pages show. Returns a JSON-ready report."""
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image = predictor.load(image_path)
    chosen = layers or layer_names(predictor.model)
    files: dict[str, str] = {}

    def save(name: str, pixels: np.ndarray) -> None:
        Image.fromarray(pixels).save(out / name)
        files[name] = str(out / name)

    save("input.png", display_image(image, 224))
    cam, cls, prob = saliency(predictor, image, size=224)
    save("gradcam.png", cam)
    x = predictor.preprocess(image[None])
    for name in chosen:
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
        save(f"features-{safe}.png", tile(feature_maps(predictor.model, x, name)))
    return {
        "run_id": predictor.run_id,
        "image": str(image_path),
        "predicted": cls,
        "probability": prob,
        "layers": chosen,
        "files": files,
    }
