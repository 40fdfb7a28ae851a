"""The docs: a strict MkDocs build (a broken link, a missing page or anchor fails it), every `make` target and `korasr`
subcommand named on some page, no page naming one that does not exist, and each page starting from its command."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

DOCS = ROOT / "docs"
# A target with a help line, as `make help` finds it.
HELP_LINE = re.compile(r"^([a-z][a-zA-Z_-]*):.*## ", re.MULTILINE)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`([^`]+)`")
COMMENT = re.compile(r"(?:^|\s)#\s.*$", re.MULTILINE)
WORD = r"[a-z][a-zA-Z0-9_-]*"
# a command as typed: at the start of a line or after a space or a path (.venv/bin/korasr), not `model=korasr`;
# `make bench-*` names a family, not a target
MAKE = re.compile(rf"(?:^|\s)make ({WORD})(?![\w*-])", re.MULTILINE)
KORASR = re.compile(rf"(?:^|[\s/])korasr((?: {WORD}(?![\w*-]))+)", re.MULTILINE)


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def docs_text() -> str:
    return "\n".join(page.read_text(encoding="utf-8") for page in pages())


def make_targets() -> set[str]:
    return set(HELP_LINE.findall((ROOT / "Makefile").read_text(encoding="utf-8")))


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """A parser's subcommands by name (none for a leaf)."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def korasr_commands() -> set[str]:
    """Every command path a user types after `korasr`: 'train', 'lm build', 'prepare kspon', ..."""
    from korasr.cli import build_parser

    found: set[str] = set()

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        for name, sub in subcommands(parser).items():
            found.add(" ".join((*path, name)))
            walk(sub, (*path, name))

    walk(build_parser(), ())
    return found


def code(text: str) -> list[str]:
    """The fenced blocks (less their shell comments) and inline code spans of a Markdown text: where commands are
    written."""
    blocks = [COMMENT.sub("", block) for block in FENCE.findall(text)]
    return blocks + CODE_SPAN.findall(FENCE.sub("", text))


def mentions(text: str, prefix: str, name: str) -> bool:
    return re.search(rf"\b{prefix} {re.escape(name)}(?![\w-])", text) is not None


def test_the_site_builds_strict(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(site)],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for page in pages():
        stem = page.relative_to(DOCS).with_suffix("")
        built = site / ("index.html" if stem.name == "index" else stem / "index.html")
        assert built.is_file(), f"{page.relative_to(ROOT)} did not become a page"
    # the repository's own pages the docs link to, rendered beside them
    assert (site / "repo" / "recipes" / "kspon" / "index.html").is_file()
    assert (site / "repo" / "bench" / "index.html").is_file()


def test_every_make_target_is_documented():
    targets = make_targets()
    assert {"help", "setup", "test", "train", "docs"} <= targets
    text = docs_text()
    missing = sorted(t for t in targets if not mentions(text, "make", t))
    assert not missing, f"make targets no page in docs/ names (as `make TARGET`): {missing}"


def test_every_korasr_subcommand_is_documented():
    commands = korasr_commands()
    assert {"train", "serve", "lm build", "prepare kspon"} <= commands
    text = docs_text()
    missing = sorted(c for c in commands if not mentions(text, "korasr", c))
    assert not missing, f"korasr subcommands no page in docs/ names (as `korasr COMMAND`): {missing}"


def test_the_docs_name_only_targets_and_subcommands_that_exist():
    from korasr.cli import build_parser

    targets, root = make_targets(), build_parser()
    wrong = []
    for page in [*pages(), ROOT / "README.md"]:
        for snippet in code(page.read_text(encoding="utf-8")):
            wrong += [f"{page.name}: make {t}" for t in MAKE.findall(snippet) if t not in targets]
            for words in KORASR.findall(snippet):
                parser, path = root, []
                for word in words.split():
                    choices = subcommands(parser)
                    if not choices:
                        break
                    if word not in choices:
                        wrong.append(f"{page.name}: korasr {' '.join([*path, word])}")
                        break
                    parser, path = choices[word], [*path, word]
    assert not wrong, f"commands the docs name that do not exist: {sorted(set(wrong))}"


def test_every_page_starts_from_its_command():
    for page in pages():
        text = page.read_text(encoding="utf-8")
        body = text.split("\n", 1)[1].lstrip("\n") if text.startswith("# ") else ""
        assert body.startswith("```"), f"{page.relative_to(ROOT)}: a title, then the command in a code block"
