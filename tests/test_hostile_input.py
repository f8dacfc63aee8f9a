"""Hostile input: upload names, archives, server paths and checkpoints an attacker controls.

Complements tests/test_archive.py (traversal, absolute names, symlinks, ratio bomb, limits) and
tests/test_workspace.py (paths outside the data roots) without repeating them. Every refusal is
checked by walking the whole test folder: nothing may be written anywhere, not even a temp folder.
"""

from __future__ import annotations

import ast
import io
import os
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from cnnlab import archive, data, models, predict, runs, train
from cnnlab import workspace as ws
from cnnlab.config import ModelConfig, RunConfig
from cnnlab.errors import CnnlabError, DataError, UnsafeArchiveError

PACKAGE = Path(__file__).resolve().parents[1] / "cnnlab"


def _png(shade: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (shade, 40, 200)).save(buf, "PNG")
    return buf.getvalue()


def _good_upload() -> list[tuple[str, bytes]]:
    return [(f"pets/{c}/{i}.png", _png(i * 30)) for c in ("cats", "dogs") for i in range(3)]


def _tree(root: Path) -> set[str]:
    """Every path under root (files, folders, links), relative: a before/after fingerprint."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, payload in members.items():
            zf.writestr(zipfile.ZipInfo(name), payload)
    return path


# ---------------------------------------------------------------- directory uploads
ESCAPES = {
    "dotdot": "../../evil.png",
    "dotdot-inside": "pets/cats/../../../evil.png",
    "absolute": "/tmp/evil.png",
    "backslash-dotdot": "pets\\..\\..\\evil.png",
    "backslash-absolute": "\\evil.png",
    "unc": "\\\\host\\share\\evil.png",
    "drive": "C:\\Windows\\evil.png",
    "drive-relative": "C:evil.png",
    "nul": "pets/cats/evil.png\x00.txt",
    "empty": "",
    "deep": "pets/" + "d/" * 40 + "evil.png",
}


@pytest.mark.parametrize("name", list(ESCAPES.values()), ids=list(ESCAPES))
def test_escaping_upload_names_write_nothing_anywhere(workspace: Path, name: str) -> None:
    workspace.mkdir(parents=True)
    top = workspace.parent  # the whole test folder: the workspace and everything beside it
    before = _tree(top)
    with pytest.raises(UnsafeArchiveError, match="refused"):
        archive.save_uploaded_files([*_good_upload(), (name, _png())], "pets")
    assert _tree(top) - before <= {"cnnlab-home/datasets"}  # at most the empty datasets folder
    assert not Path("/tmp/evil.png").exists()


def test_names_that_only_look_odd_stay_inside(workspace: Path) -> None:
    """`./`, doubled slashes and backslash separators are normalised, not refused."""
    files = [
        ("pets/cats/./0.png", _png(1)),
        ("pets//cats//1.png", _png(2)),
        ("pets\\dogs\\0.png", _png(3)),
        ("pets/dogs/1.png", _png(4)),
    ]
    root = archive.save_uploaded_files(files, "../../pets")  # a hostile *name* is sanitised too
    assert root.parent == workspace / "datasets" and root.name.startswith("pets-")
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*.png")) == [
        "pets/cats/0.png",
        "pets/cats/1.png",
        "pets/dogs/0.png",
        "pets/dogs/1.png",
    ]


CLASHES = {
    "long-name": [("pets/cats/" + "x" * 300 + ".png", _png())],
    "file-then-folder": [("pets/cats/a.png", _png()), ("pets/cats/a.png/b.png", _png())],
    "folder-then-file": [("pets/cats/sub/b.png", _png()), ("pets/cats/sub", _png())],
    "names-a-folder": [("pets/cats/./.", _png())],
}


@pytest.mark.parametrize("extra", list(CLASHES.values()), ids=list(CLASHES))
def test_unwritable_upload_names_leave_nothing_behind(workspace: Path, extra) -> None:
    """Names the file system rejects fail before anything is kept (no partial dataset)."""
    workspace.mkdir(parents=True)
    before = _tree(workspace.parent)
    with pytest.raises(Exception):  # noqa: B017, PT011 - any error; the next test wants a clean one
        archive.save_uploaded_files([*_good_upload(), *extra], "pets")
    assert _tree(workspace.parent) - before <= {"cnnlab-home/datasets"}


@pytest.mark.parametrize("extra", list(CLASHES.values()), ids=list(CLASHES))
def test_unwritable_upload_names_are_a_clean_error(workspace: Path, extra) -> None:
    with pytest.raises(DataError):
        archive.save_uploaded_files([*_good_upload(), *extra], "pets")


def test_zip_member_clash_is_a_clean_error(tmp_path: Path) -> None:
    zpath = _zip(tmp_path / "clash.zip", {"p/a/x.png": _png(), "p/a/x.png/y.png": _png()})
    with pytest.raises(DataError):
        archive.safe_extract_zip(zpath, tmp_path / "out" / "clash")


def test_upload_of_huge_member_count_is_refused_before_writing(workspace: Path) -> None:
    files = [(f"pets/c{i % 2}/{i}.png", b"x") for i in range(archive.MAX_MEMBERS + 1)]
    with pytest.raises(UnsafeArchiveError, match="100,001 files, limit 100,000"):
        archive.save_uploaded_files(files, "pets")
    assert not (workspace / "datasets").exists() or not list((workspace / "datasets").iterdir())


# ---------------------------------------------------------------- zips
def test_zip_with_default_member_limit_breached_writes_nothing(tmp_path: Path) -> None:
    """A real 100,001-member archive (stored, empty members: about 10 MB) is refused up front."""
    zpath = tmp_path / "many.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_STORED) as zf:
        for i in range(archive.MAX_MEMBERS + 1):
            zf.writestr(f"c{i % 2}/{i}.png", b"")
    before = _tree(tmp_path)
    with pytest.raises(UnsafeArchiveError, match="100,001 members"):
        archive.safe_extract_zip(zpath, tmp_path / "out" / "many")
    assert _tree(tmp_path) - before <= {"out"}
    assert not list((tmp_path / "out").iterdir())


def test_zip_lying_about_its_size_is_cut_off(tmp_path: Path) -> None:
    """A header that under-declares a member's size cannot make extraction write more."""
    zpath = _zip(tmp_path / "liar.zip", {"a/1.png": _png(), "b/1.png": b"\0" * 4096})
    raw = bytearray(zpath.read_bytes())
    # Patch the central-directory file_size (what infolist() reports) of b/1.png to 10 bytes.
    cd = raw.rfind(b"PK\x01\x02", 0, raw.rfind(b"b/1.png"))
    raw[cd + 24 : cd + 28] = (10).to_bytes(4, "little")
    zpath.write_bytes(raw)
    with pytest.raises((UnsafeArchiveError, DataError)):
        archive.safe_extract_zip(zpath, tmp_path / "out" / "liar")
    assert not list((tmp_path / "out").iterdir())


def test_nested_zip_is_not_unpacked(workspace: Path, tmp_path: Path) -> None:
    """A zip inside the zip stays a file (a problem in the scan), never a second extraction."""
    inner = _zip(tmp_path / "inner.zip", {"x/1.png": _png()}).read_bytes()
    members = {f"{c}/{i}.png": _png(i) for c in ("a", "b") for i in range(3)}
    outer = _zip(tmp_path / "outer.zip", members | {"a/bomb.zip": inner})
    result = data.scan(outer)
    assert result.n_images == 6
    assert [p.path for p in result.problems] == ["a/bomb.zip"]
    assert not list(result.root.rglob("x"))


# ---------------------------------------------------------------- server-side paths
def test_symlink_out_of_a_data_root_is_refused(tmp_path: Path, monkeypatch) -> None:
    root, secret = tmp_path / "data", tmp_path / "secret"
    (root / "set").mkdir(parents=True)
    secret.mkdir()
    (root / "sneaky").symlink_to(secret, target_is_directory=True)
    monkeypatch.setenv("CNNLAB_DATA_ROOTS", f"{tmp_path / 'other'}{os.pathsep}{root}")
    assert ws.check_inside_roots(root / "set") == (root / "set").resolve()
    for bad in (root / "sneaky", root / "sneaky" / "x", f"{root}-evil", str(root) + "/../secret"):
        with pytest.raises(DataError, match="outside the allowed data folders"):
            ws.check_inside_roots(bad)


def test_default_root_is_the_workspace(workspace: Path, tmp_path: Path) -> None:
    (workspace / "datasets" / "mine").mkdir(parents=True)
    assert ws.data_roots() == [workspace.resolve()]
    ws.check_inside_roots(workspace / "datasets" / "mine")
    with pytest.raises(DataError):
        ws.check_inside_roots(tmp_path)


# ---------------------------------------------------------------- checkpoints are data, not code
class _Payload:
    """Unpickling this would run `touch <marker>`: the classic malicious-checkpoint trick."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _tiny_run(tmp_path: Path) -> runs.Run:
    config = RunConfig.from_dict(
        {"data": {"path": str(tmp_path), "image_size": 16}, "model": {"channels": [4]}}
    )
    return runs.create_run(config, ["a", "b"])


def _plant(path: Path, marker: Path) -> None:
    torch.save({"model_state": {"w": _Payload(marker)}, "config": {}, "classes": []}, path)


def test_malicious_checkpoint_never_runs(workspace: Path, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    run = _tiny_run(tmp_path)
    _plant(run.best_path, marker)
    _plant(run.last_path, marker)
    runs.update_summary(run, status="stopped")
    attempts = {
        "models.load_trained": lambda: models.load_trained(run),
        "Predictor.from_run": lambda: predict.Predictor.from_run(run.run_id),
        "weights run:<id>": lambda: models.create_model(
            ModelConfig(name="custom", channels=[4], weights=f"run:{run.run_id}"), 2, 16
        ),
        "weights file": lambda: models.create_model(
            ModelConfig(name="custom", channels=[4], weights=str(run.best_path)), 2, 16
        ),
        "train.resume": lambda: train.resume(run.run_id),
    }
    for what, attempt in attempts.items():
        with pytest.raises(Exception) as info:  # noqa: PT011 - refused somehow; see the next test
            attempt()
        assert not isinstance(info.value, AssertionError), what
        assert not marker.exists(), f"{what} executed the pickled payload"
    # control: the same file DOES run its payload under an unsafe loader, so the test can fail
    torch.load(run.best_path, weights_only=False)
    assert marker.exists()


def test_malicious_weights_file_is_a_weights_error(workspace: Path, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    _plant(path, marker)
    from cnnlab.errors import WeightsError

    with pytest.raises(WeightsError, match="weights-only"):
        models.create_model(ModelConfig(name="custom", channels=[4], weights=str(path)), 2, 16)
    assert not marker.exists()


def test_malicious_checkpoint_is_a_clean_error(workspace: Path, tmp_path: Path) -> None:
    run = _tiny_run(tmp_path)
    _plant(run.best_path, tmp_path / "PWNED")
    with pytest.raises(CnnlabError) as info:
        models.load_trained(run)
    assert "weights_only=False" not in str(info.value)


def _torch_load_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if isinstance(owner, ast.Name):
                yield owner.id, node.func.attr, node


def test_no_unsafe_deserialisation_anywhere_in_the_code() -> None:
    """Static check: every torch.load says weights_only=True; no pickle/np allow_pickle loads."""
    root = PACKAGE.parent
    sources = [*PACKAGE.glob("*.py"), *root.glob("pages/*.py"), root / "app.py", root / "server.py"]
    seen_torch_loads = 0
    offenders = []
    for path in sources:
        if not path.is_file():
            continue
        for owner, attr, node in _torch_load_calls(ast.parse(path.read_text(), str(path))):
            where = f"{path.name}:{node.lineno}"
            kw = {k.arg: k.value for k in node.keywords}
            if (owner, attr) == ("torch", "load"):
                seen_torch_loads += 1
                flag = kw.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    offenders.append(f"{where} torch.load without weights_only=True")
            elif owner in ("pickle", "dill", "cloudpickle", "joblib") and attr.startswith("load"):
                offenders.append(f"{where} {owner}.{attr}")
            elif (owner, attr) == ("np", "load"):
                flag = kw.get("allow_pickle")
                if isinstance(flag, ast.Constant) and flag.value is True:
                    offenders.append(f"{where} np.load(allow_pickle=True)")
    assert seen_torch_loads >= 2  # the check really saw the loaders (runs.read_checkpoint, models)
    assert offenders == []
