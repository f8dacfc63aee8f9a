"""Built-in real data written as image folders: scikit-learn's digits and its two sample photos.

Nothing is downloaded: both data sets ship inside scikit-learn.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from . import workspace

log = logging.getLogger(__name__)

DIGITS_NAME = "demo-digits"
DIGITS_SIZE = 32  # side of the written digit images


def write_digits(out_dir: str | Path, size: int = DIGITS_SIZE) -> Path:
    """Write the 1,797 8x8 sklearn digits as size x size PNGs in out_dir/<digit>/; returns out_dir."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = Path(out_dir)
    for d in range(10):
        (out / str(d)).mkdir(parents=True, exist_ok=True)
    # Values are 0..16 ink counts; * 255/16 maps them onto the full 8-bit range (white on black).
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8)
    for i, (img, target) in enumerate(zip(pixels, digits.target, strict=True)):
        # NEAREST keeps the 8x8 cells crisp: bilinear would invent grey ramps that the real
        # samples do not have, and training resizes again anyway.
        big = Image.fromarray(img, "L").resize((size, size), Image.Resampling.NEAREST)
        big.save(out / str(int(target)) / f"{i:04d}.png")
    log.info("wrote %d digits to %s", len(pixels), out)
    return out


def write_photos(out_dir: str | Path) -> Path:
    """Write sklearn's two sample photos as out_dir/china/china.jpg and out_dir/flower/flower.jpg."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    out = Path(out_dir)
    for name, img in zip(photos.filenames, photos.images, strict=True):
        stem = Path(name).stem
        (out / stem).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(out / stem / f"{stem}.jpg", quality=92)
    return out


def ensure_demo_digits() -> Path:
    """The digits folder in the workspace (datasets/demo-digits), written on first use only."""
    target = workspace.datasets_dir() / DIGITS_NAME
    if target.is_dir():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=f".{DIGITS_NAME}.", dir=target.parent))
    try:
        write_digits(tmp)
        os.replace(tmp, target)  # atomic: a half-written demo is never seen as done
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not target.is_dir():  # another session finishing first is fine
            raise
    return target
