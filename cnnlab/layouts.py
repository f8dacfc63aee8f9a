"""How a data set is laid out on disk: class folders, split folders, or a CSV of labels.

`read_layout` turns a folder, a .zip or a .csv into a flat list of (file, class, given split)
entries plus the problems met on the way; `data.scan` then verifies every file. Every entry is
resolved and checked against the allowed folders (the data set's own folder plus
CNNLAB_DATA_ROOTS), so a link nested inside a data set cannot read files from elsewhere.
"""

from __future__ import annotations

import codecs
import csv
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import reach, workspace
from .archive import extract_zip_cached
from .config import SPLITS
from .errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
IGNORED_NAMES = frozenset({"__macosx", ".ds_store", "thumbs.db", "desktop.ini"})
# folder names (any case) that mean "this folder is a split", and the split each one means
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val",
               "validation": "val", "test": "test", "testing": "test"}  # fmt: skip
PATH_COLUMNS = ("path", "file", "filename", "file_name", "image", "image_id", "id")
LABEL_COLUMNS = ("label", "class", "category", "target")
SPLIT_COLUMNS = ("split", "subset", "set")
MAX_CSV_BYTES = 256 * 1024**2

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


# One text for every CSV row whose file lies outside the data folders, whether it exists, is a
# link or not: which server files exist must not show.
_OUTSIDE_ROW = (
    "outside the allowed data folders (the CSV's folder, its images folder and "
    "CNNLAB_DATA_ROOTS); copy the image into the data set or add its folder to CNNLAB_DATA_ROOTS"
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


def _read_folders(root: Path) -> Layout:
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


# ---------------------------------------------------------------- CSV
# A cell may be long (a description, an inline thumbnail): csv's default limit of 131,072
# characters made such a file a traceback. The limit is process-wide; only ever raised here.
MAX_FIELD_CHARS = 64 * 1024**2


def _encodings(csv_path: Path) -> list[str]:
    """The encodings to read csv_path with, in order: UTF-16 when its BOM or its NUL pattern
    says so (spreadsheets' "Unicode text"), else UTF-8 (BOM or not), then Latin-1."""
    try:
        size = csv_path.stat().st_size
        if size > MAX_CSV_BYTES:
            raise DataError(f"{csv_path.name} is {size:,} bytes, over the {MAX_CSV_BYTES:,} limit")
        with csv_path.open("rb") as f:
            head = f.read(65536)
    except OSError as exc:
        raise DataError(f"{csv_path} cannot be read ({exc.strerror or exc})") from exc
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return ["utf-16"]
    if b"\x00" in head:
        even, odd = head[0::2].count(0), head[1::2].count(0)  # ASCII text in UTF-16: every
        if odd > len(head) // 4 and even == 0:  # other byte is NUL, on one side
            return ["utf-16-le"]
        if even > len(head) // 4 and odd == 0:
            return ["utf-16-be"]
        raise DataError(f"{csv_path.name} is not a CSV text file (it holds binary data)")
    return ["utf-8-sig", "latin-1"]


def _pick(header: list[str], given: str, names: tuple[str, ...], what: str, flag: str,
          csv_name: str) -> int:  # fmt: skip
    lowered = [h.strip().lower() for h in header]
    if given:
        if given.strip().lower() not in lowered:
            raise DataError(
                f"{csv_name} has no column {given!r} ({flag}); its columns are {', '.join(header)}"
            )
        return lowered.index(given.strip().lower())
    for name in names:
        if name in lowered:
            return lowered.index(name)
    raise DataError(
        f"{csv_name} has no {what} column (looked for {', '.join(names)}); its header is "
        f"{', '.join(header)} — name the column with {flag}"
    )


# A CSV of a million rows naming missing files is a million problems: listed whole they took
# gigabytes and minutes to build, print and show. The first ones are listed; the rest are
# counted per kind in one closing line each.
MAX_LISTED_ROW_PROBLEMS = 1000


class _RowProblems:
    """Collects a CSV's row problems: the first MAX_LISTED_ROW_PROBLEMS in full, then counts."""

    def __init__(self, into: list[Problem]) -> None:
        self.into = into
        self.listed = 0
        self.more: dict[str, list[int]] = {}  # kind -> [count, first row number]

    def add(self, kind: str, row: int, where: str, detail: str = "") -> None:
        """List "row N: kind" (or detail when given) for `where`, or count it once the list is
        full. detail is only formatted by the caller when cheap: most rows are counted."""
        if self.listed < MAX_LISTED_ROW_PROBLEMS:
            self.listed += 1
            self.into.append(Problem(where, f"row {row}: {detail or kind}"))
            return
        self.more.setdefault(kind, [0, row])[0] += 1

    def close(self) -> None:
        """Append one line per kind of problem that was counted, not listed."""
        for kind, (count, first) in self.more.items():
            self.into.append(
                Problem(
                    f"rows from {first}",
                    f"{count:,} more row(s) from row {first} on, not listed one by one: {kind}",
                    count,
                )
            )


def _inside_test(roots: list[Path]) -> Callable[[str], bool]:
    """_inside on resolved path strings: a prefix test (a million rows make Path.parents slow)."""
    prefixes = tuple(str(r) if str(r).endswith(os.sep) else str(r) + os.sep for r in roots)
    exact = {str(r) for r in roots}
    return lambda real: real in exact or real.startswith(prefixes)


def _real_path(path: str, real_dirs: dict[str, str]) -> str | None:
    """os.path.realpath(path) but for a link in its last part, with its folder's real path
    remembered (a million rows in a few folders resolve a few folders). None for a link loop."""
    head, tail = os.path.split(path)
    try:
        if tail in ("", ".", ".."):
            return os.path.realpath(path)
        real_head = real_dirs.get(head)
        if real_head is None:
            if len(real_dirs) > 10_000:  # one folder per row: keep the memory bounded
                real_dirs.clear()
            real_head = real_dirs[head] = os.path.realpath(head)
        return os.path.join(real_head, tail)
    except (OSError, ValueError):
        return None


def _file_kind(real: str) -> tuple[str, bool]:
    """(the file's real path, whether it is a regular file) with one lstat, following a link."""
    try:
        mode = os.lstat(real).st_mode
    except (OSError, ValueError):
        return real, False
    if stat.S_ISLNK(mode):
        real = os.path.realpath(real)
        return real, os.path.isfile(real)
    return real, stat.S_ISREG(mode)


def _image_index(folder: Path, roots: list[Path]) -> dict[str, Path | None]:
    """For ids without an extension: {relative path without suffix, or bare name: file}.

    A bare name found in two sub-folders maps to None (ambiguous: the id must give the folder).
    """
    index: dict[str, Path | None] = {}
    stems: dict[str, Path | None] = {}
    for f in walk_images(folder, folder, roots, []):  # non-image litter is no problem here
        key = os.path.relpath(f, folder).replace(os.sep, "/").rsplit(".", 1)[0]
        index.setdefault(key, f)
        stems[f.stem] = None if f.stem in stems and stems[f.stem] != f else f
    return {**stems, **index}


def read_csv(
    csv_path: Path, path_column: str = "", label_column: str = "", images: str = ""
) -> Layout:
    """Entries from a CSV with a header: image path (or id) and label columns, optional split."""
    name = csv_path.name
    csv.field_size_limit(max(csv.field_size_limit(), MAX_FIELD_CHARS))
    encodings = _encodings(csv_path)
    for encoding in encodings:
        try:
            with csv_path.open(encoding=encoding, newline="") as f:
                return _read_csv_rows(f, csv_path, path_column, label_column, images)
        except UnicodeDecodeError as exc:
            if encoding == encodings[-1]:
                raise DataError(f"{name} is not a CSV text file ({exc})") from exc
            log.info("%s is not %s: reading it again as %s", name, encoding, encodings[-1])
    raise AssertionError("unreachable: the last encoding returns or raises")


def _read_csv_rows(
    f, csv_path: Path, path_column: str, label_column: str, images: str
) -> Layout:  # fmt: skip
    """read_csv on an open text stream: one row at a time (a big CSV is never held whole)."""
    name = csv_path.name
    sample = f.read(8192)
    f.seek(0)
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel  # one column, or nothing that looks delimited: checked just below
    reader = csv.reader(f, dialect)

    def rows():
        """The non-blank rows; a malformed one is a one-line DataError naming its line."""
        try:
            for row in reader:
                if any(c.strip() for c in row):
                    yield row
        except csv.Error as exc:
            raise DataError(f"{name} line {reader.line_num}: {exc}; fix that row") from exc

    stream = rows()
    first = next(stream, None)
    if first is None:
        raise DataError(f"{name} is empty; it needs a header row and one row per image")
    header = [h.strip() for h in first]
    if len(header) < 2:
        raise DataError(
            f"{name} has one column ({header[0][:40]!r}); a labels CSV needs a header with an "
            "image column and a label column, e.g. 'path,label'"
        )
    i_path = _pick(header, path_column, PATH_COLUMNS, "image path", "--path-column", name)
    i_label = _pick(header, label_column, LABEL_COLUMNS, "label", "--label-column", name)
    if i_path == i_label:
        raise DataError(f"{name}: the image and label columns are the same ({header[i_path]!r})")
    lowered = [h.lower() for h in header]
    i_split = next((lowered.index(s) for s in SPLIT_COLUMNS if s in lowered), None)
    base = Path(images).expanduser().resolve() if images else csv_path.parent.resolve()
    if not base.is_dir():
        raise DataError(f"the images folder {base} does not exist; check --images")
    roots = allowed_roots(base, csv_path.parent)
    if reach.visitor_rules():  # the data roots hold other users' uploads: a visitor's CSV reads
        roots = [base]  # only its own images folder (or, without one, the CSV's own folder)
    layout = Layout(base, "csv" if i_split is not None else "random")
    problems = _RowProblems(layout.problems)
    index: dict[str, Path | None] | None = None
    seen: dict[str, int] = {}
    real_dirs: dict[str, str] = {}
    inside = _inside_test(roots)
    base_str = str(base)
    missing = f"no such image file under {base} (check the path or --images)"
    n = 1
    for n, row in enumerate(stream, 2):
        cells = row + [""] * (len(header) - len(row))
        ref, label = cells[i_path].strip(), cells[i_label].strip()
        if not ref:
            problems.add("empty image path", n, f"row {n}")
            continue
        if not label:
            problems.add("empty label", n, ref)
            continue
        split = ""
        if i_split is not None:
            raw_split = cells[i_split].strip().lower()
            split = SPLIT_NAMES.get(raw_split, "")
            if raw_split and not split:
                problems.add("unknown split (use train/val/test)", n, ref,
                             f"unknown split {cells[i_split]!r} (use train/val/test)")  # fmt: skip
                continue
        key = ref.replace("\\", "/")
        real = _real_path(os.path.join(base_str, key), real_dirs)
        if real is None or not inside(real):  # before any existence check: no probing
            problems.add(_OUTSIDE_ROW, n, ref)
            continue
        named = real
        real, is_file = _file_kind(named)
        if real != named and not inside(real):  # a link leading outside
            problems.add(_OUTSIDE_ROW, n, ref)
            continue
        if not is_file:  # an id without extension, or a path under a wrapper folder
            if index is None:
                index = _image_index(base, roots)
            stem, ext = os.path.splitext(key)
            if ext.lower() in IMAGE_EXTENSIONS:
                key = stem
            found = index.get(key) or index.get(key.rsplit("/", 1)[-1])
            if found is None:
                problems.add(missing, n, ref)
                continue
            real = str(found.resolve())
            if not inside(real):
                problems.add(_OUTSIDE_ROW, n, ref)
                continue
        if real in seen:
            problems.add("the same file as an earlier row", n, ref,
                         f"the same file as row {seen[real]}")  # fmt: skip
            continue
        seen[real] = n
        layout.entries.append(Entry(Path(real), label, split, n))
    problems.close()
    if not layout.entries:
        raise DataError(
            f"{name}: none of its {n - 1} rows names a usable image file under {base}; "
            "check the path column or give the images folder with --images"
        )
    return layout


def read_layout(
    path: str | Path,
    progress: Progress | None = None,
    *,
    path_column: str = "",
    label_column: str = "",
    images: str = "",
) -> Layout:
    """The entries of a class-folder / split-folder data set, a .zip of one, or a labels .csv."""
    root = resolve_dataset(path, progress)
    if root.is_file():
        return read_csv(root, path_column, label_column, images)
    if path_column or label_column or images:
        raise DataError(
            f"{root} is a folder; --path-column, --label-column and --images only apply to a .csv"
        )
    return _read_folders(root)
