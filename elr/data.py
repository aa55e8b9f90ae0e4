"""Data sets: scikit-learn's digits (offline), CIFAR-10/100 and ImageNet.

* ``digits``: the 1,797 8x8 grey-scale images of handwritten digits that ship
  inside scikit-learn (UCI "optical recognition of handwritten digits", test
  part). Ten classes, no download. It is the data set of the ``quick``
  profile; it is *not* CIFAR, and every run records which data set it used.
* ``cifar10`` / ``cifar100``: the python-pickle release of CIFAR (Krizhevsky,
  2009), read from ``<root>/cifar-10-batches-py`` or ``<root>/cifar-100-python``
  with a restricted unpickler (containers and NumPy arrays only: loading a data
  file never runs code), each file checked against the release's published MD5.
  ``download=True`` fetches it with torchvision; otherwise a missing data set
  raises an error saying where we looked and how to get it.
* ``imagenet``: ILSVRC 2012 as an ``ImageFolder`` tree ``<root>/train/<class>/*``
  and ``<root>/val/<class>/*``.

In-memory data sets are tensors already normalised with their own data set's
statistics. Augmentation (random horizontal flips, the paper's only one) is
applied per batch by the training loop with a seeded generator
(:func:`random_flip`), so that runs are reproducible and resumable.
"""
from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# Channel means and standard deviations of each training set, for inputs in [0, 1].
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DATASETS = ("digits", "cifar10", "cifar100", "imagenet")


@dataclass
class TensorData:
    """Inputs (N, C, H, W) float32, normalised, and labels (N,) int64, with a description for records."""

    inputs: torch.Tensor
    labels: torch.Tensor
    name: str
    description: str

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1

    @property
    def shape(self) -> tuple:
        return tuple(self.inputs.shape[1:])


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The images (1797, 8, 8) and labels of scikit-learn's digits, as ``sklearn.datasets.load_digits`` gives them.

    Read from the file scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``) the way ``load_digits``
    reads it, without importing scikit-learn (about 3 s, paid again by every training process of a sweep);
    if the file is not where this version of scikit-learn keeps it, ``load_digits`` itself.
    ``tests/test_data.py`` checks that both give the same arrays.
    """
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    path = (Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
            if spec is not None and spec.submodule_search_locations else None)
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits  # raises ImportError naming scikit-learn if it is missing

        bunch = load_digits()
        return bunch.images, bunch.target
    with gzip.open(path, "rt", encoding="utf-8") as f:
        table = np.loadtxt(f, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)


def digits(train: bool = True, test_fraction: float = 0.25, split_seed: int = 0) -> TensorData:
    """scikit-learn's digits, split once (fixed seed) into a training and a test part."""
    images, target = _digits_arrays()
    x = images.astype(np.float32) / 16.0
    y = target.astype(np.int64)
    order = np.random.default_rng(split_seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, tr = order[:n_test], order[n_test:]
    mean, std = float(x[tr].mean()), float(x[tr].std())
    idx = tr if train else test
    inputs = torch.from_numpy((x[idx] - mean) / std).unsqueeze(1)
    return TensorData(inputs, torch.from_numpy(y[idx]), "digits",
                      f"scikit-learn digits (8x8 grey, 10 classes), {'train' if train else 'test'} part: "
                      f"{len(idx)} of 1,797 images")


class UnsafeDataFile(ValueError):
    """A data file that asks to build objects other than the plain containers and arrays of its format."""


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what the CIFAR python batches hold: dicts, lists, strings, numbers and NumPy arrays.

    Plain containers, strings and numbers need no global at all; NumPy arrays,
    dtypes and scalars are rebuilt through the few constructors below, which
    only make arrays. Any other global (``os.system``, ``builtins.eval``, a
    class with a ``__reduce__``) is refused before it can be called.
    """

    _ALLOWED = {(mod, name) for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
                for name in ("_reconstruct", "scalar")} | {("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise UnsafeDataFile(f"{module}.{name}")


def _read_batch(path: Path, name: str, verify: bool) -> dict:
    """One CIFAR python file, read once: its MD5 checked (with ``verify``), then restricted-unpickled."""
    raw = path.read_bytes()
    if verify:
        _check_md5(path, raw, name)
    try:
        out = _CifarUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except UnsafeDataFile as err:
        raise UnsafeDataFile(
            f"refusing to load {path}: it asks to build {err}, which a CIFAR batch never holds, and loading "
            f"it could run code. Replace it with the original file from the CIFAR release "
            f"(`elr data cifar10 --root ...` verifies the download).") from None
    if not isinstance(out, dict):
        raise UnsafeDataFile(f"{path} is not a CIFAR batch (a dict), got {type(out).__name__}")
    return out


def _published_md5(name: str) -> dict[str, str]:
    """torchvision's published MD5 of each file of the CIFAR python release (it publishes no SHA-256)."""
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    return {f: md5 for f, md5 in cls.train_list + cls.test_list}


def _check_md5(path: Path, raw: bytes, name: str) -> None:
    import hashlib

    published = _published_md5(name).get(path.name)
    digest = hashlib.md5(raw, usedforsecurity=False).hexdigest()
    if published is not None and digest != published:
        raise UnsafeDataFile(
            f"{path} is not the published file: MD5 {digest}, the release's is {published} "
            f"(torchvision's list). Get the original with `elr data {name} --root {path.parent.parent}`, or pass "
            f"verify=False to read a copy you made yourself.")


def cifar(root: str | Path = "data", name: str = "cifar10", train: bool = True, download: bool = False,
          verify: bool = True) -> TensorData:
    """CIFAR-10 or CIFAR-100 from the python-pickle release under ``root``.

    Each file is read with a restricted unpickler that builds only containers
    and NumPy arrays (a crafted batch is refused, never executed), and with
    ``verify`` its MD5 is checked against the published release first.
    """
    if name not in CIFAR_STATS:
        raise ValueError(f"name must be 'cifar10' or 'cifar100', got {name!r}")
    root = Path(root)
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    files = ([f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]) if name == "cifar10" \
        else (["train"] if train else ["test"])
    missing = [f for f in files if not (folder / f).exists()]
    if missing and download:
        import torchvision

        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        cls(str(root), train=train, download=True)
        missing = [f for f in files if not (folder / f).exists()]
    if missing:
        raise FileNotFoundError(
            f"{name.upper()} not found: looked for {', '.join(missing)} under {folder}. Get it with "
            f"`elr data {name} --root {root}` (needs network access; it uses torchvision's download), or unpack "
            f"the python version of the data set there, or use dataset='digits' to run offline.")
    batches = [_read_batch(folder / f, name, verify) for f in files]
    x = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32)
    y = np.concatenate([b["labels" if name == "cifar10" else "fine_labels"] for b in batches]).astype(np.int64)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in CIFAR_STATS[name])
    inputs = (torch.from_numpy(x).float() / 255.0 - mean) / std
    return TensorData(inputs, torch.from_numpy(y), name,
                      f"{name.upper()} {'train' if train else 'test'} set: {len(y):,} images 32x32")


def imagenet(root: str | Path, train: bool = True, image_size: int = 224):
    """ILSVRC 2012 as a torchvision ImageFolder (resize, centre crop, normalise; flips come from the loop)."""
    import torchvision
    from torchvision import transforms

    folder = Path(root) / ("train" if train else "val")
    if not folder.is_dir() or not any(folder.iterdir()):
        raise FileNotFoundError(
            f"ImageNet not found: no class folders under {folder}. Download ILSVRC 2012 from image-net.org "
            f"(it needs an account) and arrange it as {Path(root)}/train/<wnid>/*.JPEG and "
            f"{Path(root)}/val/<wnid>/*.JPEG, or use dataset='digits' to run offline.")
    tf = transforms.Compose([transforms.Resize(int(image_size * 256 / 224)), transforms.CenterCrop(image_size),
                             transforms.ToTensor(), transforms.Normalize(*IMAGENET_STATS)])
    ds = torchvision.datasets.ImageFolder(str(folder), transform=tf)
    ds.name = "imagenet"
    ds.description = f"ImageNet (ILSVRC 2012) {'train' if train else 'val'}: {len(ds):,} images, {len(ds.classes)} classes"
    return ds


def load(name: str, train: bool = True, root: str | Path = "data", download: bool = False):
    """A data set by name: digits, cifar10, cifar100 or imagenet."""
    if name == "digits":
        return digits(train)
    if name in CIFAR_STATS:
        return cifar(root, name, train, download)
    if name == "imagenet":
        return imagenet(root, train)
    raise ValueError(f"unknown dataset {name!r}; use one of {', '.join(DATASETS)}")


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image of a batch horizontally with probability 1/2 (the paper's only augmentation)."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    if not flip.any():
        return x
    x = x.clone()
    x[flip] = x[flip].flip(-1)
    return x
