"""Checks of the built HTML book: no traceback, no warning and no path of the build machine reaches a page.

:func:`check_html` reads every page under a jupyter-book HTML directory and returns one line per problem:

- a **traceback** ("Traceback (most recent call last)", papermill's "An Exception was encountered");
- a **warning** printed by the code ("UserWarning", "DeprecationWarning", ... or any "Warning:" line);
- a **path of the build machine**: the repository root, the home directory, ``/root`` or the temporary
  directory, e.g. in a warning's file name or a figure's path;
- a **chapter numbered unlike its file**: the number jupyter-book gives ``book/chapters/NN_slug.html`` (in its
  title and the sidebar) must be NN, the number ``elr run NN`` takes.

What the authors wrote as example code (the chapters' code cells, and code blocks of the Markdown pages,
such as the intro's ``papermill /tmp/ch05.ipynb ...``) is not searched for ``/tmp``: there a path is an
example for the reader, not a leak. Everything else, outputs included, is.
"""
from __future__ import annotations

import html
import os
import re
import tempfile
from html.parser import HTMLParser
from pathlib import Path

ROOT = Path(os.environ.get("ELR_ROOT", Path(__file__).resolve().parent.parent))
TRACEBACKS = ("Traceback (most recent call last)", "An Exception was encountered")
_WARNING = re.compile(r"\b[A-Z][A-Za-z]*Warning\b(?=[:\s(]|$)|\bWarning:")
#: pages of the HTML directory that jupyter-book writes itself (search, index of terms)
_SKIP = {"search.html", "genindex.html", "py-modindex.html"}


def machine_paths(root: str | Path | None = None) -> list[str]:
    """The paths of this machine that must not appear on a page: the repository, home, /root, the temp dir."""
    paths = {str(Path(root or ROOT).resolve()), str(Path.home()), "/root", tempfile.gettempdir()}
    return sorted((p for p in paths if p and p not in ("/", ".")), key=len, reverse=True)


class _Text(HTMLParser):
    """The text of a page, split into what the authors wrote as code and everything else (outputs included).

    Each open element has a state: "output" inside a cell's output (searched in full), else "code" inside a
    cell's input or a highlighted code block, else "prose"; an element without a marker inherits its
    parent's state."""

    _VOID = {"br", "img", "hr", "meta", "link", "input", "col", "area", "base", "wbr", "source"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, str]] = []
        self.prose: list[str] = []
        self.code: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in self._VOID:
            return
        classes = (dict(attrs).get("class") or "").split()
        parent = self.stack[-1][1] if self.stack else "prose"
        if tag in ("script", "style"):
            state = "skip"
        elif parent in ("output", "skip"):
            state = parent
        elif "cell_output" in classes or any(c == "output" or c.startswith("output_") for c in classes):
            state = "output"
        elif "cell_input" in classes or any(c.startswith("highlight-") for c in classes):
            state = "code"
        else:
            state = parent
        self.stack.append((tag, state))

    def handle_endtag(self, tag):
        if tag in self._VOID or not any(t == tag for t, _ in self.stack):
            return  # a stray closing tag does not pop unrelated elements
        while self.stack and self.stack.pop()[0] != tag:
            pass

    def handle_data(self, data):
        state = self.stack[-1][1] if self.stack else "prose"
        if state != "skip":
            (self.code if state == "code" else self.prose).append(data)


_TITLE = re.compile(r"<title>\s*(\d+)\.\s", re.IGNORECASE)
_CHAPTER_FILE = re.compile(r"^book/chapters/(\d+)_[^/]+\.html$")


def number_problem(markup: str, name: str) -> list[str]:
    """A chapter page (``book/chapters/NN_slug.html``) whose title does not start with its file's number NN."""
    file = _CHAPTER_FILE.match(name.replace(os.sep, "/"))
    if not file:
        return []
    title = _TITLE.search(markup)
    shown = title.group(1) if title else "no number"
    if title and int(shown) == int(file.group(1)):
        return []
    return [f"{name}: numbered {shown} in the book, {int(file.group(1))} by its file name and `elr run`"]


def page_problems(markup: str, name: str, paths: list[str]) -> list[str]:
    """Problems of one page's HTML (see the module doc), each naming the page and quoting the text."""
    parser = _Text()
    parser.feed(markup)
    prose, code = html.unescape("".join(parser.prose)), html.unescape("".join(parser.code))
    everything = prose + "\n" + code
    problems = []

    def quote(text: str, i: int) -> str:
        return " ".join(text[max(0, i - 40): i + 80].split())

    for needle in TRACEBACKS:
        i = everything.find(needle)
        if i >= 0:
            problems.append(f"{name}: a traceback ({needle!r}): …{quote(everything, i)}…")
    for m in _WARNING.finditer(prose):
        problems.append(f"{name}: a warning: …{quote(prose, m.start())}…")
        break
    for p in paths:
        # authored code may show a temporary path as an example; the repository and home never
        where = prose if p == tempfile.gettempdir() else everything
        i = where.find(p)
        if i >= 0 and (len(where) == i + len(p) or not (where[i + len(p)].isalnum() or where[i + len(p)] in "_-.")):
            problems.append(f"{name}: a path of the build machine ({p}): …{quote(where, i)}…")
    return problems


def check_html(html_dir: str | Path, root: str | Path | None = None) -> list[str]:
    """Every problem of every page of a built book (see the module doc); [] when the pages are clean.

    ``root`` is the repository the book was built from (default: this one)."""
    html_dir = Path(html_dir)
    if not html_dir.is_dir():
        raise FileNotFoundError(f"{html_dir} is not a built book; build it first (`elr book`)")
    paths = machine_paths(root)
    problems = []
    for page in sorted(html_dir.rglob("*.html")):
        rel = page.relative_to(html_dir)
        if rel.name in _SKIP or rel.parts[0].startswith("_"):
            continue
        markup = page.read_text(encoding="utf-8", errors="replace")
        problems += page_problems(markup, str(rel), paths) + number_problem(markup, str(rel))
    return problems
