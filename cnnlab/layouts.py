"""How a data set is laid out on disk: class folders, split folders, or a CSV of labels.

`resolve_dataset` turns a path (a folder, a .zip) into the folder to read, `read_folders` a class-
or split-folder data set into a flat list of (file, class, given split) entries plus the problems
met on the way (`labels_csv.read_csv` does the same for a CSV); `data.scan` then verifies every file. Every entry is
resolved and checked against the allowed folders (the data set's own folder plus
CNNLAB_DATA_ROOTS), so a link nested inside a data set cannot read files from elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import workspace
from .archive import extract_zip_cached
from .config import SPLITS
from .errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
IGNORED_NAMES = frozenset({"__macosx", ".ds_store", "thumbs.db", "desktop.ini"})
# folder names (any case) that mean "this folder is a split", and the split each one means
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val",
               "validation": "val", "test": "test", "testing": "test"}  # fmt: skip

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Problem:
    path: str  # relative to the dataset root (POSIX separators)
    reason: str  # what is wrong with it, in words a user can act on
    count: int = 1  # rows it stands for: a CSV's closing "N more row(s)" line counts N


@dataclass
class Entry:
    path: Path  # absolute path of a candidate image
    label: str  # its class name
    split: str = ""  # "train" | "val" | "test" when the layout gives it, else ""
    row: int = 0  # its CSV row number (1 = the header), 0 for folders


@dataclass
class Layout:
    root: Path  # problems' paths are relative to this folder
    source: str  # "folders" (split folders), "csv" (a CSV split column) or "random"
    entries: list[Entry] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def is_ignored(name: str) -> bool:
    """Dotfiles and OS litter (macOS resource forks, Windows thumbnails) are skipped silently."""
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def visible(folder: Path) -> list[Path]:
    """The entries of folder that are not ignored litter, sorted by name."""
    return sorted(p for p in folder.iterdir() if not is_ignored(p.name))


def _descend_single_top(folder: Path) -> Path:
    """Step into a lone top folder (data.zip -> data/ -> classes) while it holds sub-folders."""
    for _ in range(8):
        entries = visible(folder)
        if len(entries) != 1 or not entries[0].is_dir():
            break
        if not any(p.is_dir() for p in visible(entries[0])):
            break  # the lone folder holds images: it is a (single) class, not a wrapper
        if entries[0].name.lower() in SPLIT_NAMES:
            break  # a lone train/ is a split folder: keep its name visible to the layout
        folder = entries[0]
    return folder


def resolve_dataset(path: str | Path, progress: Progress | None = None) -> Path:
    """The folder holding the class (or split) folders: a directory as is, a .zip extracted safely.

    A .csv is returned as it is (resolved): its rows name the images.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p} does not exist; give an image folder, a .zip or a .csv of labels")
    if p.is_file():
        if p.suffix.lower() == ".csv":
            return p.resolve()
        if p.suffix.lower() != ".zip":
            raise DataError(
                f"{p} is neither a folder nor a .zip (nor a .csv of labels); give an image "
                "folder, a .zip of class folders or a CSV of file names and labels"
            )
        p = extract_zip_cached(p, progress)
    elif not p.is_dir():
        raise DataError(f"{p} is neither a folder nor a .zip; give an image folder or a .zip")
    return _descend_single_top(p.resolve())


def allowed_roots(*own: Path) -> list[Path]:
    """The folders a data set's files may resolve into: its own folder(s) and the data roots."""
    return [p.resolve() for p in own] + workspace.data_roots()


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def _outside_problem(rel: str, target: Path) -> Problem:
    return Problem(
        rel,
        f"a link leading outside the allowed data folders (to {target}); copy the file into the "
        "data set or add its folder to CNNLAB_DATA_ROOTS",
    )


def walk_images(folder: Path, root: Path, roots: list[Path], problems: list[Problem]) -> list[Path]:
    """Image files anywhere under folder; other files, and links leading outside roots, are problems.

    Links inside the allowed folders are followed (a visited set stops link loops).
    """
    found: list[Path] = []
    seen: set[Path] = set()

    def rel(p: Path) -> str:
        return os.path.relpath(p, root).replace(os.sep, "/")

    def visit(d: Path) -> None:
        real = d.resolve()
        if real in seen:
            return
        seen.add(real)
        try:
            items = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as exc:
            problems.append(Problem(rel(d) + "/", f"unreadable folder ({exc.strerror or exc})"))
            return
        for e in items:
            if is_ignored(e.name):
                continue
            path = Path(e.path)
            if e.is_symlink():
                target = path.resolve()
                # a broken link reads nothing: verification reports it as unreadable
                if target.exists() and not _inside(target, roots):
                    problems.append(_outside_problem(rel(path), target))
                    continue
            if e.is_dir():
                visit(path)
            elif path.suffix.lower() in IMAGE_EXTENSIONS:
                found.append(path)
            else:
                problems.append(
                    Problem(
                        rel(path),
                        f"not an image file type ({path.suffix or 'no extension'}); "
                        f"cnnlab reads {', '.join(sorted(IMAGE_EXTENSIONS))}",
                    )
                )

    visit(folder)
    return found


# ---------------------------------------------------------------- folders
def split_folders(root: Path) -> dict[str, Path] | None:
    """{split: folder} when root's sub-folders are split names (train/, val/, test/...), else None."""
    dirs = [p for p in visible(root) if p.is_dir()]
    if not dirs or any(d.name.lower() not in SPLIT_NAMES for d in dirs):
        return None
    by_split: dict[str, Path] = {}
    for d in dirs:
        split = SPLIT_NAMES[d.name.lower()]
        if split in by_split:
            raise DataError(
                f"{root} has two folders for the {split} split ({by_split[split].name}/ and "
                f"{d.name}/); merge them or rename one"
            )
        by_split[split] = d
    if "train" not in by_split or not any(p.is_dir() for p in visible(by_split["train"])):
        return None  # e.g. a class that happens to be called "test": plain class folders
    return by_split


def _class_dirs(folder: Path, root: Path, roots: list[Path], problems: list[Problem]) -> list[Path]:
    out = []
    for p in visible(folder):
        rel = os.path.relpath(p, root).replace(os.sep, "/")
        if p.is_symlink() and not _inside(p.resolve(), roots):
            problems.append(_outside_problem(rel, p.resolve()))
        elif p.is_dir():
            out.append(p)
        else:
            problems.append(Problem(rel, "not inside a class folder; move it into one"))
    return out


def read_folders(root: Path) -> Layout:
    """The entries of a class-folder or split-folder data set (train/ val/ test/ of classes)."""
    roots = allowed_roots(root)
    entries = visible(root)
    if not entries:
        raise DataError(f"{root} is empty; put one sub-folder of images per class in it")
    splits = split_folders(root)
    layout = Layout(root, "folders" if splits else "random")
    if splits is None:
        class_dirs = _class_dirs(root, root, roots, layout.problems)
        if not class_dirs:
            raise DataError(
                f"{root} has no class folders; put each class's images in its own sub-folder "
                f"(e.g. {root.name}/cat/1.jpg, {root.name}/dog/1.jpg)"
            )
        for d in class_dirs:
            layout.entries += [
                Entry(f, d.name) for f in walk_images(d, root, roots, layout.problems)
            ]
        return layout
    for p in entries:
        if not p.is_dir():
            layout.problems.append(Problem(p.name, "not inside a split folder; move it into one"))
    for split, folder in sorted(splits.items(), key=lambda kv: SPLITS.index(kv[0])):
        if not any(p.is_dir() for p in visible(folder)):
            layout.warnings.append(
                f"{folder.name}/ holds no class folders (unlabelled images?), so it is not used; "
                f"the {split} split is carved from train instead"
            )
            continue
        loose: list[Problem] = []
        for d in _class_dirs(folder, root, roots, loose):
            layout.entries += [
                Entry(f, d.name, split) for f in walk_images(d, root, roots, layout.problems)
            ]
        layout.problems += loose
    return layout
