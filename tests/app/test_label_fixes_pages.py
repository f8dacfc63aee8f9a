"""AppTests of the data-centric loop: label check and fixes on the Data page, one-click fixes on
Evaluate's mistakes, the learning-curve tab, the cross-validation offer on Train."""

from __future__ import annotations

import shutil
from pathlib import Path

from cnnlab import overrides, run_table, runs, train
from cnnlab.config import DataConfig


def _colours_with_a_misfiled_copy(workspace: Path, colour_classes: Path) -> Path:
    root = Path(shutil.copytree(colour_classes, workspace / "colours"))
    shutil.copy(root / "red" / "00.png", root / "blue" / "misfiled.png")  # a red image in blue/
    return root


def test_data_page_label_check_fix_and_undo(workspace: Path, colour_classes: Path, fresh_app):
    root = _colours_with_a_misfiled_copy(workspace, colour_classes)
    at = fresh_app("pages/data.py", dataset_path=str(root))
    assert not at.exception and not at.error
    at.number_input(key="lc_folds").set_value(3)
    at.button(key="lc_run").click().run()
    assert not at.exception and not at.error
    assert any("suspects" in m.value and "out-of-fold accuracy" in m.value for m in at.markdown)
    fix = at.button(key="lc_blue/misfiled.png_r")
    assert fix.label == "→ red"
    fix.click().run()
    assert overrides.load(root).relabel == {"blue/misfiled.png": "red"}
    assert any("1 relabelled, 0 excluded" in m.value for m in at.markdown)
    assert not [b for b in at.button if b.key == "lc_blue/misfiled.png_r"]  # fixed: not listed
    assert [m.value for m in at.metric][1] == "91"  # the scan applies the fix: still 91 images
    at.button(key="lf_undo").click().run()
    assert not at.exception
    assert not overrides.load(root)
    assert (root / "blue" / "misfiled.png").is_file()  # the file never moved


def test_evaluate_fix_buttons_and_learning_curve(
    workspace: Path, colour_classes: Path, tiny_config, fresh_app
):
    root = _colours_with_a_misfiled_copy(workspace, colour_classes)
    summary = train.fit(tiny_config(root, epochs=2, batch_size=8))
    at = fresh_app("pages/evaluate.py", active_run_id=summary["run_id"])
    assert not at.exception and not at.error
    at.selectbox(key="ev_cell").select_index(0).run()  # mistakes first: a grid with fix buttons
    assert not at.exception  # the same image in the cell and in the worst list: distinct keys
    fixes = [b for b in at.button if b.key and b.key.startswith("ev_fix_") and b.key.endswith("_x")]
    if fixes:  # the tiny model made mistakes: excluding one is an override, the file stays
        fixes[0].click().run()
        assert not at.exception
        assert len(overrides.load(root).exclude) == 1
        assert any("0 relabelled, 1 excluded" in m.value for m in at.markdown)
    at.button(key="ev_curve").click().run()
    assert not at.exception and not at.error
    assert any(m.value.startswith(("**Still rising", "**Flat")) for m in at.markdown)


def test_train_page_offers_cross_validation_on_small_data(colours_dir: Path, fresh_app) -> None:
    at = fresh_app(
        "pages/train.py", dataset_path=str(colours_dir), data_config=DataConfig(str(colours_dir))
    )
    assert not at.exception
    assert at.checkbox(key="t_cv").label.startswith("Cross-validate first")


def test_runs_table_shows_label_fixes_and_cross_validation(colours_dir: Path, tiny_config):
    overrides.exclude(colours_dir, "red/00.png")
    summary = train.fit(tiny_config(colours_dir, epochs=1, batch_size=8))
    runs.update_summary(runs.load_run(summary["run_id"]), cross_validation={
        "folds": 3, "val_accuracy_mean": 0.9, "val_accuracy_sd": 0.05})  # fmt: skip
    row = run_table.table_rows(runs.list_runs())[0]
    assert row["label fixes"] == "1 excluded"
    assert row["cv acc %"] == "90.0 ± 5.0 (3 folds)"
