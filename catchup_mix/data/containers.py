"""What a loaded dataset is: its splits as uint8 tensors, class names, normalisation and crop."""

from __future__ import annotations

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
