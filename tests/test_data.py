"""cnnlab.data on real image files written by the tests, good and broken."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab import data
from cnnlab.config import DataConfig
from cnnlab.errors import ConfigError, DataError


def _rgb(w: int = 16, h: int = 16, color=(200, 30, 30)) -> Image.Image:
    return Image.new("RGB", (w, h), color)


def _noise(w: int = 64, h: int = 64, seed: int = 0) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr)


def _jpeg_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def _write_good(folder: Path) -> dict[str, str]:
    """Every supported format and colour mode; returns {relative path: what it is}."""
    folder.mkdir(parents=True, exist_ok=True)
    _rgb().save(folder / "a.png")
    _rgb().save(folder / "b.jpg")
    _rgb().save(folder / "c.jpeg")
    _rgb().save(folder / "d.bmp")
    _rgb().save(folder / "e.gif")
    _rgb().save(folder / "f.webp")
    _rgb().save(folder / "g.tif")
    _rgb().save(folder / "h.tiff")
    _rgb().save(folder / "UPPER.PNG")
    _rgb().save(folder / "Mixed.JpG", "JPEG")
    return {p.name: "good" for p in folder.iterdir()}


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """A data set mixing good images of every kind with every kind of bad file."""
    root = tmp_path / "messy"
    _write_good(root / "cats")
    dogs = root / "dogs"
    dogs.mkdir()
    for i in range(4):
        _noise(seed=i).save(dogs / f"dog{i}.png")
    (dogs / "sub" / "deeper").mkdir(parents=True)
    _rgb().save(dogs / "sub" / "deeper" / "nested.png")  # nested folders count for their class
    (dogs / "corrupt.png").write_bytes(os.urandom(300))
    (dogs / "truncated.jpg").write_bytes(_jpeg_bytes(_noise(128, 128))[:3000])
    (dogs / "empty.png").write_bytes(b"")
    (dogs / "text.jpg").write_text("this is not an image\n")
    (dogs / "notes.txt").write_text("labels were checked by hand\n")
    # silently ignored litter
    (root / ".DS_Store").write_bytes(b"\x00\x01")
    (dogs / ".DS_Store").write_bytes(b"\x00\x01")
    (dogs / "Thumbs.db").write_bytes(b"\x00")
    (dogs / "desktop.ini").write_text("[.ShellClassInfo]\n")
    (dogs / ".hidden.png").write_bytes(b"garbage")
    (root / "__MACOSX" / "dogs").mkdir(parents=True)
    (root / "__MACOSX" / "dogs" / "._dog0.png").write_bytes(b"\x00\x05\x16\x07")
    (root / ".git").mkdir()
    # loose file in the root
    _rgb().save(root / "stray.png")
    # a class whose every file is bad is left out, not fatal
    (root / "zebras").mkdir()
    (root / "zebras" / "z.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return root


def test_scan_counts_good_files_and_lists_every_bad_one(messy: Path) -> None:
    result = data.scan(messy)
    assert result.root == messy.resolve()
    assert result.classes == ["cats", "dogs"]
    assert result.counts == {"cats": 10, "dogs": 5}
    assert result.n_images == 15 == len(result.labels)
    assert all(f.is_absolute() and f.is_file() for f in result.files)
    assert result.files[result.labels.index(1)].parent.name in ("dogs", "deeper")
    reasons = {p.path: p.reason for p in result.problems}
    assert "empty" in reasons["dogs/empty.png"]
    assert "not a readable image" in reasons["dogs/corrupt.png"]
    assert "truncated" in reasons["dogs/truncated.jpg"]
    assert "not a readable image" in reasons["dogs/text.jpg"]
    assert "not an image file type (.txt)" in reasons["dogs/notes.txt"]
    assert "not inside a class folder" in reasons["stray.png"]
    assert "class left out" in reasons["zebras/"]
    assert "zebras/z.png" in reasons
    # nothing else: litter is ignored silently, and no good file is reported
    assert set(reasons) == {
        "dogs/empty.png", "dogs/corrupt.png", "dogs/truncated.jpg", "dogs/text.jpg",
        "dogs/notes.txt", "stray.png", "zebras/", "zebras/z.png",
    }  # fmt: skip


def test_scan_reports_progress(messy: Path) -> None:
    calls = []
    data.scan(messy, progress=lambda d, t, s: calls.append((d, t, s)))
    assert calls[-1] == (20, 20, "verify")  # every image-named file: 15 good, 5 bad


def test_decompression_bomb_is_a_problem(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "d"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        _rgb().save(root / c / "ok.png")
    # Highly compressible and over the (lowered) limit: the shape of a real bomb, small on disk.
    Image.new("L", (200, 200), 0).save(root / "a" / "bomb.png")
    monkeypatch.setattr(data, "MAX_PIXELS", 10_000)
    reasons = {p.path: p.reason for p in data.scan(root).problems}
    assert reasons["a/bomb.png"].startswith("too large")
    assert "40,000 pixels" in reasons["a/bomb.png"]


def test_pil_own_bomb_error_is_a_problem(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "d"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        _rgb().save(root / c / "ok.png")
    Image.new("L", (200, 200), 0).save(root / "b" / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # PIL raises above twice this
    reasons = {p.path: p.reason for p in data.scan(root).problems}
    assert reasons["b/bomb.png"].startswith("too large")
    assert data.scan(root).counts == {"a": 1, "b": 1}


def test_unreadable_files_are_problems(tmp_path: Path) -> None:
    root = tmp_path / "d"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        _rgb().save(root / c / "ok.png")
    (root / "a" / "broken-link.png").symlink_to(tmp_path / "nowhere.png")
    locked = root / "b" / "locked.png"
    _rgb().save(locked)
    locked.chmod(0)
    try:
        reasons = {p.path: p.reason for p in data.scan(root).problems}
    finally:
        locked.chmod(0o644)
    assert reasons["a/broken-link.png"].startswith("unreadable")
    if os.geteuid() != 0:  # root reads files whatever their mode
        assert "permission denied" in reasons["b/locked.png"]


def _pixel(t: torch.Tensor, y: int, x: int) -> tuple[int, int, int]:
    return tuple(int(v) for v in t[:, y, x])


def test_decode_image_shape_and_formats(tmp_path: Path) -> None:
    names = _write_good(tmp_path / "fmt")
    for name in names:
        t = data.decode_image(tmp_path / "fmt" / name, 12)
        assert t.dtype == torch.uint8 and t.shape == (3, 12, 12)
        r, g, b = _pixel(t, 6, 6)
        assert r > 170 and g < 70 and b < 70, name


def test_decode_image_from_bytes_matches_path(tmp_path: Path) -> None:
    path = tmp_path / "n.jpg"
    path.write_bytes(_jpeg_bytes(_noise(300, 200)))
    assert torch.equal(data.decode_image(path, 32), data.decode_image(path.read_bytes(), 32))


def test_palette_with_transparency_composites_on_white(tmp_path: Path) -> None:
    im = Image.new("P", (8, 8), 0)
    im.putpalette([0, 0, 0] * 256)
    im.info["transparency"] = 0
    im.save(tmp_path / "p.png", transparency=0)
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert _pixel(data.decode_image(tmp_path / "p.png", 8), 4, 4) == (255, 255, 255)


def test_alpha_modes_composite_on_white(tmp_path: Path) -> None:
    Image.new("LA", (8, 8), (0, 0)).save(tmp_path / "la.png")
    Image.new("RGBA", (8, 8), (0, 0, 0, 128)).save(tmp_path / "rgba.png")
    assert _pixel(data.decode_image(tmp_path / "la.png", 8), 4, 4) == (255, 255, 255)
    r, g, b = _pixel(data.decode_image(tmp_path / "rgba.png", 8), 4, 4)
    assert 120 <= r <= 135 and r == g == b  # half-transparent black on white is mid grey


def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.zeros((8, 24), dtype=np.uint16)
    arr[:, 8:16] = 32896  # 128 * 257
    arr[:, 16:] = 65535
    Image.fromarray(arr).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    t = data.decode_image(tmp_path / "deep.png", 24)
    # squashing 24x8 -> 24x24 keeps the columns: dark, mid, white
    assert _pixel(t, 12, 2) == (0, 0, 0)
    assert _pixel(t, 12, 12) == (128, 128, 128)
    assert _pixel(t, 12, 21) == (255, 255, 255)


def test_grayscale_and_cmyk(tmp_path: Path) -> None:
    Image.new("L", (8, 8), 77).save(tmp_path / "l.png")
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    assert _pixel(data.decode_image(tmp_path / "l.png", 8), 4, 4) == (77, 77, 77)
    r, g, b = _pixel(data.decode_image(tmp_path / "cmyk.jpg", 8), 4, 4)
    assert r > 200 and g < 60 and b < 60  # full magenta + yellow ink is red


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # 40 wide x 20 high: left half red, right half blue; EXIF 6 says "rotate 90 degrees clockwise"
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "rot.jpg").write_bytes(_jpeg_bytes(im, exif=exif.tobytes()))
    t = data.decode_image(tmp_path / "rot.jpg", 20)
    # upright it is 20 wide x 40 high with red on top and blue below
    assert _pixel(t, 2, 10)[0] > 200 and _pixel(t, 2, 10)[2] < 60
    assert _pixel(t, 17, 10)[2] > 200 and _pixel(t, 17, 10)[0] < 60


def test_big_jpeg_decodes_at_reduced_scale_with_same_result_shape(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    path.write_bytes(_jpeg_bytes(Image.new("RGB", (1600, 1200), (10, 200, 30))))
    t = data.decode_image(path, 32)
    assert t.shape == (3, 32, 32)
    r, g, b = _pixel(t, 16, 16)
    assert abs(r - 10) < 8 and abs(g - 200) < 8 and abs(b - 30) < 8


# ---- layout and fatal errors ---------------------------------------------------------------


def _classes(root: Path, counts: dict[str, int]) -> Path:
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            # noise, so no two files are copies of each other (copies share a split)
            _noise(8, 8, seed=i + 1000 * sum(map(ord, name))).save(root / name / f"{i}.png")
    return root


def test_single_top_folder_is_descended(tmp_path: Path) -> None:
    _classes(tmp_path / "outer" / "wrapper", {"b": 3, "a": 3})
    (tmp_path / "outer" / ".DS_Store").write_bytes(b"x")
    result = data.scan(tmp_path / "outer")
    assert result.root.name == "wrapper"
    assert result.classes == ["a", "b"]  # sorted, as ImageFolder


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p, "does not exist"),
        (lambda p: p.write_text("x"), "neither a folder nor a .zip"),
        (lambda p: p.mkdir(), "is empty"),
        (lambda p: (p.mkdir(), _rgb().save(p / "x.png")), "has no class folders"),
        (
            lambda p: _classes(p, {"cats": 4}),
            "1 usable class folder(s) (only 'cats'); a classifier needs at least 2",
        ),
    ],
)
def test_fatal_layouts(tmp_path: Path, make, message: str) -> None:
    path = tmp_path / "data"
    make(path)
    with pytest.raises(DataError) as info:
        data.scan(path)
    assert message in str(info.value)


def test_class_of_only_bad_images_can_leave_too_few_classes(tmp_path: Path) -> None:
    root = _classes(tmp_path / "d", {"cats": 4})
    (root / "dogs").mkdir()
    (root / "dogs" / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match="only 'cats'"):
        data.scan(root)


def test_too_few_images_to_stratify_names_the_class(tmp_path: Path) -> None:
    result = data.scan(_classes(tmp_path / "d", {"cats": 5, "dogs": 2}))
    with pytest.raises(DataError) as info:
        data.split(result)
    assert "'dogs' (2); each needs at least 3" in str(info.value)
    # with no test split two images suffice
    assert data.split(result, 0.2, 0.0).per_class(result)["dogs"] == {
        "train": 1,
        "val": 1,
        "test": 0,
    }
    with pytest.raises(DataError, match="leave some images for training"):
        data.split(result, 0.5, 0.5)


# ---- split ---------------------------------------------------------------------------------


def test_split_is_stratified_reproducible_and_disjoint(digits_dir: Path) -> None:
    result = data.scan(digits_dir)
    assert result.classes == [str(d) for d in range(10)]
    s = data.split(result, seed=3)
    assert s.to_dict() == data.split(result, seed=3).to_dict()
    assert s.to_dict() != data.split(result, seed=4).to_dict()
    all_idx = s.train + s.val + s.test
    assert sorted(all_idx) == list(range(result.n_images))
    assert s.sizes() == {"train": len(s.train), "val": len(s.val), "test": len(s.test)}
    assert abs(s.sizes()["val"] / result.n_images - 0.15) < 0.01
    table = s.per_class(result)
    for cls, row in table.items():
        assert sum(row.values()) == result.counts[cls]
        assert row["val"] >= 1 and row["test"] >= 1
        assert abs(row["train"] / result.counts[cls] - 0.70) < 0.03
    assert data.Split.from_dict(s.to_dict()) == s


def test_split_keeps_every_class_in_every_split_when_small(tmp_path: Path) -> None:
    result = data.scan(_classes(tmp_path / "d", {"a": 3, "b": 3, "c": 40}))
    table = data.split(result).per_class(result)
    assert table["a"] == {"train": 1, "val": 1, "test": 1}
    assert table["c"] == {"train": 28, "val": 6, "test": 6}


# ---- decode-once cache ---------------------------------------------------------------------


def test_load_tensors_caches_and_second_load_skips_decoding(
    workspace: Path, digits_dir: Path, monkeypatch, caplog
) -> None:
    files = data.scan(digits_dir).files[:200]
    calls = []
    first = data.load_tensors(files, 16, progress=lambda *a: calls.append(a))
    assert first.shape == (200, 3, 16, 16) and first.dtype == torch.uint8
    assert calls[-1] == (200, 200, "decode")
    assert torch.equal(first[7], data.decode_image(files[7], 16))
    cached = list(data.workspace.cache_dir().glob("*.npy"))
    assert len(cached) == 1 and not list(data.workspace.cache_dir().glob(".*"))

    def refuse(*_a, **_k):
        raise AssertionError("decode_image called on a cache hit")

    monkeypatch.setattr(data, "decode_image", refuse)
    with caplog.at_level(logging.INFO, logger="cnnlab.data"):
        second = data.load_tensors(files, 16)
    assert torch.equal(first, second)
    assert "cache hit" in caplog.text
    # another size is another cache entry, so it must decode (and here: fail loudly)
    with pytest.raises(DataError, match="could not be decoded"):
        data.load_tensors(files, 20)


def test_cache_key_follows_file_changes(workspace: Path, tmp_path: Path) -> None:
    root = _classes(tmp_path / "d", {"a": 3, "b": 3})
    files = data.scan(root).files
    before = data.load_tensors(files, 8)
    Image.new("RGB", (8, 8), (0, 255, 0)).save(files[0])
    os.utime(files[0], ns=(1, 10**18))  # a different mtime even on coarse file systems
    after = data.load_tensors(files, 8)
    assert not torch.equal(before[0], after[0])
    assert _pixel(after[0], 4, 4) == (0, 255, 0)
    assert len(list(workspace.joinpath("cache").glob("*.npy"))) == 2


def test_large_data_decodes_into_a_memory_map(workspace: Path, tmp_path: Path, monkeypatch):
    files = data.scan(_classes(tmp_path / "d", {"a": 3, "b": 3})).files
    in_ram = data.load_tensors(files, 8)
    for f in workspace.joinpath("cache").glob("*.npy"):
        f.unlink()
    monkeypatch.setattr(data, "_ram_bytes", lambda: 1000)  # everything counts as "too big"
    mapped = data.load_tensors(files, 8)
    assert torch.equal(in_ram, mapped)
    again = data.load_tensors(files, 8)  # a hit, memory-mapped
    assert torch.equal(in_ram, again)


def test_load_tensors_refuses_nothing(workspace: Path) -> None:
    with pytest.raises(DataError, match="no images"):
        data.load_tensors([], 8)


def test_prepare_glues_scan_split_and_tensors(workspace: Path, digits_dir: Path) -> None:
    stages = set()
    cfg = DataConfig(path=str(digits_dir), image_size=8, val_fraction=0.2, test_fraction=0.1)
    prepared = data.prepare(cfg, progress=lambda d, t, s: stages.add(s))
    assert stages == {"verify", "decode"}
    assert prepared.classes == [str(d) for d in range(10)] and prepared.image_size == 8
    assert prepared.images.shape == (1797, 3, 8, 8) and prepared.labels.dtype == torch.int64
    x, y = prepared.subset("val")
    assert x.shape[0] == y.shape[0] == prepared.split.sizes()["val"]
    assert set(y.tolist()) == set(range(10))
    with pytest.raises(ValueError):
        prepared.subset("holdout")
    with pytest.raises(ConfigError):
        data.prepare(DataConfig(path=""))


def test_workspace_fixture_isolates_cache(workspace: Path) -> None:
    assert data.workspace.cache_dir().is_relative_to(workspace)
