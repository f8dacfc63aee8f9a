"""The `cnnlab` command's flags: one small builder per group of commands (cli.py runs them), and
the run config the train flags describe.

Flags, their defaults and choices are a contract: scripts and the docs call them by name.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from . import __version__
from .config import DEVICES, EVAL_SPLITS, OPTIMIZERS, RECIPES, SCHEDULES, STRATEGIES, RunConfig

DESCRIPTION = "The `cnnlab` command line: the same core functions and configs as the dashboard."


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for every subcommand; the command's name is in `command`."""
    parser = argparse.ArgumentParser(prog="cnnlab", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_launch_commands(sub)
    _add_inspect_command(sub)
    _add_training_commands(sub)
    _add_overrides_command(sub)
    _add_queue_commands(sub)
    _add_run_commands(sub)
    _add_run_tools(sub)
    _add_lr_find_command(sub)
    _add_tune_command(sub)
    return parser


def _add_launch_commands(sub) -> None:
    """app, serve, demo: the dashboard, one run's demo, demo data."""
    p = sub.add_parser("app", help="start the dashboard")
    p.add_argument("--port", type=int, default=int(os.environ.get("CNNLAB_PORT", "8501")))
    p.add_argument(
        "--address", default="127.0.0.1", help="interface to bind (see README before changing)"
    )

    p = sub.add_parser(
        "serve", help="share one run as a predict-only demo (camera, Grad-CAM, HTTP predict API)"
    )
    p.add_argument("run", help="run id or run folder")
    p.add_argument("--port", type=int, default=8502)
    p.add_argument("--address", default="127.0.0.1", help="interface to bind (see docs/serving.md)")

    p = sub.add_parser("demo", help="write built-in demo data as an image folder")
    p.add_argument("which", choices=["digits", "photos"])
    p.add_argument("out_dir")


def _add_inspect_command(sub) -> None:
    """inspect: a data set's classes, counts, problems, duplicates and split."""
    p = sub.add_parser(
        "inspect", help="classes, counts, problems and split of an image folder or zip"
    )
    p.add_argument("path")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--test-fraction", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    _add_data_args(p)


def _add_training_commands(sub) -> None:
    """train, check-labels, learning-curve: the commands that train models."""
    p = sub.add_parser("train", help="train a model on an image folder or zip")
    _add_train_args(p)
    p.add_argument("--folds", type=int, help="first cross-validate with K folds over train+val: "
                   "mean +- sd val accuracy and the spread per class")  # fmt: skip
    p.add_argument(
        "--no-final",
        action="store_true",
        help="with --folds: report the cross-validation only, train no final model",
    )

    p = sub.add_parser("check-labels", help="find likely label errors with K-fold quick models "
                       "(confident learning) and copies with conflicting labels")  # fmt: skip
    _add_train_args(p)
    p.add_argument("--folds", type=int, default=5, help="quick models, one per fold (default 5)")
    p.add_argument("--fresh", action="store_true", help="retrain every fold (default: folds a "
                   "stopped check finished are reused)")  # fmt: skip
    p.add_argument("--top", type=int, default=40, help="suspects printed (--json lists all)")

    p = sub.add_parser("learning-curve", help="train on growing fractions of the training split: "
                       "would more data help?")  # fmt: skip
    _add_train_args(p)
    p.add_argument("--fractions", default="0.1,0.25,0.5,1", help="comma-separated, in (0, 1]")


def _add_overrides_command(sub) -> None:
    """overrides: relabel / exclude images, undo, a corrected CSV."""
    p = sub.add_parser("overrides", help="relabel / exclude images without touching the files; "
                       "undo; export a corrected CSV")  # fmt: skip
    p.add_argument("data", help="the data set (folder, .zip or .csv)")
    p.add_argument("--relabel", nargs=2, metavar=("PATH", "CLASS"), help="PATH relative to the "
                   "data set's root")  # fmt: skip
    p.add_argument("--exclude", action="append", metavar="PATH", help="leave an image out "
                   "(repeatable)")  # fmt: skip
    p.add_argument("--undo", action="store_true", help="undo the last change")
    p.add_argument("--clear", action="store_true", help="forget every override")
    p.add_argument("--export-csv", metavar="FILE", help="write the corrected labels as a CSV")
    p.add_argument("--json", action="store_true")
    _add_data_args(p)


def _add_queue_commands(sub) -> None:
    """jobs and worker: the workspace's job queue."""
    p = sub.add_parser("jobs", help="the workspace's job queue: list, submit, cancel")
    jobs_sub = p.add_subparsers(dest="jobs_command")
    p.add_argument("--json", action="store_true", help="jobs as JSON (oldest first)")
    p.add_argument("--owner", help="only this owner's jobs")
    p.set_defaults(jobs_command="list")
    q = jobs_sub.add_parser("list", help="the jobs, oldest first")
    q.add_argument("--json", action="store_true")
    q.add_argument("--owner", help="only this owner's jobs")
    q = jobs_sub.add_parser("submit", help="queue a training job (same flags as train)")
    _add_train_args(q)
    q = jobs_sub.add_parser("cancel", help="cancel a queued job, or stop a running one")
    q.add_argument("job", help="job id")
    q = jobs_sub.add_parser("run", help="run one queued job here (what a scheduler starts)")
    q.add_argument("job", help="job id")

    p = sub.add_parser("worker", help="run the queue's jobs on this machine (no dashboard)")
    p.add_argument("--max-jobs", type=int, help="jobs at once (default: CNNLAB_MAX_JOBS)")


def _add_run_commands(sub) -> None:
    """resume, runs, models: continue a run, list or delete runs, the model zoo."""
    p = sub.add_parser("resume", help="continue an interrupted or stopped run from its last epoch")
    p.add_argument("run", help="run id or run folder")
    p.add_argument("--json", action="store_true", help="print only the summary as JSON")
    _add_launch_arg(p)

    p = sub.add_parser("runs", help="list runs in the workspace (CNNLAB_HOME); `runs delete ID`")
    p.add_argument("--json", action="store_true")
    p.add_argument("--user", default="", help="only this dashboard user's runs")
    runs_sub = p.add_subparsers(dest="runs_command")
    d = runs_sub.add_parser("delete", help="delete a run folder (not while it is training)")
    d.add_argument("run", help="run id or run folder")

    p = sub.add_parser("models", help="the model zoo: parameters, input size, when to pick each")
    p.add_argument("--json", action="store_true")


def _add_run_tools(sub) -> None:
    """evaluate, predict, export, explain: what a trained run is used for."""
    p = sub.add_parser("evaluate", help="test metrics, confusion matrix and diagnosis of a run")
    p.add_argument("run", help="run id or run folder")
    p.add_argument("--split", choices=EVAL_SPLITS, default="test")
    p.add_argument("--folder", help="evaluate on this labelled folder instead of a split")
    p.add_argument("--device", choices=DEVICES)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("predict", help="top-k classes of images or folders with a run's model")
    p.add_argument("run", help="run id or run folder")
    p.add_argument("paths", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--device", default="cpu", choices=DEVICES)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true")
    out.add_argument("--csv", metavar="FILE", help="write one CSV row per image")

    p = sub.add_parser(
        "export", help="export a run to ONNX or torch.export (.pt2), verified; or its model card"
    )
    p.add_argument("run", help="run id or run folder")
    p.add_argument(
        "--format",
        choices=["onnx", "pt2", "card"],
        required=True,
        help="card: README.md (Hugging Face model card) beside the exported files",
    )
    p.add_argument("--out", help="output folder (default: RUN_DIR/exports)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("explain", help="Grad-CAM and feature-map PNGs of one image for a run")
    p.add_argument("run", help="run id or run folder")
    p.add_argument("image", help="an image file")
    p.add_argument("--out", required=True, help="folder for the PNGs (created)")
    p.add_argument("--layer", action="append", help="feature maps of this layer (repeatable; "
                   "default every conv layer)")  # fmt: skip
    p.add_argument("--device", default="cpu", choices=DEVICES)
    p.add_argument("--json", action="store_true")


def _add_lr_find_command(sub) -> None:
    """lr-find: the learning-rate range test."""
    p = sub.add_parser("lr-find", help="learning-rate range test: suggest a learning rate")
    _add_train_args(p)
    p.add_argument("--steps", type=int, default=100)


def _add_tune_command(sub) -> None:
    """tune: hyperparameter search with Optuna."""
    p = sub.add_parser("tune", help="hyperparameter search with Optuna (pruning, shared storage)")
    p.add_argument("data", help="image folder (class or train/val/test folders), .zip or .csv")
    p.add_argument(
        "--trials",
        type=int,
        required=True,
        help="finished (complete + pruned) trials the study should hold: a rerun continues up "
        "to N; workers split them",
    )
    p.add_argument("--timeout", type=float, help="stop asking for new trials after S seconds")
    p.add_argument("--sampler", choices=["tpe", "random"], default="tpe")
    p.add_argument("--pruner", choices=["median", "none"], default="median")
    p.add_argument("--study", help="study name (default: <data folder>-<model>)")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite in the workspace)")
    p.add_argument("--space", help="search space JSON (see assets/search_space.example.json)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per trial")
    p.add_argument("--image-size", type=int, default=16, help="image side in pixels")
    p.add_argument("--model", default="custom", help="model to tune (see `cnnlab models`)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument(
        "--heartbeat",
        type=int,
        default=10,
        help="seconds between a running trial's heartbeats; a worker silent for 3 of them is "
        "taken as dead and its trial is retried",
    )
    p.add_argument("--json", action="store_true", help="print only the study summary as JSON")
    _add_data_args(p)


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="image folder (class or train/val/test folders), .zip or .csv")
    p.add_argument("--config", help="config.json to start from (e.g. a run's); flags override it")
    p.add_argument("--model", help="simple_cnn, custom, resnet18, ... (see `cnnlab models`)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--image-size", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--dropout", type=float)
    p.add_argument("--patience", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=DEVICES)
    p.add_argument("--schedule", choices=SCHEDULES)
    p.add_argument(
        "--recipe",
        choices=RECIPES,
        help="auto (default): a from-scratch model on <= 1,000 training images gets the "
        "small-data recipe for every setting still at its default; fixed: your settings as they are",
    )
    p.add_argument(
        "--no-baseline",
        dest="baseline",
        action="store_false",
        default=None,
        help="skip the pixel-SVM baseline fitted on the run's split (baseline_accuracy)",
    )
    p.add_argument("--strategy", choices=STRATEGIES, help="transfer models: what to train")
    p.add_argument(
        "--weights",
        help="imagenet (downloaded once into the torch hub cache; CNNLAB_WEIGHTS_MIRROR for a "
        "mirror), random, a weights file, an http(s) URL, or run:<run_id>",
    )
    p.add_argument(
        "--freeze-epochs", type=int, help="fine_tune: epochs training only the head (default 1)"
    )
    p.add_argument("--name", help="a label for the run")
    p.add_argument("--json", action="store_true", help="print only the summary as JSON")
    p.add_argument(
        "--force", action="store_true", help="start even when the memory estimate is over the limit"
    )
    _add_data_args(p)
    _add_launch_arg(p)


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data layout (a labels .csv, classes, duplicates)")
    g.add_argument("--path-column", help="CSV: the image path/id column (default: found by name)")
    g.add_argument("--label-column", help="CSV: the label column (default: found by name)")
    g.add_argument("--images", help="CSV: folder its paths are relative to (default: the CSV's)")
    g.add_argument(
        "--exclude-class", action="append", metavar="NAME", help="leave a class out (repeatable)"
    )
    g.add_argument(
        "--drop-duplicates", action="store_true", help="keep one file of each group of copies"
    )
    g.add_argument(
        "--drop-conflicts", action="store_true", help="leave out copies whose labels disagree"
    )


def _add_launch_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nproc-per-node",
        type=int,
        help="train in N processes on this machine (torch.distributed; one per GPU); "
        "batch-size stays the global batch",
    )


# ---------------------------------------------------------------- flags -> config
def data_options(args: argparse.Namespace) -> dict:
    """The data-layout flags shared by inspect, train, tune and lr-find."""
    return {
        "path_column": args.path_column or "",
        "label_column": args.label_column or "",
        "images": str(Path(args.images).resolve()) if args.images else "",
        "exclude_classes": list(args.exclude_class or []),
        "drop_duplicates": bool(args.drop_duplicates),
        "drop_conflicts": bool(args.drop_conflicts),
    }


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run config the train flags describe: --config (or the defaults), then each flag given."""
    config = RunConfig.load(args.config) if args.config else RunConfig()
    config.data.path = str(args.data)
    for key, value in data_options(args).items():
        if value or not args.config:  # a flag given overrides the config file's value
            setattr(config.data, key, value)
    overrides = {
        ("model", "name"): args.model, ("data", "image_size"): args.image_size,
        ("train", "epochs"): args.epochs, ("train", "batch_size"): args.batch_size,
        ("train", "lr"): args.lr, ("train", "optimizer"): args.optimizer,
        ("train", "weight_decay"): args.weight_decay, ("model", "dropout"): args.dropout,
        ("train", "patience"): args.patience, ("train", "seed"): args.seed,
        ("train", "device"): args.device, ("model", "strategy"): args.strategy,
        ("model", "weights"): args.weights, ("model", "freeze_epochs"): args.freeze_epochs,
        ("train", "schedule"): args.schedule, ("train", "recipe"): getattr(args, "recipe", None),
        ("train", "baseline"): getattr(args, "baseline", None), ("name",): args.name,
    }  # fmt: skip
    for keys, value in overrides.items():
        if value is None:
            continue
        if len(keys) == 1:
            setattr(config, keys[0], value)
        else:
            setattr(getattr(config, keys[0]), keys[1], value)
    return config.validate()


def quick_config(args: argparse.Namespace) -> RunConfig:
    """A run's config from the train flags; without --config, small quick-model defaults
    (16 px, 5 epochs, a two-block CNN) where a flag is not given: K models must train in about a minute."""
    from . import kfold

    if not args.config:
        args.image_size = args.image_size or kfold.QUICK_IMAGE_SIZE
        args.epochs = args.epochs or kfold.QUICK_EPOCHS
    config = config_from_args(args)
    if not args.config and config.model.name == "custom":
        config.model.channels = list(kfold.QUICK_CHANNELS)
        config.model.head_units = kfold.QUICK_HEAD
    return config.validate()
