"""Datasets held whole in memory as uint8 tensors, and a batch loader that augments on the device.

Airbench-style: a split is loaded (or generated) once into an N x 3 x H x W uint8 tensor; training
batches are cropped, flipped and normalised with vectorised tensor ops on whatever device the model is
on. Every random draw comes from a CPU torch.Generator owned by the caller, so a run is reproducible
across devices and resumes exactly when the generator's state is saved and restored.

    ds = load("cifar100", "data/")                  # or "synthetic" (no files), "tiny_imagenet", ...
    train = BatchLoader(ds.train, 128, mean=ds.mean, std=ds.std, train=True, crop_size=ds.crop_size,
                        padding=ds.train_padding, device="cuda", generator=torch.Generator().manual_seed(0))
    for images, labels in train: ...

The package by job: `containers` (ImageSplit, Dataset), `loader` (BatchLoader), `synthetic` (the built-in
generated data) and `files` (the dataset readers: CIFAR, Tiny-ImageNet, image folders, fine-grained sets).
"""

from __future__ import annotations

import os
from pathlib import Path

from . import files
from .containers import (
    Dataset,
    DatasetNotFoundError,
    ImageSplit,
    balanced_indices,
    channel_stats,
    describe_subset,
)
from .loader import BatchLoader
from .synthetic import SYNTHETIC_MAX_CLASSES, SYNTHETIC_SIZE, load_synthetic, synthetic_class_names

__all__ = ["BatchLoader", "Dataset", "DatasetNotFoundError", "ImageSplit", "SYNTHETIC_MAX_CLASSES", "SYNTHETIC_SIZE",
           "available", "balanced_indices", "channel_stats", "describe_subset", "load", "synthetic_class_names"]

_LOADERS = {
    "synthetic": load_synthetic,  # called by load() with its own arguments: it has no files
    "cifar10": lambda *a, **kw: files.load_cifar("cifar10", *a, **kw),
    "cifar100": lambda *a, **kw: files.load_cifar("cifar100", *a, **kw),
    "tiny_imagenet": files.load_tiny_imagenet,
    "imagefolder": files.load_imagefolder,
    "cub200": files.load_cub200,
    "stanford_cars": files.load_stanford_cars,
    "fgvc_aircraft": files.load_fgvc_aircraft,
}


def available() -> list[str]:
    return list(_LOADERS)


def load(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    download: bool = False,
    num_classes: int | None = None,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load a dataset whole into memory.

    num_classes keeps the first N classes (in label order); train_per_class / test_per_class keep the
    first n images of each class (file datasets: in sorted or annotation order). None keeps everything,
    except for "synthetic", which generates 10 classes of 500 train and 100 test images by default.
    seed only affects "synthetic".
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(available())}")
    if name != "synthetic" and root is None:
        raise ValueError(f"dataset {name!r} is read from files: pass root, the folder that holds it (the config key "
                         "data_root: --set data_root=DIR)")
    for arg, value in [("num_classes", num_classes), ("train_per_class", train_per_class),
                       ("test_per_class", test_per_class)]:
        if value is not None and value < 1:
            raise ValueError(f"{arg} must be at least 1, got {value}")
    if name == "synthetic":
        return load_synthetic(num_classes, train_per_class, test_per_class, seed)
    subset = dict(num_classes=num_classes, train_per_class=train_per_class, test_per_class=test_per_class)
    return _LOADERS[name](Path(root).expanduser(), download, **subset)


def from_config(config) -> Dataset:
    """The dataset a training config names (its dataset, data_root, download and subset keys).

    The synthetic data is always generated from seed 0: it is a fixed benchmark, and a run's seed varies
    only the training (order, augmentation, mixing, initial weights).
    """
    return load(config.dataset, config.data_root, download=config.download, num_classes=config.num_classes,
                train_per_class=config.train_per_class, test_per_class=config.test_per_class)
