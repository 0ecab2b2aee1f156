"""Datasets read from files: CIFAR-10/100, Tiny-ImageNet-200, image folders, CUB-200-2011, Stanford Cars,
FGVC-Aircraft. Each loader decodes only the files it keeps and returns a Dataset held in memory."""

from __future__ import annotations

import os
import re
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2.functional import center_crop, resize
from tqdm import tqdm

from .containers import Dataset, DatasetNotFoundError, ImageSplit, channel_stats


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


def natural_key(path) -> list:
    # "img_10" after "img_9", so the "first n" images of a class are the ones a person would expect
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", Path(path).name)]


_IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp"}


def _image_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_EXTENSIONS), key=natural_key)


def _decode(paths: list[Path], short_side: int | None = None, desc: str = "decoding") -> ImageSplit:
    """Decode image files into an ImageSplit of uint8 N x 3 x H x W images (greyscale and RGBA become RGB);
    the labels are left empty for the caller.

    short_side=None: every image must have the first one's size. Otherwise each image is resized so that
    its short side is `short_side`, aspect kept (antialiased, as torchvision's Resize(int)); a long side
    beyond 2 x short_side is centre-cropped to that (a memory bound: panoramas are rare in these sets).
    The images are then placed top-left on a zero canvas of the largest height and width, their sizes in
    `sizes`. Decoding and resizing release the GIL, so large images decode in a thread pool (1.9x on 2
    cores for 500x375 JPEGs). Up to 64x64 the per-file Python overhead dominates and threads only contend
    for the GIL (CIFAR-size JPEGs: 15k/s on one thread, 11k/s on two).
    """
    if not paths:
        raise ValueError(f"{desc}: no image files")

    def decode(path):
        try:
            image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
        except RuntimeError as e:
            raise ValueError(f"could not decode {path}: {e}") from e
        if short_side is None:
            return image
        image = resize(image, [short_side], antialias=True)
        return center_crop(image, [min(size, 2 * short_side) for size in image.shape[1:]])

    first = decode(paths[0])
    # fixed sizes: written straight into one tensor; varying sizes: kept until the canvas size is known
    out = torch.empty((len(paths), *first.shape), dtype=torch.uint8) if short_side is None else [None] * len(paths)

    def work(start):
        for i in range(start, min(start + chunk, len(paths))):
            image = decode(paths[i])
            if short_side is None and image.shape != first.shape:
                raise ValueError(f"{paths[i]} is {tuple(image.shape[1:])} but {paths[0]} is "
                                 f"{tuple(first.shape[1:])}: all images must have the same size (H, W)")
            out[i] = image
        return min(chunk, len(paths) - start)

    chunk = 256
    workers = 1 if first.shape[1] * first.shape[2] <= 64 * 64 else os.cpu_count() or 1
    with ThreadPoolExecutor(workers) as pool, \
            tqdm(total=len(paths), desc=desc, unit="img", disable=True if len(paths) < 5000 else None) as bar:
        for done in pool.map(work, range(0, len(paths), chunk)):
            bar.update(done)
    if short_side is None:
        return ImageSplit(out, torch.empty(0, dtype=torch.int64))
    sizes = torch.tensor([image.shape[1:] for image in out])
    canvas = torch.zeros((len(out), 3, *sizes.max(0).values.tolist()), dtype=torch.uint8)
    for i, image in enumerate(out):
        canvas[i, :, :image.shape[1], :image.shape[2]] = image
    return ImageSplit(canvas, torch.empty(0, dtype=torch.int64), sizes)


def decode_folder(folder: Path, size: int, desc: str = "decoding") -> torch.Tensor:
    """Every image under `folder` (recursively, in sorted order) as uint8 N x 3 x size x size: the short side
    resized to `size`, then the centre crop (torchvision's Resize(size) + CenterCrop(size))."""
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in _IMAGE_EXTENSIONS)
    split = _decode(paths, short_side=size, desc=desc)
    tops, lefts = torch.round((split.sizes - size) / 2).long().unbind(1)
    return torch.stack([image[:, top:top + size, left:left + size]
                        for image, top, left in zip(split.images, tops.tolist(), lefts.tolist(), strict=True)])


def _split_from_files(files: list[Path], labels: list[int], num_classes, per_class, split: str,
                      short_side: int | None = None) -> ImageSplit:
    """Subset first, then decode only the files kept."""
    index = _subset(labels, num_classes, per_class, split)
    decoded = _decode([files[i] for i in index], short_side, desc=split)
    decoded.labels = torch.as_tensor(labels, dtype=torch.int64)[index]
    return decoded


def _download(what: str, fetch, way_out: str):
    """Run a download; turn a network failure into a DatasetNotFoundError that says what to do instead."""
    try:
        fetch()
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        raise DatasetNotFoundError(f"could not download {what} ({type(e).__name__}: {e}). "
                                   f"Without network access, {way_out}") from e


# ----------------------------------------------------------------------------------------------------
# What the references do with each dataset (docs/protocols.md cites the lines): the crop size the model
# sees, the zero padding before the random training crop, and the normalisation (in [0, 1] units).


@dataclass(frozen=True)
class Transform:
    crop_size: int
    train_padding: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _per_255(*values: float) -> tuple[float, ...]:
    return tuple(value / 255 for value in values)


_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TRANSFORMS = {
    "cifar10": Transform(32, 2, _per_255(125.3, 123.0, 113.9), _per_255(63.0, 62.1, 66.7)),
    "cifar100": Transform(32, 2, _per_255(129.3, 124.1, 112.4), _per_255(68.2, 65.4, 70.4)),
    "tiny_imagenet": Transform(64, 4, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    # fine-grained: the short side resized to 256 (aspect kept), then a 224 crop (random for training)
    "fine_grained": Transform(224, 0, _IMAGENET_MEAN, _IMAGENET_STD),
}


# ----------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (torchvision's official python pickles)

_CIFAR = {
    "cifar10": (torchvision.datasets.CIFAR10, "cifar-10-batches-py"),
    "cifar100": (torchvision.datasets.CIFAR100, "cifar-100-python"),
}


def load_cifar(name, root: Path, download, num_classes, train_per_class, test_per_class) -> Dataset:
    cls, folder = _CIFAR[name]
    if root.name == folder:  # accept the official folder itself as well as its parent
        root = root.parent
    way_out = f"place the official {folder!r} folder (the python version of {name}) inside {root}"
    if download:
        _download(name, lambda: cls(str(root), train=False, download=True), way_out)
    if not (root / folder).is_dir():
        raise DatasetNotFoundError(
            f"{name} not found: {root / folder} does not exist. Either let torchvision download it (--set "
            f"download=true; download=True in Python), or {way_out}. If your copy is image files "
            f"(train/<class>/*.png, test/<class>/*.png), read it with --set dataset=imagefolder data_root=DIR")
    splits = []
    for train, per_class in [(True, train_per_class), (False, test_per_class)]:
        try:
            raw = cls(str(root), train=train, download=False)
        except RuntimeError as e:  # torchvision's "Dataset not found or corrupted"
            raise DatasetNotFoundError(f"{name} in {root / folder} is incomplete or corrupted ({e}). "
                                       f"Delete it and download again (--set download=true), or {way_out}") from e
        kept = _check_num_classes(num_classes, len(raw.classes), name)
        index = _subset(raw.targets, kept, per_class, f"{name} {'train' if train else 'test'}")
        images = torch.from_numpy(raw.data).permute(0, 3, 1, 2)[index].contiguous()  # N H W C -> N C H W
        splits.append(ImageSplit(images, torch.as_tensor(raw.targets, dtype=torch.int64)[index]))
    classes = list(raw.classes[:kept])
    reference = TRANSFORMS[name]
    return Dataset(name, splits[0], splits[1], classes, reference.mean, reference.std,
                   crop_size=reference.crop_size, train_padding=reference.train_padding)


# ----------------------------------------------------------------------------------------------------
# Tiny-ImageNet-200 (the official zip layout)

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
_TINY_LAYOUT = ("the official layout is tiny-imagenet-200/{wnids.txt, train/<wnid>/images/<wnid>_<k>.JPEG, "
                "val/images/val_<k>.JPEG, val/val_annotations.txt}, as unpacked from " + TINY_IMAGENET_URL)


def load_tiny_imagenet(root: Path, download, num_classes, train_per_class, test_per_class) -> Dataset:
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
        raise missing("wnids.txt not found" + ("" if download else " (or download it: --set download=true)"))
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
    val_names = sorted(val, key=natural_key)

    return Dataset(
        "tiny_imagenet",
        _split_from_files(train_files, train_labels, num_classes, train_per_class, "tiny_imagenet train"),
        _split_from_files([root / "val" / "images" / name for name in val_names], [val[name] for name in val_names],
                          num_classes, test_per_class, "tiny_imagenet val"),
        wnids[:num_classes], TRANSFORMS["tiny_imagenet"].mean, TRANSFORMS["tiny_imagenet"].std,
        crop_size=TRANSFORMS["tiny_imagenet"].crop_size, train_padding=TRANSFORMS["tiny_imagenet"].train_padding,
    )


# ----------------------------------------------------------------------------------------------------
# Any root/train/<class>/* + root/test/<class>/* (or root/val/<class>/*)


def load_imagefolder(root: Path, download, num_classes, train_per_class, test_per_class) -> Dataset:
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
    mean, std = channel_stats(splits[0].images)
    size = min(height, width)
    return Dataset("imagefolder", splits[0], splits[1], classes[:num_classes], mean, std,
                   crop_size=size, train_padding=4 if size <= 64 else 0)


# ----------------------------------------------------------------------------------------------------
# Fine-grained: CUB-200-2011, Stanford Cars, FGVC-Aircraft, as GuidedMixup's FGVC loader: the short side
# resized to 256 when loaded (aspect kept), then a random (train) or center (test) 224 crop.

_FINE_SHORT_SIDE = 256


def _fine_grained(name, classes, train, test, num_classes, train_per_class, test_per_class) -> Dataset:
    """train, test: (files, labels) lists."""
    num_classes = _check_num_classes(num_classes, len(classes), name)
    reference = TRANSFORMS["fine_grained"]
    return Dataset(
        name,
        _split_from_files(*train, num_classes, train_per_class, f"{name} train", short_side=_FINE_SHORT_SIDE),
        _split_from_files(*test, num_classes, test_per_class, f"{name} test", short_side=_FINE_SHORT_SIDE),
        list(classes[:num_classes]), reference.mean, reference.std, crop_size=reference.crop_size,
        train_padding=reference.train_padding,
    )


_CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


def load_cub200(root: Path, download, num_classes, train_per_class, test_per_class) -> Dataset:
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


def load_stanford_cars(root: Path, download, num_classes, train_per_class, test_per_class) -> Dataset:
    layout = ("root/stanford_cars/{devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_train/, cars_test/, "
              "cars_test_annos_withlabels.mat}, as torchvision.datasets.StanfordCars reads it; it cannot be "
              "downloaded (the original URL is gone)")
    return _torchvision_fine_grained(
        "stanford_cars", lambda split, **kw: torchvision.datasets.StanfordCars(str(root), split=split, **kw),
        layout, root, num_classes, train_per_class, test_per_class)


def load_fgvc_aircraft(root: Path, download, num_classes, train_per_class, test_per_class) -> Dataset:
    layout = ("root/fgvc-aircraft-2013b/data/{images/, variants.txt, images_variant_trainval.txt, "
              "images_variant_test.txt}, as torchvision.datasets.FGVCAircraft reads it")
    if download:
        _download("fgvc_aircraft", lambda: torchvision.datasets.FGVCAircraft(str(root), download=True),
                  f"place the official files in {layout}")

    def make(split, **kw):  # variant level (100 classes), trained on trainval as is usual for this dataset
        return torchvision.datasets.FGVCAircraft(str(root), split="trainval" if split == "train" else "test",
                                                 annotation_level="variant", **kw)

    return _torchvision_fine_grained("fgvc_aircraft", make, layout + ", or download it (--set download=true)", root,
                                     num_classes, train_per_class, test_per_class)
