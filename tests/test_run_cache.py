"""The run cache knows the code: a result-changing edit of elr retrains, a prose edit does not;
a half-written run is never reused; a checkpoint is loaded with weights_only and never runs code."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from elr import cli, train

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(model="bnrelu2", width=8, steps=4, batch_size=16, lr=0.1, log_every=1, eval_batches=1, flip=False)

_RUN = """
import json, sys
from elr import train
result = train.run(train.TrainConfig(**json.loads(sys.argv[2])), sys.argv[1])
print(json.dumps({"dir": str(result.run_dir), "mtime": (result.run_dir / "metrics.json").stat().st_mtime_ns,
                  "loss": [h["train_loss"] for h in result.metrics["history"] if "train_loss" in h]}))
"""


def _run_in(copy: Path, runs: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(copy), "ELR_ROOT": str(copy)}
    env.pop("ELR_FRESH", None)
    proc = subprocess.run([sys.executable, "-c", _RUN, str(runs), json.dumps(TINY)], cwd=copy, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(out["dir"]).resolve().parent == runs.resolve()
    return out


def test_a_result_changing_edit_retrains_and_a_prose_edit_reuses(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "elr", copy / "elr", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "notebooks", copy / "notebooks")
    runs = tmp_path / "runs"
    first = _run_in(copy, runs)

    # a chapter's Markdown changes: the same run is reused, untouched
    chapter = copy / "notebooks" / "10_short_term.py"
    chapter.write_text(chapter.read_text().replace("# # ", "# # (edited) ", 1))
    again = _run_in(copy, runs)
    assert again == first

    # the training loss changes (label smoothing): a new run, with other results
    source = copy / "elr" / "train.py"
    text = source.read_text()
    assert text.count("loss = F.cross_entropy(net(x), y)") == 1
    source.write_text(text.replace("loss = F.cross_entropy(net(x), y)",
                                   "loss = F.cross_entropy(net(x), y, label_smoothing=0.1)"))
    changed = _run_in(copy, runs)
    assert changed["dir"] != first["dir"]
    assert changed["loss"] != first["loss"]


def test_training_sources_are_the_modules_train_imports():
    names = {p.name for p in train.training_sources()}
    assert {"train.py", "nets.py", "measure.py", "dynamics.py", "data.py", "schedules.py", "gradients.py",
            "__init__.py"} <= names
    assert not names & {"book.py", "plots.py", "symbolic.py", "cli.py"}  # prose and tooling do not retrain
    assert "runs.py" not in names  # the run cache decides which runs are reused, not what they hold


def test_the_key_covers_config_code_and_torch():
    cfg = train.TrainConfig(**TINY)
    fp = train.code_fingerprint()
    assert train.run_key(cfg, fp) == train.run_key(cfg, dict(fp))
    assert train.run_key(cfg, fp) != train.run_key(train.TrainConfig(**{**TINY, "seed": 1}), fp)
    assert train.run_key(cfg, fp) != train.run_key(cfg, {**fp, "code": "0" * 16})
    assert train.run_key(cfg, fp) != train.run_key(cfg, {**fp, "torch": "0.0"})


def test_a_run_of_other_code_in_the_same_directory_is_retrained(tmp_path):
    cfg = train.TrainConfig(**TINY)
    train.train(cfg, tmp_path / "r")
    fp_path = tmp_path / "r" / "fingerprint.json"
    fp_path.write_text(json.dumps({**json.loads(fp_path.read_text()), "code": "0" * 16}))
    stamp = (tmp_path / "r" / "metrics.json").stat().st_mtime_ns
    train.train(cfg, tmp_path / "r")
    assert (tmp_path / "r" / "metrics.json").stat().st_mtime_ns != stamp
    assert json.loads(fp_path.read_text())["code"] == train.code_fingerprint()["code"]


@pytest.mark.parametrize("damage", ["delete_records", "truncate_records", "no_file_list", "running"])
def test_a_half_written_run_is_not_taken_as_finished(tmp_path, damage):
    cfg = train.TrainConfig(**TINY)
    run_dir = train.run(cfg, tmp_path).run_dir
    assert train.finished(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if damage == "delete_records":
        (run_dir / "records.npz").unlink()
    elif damage == "truncate_records":
        data = (run_dir / "records.npz").read_bytes()
        (run_dir / "records.npz").write_bytes(data[: len(data) // 2])
    elif damage == "no_file_list":
        metrics.pop("files")
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
    else:
        metrics["status"] = "running"
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
    assert not train.finished(run_dir)
    redone = train.sweep([cfg], tmp_path)[0]
    assert redone.status == "completed" and train.finished(run_dir)


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_a_checkpoint_carrying_code_is_refused_and_never_run(tmp_path):
    cfg = train.TrainConfig(**{**TINY, "steps": 8, "checkpoint_every": 4})
    run_dir = tmp_path / "r"
    train.train(train.TrainConfig(**{**TINY, "steps": 8, "checkpoint_every": 4}), run_dir)
    # plant a checkpoint and make the run look interrupted, so that the next call resumes from it
    (run_dir / "metrics.json").unlink()
    marker = tmp_path / "marker"
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    ckpt["history"] = [_Payload(str(marker))]
    torch.save(ckpt, run_dir / "checkpoint.pt")
    with pytest.raises(train.UnsafeCheckpoint, match="refusing to load .*checkpoint.pt"):
        train.train(cfg, run_dir)
    assert not marker.exists()
    # the honest checkpoint elr writes loads with weights_only=True
    train.train(cfg, tmp_path / "clean")
    (tmp_path / "clean" / "metrics.json").unlink()
    assert train.train(cfg, tmp_path / "clean").status == "completed"


def test_no_torch_load_without_weights_only():
    for path in list((ROOT / "elr").glob("*.py")) + list((ROOT / "benchmarks").glob("*.py")) \
            + list((ROOT / "notebooks").glob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path.name}:{n} loads without weights_only=True"


def test_runs_command_lists_and_prunes_stale_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ELR_CHAPTER", "10_short_term")
    used = train.run(train.TrainConfig(**TINY), tmp_path).run_dir
    monkeypatch.delenv("ELR_CHAPTER")
    unused = train.run(train.TrainConfig(**{**TINY, "seed": 1}), tmp_path).run_dir
    old = train.run(train.TrainConfig(**{**TINY, "seed": 2}), tmp_path).run_dir
    (old / "fingerprint.json").write_text(json.dumps({"code": "0" * 16, "torch": "0"}))
    info = {r.name: r for r in train.list_runs(tmp_path)}
    assert not info[used.name].stale and info[used.name].chapters == ("10_short_term",)
    assert info[unused.name].stale and info[old.name].stale and not info[old.name].current
    assert cli.main(["runs", "--root", str(tmp_path), "--stale"]) == 0
    out = capsys.readouterr().out
    assert old.name in out and unused.name in out and used.name not in out.split("elr runs:")[0]
    assert cli.main(["runs", "--root", str(tmp_path), "--prune"]) == 0  # a dry run: it says, deletes nothing
    out = capsys.readouterr().out
    assert f"would delete {unused}" in out and f"would delete {old}" in out and str(used) not in out
    assert used.exists() and unused.exists() and old.exists()
    assert cli.main(["runs", "--root", str(tmp_path), "--prune", "--yes"]) == 0
    assert used.exists() and not unused.exists() and not old.exists()
