"""epoch: optimizer and schedule builders, one training epoch, one evaluation pass (synthetic data)."""

from __future__ import annotations

import math
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab import epoch
from cnnlab.config import AugmentConfig, TrainConfig
from cnnlab.errors import TrainingError

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _ctx(aug: AugmentConfig | None = None) -> epoch.BatchContext:
    gen = torch.Generator().manual_seed(0)
    return epoch.BatchContext(torch.device("cpu"), MEAN, STD, aug, False, False, gen)


def _two_colours(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (n, 3, 4, 4): dark images are class 0, bright ones class 1."""
    labels = torch.arange(n) % 2
    images = torch.where(labels[:, None, None, None] == 1, 220, 30).to(torch.uint8)
    return images.expand(n, 3, 4, 4).contiguous(), labels


class Brightness(nn.Module):
    """Mean pixel -> 2 logits: learns the two-colour task in a few steps."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((1, 2, 3))[:, None])


@pytest.mark.parametrize(
    ("name", "kind"),
    [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)],
)
def test_build_optimizer_keeps_each_groups_lr(name: str, kind: type) -> None:
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    cfg = TrainConfig(optimizer=name, lr=0.01, weight_decay=0.001)
    opt = epoch.build_optimizer(
        [{"params": a.parameters()}, {"params": b.parameters(), "lr": 1e-4}], cfg
    )
    assert type(opt) is kind
    assert [g["lr"] for g in opt.param_groups] == [0.01, 1e-4]
    assert all(g["weight_decay"] == 0.001 for g in opt.param_groups)


def _lrs(schedule: str, steps: int = 20) -> list[float]:
    cfg = TrainConfig(schedule=schedule, lr=0.1, epochs=2)
    opt = epoch.build_optimizer([{"params": nn.Linear(1, 1).parameters()}], cfg)
    sched = epoch.build_scheduler(opt, cfg, steps_per_epoch=steps // 2)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedules_shape_the_learning_rate() -> None:
    assert _lrs("constant") == [0.1] * 20
    cosine = _lrs("cosine")
    assert cosine[0] == pytest.approx(0.1) and cosine[-1] < 0.01
    assert all(x >= y for x, y in zip(cosine, cosine[1:], strict=False))  # never rises
    onecycle = _lrs("onecycle")
    peak = max(range(20), key=onecycle.__getitem__)
    assert onecycle[peak] == pytest.approx(0.1, rel=0.05) and 4 <= peak <= 7  # warm-up: ~30 %
    assert onecycle[0] < 0.01 and onecycle[-1] < 0.001


def _brightness_setup():
    """(images, labels, model, optimizer, schedule) of the two-colour task, SGD at a constant 0.5."""
    torch.manual_seed(0)
    images, labels = _two_colours(40)
    model = Brightness()
    cfg = TrainConfig(lr=0.5, optimizer="sgd", schedule="constant")
    opt = epoch.build_optimizer([{"params": model.parameters()}], cfg)
    return images, labels, model, opt, epoch.build_scheduler(opt, cfg, 5)


def test_one_epoch_learns_and_reports_progress_per_batch() -> None:
    images, labels, model, opt, sched = _brightness_setup()
    events = []
    losses = []
    for e in range(1, 4):
        loss, acc, seen = epoch.train_one_epoch(
            epoch.EpochInputs(model, images, labels, opt, sched, nn.CrossEntropyLoss(), _ctx(), 16),
            e,
            events.append,
        )
        losses.append(loss)
    assert seen == 32  # drop_last: 2 full batches of 16 out of 40 images
    assert losses[-1] < losses[0] and acc == 1.0
    last = [ev for ev in events if ev.epoch == 3][-1]
    assert (last.batch, last.n_batches) == (2, 2) and math.isfinite(last.loss)


def test_stop_request_ends_the_epoch_before_any_step() -> None:
    images, labels = _two_colours()
    model = Brightness()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(schedule="constant")
    opt = epoch.build_optimizer([{"params": model.parameters()}], cfg)
    stop = threading.Event()
    stop.set()
    with pytest.raises(epoch.StopRequested):
        epoch.train_one_epoch(
            epoch.EpochInputs(model, images, labels, opt, epoch.build_scheduler(opt, cfg, 2),
                              nn.CrossEntropyLoss(), _ctx(), 16),
            stop_event=stop,
        )  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_nan_loss_names_the_learning_rate() -> None:
    class Nan(Brightness):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * float("nan")

    images, labels = _two_colours()
    model = Nan()
    cfg = TrainConfig(lr=0.25, schedule="constant")
    opt = epoch.build_optimizer([{"params": model.parameters()}], cfg)
    with pytest.raises(TrainingError, match=r"epoch 7 \(learning rate 0.25\)"):
        epoch.train_one_epoch(
            epoch.EpochInputs(model, images, labels, opt, epoch.build_scheduler(opt, cfg, 2),
                              nn.CrossEntropyLoss(), _ctx(), 16),
            epoch=7,
        )  # fmt: skip


def test_evaluate_is_cross_entropy_of_the_normalised_batch() -> None:
    torch.manual_seed(1)
    images, labels = _two_colours(10)
    model = Brightness()
    x = (images.float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        logits = model(x)
    loss, acc = epoch.evaluate_split(model, images, labels, _ctx())
    assert loss == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-5)
    assert acc == pytest.approx(float((logits.argmax(1) == labels).float().mean()))
    rows = torch.tensor([1, 3, 4])
    sub_loss, _ = epoch.evaluate_split(model, images, labels, _ctx(), rows=rows)
    assert sub_loss == pytest.approx(float(F.cross_entropy(logits[rows], labels[rows])), rel=1e-5)
    assert torch.allclose(
        epoch.predict_logits(model, images, _ctx(), rows=rows), logits[rows], atol=1e-6
    )
    empty = epoch.evaluate_split(
        model, images, labels, _ctx(), rows=torch.tensor([], dtype=torch.long)
    )
    assert all(math.isnan(v) for v in empty)


def test_class_weights_have_mean_one_and_favour_rare_classes() -> None:
    w = epoch.class_weights(torch.tensor([0, 0, 0, 1, 2, 2]), 4)  # class 3 absent
    assert w.mean() == pytest.approx(1.0)
    assert w[1] > w[2] > w[0] and w[3] == pytest.approx(w[1])  # absent counts as one image


def test_mixup_blends_pairs_reproducibly() -> None:
    x = torch.stack([torch.full((3, 2, 2), float(i)) for i in range(8)])
    y = torch.arange(8)
    draws = [epoch.mix(x.clone(), y, 0.4, torch.Generator().manual_seed(7)) for _ in range(2)]
    (mixed, partner, lam), (mixed2, partner2, lam2) = draws
    assert lam == lam2 and torch.equal(mixed, mixed2) and torch.equal(partner, partner2)
    assert 0.0 <= lam <= 1.0 and sorted(partner.tolist()) == list(range(8))  # a permutation
    # each image is lam of itself plus (1 - lam) of its partner (labels index the images here)
    expected = lam * y.float() + (1 - lam) * partner.float()
    assert torch.allclose(mixed[:, 0, 0, 0], expected)


def test_an_epoch_with_mixup_still_learns_and_reports_plain_loss() -> None:
    images, labels, model, opt, sched = _brightness_setup()
    ctx = _ctx()
    ctx.mixup = 0.2
    for e in range(1, 6):
        loss, _, _ = epoch.train_one_epoch(
            epoch.EpochInputs(model, images, labels, opt, sched, nn.CrossEntropyLoss(), ctx, 16), e
        )
        assert math.isfinite(loss)
    _, acc = epoch.evaluate_split(model, images, labels, ctx)
    assert acc == 1.0
