"""docs/CONTRACTS.md against the code: a row per module, names that exist, signatures as written."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| (`[a-z_]+`(?: / `[a-z_]+`)*) \| [^|]+ \| (.+) \|$", re.M)


def plain_signature(obj) -> str:
    """Parameters as the doc writes them: names, `name=default`, `*` before keyword-only ones."""
    out, keyword_only = [], False
    for p in inspect.signature(obj).parameters.values():
        if p.name in ("self", "cls"):  # a method read from its class
            continue
        if p.kind is p.VAR_POSITIONAL:
            out.append(f"*{p.name}")
            keyword_only = True
            continue
        if p.kind is p.VAR_KEYWORD:
            out.append(f"**{p.name}")
            continue
        if p.kind is p.KEYWORD_ONLY and not keyword_only:
            out.append("*")
            keyword_only = True
        out.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    return ", ".join(out)


def _rows() -> dict[tuple[str, ...], list[str]]:
    text = (ROOT / "docs" / "CONTRACTS.md").read_text()
    return {
        tuple(re.findall(r"`([a-z_]+)`", modules)): re.findall(r"`([^`]+)`", names)
        for modules, names in ROW.findall(text)
    }


def _resolve(modules: tuple[str, ...], dotted: str, owner: object | None):
    """The object a documented name refers to, in one of the row's modules (or `.x` on owner)."""
    if dotted.startswith("."):
        return getattr(owner, dotted[1:])
    for name in modules:
        obj = importlib.import_module(f"cnnlab.{name}")
        try:
            for part in dotted.split("."):
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            continue
    raise AssertionError(f"{dotted} is in none of cnnlab.{', cnnlab.'.join(modules)}")


def test_every_module_has_a_row() -> None:
    documented = {m for modules in _rows() for m in modules}
    modules = {p.stem for p in (ROOT / "cnnlab").glob("*.py") if not p.stem.startswith("_")}
    assert modules - documented == set(), "add these modules to docs/CONTRACTS.md"
    assert documented - modules == set(), "these documented modules do not exist"


def test_documented_names_exist_with_the_documented_signatures() -> None:
    wrong = []
    for modules, names in _rows().items():
        owner = None
        for entry in names:
            m = re.fullmatch(r"([A-Za-z_.][\w.]*)(?:\((.*)\))?", entry)
            assert m, f"cannot read {entry!r} in the row of {modules}"
            obj = _resolve(modules, m.group(1), owner)
            if not m.group(1).startswith("."):
                owner = obj.__self__ if inspect.ismethod(obj) else _owner(modules, m.group(1))
            if m.group(2) is not None:
                actual = plain_signature(obj)
                if actual != m.group(2):
                    wrong.append(f"{m.group(1)}({m.group(2)}) is really {m.group(1)}({actual})")
    assert wrong == [], "update docs/CONTRACTS.md:\n" + "\n".join(wrong)


def _owner(modules: tuple[str, ...], dotted: str):
    """For `Class.method`, the class (so a following `.other` is looked up on it)."""
    head, _, _ = dotted.rpartition(".")
    return _resolve(modules, head, None) if head else None
