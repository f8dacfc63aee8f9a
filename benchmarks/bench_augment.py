"""Images/s of cnnlab's batched augment_batch beside torchvision v2 called per image.

Same images (random uint8), same size, same transforms (random resized crop, flip, rotation,
colour jitter); the first pass of each is a warm-up and not timed.
Run: .venv/bin/python benchmarks/bench_augment.py [--size 64] [--batch 256] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch
from torchvision.transforms import v2

from cnnlab.augment import augment_batch
from cnnlab.config import AUGMENT_PRESETS


def _rate(fn, x: torch.Tensor, repeats: int) -> float:
    fn(x)  # warm-up
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn(x)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return repeats * x.shape[0] / (time.perf_counter() - start)


def main() -> None:
    """Print both rates and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    cfg = AUGMENT_PRESETS["standard"]
    device = torch.device(args.device)
    x = torch.randint(
        0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8, device=device
    )
    gen = torch.Generator(device=device).manual_seed(0)
    per_image = v2.Compose(
        [
            v2.RandomResizedCrop(
                args.size, scale=(cfg.crop_scale_min, cfg.crop_scale_max), antialias=True
            ),
            v2.RandomHorizontalFlip(cfg.hflip),
            v2.RandomRotation(cfg.rotation),
            v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )
    ours = _rate(lambda b: augment_batch(b, cfg, gen), x, args.repeats)
    theirs = _rate(
        lambda b: torch.stack([per_image(img) for img in b]), x, max(1, args.repeats // 5)
    )
    print(f"{args.size} px, batch {args.batch}, {device}: preset 'standard'")
    print(f"  cnnlab augment_batch (batched, per-image params): {ours:10.0f} images/s")
    print(f"  torchvision v2 per image:                         {theirs:10.0f} images/s")
    print(f"  ratio: {ours / theirs:.1f}x")


if __name__ == "__main__":
    main()
