"""A labels CSV as a data set layout: a header row naming the image column (a path or an id) and
the label column, optionally a split column, then one row per image.

The file is read one row at a time (a big CSV is never held whole), in the encoding its bytes say
(UTF-16, UTF-8, then Latin-1). Each row's file is resolved and checked against the allowed folders
before any existence check, so a row cannot probe which server files exist; a row's problem is
listed (the first MAX_LISTED_ROW_PROBLEMS) or counted.
"""

from __future__ import annotations

import codecs
import csv
import logging
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from . import reach
from .errors import DataError
from .layouts import (
    IMAGE_EXTENSIONS,
    SPLIT_NAMES,
    Entry,
    Layout,
    Problem,
    allowed_roots,
    walk_images,
)

log = logging.getLogger(__name__)

PATH_COLUMNS = ("path", "file", "filename", "file_name", "image", "image_id", "id")
LABEL_COLUMNS = ("label", "class", "category", "target")
SPLIT_COLUMNS = ("split", "subset", "set")
MAX_CSV_BYTES = 256 * 1024**2

# One text for every CSV row whose file lies outside the data folders, whether it exists, is a
# link or not: which server files exist must not show.
_OUTSIDE_ROW = (
    "outside the allowed data folders (the CSV's folder, its images folder and "
    "CNNLAB_DATA_ROOTS); copy the image into the data set or add its folder to CNNLAB_DATA_ROOTS"
)


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
    f: TextIO, csv_path: Path, path_column: str, label_column: str, images: str
) -> Layout:
    """read_csv on an open text stream: one row at a time (a big CSV is never held whole)."""
    name = csv_path.name
    stream = _rows(f, name)
    first = next(stream, None)
    if first is None:
        raise DataError(f"{name} is empty; it needs a header row and one row per image")
    header, i_path, i_label, i_split = _columns(first, path_column, label_column, name)
    base, roots = _images_folder(csv_path, images)
    layout = Layout(base, "csv" if i_split is not None else "random")
    problems = _RowProblems(layout.problems)
    files = _RowFiles(base, roots, problems)
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
        split = "" if i_split is None else _row_split(cells[i_split], n, ref, problems)
        if split is None:
            continue
        real = files.find(n, ref)
        if real is not None:
            layout.entries.append(Entry(Path(real), label, split, n))
    problems.close()
    if not layout.entries:
        raise DataError(
            f"{name}: none of its {n - 1} rows names a usable image file under {base}; "
            "check the path column or give the images folder with --images"
        )
    return layout


def _rows(f: TextIO, name: str) -> Iterator[list[str]]:
    """The non-blank rows in the file's sniffed dialect; a malformed one is a one-line DataError
    naming its line."""
    sample = f.read(8192)
    f.seek(0)
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel  # one column, or nothing that looks delimited: checked by _columns
    reader = csv.reader(f, dialect)
    try:
        for row in reader:
            if any(c.strip() for c in row):
                yield row
    except csv.Error as exc:
        raise DataError(f"{name} line {reader.line_num}: {exc}; fix that row") from exc


def _columns(
    first: list[str], path_column: str, label_column: str, name: str
) -> tuple[list[str], int, int, int | None]:
    """(header, image column, label column, split column or None) from the header row."""
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
    return header, i_path, i_label, i_split


def _images_folder(csv_path: Path, images: str) -> tuple[Path, list[Path]]:
    """(the folder rows are relative to, the folders their files may resolve into)."""
    base = Path(images).expanduser().resolve() if images else csv_path.parent.resolve()
    if not base.is_dir():
        raise DataError(f"the images folder {base} does not exist; check --images")
    roots = allowed_roots(base, csv_path.parent)
    if reach.visitor_rules():  # the data roots hold other users' uploads: a visitor's CSV reads
        roots = [base]  # only its own images folder (or, without one, the CSV's own folder)
    return base, roots


def _row_split(raw: str, n: int, ref: str, problems: _RowProblems) -> str | None:
    """The split a row's split cell names ("" when blank), or None with the row's problem added."""
    split = SPLIT_NAMES.get(raw.strip().lower(), "")
    if raw.strip() and not split:
        problems.add("unknown split (use train/val/test)", n, ref,
                     f"unknown split {raw!r} (use train/val/test)")  # fmt: skip
        return None
    return split


class _RowFiles:
    """The image file each row names: resolved inside the allowed folders, each file once."""

    def __init__(self, base: Path, roots: list[Path], problems: _RowProblems) -> None:
        self.base, self.roots, self.problems = base, roots, problems
        self.base_str = str(base)
        self.inside = _inside_test(roots)
        self.index: dict[str, Path | None] | None = None  # built on the first row that needs it
        self.seen: dict[str, int] = {}  # real path -> the row that named it first
        self.real_dirs: dict[str, str] = {}
        self.missing = f"no such image file under {base} (check the path or --images)"

    def find(self, n: int, ref: str) -> str | None:
        """The real path of the image row n names, or None with the row's problem added."""
        key = ref.replace("\\", "/")
        real = _real_path(os.path.join(self.base_str, key), self.real_dirs)
        if real is None or not self.inside(real):  # before any existence check: no probing
            self.problems.add(_OUTSIDE_ROW, n, ref)
            return None
        named = real
        real, is_file = _file_kind(named)
        if real != named and not self.inside(real):  # a link leading outside
            self.problems.add(_OUTSIDE_ROW, n, ref)
            return None
        if not is_file:  # an id without extension, or a path under a wrapper folder
            found = self._indexed(n, ref, key)
            if found is None:
                return None
            real = found
        if real in self.seen:
            self.problems.add("the same file as an earlier row", n, ref,
                              f"the same file as row {self.seen[real]}")  # fmt: skip
            return None
        self.seen[real] = n
        return real

    def _indexed(self, n: int, ref: str, key: str) -> str | None:
        """The real path of the indexed image key names, or None with the row's problem added."""
        if self.index is None:
            self.index = _image_index(self.base, self.roots)
        stem, ext = os.path.splitext(key)
        if ext.lower() in IMAGE_EXTENSIONS:
            key = stem
        found = self.index.get(key) or self.index.get(key.rsplit("/", 1)[-1])
        if found is None:
            self.problems.add(self.missing, n, ref)
            return None
        real = str(found.resolve())
        if not self.inside(real):
            self.problems.add(_OUTSIDE_ROW, n, ref)
            return None
        return real
