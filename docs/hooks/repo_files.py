"""MkDocs hook: the repository's own Markdown (recipes/, bench/README.md, ...) joins the site, linked as on GitHub.

A page links to a file outside docs/ by its path in the repository (`../recipes/kspon/README.md`), the link GitHub
follows. MkDocs knows only the files inside docs_dir and, with --strict, fails on such a link. So every relative link
of every page is followed to the file it names on disk; a file inside the repository but outside docs/ joins the
site, Markdown rendered and anything else copied, and so do the files it links to in turn. They are published under
repo/ (recipes/kspon/README.md at repo/recipes/kspon/), where no docs page can be. Their own links back into docs/
(`../../docs/train.md`) become docs-absolute links (`/train.md`), which MkDocs resolves and checks under
`validation.links.absolute_links: relative_to_docs`. A link to a file that does not exist is left as it is, so the
strict build still fails on it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from mkdocs.structure.files import File, Files, InclusionLevel

# an inline link or image: [text](target "title"), ![alt](<target>)
LINK = re.compile(r"(\]\(\s*<?)([^)\s>]+)(>?(?:\s+\"[^\"]*\")?\s*\))")
PUBLISHED_UNDER = "repo"


def _relative_path(url: str) -> str | None:
    """The file path of a relative link, or None for a URL, an absolute path or an anchor on the same page."""
    parts = urlsplit(url)
    if parts.scheme or parts.netloc or not parts.path or parts.path.startswith("/"):
        return None
    return unquote(parts.path)


def _repo_file(page: Path, url: str, repo: Path, docs: Path, site: Path) -> Path | None:
    """The existing repository file outside docs/ (and the built site) that ``url`` on ``page`` names, if any."""
    path = _relative_path(url)
    if path is None:
        return None
    target = Path(os.path.normpath(page.parent / path))
    if not target.is_relative_to(repo) or target.is_relative_to(docs) or target.is_relative_to(site):
        return None
    if ".git" in target.relative_to(repo).parts or not target.is_file():
        return None
    return target


def on_files(files: Files, config) -> Files:  # type: ignore[no-untyped-def]
    docs = Path(config.docs_dir).resolve()
    repo = Path(config.config_file_path).resolve().parent
    site = Path(config.site_dir).resolve()
    todo = [Path(f.abs_src_path) for f in files.documentation_pages() if f.abs_src_path]
    added: set[Path] = set()
    while todo:
        page = todo.pop()
        for match in LINK.finditer(page.read_text(encoding="utf-8")):
            target = _repo_file(page, match.group(2), repo, docs, site)
            if target is None or target in added:
                continue
            added.add(target)
            in_repo = target.relative_to(repo).as_posix()
            published = File(f"{PUBLISHED_UNDER}/{in_repo}", None, config.site_dir, config.use_directory_urls)
            # src_uri relative to docs/ (`../recipes/...`), so that a page's link resolves to it as written
            src_uri = Path(os.path.relpath(target, docs)).as_posix()
            files.append(File(src_uri, config.docs_dir, config.site_dir, config.use_directory_urls,
                              dest_uri=published.dest_uri, inclusion=InclusionLevel.NOT_IN_NAV))  # fmt: skip
            if target.suffix == ".md":
                todo.append(target)
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:  # type: ignore[no-untyped-def]
    if not page.file.src_uri.startswith("../"):
        return markdown
    docs = Path(config.docs_dir).resolve()
    here = Path(page.file.abs_src_path).parent

    def into_docs(match: re.Match) -> str:
        path = _relative_path(match.group(2))
        target = Path(os.path.normpath(here / path)) if path is not None else None
        if target is None or not target.is_relative_to(docs):
            return match.group(0)
        anchor = urlsplit(match.group(2)).fragment
        url = "/" + target.relative_to(docs).as_posix() + (f"#{anchor}" if anchor else "")
        return match.group(1) + url + match.group(3)

    return LINK.sub(into_docs, markdown)
