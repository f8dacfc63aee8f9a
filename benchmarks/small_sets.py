"""Real small image sets built from material nobody here made: Debian's icon themes and emoji font.

Each set is a folder of class folders of 64 px RGBA PNGs (transparency kept, as the icons ship),
a few hundred images, 5-10 classes. Exact copies are kept once; a picture found under two classes
is left out (its label would be a coin toss). Sampling is seeded, so a set is the same every build.

    apt-get install papirus-icon-theme oxygen-icon-theme fonts-noto-color-emoji fonts-noto-core \
        unicode-data librsvg2-bin
    python benchmarks/small_sets.py /tmp/small_sets          # builds every set it can

Sets (the class is what the theme's authors filed the icon under):
- papirus: Papirus 48x48 contexts (apps, devices, emblems, mimetypes, places, status); SVG.
- oxygen: Oxygen 48x48 contexts (actions, apps, categories, devices, mimetypes, places, status); PNG.
- adwaita: Adwaita 48x48 contexts (actions, devices, emotes, legacy, mimetypes, places, status, ui).
- emoji: Noto Color Emoji by Unicode emoji group (smileys, people, animals, food, travel, ...).
- icon_kinds: what an icon shows (folder, battery, weather, volume, wireless, printer, trash,
  playback) across every icon theme installed (the themes above, plus breeze, elementary-xfce,
  numix, mate, tango and gnome-icon-theme where present): one idea in many styles.
- letters: which letter a-j (capital or small, as notMNIST) in every Latin face installed.
- hieroglyphs: Egyptian hieroglyphs by Gardiner category (man, birds, plants, buildings, ...).
- chess: which piece (pawn, knight, bishop, rook, queen, king), white or black, in 22 SVG piece
  sets and 18 chess fonts of pychess.
- scripts: which writing system a letter is in (Arabic, Armenian, Bengali, Devanagari, Ethiopic,
  Georgian, Hebrew, Thai), letters drawn by every Noto face of the script (fonts-noto-core).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SIDE = 64
PER_CLASS = 80  # at most, per class
MIN_CLASS = 20  # classes with fewer unique pictures are left out

ICON_SETS = {
    "papirus": ("/usr/share/icons/Papirus/48x48", None),
    "oxygen": ("/usr/share/icons/oxygen/base/48x48", None),
    "adwaita": ("/usr/share/icons/Adwaita/48x48", None),
}
NOTO = Path("/usr/share/fonts/truetype/noto")
# script -> (first, last) code point of its main Unicode block
SCRIPTS = {
    "arabic": (0x0620, 0x064A),
    "armenian": (0x0531, 0x0587),
    "bengali": (0x0985, 0x09B9),
    "devanagari": (0x0904, 0x0939),
    "ethiopic": (0x1200, 0x135A),
    "georgian": (0x10A0, 0x10FA),
    "hebrew": (0x05D0, 0x05EA),
    "thai": (0x0E01, 0x0E2E),
}
# pychess's piece sets (Debian's pychess; without its GUI dependencies:
# `apt-get download pychess && dpkg -x pychess_*.deb /tmp/pychess`, then --pychess /tmp/pychess)
PYCHESS = Path("/usr/share/pychess/pieces")
PIECES = {"p": "pawn", "n": "knight", "b": "bishop", "r": "rook", "q": "queen", "k": "king"}
VARIANT_SETS = {"sittuyin", "makruk", "kosal"}  # Burmese/Thai/Khmer chess: other pieces, same names
# chess fonts' letters (Marroquin's layout, which pychess's fonts share): white, then black
FONT_PIECES = dict(zip("pnbrqkomvtwl", "pnbrqk" * 2, strict=True))
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")


def _render_svg(path: Path) -> Image.Image:
    png = subprocess.run(
        ["rsvg-convert", "-w", str(SIDE), "-h", str(SIDE), "-a", str(path)],
        check=True,
        capture_output=True,
    ).stdout
    return _square(Image.open(io.BytesIO(png)).convert("RGBA"))


def _square(im: Image.Image) -> Image.Image:
    """Fit into a transparent SIDE x SIDE square, aspect kept (rsvg -a keeps it too)."""
    im = im.convert("RGBA")
    im.thumbnail((SIDE, SIDE), Image.LANCZOS)
    out = Image.new("RGBA", (SIDE, SIDE), (0, 0, 0, 0))
    out.paste(im, ((SIDE - im.width) // 2, (SIDE - im.height) // 2))
    return out


def _load_icon(path: Path) -> Image.Image | None:
    try:
        if path.suffix == ".svg":
            return _render_svg(path)
        return _square(Image.open(path))
    except (OSError, subprocess.CalledProcessError):
        return None


def _icon_candidates(root: Path) -> dict[str, list[Path]]:
    """Files per context folder, symlinks resolved (a link is a copy of its target)."""
    out: dict[str, list[Path]] = {}
    # a context folder that is a link (Papirus' categories -> apps) holds another's icons
    for context in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        files = {
            f.resolve()
            for f in context.rglob("*")
            if f.suffix in (".png", ".svg") and f.exists() and f.resolve().is_file()
        }
        out[context.name] = sorted(files)
    return out


def _emoji_candidates() -> dict[str, list[str]]:
    """Fully-qualified emoji per group, skin-tone and hair variants left out (copies by design)."""
    groups: dict[str, list[str]] = {}
    group = ""
    for line in EMOJI_TEST.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip().lower().replace(" & ", "_").replace(" ", "_")
            continue
        if not line or line.startswith("#") or "; fully-qualified" not in line:
            continue
        codes = [int(c, 16) for c in line.split(";", 1)[0].split()]
        if any(0x1F3FB <= c <= 0x1F3FF or 0x1F9B0 <= c <= 0x1F9B3 for c in codes):
            continue
        if group != "component":
            groups.setdefault(group, []).append("".join(chr(c) for c in codes))
    return groups


def _render_emoji(font: ImageFont.FreeTypeFont, text: str) -> Image.Image | None:
    canvas = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((10, 10), text, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None:
        return None
    return _square(canvas.crop(box))


def _digest(im: Image.Image) -> str:
    return hashlib.sha1(im.tobytes()).hexdigest()


def _write(name: str, pictures: dict[str, list[Image.Image]], out: Path) -> Path:
    """Keep one of each copy, drop copies filed under two classes, sample, save."""
    owners: dict[str, set[str]] = {}
    for cls, ims in pictures.items():
        for im in ims:
            owners.setdefault(_digest(im), set()).add(cls)
    target = out / name
    if target.exists():
        shutil.rmtree(target)
    rng = random.Random(0)
    for cls, ims in sorted(pictures.items()):
        seen: set[str] = set()
        unique = []
        for im in ims:
            d = _digest(im)
            if d in seen or len(owners[d]) > 1:
                continue
            seen.add(d)
            unique.append(im)
        if len(unique) < MIN_CLASS:
            continue
        rng.shuffle(unique)
        (target / cls).mkdir(parents=True)
        for i, im in enumerate(unique[:PER_CLASS]):
            im.save(target / cls / f"{cls}_{i:03d}.png")
    return target


def build_icons(name: str, out: Path) -> Path | None:
    """One icon-theme set, or None when the theme is not installed."""
    root = Path(ICON_SETS[name][0])
    if not root.is_dir():
        return None
    rng = random.Random(1)
    pictures: dict[str, list[Image.Image]] = {}
    for context, files in _icon_candidates(root).items():
        rng.shuffle(files)
        ims = []
        for f in files[: PER_CLASS * 3]:  # enough to survive de-duplication
            im = _load_icon(f)
            if im is not None:
                ims.append(im)
        pictures[context] = ims
    return _write(name, pictures, out)


def build_emoji(out: Path) -> Path | None:
    """The emoji set, or None when the font or Unicode's emoji-test.txt is missing."""
    if not (EMOJI_FONT.is_file() and EMOJI_TEST.is_file()):
        return None
    font = ImageFont.truetype(str(EMOJI_FONT), 109)  # a bitmap font: 109 is its only size
    rng = random.Random(2)
    pictures: dict[str, list[Image.Image]] = {}
    for group, chars in _emoji_candidates().items():
        rng.shuffle(chars)
        ims = [im for c in chars[: PER_CLASS * 2] if (im := _render_emoji(font, c)) is not None]
        pictures[group] = ims
    return _write("emoji", pictures, out)


def _script_fonts(script: str) -> list[Path]:
    """Every Noto face of a script (Sans, Serif, Kufi, Naskh, Rashi, Looped; each weight)."""
    key = script.capitalize()
    return sorted(
        f
        for f in NOTO.glob("*.ttf")
        if key in f.name and "Supplement" not in f.name and "UI" not in f.name
    )


def _render_glyph(font: ImageFont.FreeTypeFont, char: str) -> Image.Image | None:
    """One letter, dark on transparent, fitted into the square; None when the face lacks it."""
    canvas = Image.new("L", (200, 200), 0)
    ImageDraw.Draw(canvas).text((40, 40), char, font=font, fill=255)
    box = canvas.getbbox()
    if box is None:
        return None
    alpha = canvas.crop(box)
    side = int(max(alpha.size) * 1.15) + 2  # a margin, as a letter has on a page
    square = Image.new("L", (side, side), 0)
    square.paste(alpha, ((side - alpha.width) // 2, (side - alpha.height) // 2))
    square = square.resize((SIDE, SIDE), Image.LANCZOS)
    ink = Image.new("RGBA", (SIDE, SIDE), (20, 20, 20, 0))
    ink.putalpha(square)
    return ink


def build_scripts(out: Path) -> Path | None:
    """Script identification: single letters of 8 writing systems in every Noto face of each."""
    import unicodedata

    if not NOTO.is_dir():
        return None
    rng = random.Random(3)
    pictures: dict[str, list[Image.Image]] = {}
    for script, (first, last) in SCRIPTS.items():
        letters = [chr(c) for c in range(first, last + 1)
                   if unicodedata.category(chr(c)).startswith("L")]  # fmt: skip
        fonts = [ImageFont.truetype(str(f), 96) for f in _script_fonts(script)]
        pairs = [(f, ch) for f in fonts for ch in letters]
        rng.shuffle(pairs)
        ims = []
        notdef = {id(f): _digest(im) for f in fonts if (im := _render_glyph(f, "\uffff"))}
        for f, ch in pairs[: PER_CLASS * 2]:
            im = _render_glyph(f, ch)
            if im is not None and notdef.get(id(f)) != _digest(im):  # .notdef box: glyph missing
                ims.append(im)
        pictures[script] = ims
    return _write("scripts", pictures, out)


HIEROGLYPH_GROUPS = {  # Gardiner's sign list: the letter a sign's Unicode name starts with
    "A": "man",
    "D": "human_body",
    "E": "mammals",
    "F": "mammal_parts",
    "G": "birds",
    "M": "plants",
    "N": "sky_earth_water",
    "O": "buildings",
}


def build_hieroglyphs(out: Path) -> Path | None:
    """Egyptian hieroglyphs by Gardiner category (man, birds, plants, buildings, ...), as Noto
    Sans Egyptian Hieroglyphs draws them; the category comes from each sign's Unicode name."""
    import unicodedata

    face = NOTO / "NotoSansEgyptianHieroglyphs-Regular.ttf"
    if not face.is_file():
        return None
    font = ImageFont.truetype(str(face), 96)
    pictures: dict[str, list[Image.Image]] = {name: [] for name in HIEROGLYPH_GROUPS.values()}
    for code in range(0x13000, 0x1342F):
        sign = unicodedata.name(chr(code), "").removeprefix("EGYPTIAN HIEROGLYPH ")
        letters = re.match(r"([A-Z]+)\d", sign)
        group = HIEROGLYPH_GROUPS.get(letters.group(1)) if letters else None
        if group is None:
            continue
        im = _render_glyph(font, chr(code))
        if im is not None:
            pictures[group].append(im)
    return _write("hieroglyphs", pictures, out)


# what an icon shows, by its freedesktop name, whichever theme drew it
ICON_KINDS = {
    "folder": r"folder(-|$)",
    "battery": r"battery",
    "weather": r"weather-",
    "volume": r"audio-volume",
    "wireless": r"network-wireless",
    "printer": r"printer",
    "trash": r"user-trash",
    "playback": r"media-(playback|skip|seek)-",
}
PER_THEME = 8  # at most this many icons of a kind from one theme, so every theme is drawn
SKIP_THEMES = {"hicolor", "locolor", "default", "ePapirus", "ePapirus-Dark"}


def _best_file(files: list[Path]) -> Path:
    """The scalable SVG when there is one, else the largest raster."""

    def size(f: Path) -> int:
        sizes = [int(n) for n in re.findall(r"(\d+)x\d+", str(f))]
        return 10_000 if f.suffix == ".svg" else (max(sizes) if sizes else 0)

    return max(files, key=size)


def build_icon_kinds(out: Path, root: Path = Path("/usr/share/icons")) -> Path | None:
    """What an icon shows (folder, battery, weather, volume, ...), across every icon theme
    installed: the same idea in each theme's style."""
    if not root.is_dir():
        return None
    rng = random.Random(5)
    pictures: dict[str, list[Image.Image]] = {kind: [] for kind in ICON_KINDS}
    themes = [
        p
        for p in root.iterdir()
        if p.is_dir()
        and p.name not in SKIP_THEMES
        and not re.search(r"-(dark|darker|darkest|light)$", p.name, re.I)
    ]  # recolourings
    for theme in sorted(themes):
        by_name: dict[str, list[Path]] = {}
        for f in theme.rglob("*"):
            if f.suffix in (".png", ".svg") and f.is_file():
                by_name.setdefault(f.stem, []).append(f)
        for kind, pattern in ICON_KINDS.items():
            names = sorted(n for n in by_name if re.match(pattern, n))
            rng.shuffle(names)
            for name in names[:PER_THEME]:
                im = _load_icon(_best_file(by_name[name]))
                if im is not None:
                    pictures[kind].append(im)
    return _write("icon_kinds", pictures, out)


LETTERS = "abcdefghij"  # notMNIST's ten letters


def build_letters(out: Path) -> Path | None:
    """Which letter (a-j, capital or small, as notMNIST), in every Latin face installed: Noto
    Sans/Serif/Mono/Display, DejaVu, Liberation, each weight and slant."""
    faces = sorted(
        f
        for folder in ("noto", "dejavu", "liberation")
        for f in (NOTO.parent / folder).glob("*.ttf")
        if folder != "noto"
        or re.match(r"Noto(Sans|Serif|SansMono|SansDisplay|SerifDisplay)-", f.name)
    )
    if not faces:
        return None
    pictures: dict[str, list[Image.Image]] = {letter: [] for letter in LETTERS}
    for face in faces:
        font = ImageFont.truetype(str(face), 96)
        for letter in LETTERS:
            for char in (letter, letter.upper()):
                im = _render_glyph(font, char)
                if im is not None:
                    pictures[letter].append(im)
    return _write("letters", pictures, out)  # (_write samples across the faces)


def build_chess(out: Path, pieces: Path = PYCHESS) -> Path | None:
    """Chess piece type (6 classes), white and black, drawn by pychess's 22 SVG sets and 18 fonts."""
    if not pieces.is_dir():
        return None
    pictures: dict[str, list[Image.Image]] = {name: [] for name in PIECES.values()}
    for folder in sorted(p for p in pieces.iterdir() if p.is_dir() and p.name != "ttf"):
        if folder.name in VARIANT_SETS:
            continue
        for colour in "wb":
            for letter, name in PIECES.items():
                svg = folder / f"{colour}{letter}.svg"
                im = _load_icon(svg) if svg.is_file() else None
                if im is not None:
                    pictures[name].append(im)
    for ttf in sorted((pieces / "ttf").glob("*.ttf")):
        font = ImageFont.truetype(str(ttf), 96)
        blank = _render_glyph(font, "\uffff")
        for char, letter in FONT_PIECES.items():
            im = _render_glyph(font, char)
            if im is not None and (blank is None or _digest(im) != _digest(blank)):
                pictures[PIECES[letter]].append(im)
    return _write("chess", pictures, out)


def build_all(out: Path, pieces: Path = PYCHESS) -> dict[str, Path]:
    """Every set whose material is installed: {name: folder}."""
    out.mkdir(parents=True, exist_ok=True)
    built = {}
    for name in ICON_SETS:
        path = build_icons(name, out)
        if path is not None:
            built[name] = path
    builders = (("emoji", build_emoji), ("scripts", build_scripts),
                ("icon_kinds", build_icon_kinds), ("letters", build_letters),
                ("hieroglyphs", build_hieroglyphs),
                ("chess", lambda o: build_chess(o, pieces)))  # fmt: skip
    for name, build in builders:
        path = build(out)
        if path is not None:
            built[name] = path
    return built


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--pychess", type=Path, default=PYCHESS, help="pychess's pieces folder")
    args = parser.parse_args()
    built = build_all(args.out, args.pychess)
    for name, path in built.items():
        counts = {p.name: len(list(p.iterdir())) for p in sorted(path.iterdir())}
        print(f"{name}: {sum(counts.values())} images, {len(counts)} classes {counts}")
    return 0 if built else 1


if __name__ == "__main__":
    sys.exit(main())
