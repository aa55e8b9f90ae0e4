"""elr.book and the `elr` command: parameter validation before any compute, execution, failure reporting."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from elr import book, cli

CHAPTERS = book.chapters()


def test_chapters_are_in_the_toc():
    toc = (book.ROOT / "_toc.yml").read_text()
    for name in CHAPTERS:
        assert f"book/chapters/{name}" in toc
    assert len(CHAPTERS) >= 5


def test_sidebar_numbers_follow_the_file_numbers():
    """Jupyter Book numbers the pages of the numbered parts in one sequence (notation is 1); a chapter's number
    there, its file's prefix and its `elr run` name must agree."""
    import yaml

    toc = yaml.safe_load((book.ROOT / "_toc.yml").read_text())
    numbered = [entry["file"] for part in toc["parts"] if part.get("numbered") for entry in part["chapters"]]
    assert numbered[0] == "book/notation"
    chapters_in_order = [f.rsplit("/", 1)[-1] for f in numbered[1:]]
    assert sorted(chapters_in_order) == sorted(CHAPTERS)  # every chapter is numbered, none twice
    for number, name in enumerate(chapters_in_order, start=2):
        assert name.startswith(f"{number:02d}_"), f"{name} is number {number} in the sidebar"
        assert book.find_chapter(f"{number:02d}") == name


@pytest.mark.parametrize("name", CHAPTERS)
@pytest.mark.parametrize("profile", book.PROFILES)
def test_every_profile_resolves(name, profile):
    values = book.resolve(name, profile)
    assert set(values) >= set(book.read_parameters(name))


def test_find_chapter_accepts_number_slug_and_path():
    assert book.find_chapter("04") == "04_large_learning_rates"
    assert book.find_chapter("large_learning_rates") == "04_large_learning_rates"
    assert book.find_chapter("notebooks/04_large_learning_rates.py") == "04_large_learning_rates"
    with pytest.raises(book.ParameterError, match="unknown chapter"):
        book.find_chapter("99")


def test_parameters_are_parsed_with_types_and_constraints():
    params = book.read_parameters("04_large_learning_rates")
    assert params["n_layers"].type == "int" and params["n_layers"].constraints == (">= 2",)
    assert "ResNet110" in params["n_layers"].help


@pytest.mark.parametrize("pair, message", [
    ("nonsense=1", "has no parameter 'nonsense'"),
    ("n_layers=0", "parameter 'n_layers' must satisfy '>= 2'"),
    ("n_layers=2.5", "parameter 'n_layers' must be int"),
    ("lr_decades=-1", "parameter 'lr_decades' must satisfy '> 0'"),
    ("n_steps=ten", "parameter 'n_steps' must be int"),
])
def test_bad_parameters_are_refused(pair, message):
    with pytest.raises(book.ParameterError, match=message):
        book.resolve("04", "quick", book.parse_overrides([pair]))


def test_list_parameters_are_checked_elementwise():
    with pytest.raises(book.ParameterError, match="'lrs' must satisfy '> 0'"):
        book.resolve("03_gradient_flow", "quick", {"lrs": [0.1, -0.2]})
    with pytest.raises(book.ParameterError, match="non-empty list"):
        book.resolve("03_gradient_flow", "quick", {"lrs": []})
    with pytest.raises(book.ParameterError, match="%6==2"):
        book.resolve("02_discrete_model", "quick", {"resnet_depths": [51]})
    assert book.resolve("03_gradient_flow", "quick", {"lrs": [1, 0.5]})["lrs"] == [1.0, 0.5]
    # an optional sweep, whose default is empty, may stay empty; its elements are still checked
    assert book.resolve("13_trainability", "quick", {"lrs": []})["lrs"] == []
    with pytest.raises(book.ParameterError, match="'lrs' must satisfy '> 0'"):
        book.resolve("13_trainability", "quick", {"lrs": [0.1, 0.0]})


@pytest.mark.parametrize("chapter, pair, message", [
    ("10", "n_seeds=10**9", r"chapter 10_short_term: 14,000,000,000 runs \(n_seeds=1000000000\).*more than this machine"),
    ("12", "depth=1000004", "parameter 'depth' of chapter 12_criticality: .*cannot be built on this machine"),
    ("02", "resnet_depths=[20, 1000004]", "parameter 'resnet_depths' .*cannot be built"),
    ("10", "steps=10**12", "parameter 'steps' of chapter 10_short_term must be at most 10,000,000"),
    ("10", "seed=2**64", "parameter 'seed' of chapter 10_short_term must fit in 64 bits"),
    ("10", "seed=2**63-2", "seed \\+ n_seeds of chapter 10_short_term must stay below 2\\*\\*63"),
])
def test_values_this_machine_cannot_run_are_refused_naming_the_parameter(chapter, pair, message):
    name, raw = pair.split("=", 1)
    with pytest.raises(book.ParameterError, match=message):
        book.resolve(chapter, "quick", {name: eval(raw)})


@pytest.mark.parametrize("value", ["30.5", "inf", "1e308", "nan", "-1", "0"])
def test_timeouts_are_whole_seconds_and_bounded(value, capsys):
    if float(value) > 0 and value not in ("inf", "1e308"):
        assert book.chapter_timeout(float(value)) == 31
        return
    assert cli.main(["run", "04", "--timeout", value]) == 2
    err = capsys.readouterr().err
    assert "the chapter timeout must be a number of seconds in (0, 2,000,000]" in err and "Traceback" not in err


def test_banner_values_are_shown_never_read_as_markup(scratch_book):
    (scratch_book / "01_fails.py").write_text(FAILING.replace("# how many {>= 1}\n", '# how many {>= 1}\nlabel: str = "x"  # a label\n'))
    evil = "`<img src=x onerror=alert(1)>` | *b* [l](javascript:1)"
    banner = book._banner("01_fails", "quick", {"n": 3, "label": evil})
    row = next(line for line in banner.splitlines() if line.startswith("| `label`"))
    cells = row.split(" | ")
    assert len(cells) == 3  # the value's '|' did not add a column
    assert "<" not in row and "`<" not in row and "*b*" not in row and "](" not in row
    import html

    assert html.unescape(cells[1]) == repr(evil)  # shown as itself
    assert "| `n` | `3` |" in banner  # plain values stay code spans


def test_unknown_profile_and_profile_override_are_refused():
    with pytest.raises(book.ParameterError, match="unknown profile"):
        book.resolve("04", "huge")
    with pytest.raises(book.ParameterError, match="--profile"):
        book.resolve("04", "quick", {"profile": "paper"})


def test_elr_run_with_bad_parameter_fails_fast_with_a_clear_message():
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "elr.cli", "run", "04", "-p", "lr_decades=-3"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2
    assert "parameter 'lr_decades' must satisfy '> 0'" in proc.stderr
    assert "running" not in proc.stdout  # nothing was executed


@pytest.mark.slow
@pytest.mark.parametrize("name", CHAPTERS)
def test_every_chapter_executes_at_the_smoke_profile(name, tmp_path):
    out = book.execute(name, "smoke", out_dir=tmp_path)
    nb = nbformat.read(out, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    # glued figures are stored under a prefixed MIME type, e.g. application/papermill.record/image/png
    assert any(k.endswith("image/png") for o in outputs for k in o.get("data", {})), "every chapter has a figure"
    texts = "".join(o.get("text", "") for o in outputs)
    if book.resolve(name, "smoke").get("check_claims", True):
        assert ("all claims of this chapter hold" in texts
                or "every gate claim of this chapter has its registered verdict" in texts), "its checks ran"
    else:  # a chapter whose claims need more than seconds of training says that it did not check them
        assert "claims not checked at this profile" in texts
    banner = [c for c in nb.cells if c.cell_type == "markdown" and "How this chapter ran" in c.source]
    assert banner and "Profile **smoke**" in banner[0].source
    hidden = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert hidden and all("remove-cell" in c.metadata["tags"] for c in hidden)


@pytest.fixture
def scratch_book(tmp_path, monkeypatch):
    """A one-chapter book in tmp_path, so failure tests do not touch the real one."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    monkeypatch.setattr(book, "NOTEBOOKS", notebooks)
    monkeypatch.setattr(book, "CHAPTERS_OUT", tmp_path / "out")
    monkeypatch.setattr(book, "PROFILES_FILE", notebooks / "profiles.toml")
    monkeypatch.setattr(book, "RECORD_JSON", tmp_path / "out" / "run_record.json")
    monkeypatch.setattr(book, "RECORD_MD", tmp_path / "out" / "run_record.md")
    return notebooks


FAILING = '''# %% tags=["parameters"]
n: int = 3  # how many {>= 1}

# %%
assert n > 5, "n is too small"
'''


@pytest.mark.slow
def test_a_failing_chapter_exits_nonzero_and_shows_a_banner_instead_of_a_traceback(scratch_book, capsys):
    """The failed chapter's notebook opens with one banner naming what failed; papermill's red error cell, the
    traceback and every path of the build machine are gone (the terminal still names the notebook)."""
    (scratch_book / "01_fails.py").write_text("# %% [markdown]\n# # Fails\n\n" + FAILING.replace(
        '"n is too small"', 'f"n is too small in {__import__(\'os\').getcwd()}/somewhere"'))
    assert cli.main(["run", "01"]) == 1
    err = capsys.readouterr().err
    out = book.CHAPTERS_OUT / "01_fails.ipynb"
    assert "chapter 01_fails failed" in err and str(out) in err
    nb = nbformat.read(out, as_version=4)
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    banners = [c for c in nb.cells if "elr-failure-banner" in c.metadata.get("tags", [])]
    assert len(banners) == 1 and "n is too small in <repository>/somewhere" in banners[0].source
    assert nb.cells.index(banners[0]) == 1          # right under the title
    text = json.dumps(nb)
    assert str(book.ROOT) not in text and "Traceback" not in text and "papermill-error-cell" not in text
    record = json.loads(book.RECORD_JSON.read_text())
    assert record["01_fails"]["status"] == "failed"


def test_elr_book_builds_the_html_even_when_a_chapter_fails_and_exits_nonzero(monkeypatch, capsys):
    built = []

    def fails(*args, **kwargs):
        raise book.ChapterFailed("13_x", Path("13_x.ipynb"), "AssertionError: a gate claim")

    from elr import pages, scoreboard

    monkeypatch.setattr(book, "run_chapters", fails)
    monkeypatch.setattr(book, "build_html", lambda strict=True: built.append(1 if not strict else "strict")
                        or Path("html/index.html"))
    monkeypatch.setattr(scoreboard, "write", lambda: built.append("scoreboard") or Path("scoreboard.md"))
    monkeypatch.setattr(pages, "check_html", lambda html: [])
    assert cli.main(["book"]) == 1
    assert built == ["scoreboard", 1] and "with failed chapters" in capsys.readouterr().out
    assert cli.main(["book", "--no-html"]) == 1 and built == ["scoreboard", 1]
    # a page that shows a traceback, a warning or a path of this machine fails the build too
    monkeypatch.setattr(book, "run_chapters", lambda *a, **k: {})
    monkeypatch.setattr(pages, "check_html", lambda html: ["chapters/x.html: a traceback"])
    assert cli.main(["book"]) == 1 and "a traceback" in capsys.readouterr().err
    assert built[-1] == "strict"   # with every chapter passing, warnings fail the HTML build (-W)


def test_the_failure_message_lists_failed_claims_without_paths():
    msg = book.failure_message("AssertionError", "gate claims whose verdict differs from the registry:\n  A [13.a]: "
                               "expected holds, measured fails (x: 1 [0, 2], 5 seeds)\n  B [13.b]: expected holds, "
                               f"measured inconclusive ({Path.home()}/x)")
    assert msg.splitlines()[-2:] == ["- A [13.a]: expected holds, measured fails (x: 1 [0, 2], 5 seeds)",
                                     "- B [13.b]: expected holds, measured inconclusive (~/x)"]
    assert book.failure_message("ValueError", "\x1b[31mbad\x1b[0m") == "ValueError: bad"


@pytest.mark.slow
def test_overrides_reach_the_chapter(scratch_book):
    (scratch_book / "01_fails.py").write_text(FAILING)
    out = book.execute("01_fails", "quick", {"n": 7}, out_dir=book.CHAPTERS_OUT)
    nb = nbformat.read(out, as_version=4)
    assert "`n` | `7`" in "".join(c.source for c in nb.cells if c.cell_type == "markdown")


@pytest.mark.slow
def test_a_broken_formula_fails_the_tests_and_prove(tmp_path):
    """Mutation check: the 2 of the closed form (Eq. 12) becomes 1 in a copy of the package."""
    shutil.copytree(book.ROOT / "elr", tmp_path / "elr")
    shutil.copytree(book.ROOT / "tests", tmp_path / "tests")
    target = tmp_path / "elr" / "dynamics.py"
    src = target.read_text()
    assert "np.sqrt(2.0 * c**2 * t + sigma2_0**2)" in src
    target.write_text(src.replace("np.sqrt(2.0 * c**2 * t + sigma2_0**2)", "np.sqrt(1.0 * c**2 * t + sigma2_0**2)"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "ELR_ROOT": str(book.ROOT)}
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                            str(tmp_path / "tests" / "test_dynamics.py")],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert tests.returncode == 1, tests.stdout[-2000:]
    prove = subprocess.run([sys.executable, "-m", "elr.cli", "prove"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    assert prove.returncode == 1 and "[FAIL] Thm. 3.4" in prove.stdout


@pytest.mark.slow
def test_paper_profile_starts_and_stops_at_once_without_cifar(tmp_path):
    """`elr run <chapter> --profile paper` passes validation, starts, and names the missing data set."""
    shutil.copytree(book.NOTEBOOKS, tmp_path / "notebooks")  # a scratch root: book/chapters stays untouched
    proc = subprocess.run([sys.executable, "-m", "elr.cli", "run", "10", "--profile", "paper",
                           "-p", f"data_root={tmp_path / 'data'}"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "ELR_ROOT": str(tmp_path)})
    assert proc.returncode == 1
    assert "running 10_short_term at profile paper" in proc.stdout
    assert "CIFAR10 not found" in proc.stderr and "elr data cifar10" in proc.stderr


SLEEPS = '''# %% tags=["parameters"]
seconds: float = 60.0  # how long to sleep {> 0}

# %%
import time

# %%
time.sleep(seconds)
'''


@pytest.mark.slow
def test_a_chapter_past_its_timeout_fails_naming_the_cell(scratch_book, capsys):
    import time

    (scratch_book / "01_sleeps.py").write_text(SLEEPS)
    start = time.monotonic()
    assert cli.main(["run", "01", "--timeout", "8"]) == 1
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert elapsed < 8 + 20, elapsed  # the limit plus kernel start-up and shutdown, far below the 60 s sleep
    assert "timed out after 8 s in code cell 3 of 3 ('time.sleep(seconds)')" in err
    assert json.loads(book.RECORD_JSON.read_text())["01_sleeps"]["status"] == "failed"


def test_summary_names_failures_and_their_notebooks():
    entries = {"01_a": {"status": "ok", "seconds": 1.0, "notebook": "x/01_a.ipynb"},
               "02_b": {"status": "failed", "seconds": 2.5, "notebook": "x/02_b.ipynb"}}
    text = book.summary(entries)
    assert "1 passed, 1 failed chapters; 3.5 s" in text and "-> x/02_b.ipynb" in text
    assert "-> x/01_a.ipynb" not in text


def test_book_overrides_apply_where_declared_and_unknown_names_are_refused(scratch_book, monkeypatch):
    (scratch_book / "01_fails.py").write_text(FAILING)
    (scratch_book / "02_sleeps.py").write_text(SLEEPS)
    ran = {}
    def fake_execute(name, profile, values, timeout, out_dir=None):
        ran[name] = values
        return book.CHAPTERS_OUT / f"{name}.ipynb"

    monkeypatch.setattr(book, "ROOT", scratch_book.parent)
    monkeypatch.setattr(book, "execute", fake_execute)
    book.run_chapters(["01_fails", "02_sleeps"], "quick", {"n": 9}, where_declared=True)
    assert ran["01_fails"]["n"] == 9 and "n" not in ran["02_sleeps"]
    with pytest.raises(book.ParameterError, match="no chapter declares 'nope'"):
        book.run_chapters(["01_fails", "02_sleeps"], "quick", {"nope": 1}, where_declared=True)


@pytest.mark.slow
def test_built_chapter_pages_offer_downloads_and_the_rerun_box(tmp_path, monkeypatch):
    """A one-chapter book, executed by elr and built by jupyter-book: the page has both downloads and the box."""
    root = tmp_path / "book_root"
    (root / "notebooks").mkdir(parents=True)
    (root / "book").mkdir()
    (root / "notebooks" / "01_tiny.py").write_text('# %% [markdown]\n# # Tiny\n\n' + FAILING.replace("n > 5", "n > 1"))
    (root / "book" / "intro.md").write_text("# Intro\n\nA scratch book.\n")
    (root / "book" / "references.bib").write_text("")
    config = (book.ROOT / "_config.yml").read_text()
    (root / "_config.yml").write_text(config.replace("  - book/references.bib", "  - book/references.bib"))
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\noptions:\n  numbered: true\n"
                                   "chapters:\n  - file: book/chapters/01_tiny\n")
    monkeypatch.setattr(book, "ROOT", root)
    monkeypatch.setattr(book, "NOTEBOOKS", root / "notebooks")
    monkeypatch.setattr(book, "CHAPTERS_OUT", root / "book" / "chapters")
    monkeypatch.setattr(book, "PROFILES_FILE", root / "notebooks" / "profiles.toml")
    book.execute("01_tiny", "quick")
    exe = Path(sys.executable).with_name("jupyter-book")
    proc = subprocess.run([str(exe), "build", str(root), "-W", "--keep-going"], cwd=root, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    html = root / "_build" / "html"
    assert book.check_built_pages(html, ["01_tiny"]) == []
    page = (html / "book" / "chapters" / "01_tiny.html").read_text()
    assert "_downloads/" in page  # the download role copied the files into the built book
    downloads = {p.name for p in (html / "_downloads").rglob("*")}
    assert {"01_tiny.ipynb", "01_tiny.py"} <= downloads
    assert book.check_built_pages(html, ["02_missing"]) == [f"{html / 'book' / 'chapters' / '02_missing.html'} was not built"]


def test_robustness_builds_vary_seed_threads_and_run_root_and_record_the_outcome(scratch_book, monkeypatch):
    """Each variant runs every chapter with its own overrides, environment, run root and output directory; a
    failing variant does not stop the others, and book/robustness.md records all of them."""
    (scratch_book / "01_fails.py").write_text(FAILING.replace("n: int = 3  # how many {>= 1}",
                                                                  "n: int = 3  # how many {>= 1}\nseed: int = 0  # base seed"))
    (scratch_book / "02_sleeps.py").write_text(SLEEPS)
    seen = []

    def fake_execute(name, profile, values, timeout, out_dir=None):
        seen.append((name, dict(values), os.environ.get("ELR_RUNS"), os.environ.get("ELR_THREADS"),
                     os.environ.get("ELR_WORKERS"), Path(out_dir)))
        if name == "01_fails" and os.environ.get("ELR_THREADS") == "1":
            raise book.ChapterFailed(name, Path(out_dir) / f"{name}.ipynb", "AssertionError: a claim")
        return Path(out_dir) / f"{name}.ipynb"

    monkeypatch.setattr(book, "ROOT", scratch_book.parent)
    monkeypatch.setattr(book, "ROBUST_MD", scratch_book.parent / "robustness.md")
    monkeypatch.setattr(book, "execute", fake_execute)
    monkeypatch.delenv("ELR_THREADS", raising=False)
    with pytest.raises(RuntimeError, match="robustness builds failed: one-thread"):
        book.robust()
    assert os.environ.get("ELR_THREADS") is None  # restored
    by = {(n, Path(o).name): (v, runs, threads, workers) for n, v, runs, threads, workers, o in seen}
    assert by[("01_fails", "seed2000")][0]["seed"] == 2000 and "seed" not in by[("02_sleeps", "seed2000")][0]
    # every variant moves the base seed, to one that never set an expectation (elr.claims)
    assert by[("01_fails", "one-process")][0]["seed"] == 3000 and by[("01_fails", "one-process")][3] == "1"
    assert by[("01_fails", "one-thread")][0]["seed"] == 4000
    assert {v[0]["seed"] for (n, _), v in by.items() if n == "01_fails"} <= set(book.CONFIRMATION_SEEDS)
    assert by[("01_fails", "one-thread")][2] == "1"
    assert len({runs for _, runs, _, _ in by.values()}) == 3  # a run root per variant: nothing is reused
    record = (scratch_book.parent / "robustness.md").read_text()
    assert "| seed2000 |" in record and "| one-thread |" in record and "01_fails" in record
    # a later build of one variant and one chapter keeps every other row, each with the revision it ran
    seen.clear()
    book.robust(["seed2000"], names=["02_sleeps"])
    assert [(n, Path(o).name) for n, _, _, _, _, o in seen] == [("02_sleeps", "seed2000")]
    again = (scratch_book.parent / "robustness.md").read_text()
    rows = [line for line in again.splitlines() if line.startswith("| one-") or line.startswith("| seed")]
    assert len(rows) == 3 and f"| {book.git_revision()} |" in again
    assert any(r.startswith("| one-thread |") and "| 1 of 2 | 01_fails |" in r for r in rows)
    # a fresh checkout has no run records: the committed page's rows stay, and a new build adds its own
    old = [r for r in rows if r.startswith("| one-thread |")][0].replace(f"| {book.git_revision()} |", "| 0ld0ld0 |")
    (scratch_book.parent / "robustness.md").write_text("page\n\n| build |\n|---|\n" + old + "\n")
    shutil.rmtree(scratch_book.parent / "_build" / "robust")
    book.robust(["seed2000"], names=["02_sleeps"])
    fresh = [line for line in (scratch_book.parent / "robustness.md").read_text().splitlines()
             if line.startswith("| one-") or line.startswith("| seed")]
    assert old in fresh and len(fresh) == 2


def test_the_robustness_table_names_chapters_as_ranges():
    names = [f"{n:02d}_x" for n in [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 18, 19]]
    assert book._chapter_span(names) == "3–14, 16–19"
    assert book._chapter_span(["15_a", "20_b"]) == "15, 20"
    assert book._chapter_span(["01_a", "02_b", "04_c"]) == "1, 2, 4"


@pytest.mark.slow
@pytest.mark.parametrize("chapter, overrides", [("11_long_term", {"lr_large": 1e6}),
                                                ("12_criticality", {"lrs": [0.001, 1.0, 1e6]})])
def test_a_sweep_with_a_diverging_rate_runs_to_its_end_and_says_so(chapter, overrides, tmp_path):
    """Divergence is a result: at a rate where training blows up, the chapter runs to its claims table, shows
    the divergence, and reports no fit for a diverged run (issue 27)."""
    out = book.execute(chapter, "smoke", overrides=overrides, out_dir=tmp_path)
    nb = nbformat.read(out, as_version=4)
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    shown = json.dumps([o for c in nb.cells for o in c.get("outputs", [])])
    assert "diverged" in shown
    record = json.loads((tmp_path / "claims" / f"{chapter}.json").read_text())
    assert record["claims"], "the claims were decided and recorded"
