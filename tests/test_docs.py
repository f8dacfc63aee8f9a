"""The docs match the code: no links to files outside the repo; the CLI list names every command."""

from __future__ import annotations

import re
from pathlib import Path

from cnnlab import cli_parser

ROOT = Path(__file__).resolve().parents[1]
TEXT_FILES = [
    *ROOT.glob("*.md"),
    *(ROOT / "docs").glob("*.md"),
    *(ROOT / "cnnlab").glob("*.py"),
    *(ROOT / "pages").glob("*.py"),
    ROOT / "app.py",
    ROOT / "server.py",
]


def test_no_reference_to_files_outside_the_repo() -> None:
    outside = re.compile(r"/work/|shared notes|notes/[a-z]+\.md|HELPERS\.md|ARCHITECTURE\.md")
    hits = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in TEXT_FILES
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if outside.search(line)
    ]
    assert hits == []


def test_repo_paths_named_in_the_docs_exist() -> None:
    named = re.compile(r"`((?:docs|benchmarks|assets|tests|cnnlab|pages)/[\w./-]+\.\w+)`")
    missing = [
        f"{path.relative_to(ROOT)}: {m}"
        for path in TEXT_FILES
        for m in named.findall(path.read_text())
        if not (ROOT / m).exists()
    ]
    assert missing == []


def test_readme_command_list_names_every_command() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Command line", 1)[1].split("```", 2)[1]
    listed = set(re.findall(r"^cnnlab ([a-z-]+)", block, flags=re.M))
    subparsers = next(a for a in cli_parser.build_parser()._actions if a.dest == "command")
    assert set(subparsers.choices) <= listed, set(subparsers.choices) - listed
