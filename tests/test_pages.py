"""Checks of the built HTML (elr.pages) and of the reproducibility page's content."""
import re
import tempfile
from pathlib import Path

import pytest

from elr import book, pages

ROOT = Path(__file__).resolve().parent.parent

# the markup jupyter-book writes for a code cell with its output, and for a code block of a Markdown page
CELL = ('<div class="cell docutils container"><div class="cell_input docutils container">'
        '<div class="highlight-ipython3 notranslate"><div class="highlight"><pre><span></span>{code}</pre></div>'
        '</div></div><div class="cell_output docutils container">'
        '<div class="output {kind} highlight-myst-ansi notranslate"><div class="highlight"><pre><span></span>{out}'
        '</pre></div></div></div></div>')
BLOCK = '<div class="highlight-bash notranslate"><div class="highlight"><pre><span></span>{code}</pre></div></div>'


def _page(body: str) -> str:
    return (f'<!DOCTYPE html><html><head><title>t</title><script>var a = "Traceback (most recent call last)";'
            f'</script></head><body><main><article><h1>Chapter</h1><p>Prose.</p>{body}</article></main></body>'
            f'</html>')


def _book(tmp_path, **pages_):
    html = Path(tempfile.mkdtemp(dir=tmp_path)) / "html"
    (html / "book" / "chapters").mkdir(parents=True)
    (html / "_static").mkdir()
    (html / "_static" / "x.html").write_text(_page("<p>UserWarning in a theme file</p>"))
    for name, body in pages_.items():
        (html / "book" / "chapters" / f"{name}.html").write_text(_page(body))
    return html


CLEAN = (CELL.format(code='# matplotlib\'s UserWarning: is filtered, because ...\nsave("/tmp/x.png")', kind="stream",
                     out="Data: digits") + BLOCK.format(code="papermill /tmp/ch05.ipynb /tmp/out.ipynb"))


def test_clean_pages_pass(tmp_path):
    assert pages.check_html(_book(tmp_path, ch=CLEAN), root=tmp_path) == []


@pytest.mark.parametrize("out, kind, what", [
    ("{root}/elr/plots.py:12: UserWarning: Tight layout not applied", "stderr", "a warning"),
    ("/usr/lib/tqdm/auto.py:21: TqdmWarning: IProgress not found", "stderr", "a warning"),
    ("Traceback (most recent call last):\n  File x", "error", "a traceback"),
    ("An Exception was encountered at 'In [3]'", "error", "a traceback"),
    ("saved to {tmp}/fig.png", "stream", "a path of the build machine"),
    ("runs in {root}/runs/abc", "text_plain", "a path of the build machine"),
])
def test_each_problem_is_found_in_outputs(tmp_path, out, kind, what):
    out = out.format(root=tmp_path, tmp=tempfile.gettempdir())
    problems = pages.check_html(_book(tmp_path, ok=CLEAN, bad=CLEAN + CELL.format(code="f()", kind=kind, out=out)),
                                root=tmp_path)
    assert len(problems) >= 1 and all(p.startswith("book/chapters/bad.html: ") for p in problems), problems
    assert any(what in p for p in problems), problems


def test_a_chapter_page_numbered_unlike_its_file_is_found(tmp_path):
    html = _book(tmp_path, ch=CLEAN)
    for name, title in (("10_short_term", "10. Validating the model"), ("03_gradient_flow", "4. Gradient flow"),
                        ("05_warmup", "Warm-up")):
        (html / "book" / "chapters" / f"{name}.html").write_text(_page(CLEAN).replace("<title>t</title>",
                                                                                     f"<title>{title} &#8212; Book</title>"))
    problems = pages.check_html(html, root=tmp_path)
    assert sorted(p.split(":")[0] for p in problems) == ["book/chapters/03_gradient_flow.html",
                                                         "book/chapters/05_warmup.html"], problems
    assert "numbered 4 in the book, 3 by its file name" in " ".join(problems)


def test_paths_in_prose_and_authored_code(tmp_path):
    # the repository's path is a leak anywhere, even in code a chapter shows
    leak = CELL.format(code=f'open("{tmp_path}/notebooks/x.py")', kind="stream", out="1")
    assert any("path of the build machine" in p for p in pages.check_html(_book(tmp_path, a=leak), root=tmp_path))
    prose = f"<p>Written to {tempfile.gettempdir()}/abc.</p>"
    assert any("path of the build machine" in p for p in pages.check_html(_book(tmp_path, b=prose), root=tmp_path))


def test_no_false_path_match(tmp_path):
    body = "<p>The directory /rootless and /tmpfs are other names.</p>"
    assert pages.check_html(_book(tmp_path, c=body), root=tmp_path) == []


def test_missing_directory_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="elr book"):
        pages.check_html(tmp_path / "nope")


# ------------------------------------------------------------------ the reproducibility page

def _repro() -> str:
    return (ROOT / "book" / "reproducibility.md").read_text()


def test_reproducibility_page_names_every_robust_build_and_its_seed():
    page = _repro()
    for name, (overrides, _env, _what) in book.ROBUST_VARIANTS.items():
        row = [line for line in page.splitlines() if line.startswith(f"| `{name}` |")]
        assert row, f"the reproducibility page has no row for the robustness build {name}"
        assert f"| {overrides['seed']} |" in row[0], f"{name}: its base seed {overrides['seed']} is not on its row"


def test_reproducibility_page_includes_the_generated_records_and_how_to_rebuild():
    page = _repro()
    for include in ("chapters/run_record.md", "robustness.md", "chapters/compute_plan.md"):
        assert f"```{{include}} {include}" in page, f"the page does not include {include}"
    for profile in book.PROFILES:
        assert f"`{profile}`" in page, f"the page does not say how to build the {profile} profile"
    for command in ("make book SEED=N", "elr run NN -p name=value", "make robust"):
        assert command in page


def test_reproducibility_page_holds_no_build_history():
    page = _repro()
    assert not re.findall(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b", page), \
        "the page names git revisions: past builds belong in git, the run record names this build's"
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", page), "the page names a date of a past build"


# ------------------------------------------------------------------ on a page jupyter-book built

TINY = '''# %% [markdown]
# # Tiny

# %% tags=["parameters"]
n: int = 3  # how many {>= 1}

# %%
import warnings

values = [n * i for i in range(4)]

# %% tags=["hide-input"]
print("values:", values)  # /tmp in a shown output is a leak, in hidden input code it is not: "/tmp/x"
'''


@pytest.mark.slow
def test_check_html_on_a_book_jupyter_book_built(tmp_path, monkeypatch):
    """A one-chapter book executed by elr and built by jupyter-book: clean, then with a warning on the page."""
    import subprocess
    import sys

    root = tmp_path / "book_root"
    (root / "notebooks").mkdir(parents=True)
    (root / "book").mkdir()
    (root / "book" / "intro.md").write_text("# Intro\n\n```bash\npapermill /tmp/ch.ipynb /tmp/out.ipynb\n```\n")
    (root / "book" / "references.bib").write_text("")
    (root / "_config.yml").write_text((book.ROOT / "_config.yml").read_text())
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\noptions:\n  numbered: true\n"
                                   "chapters:\n  - file: book/chapters/01_tiny\n")
    monkeypatch.setattr(book, "ROOT", root)
    monkeypatch.setattr(book, "NOTEBOOKS", root / "notebooks")
    monkeypatch.setattr(book, "CHAPTERS_OUT", root / "book" / "chapters")
    monkeypatch.setattr(book, "PROFILES_FILE", root / "notebooks" / "profiles.toml")
    exe = Path(sys.executable).with_name("jupyter-book")

    def build(source: str) -> list[str]:
        (root / "notebooks" / "01_tiny.py").write_text(source)
        book.execute("01_tiny", "quick")
        proc = subprocess.run([str(exe), "build", str(root), "--keep-going"], cwd=root, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return pages.check_html(root / "_build" / "html", root=root)

    assert build(TINY) == []
    noisy = build(TINY + '\n# %%\nwarnings.warn("values are small", UserWarning)\n')
    assert any(p.startswith("book/chapters/01_tiny.html: a warning") and "UserWarning" in p for p in noisy), noisy
