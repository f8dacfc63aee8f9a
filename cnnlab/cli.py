"""The `cnnlab` command line: the same core functions and configs as the dashboard.

User errors (CnnlabError) print one line on stderr and exit 2; `--json` output is a contract read by
outside scripts, so its keys are only ever added to, never renamed. This module parses and prints:
reports come from `reports`, text tables from `console_tables`, and core modules are imported
inside the commands so that a quick command does not pay for torch.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from . import cli_parser, console, console_tables
from .errors import CnnlabError

EXIT_USER_ERROR = 2


# ---------------------------------------------------------------- app / serve / demo / inspect
def _cmd_app(args: argparse.Namespace) -> int:
    from . import app_launcher, demo

    demo.ensure_demo_digits()  # so the dashboard opens with data ready
    os.environ.update(app_launcher.app_env(os.environ))
    host = "localhost" if args.address == "127.0.0.1" else args.address
    print(f"cnnlab dashboard: http://{host}:{args.port}", flush=True)
    return app_launcher.serve(args.port, args.address)


def _cmd_serve(args: argparse.Namespace) -> int:
    from . import app_launcher, predict_api, runs

    run = runs.load_run(args.run)
    runs.checkpoint_path(run)  # a run that never saved a model has nothing to show
    os.environ.update(app_launcher.app_env(os.environ))
    os.environ[predict_api.SERVE_ENV] = str(run.run_dir)  # the demo and its API see this run only
    host = "localhost" if args.address == "127.0.0.1" else args.address
    print(f"cnnlab demo of run {run.run_id}: http://{host}:{args.port}", flush=True)
    print(f"predict API: POST http://{host}:{args.port}/api/cnnlab/predict", flush=True)
    return app_launcher.serve(args.port, args.address, script="demo_server.py")


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    writers = {"digits": demo.write_digits, "photos": demo.write_photos}
    print(writers[args.which](Path(args.out_dir)))
    return 0


def _output(args: argparse.Namespace, report, printer: Callable[..., None], *extra) -> int:
    """`--json`: the report as JSON; otherwise its text printer."""
    if args.json:
        console.print_json(report)
    else:
        printer(report, *extra)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from . import reports

    report = reports.inspect_report(
        args.path, args.val_fraction, args.test_fraction, args.seed, **cli_parser.data_options(args)
    )
    return _output(args, report, console_tables.print_inspect)


# ---------------------------------------------------------------- train / resume
def _launch_if_asked(args: argparse.Namespace) -> int | None:
    """`--nproc-per-node N`: start this same command in N processes through torchrun's launcher."""
    from . import distributed

    n = getattr(args, "nproc_per_node", None)
    if not n or "LOCAL_RANK" in os.environ:  # already a torchrun worker: train here
        return None
    if n < 1:
        raise CnnlabError(f"--nproc-per-node must be >= 1, got {n}")
    return distributed.launch(n, distributed.strip_launch_flag(args.argv))


def _print_failure_json(run_id: str | None, error: str) -> None:
    from . import reports

    console.print_json(reports.failure_report(run_id, error))


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


def _run_training(args: argparse.Namespace, run_id: str | None, body: Callable) -> int:
    """train and resume: launch N processes when asked, else run body(args) here; either way one
    summary printed (rank 0), and with --json one JSON object even when the run fails."""
    from . import distributed

    with _json_on_failure(args, run_id):
        launched = _launch_if_asked(args)
        if launched is not None:
            if launched and args.json:  # the run's summary (status, error), as on success
                error = f"the training processes failed (exit {launched}); see stderr"
                _print_failure_json(run_id, error)
            return launched
        summary = body(args)
        if summary is not None and distributed.is_main_process():
            console.print_run(summary, as_json=args.json)
        return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from . import runs

    if args.json and not args.folds and "LOCAL_RANK" not in os.environ:
        # fit (rank 0 too) names its run so, and a failure's JSON can name it; a parent (the
        # dashboard) may have chosen it already
        os.environ.setdefault("CNNLAB_RUN_ID", runs.new_run_id())
    return _run_training(args, os.environ.get("CNNLAB_RUN_ID"), _train)


def _train(args: argparse.Namespace) -> dict | None:
    from . import preflight, train

    config = cli_parser.config_from_args(args)
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
        _train_folds(args, config, printer, say_notes)
        return None  # printed: the cross-validation, then the final run
    return train.fit(config, callbacks=[say_notes, printer])


def _train_folds(args: argparse.Namespace, config, printer, say_notes) -> None:
    """`train --folds K`: cross-validate over train+val, then (unless --no-final) the final run."""
    from . import kfold

    if args.nproc_per_node:
        raise CnnlabError("--folds trains its fold models in this process: drop --nproc-per-node")
    printer.epochs = config.train.epochs
    summary = kfold.train_with_folds(config, args.folds, final=not args.no_final,
                                     callbacks=[say_notes, printer])  # fmt: skip
    console.print_folds(summary, as_json=args.json, final=not args.no_final)


def _cmd_resume(args: argparse.Namespace) -> int:
    return _run_training(args, args.run, _resume)


def _resume(args: argparse.Namespace) -> dict:
    from . import train

    printer = console.ProgressPrinter(enabled=not args.json or console.is_tty())
    return train.resume(args.run, callbacks=[printer])


def _quick_printer(args: argparse.Namespace, config) -> console.ProgressPrinter:
    printer = console.ProgressPrinter(enabled=not args.json or console.is_tty())
    printer.epochs = config.train.epochs
    return printer


def _cmd_check_labels(args: argparse.Namespace) -> int:
    from . import label_check, preflight

    config = cli_parser.quick_config(args)
    preflight.ensure(config)
    printer = _quick_printer(args, config)
    report = label_check.check_labels(
        config, args.folds, callbacks=[printer], resume=not args.fresh
    )
    return _output(args, report, console_tables.print_label_check, args.top)


def _cmd_learning_curve(args: argparse.Namespace) -> int:
    from . import learning_curve, preflight

    fractions = learning_curve.parse_fractions(args.fractions)
    config = cli_parser.quick_config(args)
    preflight.ensure(config)
    printer = _quick_printer(args, config)
    report = learning_curve.learning_curve(config, fractions, callbacks=[printer])
    return _output(args, report, console_tables.print_learning_curve)


def _cmd_overrides(args: argparse.Namespace) -> int:
    from . import data, overrides, reports

    if args.relabel:
        overrides.relabel(args.data, args.relabel[0], args.relabel[1])
    for rel in args.exclude or []:
        overrides.exclude(args.data, rel)
    if args.undo:
        overrides.undo(args.data)
    if args.clear:
        overrides.clear(args.data)
    if args.export_csv:
        opts = cli_parser.data_options(args)
        scan = data.scan(args.data, path_column=opts["path_column"],
                         label_column=opts["label_column"], images=opts["images"])  # fmt: skip
        Path(args.export_csv).write_text(overrides.corrected_csv(scan))
        print(f"corrected CSV written to {args.export_csv} (paths relative to {scan.root}: read "
              f"it with --images {scan.root})", file=sys.stderr)  # fmt: skip
    return _output(args, reports.overrides_report(args.data), console_tables.print_overrides)


# ---------------------------------------------------------------- jobs / worker / runs / models
def _cmd_jobs(args: argparse.Namespace) -> int:
    from . import job_process, job_queue

    if args.jobs_command == "run":  # the job process itself (started by a scheduler)
        return job_process.run(args.job)
    if args.jobs_command == "submit":
        return _jobs_submit(args)
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
    return _output(args, job_queue.list_jobs(owner=args.owner), console_tables.print_jobs)


def _jobs_submit(args: argparse.Namespace) -> int:
    from . import job_queue, preflight

    if getattr(args, "nproc_per_node", None) is not None and args.nproc_per_node < 1:
        raise CnnlabError(f"--nproc-per-node must be >= 1, got {args.nproc_per_node}")
    config = cli_parser.config_from_args(args)
    preflight.ensure(config, force=args.force)
    for note in preflight.run_warnings(config):
        print(f"warning: {note}", file=sys.stderr)
    row = job_queue.submit(config, nproc=args.nproc_per_node or 1, force=args.force)
    if args.json:
        console.print_json(row)
    else:
        print(f"job {row['id']} queued (`cnnlab jobs list` shows it)")
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    import threading

    from . import jobs, workspace

    manager = jobs.JobManager(max_running=args.max_jobs)
    manager.serve()
    print(f"cnnlab worker: running queued jobs of {workspace.home()} ({manager.max_running} at "
          "a time); Ctrl-C to stop", file=sys.stderr, flush=True)  # fmt: skip
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    return 0  # atexit ends the jobs' processes and marks them interrupted


def _cmd_runs(args: argparse.Namespace) -> int:
    from . import runs

    if args.runs_command == "delete":
        runs.delete_run(args.run)  # refuses runs outside the workspace (and running ones)
        print(f"deleted run {args.run}")
        return 0
    rows = runs.list_runs()
    if args.user:  # the CLI runs as the operator (an admin): it sees everyone's, or one user's
        rows = [r for r in rows if r.get("owner") == args.user]
    return _output(args, rows, console_tables.print_runs)


def _cmd_models(args: argparse.Namespace) -> int:
    from . import models, reports, weights

    def text(rows: list[dict]) -> None:
        console_tables.print_models(rows, weights.cache_dir(), models.timm_available())

    return _output(args, reports.models_report(), text)


# ---------------------------------------------------------------- evaluate / predict / export / ...
def _cmd_evaluate(args: argparse.Namespace) -> int:
    from . import reports

    report = reports.evaluate_report(args.run, args.split, args.folder, args.device)
    return _output(args, report, console_tables.print_evaluation)


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
    else:
        _output(args, rows, console_tables.print_predictions)
    n_bad = sum("error" in r for r in rows)
    if n_bad:
        print(f"cnnlab predict: {n_bad} file(s) could not be read", file=sys.stderr)
    # nothing predicted at all is a failure a script must see
    return EXIT_USER_ERROR if n_bad == len(rows) else 0


def _cmd_export(args: argparse.Namespace) -> int:
    from . import export, model_card

    if args.format == "card":
        readme = model_card.write_card(args.run, args.out)
        report = {"format": "card", "readme": str(readme), "files": [str(readme)]}
        return _output(args, report, lambda r: print(r["readme"]))
    report = export.export_run(args.run, args.format, args.out).to_dict()
    return _output(args, report, console_tables.print_export)


def _cmd_explain(args: argparse.Namespace) -> int:
    from . import explain, predict

    predictor = predict.Predictor.from_run(args.run, device=args.device)
    report = explain.write_explanation(predictor, args.image, args.out, args.layer or None)
    return _output(args, report, lambda r: console_tables.print_explanation(args.image, r))


def _cmd_lr_find(args: argparse.Namespace) -> int:
    from . import lr_finder

    config = cli_parser.config_from_args(args)
    if args.steps < 2:
        raise CnnlabError(f"--steps must be at least 2, got {args.steps}")
    report = lr_finder.find_lr(config, steps=args.steps).to_dict()
    return _output(args, report, console_tables.print_lr_suggestion)


def _cmd_tune(args: argparse.Namespace) -> int:
    import optuna

    from . import tune
    from .search_space import SearchSpace

    if not args.verbose:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # our table replaces its INFO lines
    base = tune.base_config(args.data, args.model, args.image_size, args.epochs)
    for key, value in cli_parser.data_options(args).items():
        setattr(base.data, key, value)
    base.validate()
    space = SearchSpace.load(args.space) if args.space else None
    study_name = args.study or tune.default_study_name(base)
    # --json keeps stdout for the one JSON object; the live table then goes to a terminal only.
    table = sys.stderr if args.json else sys.stdout
    live = not args.json or console.is_tty()
    if live:
        console_tables.print_trials_header(study_name, args.trials, table)

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
    return _output(args, tune.tune_summary(study), console_tables.print_study)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "app": _cmd_app, "serve": _cmd_serve, "demo": _cmd_demo, "inspect": _cmd_inspect,
    "train": _cmd_train, "check-labels": _cmd_check_labels,
    "learning-curve": _cmd_learning_curve, "overrides": _cmd_overrides, "jobs": _cmd_jobs,
    "worker": _cmd_worker, "resume": _cmd_resume, "runs": _cmd_runs, "models": _cmd_models,
    "evaluate": _cmd_evaluate, "predict": _cmd_predict, "export": _cmd_export,
    "explain": _cmd_explain, "lr-find": _cmd_lr_find, "tune": _cmd_tune,
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cnnlab` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = cli_parser.build_parser().parse_args(argv)
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
        return int(COMMANDS[args.command](args) or 0)
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
