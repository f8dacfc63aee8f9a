"""Safe extraction of zips and directory uploads: good archives work, malicious ones write nothing."""

from __future__ import annotations

import errno
import io
import stat
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from cnnlab import archive, data
from cnnlab.errors import DataError, UnsafeArchiveError


def _png(color=(10, 120, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, "PNG")
    return buf.getvalue()


def _zip(path: Path, members: dict[str | zipfile.ZipInfo, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, payload in members.items():
            zf.writestr(name, payload)
    return path


def _good_members(prefix: str = "") -> dict[str, bytes]:
    return {f"{prefix}{c}/{i}.png": _png() for c in ("cats", "dogs") for i in range(3)}


def _nothing_left(parent: Path, outside: Path) -> None:
    """No file escaped and no half-extracted folder stayed behind."""
    assert not outside.exists()
    assert not [p for p in parent.iterdir() if p.name.endswith(".partial")]


def test_good_zip_scans_and_extraction_is_reused(workspace: Path, tmp_path: Path, monkeypatch):
    zpath = _zip(tmp_path / "pets.zip", _good_members() | {"__MACOSX/cats/._0.png": b"\0"})
    result = data.scan(zpath)
    assert result.classes == ["cats", "dogs"] and result.n_images == 6
    assert result.problems == []
    assert result.root.parent == workspace / "datasets"
    assert result.root.name.startswith("pets-")

    def refuse(*_a, **_k):
        raise AssertionError("extracted twice")

    monkeypatch.setattr(archive, "safe_extract_zip", refuse)
    assert data.resolve_dataset(zpath) == result.root


def test_zip_with_single_top_folder(workspace: Path, tmp_path: Path) -> None:
    zpath = _zip(tmp_path / "wrapped.zip", _good_members("pets/"))
    result = data.scan(zpath)
    assert result.root.name == "pets" and result.classes == ["cats", "dogs"]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../evil.png", "'..'"),
        ("cats/../../evil.png", "'..'"),
        ("/tmp/evil.png", "absolute path"),
        ("C:/evil.png", "absolute path"),
        ("\\\\server\\evil.png", "absolute path"),
        ("a/" * 40 + "deep.png", "nested 41 folders deep"),
    ],
)
def test_unsafe_member_names_are_refused(tmp_path: Path, name: str, reason: str) -> None:
    zpath = _zip(tmp_path / "bad.zip", _good_members() | {zipfile.ZipInfo(name): _png()})
    target = tmp_path / "out" / "bad"
    with pytest.raises(UnsafeArchiveError) as info:
        archive.safe_extract_zip(zpath, target)
    assert reason in str(info.value) and repr(name) in str(info.value)
    assert not target.exists()
    _nothing_left(target.parent, tmp_path / "evil.png")


def test_symlink_member_is_refused(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("cats/link.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    zpath = _zip(tmp_path / "link.zip", _good_members() | {link: b"../../../etc/passwd"})
    target = tmp_path / "out" / "link"
    with pytest.raises(UnsafeArchiveError, match="'cats/link.png' is a symbolic link"):
        archive.safe_extract_zip(zpath, target)
    assert not target.exists()
    _nothing_left(target.parent, tmp_path / "etc")


def test_compression_bomb_is_refused(tmp_path: Path) -> None:
    zpath = _zip(tmp_path / "bomb.zip", _good_members() | {"cats/zeros.png": bytes(8 * 1024**2)})
    target = tmp_path / "out" / "bomb"
    with pytest.raises(UnsafeArchiveError, match=r"'cats/zeros.png' expands \d+x .*zip bomb"):
        archive.safe_extract_zip(zpath, target)
    assert not target.exists()
    _nothing_left(target.parent, tmp_path / "nothing")


def test_member_count_and_total_size_limits(tmp_path: Path) -> None:
    zpath = _zip(tmp_path / "many.zip", _good_members())
    with pytest.raises(UnsafeArchiveError, match="6 members, more than the limit of 5"):
        archive.safe_extract_zip(zpath, tmp_path / "out" / "a", max_members=5)
    with pytest.raises(UnsafeArchiveError, match="expands to more than 100 bytes"):
        archive.safe_extract_zip(zpath, tmp_path / "out" / "b", max_total_bytes=100)
    assert list((tmp_path / "out").iterdir()) == []


def test_failure_midway_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    zpath = _zip(tmp_path / "ok.zip", _good_members())
    calls = []

    def crash_on_third(src, info, dest):
        calls.append(info.filename)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        dest.write_bytes(b"x")

    monkeypatch.setattr(archive, "_copy_member", crash_on_third)
    with pytest.raises(DataError, match="No space left on device.*free disk space"):
        archive.safe_extract_zip(zpath, tmp_path / "out" / "ok")
    assert list((tmp_path / "out").iterdir()) == []


def test_not_a_zip_is_a_data_error(workspace: Path, tmp_path: Path) -> None:
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"PK but not really a zip")
    with pytest.raises(DataError, match="fake.zip is not a readable zip"):
        data.scan(fake)


def test_uploaded_zip_is_extracted_once(workspace: Path, tmp_path: Path) -> None:
    payload = _zip(tmp_path / "u.zip", _good_members()).read_bytes()
    first = archive.save_uploaded_zip(payload, "my pets!.zip")
    assert first.parent == workspace / "datasets" and first.name.startswith("my_pets-")
    assert archive.save_uploaded_zip(payload, "my pets!.zip") == first
    assert data.scan(first).n_images == 6
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]


def test_uploaded_directory_is_written_safely(workspace: Path) -> None:
    files = [(f"pets/{name}", payload) for name, payload in _good_members().items()]
    root = archive.save_uploaded_files(files, "pets")
    assert data.scan(root).classes == ["cats", "dogs"]
    assert archive.save_uploaded_files(list(reversed(files)), "pets") == root


@pytest.mark.parametrize(
    "name", ["../evil.png", "pets/../../evil.png", "/evil.png", "C:\\evil.png"]
)
def test_uploaded_directory_refuses_escaping_names(workspace: Path, name: str) -> None:
    files = [(f"pets/{n}", p) for n, p in _good_members().items()] + [(name, _png())]
    with pytest.raises(UnsafeArchiveError, match="refused"):
        archive.save_uploaded_files(files, "pets")
    assert not (workspace / "datasets").exists() or not list((workspace / "datasets").iterdir())
    assert not (workspace / "evil.png").exists() and not (workspace.parent / "evil.png").exists()


def test_uploaded_directory_limits(workspace: Path) -> None:
    with pytest.raises(DataError, match="no files"):
        archive.save_uploaded_files([], "x")
    with pytest.raises(UnsafeArchiveError, match="limit 1"):
        archive.save_uploaded_files([("a/1.png", b"1"), ("b/1.png", b"2")], "x", max_members=1)


def test_uploaded_weights_get_a_safe_name(workspace: Path) -> None:
    saved = archive.save_uploaded_weights(b"weights", "../../etc/my model.pth")
    assert saved.parent == workspace / "weights" and saved.suffix == ".pth"
    assert saved.read_bytes() == b"weights" and ".." not in saved.name
    with pytest.raises(DataError, match="not a PyTorch weights file"):
        archive.save_uploaded_weights(b"x", "notes.txt")
    with pytest.raises(DataError, match="is empty"):
        archive.save_uploaded_weights(b"", "w.pt")


def test_dataset_name_drops_the_workspace_copy_suffix() -> None:
    """Issue 28 (polish): one name per data set, as the user knows it."""
    assert archive.dataset_name("/w/datasets/withjunk-1b2377cdb97f") == "withjunk"
    assert archive.dataset_name("/w/uploads/labels-69aafff379f0.csv") == "labels"
    assert archive.dataset_name("/data/icons/") == "icons"
    assert archive.dataset_name("/data/my-set-2") == "my-set-2"


def test_an_empty_zip_is_named_as_the_user_knows_it(workspace: Path, tmp_path: Path) -> None:
    """Issue 28 item 8: the error names the user's file, not the workspace's internal copy."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("only-a-folder/", "")
    with pytest.raises(DataError) as info:
        archive.save_uploaded_zip(buf.getvalue(), "mine.zip")
    assert str(info.value).startswith("mine.zip holds no files") and "datasets" not in str(
        info.value
    )
    local = tmp_path / "empty.zip"
    local.write_bytes(buf.getvalue())
    with pytest.raises(DataError, match=r"^empty\.zip holds no files"):
        data.scan(local)
    assert not [p for p in (workspace / "datasets").iterdir() if not p.name.startswith(".")]
