"""Datasets held whole in memory as uint8 tensors, and a batch loader that augments on the device.

Airbench-style: a split is loaded (or generated) once into an N x 3 x H x W uint8 tensor; training
batches are cropped, flipped and normalised with vectorised tensor ops on whatever device the model is
on. Every random draw comes from a CPU torch.Generator owned by the caller, so a run is reproducible
across devices and resumes exactly when the generator's state is saved and restored.

    ds = load("cifar100", "data/")                  # or "synthetic" (no files), "tiny_imagenet", ...
    train = BatchLoader(ds.train, 128, mean=ds.mean, std=ds.std, train=True, crop_size=ds.crop_size,
                        padding=ds.train_padding, device="cuda", generator=torch.Generator().manual_seed(0))
    for images, labels in train: ...
"""

from __future__ import annotations

import math
import os
import re
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2.functional import resize
from tqdm import tqdm


@dataclass
class ImageSplit:
    images: torch.Tensor  # uint8, N x 3 x H x W, RGB
    labels: torch.Tensor  # int64, N

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
        raise ValueError(f"dataset {name!r} is read from files: pass root (the folder that holds it)")
    for arg, value in [("num_classes", num_classes), ("train_per_class", train_per_class),
                       ("test_per_class", test_per_class)]:
        if value is not None and value < 1:
            raise ValueError(f"{arg} must be at least 1, got {value}")
    if name == "synthetic":
        return _load_synthetic(num_classes, train_per_class, test_per_class, seed)
    subset = dict(num_classes=num_classes, train_per_class=train_per_class, test_per_class=test_per_class)
    return _LOADERS[name](Path(root).expanduser(), download, **subset)


# ----------------------------------------------------------------------------------------------------
# Batches


class BatchLoader:
    """Yields (images float32 normalised N x 3 x crop x crop on `device`, labels int64 on `device`).

    train=True: each iter() draws a fresh permutation of the split and, per image, a random crop of the
    zero-padded image and a horizontal flip with p=0.5, all from `generator` (None = torch's global CPU
    generator). All of an epoch's draws happen when iter() is called, so saving the generator's state
    between epochs and restoring it resumes the exact same sequence.
    train=False: split order, center crop when the images are larger than crop_size, no flip.

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
        height, width = split.images.shape[-2:]
        if train and min(height, width) + 2 * padding < crop_size:
            raise ValueError(f"cannot crop {crop_size} from {height}x{width} images padded by {padding}")
        if not train and min(height, width) < crop_size:
            raise ValueError(f"cannot center-crop {crop_size} from {height}x{width} images")
        self.device = torch.device(device)
        self.images = split.images.to(self.device)  # moved once; batches are gathered on the device
        self.labels = split.labels.to(self.device)
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
        if self.train:
            # drawn now, not lazily, so that the generator's state after iter() is the next epoch's start
            height, width = self.images.shape[-2:]
            g = self.generator
            order = torch.randperm(n, generator=g)
            top = torch.randint(0, height + 2 * self.padding - self.crop_size + 1, (n,), generator=g)
            left = torch.randint(0, width + 2 * self.padding - self.crop_size + 1, (n,), generator=g)
            flip = torch.rand(n, generator=g) < (0.5 if self.flip else 0.0)
            draws = [t.to(self.device) for t in (order, top, left, flip)]
        else:
            draws = [torch.arange(n, device=self.device)]
        return self._batches(draws)

    def _batches(self, draws):
        for i in range(len(self)):
            index, *augment = (t[i * self.batch_size:(i + 1) * self.batch_size][self.rank::self.world_size]
                               for t in draws)
            images = self._augment(self.images[index], *augment) if self.train else self._center(self.images[index])
            images = (images.float() - self.mean) / self.std
            yield images.contiguous(memory_format=self.memory_format), self.labels[index]

    def _augment(self, images, top, left, flip):
        # crop with index arithmetic on the padded batch: row r of the crop is row top + r of the padded
        # image, column c is left + c, or left + crop - 1 - c when flipped; two gathers, no per-sample loop
        p, size = self.padding, self.crop_size
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


# ----------------------------------------------------------------------------------------------------
# Helpers shared by the loaders


def _subset(labels, num_classes: int, per_class: int | None, split: str) -> torch.Tensor:
    """Indices (in the given order) of the first `per_class` items of each of the first `num_classes` classes."""
    labels = torch.as_tensor(labels, dtype=torch.int64)
    keep = labels < num_classes
    if per_class is not None:
        # rank of each item within its class, in order of appearance
        rank = torch.empty_like(labels)
        for c in range(num_classes):
            where = (labels == c).nonzero().squeeze(1)
            if len(where) < per_class:
                raise ValueError(f"{split}: class {c} has {len(where)} images, fewer than the {per_class} asked for")
            rank[where] = torch.arange(len(where))
        keep &= rank < per_class
    return keep.nonzero().squeeze(1)


def _check_num_classes(num_classes: int | None, available_classes: int, name: str) -> int:
    if num_classes is None:
        return available_classes
    if num_classes > available_classes:
        raise ValueError(f"{name} has {available_classes} classes; cannot keep {num_classes}")
    return num_classes


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
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


def _natural_key(path) -> list:
    # "img_10" after "img_9", so the "first n" images of a class are the ones a person would expect
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", Path(path).name)]


_IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp"}


def _image_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_EXTENSIONS), key=_natural_key)


def _decode(paths: list[Path], size: int | None = None, desc: str = "decoding") -> torch.Tensor:
    """Decode image files into one N x 3 x H x W uint8 tensor (greyscale and RGBA become RGB).

    size=None: every image must have the first one's size; otherwise each is resized to size x size
    (antialiased). Decoding and resizing release the GIL, so large images decode in a thread pool (1.9x
    on 2 cores for 500x375 JPEGs resized to 256). Up to 64x64 the per-file Python overhead dominates and
    threads only contend for the GIL (CIFAR-size JPEGs: 15k/s on one thread, 11k/s on two).
    """
    if not paths:
        raise ValueError(f"{desc}: no image files")

    def decode(path):
        try:
            image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
        except RuntimeError as e:
            raise ValueError(f"could not decode {path}: {e}") from e
        return image if size is None else resize(image, [size, size], antialias=True)

    first = decode(paths[0])
    out = torch.empty((len(paths), *first.shape), dtype=torch.uint8)

    def work(start):
        for i in range(start, min(start + chunk, len(paths))):
            image = decode(paths[i])
            if image.shape != first.shape:
                raise ValueError(f"{paths[i]} is {tuple(image.shape[1:])} but {paths[0]} is "
                                 f"{tuple(first.shape[1:])}: all images must have the same size (H, W)")
            out[i] = image
        return min(chunk, len(paths) - start)

    chunk = 256
    workers = 1 if first.shape[1] * first.shape[2] <= 64 * 64 else os.cpu_count() or 1
    with ThreadPoolExecutor(workers) as pool, \
            tqdm(total=len(paths), desc=desc, unit="img", disable=len(paths) < 5000) as bar:
        for done in pool.map(work, range(0, len(paths), chunk)):
            bar.update(done)
    return out


def _split_from_files(files: list[Path], labels: list[int], num_classes, per_class, split: str,
                      size: int | None = None) -> ImageSplit:
    """Subset first, then decode only the files kept."""
    index = _subset(labels, num_classes, per_class, split)
    return ImageSplit(_decode([files[i] for i in index], size, desc=split),
                      torch.as_tensor(labels, dtype=torch.int64)[index])


def _download(what: str, fetch, way_out: str):
    """Run a download; turn a network failure into a DatasetNotFoundError that says what to do instead."""
    try:
        fetch()
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        raise DatasetNotFoundError(f"could not download {what} ({type(e).__name__}: {e}). "
                                   f"Without network access, {way_out}") from e


# ----------------------------------------------------------------------------------------------------
# Synthetic data: the built-in default, generated from a seed, no files
#
# A class is a (shape, texture, hue) triple: class c takes shape c % 8, texture c % 5 and hue c % 6, so
# for c < 24 any two classes differ in at least two of the three (sharing two would need a difference
# that is a multiple of lcm(8, 6) = 24, lcm(5, 6) = 30 or lcm(8, 5) = 40). Cues are redundant, so what a
# CutMix box or a swapped channel leaves of an object still says something about its class, and the hue
# alone is shared (by 2 of the default 10 classes). Nuisances: position, scale, small rotation, aspect,
# hue/saturation/brightness jitter, a gradient + blotchy background of random colour, pixel noise, and a
# fainter distractor object with random attributes. Calibrated so that a width-16 PreActResNet-18 trained
# 10 epochs on the default 5,000 images reaches roughly 65-85% test accuracy (recipe-dependent).

SHAPES = ("disk", "square", "triangle", "ring", "cross", "bar", "diamond", "frame")
TEXTURES = ("hstripes", "vstripes", "checker", "dots", "rings")
HUES = ("red", "yellow", "green", "cyan", "blue", "magenta")  # hue = index / 6
SYNTHETIC_MAX_CLASSES = 24
SYNTHETIC_SIZE = 32


def synthetic_class_names(num_classes: int = 10) -> list[str]:
    return [f"{SHAPES[c % 8]}-{TEXTURES[c % 5]}-{HUES[c % 6]}" for c in range(num_classes)]


def _shape_distances(u, v):
    """Signed distance (negative inside, in units of the object radius) to each of SHAPES: 8 x ..."""
    rho = torch.sqrt(u * u + v * v)
    au, av = u.abs(), v.abs()

    def box(half_u, half_v):
        return torch.maximum(au - half_u, av - half_v)

    triangle_side = (au * 1.7 - (v + 1) * 0.95) / math.hypot(1.7, 0.95)  # apex (0, -1), base corners (+-0.95, 0.7)
    return torch.stack([
        rho - 1,  # disk
        box(0.8, 0.8),  # square
        torch.maximum(v - 0.7, triangle_side),  # triangle
        (rho - 0.72).abs() - 0.28,  # ring
        torch.minimum(box(0.3, 0.95), box(0.95, 0.3)),  # cross
        box(1.0, 0.35),  # bar
        (au + av - 1) / math.sqrt(2),  # diamond
        torch.maximum(box(0.9, 0.9), 0.5 - torch.maximum(au, av)),  # frame
    ])


def _textures(u, v, period, phase):
    """Each of TEXTURES in [0, 1], in the object's own (rotated, scaled) coordinates: 5 x ..."""
    a, b = 2 * math.pi * u / period + phase, 2 * math.pi * v / period + phase
    rho = torch.sqrt(u * u + v * v)
    return torch.stack([
        0.5 + 0.5 * torch.cos(b),  # hstripes
        0.5 + 0.5 * torch.cos(a),  # vstripes
        0.5 + 0.5 * (3 * torch.sin(a) * torch.sin(b)).clamp(-1, 1),  # checker
        (torch.cos(a) + torch.cos(b) - 0.6).clamp(0, 1),  # dots
        0.5 + 0.5 * torch.cos(2 * math.pi * rho / period + phase),  # rings
    ])


def _hsv_to_rgb(h, s, v):
    """h, s, v: tensors of the same shape, in [0, 1]; returns ... x 3."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + 6 * h[..., None]) % 6
    return v[..., None] * (1 - s[..., None] * torch.minimum(k, 4 - k).clamp(0, 1))


def _render_objects(n, shape, texture, hue, radius, grid, g):
    """n objects (per-sample shape/texture/hue indices, radius in image half-widths) -> alpha n x 1 x H x W,
    colour n x 3 x H x W."""
    def uniform(lo, hi, *size):
        return lo + (hi - lo) * torch.rand(n, *size, generator=g)

    y, x = grid
    centre = uniform(-0.55, 0.55, 2)
    angle = uniform(-0.4, 0.4)  # radians; small, so that horizontal and vertical stripes stay distinct
    aspect = uniform(-0.15, 0.15).exp()
    dx, dy = x - centre[:, 0, None, None], y - centre[:, 1, None, None]
    cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
    u = (cos * dx + sin * dy) / (radius * aspect)[:, None, None]
    v = (cos * dy - sin * dx) / (radius / aspect)[:, None, None]
    pick = torch.arange(n)
    distance = _shape_distances(u, v)[shape, pick]
    half_width_px = SYNTHETIC_SIZE / 2
    alpha = (0.5 - distance * (radius * half_width_px)[:, None, None]).clamp(0, 1)  # antialiased edge
    pattern = _textures(u, v, uniform(0.45, 0.65)[:, None, None], uniform(0, 2 * math.pi)[:, None, None])
    pattern = pattern[texture, pick]
    rgb = _hsv_to_rgb((hue / 6 + uniform(-0.08, 0.08)) % 1, uniform(0.35, 1.0), uniform(0.4, 1.0))
    dark = uniform(0.3, 0.65)[:, None, None]  # texture contrast: dark parts are this fraction of the colour
    shade = dark + (1 - dark) * pattern
    return alpha[:, None], rgb[:, :, None, None] * shade[:, None]


def _render_synthetic(label: int, n: int, g: torch.Generator) -> torch.Tensor:
    """n images of class `label`: uint8 n x 3 x 32 x 32."""
    def uniform(lo, hi, *size):
        return lo + (hi - lo) * torch.rand(n, *size, generator=g)

    size = SYNTHETIC_SIZE
    coords = (torch.arange(size) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    grid = torch.meshgrid(coords, coords, indexing="ij")

    # background: a gradient between two random, mostly unsaturated colours, plus low-frequency blotches
    ends = _hsv_to_rgb(uniform(0, 1, 2), uniform(0, 0.8, 2), uniform(0.1, 0.95, 2))  # n x 2 x 3
    direction = uniform(0, 2 * math.pi)
    t = (direction.cos()[:, None, None] * grid[1] + direction.sin()[:, None, None] * grid[0] + 1.5) / 3
    image = ends[:, 0, :, None, None] + (ends[:, 1] - ends[:, 0])[:, :, None, None] * t[:, None]
    blotches = torch.randn(n, 3, 4, 4, generator=g) * 0.12
    image = image + F.interpolate(blotches, size=(size, size), mode="bicubic", align_corners=False)

    # distractor: smaller, fainter, any attributes except the class's shape; present in 80% of images
    shape = torch.full((n,), label % len(SHAPES))
    other_shape = (shape + torch.randint(1, len(SHAPES), (n,), generator=g)) % len(SHAPES)
    radius = uniform(0.22, 0.48)
    alpha, colour = _render_objects(n, other_shape, torch.randint(0, len(TEXTURES), (n,), generator=g),
                                    torch.randint(0, len(HUES), (n,), generator=g),
                                    radius * uniform(0.5, 0.9), grid, g)
    alpha = alpha * (uniform(0.4, 0.8) * (uniform(0, 1) < 0.8))[:, None, None, None]
    image = image * (1 - alpha) + colour * alpha

    alpha, colour = _render_objects(n, shape, torch.full((n,), label % len(TEXTURES)),
                                    torch.full((n,), label % len(HUES)), radius, grid, g)
    image = image * (1 - alpha) + colour * alpha

    image = image + torch.randn(n, 3, size, size, generator=g) * uniform(0.04, 0.16)[:, None, None, None]
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def _load_synthetic(num_classes, train_per_class, test_per_class, seed) -> Dataset:
    num_classes = 10 if num_classes is None else num_classes
    if num_classes > SYNTHETIC_MAX_CLASSES:
        raise ValueError(f"synthetic has at most {SYNTHETIC_MAX_CLASSES} classes, asked for {num_classes}")
    # independent streams per split and per class: a class's images do not depend on num_classes
    streams = np.random.SeedSequence(seed).spawn(2)
    splits = []
    for stream, per_class in zip(streams, (train_per_class or 500, test_per_class or 100), strict=True):
        images, labels = [], []
        for label, class_stream in enumerate(stream.spawn(num_classes)):
            g = torch.Generator().manual_seed(int(class_stream.generate_state(1, np.uint64)[0]))
            images.append(_render_synthetic(label, per_class, g))
            labels.append(torch.full((per_class,), label, dtype=torch.int64))
        splits.append(ImageSplit(torch.cat(images), torch.cat(labels)))
    mean, std = _channel_stats(splits[0].images)
    return Dataset("synthetic", splits[0], splits[1], synthetic_class_names(num_classes), mean, std,
                   crop_size=SYNTHETIC_SIZE, train_padding=4)


# ----------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (torchvision's official python pickles)

_CIFAR = {
    "cifar10": (torchvision.datasets.CIFAR10, "cifar-10-batches-py", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": (torchvision.datasets.CIFAR100, "cifar-100-python", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _load_cifar(name, root: Path, download, num_classes, train_per_class, test_per_class) -> Dataset:
    cls, folder, mean, std = _CIFAR[name]
    if root.name == folder:  # accept the official folder itself as well as its parent
        root = root.parent
    way_out = f"place the official {folder!r} folder (the python version of {name}) inside {root}"
    if download:
        _download(name, lambda: cls(str(root), train=False, download=True), way_out)
    if not (root / folder).is_dir():
        raise DatasetNotFoundError(f"{name} not found: {root / folder} does not exist. Either pass download=True "
                                   f"(set download: true) to fetch it, or {way_out}")
    splits = []
    for train, per_class in [(True, train_per_class), (False, test_per_class)]:
        try:
            raw = cls(str(root), train=train, download=False)
        except RuntimeError as e:  # torchvision's "Dataset not found or corrupted"
            raise DatasetNotFoundError(f"{name} in {root / folder} is incomplete or corrupted ({e}). "
                                       f"Delete it and pass download=True, or {way_out}") from e
        kept = _check_num_classes(num_classes, len(raw.classes), name)
        index = _subset(raw.targets, kept, per_class, f"{name} {'train' if train else 'test'}")
        images = torch.from_numpy(raw.data).permute(0, 3, 1, 2)[index].contiguous()  # N H W C -> N C H W
        splits.append(ImageSplit(images, torch.as_tensor(raw.targets, dtype=torch.int64)[index]))
    classes = list(raw.classes[:kept])
    return Dataset(name, splits[0], splits[1], classes, mean, std, crop_size=32, train_padding=4)


# ----------------------------------------------------------------------------------------------------
# Tiny-ImageNet-200 (the official zip layout)

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
_TINY_LAYOUT = ("the official layout is tiny-imagenet-200/{wnids.txt, train/<wnid>/images/<wnid>_<k>.JPEG, "
                "val/images/val_<k>.JPEG, val/val_annotations.txt}, as unpacked from " + TINY_IMAGENET_URL)


def _load_tiny_imagenet(root: Path, download, num_classes, train_per_class, test_per_class) -> Dataset:
    if not (root / "wnids.txt").is_file() and (root / "tiny-imagenet-200").is_dir():
        root = root / "tiny-imagenet-200"  # accept the parent folder too
    if download and not (root / "wnids.txt").is_file():
        parent = root.parent if root.name == "tiny-imagenet-200" else root
        _download("tiny_imagenet", lambda: torchvision.datasets.utils.download_and_extract_archive(
            TINY_IMAGENET_URL, str(parent)), f"unzip the official tiny-imagenet-200.zip into {parent}")
        root = parent / "tiny-imagenet-200"

    def missing(what):
        return DatasetNotFoundError(f"Tiny-ImageNet in {root}: {what}; {_TINY_LAYOUT}")

    if not (root / "wnids.txt").is_file():
        raise missing("wnids.txt not found" + ("" if download else " (or pass download=True)"))
    wnids = (root / "wnids.txt").read_text().split()
    if len(set(wnids)) != len(wnids) or not wnids:
        raise ValueError(f"Tiny-ImageNet in {root}: wnids.txt is empty or lists a wnid twice")
    label_of = {wnid: i for i, wnid in enumerate(wnids)}
    num_classes = _check_num_classes(num_classes, len(wnids), "tiny_imagenet")

    # train: train/<wnid>/images/*.JPEG, labels in wnids.txt order
    if not (root / "train").is_dir():
        raise missing("train/ not found")
    unknown = sorted(p.name for p in (root / "train").iterdir() if p.is_dir() and p.name not in label_of)
    if unknown:
        raise ValueError(f"Tiny-ImageNet in {root}: train/ has folders not listed in wnids.txt: {unknown[:5]}")
    train_files, train_labels = [], []
    for wnid in wnids[:num_classes]:  # only the kept classes are listed and decoded
        folder = root / "train" / wnid / "images"
        files = _image_files(folder) if folder.is_dir() else []
        if not files:
            raise missing(f"class {wnid} has no train images in {folder}")
        train_files += files
        train_labels += [label_of[wnid]] * len(files)

    # val: labels come from val_annotations.txt (listing val/images in sorted order against sorted labels is
    # the classic bug that gives 0.5% accuracy)
    annotations = root / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise missing("val/val_annotations.txt not found")
    present = {p.name for p in (root / "val" / "images").iterdir()} if (root / "val" / "images").is_dir() else set()
    val = {}
    for line_number, line in enumerate(annotations.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise ValueError(f"Tiny-ImageNet in {root}: val_annotations.txt line {line_number} is not "
                             f"'<file> <wnid> <box>': {line!r}")
        filename, wnid = fields[:2]
        if wnid not in label_of:
            raise ValueError(f"Tiny-ImageNet in {root}: val_annotations.txt line {line_number} names {wnid}, "
                             f"which is not in wnids.txt (mixed-up folders?)")
        if filename not in present:
            raise missing(f"val image {filename} (val_annotations.txt line {line_number}) is not in val/images")
        val[filename] = label_of[wnid]
    unannotated = sorted(name for name in present - val.keys() if Path(name).suffix.lower() in _IMAGE_EXTENSIONS)
    if unannotated:
        raise ValueError(f"Tiny-ImageNet in {root}: val/images holds {len(unannotated)} images that "
                         f"val_annotations.txt does not list, e.g. {unannotated[0]}")
    empty = sorted(set(wnids[:num_classes]) - {wnids[label] for label in val.values()})
    if empty:
        raise missing(f"no val images annotated for {len(empty)} classes, e.g. {empty[0]}")
    val_names = sorted(val, key=_natural_key)

    return Dataset(
        "tiny_imagenet",
        _split_from_files(train_files, train_labels, num_classes, train_per_class, "tiny_imagenet train"),
        _split_from_files([root / "val" / "images" / name for name in val_names], [val[name] for name in val_names],
                          num_classes, test_per_class, "tiny_imagenet val"),
        wnids[:num_classes], (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262), crop_size=64, train_padding=4,
    )


# ----------------------------------------------------------------------------------------------------
# Any root/train/<class>/* + root/test/<class>/* (or root/val/<class>/*)


def _load_imagefolder(root: Path, download, num_classes, train_per_class, test_per_class) -> Dataset:
    layout = ("expected root/train/<class>/<image> and root/test/<class>/<image> (or root/val/<class>/<image>); "
              "an image folder cannot be downloaded")
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        found = sorted(p.name for p in root.iterdir()) if root.is_dir() else "nothing, it does not exist"
        raise DatasetNotFoundError(f"imagefolder {root}: {layout}; found {found}")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    test_classes = sorted(p.name for p in test_dir.iterdir() if p.is_dir())
    if classes != test_classes:
        raise ValueError(f"imagefolder {root}: class folders differ between train/ and {test_dir.name}/: "
                         f"only in train {sorted(set(classes) - set(test_classes))}, "
                         f"only in {test_dir.name} {sorted(set(test_classes) - set(classes))}")
    if not classes:
        raise DatasetNotFoundError(f"imagefolder {root}: train/ has no class folders; {layout}")
    num_classes = _check_num_classes(num_classes, len(classes), f"imagefolder {root}")

    splits = []
    for folder, per_class in [(root / "train", train_per_class), (test_dir, test_per_class)]:
        files, labels = [], []
        for label, name in enumerate(classes[:num_classes]):
            found = _image_files(folder / name)
            if not found:
                raise DatasetNotFoundError(f"imagefolder {root}: {folder.name}/{name} holds no images "
                                           f"({', '.join(sorted(_IMAGE_EXTENSIONS))})")
            files += found
            labels += [label] * len(found)
        splits.append(_split_from_files(files, labels, num_classes, per_class, f"imagefolder {folder}"))
    if splits[0].images.shape[1:] != splits[1].images.shape[1:]:
        raise ValueError(f"imagefolder {root}: train images are {tuple(splits[0].images.shape[2:])} but "
                         f"{test_dir.name} images are {tuple(splits[1].images.shape[2:])}")
    height, width = splits[0].images.shape[2:]
    mean, std = _channel_stats(splits[0].images)
    size = min(height, width)
    return Dataset("imagefolder", splits[0], splits[1], classes[:num_classes], mean, std,
                   crop_size=size, train_padding=4 if size <= 64 else 0)


# ----------------------------------------------------------------------------------------------------
# Fine-grained: CUB-200-2011, Stanford Cars, FGVC-Aircraft. Resized to 256 x 256 when loaded; the model
# sees a random (train) or center (test) 224 crop.

_FINE_SIZE, _FINE_CROP = 256, 224
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _fine_grained(name, classes, train, test, num_classes, train_per_class, test_per_class) -> Dataset:
    """train, test: (files, labels) lists."""
    num_classes = _check_num_classes(num_classes, len(classes), name)
    return Dataset(
        name,
        _split_from_files(*train, num_classes, train_per_class, f"{name} train", size=_FINE_SIZE),
        _split_from_files(*test, num_classes, test_per_class, f"{name} test", size=_FINE_SIZE),
        list(classes[:num_classes]), _IMAGENET_MEAN, _IMAGENET_STD, crop_size=_FINE_CROP, train_padding=0,
    )


_CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


def _load_cub200(root: Path, download, num_classes, train_per_class, test_per_class) -> Dataset:
    if not (root / "images.txt").is_file() and (root / "CUB_200_2011").is_dir():
        root = root / "CUB_200_2011"  # accept the parent folder too
    missing = [f for f in (*_CUB_FILES, "images") if not (root / f).exists()]
    if missing:
        raise DatasetNotFoundError(
            f"CUB-200-2011 not found in {root}: missing {', '.join(missing)}. Expected the official "
            f"CUB_200_2011 folder: {', '.join(_CUB_FILES)} and images/<class>/<image>.jpg; it cannot be "
            "downloaded automatically")

    def table(filename):  # "<image id> <value>" per line
        return dict(line.split(maxsplit=1) for line in (root / filename).read_text().splitlines() if line.strip())

    paths, labels, is_train = table("images.txt"), table("image_class_labels.txt"), table("train_test_split.txt")
    classes = [name for _, name in sorted(((int(k), v) for k, v in table("classes.txt").items()))]
    if not paths.keys() == labels.keys() == is_train.keys():
        raise ValueError(f"CUB-200-2011 in {root}: images.txt, image_class_labels.txt and train_test_split.txt "
                         "list different image ids")
    splits = {"1": ([], []), "0": ([], [])}
    for image_id in sorted(paths, key=int):
        label = int(labels[image_id]) - 1  # 1-based in the files
        if not 0 <= label < len(classes):
            raise ValueError(f"CUB-200-2011 in {root}: image {image_id} has class {label + 1}, "
                             f"outside 1..{len(classes)} of classes.txt")
        files, targets = splits[is_train[image_id]]
        files.append(root / "images" / paths[image_id])
        targets.append(label)
    return _fine_grained("cub200", classes, splits["1"], splits["0"], num_classes, train_per_class, test_per_class)


def _torchvision_fine_grained(name, make, layout, root: Path, num_classes, train_per_class, test_per_class):
    # loader=identity: the torchvision dataset parses the annotations and hands back (path, label); the
    # files are decoded here, in the thread pool
    splits = []
    for split in ("train", "test"):
        try:
            raw = make(split, loader=lambda path: path)
        except RuntimeError as e:  # torchvision's "Dataset not found"
            raise DatasetNotFoundError(f"{name} not found in {root} ({e}). Expected {layout}") from e
        files, labels = zip(*(raw[i] for i in range(len(raw))), strict=True)
        splits.append((list(files), list(labels)))
    return _fine_grained(name, raw.classes, *splits, num_classes, train_per_class, test_per_class)


def _load_stanford_cars(root: Path, download, num_classes, train_per_class, test_per_class) -> Dataset:
    layout = ("root/stanford_cars/{devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_train/, cars_test/, "
              "cars_test_annos_withlabels.mat}, as torchvision.datasets.StanfordCars reads it; it cannot be "
              "downloaded (the original URL is gone)")
    return _torchvision_fine_grained(
        "stanford_cars", lambda split, **kw: torchvision.datasets.StanfordCars(str(root), split=split, **kw),
        layout, root, num_classes, train_per_class, test_per_class)


def _load_fgvc_aircraft(root: Path, download, num_classes, train_per_class, test_per_class) -> Dataset:
    layout = ("root/fgvc-aircraft-2013b/data/{images/, variants.txt, images_variant_trainval.txt, "
              "images_variant_test.txt}, as torchvision.datasets.FGVCAircraft reads it")
    if download:
        _download("fgvc_aircraft", lambda: torchvision.datasets.FGVCAircraft(str(root), download=True),
                  f"place the official files in {layout}")

    def make(split, **kw):  # variant level (100 classes), trained on trainval as is usual for this dataset
        return torchvision.datasets.FGVCAircraft(str(root), split="trainval" if split == "train" else "test",
                                                 annotation_level="variant", **kw)

    return _torchvision_fine_grained("fgvc_aircraft", make, layout + ", or pass download=True", root,
                                     num_classes, train_per_class, test_per_class)


_LOADERS = {
    "synthetic": _load_synthetic,  # called by load() with its own arguments: it has no files
    "cifar10": lambda *a, **kw: _load_cifar("cifar10", *a, **kw),
    "cifar100": lambda *a, **kw: _load_cifar("cifar100", *a, **kw),
    "tiny_imagenet": _load_tiny_imagenet,
    "imagefolder": _load_imagefolder,
    "cub200": _load_cub200,
    "stanford_cars": _load_stanford_cars,
    "fgvc_aircraft": _load_fgvc_aircraft,
}
