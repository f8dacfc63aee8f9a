"""Tests for cnnlab.models: every registered model, SimpleCNN parity, freezing, weights, summary."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from cnnlab import models
from cnnlab.config import ModelConfig, TrainConfig
from cnnlab.errors import ConfigError, WeightsError
from cnnlab.models import (
    create_model,
    first_conv,
    freeze_bn_stats,
    is_transfer,
    layer_summary,
    list_models,
    param_groups,
    target_layer,
)


def _cfg(name: str, **kw) -> ModelConfig:
    kw.setdefault("weights", "random")
    return ModelConfig(name=name, **kw)


CUSTOM = [n for n in list_models() if not is_transfer(n)]  # tests/test_registry.py covers all


def _sizes(name: str) -> tuple[int, int]:
    return (32, 48)  # two odd-ish sizes: the flatten size follows the input


def test_registry_has_required_models() -> None:
    names = list_models()
    assert {"custom", "simple_cnn", "resnet18"} <= set(names)
    assert is_transfer("resnet18") and not is_transfer("custom")
    assert models.default_input_size("resnet18") == 224
    assert models.default_input_size("efficientnet_b1") == 240
    assert models.default_input_size("custom") is None


def test_register_refuses_duplicates() -> None:
    with pytest.raises(ConfigError, match="already registered"):
        models.register_model("custom")(lambda cfg, n, s: nn.Identity())
    assert models.MODELS["custom"].build is models.custom


def test_unknown_model_lists_registered() -> None:
    with pytest.raises(ConfigError, match="registered models: custom, simple_cnn"):
        create_model(_cfg("nope"), 3, 32)


@pytest.mark.parametrize("name", CUSTOM)
def test_forward_backward_two_sizes(name: str) -> None:
    torch.manual_seed(0)
    for size in _sizes(name):
        model = create_model(_cfg(name), 7, size)
        x = torch.rand(2, 3, size, size)
        out = model(x)
        assert out.shape == (2, 7)
        out.sum().backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", [*CUSTOM, "resnet18"])
def test_summary_every_model(name: str) -> None:
    size = _sizes(name)[0]
    model = create_model(_cfg(name, strategy="feature_extraction"), 4, size)
    s = layer_summary(model, size)
    assert s.rows
    assert s.total_params == sum(p.numel() for p in model.parameters())
    assert sum(r.params for r in s.rows) == s.total_params
    assert sum(r.trainable for r in s.rows) == s.trainable_params
    assert s.frozen_params == s.total_params - s.trainable_params
    assert (s.frozen_params > 0) == is_transfer(name)
    assert s.rows[-1].output_shape == (4,)
    assert model.training  # summary restores the mode it found


def _guide_param_count(classes: int) -> int:
    conv1 = 3 * 32 * 3 * 3 + 32
    conv2 = 32 * 64 * 3 * 3 + 64
    fc1 = 64 * 16 * 16 * 128 + 128
    fc2 = 128 * classes + classes
    return conv1 + conv2 + fc1 + fc2


def test_simple_cnn_matches_guide() -> None:
    model = create_model(_cfg("simple_cnn"), 10, 64)
    assert sum(p.numel() for p in model.parameters()) == _guide_param_count(10) == 2_117_962
    assert model.conv1.weight.shape == (32, 3, 3, 3) and model.conv1.padding == (1, 1)
    assert model.conv2.weight.shape == (64, 32, 3, 3)
    assert model.fc1.weight.shape == (128, 64 * 16 * 16)
    assert model.fc2.weight.shape == (10, 128)
    assert isinstance(model.pool, nn.MaxPool2d) and model.pool.kernel_size == 2
    # a state dict saved from the guide's class (same names and shapes) loads strictly
    guide_state = {
        "conv1.weight": torch.randn(32, 3, 3, 3),
        "conv1.bias": torch.randn(32),
        "conv2.weight": torch.randn(64, 32, 3, 3),
        "conv2.bias": torch.randn(64),
        "fc1.weight": torch.randn(128, 64 * 16 * 16),
        "fc1.bias": torch.randn(128),
        "fc2.weight": torch.randn(10, 128),
        "fc2.bias": torch.randn(10),
    }
    model.load_state_dict(guide_state, strict=True)
    rows = [r for r in layer_summary(model, 64).rows if r.kind == "MaxPool2d"]
    assert [r.output_shape for r in rows] == [(32, 32, 32), (64, 16, 16)]
    # other sizes: the flatten size follows the input
    assert create_model(_cfg("simple_cnn"), 10, 32).fc1.in_features == 64 * 8 * 8


def test_custom_residual_batchnorm() -> None:
    cfg = _cfg("custom", channels=[8, 16, 16], residual=True, batch_norm=True, convs_per_block=2)
    model = create_model(cfg, 5, 40)
    blocks = [m for m in model.modules() if isinstance(m, models.ConvBlock)]
    assert len(blocks) == 3 and all(b.residual for b in blocks)
    assert isinstance(blocks[0].shortcut, nn.Sequential)  # 3 -> 8 channels: 1x1 projection
    assert isinstance(blocks[2].shortcut, nn.Identity)  # 16 -> 16: identity
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 3 * 2 + 2
    assert model.head[2].in_features == 16 * 5 * 5  # 40 -> 20 -> 10 -> 5
    assert model(torch.rand(3, 3, 40, 40)).shape == (3, 5)
    assert target_layer(model) is blocks[-1]
    assert first_conv(model) is blocks[0].body[0]


def test_custom_head_without_hidden_units() -> None:
    model = create_model(_cfg("custom", channels=[4], head_units=0, batch_norm=False), 3, 16)
    linears = [m for m in model.head if isinstance(m, nn.Linear)]
    assert len(linears) == 1 and linears[0].in_features == 4 * 8 * 8


def test_custom_global_pool_head_takes_any_size() -> None:
    cfg = _cfg("custom", channels=[4, 8], head_units=0, global_pool=True)
    model = create_model(cfg, 3, 16)
    linears = [m for m in model.head if isinstance(m, nn.Linear)]
    assert len(linears) == 1 and linears[0].in_features == 8  # one mean per channel
    flat = create_model(_cfg("custom", channels=[4, 8], head_units=0), 3, 16)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in flat.parameters())
    for side in (16, 24, 40):  # the head no longer depends on the input size
        assert model(torch.rand(2, 3, side, side)).shape == (2, 3)
    assert (
        target_layer(model) is [m for m in model.modules() if isinstance(m, models.ConvBlock)][-1]
    )


def test_too_many_blocks_names_the_maximum() -> None:
    with pytest.raises(ConfigError, match="at most 4"):
        create_model(_cfg("custom", channels=[8] * 5), 3, 16)
    assert create_model(_cfg("custom", channels=[8] * 4), 3, 16)(
        torch.rand(2, 3, 16, 16)
    ).shape == (2, 3)


def _trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_feature_extraction_trains_head_only() -> None:
    model = create_model(_cfg("resnet18", strategy="feature_extraction", dropout=0.3), 4, 64)
    assert _trainable(model) == {"fc.1.weight", "fc.1.bias"}
    assert model.fc[0].p == 0.3
    cfg = _cfg("resnet18", strategy="feature_extraction")
    assert not models.set_phase(model, cfg, epoch=9)  # never thaws
    groups = param_groups(model, cfg, TrainConfig(lr=1e-3, backbone_lr=1e-5))
    assert [(g["name"], g["lr"]) for g in groups] == [("head", 1e-3)]


def test_fine_tune_is_fastai_fine_tune() -> None:
    """freeze_epochs of head-only training, then the whole backbone at backbone_lr."""
    cfg = _cfg("resnet18", strategy="fine_tune", freeze_epochs=2)
    model = create_model(cfg, 4, 32)
    groups = param_groups(model, cfg, TrainConfig(lr=1e-3, backbone_lr=1e-5))
    by_name = {g["name"]: g for g in groups}
    assert by_name["head"]["lr"] == 1e-3 and by_name["backbone"]["lr"] == 1e-5
    # the optimizer holds every parameter from the start; phases only flip requires_grad
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.parameters()}
    head_only = {"fc.1.weight", "fc.1.bias"}
    assert _trainable(model) == head_only
    assert not models.set_phase(model, cfg, epoch=2)  # still frozen in the second epoch
    assert models.set_phase(model, cfg, epoch=3)
    assert _trainable(model) == {n for n, _ in model.named_parameters()}
    plan = models.phase_plan(model, cfg, epochs=5)
    assert [(r["phase"], r["first_epoch"], r["last_epoch"]) for r in plan] == [
        ("head only", 1, 2),
        ("whole model", 3, 5),
    ]
    assert plan[0]["trainable"] == 512 * 4 + 4
    assert plan[1]["trainable"] == sum(p.numel() for p in model.parameters())
    # gradual: only layer4 thaws
    layer4 = _cfg("resnet18", strategy="fine_tune", unfreeze_blocks=1)
    models.set_phase(model, layer4, epoch=2)
    assert all(n.startswith(("layer4.", "fc.")) for n in _trainable(model))
    # an optimizer step in phase 1 leaves the frozen backbone untouched
    cfg0 = _cfg("resnet18", strategy="fine_tune")
    model = create_model(cfg0, 4, 32)
    opt = torch.optim.AdamW(
        [
            {k: v for k, v in g.items() if k != "name"}
            for g in param_groups(model, cfg0, TrainConfig())
        ],
        weight_decay=0.1,
    )
    before = model.conv1.weight.clone()
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    opt.step()
    assert torch.equal(model.conv1.weight, before)


def test_custom_param_groups_single_group() -> None:
    model = create_model(_cfg("custom"), 3, 32)
    groups = param_groups(model, _cfg("custom"), TrainConfig(lr=0.01))
    assert len(groups) == 1 and groups[0]["lr"] == 0.01
    assert len(groups[0]["params"]) == len(list(model.parameters()))


def test_freeze_bn_stats_keeps_frozen_running_stats() -> None:
    cfg = _cfg("resnet18", strategy="fine_tune", unfreeze_blocks=1)
    model = create_model(cfg, 3, 32)
    models.set_phase(model, cfg, epoch=2)  # layer4 thawed, the rest frozen
    model.train()
    freeze_bn_stats(model)
    assert not model.bn1.training and not model.layer3[0].bn1.training
    assert model.layer4[0].bn1.training  # unfrozen block keeps learning its statistics
    before = model.bn1.running_mean.clone()
    model(torch.rand(4, 3, 32, 32) * 5)
    assert torch.equal(model.bn1.running_mean, before)


def test_target_layer_and_first_conv_transfer() -> None:
    model = create_model(_cfg("resnet18"), 3, 32)
    assert target_layer(model) is model.layer4
    assert first_conv(model) is model.conv1
    simple = create_model(_cfg("simple_cnn"), 3, 32)
    assert target_layer(simple) is simple.conv2


# ------------------------------------------------------------------ weights


@pytest.fixture
def hub_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary torch hub (TORCH_HOME), with no mirror."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.delenv("CNNLAB_WEIGHTS_MIRROR", raising=False)
    return tmp_path / "torch" / "hub"


def test_imagenet_weights_from_local_cache(hub_dir: Path) -> None:
    reference = tvm.resnet18(weights=None)  # stands in for the real ImageNet file: same keys/shapes
    url = tvm.ResNet18_Weights.DEFAULT.url
    target = hub_dir / "checkpoints" / url.rsplit("/", 1)[-1]
    target.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), target)

    model = create_model(ModelConfig(name="resnet18", weights="imagenet"), 5, 32)
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    assert model.fc[1].out_features == 5  # new head, not the 1000-class one


def test_imagenet_for_custom_is_random_init(hub_dir: Path) -> None:
    model = create_model(ModelConfig(name="custom", weights="imagenet"), 3, 32)
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 3)


def test_weights_from_file_skip_mismatched_head(tmp_path: Path) -> None:
    source = create_model(_cfg("resnet18"), 10, 32)
    path = tmp_path / "mine.pt"
    torch.save({"model_state": source.state_dict(), "classes": ["a"] * 10}, path)
    model = create_model(_cfg("resnet18", weights=str(path)), 4, 32)  # different class count
    assert torch.equal(model.layer2[0].conv1.weight, source.layer2[0].conv1.weight)
    assert model.fc[1].out_features == 4
    # same class count: the head comes along too (transfer from your own model)
    same = create_model(_cfg("resnet18", weights=str(path)), 10, 32)
    assert torch.equal(same.fc[1].weight, source.fc[1].weight)


def test_weights_file_for_custom_model(tmp_path: Path) -> None:
    source = create_model(_cfg("custom", channels=[8, 16]), 3, 32)
    path = tmp_path / "custom.pth"
    torch.save(source.state_dict(), path)
    model = create_model(_cfg("custom", channels=[8, 16], weights=str(path)), 3, 32)
    for (name, a), b in zip(model.state_dict().items(), source.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_weights_wrong_architecture(tmp_path: Path) -> None:
    path = tmp_path / "r34.pth"
    torch.save(tvm.resnet34(weights=None).state_dict(), path)
    with pytest.raises(WeightsError, match="backbone tensors match"):
        create_model(_cfg("resnet18", weights=str(path)), 3, 32)


def test_weights_file_missing_or_not_a_state_dict(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        create_model(_cfg("resnet18", weights=str(tmp_path / "none.pth")), 3, 32)
    bad = tmp_path / "bad.pt"
    torch.save({"note": "hello"}, bad)
    with pytest.raises(WeightsError, match="no state dict"):
        create_model(_cfg("resnet18", weights=str(bad)), 3, 32)


def test_weights_from_own_run(workspace: Path) -> None:
    from cnnlab import runs
    from cnnlab.config import RunConfig

    config = RunConfig(model=_cfg("custom", channels=[8, 16]))
    run = runs.create_run(config, ["a", "b", "c"])
    source = create_model(config.model, 3, 32)
    runs.save_checkpoint_atomic(
        run.best_path,
        {
            "model_state": source.state_dict(),
            "config": config.to_dict(),
            "classes": ["a", "b", "c"],
        },
    )
    model = create_model(_cfg("custom", channels=[8, 16], weights=f"run:{run.run_id}"), 5, 32)
    assert torch.equal(model.features[0].body[0].weight, source.features[0].body[0].weight)
    assert model.head[-1].out_features == 5  # 3-class head skipped, fresh 5-class head
