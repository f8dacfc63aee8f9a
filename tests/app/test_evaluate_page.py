"""AppTest of the Evaluate page on a real tiny run: metrics, confusion cell gallery, export."""

from __future__ import annotations

from pathlib import Path

import pytest

APP = str(Path(__file__).resolve().parents[2] / "app.py")


def test_no_runs_points_to_the_train_page(workspace: Path, fresh_app) -> None:
    at = fresh_app("pages/evaluate.py")
    assert not at.exception
    assert "No trained run yet" in at.info[0].value
    assert not at.selectbox  # nothing to choose


def test_evaluate_page_on_a_real_run(trained, monkeypatch: pytest.MonkeyPatch, fresh_app) -> None:
    summary, home = trained
    monkeypatch.setenv("CNNLAB_HOME", str(home))
    at = fresh_app("pages/evaluate.py")
    assert not at.exception and not at.error
    assert at.selectbox(key="ev_run").value == summary["run_id"]
    accuracy = at.metric[0].value
    assert accuracy == f"{summary['test_accuracy']:.2%}"
    assert at.metric[2].value == f"{summary['n_test']:,}"

    # choosing a confusion cell shows its images: mistakes are listed first, then correct cells
    cell_box = at.selectbox(key="ev_cell")
    correct = [o for o in cell_box.options if o.split(" → ")[0][5:] == o.split("predicted ")[1][0]]
    assert correct and cell_box.options.index(correct[0]) == len(cell_box.options) - len(correct)
    cell_box.select(correct[0]).run()
    assert not at.exception
    count = int(correct[0].rsplit("(", 1)[1].rstrip(")"))
    gallery = [el for el in at.get("image") if el.proto.imgs[0].caption.endswith(".png")]
    assert len(gallery[0].proto.imgs) == min(count, 24)

    at.selectbox(key="ev_layer").select_index(1).run()
    assert not at.exception
    assert any("Try:" in m.value for m in at.markdown)  # the diagnosis with a suggestion

    at.button(key="ev_export_pt2").click().run()
    assert not at.exception and not at.error
    assert "Checked on" in at.success[0].value
    assert (Path(summary["run_dir"]) / "exports" / "model.pt2").is_file()
    assert at.session_state["ev_exported_pt2"][0] == summary["run_id"]
