"""Chapters: their parameters and profiles, papermill execution, and the Jupyter Book build.

A chapter is a jupytext percent file ``notebooks/NN_slug.py``. Its cell tagged
``parameters`` declares every parameter with a type, a default (the ``quick``
profile) and a comment; a trailing ``{...}`` in the comment states the allowed
values::

    n_layers: int = 109  # scale-invariant layers, as in ResNet110 {>= 2}
    lrs: list[float] = [0.01, 0.1]  # learning rates λ {> 0}
    schedule: str = "cosine"  # {in constant|cosine}

Constraints on a list apply to every element. ``notebooks/profiles.toml``
holds the ``smoke`` and ``paper`` overrides of each chapter. Every value is
checked before any chapter runs, and an error names the parameter.
"""
from __future__ import annotations

import ast
import json
import logging
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import elr

ROOT = Path(os.environ.get("ELR_ROOT", Path(__file__).resolve().parent.parent))
NOTEBOOKS = ROOT / "notebooks"
CHAPTERS_OUT = ROOT / "book" / "chapters"
PROFILES_FILE = NOTEBOOKS / "profiles.toml"
PROFILES = ("smoke", "quick", "paper")
RECORD_JSON = CHAPTERS_OUT / "run_record.json"
RECORD_MD = CHAPTERS_OUT / "run_record.md"
#: Seconds one chapter may run before it is stopped and counted as failed (``--timeout`` or ELR_CHAPTER_TIMEOUT).
#: Generous: the slowest quick-profile chapter takes about 4 minutes on a 2-core CPU.
DEFAULT_TIMEOUT = 3600.0


#: The longest timeout a chapter may be given: nbclient waits on the kernel in milliseconds as a 32-bit count
#: (2**31 ms is 24.8 days); 2,000,000 s (23 days) stays below it.
MAX_TIMEOUT = 2_000_000


def chapter_timeout(timeout: float | None = None) -> int:
    """The chapter timeout in whole seconds (rounded up; nbclient counts whole seconds), checked."""
    raw = timeout if timeout is not None else os.environ.get("ELR_CHAPTER_TIMEOUT", DEFAULT_TIMEOUT)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0 < value <= MAX_TIMEOUT:  # NaN and inf fail here too
        raise ParameterError(f"the chapter timeout must be a number of seconds in (0, {MAX_TIMEOUT:,}], got {raw!r} "
                             "(set it with --timeout or ELR_CHAPTER_TIMEOUT)")
    return math.ceil(value)


class ParameterError(ValueError):
    """A chapter parameter that is unknown, of the wrong type or out of range."""


class ChapterFailed(RuntimeError):
    """A chapter raised while executing; ``notebook`` holds the traceback."""

    def __init__(self, chapter: str, notebook: Path, message: str):
        super().__init__(f"chapter {chapter} failed: {message}\n  the executed notebook with its traceback: {notebook}")
        self.chapter, self.notebook = chapter, notebook


# ------------------------------------------------------------------ chapters


def chapters() -> list[str]:
    """Chapter names (file stems) in reading order."""
    if not NOTEBOOKS.is_dir():
        raise FileNotFoundError(f"no chapter sources under {NOTEBOOKS}; run elr from a clone of the repository "
                                "(pip install -e .) or set ELR_ROOT to it")
    return sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def find_chapter(name: str) -> str:
    """Resolve '04', '04_large_learning_rates', 'large_learning_rates' or a path to a chapter name."""
    known = chapters()
    stem = Path(name).stem
    hits = [c for c in known if c == stem or c.split("_", 1)[0] == stem or c.split("_", 1)[1] == stem]
    if len(hits) != 1:
        raise ParameterError(f"unknown chapter {name!r}; the chapters are: {', '.join(known)}")
    return hits[0]


# ---------------------------------------------------------------- parameters

_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


@dataclass(frozen=True)
class Parameter:
    """One declared chapter parameter."""

    name: str
    type: str          # 'int', 'float', 'str', 'bool' or 'list[...]' of those
    default: Any
    help: str
    constraints: tuple[str, ...]

    def check(self, value: Any, source: str = "") -> Any:
        """Coerce ``value`` to this parameter's type and check its constraints; raise ParameterError."""
        where = f" (from {source})" if source else ""
        if self.type.startswith("list["):
            inner = self.type[5:-1]
            # a list may be empty only where the chapter's own default is empty (an optional sweep, say)
            if not isinstance(value, (list, tuple)) or (len(value) == 0 and self.default != []):
                raise ParameterError(f"parameter {self.name!r} must be a non-empty list of {inner}, got {value!r}{where}")
            return [self._check_one(v, inner, where) for v in value]
        return self._check_one(value, self.type, where)

    def _check_one(self, value: Any, typ: str, where: str) -> Any:
        expected = _TYPES[typ]
        ok = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise ParameterError(f"parameter {self.name!r} must be {typ}, got {value!r} "
                                 f"({type(value).__name__}){where}")
        for rule in self.constraints:
            if not _satisfies(value, rule):
                raise ParameterError(f"parameter {self.name!r} must satisfy '{rule}', got {value!r}{where}"
                                     + (f"; it is the {self.help}" if self.help else ""))
        return value


def _satisfies(value: Any, rule: str) -> bool:
    if rule.startswith("in "):
        return str(value) in [v.strip() for v in rule[3:].split("|")]
    m = re.fullmatch(r"%\s*(\d+)\s*==\s*(\d+)", rule)
    if m:
        return value % int(m.group(1)) == int(m.group(2))
    m = re.fullmatch(r"(>=|<=|>|<|!=)\s*(\S+)", rule)
    if not m:
        raise ParameterError(f"cannot read the constraint '{rule}'")
    op, bound = m.group(1), float(m.group(2))
    return {">": value > bound, ">=": value >= bound, "<": value < bound,
            "<=": value <= bound, "!=": value != bound}[op]


def _source_of(chapter: str) -> Path:
    return NOTEBOOKS / f"{chapter}.py"


def read_parameters(chapter: str) -> dict[str, Parameter]:
    """Parse the ``parameters`` cell of a chapter without executing anything."""
    import jupytext

    nb = jupytext.read(_source_of(chapter))
    cells = [cell for cell in nb.cells if "parameters" in cell.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ParameterError(f"chapter {chapter} must have exactly one cell tagged 'parameters', has {len(cells)}")
    src = cells[0].source
    lines = src.splitlines()
    params: dict[str, Parameter] = {}
    for node in ast.parse(src).body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None):
            raise ParameterError(f"chapter {chapter}: every line of the parameters cell must read "
                                 f"'name: type = value  # help', not {ast.unparse(node)!r}")
        typ = ast.unparse(node.annotation)
        base = typ[5:-1] if typ.startswith("list[") and typ.endswith("]") else typ
        if base not in _TYPES:
            raise ParameterError(f"chapter {chapter}: parameter {node.target.id!r} has unsupported type {typ!r}")
        comment = lines[node.end_lineno - 1][node.end_col_offset:].strip()
        comment = comment[1:].strip() if comment.startswith("#") else ""
        m = re.search(r"\{([^{}]*)\}\s*$", comment)
        constraints = tuple(r.strip() for r in m.group(1).split(",")) if m else ()
        help_text = comment[: m.start()].strip() if m else comment
        p = Parameter(node.target.id, typ, ast.literal_eval(node.value), help_text, constraints)
        p.check(p.default, source="its default")
        params[p.name] = p
    return params


def load_profiles() -> dict[str, dict[str, dict[str, Any]]]:
    """``{chapter: {profile: {name: value}}}`` from notebooks/profiles.toml."""
    if not PROFILES_FILE.exists():
        return {}
    with open(PROFILES_FILE, "rb") as fh:
        data = tomllib.load(fh)
    for chapter, per in data.items():
        for profile in per:
            if profile not in PROFILES:
                raise ParameterError(f"{PROFILES_FILE}: [{chapter}.{profile}] is not a profile; use one of {PROFILES}")
    return data


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """Turn ``['lr=0.1', 'lrs=[1, 2]', 'name=text']`` into values (Python literals, else strings)."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ParameterError(f"-p expects name=value, got {pair!r}")
        name, raw = pair.split("=", 1)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out[name.strip()] = value
    return out


def resolve(chapter: str, profile: str = "quick", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """All parameter values for one run: defaults, then the profile, then ``overrides``; all checked."""
    if profile not in PROFILES:
        raise ParameterError(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}")
    chapter = find_chapter(chapter)
    declared = read_parameters(chapter)
    values = {name: p.default for name, p in declared.items()}
    if "profile" in (overrides or {}):
        raise ParameterError("set the profile with --profile, not -p profile=...")
    if "profile" in declared:  # a chapter that declares `profile` is told which one it runs at
        values["profile"] = declared["profile"].check(profile, "--profile")
    layers = [(load_profiles().get(chapter, {}).get(profile, {}), f"profile {profile} in {PROFILES_FILE.name}"),
              (overrides or {}, "the command line")]
    for layer, source in layers:
        for name, value in layer.items():
            if name not in declared:
                raise ParameterError(f"chapter {chapter} has no parameter {name!r} (from {source}); "
                                     f"it declares: {', '.join(declared)}")
            values[name] = declared[name].check(value, source)
    check_machine_bounds(chapter, values)
    return values


def _ints(value: Any) -> list[int]:
    items = value if isinstance(value, list) else [value]
    return [v for v in items if isinstance(v, int) and not isinstance(v, bool)]


def check_machine_bounds(chapter: str, values: dict[str, Any]) -> None:
    """Refuse values no declared constraint bounds but this machine cannot run; raise ParameterError naming them.

    Every integer must be a 64-bit one, and ``seed + n_seeds`` too (seeds are 64-bit); a parameter named like a
    depth must give a network that can be built in this machine's memory; one named like a step count is at
    most :data:`elr.train.MAX_STEPS`; and the runs the chapter trains (:func:`elr.compute.chapter_work`), with
    the ELR records it keeps of each, must fit the memory (:func:`elr.train.check_fits`).
    """
    from elr import compute, train

    for name, value in values.items():
        for v in _ints(value):
            if not -train.SEED_LIMIT <= v < train.SEED_LIMIT:
                raise ParameterError(f"parameter {name!r} of chapter {chapter} must fit in 64 bits, got {v!r}")
            if "depth" in name and v >= 1:
                model = f"resnet{v}" if v >= 8 and (v - 2) % 6 == 0 else f"bnrelu{v}"
                width = next((values[w] for w in ("width", "ff_width") if isinstance(values.get(w), int)), 64)
                try:
                    train.check_fits(model, width, 1, 1)
                except ValueError as err:
                    raise ParameterError(f"parameter {name!r} of chapter {chapter}: {err}") from None
            if name == "steps" or name.endswith("_steps"):
                if v > train.MAX_STEPS:
                    raise ParameterError(f"parameter {name!r} of chapter {chapter} must be at most "
                                         f"{train.MAX_STEPS:,} (elr.train.MAX_STEPS), got {v:,}")
    seeds = max([v for k, v in values.items() if k in ("n_seeds", "spread_seeds") and isinstance(v, int)], default=0)
    if isinstance(values.get("seed"), int) and values["seed"] + seeds >= train.SEED_LIMIT:
        raise ParameterError(f"seed + n_seeds of chapter {chapter} must stay below 2**63, "
                             f"got seed={values['seed']}, n_seeds={seeds}")
    for work in compute.chapter_work(chapter, values):
        try:
            train.check_fits(work.model, work.width, work.steps, work.log_every, runs=work.runs,
                             names=", ".join(f"{k}={values[k]}" for k in ("n_seeds", "spread_seeds") if k in values)
                             or "the chapter's cases")
        except ValueError as err:
            raise ParameterError(f"chapter {chapter}: {err}") from None


# ----------------------------------------------------------------- execution


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        # the robustness record is written by the builds themselves: it does not make the code they ran dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)book/robustness.md"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


_PLAIN = re.compile(r"[\w .,:;'\"+\-=()/]*")


def _md_literal(text: str) -> str:
    """``text`` shown as itself in a Markdown table cell: a code span when it holds nothing Markdown or HTML
    could read, otherwise every character but letters and digits as a numeric entity (never markup)."""
    if _PLAIN.fullmatch(text):
        return f"`{text}`"
    return "".join(c if c.isalnum() and c.isascii() else f"&#{ord(c)};" for c in text)


def _banner(chapter: str, profile: str, values: dict[str, Any]) -> str:
    """The box under a chapter's title: how it ran, downloads, and the exact commands to rerun it."""
    declared = read_parameters(chapter)
    rows = "\n".join(f"| `{k}` | {_md_literal(repr(v))} | {declared[k].help} |" for k, v in values.items())
    elr_cmd = f"elr run {chapter} --profile {profile}"
    params_json = json.dumps(values).replace("'", "'\\''")
    return (f"````{{admonition}} How this chapter ran, and how to rerun it\n:class: note rerun-box\n"
            f"Profile **{profile}**, elr {elr.__version__} (git {git_revision()}). "
            f"Downloads: {{download}}`the executed notebook <{chapter}.ipynb>` and "
            f"{{download}}`its jupytext source <../../notebooks/{chapter}.py>`.\n\n"
            f"Rerun it from a clone of the repository (after `make install`), with elr or with papermill:\n\n"
            f"```bash\n.venv/bin/{elr_cmd}   # change any value with -p name=value\n"
            f".venv/bin/jupytext --to ipynb notebooks/{chapter}.py -o {chapter}.ipynb\n"
            f".venv/bin/papermill {chapter}.ipynb out.ipynb -y '{params_json}'\n```\n\n"
            f"| parameter | value | meaning |\n|---|---|---|\n{rows}\n````")


def check_built_pages(html_dir: Path, names: list[str]) -> list[str]:
    """Problems with the built chapter pages: each must offer both downloads and the rerun box."""
    problems = []
    for name in names:
        page = html_dir / "book" / "chapters" / f"{name}.html"
        if not page.exists():
            problems.append(f"{page} was not built")
            continue
        markup = page.read_text(encoding="utf-8")
        text = re.sub(r"<[^>]+>", "", markup)  # highlighted code splits commands into spans
        for needle, where, what in (("_downloads/", markup, "a download link"),
                                    (f"{name}.ipynb", text, "the executed notebook's download link"),
                                    (f"{name}.py", text, "the jupytext source's download link"),
                                    ("rerun-box", markup, "the rerun box"),
                                    (f"elr run {name}", text, "the elr run command"),
                                    ("papermill", text, "the papermill command")):
            if needle not in where:
                problems.append(f"{page.name} has no {what}")
    return problems


def _finish_notebook(path: Path, chapter: str, profile: str, values: dict[str, Any]) -> None:
    """Hide the parameter cells and show the values the chapter ran with, right after them."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    last = -1
    for i, cell in enumerate(nb.cells):
        tags = cell.metadata.setdefault("tags", [])
        if "parameters" in tags or "injected-parameters" in tags:
            if "remove-cell" not in tags:
                tags.append("remove-cell")
            last = i
    nb.cells.insert(last + 1, nbformat.v4.new_markdown_cell(_banner(chapter, profile, values)))
    nbformat.write(nb, path)


def _public(text: str) -> str:
    """``text`` without this machine's paths (the repository, the home directory, temporary folders)."""
    for path, name in ((str(ROOT), "<repository>"), (str(Path.home()), "~"), (tempfile.gettempdir(), "<tmp>")):
        if path and path not in ("/", "."):
            text = text.replace(path, name)
    return text


def failure_message(ename: str, evalue: str) -> str:
    """What a reader needs to know of a failed chapter, without a traceback or a path of the build machine:
    for a failed gate claim, the claims (text, measured verdict, interval, threshold) as listed by
    :meth:`elr.claims.Chapter.check`; otherwise the exception's type and message."""
    evalue = re.sub(r"\x1b\[[0-9;]*m", "", _public(evalue)).strip()
    lines = evalue.splitlines()
    if ename == "AssertionError" and lines and "claims" in lines[0]:
        items = "\n".join(f"- {line.strip()}" for line in lines[1:] if line.strip())
        return f"{lines[0].rstrip(':')}:\n\n{items}"
    return f"{ename}: {evalue}"


def _failure_banner(path: Path, ename: str, evalue: str) -> None:
    """Replace papermill's error cell and the traceback of a failed chapter by one banner at its top."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells if "papermill-error-cell-tag" not in c.metadata.get("tags", [])
                and 'id="papermill-error-cell"' not in (c.source if c.cell_type == "markdown" else "")]
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.get("outputs", []) if o.get("output_type") != "error"]
    message = failure_message(ename, evalue).replace("````", "```")
    banner = nbformat.v4.new_markdown_cell(
        "````{admonition} This chapter did not pass when the book was built\n:class: error\n"
        "A claim it asserts did not hold, or its code stopped, in this build. The chapter is shown as far as "
        "it ran; its figures and tables are this build's.\n\n" + message + "\n````")
    banner.metadata["tags"] = ["elr-failure-banner"]
    first = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"
                  and c.source.lstrip().startswith("# ")), -1)
    nb.cells.insert(first + 1, banner)
    nbformat.write(nb, path)


def _running_cell(path: Path) -> str:
    """Which cell an interrupted notebook was in: its index and first line, from papermill's cell metadata."""
    import nbformat

    try:
        nb = nbformat.read(path, as_version=4)
    except Exception:  # noqa: BLE001 - the notebook may be half written; the message still names the chapter
        return "an unknown cell"
    # the chapter's own code cells (not papermill's injected one); the cell it was in is the last one started
    code = [c for c in nb.cells if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]
    started = [i for i, c in enumerate(code) if c.metadata.get("papermill", {}).get("start_time")]
    if not started:
        return "an unknown cell"
    i = started[-1]
    first = code[i].source.strip().splitlines()[0] if code[i].source.strip() else ""
    return f"code cell {i + 1} of {len(code)} ({first[:70]!r})"


def execute(chapter: str, profile: str = "quick", overrides: dict[str, Any] | None = None,
            out_dir: Path | None = None, values: dict[str, Any] | None = None, timeout: float | None = None) -> Path:
    """Execute one chapter with papermill into ``out_dir`` (default book/chapters/); return the notebook path.

    The chapter is stopped after ``timeout`` seconds (see :func:`chapter_timeout`): every cell gets what
    is left of that budget. Raises ChapterFailed, naming the executed notebook that holds the traceback
    (and, on a timeout, the cell that was running).
    """
    timeout = chapter_timeout(timeout)
    import jupytext
    import papermill

    from elr import runs
    from papermill.exceptions import PapermillExecutionError

    values = resolve(chapter, profile, overrides) if values is None else values
    # papermill's own parser does not read `list[int]` annotations and warns; values were checked above.
    logging.getLogger("papermill").setLevel(logging.ERROR)
    out_dir = Path(out_dir or CHAPTERS_OUT)
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / f"{chapter}.ipynb"
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / f"{chapter}.ipynb"
        nb = jupytext.read(_source_of(chapter))
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        jupytext.write(nb, source)
        env_backend = os.environ.get("MPLBACKEND")
        os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
        # the kernel notes which runs this execution uses (`elr runs --stale`), under the root the runs live in
        token = runs.begin_usage(chapter)
        completed = False
        os.environ["ELR_CLAIMS_DIR"] = str(out_dir / "claims")  # where elr.claims writes the chapter's claims record
        # one budget for the whole chapter: each cell may use what the cells before it left (nbclient's timeout_func)
        deadline = time.monotonic() + timeout
        try:
            papermill.execute_notebook(str(source), str(output), parameters=values, kernel_name="python3",
                                       cwd=str(ROOT), progress_bar=False, execution_timeout=timeout,
                                       timeout_func=lambda cell: max(1, int(deadline - time.monotonic()) + 1))
            completed = True
        except PapermillExecutionError as err:
            _finish_notebook(output, chapter, profile, values)
            _failure_banner(output, err.ename, err.evalue)
            raise ChapterFailed(chapter, output, f"{err.ename}: {err.evalue}") from None
        except TimeoutError:
            where = _running_cell(output)
            raise ChapterFailed(chapter, output, f"timed out after {timeout:g} s in {where}; raise the limit with "
                                                 f"--timeout SECONDS or ELR_CHAPTER_TIMEOUT") from None
        finally:
            # the kernel ran in ROOT, so a relative ELR_RUNS (or runs/) is relative to it
            runs.end_usage(chapter, token, completed, roots=[ROOT / runs.default_root()])
            os.environ.pop("ELR_CLAIMS_DIR", None)
            if env_backend is None:
                os.environ.pop("MPLBACKEND", None)
            else:
                os.environ["MPLBACKEND"] = env_backend
    _finish_notebook(output, chapter, profile, values)
    return output


# ---------------------------------------------------------------------- book


def machine() -> str:
    """One line naming this machine and software, for run records."""
    try:
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch_version = "not installed"
    return (f"{platform.machine()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}, torch {torch_version}, elr {elr.__version__}")


def _record(name: str, entry: dict[str, Any], out_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """Set one chapter's entry in the run record (JSON, and the Markdown page the reproducibility page includes).

    Read, changed and written under a lock, each file replaced at once: builds of other chapters running at
    the same time keep their entries. Returns the record as written.
    """
    from elr.runs import locked, write_atomic

    out_dir = Path(out_dir or CHAPTERS_OUT)
    out_dir.mkdir(parents=True, exist_ok=True)
    record_json, record_md = out_dir / RECORD_JSON.name, out_dir / RECORD_MD.name
    with locked(out_dir / ".run_record.lock"):
        try:
            entries = json.loads(record_json.read_text()) if record_json.exists() else {}
        except ValueError:
            print(f"elr: {record_json} could not be read; it is started again", file=sys.stderr, flush=True)
            entries = {}
        known = set(chapters())
        entries = {k: v for k, v in entries.items() if k in known}
        entries[name] = entry
        write_atomic(record_json, json.dumps(entries, indent=2, sort_keys=True))
        total = sum(e["seconds"] for e in entries.values())
        rows = "\n".join(f"| {c} | {e['profile']} | {e['status']} | {e['seconds']:.1f} | {e['finished']} | {e['git']} |"
                         for c, e in sorted(entries.items()))
        write_atomic(record_md, f"| chapter | profile | status | seconds | finished (UTC) | git |\n"
                                f"|---|---|---|---|---|---|\n{rows}\n"
                                f"| **total** | | | **{total:.1f}** | | |\n\nMachine: {machine()}.\n")
    return entries


def summary(entries: dict[str, dict[str, Any]], names: list[str] | None = None) -> str:
    """The closing report of a book run: each chapter's status and time, and where failing notebooks are."""
    names = names or sorted(entries)
    lines = ["elr: summary", f"  {'chapter':28s} {'status':8s} {'seconds':>8s}"]
    for name in names:
        e = entries[name]
        lines.append(f"  {name:28s} {e['status']:8s} {e['seconds']:8.1f}"
                     + (f"  -> {e['notebook']}" if e["status"] != "ok" and e.get("notebook") else ""))
    failed = [n for n in names if entries[n]["status"] != "ok"]
    lines.append(f"  {len(names) - len(failed)} passed, {len(failed)} failed chapters; "
                 f"{sum(entries[n]['seconds'] for n in names):.1f} s of chapter time"
                 + ("; each failing notebook above holds its traceback (a failed claim is a failed assert)"
                    if failed else ""))
    return "\n".join(lines)


def run_chapters(names: list[str], profile: str, overrides: dict[str, Any] | None = None,
                 timeout: float | None = None, where_declared: bool = False,
                 out_dir: Path | None = None) -> dict[str, dict]:
    """Validate every chapter's parameters first, then execute them in order, recording wall times.

    With ``where_declared`` (``elr book -p``) an override applies to every chapter that declares it, and a
    name that no chapter declares is refused. Every chapter runs even when an earlier one failed; a summary
    is printed at the end.
    """
    timeout = chapter_timeout(timeout)
    overrides = overrides or {}
    if where_declared:
        declared = {name: read_parameters(find_chapter(name)) for name in names}
        nowhere = [k for k in overrides if not any(k in d for d in declared.values())]
        if nowhere:
            raise ParameterError(f"no chapter declares {', '.join(map(repr, nowhere))}; see `elr params CHAPTER`")
        plans = {name: resolve(name, profile, {k: v for k, v in overrides.items() if k in declared[name]})
                 for name in names}
    else:
        plans = {name: resolve(name, profile, overrides) for name in names}  # fails before any compute
    out_dir = Path(out_dir or CHAPTERS_OUT)
    entries: dict[str, dict] = {}
    failures = []
    for name, values in plans.items():
        print(f"elr: running {name} at profile {profile} ...", flush=True)
        start = time.perf_counter()
        status = "ok"
        try:
            path = execute(name, profile, values=values, timeout=timeout, out_dir=out_dir)
            print(f"elr:   done in {time.perf_counter() - start:.1f} s -> {path}", flush=True)
        except ChapterFailed as err:
            status = "failed"
            failures.append(err)
            print(f"elr:   FAILED in {time.perf_counter() - start:.1f} s\n{err}", file=sys.stderr, flush=True)
        entries = _record(name, {"profile": profile, "status": status,
                                 "seconds": round(time.perf_counter() - start, 1),
                                 "finished": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "git": git_revision(),
                                 "notebook": str(out_dir / f"{name}.ipynb")}, out_dir)
    print(summary(entries, list(plans)), flush=True)
    if failures:
        raise failures[0] if len(failures) == 1 else ChapterFailed(
            ", ".join(f.chapter for f in failures), failures[0].notebook,
            f"{len(failures)} chapters failed; see the notebooks named above")
    return entries


#: The builds of ``make robust`` (``elr robust``): each executes every chapter at the quick profile in its own
#: run root, so nothing is reused from the default build. name -> (parameter overrides, environment, what it checks)
ROBUST_VARIANTS: dict[str, tuple[dict[str, Any], dict[str, str], str]] = {
    "seed2000": ({"seed": 2000}, {"ELR_WORKERS": "2"},
                 "base seed 2000 in every chapter that declares `seed` (pool of two processes)"),
    "one-process": ({"seed": 3000}, {"ELR_WORKERS": "1"},
                    "base seed 3000; sweeps trained in one process with every torch thread"),
    "one-thread": ({"seed": 4000}, {"ELR_WORKERS": "2", "ELR_THREADS": "1", "OMP_NUM_THREADS": "1"},
                   "base seed 4000; every process with one torch thread, the chapter's own included"),
}
#: Base seeds no build may use to set an expectation of notebooks/claims.toml: the default build's (0) and
#: the robustness builds'. Pilots use 100 and up (elr.claims).
CONFIRMATION_SEEDS = (0, 2000, 3000, 4000)
ROBUST_MD = ROOT / "book" / "robustness.md"


def robust(variants: list[str] | None = None, profile: str = "quick", timeout: float | None = None,
           names: list[str] | None = None) -> dict[str, dict]:
    """Build every chapter once per variant of :data:`ROBUST_VARIANTS`, each in ``_build/robust/<name>`` with
    runs in ``runs-robust/<name>``; write the outcome to ``book/robustness.md`` (the reproducibility page
    includes it). Every variant runs even when an earlier one failed; raises at the end if any failed.

    Each variant's run record (``_build/robust/<name>/run_record.json``) keeps the last build of every chapter
    with its git revision, so ``--only`` rebuilds some chapters and the page still lists the others, each row
    naming the revision it ran."""
    variants = variants or list(ROBUST_VARIANTS)
    names = names or chapters()
    unknown = [v for v in variants if v not in ROBUST_VARIANTS]
    if unknown:
        raise ParameterError(f"unknown robustness variant(s) {unknown}; choose from {list(ROBUST_VARIANTS)}")
    outcome, failed = {}, []
    for name in variants:
        params, env, _ = ROBUST_VARIANTS[name]
        # an override no chosen chapter declares (seed, with --only a chapter that trains nothing) changes nothing
        params = {k: v for k, v in params.items() if any(k in read_parameters(find_chapter(c)) for c in names)}
        env = {**env, "ELR_RUNS": str(ROOT / "runs-robust" / name)}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        print(f"elr: robustness build {name!r}: {ROBUST_VARIANTS[name][2]}", flush=True)
        start = time.perf_counter()
        try:
            entries = run_chapters(names, profile, dict(params), timeout=timeout, where_declared=bool(params),
                                   out_dir=ROOT / "_build" / "robust" / name)
        except ChapterFailed as err:
            failed.append(name)
            record = ROOT / "_build" / "robust" / name / RECORD_JSON.name
            entries = json.loads(record.read_text()) if record.exists() else {}
            print(f"elr: robustness build {name!r} failed: {err}", file=sys.stderr, flush=True)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        outcome[name] = {"entries": {c: e for c, e in entries.items() if c in names},
                         "seconds": round(time.perf_counter() - start, 1), "ok": name not in failed}
        _robust_record(profile)
    if failed:
        raise RuntimeError(f"robustness builds failed: {', '.join(failed)}; see {ROBUST_MD}")
    return outcome


def _chapter_span(names: list[str]) -> str:
    """Chapter numbers with consecutive runs of three or more as ranges: '3–14, 16–19', '15, 20'."""
    nums, parts, i = sorted(int(n[:2]) for n in names), [], 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        parts += [f"{nums[i]}–{nums[j]}"] if j - i >= 2 else [str(n) for n in nums[i:j + 1]]
        i = j + 1
    return ", ".join(parts)


def robust_rows(records: dict[str, dict[str, dict]]) -> list[str]:
    """Markdown rows of the robustness table: one per (variant, git revision) from each variant's run record
    ``{variant: {chapter: entry}}``, with the chapters that revision built, how many passed, and their time."""
    rows = []
    for name, entries in records.items():
        by_git: dict[str, list[str]] = {}
        for chapter, e in sorted(entries.items()):
            by_git.setdefault(e["git"], []).append(chapter)
        for git, group in sorted(by_git.items(), key=lambda kv: min(entries[c]["finished"] for c in kv[1])):
            bad = [c for c in group if entries[c]["status"] != "ok"]
            when = max(entries[c]["finished"] for c in group)
            rows.append(f"| {name} | {ROBUST_VARIANTS[name][2]} | {git} | {_chapter_span(group)} | "
                        f"{len(group) - len(bad)} of {len(group)} | {', '.join(bad) or 'none'} | "
                        f"{sum(entries[c]['seconds'] for c in group):.0f} | {when} |")
    return rows


def _robust_record(profile: str) -> None:
    known = set(chapters())
    records = {}
    for name in ROBUST_VARIANTS:
        path = ROOT / "_build" / "robust" / name / RECORD_JSON.name
        if path.exists():
            records[name] = {c: e for c, e in json.loads(path.read_text()).items() if c in known}
    rows = robust_rows(records)
    # rows of the page as committed whose run records this checkout lacks (they live in _build/, which a fresh
    # clone does not have): kept, each naming the revision it ran, unless a record here holds the same variant
    # and revision. A row's cells: variant, what it varies, revision, ..., finishing time
    cells = lambda row: row.strip(" |").split(" | ")  # noqa: E731
    here = {(cells(r)[0], cells(r)[2]) for r in rows}
    earlier = [line for line in (ROBUST_MD.read_text().splitlines() if ROBUST_MD.exists() else [])
               if line.startswith("| ") and cells(line)[0] in ROBUST_VARIANTS
               and (cells(line)[0], cells(line)[2]) not in here]
    rows = sorted(rows + earlier, key=lambda r: cells(r)[-1])  # by the finishing time
    written = time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())
    lines = [f"At the {profile} profile, on {machine()}; last written {written}. "
             "Each row names the revision it ran; rows from earlier checkouts are kept.",
             "", "| build | what it varies | git | chapters | passed | failed | chapter time (s) | finished (UTC) |",
             "|---|---|---|---|---|---|---|---|", *rows]
    tmp = ROBUST_MD.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(ROBUST_MD)


def build_html(strict: bool = True) -> Path:
    """``jupyter-book build -W --keep-going`` on the executed chapters (execution is off in _config.yml).

    ``strict=False`` drops ``-W``: a chapter that stopped early leaves glue keys undefined, and the book is
    built all the same (``elr book`` exits non-zero for the failed chapter anyway)."""
    missing = [c for c in chapters() if not (CHAPTERS_OUT / f"{c}.ipynb").exists()]
    if missing:
        raise ChapterFailed(", ".join(missing), CHAPTERS_OUT, "not executed yet; run `elr book` without --only first")
    from elr import compute

    plan = CHAPTERS_OUT / "compute_plan.md"
    tmp = plan.with_suffix(".tmp")
    tmp.write_text(compute.plan_markdown("paper"))  # counted FLOPs of the paper profile, in step with profiles.toml
    tmp.replace(plan)
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(ROOT)] + (["-W"] if strict else []) + [
        "--keep-going"]
    print("elr: " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"jupyter-book build failed (exit {proc.returncode}); its warnings are printed above")
    problems = check_built_pages(ROOT / "_build" / "html", chapters())
    if problems:
        raise RuntimeError("the built book lacks what each chapter page must offer:\n  " + "\n  ".join(problems))
    return ROOT / "_build" / "html" / "index.html"


def clean_html() -> None:
    shutil.rmtree(ROOT / "_build", ignore_errors=True)
