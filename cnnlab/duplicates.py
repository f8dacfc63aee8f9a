"""Duplicate pictures: exact copies (same decoded pixels) and near copies (same small picture).

`fingerprints` runs while `data.scan` verifies each file (the pixels are decoded then anyway) and
is cached with the verification results, so a second scan costs nothing. Exact copies share a hash
of the decoded pixels; near copies (re-saved, resized, recompressed) have 144-bit difference
hashes (dHash) at most 3 bits apart and mean colours within 24 levels.
Candidates come from hash slices, never all pairs, so grouping stays cheap on 100k images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

# Side of the difference hash and the bits two copies may differ by, measured on 120 resized and
# re-encoded JPEG copies of smooth pictures, 300 distinct smooth pictures and the 1,797 demo
# digits (8x8 originals, so many look alike): 8x8 bits, exact match: 72 digit groups; 12x12,
# <= 3 bits (kept): 115/120 copies found, 0 false groups, 52 digit groups (2 across labels);
# 16x16, <= 3 bits: 82/120 copies found.
DHASH = 12
BANDS = 4  # dHash slices used to find candidates
MAX_BITS = 3  # differing dHash bits still counted as the same picture (must stay < BANDS)
MAX_COLOUR = 24  # mean colour difference (0-255, per channel) still counted as the same picture
MAX_BUCKET = 200  # candidates sharing one slice above which that slice is skipped
MIN_SHAPE = 1 / 16  # share of rising (or falling) steps below which a picture counts as flat


@dataclass(frozen=True)
class Group:
    members: list[int]  # indexes into ScanResult.files, sorted
    kind: str  # "exact" when every member has the same pixels, else "near"


def fingerprints(im: Image.Image) -> tuple[str, str]:
    """(exact, near) keys of a loaded image: a hash of its pixels, and dHash + mean colour.

    PIL does the resizing and the grey conversion (ITU-R 601 weights); numpy only compares 156
    bytes: the whole thing costs a fraction of the decode it follows.
    """
    exact = hashlib.blake2b(f"{im.mode}{im.size}".encode(), digest_size=12)
    exact.update(im.tobytes())
    rgb = im if im.mode == "RGB" else im.convert("RGB")
    small = rgb.resize((DHASH + 1, DHASH), Image.Resampling.BILINEAR)
    gray = np.frombuffer(small.convert("L").tobytes(), np.uint8).reshape(DHASH, DHASH + 1)
    rising = gray[:, 1:] > gray[:, :-1]
    share = np.count_nonzero(rising) / rising.size
    if not MIN_SHAPE <= share <= 1 - MIN_SHAPE:
        # a (nearly) flat or plain-gradient picture has no shape to compare: every flat red
        # square would be a "copy" of every other, so only exact copies count for it
        return exact.hexdigest(), ""
    r, g, b = small.resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
    return exact.hexdigest(), f"{np.packbits(rising).tobytes().hex()}-{r:02x}{g:02x}{b:02x}"


def find_groups(exact: Sequence[str], near: Sequence[str]) -> list[Group]:
    """Groups of 2+ files that are copies: same pixels, or near keys at most MAX_BITS apart.

    Candidates come from exact matches of one of BANDS slices of the dHash (two hashes within
    MAX_BITS < BANDS differing bits always share a slice), so no all-pairs comparison is made.
    """
    parent = list(range(len(exact)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        parent[find(i)] = find(j)

    first: dict[str, int] = {}
    for i, key in enumerate(exact):
        if key in first:
            union(i, first[key])
        else:
            first[key] = i
    bits: dict[int, tuple[int, bytes]] = {}
    buckets: dict[tuple[int, str], list[int]] = {}
    for i, key in enumerate(near):
        if not key:
            continue
        hex_bits, colour = key.split("-")
        bits[i] = (int(hex_bits, 16), bytes.fromhex(colour))
        width = -(-len(hex_bits) // BANDS)
        for band in range(BANDS):
            buckets.setdefault((band, hex_bits[band * width : (band + 1) * width]), []).append(i)
    for members in buckets.values():
        if len(members) < 2 or len(members) > MAX_BUCKET:
            continue  # a huge bucket is a common pattern, not copies: too costly to compare
        for a, i in enumerate(members):
            for j in members[a + 1 :]:
                if find(i) != find(j) and _close(bits[i], bits[j]):
                    union(i, j)
    by_root: dict[int, list[int]] = {}
    for i in range(len(exact)):
        by_root.setdefault(find(i), []).append(i)
    groups = []
    for members in by_root.values():
        if len(members) > 1:
            kind = "exact" if len({exact[i] for i in members}) == 1 else "near"
            groups.append(Group(members, kind))
    groups.sort(key=lambda g: g.members[0])
    return groups


def _close(a: tuple[int, bytes], b: tuple[int, bytes]) -> bool:
    """Same picture: dHashes at most MAX_BITS apart and mean colours within MAX_COLOUR."""
    if (a[0] ^ b[0]).bit_count() > MAX_BITS:
        return False
    return max(abs(x - y) for x, y in zip(a[1], b[1], strict=True)) <= MAX_COLOUR


def conflicting(group: Group, labels: Sequence[int]) -> bool:
    """True when a group's copies carry different labels: a likely labelling error."""
    return len({labels[i] for i in group.members}) > 1


def across_splits(groups: Sequence[Group], given: Sequence[str]) -> list[Group]:
    """The groups whose copies sit in different given splits (train and test, say): a copy the
    model trains on is then scored again, inflating that split's accuracy."""
    if not given:
        return []  # random splits keep every group in one split
    return [g for g in groups if len({given[i] or "train" for i in g.members}) > 1]


def dropped(
    groups: Sequence[Group],
    labels: Sequence[int],
    given: Sequence[str],
    drop_duplicates: bool,
    drop_conflicts: bool,
) -> set[int]:
    """Indexes to leave out: every copy in a label conflict, and/or all but one copy of a group.

    The copy kept is the one in the given test split, else val, else train (so a copy in both
    train and test leaves train), then the first by path.
    """
    out: set[int] = set()
    rank = {"test": 0, "val": 1, "train": 2, "": 3}
    for g in groups:
        if drop_conflicts and conflicting(g, labels):
            out.update(g.members)
            continue
        if drop_duplicates:
            keep = min(g.members, key=lambda i: (rank[given[i] if given else ""], i))
            out.update(i for i in g.members if i != keep)
    return out


def describe(
    groups: Sequence[Group],
    paths: Sequence[str],
    class_of: Sequence[str],
    split_of: dict[int, str],
) -> list[dict]:
    """`inspect --json`'s "duplicates": per group its paths, classes and splits (one per path)."""
    out = []
    for g in groups:
        classes = [class_of[i] for i in g.members]
        out.append(
            {
                "paths": [paths[i] for i in g.members],
                "classes": classes,
                "splits": [split_of.get(i, "") for i in g.members],
                "kind": g.kind,
                "label_conflict": len(set(classes)) > 1,
            }
        )
    return out
