"""elr.data: the offline digits, and the CIFAR / ImageNet loaders on small files made in their formats."""
import pickle

import numpy as np
import pytest
import torch

from elr import data


def test_digits_is_the_offline_real_data_set():
    train, test = data.digits(True), data.digits(False)
    assert len(train) + len(test) == 1797
    assert train.shape == (1, 8, 8) and train.num_classes == 10
    assert "scikit-learn digits" in train.description
    assert abs(float(train.inputs.mean())) < 1e-5 and abs(float(train.inputs.std()) - 1) < 1e-3


def test_digits_are_read_without_scikit_learn_and_equal_load_digits():
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    bunch = load_digits()
    images, target = data._digits_arrays()
    np.testing.assert_array_equal(images, bunch.images)
    np.testing.assert_array_equal(target, bunch.target)
    code = "import sys, elr.data; elr.data.digits(True); print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_digits_fall_back_to_load_digits_where_the_file_is_elsewhere(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    images, target = data._digits_arrays()
    assert images.shape == (1797, 8, 8) and target.shape == (1797,)


def _write_cifar10(root, n=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n))}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh)
    return folder


def test_cifar10_reads_the_python_release(tmp_path):
    _write_cifar10(tmp_path)
    train = data.cifar(tmp_path, "cifar10", train=True, verify=False)
    test = data.cifar(tmp_path, "cifar10", train=False, verify=False)
    assert train.inputs.shape == (30, 3, 32, 32) and test.inputs.shape == (6, 3, 32, 32)
    assert train.labels.dtype == torch.int64


def test_cifar100_reads_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": np.zeros((4, 3072), np.uint8), "fine_labels": [0, 99, 5, 7],
                         "coarse_labels": [0, 1, 2, 3]}, fh)
    ds = data.cifar(tmp_path, "cifar100", train=True, verify=False)
    assert ds.labels.tolist() == [0, 99, 5, 7]


class _WritesMarker:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.write_text, (pathlib.Path(self.marker), "pwned"))


@pytest.mark.parametrize("where", ["top", "inside"])
def test_a_malicious_cifar_batch_is_refused_and_never_runs(tmp_path, where):
    folder = _write_cifar10(tmp_path)
    marker = tmp_path / "marker"
    payload = _WritesMarker(marker)
    batch = payload if where == "top" else {"data": np.zeros((6, 3072), np.uint8), "labels": [payload] * 6}
    with open(folder / "data_batch_1", "wb") as fh:
        pickle.dump(batch, fh)
    with pytest.raises(data.UnsafeDataFile, match="refusing to load .*data_batch_1.*could run code"):
        data.cifar(tmp_path, "cifar10", train=True, verify=False)
    assert not marker.exists()


def test_a_cifar_file_that_is_not_the_published_one_is_refused(tmp_path):
    _write_cifar10(tmp_path)
    with pytest.raises(data.UnsafeDataFile, match="not the published file: MD5"):
        data.cifar(tmp_path, "cifar10", train=True)
    md5 = data._published_md5("cifar10")
    assert md5["data_batch_1"] == "c99cafc152244af753f735de768cd75f"  # torchvision's list, as published


def test_missing_cifar_says_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        data.cifar(tmp_path, "cifar10")
    message = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py") in message and "elr data cifar10" in message and "digits" in message


def test_imagenet_image_folder(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for wnid in ("n01440764", "n01443537"):
            d = tmp_path / split / wnid
            d.mkdir(parents=True)
            for k in range(2):
                Image.fromarray(np.full((40, 50, 3), 30 * k, np.uint8)).save(d / f"{k}.JPEG", format="JPEG")
    ds = data.imagenet(tmp_path, train=True, image_size=32)
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and len(ds) == 4 and len(ds.classes) == 2


def test_missing_imagenet_says_where(tmp_path):
    with pytest.raises(FileNotFoundError, match="ImageNet not found"):
        data.imagenet(tmp_path)


def test_random_flip_is_seeded_and_flips_about_half():
    x = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).reshape(2, 1, 2, 3).repeat(50, 1, 1, 1)
    a = data.random_flip(x, torch.Generator().manual_seed(0))
    b = data.random_flip(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    flipped = (a != x).flatten(1).any(1).float().mean()
    assert 0.3 < float(flipped) < 0.7
    assert torch.equal(a[(a != x).flatten(1).any(1)], x[(a != x).flatten(1).any(1)].flip(-1))
