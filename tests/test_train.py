"""elr.train: determinism, exact resume after a kill, divergence as a result, provenance, validation."""
import json

import numpy as np
import pytest
import torch

import _procs

from elr import train

SMALL = dict(model="resnet20", steps=12, batch_size=32, lr=0.2, log_every=2, n_train=256, eval_batches=2)


def test_seeded_runs_are_bit_for_bit_identical(tmp_path):
    a = train.train(train.TrainConfig(**SMALL), tmp_path / "a")
    b = train.train(train.TrainConfig(**SMALL), tmp_path / "b")
    np.testing.assert_array_equal(a.records.table, b.records.table)
    assert a.metrics["final"] == b.metrics["final"] and a.metrics["history"] == b.metrics["history"]
    c = train.train(train.TrainConfig(**{**SMALL, "seed": 1}), tmp_path / "c")
    assert not np.array_equal(a.records.table["value"], c.records.table["value"])


def test_run_directory_holds_config_provenance_records_metrics(tmp_path):
    result = train.train(train.TrainConfig(**SMALL), tmp_path / "run")
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "provenance.json", "records.npz", "metrics.json"} <= files
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert {"elr_version", "git", "torch", "device", "dataset", "wall_seconds"} <= set(prov)
    assert "scikit-learn digits" in prov["dataset"]
    assert result.status == "completed" and 0 <= result.metrics["final"]["test_acc"] <= 1


class Killed(Exception):
    pass


@pytest.mark.parametrize("transform", ["none", "random_walk"])
def test_a_killed_run_resumes_exactly(tmp_path, monkeypatch, transform):
    cfg = train.TrainConfig(**{**SMALL, "checkpoint_every": 4, "transform": transform, "momentum": 0.9})
    whole = train.train(cfg, tmp_path / "whole")
    real_get = train._Batches.get

    def dies_at_step_9(self, step):
        if step == 9:
            raise Killed()
        return real_get(self, step)

    monkeypatch.setattr(train._Batches, "get", dies_at_step_9)
    with pytest.raises(Killed):
        train.train(cfg, tmp_path / "killed")
    assert not (tmp_path / "killed" / "metrics.json").exists() and (tmp_path / "killed" / "checkpoint.pt").exists()
    monkeypatch.setattr(train._Batches, "get", real_get)
    resumed = train.train(cfg, tmp_path / "killed")
    assert resumed.metrics["final"] == whole.metrics["final"]
    assert resumed.metrics["history"] == whole.metrics["history"]
    np.testing.assert_array_equal(resumed.records.table, whole.records.table)


def test_a_finished_run_is_reused_not_retrained(tmp_path):
    cfg = train.TrainConfig(**SMALL)
    first = train.train(cfg, tmp_path / "r")
    stamp = (tmp_path / "r" / "metrics.json").stat().st_mtime_ns
    again = train.train(cfg, tmp_path / "r")
    assert (tmp_path / "r" / "metrics.json").stat().st_mtime_ns == stamp
    assert again.metrics == first.metrics
    with pytest.raises(ValueError, match="different config"):
        train.train(train.TrainConfig(**{**SMALL, "lr": 0.3}), tmp_path / "r")


def test_divergence_is_recorded_not_raised(tmp_path):
    # BatchNorm makes SGD remarkably hard to break: a non-finite loss needs a rate that overflows float32
    cfg = train.TrainConfig(model="bnrelu4", steps=10, batch_size=32, lr=1e38)
    result = train.train(cfg, tmp_path / "d")
    assert result.status == "diverged" and result.diverged_at is not None and result.diverged_at < 10
    saved = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert saved["status"] == "diverged" and saved["diverged_at"] == result.diverged_at


def test_all_finite_sees_nan_and_inf_in_any_tensor_and_nothing_else():
    good = [torch.randn(3, 4), torch.full((5,), 3e38), torch.zeros(2, 2)]  # 3e38: huge, finite, no overflow
    assert train._all_finite(good) and train._all_finite([])
    for bad in (float("nan"), float("inf"), float("-inf")):
        for i in range(3):
            tensors = [t.clone() for t in good]
            tensors[i].view(-1)[-1] = bad
            assert not train._all_finite(tensors), (bad, i)
    mixed = [torch.ones(2, dtype=torch.float64), torch.tensor([1.0, float("nan")])]
    assert not train._all_finite(mixed) and train._all_finite([mixed[0], torch.ones(2)])


def test_subcritical_warmup_and_constraint_run(tmp_path):
    warm = train.train(train.TrainConfig(**{**SMALL, "shortcut": False, "lr": 50.0, "warmup": "subcritical",
                                            "schedule": "cosine"}), tmp_path / "w")
    assert warm.status == "completed" and warm.metrics["warmup_steps"] >= 1
    lrs = [h["lr"] for h in warm.metrics["history"] if "lr" in h]
    assert lrs[0] < 50.0
    constrained = train.train(train.TrainConfig(**{**SMALL, "transform": "constrain", "elr_goal": 0.05,
                                                   "log_every": 1}), tmp_path / "c")
    _, upd = constrained.records.matrix("elr_update")
    np.testing.assert_allclose(upd, 0.2 * 0.05, rtol=1e-2)  # ΔW/W = λ·E_goal in every layer


def test_a_constrained_run_keeps_the_spread_of_the_gradient_before_the_constraint(tmp_path):
    """The monitor reads the rescaled gradient, whose ELRs the constraint has set equal; the run also keeps
    the spread of the loss gradient it was given, at every logged step, and gradient_spread reports that."""
    config = dict(SMALL, shortcut=False, log_every=2)
    constrained = train.train(train.TrainConfig(**config, transform="constrain", elr_goal=0.05), tmp_path / "c")
    before = [h["spread_before_constraint"] for h in constrained.metrics["history"] if "train_loss" in h]
    assert len(before) == len(constrained.records.matrix("elr_grad_max")[0]) and min(before) > 0
    assert constrained.mean_spread("elr_grad") < 1e-3  # the rescaled gradient: whole-layer ELRs all at the goal
    assert constrained.gradient_spread() == pytest.approx(np.mean(before))
    assert constrained.gradient_spread() > 2 * constrained.mean_spread()  # per-channel maxima, after the constraint
    # the first step's spread is that of the untouched network, the same as an unconstrained run's
    plain = train.train(train.TrainConfig(**config), tmp_path / "p")
    _, s_plain = plain.records.spread("elr_grad_max")
    assert before[0] == pytest.approx(s_plain[0], rel=1e-5)
    assert plain.gradient_spread() == plain.mean_spread()
    assert "spread_before_constraint" not in str(plain.metrics["history"])


@pytest.mark.parametrize("bad, message", [
    ({"lr": -0.1}, "lr must be > 0"), ({"steps": 0}, "steps must be in 1\\.\\."),
    ({"schedule": "warmcos"}, "schedule must be one of"), ({"dataset": "mnist"}, "dataset must be one of"),
    ({"nesterov": True}, "nesterov needs momentum"),
])
def test_bad_configs_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        train.TrainConfig(**bad)


@pytest.mark.parametrize("bad, message", [
    ({"eval_batches": -1}, "eval_batches must be >= 0"),
    ({"n_train": -1000}, "n_train must be 0 .* or at least batch_size"),
    ({"n_train": 5, "batch_size": 16}, "n_train must be 0 .* or at least batch_size=16"),
    ({"pct_start": 5}, r"pct_start .* must be in \(0, 1\)"),
    ({"steps": True}, r"steps must be int, got True \(bool\)"),
    ({"lr": "abc"}, "lr must be a finite float, got 'abc'"),
    ({"lr": float("nan")}, "lr must be a finite float"),
    ({"wd": float("inf")}, "wd must be a finite float"),
    ({"milestones": 5}, "milestones must be a list of step numbers"),
    ({"milestones": (30, 10)}, "milestones must be increasing"),
    ({"div_factor": 0}, "div_factor must be > 0"),
    ({"final_div_factor": -1}, "final_div_factor must be > 0"),
    ({"seed": 2**64}, r"seed must be in 0\.\.2\*\*63-1"),
    ({"seed": -1}, r"seed must be in 0\.\.2\*\*63-1"),
    ({"steps": 10**12}, "steps must be in 1..10,000,000"),
    ({"model": "resnet1000004"}, "model='resnet1000004' .*cannot be built on this machine.*the deepest CIFAR ResNet"),
    ({"model": "bnrelu4", "width": 10**6}, "cannot be built on this machine"),
    ({"steps": 10**7, "model": "resnet56"}, "steps=10,000,000 .* results, more than this machine's"),
    ({"shortcut": 1}, "shortcut must be bool"),
    ({"model": "bnrelu8", "shortcut": True}, "model='bnrelu8' has no shortcuts.*use model='resmlp8'"),
    ({"model": "resmlp8", "shortcut": False}, "model='resmlp8' is the residual MLP.*use model='bnrelu8'"),
    ({"model": "resnet20", "head_norm": True}, "head_norm=True is an option of the MLPs .*not of model='resnet20'"),
    ({"lr": 1e300}, "lr, momentum and wd must be at most 3.4e\\+38"),
    ({"model": 20}, "model must be str"),
])
def test_every_value_is_bounded_and_named_before_any_compute(bad, message):
    with pytest.raises(ValueError, match=message):
        train.TrainConfig(**bad)


def test_numpy_scalars_are_the_numbers_they_hold():
    cfg = train.TrainConfig(lr=np.float32(0.5), steps=np.int64(5), milestones=[np.int64(2)], flip=np.bool_(False))
    assert cfg.to_dict()["lr"] == 0.5 and type(cfg.steps) is int and cfg.milestones == (2,) and cfg.flip is False
    json.dumps(cfg.to_dict())  # plain Python values: the config hashes and saves


def test_elr_train_set_refuses_bad_values_with_the_key(tmp_path, capsys):
    from elr import cli

    for pair, message in (("eval_batches=-1", "eval_batches must be >= 0"), ("steps=True", "steps must be int"),
                          ("lr=abc", "lr must be a finite float, got 'abc'"), ("div_factor=0", "div_factor"),
                          ("milestones=5", "milestones must be a list")):
        assert cli.main(["train", "--set", pair, "--run-dir", str(tmp_path / "r")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # refused before anything was made


def test_sweep_seeds_refuses_seeds_that_cannot_fit_before_making_a_config():
    cfg = train.TrainConfig(**SMALL)
    with pytest.raises(ValueError, match=r"n_seeds=1000000000 × 2 cases.*more than this machine's"):
        train.sweep_seeds({"a": cfg, "b": cfg}, 0, 10**9)
    with pytest.raises(ValueError, match="seed \\+ n_seeds must stay below 2\\*\\*63"):
        train.sweep_seeds({"a": cfg}, 2**63 - 2, 5)


def test_unknown_fields_are_named():
    with pytest.raises(ValueError, match="no field\\(s\\) learning_rate"):
        train.TrainConfig.from_dict({"learning_rate": 0.1})


@pytest.mark.slow
def test_two_process_torchrun_gives_identical_records_on_both_ranks(tmp_path):
    import subprocess
    import sys

    from elr import measure

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "elr.cli",
           "train", "--set", "model=resnet20", "--set", "steps=4", "--set", "batch_size=32", "--set", "n_train=128",
           "--set", "eval_batches=1", "--run-dir", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = measure.Records.load(tmp_path / "ddp" / "records.npz")
    rank1 = measure.Records.load(tmp_path / "ddp" / "records.rank1.npz")
    assert len(rank0) > 0
    np.testing.assert_array_equal(rank0.table, rank1.table)
    assert json.loads((tmp_path / "ddp" / "metrics.json").read_text())["status"] == "completed"


def test_bf16_autocast_measures_the_same_elrs_as_float32(tmp_path):
    """At initialisation (same weights), the bf16 path agrees with float32 in every layer of a ResNet20.

    Weights, gradients and norms stay float32; only the forward pass runs in bfloat16, whose 8-bit mantissa
    rounds each operation by up to 2^-9 ≈ 0.2%. Those errors compound through the 19 layers of the forward
    and backward pass, most for the lowest layer, and how they compound depends on the CPU's reduction order:
    the largest layer error was 3% on one machine and 5.1% (the lowest layer) on another. The bounds are set
    from that reasoning, not from one machine: the typical (median) layer within 1%, every layer within 10%.
    Without shortcuts the exploding gradients amplify the error to ~18%, so the test uses shortcuts.
    """
    base = dict(model="resnet20", shortcut=True, steps=1, batch_size=128, lr=0.1, log_every=1, eval_batches=1,
                flip=False)
    fp32 = train.train(train.TrainConfig(**base), tmp_path / "fp32")
    bf16 = train.train(train.TrainConfig(**base, autocast="bf16"), tmp_path / "bf16")
    e32 = fp32.records.matrix("elr_grad")[1][0]
    e16 = bf16.records.matrix("elr_grad")[1][0]
    assert e16.dtype == np.float64 and np.all(np.isfinite(e16))
    rel = np.abs(e16 / e32 - 1)
    assert np.median(rel) < 0.01 and rel.max() < 0.10, rel
    assert not np.array_equal(e16, e32), "the bf16 path really ran in reduced precision"


def test_an_interrupted_sweep_skips_what_it_finished(tmp_path):
    configs = [train.TrainConfig(**{**SMALL, "steps": 4, "seed": s}) for s in range(3)]
    first = train.sweep(configs[:2], tmp_path, workers=2)  # "interrupted" after two of three runs
    stamps = [(r.run_dir / "metrics.json").stat().st_mtime_ns for r in first]
    again = train.sweep(configs, tmp_path, workers=2)
    assert [(r.run_dir / "metrics.json").stat().st_mtime_ns for r in again[:2]] == stamps
    assert all(r.status == "completed" for r in again)
    serial = train.train(configs[2], tmp_path / "serial")
    # a pool run (1 thread) equals a serial one up to the order of floating-point reductions
    np.testing.assert_allclose(again[2].records.table["value"], serial.records.table["value"], rtol=1e-4)


def test_a_killed_sweep_resumes_and_skips_what_it_finished(tmp_path):
    """Kill a real sweep process mid-run; the next sweep skips the finished run and resumes the cut one."""
    import os
    import signal
    import subprocess
    import sys
    import time

    # one worker, and a second run three times as long: it is still training when the first has finished,
    # however busy the machine (two runs side by side could both end between two polls)
    configs = [train.TrainConfig(**{**SMALL, "steps": steps, "seed": s, "checkpoint_every": 5})
               for s, steps in enumerate((200, 600))]
    dirs = [tmp_path / "runs" / train.run_key(c) for c in configs]
    script = ("import sys; from elr import train; "
              f"cfgs = [train.TrainConfig.from_dict(d) for d in {[c.to_dict() for c in configs]!r}]; "
              "train.sweep(cfgs, sys.argv[1], workers=1)")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "runs")],
                            start_new_session=True)
    deadline = time.time() + 120
    while not ((dirs[0] / "metrics.json").exists() and (dirs[1] / "checkpoint.pt").exists()):
        assert proc.poll() is None and time.time() < deadline, "the sweep finished or stalled before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (dirs[1] / "metrics.json").exists(), "the second run was cut before it finished"
    stamp = (dirs[0] / "metrics.json").stat().st_mtime_ns
    resumed = train.sweep(configs, tmp_path / "runs")
    assert (dirs[0] / "metrics.json").stat().st_mtime_ns == stamp, "the finished run was not retrained"
    assert [(r.status, r.steps_done) for r in resumed] == [("completed", 200), ("completed", 600)]
    clean = train.train(configs[1], tmp_path / "clean")
    np.testing.assert_array_equal(resumed[1].records.table, clean.records.table)  # resumed exactly


def test_submitit_local_sweep_lands_in_the_same_run_directories(tmp_path):
    pytest.importorskip("submitit")
    configs = [train.TrainConfig(**{**SMALL, "steps": 3, "seed": s}) for s in range(3)]
    results = train.sweep(configs, tmp_path / "runs", workers=2, engine="submitit", cluster="local", poll_seconds=0.1)
    assert [r.run_dir.name for r in results] == [train.run_key(c) for c in configs]
    assert all(r.status == "completed" for r in results)
    assert (tmp_path / "runs" / "_submitit").is_dir()  # the jobs' logs
    stamps = [(r.run_dir / "metrics.json").stat().st_mtime_ns for r in results]
    train.sweep(configs, tmp_path / "runs", engine="submitit", cluster="local")  # nothing left to do
    assert [(r.run_dir / "metrics.json").stat().st_mtime_ns for r in results] == stamps
    serial = train.train(configs[0], tmp_path / "serial")
    np.testing.assert_allclose(results[0].records.table["value"], serial.records.table["value"], rtol=1e-4)
    with pytest.raises(ValueError, match="engine"):
        train.sweep(configs, tmp_path / "runs", engine="ray")


def test_compiled_training_matches_eager(tmp_path):
    cfg = dict(model="bnrelu2", width=8, steps=3, batch_size=16, lr=0.1, log_every=1, eval_batches=1, flip=False)
    eager = train.train(train.TrainConfig(**cfg), tmp_path / "eager")
    compiled = train.train(train.TrainConfig(**cfg, compile=True), tmp_path / "compiled")
    np.testing.assert_allclose(compiled.records.table["value"], eager.records.table["value"], rtol=1e-4)
    assert compiled.metrics["first_step_seconds"] and len(compiled.metrics["next_step_seconds"]) == 2


def test_sweep_takes_its_worker_count_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ELR_WORKERS", "0")
    with pytest.raises(ValueError, match="workers must be >= 1"):
        train.sweep([train.TrainConfig(**SMALL)], tmp_path)


@pytest.mark.parametrize("transform", ["none", "random_walk"])
def test_logging_more_often_does_not_change_training(tmp_path, transform):
    # chapter 12 logs every step so that its runs are chapter 10's runs; that is only sound if the monitor only reads
    base = dict(model="resnet8", shortcut=False, steps=7, batch_size=32, lr=0.5, n_train=256, eval_batches=1,
                transform=transform)
    sparse = train.train(train.TrainConfig(**base, log_every=3), tmp_path / "sparse")
    dense = train.train(train.TrainConfig(**base, log_every=1), tmp_path / "dense")
    assert sparse.metrics["final"] == dense.metrics["final"]
    steps_sparse, e_sparse = sparse.records.matrix("elr_grad")
    steps_dense, e_dense = dense.records.matrix("elr_grad")
    assert list(steps_sparse) == [0, 3, 6] and len(steps_dense) == 7
    np.testing.assert_array_equal(e_sparse, e_dense[[0, 3, 6]])


def test_digits_are_not_mirrored_by_default_but_natural_images_are():
    """A mirrored handwritten digit is not always the same digit (a mirrored 2 is no 2), so flips are off for
    digits unless asked for; CIFAR and ImageNet keep the paper's random horizontal flips."""
    from elr.train import TrainConfig

    assert not TrainConfig().flips and TrainConfig(flip=True).flips
    assert TrainConfig(dataset="cifar10").flips and not TrainConfig(dataset="cifar10", flip=False).flips


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="/proc and the parent-death signal")
def test_a_killed_sweep_leaves_no_pool_worker_behind(tmp_path):
    """kill -9 a sweep with a pool of two: its workers die with it instead of sleeping forever."""
    import os
    import signal
    import subprocess
    import sys
    import time

    configs = [train.TrainConfig(**{**SMALL, "steps": 400, "seed": s}) for s in range(4)]
    script = ("import sys; from elr import train; "
              f"cfgs = [train.TrainConfig.from_dict(d) for d in {[c.to_dict() for c in configs]!r}]; "
              "train.sweep(cfgs, sys.argv[1], workers=2)")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "runs")])
    deadline = time.time() + 120
    workers: set[int] = set()
    while len(workers) < 2:  # both workers started and training (they have written a run's config)
        assert proc.poll() is None and time.time() < deadline, "the sweep ended before its workers started"
        workers = {p for p in _procs.children(proc.pid) if "spawn_main" in open(f"/proc/{p}/cmdline").read()}
        started = list((tmp_path / "runs").glob("*/config.json")) if (tmp_path / "runs").exists() else []
        workers = workers if len(started) >= 2 else set()
        time.sleep(0.1)
    everyone = _procs.children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)  # the process only, as `kill -9 <pid of elr run>` does
    proc.wait()
    deadline = time.time() + 10
    while any(_procs.alive(p) for p in everyone) and time.time() < deadline:
        time.sleep(0.2)
    survivors = [p for p in everyone if _procs.alive(p)]
    for p in survivors:  # do not leave them to the rest of the test session
        os.kill(p, signal.SIGKILL)
    assert not survivors, f"children of the killed sweep still running: {survivors}"


@pytest.mark.parametrize("model, shortcut, residual", [
    ("bnrelu6", None, False), ("bnrelu6", False, False), ("resmlp6", None, True), ("resmlp6", True, True),
    ("resnet8", None, True), ("resnet8", True, True), ("resnet8", False, False),
])
def test_the_network_built_has_the_shortcuts_the_config_names(model, shortcut, residual):
    """build_model builds the network that has_shortcuts reports: with the same weights, the network differs from
    its plain twin (no shortcuts) exactly when it is residual."""
    config = train.TrainConfig(model=model, shortcut=shortcut, width=8)
    assert config.has_shortcuts is residual
    plain = dict(model="bnrelu6") if model.startswith(("bnrelu", "resmlp")) else dict(model=model, shortcut=False)
    net = train.build_model(config, 1, 10, 64)
    twin = train.build_model(train.TrainConfig(**plain, width=8), 1, 10, 64)
    with torch.no_grad():  # the shortcuts have no weights (option A, identity): the twins share every parameter
        for mine, theirs in zip(twin.parameters(), net.parameters(), strict=True):
            mine.copy_(theirs)
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        same = torch.allclose(net.eval()(x), twin.eval()(x))
    assert same is (not residual)


@pytest.mark.parametrize("model", ["bnrelu6", "resmlp6"])
def test_head_norm_builds_the_batchnorm_before_the_head_and_trains(model, tmp_path):
    config = train.TrainConfig(model=model, width=8, head_norm=True, steps=3, batch_size=16)
    net = train.build_model(config, 1, 10, 64)
    assert isinstance(net.head_norm, torch.nn.BatchNorm1d) and net.head_norm.affine is False
    result = train.train(config, tmp_path / "run")
    assert result.status == "completed"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["head_norm"] is True  # in the run's record
