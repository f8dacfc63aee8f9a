"""weights: state dicts from files, wrapped or prefixed, the local hub cache, runs; refusals."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from cnnlab import weights
from cnnlab.errors import WeightsError


class Net(nn.Module):
    def __init__(self, n_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, n_classes)


def _source(n_classes: int = 3) -> Net:
    torch.manual_seed(n_classes)
    return Net(n_classes)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,
        lambda s: {"state_dict": s},
        lambda s: {"model": s, "epoch": 3},
        lambda s: {f"module.{k}": v for k, v in s.items()},  # DataParallel
        lambda s: {f"_orig_mod.{k}": v for k, v in s.items()},  # torch.compile
    ],
    ids=["plain", "state_dict", "model", "module.", "_orig_mod."],
)
def test_a_weights_file_loads_however_it_was_saved(tmp_path: Path, wrap) -> None:
    src = _source()
    path = tmp_path / "w.pt"
    torch.save(wrap(src.state_dict()), path)
    model = Net()
    weights.load_weights(model, str(path), "net", None, heads=("fc.",))
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_a_head_of_another_size_stays_fresh(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(_source(5).state_dict(), path)
    model = Net(3)
    fresh_head = model.fc.weight.clone()
    weights.load_weights(model, str(path), "net", None, heads=("fc.",))
    assert torch.equal(model.conv.weight, _source(5).conv.weight)
    assert torch.equal(model.fc.weight, fresh_head)


def test_random_loads_nothing_and_imagenet_without_weights_is_random() -> None:
    model = Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weights.load_weights(model, "random", "net", None, heads=("fc.",))
    weights.load_weights(model, "imagenet", "net", None, heads=("fc.",))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_imagenet_comes_only_from_the_local_hub_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    enum = tvm.ResNet18_Weights.IMAGENET1K_V1
    path = weights.hub_file(enum)
    assert path == tmp_path / "hub" / "checkpoints" / Path(enum.url).name
    with pytest.raises(WeightsError, match=str(path)) as info:
        weights.load_weights(tvm.resnet18(), "imagenet", "resnet18", enum, heads=("fc.",))
    assert enum.url in str(info.value)  # where to fetch it on a machine with internet


def test_missing_file_and_non_state_dicts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        weights.load_weights(Net(), str(tmp_path / "nope.pt"), "net", None, heads=())
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="holds no state dict"):
        weights.load_weights(Net(), str(tmp_path / "list.pt"), "net", None, heads=())
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="weights-only state dict"):
        weights.load_weights(Net(), str(tmp_path / "junk.pt"), "net", None, heads=())


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_a_file_carrying_code_is_never_run(tmp_path: Path, capsys) -> None:
    path = tmp_path / "evil.pt"
    with path.open("wb") as f:
        pickle.dump({"state_dict": _Payload()}, f, protocol=2)
    with pytest.raises(WeightsError):
        weights.load_weights(Net(), str(path), "net", None, heads=())
    assert "code ran" not in capsys.readouterr().out


def test_weights_of_another_architecture_say_what_did_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save(nn.Sequential(nn.Linear(2, 2)).state_dict(), path)
    with pytest.raises(WeightsError, match=r"0 of 2 backbone tensors match"):
        weights.load_weights(Net(), str(path), "net", None, heads=("fc.",))


def test_a_run_checkpoint_is_a_weights_source(trained, monkeypatch) -> None:
    from cnnlab import models, runs
    from cnnlab.config import ModelConfig

    summary, home = trained
    monkeypatch.setenv("CNNLAB_HOME", str(home))
    run_model, config, classes, _ = runs.load_checkpoint(summary["run_id"])
    model = models.create_model(
        ModelConfig(channels=[8, 16], head_units=32), len(classes), config.data.image_size
    )
    weights.load_weights(model, f"run:{summary['run_id']}", "custom", None, heads=())
    for k, v in run_model.state_dict().items():
        assert torch.equal(model.state_dict()[k].cpu(), v.cpu()), k
