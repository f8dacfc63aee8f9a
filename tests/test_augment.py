"""Tests for cnnlab.augment: per-image randomness, seeding, identity when off, stats, preview."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from sklearn.datasets import load_sample_images

from cnnlab.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    augment_batch,
    dataset_stats,
    normalization,
    prepare_batch,
    preview,
)
from cnnlab.config import AUGMENT_PRESETS, AugmentConfig
from cnnlab.errors import DataError

OFF = AUGMENT_PRESETS["none"]


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """sklearn's two sample photos, center-cropped and subsampled to uint8 (2, 3, 48, 48)."""
    images = load_sample_images().images  # two (427, 640, 3) uint8 arrays
    x = torch.stack([torch.from_numpy(im.copy()).permute(2, 0, 1) for im in images])
    return x[:, :, 20:404:8, 100:484:8].contiguous()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_off_is_identity(photos: torch.Tensor) -> None:
    out = augment_batch(photos, OFF, _gen(0))
    assert out.dtype == torch.float32
    assert torch.equal(out, photos.float() / 255)


@pytest.mark.parametrize("preset", ["light", "standard", "strong"])
def test_range_shape_and_per_image_randomness(photos: torch.Tensor, preset: str) -> None:
    batch = photos[:1].repeat(6, 1, 1, 1)  # six copies of the same image
    out = augment_batch(batch, AUGMENT_PRESETS[preset], _gen(1))
    assert out.shape == batch.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    for i in range(1, 6):
        assert not torch.allclose(out[0], out[i]), f"copy {i} got the same parameters as copy 0"


def test_each_transform_alone_varies_per_image(photos: torch.Tensor) -> None:
    batch = photos[:1].repeat(4, 1, 1, 1)
    for field, value in [
        ("crop_scale_min", 0.5),
        ("rotation", 20.0),
        ("brightness", 0.4),
        ("contrast", 0.4),
        ("saturation", 0.4),
    ]:
        cfg = dataclasses.replace(OFF, **{field: value})
        out = augment_batch(batch, cfg, _gen(3))
        assert not torch.allclose(out[0], out[1]), field
        assert not torch.allclose(out[0], batch[0].float() / 255), field


def test_seed_reproduces_exactly(photos: torch.Tensor) -> None:
    cfg = AUGMENT_PRESETS["strong"]
    a = augment_batch(photos, cfg, _gen(42))
    b = augment_batch(photos, cfg, _gen(42))
    c = augment_batch(photos, cfg, _gen(43))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_flip_only_is_exact_flip(photos: torch.Tensor) -> None:
    batch = photos.repeat(4, 1, 1, 1)  # 8 images
    cfg = dataclasses.replace(OFF, hflip=0.5)
    out = augment_batch(batch, cfg, _gen(5))
    base = batch.float() / 255
    flipped = [torch.equal(o, torch.flip(b, dims=[-1])) for o, b in zip(out, base, strict=True)]
    kept = [torch.equal(o, b) for o, b in zip(out, base, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert any(flipped) and any(kept)
    always = augment_batch(batch, dataclasses.replace(OFF, hflip=1.0), _gen(5))
    assert torch.equal(always, torch.flip(base, dims=[-1]))


def test_flip_through_grid_sample_matches_torch_flip(photos: torch.Tensor) -> None:
    # with rotation on, flips go through affine_grid; a 0-degree range must still be an exact flip
    cfg = dataclasses.replace(OFF, hflip=1.0, rotation=1e-9)
    out = augment_batch(photos, cfg, _gen(0))
    assert torch.allclose(out, torch.flip(photos.float() / 255, dims=[-1]), atol=1e-4)


def test_preview_shape_and_same_path(photos: torch.Tensor) -> None:
    cfg = AUGMENT_PRESETS["standard"]
    p = preview(photos, cfg, n=3, seed=7)
    assert p.shape == (2, 3, 3, 48, 48) and p.dtype == torch.uint8
    assert torch.equal(p, preview(photos, cfg, n=3, seed=7))
    expected = augment_batch(photos.repeat_interleave(3, dim=0), cfg, _gen(7))
    assert torch.equal(p.view(6, 3, 48, 48), (expected * 255).round().to(torch.uint8))
    assert torch.equal(preview(photos, OFF, n=2)[:, 1], photos)


def test_dataset_stats_matches_float_reference(photos: torch.Tensor) -> None:
    mean, std = dataset_stats(photos, chunk_bytes=48 * 48 * 3 * 4)  # one image per chunk
    ref = photos.double() / 255
    assert mean == pytest.approx(ref.mean(dim=(0, 2, 3)).tolist(), abs=1e-9)
    assert std == pytest.approx(ref.std(dim=(0, 2, 3), correction=0).tolist(), abs=1e-9)
    with pytest.raises(DataError):
        dataset_stats(torch.zeros(0, 3, 8, 8, dtype=torch.uint8))


def test_normalization_choices(photos: torch.Tensor) -> None:
    from cnnlab.models import input_stats  # the registry's fact, passed in by the caller

    cfg = AugmentConfig(normalize="dataset")
    assert normalization(cfg, photos, input_stats("resnet18")) == (IMAGENET_MEAN, IMAGENET_STD)
    assert input_stats("custom") is None
    assert normalization(cfg, photos, input_stats("custom")) == dataset_stats(photos)
    assert normalization(AugmentConfig(normalize="imagenet"), photos) == (
        IMAGENET_MEAN,
        IMAGENET_STD,
    )
    assert normalization(AugmentConfig(normalize="none"), photos) == (
        (0.0, 0.0, 0.0),
        (1.0, 1.0, 1.0),
    )
    other = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # e.g. a timm model's own statistics
    assert normalization(cfg, photos, other) == other


def test_prepare_batch_eval_and_train(photos: torch.Tensor) -> None:
    mean, std = dataset_stats(photos)
    x = prepare_batch(photos, mean, std)
    ref = (photos.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
        1, 3, 1, 1
    )
    assert torch.allclose(x, ref, atol=1e-5)
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-4  # dataset stats centre the data
    cl = prepare_batch(photos, mean, std, channels_last=True)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, x)
    assert not x.is_contiguous(memory_format=torch.channels_last)
    cfg = AUGMENT_PRESETS["standard"]
    trained = prepare_batch(photos, mean, std, cfg, train=True, generator=_gen(0))
    assert not torch.allclose(trained, x)
    assert torch.equal(prepare_batch(photos, mean, std, cfg, train=False), x)
