"""Every registered model (random weights): builds, trains a step, gets a new head, follows each
strategy, and has a Grad-CAM layer. A new registry entry is tested by being registered."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from cnnlab import explain, models, registry
from cnnlab.config import ModelConfig, TrainConfig
from cnnlab.errors import ConfigError

CLASSES = 3


def _size(spec: registry.ModelSpec) -> int:
    return max(spec.min_size, 32)  # the smallest sensible input (swin: its fixed 224)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", models.list_models())
def test_every_registered_model(name: str) -> None:
    spec = models.get_spec(name)
    assert spec.pick and spec.head, "every entry says when to pick it and where its head is"
    size = _size(spec)
    torch.manual_seed(0)
    cfg = ModelConfig(name=name, weights="random", strategy="fine_tune", freeze_epochs=1)
    model = models.create_model(cfg, CLASSES, size)

    # the head was replaced: CLASSES outputs, and (transfer) the 1000-class count adds up
    head = registry.get_module(model, spec.head)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert linears[-1].out_features == CLASSES
    if spec.transfer:
        assert spec.weights is not None and spec.stats is not None and spec.input_size
        in_f = linears[-1].in_features
        assert _params(model) - (in_f + 1) * CLASSES + (in_f + 1) * 1000 == spec.params

    # fine_tune phase 1: the head only; its frozen BatchNorm layers keep their statistics
    if spec.transfer:
        assert models.trainable_count(model) == _params(head)
        model.train()
        models.freeze_bn_stats(model)
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert all(not m.training for m in bns)
        # gradual unfreezing: the last stage thaws alone
        last = ModelConfig(name=name, strategy="fine_tune", unfreeze_blocks=1)
        assert models.set_phase(model, last, epoch=2)
        stage = registry.block_modules(model, spec)[-1]
        assert models.trainable_count(model) == _params(head) + sum(_params(m) for m in stage)
        # feature extraction: back to the head only, whatever the epoch
        fe = ModelConfig(name=name, strategy="feature_extraction")
        assert models.set_phase(model, fe, epoch=5)
        assert models.trainable_count(model) == _params(head)
        groups = models.param_groups(model, fe, TrainConfig(lr=1e-3))
        assert [g["name"] for g in groups] == ["head"]
    # phase 2 of fine_tune: everything trains, the backbone at backbone_lr
    assert models.set_phase(model, cfg, epoch=2) == spec.transfer
    assert models.trainable_count(model) == _params(model)
    groups = models.param_groups(model, cfg, TrainConfig(lr=1e-3, backbone_lr=1e-5))
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    if spec.transfer:
        assert {g["name"]: g["lr"] for g in groups} == {"head": 1e-3, "backbone": 1e-5}

    # one training step: forward and backward at the smallest sensible size
    model.train()
    out = model(torch.rand(2, 3, size, size))
    assert out.shape == (2, CLASSES)
    out.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)

    # its Grad-CAM layer exists and gives a heatmap of the input's size
    layer = models.target_layer(model)
    assert layer is registry.get_module(model, spec.cam_layer)
    heat, cls = explain.grad_cam(model, torch.rand(1, 3, size, size))
    assert heat.shape == (size, size) and np.isfinite(heat).all() and 0 <= cls < CLASSES
    assert registry.module_path(model, spec.cam_layer) in explain.layer_names(model)

    s = models.layer_summary(model, size)
    assert s.total_params == _params(model) and s.rows[-1].output_shape == (CLASSES,)


def test_describe_rows_are_json_ready() -> None:
    rows = [registry.describe(models.get_spec(n)) for n in models.list_models()]
    by = {r["name"]: r for r in rows}
    assert by["resnet18"]["params"] == 11_689_512 and by["resnet18"]["image_size"] == 224
    assert by["efficientnet_b2"]["image_size"] == 288
    assert by["custom"]["transfer"] is False and by["custom"]["params"] > 0
    assert all(r["pick"] for r in rows)


def test_unknown_model_names_the_registry_and_the_command() -> None:
    with pytest.raises(ConfigError) as info:
        models.create_model(ModelConfig(name="resnet19"), 3, 32)
    message = str(info.value)
    assert "registered models: custom, simple_cnn, resnet18" in message
    assert "cnnlab models" in message and "\n" not in message


def test_module_paths() -> None:
    seq = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Sequential(nn.Linear(2, 2)))
    assert registry.get_module(seq, "-1.0") is seq[2][0]
    assert registry.module_path(seq, "-3") == "0"
    registry.set_module(seq, "2.0", nn.Identity())
    assert isinstance(seq[2][0], nn.Identity)
    with pytest.raises(ConfigError, match="no module 'x'"):
        registry.get_module(seq, "x")


def test_timm_model_with_a_local_weights_file(tmp_path) -> None:
    timm = pytest.importorskip("timm")  # the optional extra: `pip install .[timm]`
    source = timm.create_model("resnet18", pretrained=False)  # no Hugging Face Hub download
    path = tmp_path / "timm_resnet18.pth"
    torch.save(source.state_dict(), path)
    cfg = ModelConfig(name="timm/resnet18", weights=str(path), strategy="fine_tune")
    model = models.create_model(cfg, CLASSES, 32)
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    spec = models.get_spec("timm/resnet18")
    assert spec.source == "timm" and spec.head == "fc" and spec.input_size == 224
    assert models.input_stats("timm/resnet18") == spec.stats
    assert models.trainable_count(model) == _params(model.fc)  # phase 1: the new head
    assert models.set_phase(model, cfg, epoch=2)
    model.train()
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    heat, _ = explain.grad_cam(model, torch.rand(1, 3, 32, 32))
    assert heat.shape == (32, 32)
    with pytest.raises(ConfigError, match="timm has no model"):
        models.get_spec("timm/not_a_model_xyz")


def test_cnnlab_models_lists_the_registry(capsys, monkeypatch, tmp_path) -> None:
    from cnnlab import cli

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")  # only its presence is listed
    assert cli.main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == models.list_models()
    by = {r["name"]: r for r in rows}
    assert by["resnet18"]["weights_cached"] is True and by["resnet34"]["weights_cached"] is False
    assert by["swin_t"]["weights_url"].endswith("swin_t-704ceda3.pth")
    assert cli.main(["models"]) == 0
    text = capsys.readouterr().out
    assert "convnext_tiny" in text and "when to pick it" in text and str(cached.parent) in text
