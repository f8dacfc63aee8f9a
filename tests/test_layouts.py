"""Data as it comes (issue 13, items 1-4): split folders, CSV labels, duplicates, small classes."""

from __future__ import annotations

import csv
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab import archive, data, reports
from cnnlab.config import DataConfig, RunConfig
from cnnlab.errors import ConfigError, DataError


def _img(path: Path, seed: int, size: int = 12) -> Path:
    """A distinct noise PNG (no two seeds give copies of each other)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _smooth(path: Path, seed: int) -> Path:
    """A photo-like picture: blurred shapes, so a resized JPEG copy keeps its look."""
    path.parent.mkdir(parents=True, exist_ok=True)
    small = np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    Image.fromarray(small).resize((96, 96), Image.Resampling.BICUBIC).save(path)
    return path


def _split_set(root: Path, layout: dict[str, dict[str, int]]) -> Path:
    seed = 0
    for split, classes in layout.items():
        for cls, n in classes.items():
            for i in range(n):
                seed += 1
                _img(root / split / cls / f"{cls}{i}.png", seed)
    return root


# ---------------------------------------------------------------- 1: split folders
def test_split_folders_in_any_case_are_the_split(tmp_path: Path) -> None:
    root = _split_set(
        tmp_path / "kaggle",
        {"TRAIN": {"cat": 10, "dog": 10}, "Valid": {"cat": 3, "dog": 3}, "test": {"cat": 4}},
    )
    (root / "sample_submission.csv").write_text("id,label\n")
    report = reports.inspect_report(str(root))
    assert report["split_source"] == "folders"
    assert report["classes"] == ["cat", "dog"]  # the union, not "TRAIN", "Valid", "test"
    assert report["split_per_class"] == {
        "cat": {"train": 10, "val": 3, "test": 4},
        "dog": {"train": 10, "val": 3, "test": 0},
    }
    assert any("test split has no images of class(es) dog" in w for w in report["warnings"])
    assert {p["path"] for p in report["problems"]} == {"sample_submission.csv"}


def test_a_missing_val_split_is_carved_from_train(tmp_path: Path) -> None:
    root = _split_set(tmp_path / "s", {"train": {"a": 20, "b": 20}, "test": {"a": 5, "b": 5}})
    (root / "test" / "unlabelled.png").write_bytes((root / "train/a/a0.png").read_bytes())
    result = data.scan(root)
    parts = data.split(result, val_fraction=0.2, test_fraction=0.15)
    assert parts.per_class(result)["a"] == {"train": 16, "val": 4, "test": 5}
    tests = {result.files[i].parent.parent.name for i in parts.test}
    assert tests == {"test"}  # the given test set, never carved
    assert any("no val split: it is carved" in w for w in result.warnings)


def test_unlabelled_test_folder_is_not_used(tmp_path: Path) -> None:
    root = _split_set(tmp_path / "s", {"train": {"a": 10, "b": 10}})
    for i in range(3):
        _img(root / "test" / f"{i}.png", 100 + i)
    result = data.scan(root)
    assert result.split_source == "folders" and result.n_images == 20
    assert any("test/ holds no class folders" in w for w in result.warnings)


def test_class_folders_named_like_splits_stay_classes(tmp_path: Path) -> None:
    for cls in ("train", "test"):
        for i in range(4):
            _img(tmp_path / "d" / cls / f"{i}.png", sum(map(ord, cls)) + i)
    result = data.scan(tmp_path / "d")
    assert result.split_source == "random" and result.classes == ["test", "train"]


def test_split_folders_work_from_a_zip_and_an_upload(tmp_path: Path, workspace: Path) -> None:
    root = _split_set(tmp_path / "set", {"train": {"a": 6, "b": 6}, "val": {"a": 2, "b": 2}})
    zpath = tmp_path / "set.zip"
    files = sorted(p for p in root.rglob("*.png"))
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in files:
            zf.write(p, "set/" + p.relative_to(root).as_posix())
    zipped = data.scan(zpath)
    assert zipped.split_source == "folders" and zipped.n_images == 16
    uploaded = archive.save_uploaded_files(
        [("set/" + p.relative_to(root).as_posix(), p.read_bytes()) for p in files], "set"
    )
    assert data.scan(uploaded).split_source == "folders"


# ---------------------------------------------------------------- 2: CSV labels
def _csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_csv_with_ids_without_extension_and_a_split_column(tmp_path: Path) -> None:
    folder = tmp_path / "csvset"
    rows = []
    for i in range(24):
        _img(folder / "images" / f"img{i:03d}.png", 500 + i)
        rows.append([f"img{i:03d}", ["ant", "bee"][i % 2], "TEST" if i >= 18 else "train"])
    rows += [["img999", "ant", "train"], ["img001", "", "train"], ["img002", "bee", "holdout"]]
    labels = _csv(folder / "labels.csv", ["Image_ID", "Category", "split"], rows)
    report = reports.inspect_report(str(labels))
    assert report["split_source"] == "csv"
    assert report["counts"] == {"ant": 12, "bee": 12}
    assert report["split_per_class"]["ant"]["test"] == 3
    reasons = {p["path"]: p["reason"] for p in report["problems"]}
    assert reasons["img999"].startswith("row 26: no such image file")
    assert reasons["img001"] == "row 27: empty label"
    assert reasons["img002"].startswith("row 28: unknown split 'holdout'")


def test_csv_rows_outside_the_data_folders_all_read_the_same(tmp_path: Path, workspace) -> None:
    """Issue 27: an existing server file and a missing one answer alike (nothing to probe)."""
    folder = tmp_path / "csvset"
    rows = [[f"img{i}.png", ["ant", "bee"][i % 2]] for i in range(8)]
    for i in range(8):
        _img(folder / f"img{i}.png", 900 + i)
    elsewhere = _img(tmp_path / "elsewhere" / "secret.png", 999)
    (folder / "linked.png").symlink_to(elsewhere)
    probes = [
        "../../../../../../etc/passwd",  # exists
        "../../../../../../etc/no-such-file-here",  # does not
        str(elsewhere),  # an absolute path to an existing image
        "linked.png",  # a link inside the folder leading out
    ]
    labels = _csv(folder / "labels.csv", ["path", "label"], rows + [[p, "ant"] for p in probes])
    report = reports.inspect_report(str(labels))
    reasons = {p["path"]: p["reason"] for p in report["problems"]}
    texts = {reasons[p].split(": ", 1)[1] for p in probes}
    assert len(texts) == 1, texts
    (text,) = texts
    assert "outside the allowed data folders" in text
    assert "link" not in text and "/etc" not in text and "secret" not in text


def test_a_visitors_csv_reads_only_its_own_images_folder(
    tmp_path: Path, workspace, monkeypatch
) -> None:
    """Issue 27: with users, the data roots hold other users' uploads; a dashboard visitor's CSV
    row must not reach into them (the CLI, the operator, may)."""
    from cnnlab import reach

    mine = workspace / "datasets" / "mine-0123456789ab"
    theirs = workspace / "datasets" / "theirs-ba9876543210"
    for i in range(8):
        _img(mine / f"img{i}.png", 700 + i)
    _img(theirs / "private.png", 799)
    rows = [[f"img{i}.png", ["ant", "bee"][i % 2]] for i in range(8)]
    labels = _csv(workspace / "datasets" / "labels-0123456789ab.csv", ["path", "label"], rows)
    rows.append(["../theirs-ba9876543210/private.png", "ant"])
    labels = _csv(labels, ["path", "label"], rows)
    report = reports.inspect_report(str(labels), images=str(mine))
    assert not report["problems"]  # the CLI reads inside the data roots
    monkeypatch.setenv(reach.DASHBOARD_ENV, "1")
    report = reports.inspect_report(str(labels), images=str(mine))
    (problem,) = report["problems"]
    assert "outside the allowed data folders" in problem["reason"]


def test_csv_columns_by_flag_and_images_folder(tmp_path: Path) -> None:
    images = tmp_path / "pics"
    rows = [[f"{c}/{i}.png", c, "x"] for c in ("a", "b") for i in range(5)]
    for n, (ref, _, _) in enumerate(rows):
        _img(images / ref, 900 + n)
    _img(images / "a" / "bad.png", 1).write_bytes(b"\x89PNG broken")
    rows.append(["a/bad.png", "a", "x"])
    (tmp_path / "meta").mkdir()
    labels = _csv(tmp_path / "meta" / "train.csv", ["f", "y", "note"], rows)
    with pytest.raises(DataError, match="--path-column"):
        data.scan(labels, images=str(images))
    result = data.scan(labels, path_column="F", label_column="y", images=str(images))
    assert result.split_source == "random" and result.counts == {"a": 5, "b": 5}
    assert any(p.reason.startswith("row 12: ") for p in result.problems)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00binary", "not a CSV text file"),
        (b"path\na.png\n", "has one column"),
        (b"a.png,cat\nb.png,dog\n", "no image path column"),
        (b"", "is empty"),
    ],
)
def test_a_csv_that_is_not_one_is_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    bad = tmp_path / "labels.csv"
    bad.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        data.scan(bad)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- 3: duplicates
def test_duplicates_across_splits_and_classes_are_reported(tmp_path: Path, workspace) -> None:
    root = _split_set(tmp_path / "s", {"train": {"cat": 8, "dog": 8}, "test": {"cat": 3, "dog": 3}})
    shutil.copy(root / "train/cat/cat0.png", root / "test/cat/leak.png")
    shutil.copy(root / "train/cat/cat1.png", root / "train/dog/mislabelled.png")
    report = reports.inspect_report(str(root))
    groups = {tuple(sorted(g["paths"])): g for g in report["duplicates"]}
    leak = groups[("test/cat/leak.png", "train/cat/cat0.png")]
    assert dict(zip(leak["paths"], leak["splits"], strict=True)) == {
        "test/cat/leak.png": "test",
        "train/cat/cat0.png": "train",
    }
    assert leak["kind"] == "exact"
    assert not leak["label_conflict"]
    conflict = groups[("train/cat/cat1.png", "train/dog/mislabelled.png")]
    assert conflict["classes"] == ["cat", "dog"] and conflict["label_conflict"]

    # dropping: recorded in the config, never touching the files
    dropped = reports.inspect_report(str(root), drop_duplicates=True, drop_conflicts=True)
    assert dropped["duplicates"] == [] and dropped["n_dropped"] == 3
    assert (root / "train/cat/cat0.png").is_file() and (
        root / "train/dog/mislabelled.png"
    ).is_file()
    cfg = DataConfig(path=str(root), image_size=12, drop_duplicates=True, drop_conflicts=True)
    back = RunConfig.from_dict(RunConfig(data=cfg).to_dict()).data
    assert back.drop_duplicates and back.drop_conflicts
    prepared = data.prepare(back)
    names = {prepared.scan.rel(i) for i in range(prepared.scan.n_images)}
    assert "test/cat/leak.png" in names and "train/cat/cat0.png" not in names  # test copy kept
    assert not {"train/cat/cat1.png", "train/dog/mislabelled.png"} & names


def test_near_duplicates_are_found_and_random_split_keeps_groups_together(
    tmp_path: Path, workspace
) -> None:
    root = tmp_path / "d"
    for c in ("a", "b"):
        for i in range(12):
            _smooth(root / c / f"{i}.png", sum(map(ord, c)) * 100 + i)
    original = Image.open(root / "a/0.png")
    original.resize((64, 64)).save(root / "a/0-small.jpg", quality=90)  # resized, re-encoded
    for k in range(3):
        shutil.copy(root / "b/5.png", root / "b" / f"5-copy{k}.png")
    result = data.scan(root)
    groups = {
        tuple(sorted(result.rel(i) for i in g.members)): g.kind for g in result.duplicate_groups()
    }
    assert groups[("a/0-small.jpg", "a/0.png")] == "near"
    assert groups[("b/5-copy0.png", "b/5-copy1.png", "b/5-copy2.png", "b/5.png")] == "exact"
    for seed in range(6):
        where = data.split(result, 0.2, 0.2, seed).of()
        for g in result.duplicate_groups():
            assert len({where[i] for i in g.members}) == 1


def test_duplicate_hashes_are_cached_with_the_verification(tmp_path, workspace, monkeypatch):
    root = tmp_path / "d"
    for c in ("a", "b"):
        for i in range(4):
            _img(root / c / f"{i}.png", sum(map(ord, c)) * 100 + i)
    shutil.copy(root / "a/0.png", root / "b/copy.png")
    first = data.scan(root).duplicate_groups()

    def refuse(path):
        raise AssertionError(f"{path} decoded again")

    monkeypatch.setattr(data, "_check", refuse)
    assert data.scan(root).duplicate_groups() == first and len(first) == 1


def test_flat_pictures_are_only_exact_copies(tmp_path: Path) -> None:
    root = tmp_path / "d"
    for c, colour in (("a", (200, 30, 30)), ("b", (30, 30, 200))):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (12, 12), tuple(v + i for v in colour)).save(root / c / f"{i}.png")
    assert data.scan(root).duplicate_groups() == []


# ---------------------------------------------------------------- 4: small classes
def test_too_small_classes_can_be_excluded(tmp_path: Path, workspace) -> None:
    root = tmp_path / "d"
    for c, n in (("big", 10), ("other", 10), ("tiny", 2)):
        for i in range(n):
            _img(root / c / f"{i}.png", sum(map(ord, c)) * 100 + i)
    with pytest.raises(DataError, match=r"'tiny' \(2\); each needs at least 3.*--exclude-class"):
        reports.inspect_report(str(root))
    report = reports.inspect_report(str(root), exclude_classes=["tiny"])
    assert report["classes"] == ["big", "other"] and report["min_per_class"] == 3
    with pytest.raises(DataError, match="not in the data set"):
        reports.inspect_report(str(root), exclude_classes=["nope"])
    cfg = RunConfig.from_dict({"data": {"path": str(root), "exclude_classes": "tiny"}}).data
    assert cfg.exclude_classes == ["tiny"]
    with pytest.raises(ConfigError, match="only apply to a .csv"):
        DataConfig(path=str(root), path_column="f").validate()


def test_zero_val_or_test_fraction_warns(colour_classes: Path, workspace) -> None:
    report = reports.inspect_report(str(colour_classes), 0.0, 0.0)
    text = " ".join(report["warnings"])
    assert "no early stopping" in text and "no test accuracy" in text
    assert reports.inspect_report(str(colour_classes))["warnings"] == []


# ---------------------------------------------------------------- issue 28 item 6: CSVs as they come
def _two_class_images(root: Path) -> list[list[str]]:
    rows = []
    for c in ("cat", "dog"):
        for i in range(3):
            _img(root / c / f"{i}.png", hash((c, i)) % 10_000)
            rows.append([f"{c}/{i}.png", c])
    return rows


def _write_csv(folder: Path, header: list[str], rows) -> Path:
    path = folder / "labels.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_a_csv_with_a_huge_field_reads(tmp_path: Path) -> None:
    rows = _two_class_images(tmp_path)
    # over csv's default 131,072 field limit
    path = _write_csv(tmp_path, ["path", "label", "notes"], ([*r, "x" * 200_000] for r in rows))
    assert data.scan(path).counts == {"cat": 3, "dog": 3}


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-8-sig", "latin-1"])
def test_csv_encodings_as_spreadsheets_save_them(tmp_path: Path, encoding: str) -> None:
    rows = _two_class_images(tmp_path)
    path = tmp_path / "labels.csv"
    text = "path\tlabel\tnote\r\n" + "".join(f"{p}\t{c}\tcafé\r\n" for p, c in rows)
    path.write_bytes(text.encode(encoding))
    scan = data.scan(path)
    assert scan.counts == {"cat": 3, "dog": 3}


def test_a_big_csv_is_streamed(tmp_path: Path) -> None:
    """Reading holds about one row at a time, not the file (and its decoded copies) whole."""
    import tracemalloc

    from cnnlab import labels_csv

    rows = _two_class_images(tmp_path)
    # 20 MB of rows naming missing files, each a short problem
    gone = ([f"gone/{i}.png", "cat", "n" * 10_000] for i in range(2_000))
    path = _write_csv(
        tmp_path, ["path", "label", "notes"], [*([*r, "n" * 10] for r in rows), *gone]
    )
    tracemalloc.start()
    layout = labels_csv.read_csv(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert (
        len(layout.entries) == 6 and len(layout.problems) == labels_csv.MAX_LISTED_ROW_PROBLEMS + 1
    )
    assert layout.problems[-1].reason.startswith("1,000 more row(s) from row 1008 on")
    assert peak < 8 * 2**20, (
        f"peak {peak / 2**20:.1f} MB for a {path.stat().st_size / 2**20:.0f} MB CSV"
    )


def test_a_million_problem_rows_are_counted_not_listed(tmp_path: Path) -> None:
    """1,000 problems are listed; the rest is one line per kind with its count."""
    from cnnlab import labels_csv

    rows = _two_class_images(tmp_path)
    body = [
        *([*r, "train"] for r in rows),
        *([f"gone/{i}.png", "cat", "train"] for i in range(1_500)),
        *(["cat/0.png", "dog", "train"] for _ in range(300)),  # copies of row 2
        ["../outside.png", "cat", "train"],
        ["cat/1.png", "cat", "holdout"],
    ]
    path = _write_csv(tmp_path, ["path", "label", "split"], body)
    layout = labels_csv.read_csv(path)
    assert len(layout.entries) == 6
    listed, more = layout.problems[:1000], layout.problems[1000:]
    assert all("no such image file" in p.reason for p in listed)
    assert [p.reason.split(":")[0] for p in more] == [
        "500 more row(s) from row 1008 on, not listed one by one",
        "300 more row(s) from row 1508 on, not listed one by one",
        "1 more row(s) from row 1808 on, not listed one by one",
        "1 more row(s) from row 1809 on, not listed one by one",
    ]
    assert [p.count for p in more] == [500, 300, 1, 1]
    assert "the same file as an earlier row" in more[1].reason
    assert "outside the allowed data folders" in more[2].reason
    assert "unknown split" in more[3].reason
