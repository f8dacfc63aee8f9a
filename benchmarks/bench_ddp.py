"""DDP scaling: training images/s of 1 process vs N processes (torchrun), same global batch.

CPU: 1 process using every core vs N gloo processes sharing them. CUDA: 1 GPU vs all visible GPUs
(nccl). Efficiency = N-process speed / (N x 1-process speed); 1.0 is perfect scaling.

    .venv/bin/python benchmarks/bench_ddp.py                   # digits, 32 px, 4 epochs
    .venv/bin/python benchmarks/bench_ddp.py --device cuda --image-size 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from cnnlab import demo

ROOT = Path(__file__).resolve().parent.parent


def train_rate(data: Path, home: Path, nproc: int, args: argparse.Namespace) -> dict:
    """One `cnnlab train` (under torchrun when nproc > 1); its summary."""
    flags = ["train", str(data), "--device", args.device, "--image-size", str(args.image_size)]
    flags += ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--json"]
    cmd = [sys.executable, "-m", "cnnlab", *flags]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += ["--nproc-per-node", str(nproc), "-m", "cnnlab", *flags]
    env = {**os.environ, "CNNLAB_HOME": str(home), "PYTHONPATH": str(ROOT)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--nproc", type=int, default=max(2, torch.cuda.device_count()))
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        data = demo.write_digits(Path(tmp) / "digits")
        train_rate(data, home, 1, args)  # warm the decode cache: both sides start equal
        one = train_rate(data, home, 1, args)
        many = train_rate(data, home, args.nproc, args)
    r1, rn = one["train_images_per_s"], many["train_images_per_s"]
    eff = rn / (args.nproc * r1)
    print(f"device {args.device}, {args.image_size} px, batch {args.batch_size}, {args.epochs} ep")
    print(f"1 process : {r1:8.0f} img/s   test acc {one['test_accuracy']:.3f}")
    print(f"{args.nproc} processes: {rn:8.0f} img/s   test acc {many['test_accuracy']:.3f}")
    print(
        f"speed-up {rn / r1:.2f}x, efficiency {eff:.2f} ({args.nproc}-process / {args.nproc} x 1)"
    )


if __name__ == "__main__":
    main()
