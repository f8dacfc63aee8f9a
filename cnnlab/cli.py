"""The `cnnlab` command line: the same core functions and configs as the dashboard.

User errors (CnnlabError) print one line on stderr and exit 2; `--json` output is a contract read by
outside scripts, so its keys are only ever added to, never renamed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from . import __version__, console
from .errors import CnnlabError

EXIT_USER_ERROR = 2


# ---------------------------------------------------------------- app / demo / inspect
def _cmd_app(args: argparse.Namespace) -> int:
    from . import app_launcher, demo

    demo.ensure_demo_digits()  # so the dashboard opens with data ready
    # Absolute workspace settings: they keep their meaning whatever folder Streamlit resolves from.
    os.environ.update(app_env(os.environ))
    host = "localhost" if args.address == "127.0.0.1" else args.address
    print(f"cnnlab dashboard: http://{host}:{args.port}", flush=True)
    return app_launcher.serve(args.port, args.address)


def app_env(environ) -> dict[str, str]:
    """A copy of environ with CNNLAB_HOME and CNNLAB_DATA_ROOTS made absolute (from this cwd)."""
    env = dict(environ)
    if env.get("CNNLAB_HOME"):
        env["CNNLAB_HOME"] = str(Path(env["CNNLAB_HOME"]).expanduser().resolve())
    if env.get("CNNLAB_DATA_ROOTS"):
        env["CNNLAB_DATA_ROOTS"] = os.pathsep.join(
            str(Path(p).expanduser().resolve())
            for p in env["CNNLAB_DATA_ROOTS"].split(os.pathsep)
            if p.strip()
        )
    return env


def _cmd_serve(args: argparse.Namespace) -> int:
    from . import app_launcher, predict_api, runs

    run = runs.load_run(args.run)
    runs.checkpoint_path(run)  # a run that never saved a model has nothing to show
    os.environ.update(app_env(os.environ))
    os.environ[predict_api.SERVE_ENV] = str(run.run_dir)  # the demo and its API see this run only
    host = "localhost" if args.address == "127.0.0.1" else args.address
    print(f"cnnlab demo of run {run.run_id}: http://{host}:{args.port}", flush=True)
    print(f"predict API: POST http://{host}:{args.port}/api/cnnlab/predict", flush=True)
    return app_launcher.serve(args.port, args.address, script="demo_server.py")


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    writers = {"digits": demo.write_digits, "photos": demo.write_photos}
    out = writers[args.which](Path(args.out_dir))
    print(out)
    return 0


def inspect_report(
    path: str,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    *,
    path_column: str = "",
    label_column: str = "",
    images: str = "",
    exclude_classes: list[str] | None = None,
    drop_duplicates: bool = False,
    drop_conflicts: bool = False,
) -> dict:
    """What `cnnlab inspect --json` prints: classes, counts, problems, split, duplicates."""
    from . import data, duplicates, overrides, splits

    full = data.scan(path, path_column=path_column, label_column=label_column, images=images)
    scan = data.filter_scan(full, exclude_classes or [], drop_duplicates, drop_conflicts)
    split = data.split(scan, val_fraction, test_fraction, seed)
    groups = scan.duplicate_groups()
    paths = [scan.rel(i) for i in range(scan.n_images)]
    class_of = [scan.classes[label] for label in scan.labels]
    return {
        "path": str(Path(path).resolve()),
        "root": str(scan.root),
        "classes": scan.classes,
        "counts": scan.counts,
        "n_images": scan.n_images,
        "problems": [
            {"path": p.path, "reason": p.reason, **({"count": p.count} if p.count > 1 else {})}
            for p in scan.problems
        ],
        "split": split.sizes(),
        "split_per_class": split.per_class(scan),
        "split_source": scan.split_source,
        "duplicates": duplicates.describe(groups, paths, class_of, split.of()),
        "excluded_classes": list(exclude_classes or []),
        "n_dropped": full.n_images - scan.n_images,
        "min_per_class": splits.images_needed(scan, val_fraction, test_fraction),
        "warnings": scan.warnings + data.split_warnings(val_fraction, test_fraction, scan),
        "overrides": {**full.overrides.report(), "file": str(overrides.file_for(path))},
    }


def _data_options(args: argparse.Namespace) -> dict:
    """The data-layout flags shared by inspect, train, tune and lr-find."""
    return {
        "path_column": args.path_column or "",
        "label_column": args.label_column or "",
        "images": str(Path(args.images).resolve()) if args.images else "",
        "exclude_classes": list(args.exclude_class or []),
        "drop_duplicates": bool(args.drop_duplicates),
        "drop_conflicts": bool(args.drop_conflicts),
    }


def _cmd_inspect(args: argparse.Namespace) -> int:
    report = inspect_report(
        args.path, args.val_fraction, args.test_fraction, args.seed, **_data_options(args)
    )
    if args.json:
        console.print_json(report)
        return 0
    source = {"folders": "given by the train/val/test folders", "csv": "given by the CSV's "
              "split column", "random": "random, stratified"}[report["split_source"]]  # fmt: skip
    print(
        f"{report['root']}: {report['n_images']} usable images in {len(report['classes'])} classes"
    )
    width = max(len(c) for c in report["classes"])
    for cls, n in report["counts"].items():
        per = report["split_per_class"].get(cls, {})
        print(
            f"  {cls:<{width}}  {n:>6}   train {per.get('train', 0)} / val {per.get('val', 0)} / test {per.get('test', 0)}"
        )
    s = report["split"]
    print(f"split ({source}): train {s['train']}, val {s['val']}, test {s['test']}")
    if report["duplicates"]:
        n_conflict = sum(g["label_conflict"] for g in report["duplicates"])
        print(
            f"{len(report['duplicates'])} group(s) of duplicate images ({n_conflict} with "
            "different labels: likely label errors); --drop-duplicates / --drop-conflicts:"
        )
        for g in report["duplicates"]:
            flag = "  LABEL CONFLICT" if g["label_conflict"] else ""
            where = ", ".join(f"{p} [{c}, {sp}]" for p, c, sp in
                              zip(g["paths"], g["classes"], g["splits"], strict=True))  # fmt: skip
            print(f"  {g['kind']}: {where}{flag}")
    for w in report["warnings"]:
        print(f"warning: {w}")
    if report["problems"]:
        print(f"{sum(p.get('count', 1) for p in report['problems']):,} file(s) skipped:")
        for p in report["problems"]:
            print(f"  {p['path']}: {p['reason']}")
    return 0


# ---------------------------------------------------------------- train / runs
def _config_from_args(args: argparse.Namespace):
    from .config import RunConfig

    config = RunConfig.load(args.config) if args.config else RunConfig()
    config.data.path = str(args.data)
    for key, value in _data_options(args).items():
        if value or not args.config:  # a flag given overrides the config file's value
            setattr(config.data, key, value)
    overrides = {
        ("model", "name"): args.model,
        ("data", "image_size"): args.image_size,
        ("train", "epochs"): args.epochs,
        ("train", "batch_size"): args.batch_size,
        ("train", "lr"): args.lr,
        ("train", "optimizer"): args.optimizer,
        ("train", "weight_decay"): args.weight_decay,
        ("model", "dropout"): args.dropout,
        ("train", "patience"): args.patience,
        ("train", "seed"): args.seed,
        ("train", "device"): args.device,
        ("model", "strategy"): args.strategy,
        ("model", "weights"): args.weights,
        ("model", "freeze_epochs"): args.freeze_epochs,
        ("train", "schedule"): args.schedule,
        ("train", "recipe"): getattr(args, "recipe", None),
        ("train", "baseline"): getattr(args, "baseline", None),
        ("name",): args.name,
    }
    for keys, value in overrides.items():
        if value is None:
            continue
        if len(keys) == 1:
            setattr(config, keys[0], value)
        else:
            setattr(getattr(config, keys[0]), keys[1], value)
    return config.validate()


def _launch_if_asked(args: argparse.Namespace) -> int | None:
    """`--nproc-per-node N`: start this same command in N processes through torchrun's launcher."""
    from . import distributed

    n = getattr(args, "nproc_per_node", None)
    if not n or "LOCAL_RANK" in os.environ:  # already a torchrun worker: train here
        return None
    if n < 1:
        raise CnnlabError(f"--nproc-per-node must be >= 1, got {n}")
    return distributed.launch(n, distributed.strip_launch_flag(args.argv))


def _print_failed_run(args: argparse.Namespace, code: int, run_id: str | None) -> int:
    """--json after the launched processes failed: the run's summary (its status and error), so
    a script reads the same JSON object as on success."""
    if code and args.json:
        _print_failure_json(run_id, f"the training processes failed (exit {code}); see stderr")
    return code


def _print_failure_json(run_id: str | None, error: str) -> None:
    """The one JSON object a failed `train/resume --json` prints: the run's summary when the run
    failed or was interrupted (its status and error), else {"status": "failed", "error": ...}."""
    from . import runs

    printed: dict = {"status": "failed", "error": error, "run_id": None, "run_dir": None}
    if run_id:
        try:
            run = runs.load_run(run_id)
        except CnnlabError:
            pass  # no run folder was made (a pre-flight problem, an unknown run)
        else:
            summary = runs.read_summary(run)
            printed.update(run_id=run.run_id, run_dir=str(run.run_dir))
            if summary.get("status") in ("failed", "interrupted"):
                printed = {"error": error, **summary, **printed, "status": summary["status"]}
    console.print_json(printed)


@contextlib.contextmanager
def _json_on_failure(args: argparse.Namespace, run_id: str | None):
    """`--json`: a failing train/resume still prints one JSON object (then fails as before).
    torchrun's workers print nothing: their launcher prints it once."""
    try:
        yield
    except (Exception, KeyboardInterrupt) as exc:
        if args.json and "LOCAL_RANK" not in os.environ:
            _print_failure_json(run_id, str(exc) or type(exc).__name__)
        raise


def _cmd_train(args: argparse.Namespace) -> int:
    from . import runs

    if args.json and not args.folds and "LOCAL_RANK" not in os.environ:
        # fit (rank 0 too) names its run so, and a failure's JSON can name it; a parent (the
        # dashboard) may have chosen it already
        os.environ.setdefault("CNNLAB_RUN_ID", runs.new_run_id())
    with _json_on_failure(args, os.environ.get("CNNLAB_RUN_ID")):
        return _train(args)


def _train(args: argparse.Namespace) -> int:
    from . import distributed, preflight, train

    launched = _launch_if_asked(args)
    if launched is not None:
        return _print_failed_run(args, launched, os.environ.get("CNNLAB_RUN_ID"))
    config = _config_from_args(args)
    preflight.ensure(config, force=args.force)  # every known problem, before a run folder exists
    for warning in preflight.run_warnings(config):
        print(f"warning: {warning}", file=sys.stderr)
    notes = preflight.run_notes(config)

    def say_notes(event) -> None:  # once the run exists: a failure before it stays one line
        if event.kind == "RunStarted":
            for note in notes:
                print(f"note: {note}", file=sys.stderr)

    printer = console.ProgressPrinter(enabled=not args.json or console.is_tty())
    if args.folds:
        printer.epochs = config.train.epochs
        return _train_folds(args, config, printer, say_notes)
    summary = train.fit(config, callbacks=[say_notes, printer])
    if not distributed.is_main_process():
        return 0  # rank 0 prints the one summary
    if args.json:
        console.print_json(summary)
    else:
        console.print_summary(summary)
    return 0


def _train_folds(args: argparse.Namespace, config, printer, say_notes) -> int:
    """`train --folds K`: cross-validate over train+val, then (unless --no-final) the final run."""
    from . import kfold

    if args.nproc_per_node:
        raise CnnlabError("--folds trains its fold models in this process: drop --nproc-per-node")
    summary = kfold.train_with_folds(config, args.folds, final=not args.no_final,
                                     callbacks=[say_notes, printer])  # fmt: skip
    if args.json:
        console.print_json(summary)
        return 0
    console.print_cross_validation(summary["cross_validation"])
    if not args.no_final:
        console.print_summary(summary)
    return 0


def _quick_config(args: argparse.Namespace):
    """A run's config from the train flags; without --config, small quick-model defaults
    (16 px, 5 epochs, a two-block CNN) where a flag is not given: K models must train in about a minute."""
    from . import kfold

    if not args.config:
        args.image_size = args.image_size or kfold.QUICK_IMAGE_SIZE
        args.epochs = args.epochs or kfold.QUICK_EPOCHS
    config = _config_from_args(args)
    if not args.config and config.model.name == "custom":
        config.model.channels, config.model.head_units = (
            list(kfold.QUICK_CHANNELS),
            kfold.QUICK_HEAD,
        )
    return config.validate()


def _cmd_check_labels(args: argparse.Namespace) -> int:
    from . import label_check, preflight

    config = _quick_config(args)
    preflight.ensure(config)
    printer = console.ProgressPrinter(enabled=not args.json or console.is_tty())
    printer.epochs = config.train.epochs
    report = label_check.check_labels(config, args.folds, callbacks=[printer],
                                      resume=not args.fresh)  # fmt: skip
    if args.json:
        console.print_json(report)
        return 0
    print(f"{len(report['suspects'])} suspected label error(s) in {report['n_images']} images "
          f"(out-of-fold accuracy {report['oof_accuracy']:.4f}, {report['folds']} folds, "
          f"{report['seconds']:.0f}s); most likely first:")  # fmt: skip
    for s in report["suspects"][: args.top]:
        print(f"  {s['path']}: labelled {s['given']}, looks like {s['suggested']} "
              f"({s['confidence']:.0%}) - {s['reason']}")  # fmt: skip
    if len(report["suspects"]) > args.top:
        print(f"  ... {len(report['suspects']) - args.top} more (--top N, or --json)")
    print("fix one: cnnlab overrides DATA --relabel PATH CLASS (or --exclude PATH); files stay as "
          "they are")  # fmt: skip
    return 0


def _cmd_learning_curve(args: argparse.Namespace) -> int:
    from . import learning_curve, preflight

    fractions = learning_curve.parse_fractions(args.fractions)
    config = _quick_config(args)
    preflight.ensure(config)
    printer = console.ProgressPrinter(enabled=not args.json or console.is_tty())
    printer.epochs = config.train.epochs
    report = learning_curve.learning_curve(config, fractions, callbacks=[printer])
    if args.json:
        console.print_json(report)
        return 0
    print(f"{'fraction':>8} {'per class':>9} {'train_acc':>9} {'val_acc':>8}")
    for p in report["points"]:
        print(f"{p['fraction']:>8.2f} {p['images_per_class']:>9} {p['train_accuracy']:>9.4f} "
              f"{p['val_accuracy']:>8.4f}")  # fmt: skip
    print(report["reading"])
    return 0


def _cmd_overrides(args: argparse.Namespace) -> int:
    from . import data, overrides

    opts = _data_options(args)
    if args.relabel:
        overrides.relabel(args.data, args.relabel[0], args.relabel[1])
    for rel in args.exclude or []:
        overrides.exclude(args.data, rel)
    if args.undo:
        overrides.undo(args.data)
    if args.clear:
        overrides.clear(args.data)
    scan = None
    if args.export_csv:
        scan = data.scan(args.data, path_column=opts["path_column"],
                         label_column=opts["label_column"], images=opts["images"])  # fmt: skip
        Path(args.export_csv).write_text(overrides.corrected_csv(scan))
        print(f"corrected CSV written to {args.export_csv} (paths relative to {scan.root}: read "
              f"it with --images {scan.root})", file=sys.stderr)  # fmt: skip
    ov = overrides.load(args.data)
    report = {**ov.report(), "file": str(overrides.file_for(args.data)),
              "can_undo": bool(ov.history)}  # fmt: skip
    if args.json:
        console.print_json(report)
        return 0
    print(f"{report['relabelled']} relabelled, {report['excluded']} excluded ({report['file']})")
    for rel, cls in report["relabel"].items():
        print(f"  relabel {rel} -> {cls}")
    for rel in report["exclude"]:
        print(f"  exclude {rel}")
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    with _json_on_failure(args, args.run):
        return _resume(args)


def _resume(args: argparse.Namespace) -> int:
    from . import distributed, train

    launched = _launch_if_asked(args)
    if launched is not None:
        return _print_failed_run(args, launched, args.run)
    printer = console.ProgressPrinter(enabled=not args.json or console.is_tty())
    summary = train.resume(args.run, callbacks=[printer])
    if not distributed.is_main_process():
        return 0
    if args.json:
        console.print_json(summary)
    else:
        console.print_summary(summary)
    return 0
    if args.json:
        console.print_json(summary)
    else:
        console.print_summary(summary)
    return 0


# ---------------------------------------------------------------- jobs / worker
def _cmd_jobs(args: argparse.Namespace) -> int:
    from . import job_process, job_queue, preflight

    if args.jobs_command == "run":  # the job process itself (started by a scheduler)
        return job_process.run(args.job)
    if args.jobs_command == "submit":
        if getattr(args, "nproc_per_node", None) is not None and args.nproc_per_node < 1:
            raise CnnlabError(f"--nproc-per-node must be >= 1, got {args.nproc_per_node}")
        config = _config_from_args(args)
        preflight.ensure(config, force=args.force)
        for note in preflight.run_warnings(config):
            print(f"warning: {note}", file=sys.stderr)
        row = job_queue.submit(config, nproc=args.nproc_per_node or 1, force=args.force)
        if args.json:
            console.print_json(row)
        else:
            print(f"job {row['id']} queued (`cnnlab jobs list` shows it)")
        return 0
    if args.jobs_command == "cancel":
        job_queue.get(args.job)  # JobNotFound names the queue
        if not job_queue.request_stop(args.job):
            raise CnnlabError(
                f"job {args.job} has already ended: {job_queue.get(args.job)['state']}"
            )
        print(f"job {args.job}: {job_queue.get(args.job)['state']} (a running job stops after "
              "its current batch)")  # fmt: skip
        return 0
    job_queue.recover()
    rows = job_queue.list_jobs(owner=args.owner)
    if args.json:
        console.print_json(rows)
        return 0
    if not rows:
        print("no jobs in the queue")
    for r in rows:
        print(f"{r['id']}  {r['state']:<11}  {r['owner']:<8}  {r['run_id'] or '-':<22}  "
              f"{r['name'] or r['config']['data']['path']}")  # fmt: skip
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    import signal
    import threading

    from . import jobs

    manager = jobs.JobManager(max_running=args.max_jobs)
    manager.serve()
    print(f"cnnlab worker: running queued jobs of {manager_home()} ({manager.max_running} at "
          "a time); Ctrl-C to stop", file=sys.stderr, flush=True)  # fmt: skip
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    return 0  # atexit ends the jobs' processes and marks them interrupted


def manager_home() -> str:
    """The workspace the queue lives in (for messages)."""
    from . import workspace

    return str(workspace.home())


def _cmd_runs(args: argparse.Namespace) -> int:
    from . import runs

    if args.runs_command == "delete":
        runs.delete_run(args.run)  # refuses runs outside the workspace (and running ones)
        print(f"deleted run {args.run}")
        return 0
    rows = runs.list_runs()
    if args.user:  # the CLI runs as the operator (an admin): it sees everyone's, or one user's
        rows = [r for r in rows if r.get("owner") == args.user]
    if args.json:
        console.print_json(rows)
        return 0
    if not rows:
        print("no runs yet: start one with `cnnlab train DATA`")
        return 0
    print(
        f"{'run_id':<24} {'status':<12} {'model':<12} {'owner':<12} {'epochs':>6} "
        f"{'val_acc':>8} {'test_acc':>8}"
    )
    for r in rows:
        print(
            f"{_cell(r.get('run_id')):<24} {_cell(r.get('status')):<12} "
            f"{_cell(r.get('model')):<12} {_cell(r.get('owner')):<12} "
            f"{_cell(r.get('epochs_run')):>6} "
            f"{_cell(r.get('val_accuracy'), '.4f'):>8} {_cell(r.get('test_accuracy'), '.4f'):>8}"
        )
        if r.get("status") == "damaged":
            print(f"  damaged: {r.get('damage')}")
    return 0


def _cell(value, spec: str = "") -> str:
    """A table cell: '-' for a missing value, numbers formatted, anything else as text."""
    if value is None or value == "":
        return "-"
    if spec and isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, spec)
    return str(value)


# ---------------------------------------------------------------- models
def _cmd_models(args: argparse.Namespace) -> int:
    from . import registry, weights

    rows = []
    for name in registry.list_models():
        spec = registry.get_spec(name)
        row = registry.describe(spec)
        url = weights.imagenet_url(spec)
        row["weights_cached"] = url is not None and weights.cached_path(url).is_file()
        rows.append(row)
    if args.json:
        console.print_json(rows)
        return 0
    print(f"{'model':<20} {'params':>7} {'size':>5} {'cached':>6}  when to pick it")
    for r in rows:
        size = r["image_size"] or "any"
        cached = "yes" if r["weights_cached"] else ("-" if not r["transfer"] else "no")
        print(f"{r['name']:<20} {r['params'] / 1e6:>6.1f}M {size:>5} {cached:>6}  {r['pick']}")
    print(
        f"ImageNet weights download on first use into {weights.cache_dir()}"
        + (" (timm/<name> models available too)" if registry.timm_available() else ""),
    )
    return 0


# ---------------------------------------------------------------- evaluate / predict / export / lr-find
def _cmd_evaluate(args: argparse.Namespace) -> int:
    from . import evaluate, runs

    run = runs.load_run(args.run)
    if args.folder:
        result = evaluate.evaluate_folder(run, args.folder, device=args.device)
    else:
        result = evaluate.evaluate_run(run, args.split, device=args.device)
    diagnosis = evaluate.diagnose_run(run)
    report = {"run_id": run.run_id, **result.to_dict(), "diagnosis": diagnosis.to_dict()}
    if args.json:
        console.print_json(report)
        return 0
    print(f"run {run.run_id}, {result.split}: {result.n} images")
    print(f"accuracy {result.accuracy:.4f}   loss {result.loss:.4f}")
    width = max(len(c) for c in result.classes)
    print(f"  {'class':<{width}}  precision  recall      f1  support")
    for cls, m in result.per_class.items():
        print(
            f"  {cls:<{width}}  {m['precision']:>9.3f}  {m['recall']:>6.3f}  {m['f1']:>6.3f}  "
            f"{m['support']:>7}"
        )
    if report["most_confused"]:
        pairs = ", ".join(
            f"{p['true']}->{p['predicted']} ({p['count']})" for p in report["most_confused"][:5]
        )
        print(f"most confused (true->predicted): {pairs}")
    for f in diagnosis.findings:
        print(f"[{f.kind}] {f.message}\n    try: {f.suggestion}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from . import predict

    if args.top_k < 1:
        raise CnnlabError(f"--top-k must be at least 1, got {args.top_k}")
    predictor = predict.Predictor.from_run(args.run, device=args.device)
    rows = predictor.predict_files(args.paths, args.top_k)
    if not rows:
        print(f"cnnlab predict: no image files found in {' '.join(args.paths)}", file=sys.stderr)
    if args.csv:
        predict.write_csv(rows, args.csv, args.top_k)
        print(f"{len(rows)} row(s) written to {args.csv}", file=sys.stderr)
    elif args.json:
        console.print_json(rows)
    else:
        for r in rows:
            if "error" in r:
                print(f"{r['path']}: error: {r['error']}")
            else:
                tops = ", ".join(f"{t['class']} {t['probability']:.1%}" for t in r["top"])
                print(f"{r['path']}: {tops}")
    n_bad = sum("error" in r for r in rows)
    if n_bad:
        print(f"cnnlab predict: {n_bad} file(s) could not be read", file=sys.stderr)
    # nothing predicted at all is a failure a script must see
    return EXIT_USER_ERROR if n_bad == len(rows) else 0


def _cmd_export(args: argparse.Namespace) -> int:
    from . import export, model_card

    if args.format == "card":
        readme = model_card.write_card(args.run, args.out)
        if args.json:
            console.print_json({"format": "card", "readme": str(readme), "files": [str(readme)]})
        else:
            print(readme)
        return 0
    result = export.export_run(args.run, args.format, args.out)
    if args.json:
        console.print_json(result.to_dict())
        return 0
    for f in result.files:
        print(f)
    print(
        f"verified: top-1 matches the run on {result.n_checked} images ({result.checked_on}); "
        f"max logit difference {result.max_abs_diff:.2g}",
        file=sys.stderr,
    )
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from . import explain, predict

    predictor = predict.Predictor.from_run(args.run, device=args.device)
    report = explain.write_explanation(predictor, args.image, args.out, args.layer or None)
    if args.json:
        console.print_json(report)
        return 0
    print(f"{args.image}: {report['predicted']} ({report['probability']:.1%})")
    for path in report["files"].values():
        print(path)
    return 0


def _cmd_lr_find(args: argparse.Namespace) -> int:
    from . import lr_finder

    config = _config_from_args(args)
    if args.steps < 2:
        raise CnnlabError(f"--steps must be at least 2, got {args.steps}")
    result = lr_finder.find_lr(config, steps=args.steps)
    if args.json:
        console.print_json(result.to_dict())
        return 0
    print(f"suggested learning rate: {result.suggestion:.3g}")
    print(f"lowest loss at lr {result.min_loss_lr:.3g} after {len(result.lrs)} steps")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    import optuna

    from . import tune
    from .search_space import SearchSpace

    if not args.verbose:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # our table replaces its INFO lines
    base = tune.base_config(args.data, args.model, args.image_size, args.epochs)
    for key, value in _data_options(args).items():
        setattr(base.data, key, value)
    base.validate()
    space = SearchSpace.load(args.space) if args.space else None
    study_name = args.study or tune.default_study_name(base)
    # --json keeps stdout for the one JSON object; the live table then goes to a terminal only.
    table = sys.stderr if args.json else sys.stdout
    live = not args.json or console.is_tty()
    if live:
        print(f"study {study_name}: up to {args.trials} trials", file=table)
        print(f"{'trial':>5}  {'state':<8}  {'val_acc':>7}  {'time':>8}  params", file=table)

    def show(event) -> None:
        if live:
            print(console.trial_line(event), file=table, flush=True)

    study = tune.tune(
        tune.TuneConfig(
            base,
            space,
            study_name=study_name,
            storage=args.storage,
            sampler=args.sampler,
            pruner=args.pruner,
            n_trials=args.trials,
            timeout=args.timeout,
            seed=args.seed,
            heartbeat=args.heartbeat,
        ),
        on_trial=show,
    )
    summary = tune.tune_summary(study)
    if args.json:
        console.print_json(summary)
        return 0
    print(
        f"{summary['n_trials']} trials: {summary['n_complete']} complete, "
        f"{summary['n_pruned']} pruned, {summary['n_failed']} failed"
    )
    if summary["best_value"] is None:
        print("no trial completed: widen the search space or give more trials")
        return 0
    print(
        f"best trial {summary['best_trial']}: val_acc {summary['best_value']:.4f} "
        f"(run {summary['best_run_id']})"
    )
    for key, value in summary["best_params"].items():
        print(f"  {key:>14}: {console.fmt_param(value)}")
    return 0


# ---------------------------------------------------------------- parser
def _add_train_args(p: argparse.ArgumentParser) -> None:
    from .config import DEVICES, OPTIMIZERS, RECIPES, SCHEDULES, STRATEGIES

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


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="cnnlab", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("app", help="start the dashboard")
    p.add_argument("--port", type=int, default=int(os.environ.get("CNNLAB_PORT", "8501")))
    p.add_argument(
        "--address", default="127.0.0.1", help="interface to bind (see README before changing)"
    )
    p.set_defaults(func=_cmd_app)

    p = sub.add_parser(
        "serve", help="share one run as a predict-only demo (camera, Grad-CAM, HTTP predict API)"
    )
    p.add_argument("run", help="run id or run folder")
    p.add_argument("--port", type=int, default=8502)
    p.add_argument("--address", default="127.0.0.1", help="interface to bind (see docs/serving.md)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("demo", help="write built-in demo data as an image folder")
    p.add_argument("which", choices=["digits", "photos"])
    p.add_argument("out_dir")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "inspect", help="classes, counts, problems and split of an image folder or zip"
    )
    p.add_argument("path")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--test-fraction", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    _add_data_args(p)
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("train", help="train a model on an image folder or zip")
    _add_train_args(p)
    p.add_argument("--folds", type=int, help="first cross-validate with K folds over train+val: "
                   "mean +- sd val accuracy and the spread per class")  # fmt: skip
    p.add_argument(
        "--no-final",
        action="store_true",
        help="with --folds: report the cross-validation only, train no final model",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("check-labels", help="find likely label errors with K-fold quick models "
                       "(confident learning) and copies with conflicting labels")  # fmt: skip
    _add_train_args(p)
    p.add_argument("--folds", type=int, default=5, help="quick models, one per fold (default 5)")
    p.add_argument("--fresh", action="store_true", help="retrain every fold (default: folds a "
                   "stopped check finished are reused)")  # fmt: skip
    p.add_argument("--top", type=int, default=40, help="suspects printed (--json lists all)")
    p.set_defaults(func=_cmd_check_labels)

    p = sub.add_parser("learning-curve", help="train on growing fractions of the training split: "
                       "would more data help?")  # fmt: skip
    _add_train_args(p)
    p.add_argument("--fractions", default="0.1,0.25,0.5,1", help="comma-separated, in (0, 1]")
    p.set_defaults(func=_cmd_learning_curve)

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
    p.set_defaults(func=_cmd_overrides)
    p = sub.add_parser("jobs", help="the workspace's job queue: list, submit, cancel")
    jobs_sub = p.add_subparsers(dest="jobs_command")
    p.add_argument("--json", action="store_true", help="jobs as JSON (oldest first)")
    p.add_argument("--owner", help="only this owner's jobs")
    p.set_defaults(func=_cmd_jobs, jobs_command="list")
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
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("resume", help="continue an interrupted or stopped run from its last epoch")
    p.add_argument("run", help="run id or run folder")
    p.add_argument("--json", action="store_true", help="print only the summary as JSON")
    _add_launch_arg(p)
    p.set_defaults(func=_cmd_resume)

    p = sub.add_parser("runs", help="list runs in the workspace (CNNLAB_HOME); `runs delete ID`")
    p.add_argument("--json", action="store_true")
    p.add_argument("--user", default="", help="only this dashboard user's runs")
    p.set_defaults(func=_cmd_runs)
    runs_sub = p.add_subparsers(dest="runs_command")
    d = runs_sub.add_parser("delete", help="delete a run folder (not while it is training)")
    d.add_argument("run", help="run id or run folder")

    p = sub.add_parser("models", help="the model zoo: parameters, input size, when to pick each")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("evaluate", help="test metrics, confusion matrix and diagnosis of a run")
    p.add_argument("run", help="run id or run folder")
    p.add_argument("--split", choices=["test", "val", "train"], default="test")
    p.add_argument("--folder", help="evaluate on this labelled folder instead of a split")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="top-k classes of images or folders with a run's model")
    p.add_argument("run", help="run id or run folder")
    p.add_argument("paths", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"])
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true")
    out.add_argument("--csv", metavar="FILE", help="write one CSV row per image")
    p.set_defaults(func=_cmd_predict)

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
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("explain", help="Grad-CAM and feature-map PNGs of one image for a run")
    p.add_argument("run", help="run id or run folder")
    p.add_argument("image", help="an image file")
    p.add_argument("--out", required=True, help="folder for the PNGs (created)")
    p.add_argument("--layer", action="append", help="feature maps of this layer (repeatable; "
                   "default every conv layer)")  # fmt: skip
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser("lr-find", help="learning-rate range test: suggest a learning rate")
    _add_train_args(p)
    p.add_argument("--steps", type=int, default=100)
    p.set_defaults(func=_cmd_lr_find)

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
    p.set_defaults(func=_cmd_tune)

    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cnnlab` console script."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # what --nproc-per-node relaunches in each process
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    quiet = int(os.environ.get("RANK", "0")) > 0  # torchrun ranks > 0: rank 0 says it once
    if "LOCAL_RANK" in os.environ and os.environ.get("CNNLAB_LAUNCHER_PID"):
        from . import job_process  # a rank of distributed.launch: no orphan if it is killed

        job_process.guard_from_env("CNNLAB_LAUNCHER_PID")
    try:
        return int(args.func(args) or 0)
    except CnnlabError as exc:
        if not quiet:
            print(f"cnnlab {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"cnnlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader left (`cnnlab runs --json | head`): not an error worth a traceback. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + int(signal.SIGPIPE)  # as a process ended by SIGPIPE
    finally:
        if "cnnlab.distributed" in sys.modules:  # leave a torchrun process group cleanly
            sys.modules["cnnlab.distributed"].shutdown()


if __name__ == "__main__":
    sys.exit(main())
