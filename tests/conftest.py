"""Tests run the same whatever the caller's environment: no book-level worker count or forced retraining."""
import pytest


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    monkeypatch.delenv("ELR_WORKERS", raising=False)
    monkeypatch.delenv("ELR_FRESH", raising=False)


def pytest_addoption(parser):
    parser.addoption("--shard", default=None, metavar="I/N",
                     help="run only every N-th collected test, from the I-th (0-based): `make test-zoo` runs the "
                          "zoo as two shards in parallel")


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
    config.hook.pytest_deselected(items=[item for k, item in enumerate(items) if k % n != i])
    items[:] = items[i::n]
