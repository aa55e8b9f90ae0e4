"""`--shard I/N` (tests/conftest.py): the shards of `make test-zoo` split the zoo, each model once, balanced by
the seconds measured in tests/zoo_seconds.json."""
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def _names(shard: str) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "pytest", str(HERE / "test_zoo.py"), "-m", "zoo", "--shard", shard,
                          "--collect-only", "-q", "-p", "no:cacheprovider"],
                         capture_output=True, text=True, cwd=HERE.parent, check=True).stdout
    return [line.split("[", 1)[1].rstrip("]") for line in out.splitlines() if "::" in line]


def test_the_zoo_shards_split_every_model_once_and_balance_the_measured_seconds():
    import torchvision

    seconds = json.loads((HERE / "zoo_seconds.json").read_text())["seconds"]
    shards = [_names("0/2"), _names("1/2")]
    models = torchvision.models.list_models(module=torchvision.models)
    assert sorted(shards[0] + shards[1]) == sorted(models)
    assert not set(shards[0]) & set(shards[1])
    loads = [sum(seconds.get(n, 0.0) for n in s) for s in shards]
    assert max(loads) <= 1.05 * min(loads), loads  # round robin gave 602 s and 617 s of wall time
    assert set(seconds) == set(models)  # a model torchvision adds or drops: measure the zoo again
