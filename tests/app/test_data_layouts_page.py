"""AppTest of the Data page on data as it comes: split folders, a labels CSV, duplicates."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from cnnlab import runs
from cnnlab.config import RunConfig

PAGE = "pages/data.py"


def _img(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (10, 10, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


def _use_server_path(at, path: Path):
    at.radio(key="data_source").set_value("Path on this server").run()
    at.text_input(key="data_server_path").input(str(path)).run()
    next(b for b in at.button if b.label == "Use this path").click().run()
    return at


def test_split_folders_duplicates_and_the_drop_options(workspace: Path, fresh_app) -> None:
    root = workspace / "kaggle"
    seed = 0
    for split, n in (("train", 8), ("test", 3)):
        for cls in ("cat", "dog", "eel"):
            for i in range(n if cls != "eel" else 2):
                seed += 1
                _img(root / split / cls / f"{i}.png", seed)
    shutil.copy(root / "train/cat/0.png", root / "test/dog/mislabelled-leak.png")
    at = _use_server_path(fresh_app(PAGE), root)
    assert not at.exception and not at.error
    assert any("train / val / test folders" in m.value for m in at.markdown)
    warnings = " ".join(w.value for w in at.warning)
    assert "1 group(s) of copies" in warnings and "1 carry different labels" in warnings

    at.checkbox(key="data_drop_conflicts").check().run()
    assert not at.exception and not at.error
    cfg = at.session_state["data_config"]
    assert cfg.drop_conflicts and not cfg.drop_duplicates
    assert (root / "test/dog/mislabelled-leak.png").is_file()  # never deleted
    split = at.dataframe[-1].value.set_index("class")
    assert split.loc["cat", "test"] == 3 and split.loc["dog", "test"] == 3

    at.multiselect(key="data_exclude").select("eel").run()
    assert at.session_state["data_config"].exclude_classes == ["eel"]
    assert "eel" not in list(at.dataframe[-1].value["class"])

    at.slider(key="data_val").set_value(0.0).run()
    assert any("no early stopping" in w.value for w in at.warning)


def test_a_server_side_csv_with_an_images_folder(workspace: Path, fresh_app) -> None:
    images = workspace / "pics"
    rows = []
    for i in range(16):
        _img(images / f"p{i}.png", 100 + i)
        rows.append([f"p{i}", "ant" if i % 2 else "bee", "test" if i >= 12 else "train"])
    labels = workspace / "meta" / "labels.csv"
    labels.parent.mkdir()
    with open(labels, "w", newline="") as f:
        csv.writer(f).writerows([["file", "target", "split"], *rows])
    at = fresh_app(PAGE)
    at.radio(key="data_source").set_value("CSV of labels").run()
    at.radio(key="data_csv_mode").set_value("On this server").run()
    at.text_input(key="data_csv_server_path").input(str(labels)).run()
    at.text_input(key="data_csv_server_images").input(str(images)).run()
    next(b for b in at.button if b.label == "Use this CSV").click().run()
    assert not at.exception and not at.error
    assert at.session_state["dataset_path"] == str(labels)
    assert any("CSV's split column" in m.value for m in at.markdown)
    cfg = at.session_state["data_config"]
    assert cfg.path == str(labels) and cfg.images == str(images)
    assert at.dataframe[-1].value.iloc[-1].to_dict()["test"] == 4


def test_the_runs_page_lists_a_damaged_run(workspace: Path, fresh_app) -> None:
    config = RunConfig()
    config.data.path = "/data"
    run = runs.create_run(config, ["a", "b"])
    run.summary_path.write_text("[1, 2]")
    at = fresh_app("pages/runs.py")
    assert not at.exception
    assert any("summary.json holds a list" in w.value for w in at.warning)
    assert any("damaged" in e.value for e in at.error)


def test_a_kaggle_layout_speaks_of_what_it_gives(workspace: Path, fresh_app) -> None:
    """Issue 28 item 4: copies across the given train/test are called a leak (not 'cannot
    inflate'); the missing val split is said in the page's terms above the split; no Test
    fraction slider when the test split is given."""
    root = workspace / "kaggle"
    seed = 0
    for split, n in (("train", 8), ("test", 3)):
        for cls in ("cat", "dog"):
            for i in range(n):
                seed += 1
                _img(root / split / cls / f"{i}.png", seed)
    shutil.copy(root / "train/cat/0.png", root / "test/cat/leak.png")
    at = _use_server_path(fresh_app(PAGE), root)
    assert not at.exception and not at.error
    warnings = " ".join(w.value for w in at.warning)
    assert "cannot inflate" not in warnings
    assert "1 group(s) have copies in different given splits" in warnings
    assert "0 carry different labels" not in warnings
    assert [s.label for s in at.slider] == ["Validation fraction"]
    texts = " ".join(e.value for k in ("info", "caption", "warning") for e in at.get(k))
    assert "data.val_fraction" not in texts
    assert "gives no validation split" in texts
