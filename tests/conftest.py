"""Tests run the same whatever the caller's environment: no book-level worker count or forced retraining."""
import json
from pathlib import Path

import pytest

ZOO_SECONDS = Path(__file__).with_name("zoo_seconds.json")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    monkeypatch.delenv("ELR_WORKERS", raising=False)
    monkeypatch.delenv("ELR_FRESH", raising=False)


def pytest_addoption(parser):
    parser.addoption("--shard", default=None, metavar="I/N",
                     help="run the I-th of N shards (0-based) of the collected tests, balanced by the seconds in "
                          "tests/zoo_seconds.json: `make test-zoo` runs the zoo as two shards in parallel")


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected theirs, so that the shards split what runs
def pytest_collection_modifyitems(config, items):
    shard = config.getoption("--shard")
    if shard is None:
        return
    try:
        i, n = (int(s) for s in shard.split("/"))
        if not 0 <= i < n:
            raise ValueError
    except ValueError:
        raise pytest.UsageError(f"--shard must be I/N with 0 <= I < N, e.g. 0/2; got {shard!r}") from None
    # largest first, each to the shard with the least so far, by the seconds measured for the zoo (others: the
    # median); without measurements, round robin
    costs = json.loads(ZOO_SECONDS.read_text())["seconds"] if ZOO_SECONDS.exists() else {}
    param = [item.callspec.params.get("name") if hasattr(item, "callspec") else None for item in items]
    known = sorted(costs.values())
    median = known[len(known) // 2] if known else 1.0
    load, shard_of = [0.0] * n, {}
    for k in sorted(range(len(items)), key=lambda k: (-costs.get(param[k], median), k)):
        s = min(range(n), key=lambda j: (load[j], j))
        shard_of[k] = s
        load[s] += costs.get(param[k], median)
    keep = [item for k, item in enumerate(items) if shard_of[k] == i]
    config.hook.pytest_deselected(items=[item for k, item in enumerate(items) if shard_of[k] != i])
    items[:] = keep
