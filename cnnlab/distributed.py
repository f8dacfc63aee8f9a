"""torch.distributed for training: every process-group detail of cnnlab lives in this module.

Processes are started by torchrun (`torchrun --nproc-per-node N -m cnnlab train DATA`, any of its
multi-node flags) or by `cnnlab train DATA --nproc-per-node N`, which calls the same launcher
(torch.distributed.run) in-process. Each process reads RANK / WORLD_SIZE / LOCAL_RANK from the
environment torchrun sets. Backend: nccl on CUDA (one GPU per local rank), gloo on CPU.

The global batch stays `train.batch_size`: every rank walks the same seeded permutation of the
epoch and takes its slice of each step's batch (batch_size / world_size images), and DDP averages
the gradients, so a step sees the same images as a single-process step. Rank 0 alone writes the run
folder; decisions (stop, early stop, NaN) are reduced or broadcast so every rank leaves together.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .epoch import BatchContext, predict_logits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """Where this process stands: rank among world_size processes (1 = not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = World()


def env_world() -> World:
    """The World that torchrun's environment describes (SINGLE outside torchrun)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or "RANK" not in os.environ:
        return SINGLE
    return World(
        rank=int(os.environ["RANK"]),
        world_size=size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
    )


def is_main_process() -> bool:
    """False on the ranks > 0 of a torchrun job (they print and write nothing)."""
    return env_world().is_main


def init(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun describes (once per process); the rank's device.

    nccl with one GPU per local rank on CUDA, gloo otherwise. Outside torchrun: (SINGLE, device).
    """
    world = env_world()
    if not world.active:
        return world, device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        device = torch.device("cpu")  # no distributed backend for MPS: gloo on the CPU
        log.warning("distributed training on %s is not supported: using the CPU", device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        log.info("rank %d of %d joined (%s)", world.rank, world.world_size, device)
    if device.type == "cpu":
        # torchrun's OMP_NUM_THREADS=1 is overridden by configure_cpu_threads; share the cores.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        torch.set_num_threads(max(1, cores // world.local_world_size))
    return world, device


def peer_lost(world: World, exc: BaseException) -> bool:
    """True when exc is a collective that failed because another process of the job is gone
    (gloo: 'Connection closed by peer', nccl: a communicator error or timeout)."""
    if not world.active:
        return False
    backend_error = getattr(dist, "DistBackendError", None)
    if backend_error is not None and isinstance(exc, backend_error):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("gloo", "nccl", "connection closed by peer", "connection reset")
    )


def shutdown() -> None:
    """Leave the process group (end of a torchrun job)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def sync_batchnorm(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """BatchNorm layers become SyncBatchNorm when several CUDA processes train (before wrap)."""
    if world.active and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def ddp(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """The module training calls: DistributedDataParallel around model when distributed."""
    if not world.active:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


@contextlib.contextmanager
def main_first(world: World) -> Iterator[None]:
    """Local rank 0 runs the block first (decoding the cache), the others after it (cache hits)."""
    if world.active and world.local_rank != 0:
        dist.barrier()
    try:
        yield
    finally:
        if world.active and world.local_rank == 0:
            dist.barrier()


def broadcast(world: World, obj: Any) -> Any:
    """Rank 0's obj on every rank (picklable objects: run ids, configs, checkpoints)."""
    if not world.active:
        return obj
    box = [obj if world.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shared_run(world: World, run: Any) -> Any:
    """Rank 0's new run on every rank (the others only read its id and folder)."""
    if not world.active:
        return run
    from .runs import Run

    run_id, run_dir = broadcast(world, (run.run_id, str(run.run_dir)) if world.is_main else None)
    return Run(run_id, Path(run_dir))


def barrier(world: World) -> None:
    """Wait for every rank (no-op outside torchrun)."""
    if world.active:
        dist.barrier()


def _device_of_group() -> torch.device:
    if dist.get_backend() == "nccl":  # nccl reduces CUDA tensors only
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(world: World, flag: bool) -> bool:
    """True on every rank when flag is True on any rank (one tiny all-reduce)."""
    if not world.active:
        return flag
    t = torch.tensor([1 if flag else 0], device=_device_of_group())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sum_all(world: World, values: Sequence[float]) -> list[float]:
    """Element-wise sum of the values over all ranks (float64)."""
    if not world.active:
        return [float(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.float64, device=_device_of_group())
    dist.all_reduce(t)
    return t.tolist()


def shard(rows: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's share of rows: every row on exactly one rank (no padding, no duplicates)."""
    return rows[world.rank :: world.world_size] if world.active else rows


def evaluate_sharded(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    ctx: BatchContext,
    rows: torch.Tensor,
    world: World,
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over rows, each rank scoring its shard once, summed over ranks."""
    mine = shard(rows, world)
    loss_sum = correct = 0.0
    if mine.numel():
        logits = predict_logits(model, images, ctx, rows=mine)
        y = labels[mine].to(logits.device)
        loss_sum = float(F.cross_entropy(logits, y, reduction="sum"))
        correct = float((logits.argmax(1) == y).sum())
    loss_sum, correct, n = sum_all(world, [loss_sum, correct, float(mine.numel())])
    if n == 0:
        return math.nan, math.nan
    return loss_sum / n, correct / n


class CollectiveStop:
    """A stop_event whose is_set() is agreed by all ranks (set on any rank -> True on all).

    Every rank calls is_set() at the same points of the loop (each batch, each epoch end), so the
    all-reduce inside lines up and all ranks leave the loop at the same step.
    """

    def __init__(self, world: World, local: Sequence[threading.Event]):
        self.world = world
        self.local = list(local)

    def is_set(self) -> bool:
        return any_rank(self.world, any(e.is_set() for e in self.local))

    def set(self) -> None:
        self.local[0].set()


@contextlib.contextmanager
def stop_on_signals(world: World, event: threading.Event) -> Iterator[None]:
    """Under torchrun, SIGTERM / SIGINT set event (a collective stop) instead of killing mid-step.

    torchrun forwards SIGTERM to every rank when it is stopped or interrupted; dying at a random
    point of a collective would hang the other ranks, so each rank finishes its step and all stop.
    """
    if not world.active or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame) -> None:
        log.warning("rank %d got signal %d: stopping after this step", world.rank, signum)
        event.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# ---------------------------------------------------------------- launching
def launch(nproc_per_node: int, cnnlab_args: Sequence[str]) -> int:
    """Run `python -m cnnlab ARGS` in nproc_per_node processes on this machine via torchrun's API.

    Returns the exit code: 0, the first failed worker's code, or 128+signal when stopped.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    argv = [
        "--standalone",
        "--nproc-per-node",
        str(nproc_per_node),
        "--module",
        "cnnlab",
        *cnnlab_args,
    ]
    args = get_args_parser().parse_args(argv)
    # the workers die with this launcher, even when it is SIGKILLed (cli.main guards them)
    os.environ["CNNLAB_LAUNCHER_PID"] = str(os.getpid())
    try:
        run(args)
    except ChildFailedError as exc:
        codes = [f.exitcode for f in exc.failures.values()]
        return next((c for c in codes if c and c > 0), 1)
    except Exception as exc:  # SignalException: we were stopped; the workers saw it too
        sig = getattr(exc, "sigval", None)
        if sig is None:
            raise
        print(f"cnnlab: stopped by {signal.Signals(sig).name}", file=sys.stderr)
        return 128 + int(sig)
    return 0


def strip_launch_flag(argv: Sequence[str]) -> list[str]:
    """argv without `--nproc-per-node N` / `--nproc-per-node=N` (what the workers get)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc-per-node":
            skip = True
        elif not a.startswith("--nproc-per-node="):
            out.append(a)
    return out
