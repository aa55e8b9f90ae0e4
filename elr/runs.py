"""The run cache: where runs live, when one may be reused, which chapters use it, and how stale ones go.

A *run* is a directory ``<root>/<run_key>`` (twelve hex digits, :func:`run_key`) that holds
``config.json`` and ``fingerprint.json``; :func:`elr.train.train` fills it with:

=========================  =============================================================
``config.json``            the config, as given
``fingerprint.json``       what the results depend on besides the config (:func:`code_fingerprint`)
``provenance.json``        elr version, git revision, torch version, device, data set, wall time
``records.npz``            the ELR monitor's tidy records (:class:`elr.measure.Records`)
``metrics.json``           evaluations, final status, and the size and SHA-256 of the two files above
``metrics.json.sha256``    the SHA-256 of ``metrics.json`` itself, written last (:func:`seal`)
``checkpoint.pt``          the state to resume from; it names its config and step (see ``elr.train``)
``lock``                   held (``flock``) by the one process training or deleting the run
=========================  =============================================================

A run is *finished* (:func:`finished`) only when every one of those digests holds: a run cut
while writing, or a file edited by hand (an accuracy, a status), is not reused.

Which runs the chapters use is recorded under the root the runs live in (``<root>/.used/``):
while a chapter executes, each run it asks for is appended to ``<chapter>.<token>.partial``;
when the execution completes, :func:`end_usage` replaces ``<chapter>`` with that list (write,
then rename) and drops the partial lists. A killed or failed execution leaves its partial list,
which keeps protecting its runs (as do the lists a chapter leaves under a root other than the one
the book records, when it passes ``root=`` itself). A run is *stale* (:func:`list_runs`) when other training code
or another torch version made it, or, once usage is recorded, when neither the last completed
execution of any chapter nor an execution since used it. :func:`prune_runs` deletes stale runs
and nothing else: it skips anything that is not a run, never follows a link, and refuses a root
that looks like a source tree.

Shared records (usage lists here, the book's run record in :mod:`elr.book`) are written under a
file lock (:func:`locked`) and replaced atomically (:func:`write_atomic`), so builds can run side
by side.
"""
from __future__ import annotations

import ast
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:  # torch and measure are imported where used, so that `elr runs` and elr.book start fast
    from elr import measure
    from elr.train import TrainConfig

_PACKAGE = Path(__file__).resolve().parent
KEY_PATTERN = re.compile(r"[0-9a-f]{12}")
#: The files a finished run lists in metrics.json (with their sizes and SHA-256), besides metrics.json itself.
RUN_FILES = ("records.npz", "provenance.json")
SEAL = "metrics.json.sha256"
#: Files or folders whose presence marks a directory as a source tree or a project, never a runs root.
NOT_A_RUNS_ROOT = ("pyproject.toml", "setup.py", "setup.cfg", ".git", ".hg", "Makefile", "package.json",
                   "_toc.yml", "elr")


class RunFileError(ValueError):
    """A run file that cannot be read or does not say what it must; the message names the file."""


class NotARunsRoot(ValueError):
    """A directory that :func:`prune_runs` refuses to prune: it looks like a source tree."""


def default_root() -> Path:
    """Where runs live unless a caller says: ELR_RUNS, or ``runs`` (relative to the working directory).

    ``make robust`` points each of its builds at its own root, so that a build with another thread
    count retrains instead of reusing the runs of the default build.
    """
    return Path(os.environ.get("ELR_RUNS") or "runs")


# ------------------------------------------------------------ what a run depends on

#: Modules that training imports but whose edits do not change what a run computes: this one decides
#: which runs are reused and how they are listed, never the numbers in them.
_NOT_RESULTS = {"runs"}


def training_sources() -> list[Path]:
    """The ``elr`` source files training runs through: ``train.py`` and the elr modules it imports.

    Found by reading the module-level imports of ``train.py`` and, in turn, of
    each elr module it reaches (plus ``elr/__init__.py``). Imports inside
    functions are left out on purpose: ``train`` only reaches ``elr.book`` that
    way, to record the git revision, which does not change results. This module
    (the run cache) is left out too: it changes which runs are reused, not their results.
    """
    seen: set[str] = set()
    todo = ["train", "__init__"]
    while todo:
        name = todo.pop()
        if name in seen or name in _NOT_RESULTS or not (_PACKAGE / f"{name}.py").exists():
            continue
        seen.add(name)
        tree = ast.parse((_PACKAGE / f"{name}.py").read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module == "elr":
                todo += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("elr."):
                todo.append(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                todo += [a.name.split(".")[1] for a in node.names if a.name.startswith("elr.")]
    return sorted(_PACKAGE / f"{name}.py" for name in seen)


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> dict[str, str]:
    """What a run's results depend on besides its config: the training sources' content and torch's version.

    Computed once per process, like the imports it describes: the code a process runs is the code it imported.
    Treat the returned dict as read-only.
    """
    import torch

    digest = hashlib.sha256()
    sources = training_sources()
    for path in sources:
        digest.update(path.name.encode() + b"\0" + path.read_bytes().replace(b"\r\n", b"\n") + b"\0")
    return {"code": digest.hexdigest()[:16], "torch": torch.__version__, "sources": ", ".join(p.name for p in sources)}


def made_by_current_code(run_dir: str | Path) -> bool:
    """Was the run in ``run_dir`` made by the training code and torch version of this process?"""
    try:
        made_by = json.loads((Path(run_dir) / "fingerprint.json").read_text())
    except (OSError, ValueError):
        return False  # no fingerprint: an elr too old to say, or a run cut before it began
    fp = code_fingerprint()
    return isinstance(made_by, dict) and made_by.get("code") == fp["code"] and made_by.get("torch") == fp["torch"]


def run_key(config: "TrainConfig", fingerprint: dict[str, str] | None = None) -> str:
    """The name of a run's directory: a hash of the config, the training code and the torch version."""
    fp = fingerprint or code_fingerprint()
    blob = json.dumps({"config": config.to_dict(), "code": fp["code"], "torch": fp["torch"]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ------------------------------------------------------------ files: locks, atomic writes, digests


@contextlib.contextmanager
def locked(path: str | Path, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing, never through a link) while inside.

    Yields True once held; with ``blocking=False`` yields False at once when another process holds it.
    The lock is the kernel's: it goes with the process, so a killed holder never leaves it stuck.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


def write_atomic(path: str | Path, text: str) -> None:
    """Replace ``path`` by ``text`` at once: write a temporary file beside it, flush it to disk, rename it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_entry(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def read_json(path: str | Path, what: str = "a run file") -> Any:
    """Parse a JSON file; a missing, truncated or garbled one raises :class:`RunFileError` naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise RunFileError(f"cannot read {what} {path}: {type(err).__name__}: {err}") from None


def seal(run_dir: str | Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """Write a run's ``metrics.json`` (listing the digests of :data:`RUN_FILES`) and, last, its own digest.

    Returns the metrics as written."""
    run_dir = Path(run_dir)
    metrics = {**metrics, "files": {name: file_entry(run_dir / name) for name in RUN_FILES}}
    text = json.dumps(metrics, indent=2, sort_keys=True, default=str)
    write_atomic(run_dir / "metrics.json", text)
    write_atomic(run_dir / SEAL, hashlib.sha256(text.encode("utf-8")).hexdigest() + "\n")
    return json.loads(text)


def unseal(run_dir: str | Path) -> None:
    """Remove what makes a run finished (metrics and their digest): it will be trained again."""
    for name in ("metrics.json", SEAL):
        (Path(run_dir) / name).unlink(missing_ok=True)


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """``metrics.json`` of a run as a dict; raises :class:`RunFileError` naming the file when it is not one."""
    path = Path(run_dir) / "metrics.json"
    metrics = read_json(path, "the metrics file")
    if not isinstance(metrics, dict):
        raise RunFileError(f"{path} holds a {type(metrics).__name__}, not the metrics of a run; delete it to "
                           "train the run again")
    return metrics


def finished(run_dir: str | Path) -> bool:
    """True when ``run_dir`` holds a complete run: status ``completed``/``diverged`` and every digest intact.

    A run cut while it wrote its results (a missing, truncated or altered file), or one whose metrics were
    edited by hand, is not finished, and is resumed from its checkpoint or retrained.
    """
    run_dir = Path(run_dir)
    try:
        raw = (run_dir / "metrics.json").read_bytes()
        sealed = (run_dir / SEAL).read_text(encoding="ascii").strip()
        metrics = read_metrics(run_dir)
    except (OSError, UnicodeDecodeError, RunFileError):
        return False
    if hashlib.sha256(raw).hexdigest() != sealed:
        return False
    files = metrics.get("files")
    if metrics.get("status") not in ("completed", "diverged") or not isinstance(files, dict) or not files:
        return False
    for name, entry in files.items():
        f = run_dir / name
        if f.is_symlink() or not f.is_file() or file_entry(f) != entry:
            return False
    return True


@contextlib.contextmanager
def run_lock(run_dir: str | Path, blocking: bool = True) -> Iterator[bool]:
    """The lock of one run directory (created if missing): a process trains or deletes the run only while holding it.

    A process that waited while another deleted the directory (a prune) takes the lock of the new one.
    """
    run_dir = Path(run_dir)
    while True:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                same = os.stat(run_dir / "lock", follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                yield True
                return
        finally:
            os.close(fd)


def is_run(path: str | Path) -> bool:
    """A run directory: a real directory (not a link) named like a run key, holding its config and fingerprint."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir() or not KEY_PATTERN.fullmatch(path.name):
        return False
    return all((path / f).is_file() and not (path / f).is_symlink() for f in ("config.json", "fingerprint.json"))


# ------------------------------------------------------------ results read back


@dataclass
class RunResult:
    run_dir: Path
    status: str                     # completed | diverged
    steps_done: int
    diverged_at: int | None
    metrics: dict[str, Any]
    records: "measure.Records" = field(repr=False)

    def accuracy(self, diverged: float) -> float:
        """Final test accuracy; a diverged run counts as ``diverged`` (say chance, 1/classes), never as missing."""
        if self.status != "completed":
            return float(diverged)
        return float(self.metrics["final"]["test_acc"])

    def gradient_spread(self) -> float:
        """S_rel of the loss gradient's ELRs (per-layer maximum over channels) averaged over the logged steps,
        before any transform of the gradient: under ``transform='constrain'`` the ELRs the constraint was
        given (``elr_grad_max`` records the rescaled gradient, whose ELRs it has set equal), otherwise
        :meth:`mean_spread`."""
        import numpy as np

        before = [h["spread_before_constraint"] for h in self.metrics.get("history", ())
                  if "spread_before_constraint" in h]
        if before:
            return float(np.nanmean(before))
        config = self.run_dir / "config.json"
        if config.is_file() and json.loads(config.read_text()).get("transform") == "constrain":
            return float("nan")  # constrained, but diverged before its first logged step
        return self.mean_spread()

    def mean_spread(self, key: str = "elr_grad_max") -> float:
        """S_rel of ``key`` averaged over the logged steps of the run (NaN steps after a divergence left out)."""
        import numpy as np

        _, s_rel = self.records.spread(key)
        return float(np.nanmean(s_rel))


def load_run(run_dir: str | Path) -> RunResult:
    """Read a finished run directory back: the one loader chapters use. A damaged file is named."""
    from elr import measure

    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    missing = [k for k in ("status", "steps_done", "diverged_at") if k not in metrics]
    if missing:
        raise RunFileError(f"{run_dir / 'metrics.json'} lacks {', '.join(missing)}; delete it to train the run again")
    try:
        records = measure.Records.load(run_dir / "records.npz")
    except Exception as err:  # noqa: BLE001 - numpy raises many kinds for a damaged archive; all mean the same
        raise RunFileError(f"cannot read the records {run_dir / 'records.npz'}: {type(err).__name__}: {err}") from None
    return RunResult(run_dir, metrics["status"], metrics["steps_done"], metrics["diverged_at"], metrics, records)


# ------------------------------------------------------------ which chapters use which runs

_USED = ".used"
_usage_count = 0


def begin_usage(chapter: str) -> str:
    """Start recording the runs an execution of ``chapter`` uses (in this process and the kernels it starts).

    Returns the execution's token, to pass to :func:`end_usage`. Nothing recorded before is touched.
    """
    global _usage_count
    _usage_count += 1
    token = f"{os.getpid()}-{_usage_count}"
    os.environ["ELR_CHAPTER"], os.environ["ELR_USAGE"] = chapter, token
    return token


def note_use(root: str | Path, name: str) -> None:
    """Under ``elr run``/``elr book`` (ELR_CHAPTER set), note that this execution of the chapter uses run ``name``."""
    chapter = os.environ.get("ELR_CHAPTER")
    if not chapter:
        return
    token = os.environ.get("ELR_USAGE") or f"{os.getpid()}-0"  # ELR_CHAPTER set by hand: one list per process
    used = Path(root) / _USED
    used.mkdir(parents=True, exist_ok=True)
    # one short O_APPEND write per run: whole lines even from several processes
    fd = os.open(used / f"{chapter}.{token}.partial", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, (name + "\n").encode())
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end_usage(chapter: str, token: str, completed: bool, roots: list[str | Path] | None = None) -> None:
    """End an execution of ``chapter`` started by :func:`begin_usage`.

    When it ``completed``, each root's record of the chapter becomes the runs this execution used (written
    in full, then renamed over the old one), and the partial lists of earlier executions (of this process,
    or of processes that are gone) are dropped. Otherwise everything stays: the partial list of a failed
    execution keeps its runs from being pruned until the chapter next completes.
    """
    for var in ("ELR_CHAPTER", "ELR_USAGE"):
        os.environ.pop(var, None)
    if not completed:
        return
    for root in roots if roots is not None else [default_root()]:
        used = Path(root) / _USED
        used.mkdir(parents=True, exist_ok=True)
        with locked(used / ".lock"):
            mine = used / f"{chapter}.{token}.partial"
            names = sorted(set(mine.read_text(encoding="utf-8").split())) if mine.is_file() else []
            write_atomic(used / chapter, "".join(n + "\n" for n in names))
            me = str(os.getpid())
            for partial in used.glob(f"{glob_escape(chapter)}.*.partial"):
                pid = partial.name[len(chapter) + 1:].split("-", 1)[0]
                if partial == mine or pid == me or not (pid.isdigit() and _pid_alive(int(pid))):
                    partial.unlink(missing_ok=True)


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _usage(root: Path) -> tuple[bool, dict[str, list[str]]]:
    """(whether usage is recorded under ``root``, {run name: chapters that use it})."""
    used_dir = root / _USED
    if used_dir.is_symlink() or not used_dir.is_dir():
        return False, {}
    used: dict[str, list[str]] = {}
    tracked = False
    for f in sorted(used_dir.iterdir()):
        if f.name.startswith(".") or f.is_symlink() or not f.is_file():
            continue
        tracked = True
        chapter = f.name.split(".", 1)[0] if f.name.endswith(".partial") else f.name
        for name in set(f.read_text(encoding="utf-8", errors="replace").split()):
            if chapter not in used.setdefault(name, []):
                used[name].append(chapter)
    return tracked, used


# ------------------------------------------------------------ listing and pruning


@dataclass(frozen=True)
class RunInfo:
    """One run directory under a runs root, as :func:`list_runs` sees it."""

    name: str
    status: str             # completed | diverged | unfinished
    current: bool           # made by the training code and torch version installed now
    chapters: tuple[str, ...]  # chapters whose last completed (or a later) execution used it
    summary: str            # model, lr, seed ... from its config.json
    stale: bool             # can never be reused: other code, or no chapter uses it any more


def list_runs(root: str | Path | None = None) -> list[RunInfo]:
    """Every run directory under ``root`` (default :func:`default_root`), with whether it is stale.

    Only runs (:func:`is_run`) are listed; other files, folders and links are not looked into. A run is
    stale when it was made by other training code or another torch version (no chapter can reuse it),
    or, once chapters have recorded which runs they use (``elr run``/``elr book`` do), when neither the
    last completed execution of a chapter nor an execution since then used it.
    """
    root = default_root() if root is None else Path(root)
    if not root.is_dir():
        return []
    tracked, used = _usage(root)
    out = []
    for d in sorted(p for p in root.iterdir() if is_run(p)):
        current = made_by_current_code(d)
        try:
            cfg = read_json(d / "config.json")
            summary = ", ".join(f"{k}={cfg[k]}" for k in ("model", "shortcut", "lr", "steps", "seed") if k in cfg)
        except (RunFileError, TypeError):
            summary = "unreadable config"
        status = read_metrics(d)["status"] if finished(d) else "unfinished"
        chapters = tuple(sorted(used.get(d.name, [])))
        out.append(RunInfo(d.name, status, current, chapters, summary,
                           stale=not current or (tracked and not chapters)))
    return out


def not_runs(root: str | Path | None = None) -> list[str]:
    """Names of the entries under ``root`` that are not runs (left alone by :func:`prune_runs`)."""
    root = default_root() if root is None else Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.name != _USED and not is_run(p))


def check_runs_root(root: str | Path) -> Path:
    """``root`` if it may hold runs to prune; :class:`NotARunsRoot` if it looks like a source tree or project."""
    root = Path(root)
    marks = [m for m in NOT_A_RUNS_ROOT if os.path.lexists(root / m)]
    if marks:
        raise NotARunsRoot(f"{root} holds {', '.join(marks)}: it looks like a source tree, not a runs root; "
                           f"nothing was deleted. Pass the folder the runs live in (default: ELR_RUNS or runs/)")
    return root


def prune_runs(root: str | Path | None = None, dry_run: bool = False) -> list[str]:
    """Delete the stale runs under ``root`` (default :func:`default_root`); return their names.

    Deletes only run directories (:func:`is_run`), each while holding its lock (a run another process
    is training is skipped), never through a link; with ``dry_run`` deletes nothing and returns what
    it would delete. Refuses a root that looks like a source tree (:func:`check_runs_root`).
    """
    root = check_runs_root(default_root() if root is None else Path(root))
    stale = [r.name for r in list_runs(root) if r.stale]
    if dry_run:
        return stale
    removed = []
    for name in stale:
        d = root / name
        if not is_run(d):  # checked again: it may have changed since it was listed
            continue
        with run_lock(d, blocking=False) as held:
            if not held:
                continue  # another process is training it right now
            shutil.rmtree(d)  # rmtree unlinks links inside a run; it never follows them
        removed.append(name)
    return removed
