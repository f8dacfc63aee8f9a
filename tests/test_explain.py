"""explain: Grad-CAM, overlays, first-layer filters and feature maps of a real trained run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab import explain, models
from cnnlab.config import ModelConfig
from cnnlab.errors import ConfigError


def test_grad_cam_heatmap_and_overlay(predictor, digits_dir: Path) -> None:
    image = predictor.load(sorted((digits_dir / "0").iterdir())[0])
    x = predictor.preprocess(image[None])
    heat, cls = explain.grad_cam(predictor.model, x)
    assert heat.shape == (16, 16) and heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max() == pytest.approx(1.0)
    assert cls == int(predictor.probabilities(image[None]).argmax())
    other, cls2 = explain.grad_cam(predictor.model, x, target=(cls + 1) % 10)
    assert cls2 == (cls + 1) % 10 and not np.allclose(heat, other)
    assert all(p.grad is None for p in predictor.model.parameters())  # no stray gradients kept

    over, name, prob = explain.saliency(predictor, image, size=64)
    assert over.shape == (64, 64, 3) and over.dtype == np.uint8
    assert name == predictor.classes[cls] and 0 < prob <= 1
    plain = explain.overlay(image, np.zeros((16, 16)), alpha=0.0)
    assert np.array_equal(plain, image.permute(1, 2, 0).numpy())  # alpha 0 = the image itself


def test_grad_cam_on_a_transfer_model() -> None:
    cfg = ModelConfig(name="resnet18", weights="random")
    model = models.create_model(cfg, num_classes=3, image_size=64)
    heat, cls = explain.grad_cam(model, torch.randn(1, 3, 64, 64))
    assert heat.shape == (64, 64) and 0 <= cls < 3
    assert np.isfinite(heat).all() and heat.max() <= 1.0


def test_colormap_ends() -> None:
    cm = explain.colormap(np.array([[0.0, 1.0, 2.0, np.nan]]))
    assert cm.shape == (1, 4, 3) and cm.dtype == np.uint8
    assert tuple(cm[0, 1]) == tuple(cm[0, 2])  # clipped above 1
    assert tuple(cm[0, 0]) == tuple(cm[0, 3])  # NaN treated as 0


def test_first_layer_filters_and_feature_maps(predictor, digits_dir: Path) -> None:
    filters = explain.first_layer_filters(predictor.model)
    assert filters.shape == (8, 3, 3, 3) and filters.dtype == np.uint8
    assert (filters.reshape(8, -1).min(1) == 0).all() and (
        filters.reshape(8, -1).max(1) == 255
    ).all()

    names = explain.layer_names(predictor.model)
    assert names[0].startswith("features.0") and len(names) == 4
    x = predictor.preprocess(predictor.load(sorted((digits_dir / "4").iterdir())[0])[None])
    shallow = explain.feature_maps(predictor.model, x, "features.0")
    deep = explain.feature_maps(predictor.model, x, "features.2", max_maps=5)
    assert shallow.shape == (8, 16, 16) and deep.shape == (5, 8, 8)
    assert shallow.dtype == np.uint8
    with pytest.raises(ConfigError, match="no layer 'nope' in the model; choose one of features.0"):
        explain.feature_maps(predictor.model, x, "nope")
    with pytest.raises(ConfigError, match="'head.3' does not output feature maps"):
        explain.feature_maps(predictor.model, x, "head.3")
