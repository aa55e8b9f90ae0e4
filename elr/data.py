"""Data sets: scikit-learn's digits (offline), CIFAR-10/100 and ImageNet.

* ``digits``: the 1,797 8x8 grey-scale images of handwritten digits that ship
  inside scikit-learn (UCI "optical recognition of handwritten digits", test
  part). Ten classes, no download. It is the data set of the ``quick``
  profile; it is *not* CIFAR, and every run records which data set it used.
* ``cifar10`` / ``cifar100``: the python-pickle release of CIFAR (Krizhevsky,
  2009), read from ``<root>/cifar-10-batches-py`` or ``<root>/cifar-100-python``.
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


def digits(train: bool = True, test_fraction: float = 0.25, split_seed: int = 0) -> TensorData:
    """scikit-learn's digits, split once (fixed seed) into a training and a test part."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float32) / 16.0
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(split_seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, tr = order[:n_test], order[n_test:]
    mean, std = float(x[tr].mean()), float(x[tr].std())
    idx = tr if train else test
    inputs = torch.from_numpy((x[idx] - mean) / std).unsqueeze(1)
    return TensorData(inputs, torch.from_numpy(y[idx]), "digits",
                      f"scikit-learn digits (8x8 grey, 10 classes), {'train' if train else 'test'} part: "
                      f"{len(idx)} of 1,797 images")


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as fh:
        return pickle.load(fh, encoding="latin1")


def cifar(root: str | Path = "data", name: str = "cifar10", train: bool = True, download: bool = False) -> TensorData:
    """CIFAR-10 or CIFAR-100 from the python-pickle release under ``root``."""
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
    batches = [_unpickle(folder / f) for f in files]
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
