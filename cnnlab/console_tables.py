"""The CLI's plain-text reports: one printer per command, reading the dict its `--json` prints.

Only the CLI calls these; what they print on stdout is what users and scripts read, so the
formats stay as they are.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

from .console import fmt_param

SPLIT_SOURCES = {
    "folders": "given by the train/val/test folders",
    "csv": "given by the CSV's split column",
    "random": "random, stratified",
}


def print_inspect(report: dict) -> None:
    """`cnnlab inspect`: classes with their split counts, duplicates, warnings, skipped files."""
    source = SPLIT_SOURCES[report["split_source"]]
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
        _print_duplicates(report["duplicates"])
    for w in report["warnings"]:
        print(f"warning: {w}")
    if report["problems"]:
        print(f"{sum(p.get('count', 1) for p in report['problems']):,} file(s) skipped:")
        for p in report["problems"]:
            print(f"  {p['path']}: {p['reason']}")


def _print_duplicates(groups: list[dict]) -> None:
    n_conflict = sum(g["label_conflict"] for g in groups)
    print(
        f"{len(groups)} group(s) of duplicate images ({n_conflict} with "
        "different labels: likely label errors); --drop-duplicates / --drop-conflicts:"
    )
    for g in groups:
        flag = "  LABEL CONFLICT" if g["label_conflict"] else ""
        where = ", ".join(f"{p} [{c}, {sp}]" for p, c, sp in
                          zip(g["paths"], g["classes"], g["splits"], strict=True))  # fmt: skip
        print(f"  {g['kind']}: {where}{flag}")


def print_label_check(report: dict, top: int) -> None:
    """`cnnlab check-labels`: the `top` most likely label errors and how to fix one."""
    print(f"{len(report['suspects'])} suspected label error(s) in {report['n_images']} images "
          f"(out-of-fold accuracy {report['oof_accuracy']:.4f}, {report['folds']} folds, "
          f"{report['seconds']:.0f}s); most likely first:")  # fmt: skip
    for s in report["suspects"][:top]:
        print(f"  {s['path']}: labelled {s['given']}, looks like {s['suggested']} "
              f"({s['confidence']:.0%}) - {s['reason']}")  # fmt: skip
    if len(report["suspects"]) > top:
        print(f"  ... {len(report['suspects']) - top} more (--top N, or --json)")
    print("fix one: cnnlab overrides DATA --relabel PATH CLASS (or --exclude PATH); files stay as "
          "they are")  # fmt: skip


def print_learning_curve(report: dict) -> None:
    """`cnnlab learning-curve`: accuracy per training fraction, then the one-line reading."""
    print(f"{'fraction':>8} {'per class':>9} {'train_acc':>9} {'val_acc':>8}")
    for p in report["points"]:
        print(f"{p['fraction']:>8.2f} {p['images_per_class']:>9} {p['train_accuracy']:>9.4f} "
              f"{p['val_accuracy']:>8.4f}")  # fmt: skip
    print(report["reading"])


def print_overrides(report: dict) -> None:
    """`cnnlab overrides`: the counts, then each relabelled and excluded image."""
    print(f"{report['relabelled']} relabelled, {report['excluded']} excluded ({report['file']})")
    for rel, cls in report["relabel"].items():
        print(f"  relabel {rel} -> {cls}")
    for rel in report["exclude"]:
        print(f"  exclude {rel}")


def print_jobs(rows: list[dict]) -> None:
    """`cnnlab jobs list`: one line per job, oldest first."""
    if not rows:
        print("no jobs in the queue")
    for r in rows:
        print(f"{r['id']}  {r['state']:<11}  {r['owner']:<8}  {r['run_id'] or '-':<22}  "
              f"{r['name'] or r['config']['data']['path']}")  # fmt: skip


def print_runs(rows: list[dict]) -> None:
    """`cnnlab runs`: the runs table, a damaged run's reason under its row."""
    if not rows:
        print("no runs yet: start one with `cnnlab train DATA`")
        return
    print(
        f"{'run_id':<24} {'status':<12} {'model':<12} {'owner':<12} {'epochs':>6} "
        f"{'val_acc':>8} {'test_acc':>8}"
    )
    for r in rows:
        print(
            f"{cell(r.get('run_id')):<24} {cell(r.get('status')):<12} "
            f"{cell(r.get('model')):<12} {cell(r.get('owner')):<12} "
            f"{cell(r.get('epochs_run')):>6} "
            f"{cell(r.get('val_accuracy'), '.4f'):>8} {cell(r.get('test_accuracy'), '.4f'):>8}"
        )
        if r.get("status") == "damaged":
            print(f"  damaged: {r.get('damage')}")


def cell(value: Any, spec: str = "") -> str:
    """A table cell: '-' for a missing value, numbers formatted, anything else as text."""
    if value is None or value == "":
        return "-"
    if spec and isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, spec)
    return str(value)


def print_models(rows: list[dict], cache_dir: Path, timm: bool) -> None:
    """`cnnlab models`: the zoo table, then where ImageNet weights are cached."""
    print(f"{'model':<20} {'params':>7} {'size':>5} {'cached':>6}  when to pick it")
    for r in rows:
        size = r["image_size"] or "any"
        cached = "yes" if r["weights_cached"] else ("-" if not r["transfer"] else "no")
        print(f"{r['name']:<20} {r['params'] / 1e6:>6.1f}M {size:>5} {cached:>6}  {r['pick']}")
    print(
        f"ImageNet weights download on first use into {cache_dir}"
        + (" (timm/<name> models available too)" if timm else ""),
    )


def print_evaluation(report: dict) -> None:
    """`cnnlab evaluate`: accuracy and loss, per-class metrics, most confused pairs, diagnosis."""
    loss = float("nan") if report["loss"] is None else report["loss"]
    print(f"run {report['run_id']}, {report['split']}: {report['n']} images")
    print(f"accuracy {report['accuracy']:.4f}   loss {loss:.4f}")
    width = max(len(c) for c in report["classes"])
    print(f"  {'class':<{width}}  precision  recall      f1  support")
    for cls, m in report["per_class"].items():
        print(
            f"  {cls:<{width}}  {m['precision']:>9.3f}  {m['recall']:>6.3f}  {m['f1']:>6.3f}  "
            f"{m['support']:>7}"
        )
    if report["most_confused"]:
        pairs = ", ".join(
            f"{p['true']}->{p['predicted']} ({p['count']})" for p in report["most_confused"][:5]
        )
        print(f"most confused (true->predicted): {pairs}")
    for f in report["diagnosis"]["findings"]:
        print(f"[{f['kind']}] {f['message']}\n    try: {f['suggestion']}")


def print_predictions(rows: list[dict]) -> None:
    """`cnnlab predict`: each image's top classes, or why it could not be read."""
    for r in rows:
        if "error" in r:
            print(f"{r['path']}: error: {r['error']}")
        else:
            tops = ", ".join(f"{t['class']} {t['probability']:.1%}" for t in r["top"])
            print(f"{r['path']}: {tops}")


def print_export(report: dict) -> None:
    """`cnnlab export`: the files written; on stderr, how the export was verified."""
    for f in report["files"]:
        print(f)
    print(
        f"verified: top-1 matches the run on {report['n_checked']} images "
        f"({report['checked_on']}); max logit difference {report['max_abs_diff']:.2g}",
        file=sys.stderr,
    )


def print_explanation(image: str, report: dict) -> None:
    """`cnnlab explain`: the prediction, then the PNGs written."""
    print(f"{image}: {report['predicted']} ({report['probability']:.1%})")
    for path in report["files"].values():
        print(path)


def print_lr_suggestion(report: dict) -> None:
    """`cnnlab lr-find`: the suggested learning rate and where the loss was lowest."""
    print(f"suggested learning rate: {report['suggestion']:.3g}")
    print(f"lowest loss at lr {report['min_loss_lr']:.3g} after {len(report['lrs'])} steps")


def print_trials_header(study_name: str, trials: int, out: TextIO) -> None:
    """`cnnlab tune`: the study line and the live trials table's header."""
    print(f"study {study_name}: up to {trials} trials", file=out)
    print(f"{'trial':>5}  {'state':<8}  {'val_acc':>7}  {'time':>8}  params", file=out)


def print_study(summary: dict) -> None:
    """`cnnlab tune`: trial counts, then the best trial and its parameters."""
    print(
        f"{summary['n_trials']} trials: {summary['n_complete']} complete, "
        f"{summary['n_pruned']} pruned, {summary['n_failed']} failed"
    )
    if summary["best_value"] is None:
        print("no trial completed: widen the search space or give more trials")
        return
    print(
        f"best trial {summary['best_trial']}: val_acc {summary['best_value']:.4f} "
        f"(run {summary['best_run_id']})"
    )
    for key, value in summary["best_params"].items():
        print(f"  {key:>14}: {fmt_param(value)}")
