"""cnnlab.demo writes real built-in data as image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cnnlab import demo


def test_digits_are_ten_classes_of_real_images(digits_dir: Path) -> None:
    folders = sorted(p.name for p in digits_dir.iterdir())
    assert folders == [str(d) for d in range(10)]
    files = sorted(digits_dir.glob("*/*.png"))
    assert len(files) == 1797
    im = np.asarray(Image.open(files[0]))
    assert im.shape == (32, 32) and im.dtype == np.uint8
    assert im.min() == 0 and im.max() > 200  # white strokes on black
    # 8x8 source cells upscaled by nearest neighbour: 4x4 blocks of one value
    assert (im[::4, ::4].repeat(4, 0).repeat(4, 1) == im).all()
    # different digits look different
    assert not np.array_equal(im, np.asarray(Image.open(digits_dir / "7" / "0007.png")))


def test_photos_are_two_jpegs(tmp_path: Path) -> None:
    out = demo.write_photos(tmp_path / "photos")
    files = sorted(out.glob("*/*.jpg"))
    assert [f.relative_to(out).as_posix() for f in files] == [
        "china/china.jpg",
        "flower/flower.jpg",
    ]
    with Image.open(files[0]) as im:
        assert im.format == "JPEG" and im.size == (640, 427)


def test_ensure_demo_digits_writes_once(workspace: Path, monkeypatch) -> None:
    first = demo.ensure_demo_digits()
    assert first == workspace / "datasets" / "demo-digits"
    assert len(list(first.glob("*/*.png"))) == 1797

    def refuse(*_a, **_k):
        raise AssertionError("written twice")

    monkeypatch.setattr(demo, "write_digits", refuse)
    assert demo.ensure_demo_digits() == first
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]
