"""Training speed, side by side on the same model, image size, batch size and data.

    R0       the guide's plain pipeline: ImageFolder + PIL transforms + DataLoader (2 workers)
    R1       the same tuned the standard way: workers = cores, pin_memory, persistent workers,
             AMP + channels_last on CUDA
    cnnlab   cnnlab.train.fit (decode-once uint8 cache, batched per-image augmentation on the device)
    ceiling  the model alone: forward + backward + step on random tensors already on the device

Each measurement runs in a fresh process (so allocator and thread settings never leak from one
contender to the next); the ceiling gets cnnlab's runtime settings (threads, CPU allocator), R0/R1
run as a user writes them. Images/s are of epochs after the first (warm-up excluded), median over
--repeats runs. Then time to
a target val accuracy on the demo digits for R0 and cnnlab's default config.

    .venv/bin/python benchmarks/bench_train.py            # CPU/GPU, whatever is present
    .venv/bin/python benchmarks/bench_train.py --quick    # one setting, one repeat
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torchvision import datasets, transforms

from cnnlab import data as cdata
from cnnlab import demo, events, models, train
from cnnlab.config import AugmentConfig, DataConfig, ModelConfig, RunConfig, TrainConfig
from cnnlab.device import configure_cpu_threads, describe_device, resolve_device

SETTINGS = [  # (label, model config, image size)
    ("SimpleCNN @64px", ModelConfig(name="simple_cnn", dropout=0.2), 64),
    ("custom default @32px", ModelConfig(), 32),
]


GPU_SETTING = (
    "ResNet-18 fine-tune @224px",
    # speed, not accuracy; freeze_epochs=0: every loop trains the whole network from epoch 1
    ModelConfig(name="resnet18", strategy="fine_tune", weights="random", freeze_epochs=0),
    224,
)


def guide_transforms(aug: AugmentConfig, size: int, mean, std) -> transforms.Compose:
    """The same augmentation as cnnlab's, the way the guide writes it: PIL transforms per image."""
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(size, scale=(aug.crop_scale_min, aug.crop_scale_max)),
            transforms.RandomHorizontalFlip(aug.hflip),
            transforms.RandomRotation(aug.rotation),
            transforms.ColorJitter(aug.brightness, aug.contrast, aug.saturation),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def _loader(folder: Path, tf, batch: int, tuned: bool, device: torch.device):
    ds = datasets.ImageFolder(str(folder), transform=tf)
    workers = (os.cpu_count() or 2) if tuned else 2
    return torch.utils.data.DataLoader(
        ds,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=tuned and device.type == "cuda",
        persistent_workers=tuned,
        drop_last=True,
    )


def run_loader_loop(
    folder, cfg: RunConfig, epochs: int, tuned: bool, device, target=None, val=None
):
    """R0/R1: the textbook loop. Returns (images/s after the first epoch, seconds to target or None)."""
    torch.manual_seed(cfg.train.seed)
    model = models.create_model(cfg.model, 10, cfg.data.image_size)
    cl = tuned and device.type == "cuda"
    model = model.to(device, memory_format=torch.channels_last if cl else torch.preserve_format)
    mean, std = (0.5,) * 3, (0.25,) * 3
    loader = _loader(folder, guide_transforms(cfg.augment, cfg.data.image_size, mean, std),
                     cfg.train.batch_size, tuned, device)  # fmt: skip
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
    amp = tuned and device.type == "cuda"
    rates, t_start, reached = [], time.perf_counter(), None
    for _ in range(epochs):
        model.train()
        t0, n = time.perf_counter(), 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += x.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(n / (time.perf_counter() - t0))
        done = target is not None and val is not None and reached is None
        if done and _val_acc(model, val, mean, std, device) >= target:
            reached = time.perf_counter() - t_start
            break
    return statistics.mean(rates[1:] or rates), reached


@torch.inference_mode()
def _val_acc(model, val, mean, std, device) -> float:
    model.eval()
    x, y = val
    x = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return (model(x.to(device)).argmax(1).cpu() == y).float().mean().item()


def run_ceiling(cfg: RunConfig, device, steps: int = 30) -> float:
    """Model-only images/s: random tensors already on the device, same layout/precision as cnnlab."""
    torch.manual_seed(0)
    model = models.create_model(cfg.model, 10, cfg.data.image_size)
    cl = cfg.train.channels_last
    model = model.to(device, memory_format=torch.channels_last if cl else torch.preserve_format)
    s, b = cfg.data.image_size, cfg.train.batch_size
    x = torch.randn(b, 3, s, s, device=device)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (b,), device=device)
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
    amp = cfg.train.amp and device.type == "cuda"
    model.train()
    for i in range(steps + 5):
        if i == 5:  # warm-up excluded
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * b / (time.perf_counter() - t0)


def run_cnnlab(cfg: RunConfig, prepared, epochs: int) -> float:
    cfg.train.epochs = epochs
    summary = train.fit(cfg, data=prepared)
    return summary["train_images_per_s"]


def time_to_accuracy_cnnlab(folder: Path, target: float) -> tuple[float | None, float | None]:
    """Seconds from pressing Train (default config, data already cached) until val acc >= target."""
    cfg = RunConfig(data=DataConfig(path=str(folder)))
    prepared = cdata.prepare(cfg.data)
    t0 = time.perf_counter()
    reached: list[float] = []

    def watch(event):
        if isinstance(event, events.EpochEnd) and event.val_acc >= target and not reached:
            reached.append(time.perf_counter() - t0)

    summary = train.fit(cfg, data=prepared, callbacks=[watch])
    return (reached[0] if reached else None), summary.get("test_accuracy")


def _worker(args) -> dict:
    """One measurement, in this (fresh) process: allocator and thread state never leak between them."""
    device = resolve_device("auto")
    cfg = RunConfig.from_json(args.config)
    folder = Path(args.folder)
    if args.worker in ("R0", "R1"):  # as a user writes it: no cnnlab runtime tuning
        rate, _ = run_loader_loop(folder, cfg, args.epochs, args.worker == "R1", device)
        return {"rate": rate}
    if args.worker == "ceiling":  # the model alone, under the same runtime settings as cnnlab
        if device.type == "cpu":
            configure_cpu_threads()
        rate = run_ceiling(cfg, device)
        cfg.train.batch_size *= 4  # how much of the time is per-step (launch) overhead
        return {"rate": rate, "rate_4x_batch": run_ceiling(cfg, device)}
    if args.worker == "cnnlab":
        return {"rate": run_cnnlab(cfg, cdata.prepare(cfg.data), args.epochs)}
    if args.worker == "tta-cnnlab":
        seconds, test_acc = time_to_accuracy_cnnlab(folder, args.target)
        return {"seconds": seconds, "test_accuracy": test_acc}
    val = cdata.prepare(cfg.data).subset("val")  # tta-R0: train on the train split folder
    _, seconds = run_loader_loop(folder, cfg, 30, False, device, target=args.target, val=val)
    return {"seconds": seconds}


def _measure(kind: str, cfg: RunConfig, folder: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--config", cfg.to_json(),
           "--folder", str(folder), "--epochs", str(args.epochs), "--target", str(args.target)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--epochs", type=int, default=3, help="epochs per measurement (first excluded)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--target", type=float, default=0.98, help="val accuracy for time-to-accuracy"
    )
    parser.add_argument("--quick", action="store_true", help="first setting only, one repeat")
    parser.add_argument(
        "--scale",
        type=int,
        help="repeat the digits this many times (hard links) so GPU epochs are not a few "
        "milliseconds long; default 4 on CUDA, 1 elsewhere",
    )
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--only", help="run only the settings whose label contains this text")
    parser.add_argument("--no-tta", action="store_true", help="skip the time-to-accuracy part")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args)))
        return 0
    device = resolve_device("auto")
    settings = SETTINGS[:1] if args.quick else SETTINGS
    if device.type == "cuda" and not args.quick:  # far too slow for a 2-core CPU
        settings = [*settings, GPU_SETTING]
    repeats = 1 if args.quick else args.repeats
    if args.only:
        settings = [s for s in settings if args.only.lower() in s[0].lower()]
    scale = args.scale or (4 if device.type == "cuda" else 1)
    os.environ["CNNLAB_HOME"] = tempfile.mkdtemp(prefix="cnnlab-bench-")
    root = Path(os.environ["CNNLAB_HOME"])
    results = {"device": describe_device(device), "date": time.strftime("%Y-%m-%d"), "rows": [],
               "torch": torch.__version__, "cuda": torch.version.cuda}  # fmt: skip
    print(f"device: {results['device']}, torch {torch.__version__}, batch {args.batch_size}, "
          f"{args.epochs} epochs per measurement (first excluded), median of {repeats}, "
          f"digits x{scale}, each measurement in a fresh process")  # fmt: skip
    results["scale"] = scale
    for label, model_cfg, size in settings:
        folder = _repeat(demo.write_digits(root / f"digits-{size}", size=size), scale)
        cfg = RunConfig(
            data=DataConfig(path=str(folder), image_size=size),
            model=model_cfg,
            train=TrainConfig(batch_size=args.batch_size, patience=0, epochs=args.epochs),
        )
        prepared = cdata.prepare(cfg.data)  # decode once here; the cnnlab workers hit the cache
        split_dir = _train_folder(prepared, root / f"train-{size}")  # same training images
        rates: dict[str, list[float]] = {k: [] for k in ("R0", "R1", "cnnlab", "ceiling")}
        ceiling_4x: list[float] = []
        # One repeat of the 224 px setting: its R0 alone takes ~40 s, and the lease is short.
        for _ in range(1 if label == GPU_SETTING[0] else repeats):
            for kind in rates:
                where = split_dir if kind in ("R0", "R1") else folder
                got = _measure(kind, cfg, where, args)
                rates[kind].append(got["rate"])
                if "rate_4x_batch" in got:
                    ceiling_4x.append(got["rate_4x_batch"])
        row = {"setting": label, **{k: statistics.median(v) for k, v in rates.items()}}
        row["ceiling_4x_batch"] = statistics.median(ceiling_4x)
        row["cnnlab/R0"] = row["cnnlab"] / row["R0"]
        row["cnnlab/R1"] = row["cnnlab"] / row["R1"]
        row["cnnlab/ceiling"] = row["cnnlab"] / row["ceiling"]
        results["rows"].append(row)
        print(f"\n{label}  (training images/s)")
        print(
            f"  {'R0':>9} {'R1':>9} {'cnnlab':>9} {'ceiling':>9} | {'/R0':>6} {'/R1':>6} {'/ceil':>6}"
        )
        print(f"  {row['R0']:9.0f} {row['R1']:9.0f} {row['cnnlab']:9.0f} {row['ceiling']:9.0f} | "
              f"{row['cnnlab/R0']:6.2f} {row['cnnlab/R1']:6.2f} {row['cnnlab/ceiling']:6.2f}")  # fmt: skip
        print(f"  ceiling at batch {4 * args.batch_size}: {row['ceiling_4x_batch']:.0f} images/s")

    if not args.no_tta:
        folder = demo.write_digits(root / "digits-tta", size=32)
        base = RunConfig(
            data=DataConfig(path=str(folder), image_size=32), train=TrainConfig(epochs=30)
        )
        prepared = cdata.prepare(base.data)
        ours = _measure("tta-cnnlab", base, folder, args)
        theirs = _measure("tta-R0", base, _train_folder(prepared, root / "train-tta"), args)
        t_ours, t_r0, test_acc = ours["seconds"], theirs["seconds"], ours["test_accuracy"]
        results["time_to_accuracy"] = {"target": args.target, "cnnlab_s": t_ours, "R0_s": t_r0,
                                       "cnnlab_test_accuracy": test_acc}  # fmt: skip
        print(
            f"\ntime to val accuracy >= {args.target} on the demo digits (default custom model, 32 px):"
        )
        print(f"  cnnlab {_fmt(t_ours)}   R0 {_fmt(t_r0)}   (cnnlab test accuracy {test_acc:.4f})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def _repeat(folder: Path, times: int) -> Path:
    """Every image `times` times (hard links, so no extra disk), for longer epochs on a GPU."""
    for src in sorted(folder.rglob("*.png")):
        for k in range(1, times):
            copy = src.with_name(f"{src.stem}-r{k}{src.suffix}")
            if not copy.exists():
                os.link(src, copy)
    return folder


def _train_folder(prepared, dest: Path) -> Path:
    """The training split as an ImageFolder of symlinks, so R0/R1 see exactly cnnlab's train images."""
    for i in prepared.split.train:
        src = prepared.scan.files[i]
        link = dest / prepared.classes[prepared.labels[i]] / src.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(src)
    return dest


def _fmt(seconds: float | None) -> str:
    return "not reached" if seconds is None else f"{seconds:.1f}s"


if __name__ == "__main__":
    sys.exit(main())
