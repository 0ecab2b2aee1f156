"""BatchLoader: batches of a split held in memory, augmented with vectorised ops on the device."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .containers import ImageSplit


class BatchLoader:
    """Yields (images float32 normalised N x 3 x crop x crop on `device`, labels int64 on `device`).

    train=True: each iter() draws a fresh permutation of the split and, per image, a random crop of the
    zero-padded image and a horizontal flip with p=0.5, all from `generator` (None = torch's global CPU
    generator). All of an epoch's draws happen when iter() is called, so saving the generator's state
    between epochs and restoring it resumes the exact same sequence.
    train=False: split order, center crop when the images are larger than crop_size, no flip.
    Splits whose images vary in size (`split.sizes`) are cropped inside each image's own area.

    DDP: batch_size is the global batch size. Every rank draws the same global permutation and
    augmentation, and keeps the slice [rank::world_size] of each global batch, so the union of the ranks'
    batches is exactly the single-process batch. Every rank yields len() batches (the last one may be
    smaller, or empty on some ranks, when drop_last is False).
    """

    def __init__(
        self,
        split: ImageSplit,
        batch_size: int,
        *,
        mean,
        std,
        train: bool,
        crop_size: int,
        padding: int = 0,
        flip: bool = True,
        device="cpu",
        generator: torch.Generator | None = None,
        drop_last: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
    ):
        if batch_size % world_size != 0:
            raise ValueError(f"batch_size {batch_size} (global) must be divisible by world_size {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
        if generator is not None and generator.device.type != "cpu":
            raise ValueError("generator must be a CPU torch.Generator, so that draws do not depend on the device")
        # the smallest image decides whether every crop fits
        height, width = split.images.shape[-2:] if split.sizes is None else split.sizes.min(0).values.tolist()
        if train and min(height, width) + 2 * padding < crop_size:
            raise ValueError(f"cannot crop {crop_size} from {height}x{width} images padded by {padding}")
        if not train and min(height, width) < crop_size:
            raise ValueError(f"cannot center-crop {crop_size} from {height}x{width} images")
        self.device = torch.device(device)
        self.images = split.images.to(self.device)  # moved once; batches are gathered on the device
        self.labels = split.labels.to(self.device)
        self.sizes = split.sizes  # kept on the CPU, where the crops are drawn
        self.batch_size, self.train, self.crop_size = batch_size, train, crop_size
        self.padding, self.flip, self.generator = padding, flip, generator
        self.drop_last = train if drop_last is None else drop_last
        self.rank, self.world_size = rank, world_size
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # normalise in 0..255 units: one subtract and one divide on the uint8 -> float copy
        self.mean = 255 * torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = 255 * torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        n = len(self.labels)
        slack = self.crop_size - 2 * self.padding  # a crop starts anywhere in [0, size - slack]
        if self.train:
            # drawn now, not lazily, so that the generator's state after iter() is the next epoch's start
            g = self.generator
            order = torch.randperm(n, generator=g)
            if self.sizes is None:
                height, width = self.images.shape[-2:]
                top = torch.randint(0, height - slack + 1, (n,), generator=g)
                left = torch.randint(0, width - slack + 1, (n,), generator=g)
            else:  # a uniform start within the size of the image at each position of the epoch's order
                top, left = (torch.rand(n, 2, generator=g) * (self.sizes[order] - slack + 1)).long().unbind(1)
            flip = torch.rand(n, generator=g) < (0.5 if self.flip else 0.0)
            draws = [order, top, left, flip]
        elif self.sizes is None:
            draws = [torch.arange(n)]
        else:  # each image's own centre, with torchvision's center_crop anchor
            top, left = torch.round((self.sizes - self.crop_size) / 2).long().unbind(1)
            draws = [torch.arange(n), top, left, torch.zeros(n, dtype=torch.bool)]
        return self._batches([t.to(self.device, non_blocking=True) for t in draws])

    def _batches(self, draws):
        for i in range(len(self)):
            index, *crop = (t[i * self.batch_size:(i + 1) * self.batch_size][self.rank::self.world_size]
                            for t in draws)
            images = self._crop(self.images[index], *crop) if crop else self._center(self.images[index])
            images = (images.float() - self.mean) / self.std
            yield images.contiguous(memory_format=self.memory_format), self.labels[index]

    def _crop(self, images, top, left, flip):
        # crop with index arithmetic on the padded batch: row r of the crop is row top + r of the padded
        # image, column c is left + c, or left + crop - 1 - c when flipped; two gathers, no per-sample loop
        p, size = (self.padding if self.train else 0), self.crop_size
        padded = F.pad(images, (p, p, p, p))
        offsets = torch.arange(size, device=self.device)
        rows = top[:, None] + offsets
        cols = left[:, None] + torch.where(flip[:, None], offsets.flip(0), offsets)
        b, c, _, w = padded.shape
        images = padded.gather(2, rows[:, None, :, None].expand(b, c, size, w))
        return images.gather(3, cols[:, None, None, :].expand(b, c, size, size))

    def _center(self, images):
        # same anchor as torchvision's center_crop
        height, width = images.shape[-2:]
        top, left = round((height - self.crop_size) / 2), round((width - self.crop_size) / 2)
        return images[..., top:top + self.crop_size, left:left + self.crop_size]
