"""What a loaded dataset is: its splits as uint8 tensors, class names, normalisation and crop."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


@dataclass
class ImageSplit:
    images: torch.Tensor  # uint8, N x 3 x H x W, RGB
    labels: torch.Tensor  # int64, N
    # (N, 2) int64 height and width of each image where sizes vary (fine-grained sets): image i fills the top
    # left sizes[i] of its H x W canvas, the rest is zero. None: every image fills the whole H x W.
    sizes: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> ImageSplit:
        return ImageSplit(self.images[index], self.labels[index], None if self.sizes is None else self.sizes[index])


@dataclass
class Dataset:
    name: str
    train: ImageSplit
    test: ImageSplit
    classes: list[str]  # class names in label order
    mean: tuple[float, float, float]  # per channel, in [0, 1] units
    std: tuple[float, float, float]
    crop_size: int  # the size the model sees
    train_padding: int  # zero padding before the random training crop

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not where they should be (and were not, or could not be, downloaded)."""


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units, in chunks so a large split is never copied to float whole."""
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for chunk in images.split(max(1, 2**24 // images[0].numel())):
        x = chunk.double() / 255
        total += x.sum((0, 2, 3))
        squares += (x * x).sum((0, 2, 3))
    count = images.numel() / 3
    mean = total / count
    std = (squares / count - mean**2).clamp(min=0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def balanced_indices(labels: torch.Tensor, count: int, seed: int = 0) -> torch.Tensor:
    """Ascending indices of `count` items of `labels` that represent every class equally and spread evenly.

    Each class gets the same share (a class with too few items gives all it has and the others share the
    rest; the remainder of count / classes goes to classes drawn with `seed`), and a class's share is evenly
    spaced through its items in their order, from an offset drawn with `seed` (systematic sampling). Why: file
    and synthetic splits are sorted by class, so the first n items, or any contiguous run, can be one class.
    The same (labels, count, seed) give the same indices on any machine. count >= len(labels): every index.
    """
    labels = torch.as_tensor(labels, dtype=torch.int64).flatten()
    if count < 1:
        raise ValueError(f"a subset needs at least 1 image, got {count}")
    if count >= len(labels):
        return torch.arange(len(labels))
    generator = torch.Generator().manual_seed(seed)
    classes, sizes = labels.unique(return_counts=True)
    quota, left = torch.zeros_like(sizes), count
    while left:  # water-filling: equal shares, capped by what each class has
        spare = (quota < sizes).nonzero().squeeze(1)
        share = left // len(spare)
        if share == 0:  # fewer images left than classes: one more each for `left` classes drawn at random
            quota[spare[torch.randperm(len(spare), generator=generator)[:left]]] += 1
            break
        added = (sizes[spare] - quota[spare]).clamp(max=share)
        quota[spare] += added
        left -= int(added.sum())
    chosen = []
    for c, k in zip(classes.tolist(), quota.tolist(), strict=True):
        if k == 0:
            continue
        members = (labels == c).nonzero().squeeze(1)
        stride = len(members) / k
        offset = float(torch.rand((), generator=generator, dtype=torch.float64)) * stride
        positions = ((offset + stride * torch.arange(k, dtype=torch.float64)).floor().long()).clamp(max=len(members) - 1)
        chosen.append(members[positions])
    return torch.cat(chosen).sort().values


def describe_subset(labels: torch.Tensor, index: torch.Tensor, seed: int | None) -> dict:
    """What a subset is, for the record beside the numbers measured on it: size, classes, per-class counts,
    seed and a fingerprint of the exact indices (None seed: the whole split)."""
    labels = torch.as_tensor(labels, dtype=torch.int64).flatten()
    index = torch.as_tensor(index, dtype=torch.int64).flatten()
    per_class = labels[index].unique(return_counts=True)[1]
    return {"images": len(index), "of": len(labels), "classes": len(per_class),
            "per_class": [int(per_class.min()), int(per_class.max())] if len(index) else [0, 0],
            "selection": "all" if len(index) == len(labels) else "class-balanced, evenly spaced in each class",
            "seed": seed, "indices_sha256": hashlib.sha256(index.numpy().tobytes()).hexdigest()[:16]}
