"""The run cache loses nothing and tells no lies (issue 27): prune deletes only stale runs, usage records
survive kills and other roots, run files cannot be edited into results, concurrent builds keep every record
and train each run once."""
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import _procs

from elr import cli, train

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(model="bnrelu2", width=8, steps=4, batch_size=16, lr=0.1, log_every=1, eval_batches=1, flip=False)


def _cfg(**kw) -> train.TrainConfig:
    return train.TrainConfig(**{**TINY, **kw})


def _env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}
    for k in ("ELR_FRESH", "ELR_CHAPTER", "ELR_USAGE", "ELR_RUNS"):
        if k not in extra:
            env.pop(k, None)
    return env


# ------------------------------------------------------------------ prune


def _tree_with_everything(tmp_path: Path, monkeypatch) -> dict[str, Path]:
    """A runs root holding a used run, a stale run, a user folder, a TensorBoard log and links."""
    root = tmp_path / "runs"
    monkeypatch.setenv("ELR_CHAPTER", "10_short_term")
    used = train.run(_cfg(), root).run_dir
    monkeypatch.delenv("ELR_CHAPTER")
    stale = train.run(_cfg(seed=1), root).run_dir
    (root / "mine").mkdir()
    (root / "mine" / "notes.txt").write_text("my own work")
    (root / "tb").mkdir()
    (root / "tb" / "events.out.tfevents.1.host").write_bytes(b"\0" * 64)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("not a run")
    (root / "link").symlink_to(outside, target_is_directory=True)
    # a link named like a run, to a run somewhere else: never followed, never deleted through
    elsewhere = train.run(_cfg(seed=2), tmp_path / "elsewhere").run_dir
    (root / elsewhere.name).symlink_to(elsewhere, target_is_directory=True)
    (root / "dangling").symlink_to(tmp_path / "nothing")
    return {"root": root, "used": used, "stale": stale, "outside": outside, "elsewhere": elsewhere}


def test_prune_deletes_only_stale_runs_never_user_folders_logs_or_links(tmp_path, monkeypatch, capsys):
    t = _tree_with_everything(tmp_path, monkeypatch)
    root = t["root"]
    assert cli.main(["runs", "--root", str(root), "--prune", "--yes"]) == 0
    out = capsys.readouterr().out
    assert not t["stale"].exists()
    assert t["used"].exists()
    assert (root / "mine" / "notes.txt").read_text() == "my own work"
    assert (root / "tb" / "events.out.tfevents.1.host").exists()
    assert (root / "link").is_symlink() and (t["outside"] / "precious.txt").exists()
    assert (root / t["elsewhere"].name).is_symlink() and train.finished(t["elsewhere"])
    assert (root / "dangling").is_symlink()
    assert "not runs, never touched" in out and "mine" in out and "tb" in out


def test_prune_is_a_dry_run_unless_confirmed(tmp_path, monkeypatch, capsys):
    t = _tree_with_everything(tmp_path, monkeypatch)
    assert cli.main(["runs", "--root", str(t["root"]), "--prune"]) == 0
    out = capsys.readouterr().out
    assert f"would delete {t['stale']}" in out and "--yes" in out
    assert t["stale"].exists()
    assert train.prune_runs(t["root"], dry_run=True) == [t["stale"].name] and t["stale"].exists()


def test_prune_refuses_a_source_tree(tmp_path, capsys):
    copy = tmp_path / "repo"
    for name in ("elr", "tests", "notebooks", "book"):
        (copy / name).mkdir(parents=True)
        (copy / name / "keep.py").write_text("x = 1\n")
    (copy / "pyproject.toml").write_text("[project]\nname = 'elr'\n")
    assert cli.main(["runs", "--root", str(copy), "--prune", "--yes"]) == 2
    assert "looks like a source tree" in capsys.readouterr().err
    assert all((copy / name / "keep.py").exists() for name in ("elr", "tests", "notebooks", "book"))
    with pytest.raises(ValueError, match="pyproject.toml"):
        train.prune_runs(copy)
    git_only = tmp_path / "checkout"
    (git_only / ".git").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"\.git"):
        train.prune_runs(git_only)


def test_runs_lists_the_root_elr_runs_names(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ELR_RUNS", str(tmp_path / "elsewhere"))
    done = train.run(_cfg())
    assert done.run_dir.parent == tmp_path / "elsewhere"
    assert cli.main(["runs"]) == 0
    assert done.run_dir.name in capsys.readouterr().out


# ------------------------------------------------------------------ usage records

CHAPTER = '''# %% tags=["parameters"]
seed: int = 0  # the run's seed {>= 0}
fail: bool = False  # stop with an error before any training

# %%
from elr import train
assert not fail, "stopped on purpose"
train.run(train.TrainConfig(model="bnrelu2", width=8, steps=3, batch_size=16, eval_batches=1, flip=False, seed=seed))
'''


@pytest.fixture
def scratch_root(tmp_path, monkeypatch):
    """A one-chapter book whose kernels run in tmp_path, so that the default root is tmp_path/runs."""
    from elr import book

    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    (notebooks / "01_trains.py").write_text(CHAPTER)
    for name, value in (("ROOT", tmp_path), ("NOTEBOOKS", notebooks), ("CHAPTERS_OUT", tmp_path / "out"),
                        ("PROFILES_FILE", notebooks / "profiles.toml"),
                        ("RECORD_JSON", tmp_path / "out" / "run_record.json"),
                        ("RECORD_MD", tmp_path / "out" / "run_record.md")):
        monkeypatch.setattr(book, name, value)
    monkeypatch.delenv("ELR_RUNS", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    return tmp_path


@pytest.mark.slow
def test_a_failed_execution_or_another_root_leaves_the_last_record_alone(scratch_root, monkeypatch):
    from elr import book

    root = scratch_root / "runs"
    book.execute("01_trains", "quick", {"seed": 0})
    (root / ".used").mkdir(exist_ok=True)
    (root / ".used" / "99_other").write_text("")  # another chapter's record: usage is tracked in this root
    first = {r.name: r for r in train.list_runs(root)}
    assert len(first) == 1 and not any(r.stale for r in first.values())

    # the same chapter aimed at another root: this root's record is not touched, the other gets its own
    monkeypatch.setenv("ELR_RUNS", str(scratch_root / "other"))
    book.execute("01_trains", "quick", {"seed": 5})
    monkeypatch.delenv("ELR_RUNS")
    assert not any(r.stale for r in train.list_runs(root))
    other = train.list_runs(scratch_root / "other")
    assert len(other) == 1 and other[0].chapters == ("01_trains",) and not other[0].stale
    assert (scratch_root / "other" / ".used" / "01_trains").is_file()

    # an execution that fails (or is killed) before it uses its runs: the runs it used last time stay used
    with pytest.raises(book.ChapterFailed):
        book.execute("01_trains", "quick", {"fail": True})
    assert not any(r.stale for r in train.list_runs(root))
    assert train.prune_runs(root) == [] and set(first) <= {p.name for p in root.iterdir()}

    # a completed execution that uses another run: now the first one is stale
    book.execute("01_trains", "quick", {"seed": 1})
    stale = [r.name for r in train.list_runs(root) if r.stale]
    assert stale == list(first)


def test_runs_of_an_execution_that_never_finished_are_not_stale(tmp_path, monkeypatch):
    from elr import runs

    root = tmp_path / "runs"
    token = runs.begin_usage("10_short_term")
    monkeypatch.setenv("ELR_CHAPTER", "10_short_term")
    monkeypatch.setenv("ELR_USAGE", token)
    kept = train.run(_cfg(), root).run_dir
    monkeypatch.delenv("ELR_CHAPTER")
    monkeypatch.delenv("ELR_USAGE")
    other = train.run(_cfg(seed=1), root).run_dir
    # killed here: end_usage never runs
    info = {r.name: r for r in train.list_runs(root)}
    assert not info[kept.name].stale and info[other.name].stale
    assert train.prune_runs(root) == [other.name] and kept.exists()
    # the next completed execution replaces the record at once and drops the partial list
    runs.end_usage("10_short_term", token, completed=True, roots=[root])
    assert (root / ".used" / "10_short_term").read_text().split() == [kept.name]
    assert not list((root / ".used").glob("*.partial"))


# ------------------------------------------------------------------ run files that cannot lie


@pytest.mark.parametrize("edit", ["accuracy", "status"])
def test_a_hand_edited_metrics_file_is_not_accepted(tmp_path, edit):
    cfg = _cfg()
    first = train.run(cfg, tmp_path)
    path = first.run_dir / "metrics.json"
    metrics = json.loads(path.read_text())
    if edit == "accuracy":
        metrics["final"]["test_acc"] = 0.999
    else:
        metrics["status"], metrics["diverged_at"] = "diverged", 1
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    assert not train.finished(first.run_dir)
    again = train.run(cfg, tmp_path)
    assert again.status == "completed" and again.metrics["final"] == first.metrics["final"]


def test_a_metrics_file_holding_a_list_is_a_run_to_redo(tmp_path, capsys):
    cfg = _cfg()
    first = train.run(cfg, tmp_path)
    (first.run_dir / "metrics.json").write_text("[]")
    assert not train.finished(first.run_dir)
    assert [r.status for r in train.list_runs(tmp_path)] == ["unfinished"]
    assert cli.main(["runs", "--root", str(tmp_path)]) == 0
    with pytest.raises(ValueError, match=r"metrics.json holds a list"):
        train.load_run(first.run_dir)
    assert train.sweep([cfg], tmp_path)[0].metrics["final"] == first.metrics["final"]


def test_a_truncated_config_is_named(tmp_path):
    cfg = _cfg()
    own = tmp_path / "mine"
    train.train(cfg, own)
    (own / "config.json").write_text('{"model": "bnr')
    with pytest.raises(ValueError, match=r"mine/config.json"):
        train.train(cfg, own)
    # in a directory named by the config's key the run can only be this one: it is trained again
    keyed = train.run(cfg, tmp_path / "runs")
    (keyed.run_dir / "config.json").write_text('{"model": "bnr')
    with pytest.warns(UserWarning, match="config.json"):
        again = train.run(cfg, tmp_path / "runs")
    assert again.status == "completed" and json.loads((keyed.run_dir / "config.json").read_text()) == cfg.to_dict()


def test_a_checkpoint_of_another_config_is_not_loaded(tmp_path):
    long = _cfg(steps=12, checkpoint_every=12)
    short = _cfg(steps=6, checkpoint_every=3)
    train.train(long, tmp_path / "long")
    clean = train.train(short, tmp_path / "clean")
    target = tmp_path / "short"
    train.train(short, target)
    (target / "metrics.json").unlink(missing_ok=True)
    (target / "checkpoint.pt").write_bytes((tmp_path / "long" / "checkpoint.pt").read_bytes())  # step 12 of 6
    with pytest.warns(UserWarning, match=r"short/checkpoint.pt"):
        redone = train.train(short, target)
    assert redone.steps_done == 6 and redone.metrics["final"] == clean.metrics["final"]
    np.testing.assert_array_equal(redone.records.table, clean.records.table)


def test_a_truncated_checkpoint_is_named_and_the_run_starts_over(tmp_path):
    cfg = _cfg(steps=6, checkpoint_every=3)
    clean = train.train(cfg, tmp_path / "clean")
    (tmp_path / "clean" / "metrics.json").unlink()
    data = (tmp_path / "clean" / "checkpoint.pt").read_bytes()
    (tmp_path / "clean" / "checkpoint.pt").write_bytes(data[: len(data) // 3])
    with pytest.warns(UserWarning, match=r"clean/checkpoint.pt: it cannot be read"):
        redone = train.train(cfg, tmp_path / "clean")
    np.testing.assert_array_equal(redone.records.table, clean.records.table)


# ------------------------------------------------------------------ side by side

_TRAIN_ONCE = textwrap.dedent("""
    import json, sys, time
    from elr import train
    real = train._train
    def counted(*args, **kwargs):
        print("TRAINED", flush=True)
        time.sleep(1.5)  # long enough that the other process asks for the run meanwhile
        return real(*args, **kwargs)
    train._train = counted
    result = train.run(train.TrainConfig(**json.loads(sys.argv[2])), sys.argv[1])
    print("RESULT", json.dumps(result.metrics["final"]), flush=True)
""")


def test_two_processes_asking_for_one_run_train_it_once(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", _TRAIN_ONCE, str(tmp_path / "runs"), json.dumps(TINY)],
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    assert sum(o.count("TRAINED") for o, _ in outs) == 1, outs
    results = {line for o, _ in outs for line in o.splitlines() if line.startswith("RESULT")}
    assert len(results) == 1  # the second process reused the first one's run


_RECORD = textwrap.dedent("""
    import sys, time
    from elr import book
    def execute(name, profile, values=None, timeout=None, out_dir=None, **kw):
        time.sleep(0.3)
        return out_dir / (name + ".ipynb")
    book.execute = execute
    book.run_chapters(sys.argv[1].split(","), "quick", out_dir=book.CHAPTERS_OUT)
""")


def test_chapters_built_side_by_side_keep_every_record_entry(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    names = [f"{i:02d}_c{i}" for i in range(1, 9)]
    for name in names:
        (notebooks / f"{name}.py").write_text('# %% tags=["parameters"]\nn: int = 1  # a number {>= 1}\n')
    groups = [",".join(names[0::2]), ",".join(names[1::2])]
    procs = [subprocess.Popen([sys.executable, "-c", _RECORD, g], env=_env(ELR_ROOT=str(tmp_path)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for g in groups]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    record = json.loads((tmp_path / "book" / "chapters" / "run_record.json").read_text())
    assert sorted(record) == names
    md = (tmp_path / "book" / "chapters" / "run_record.md").read_text()
    assert all(f"| {n} |" in md for n in names)


SWEEPS = '''# %% tags=["parameters"]
steps: int = 400  # steps per run {>= 1}

# %%
from elr import train
train.sweep([train.TrainConfig(model="resnet20", steps=steps, batch_size=32, n_train=256, eval_batches=1, seed=s)
             for s in range(4)], workers=2)
'''


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and the parent-death signal")
def test_kill_9_of_elr_run_mid_sweep_leaves_no_process_behind(tmp_path):
    """`elr run` starts a kernel, whose sweep starts a pool of two: a kill -9 of `elr run` ends all of them."""
    import signal

    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "01_sweeps.py").write_text(SWEEPS)
    proc = subprocess.Popen([sys.executable, "-m", "elr.cli", "run", "01", "--timeout", "600"], cwd=tmp_path,
                            env=_env(ELR_ROOT=str(tmp_path)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while len(list(tmp_path.glob("runs/*/config.json"))) < 2:  # both workers are training
        assert proc.poll() is None and time.time() < deadline, "elr run ended before its workers trained"
        time.sleep(0.2)
    family = _procs.descendants(proc.pid)
    assert len(family) >= 3  # the kernel and two workers (and the pool's resource tracker)
    os.kill(proc.pid, signal.SIGKILL)  # `elr run` only, as a user's kill -9 does
    proc.wait()
    deadline = time.time() + 15
    while any(_procs.alive(p) for p in family) and time.time() < deadline:
        time.sleep(0.2)
    survivors = [p for p in family if _procs.alive(p)]
    for p in survivors:  # do not leave them to the rest of the session
        os.kill(p, signal.SIGKILL)
    assert not survivors, f"processes of the killed `elr run` still running: {survivors}"
