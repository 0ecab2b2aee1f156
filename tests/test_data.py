"""Tests for catchup_mix.data: the synthetic dataset, the batch loader, the file datasets' layouts and errors."""

import math
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torchvision.io import ImageReadMode, decode_image, read_file, write_jpeg, write_png

from catchup_mix import data
from catchup_mix.data import BatchLoader, DatasetNotFoundError, ImageSplit

# ----------------------------------------------------------------------------------------------------
# synthetic


def small_synthetic(seed=0, **kw):
    return data.load("synthetic", seed=seed, **{"train_per_class": 40, "test_per_class": 10, **kw})


def test_available_and_unknown_name():
    assert data.available() == ["synthetic", "cifar10", "cifar100", "tiny_imagenet", "imagefolder", "cub200",
                                "stanford_cars", "fgvc_aircraft"]
    with pytest.raises(ValueError, match="available: synthetic, cifar10"):
        data.load("imagenet", "/nowhere")
    with pytest.raises(ValueError, match="pass root"):
        data.load("cifar10")
    with pytest.raises(ValueError, match="num_classes must be at least 1"):
        data.load("synthetic", num_classes=0)


def test_synthetic_shapes_balance_and_stats():
    ds = data.load("synthetic")
    assert ds.num_classes == 10 and len(set(ds.classes)) == 10 and ds.classes[0] == "disk-hstripes-red"
    assert ds.train.images.shape == (5000, 3, 32, 32) and ds.test.images.shape == (1000, 3, 32, 32)
    assert ds.train.images.dtype == torch.uint8 and ds.train.labels.dtype == torch.int64
    assert ds.train.labels.bincount().tolist() == [500] * 10
    assert ds.test.labels.bincount().tolist() == [100] * 10
    assert (ds.crop_size, ds.train_padding) == (32, 4)
    x = ds.train.images.double() / 255
    assert torch.allclose(torch.tensor(ds.mean, dtype=torch.float64), x.mean((0, 2, 3)), atol=1e-6)
    assert torch.allclose(torch.tensor(ds.std, dtype=torch.float64), x.std((0, 2, 3)), atol=1e-4)
    # the images use the whole range, not a narrow band
    assert ds.train.images.min() < 20 and ds.train.images.max() > 235


def test_synthetic_deterministic_per_seed():
    a, b, c = small_synthetic(0), small_synthetic(0), small_synthetic(1)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.images, b.test.images)
    assert not torch.equal(a.train.images, c.train.images)
    # train and test come from independent streams
    assert not torch.equal(a.train.images[:10], a.test.images[:10])
    # every image is distinct
    assert len(torch.unique(a.train.images.flatten(1), dim=0)) == len(a.train.labels)
    # a class's images do not depend on how many classes are generated
    five = small_synthetic(0, num_classes=5)
    assert five.classes == a.classes[:5]
    assert torch.equal(five.train.images, a.train.images[a.train.labels < 5])


def test_synthetic_class_limit():
    assert small_synthetic(num_classes=24).num_classes == 24
    with pytest.raises(ValueError, match="at most 24"):
        small_synthetic(num_classes=25)


def nearest_class_mean_accuracy(ds, features):
    train, test = features(ds.train.images), features(ds.test.images)
    means = torch.stack([train[ds.train.labels == c].mean(0) for c in range(ds.num_classes)])
    return (torch.cdist(test, means).argmin(1) == ds.test.labels).float().mean().item()


def test_synthetic_not_separable_by_colour_or_template():
    # measured at seed 0: 0.16 on mean RGB, 0.17 on raw pixels (chance 0.10)
    ds = data.load("synthetic", train_per_class=200, test_per_class=50)
    assert nearest_class_mean_accuracy(ds, lambda x: x.float().mean((2, 3))) < 0.3
    assert nearest_class_mean_accuracy(ds, lambda x: x.float().flatten(1)) < 0.3


def test_synthetic_is_learnable():
    # a 3-layer CNN for 4 short epochs (about 5 s on 2 CPU cores) reaches about 0.7 (chance 0.1)
    torch.manual_seed(0)
    ds = data.load("synthetic", train_per_class=200, test_per_class=50)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveMaxPool2d(1),
        nn.Flatten(), nn.Linear(64, ds.num_classes),
    )
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    train = BatchLoader(ds.train, 64, mean=ds.mean, std=ds.std, train=True, crop_size=32, padding=2,
                        generator=torch.Generator().manual_seed(0))
    for _ in range(4):
        for x, y in train:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    test = BatchLoader(ds.test, 500, mean=ds.mean, std=ds.std, train=False, crop_size=32)
    with torch.no_grad():
        accuracy = sum((model(x).argmax(1) == y).sum().item() for x, y in test) / len(ds.test)
    assert accuracy > 0.45


# ----------------------------------------------------------------------------------------------------
# BatchLoader


def random_split(n, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    # labels = index, so every yielded sample names the image it came from
    return ImageSplit(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g), torch.arange(n))


RAW = dict(mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255))  # normalised output == uint8 value


def test_loader_shapes_len_and_layout():
    split = random_split(50, 12)
    loader = BatchLoader(split, 16, **RAW, train=True, crop_size=8, padding=1)
    assert len(loader) == 3  # drop_last defaults to train
    batches = list(loader)
    assert len(batches) == 3 and all(x.shape == (16, 3, 8, 8) and x.dtype == torch.float32 for x, _ in batches)
    assert all(y.dtype == torch.int64 for _, y in batches)
    loader = BatchLoader(split, 16, **RAW, train=True, crop_size=8, drop_last=False, channels_last=True)
    x, _ = list(loader)[-1]
    assert len(loader) == 4 and x.shape[0] == 2 and x.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="cannot crop 20"):
        BatchLoader(split, 16, **RAW, train=True, crop_size=20, padding=3)
    with pytest.raises(ValueError, match="cannot center-crop 13"):
        BatchLoader(split, 16, **RAW, train=False, crop_size=13)


@pytest.mark.parametrize("train", [True, False])
def test_loader_normalisation(train):
    split = ImageSplit(torch.full((6, 3, 8, 8), 200, dtype=torch.uint8), torch.zeros(6, dtype=torch.int64))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    x, _ = next(iter(BatchLoader(split, 6, mean=mean, std=std, train=train, crop_size=8)))
    expected = (200 / 255 - torch.tensor(mean)) / torch.tensor(std)
    assert torch.allclose(x, expected.view(1, 3, 1, 1).expand_as(x), atol=1e-5)


def test_train_crops_are_shifted_crops_of_the_padded_image():
    split, padding, size = random_split(12, 10), 3, 10
    loader = BatchLoader(split, 4, **RAW, train=True, crop_size=size, padding=padding,
                         generator=torch.Generator().manual_seed(0))
    offsets = set()
    for _ in range(3):
        for x, y in loader:
            for crop, i in zip(x.round().to(torch.uint8), y.tolist(), strict=True):
                padded = TF.pad(split.images[i], [padding])  # torchvision's RandomCrop(size, padding), fill 0
                matches = [(top, left, flip)
                           for top in range(2 * padding + 1) for left in range(2 * padding + 1) for flip in (0, 1)
                           if torch.equal(crop, (TF.horizontal_flip if flip else lambda t: t)(
                               TF.crop(padded, top, left, size, size)))]
                assert len(matches) == 1, f"image {i}: {len(matches)} matching crops"
                offsets.add(matches[0][:2])
    assert len(offsets) > 10  # the offsets really vary


def test_flips_happen_half_the_time():
    split = random_split(1000, 6)
    for flip, low, high in [(True, 0.44, 0.56), (False, 0.0, 0.0)]:
        loader = BatchLoader(split, 250, **RAW, train=True, crop_size=6, flip=flip,
                             generator=torch.Generator().manual_seed(1))
        flipped = 0
        for x, y in loader:
            original = split.images[y].float()
            assert all(torch.equal(a, b) or torch.equal(a, b.flip(-1)) for a, b in zip(x, original, strict=True))
            flipped += sum(not torch.equal(a, b) for a, b in zip(x, original, strict=True))
        assert low <= flipped / 1000 <= high


def epochs(loader, n):
    return [[(x.clone(), y.clone()) for x, y in loader] for _ in range(n)]


def same(epoch_a, epoch_b):
    return all(torch.equal(xa, xb) and torch.equal(ya, yb)
               for (xa, ya), (xb, yb) in zip(epoch_a, epoch_b, strict=True))


def test_loader_is_seeded_and_resumes_from_generator_state():
    split = random_split(40, 8)

    def make(generator):
        return BatchLoader(split, 8, **RAW, train=True, crop_size=8, padding=2, generator=generator)

    a = epochs(make(torch.Generator().manual_seed(5)), 2)
    b = epochs(make(torch.Generator().manual_seed(5)), 2)
    c = epochs(make(torch.Generator().manual_seed(6)), 1)
    assert same(a[0], b[0]) and same(a[1], b[1])
    assert not same(a[0], c[0]) and not same(a[0], a[1])
    # an epoch's draws all happen at iter(): the state after iter() is the state after the epoch
    g = torch.Generator().manual_seed(5)
    loader = make(g)
    iter(loader)
    state = g.get_state()
    g2 = torch.Generator()
    g2.set_state(state)
    assert same(epochs(make(g2), 1)[0], a[1])


def test_each_epoch_is_a_permutation():
    split = random_split(103, 4)
    loader = BatchLoader(split, 10, **RAW, train=True, crop_size=4, drop_last=False,
                         generator=torch.Generator().manual_seed(0))
    assert len(loader) == 11
    first, second = (torch.cat([y for _, y in loader]) for _ in range(2))
    assert sorted(first.tolist()) == list(range(103)) and sorted(second.tolist()) == list(range(103))
    assert not torch.equal(first, second) and not torch.equal(first, torch.arange(103))
    dropped = torch.cat([y for _, y in BatchLoader(split, 10, **RAW, train=True, crop_size=4)])
    assert len(dropped) == 100 and len(dropped.unique()) == 100


def test_test_mode_order_and_center_crop():
    split = random_split(25, 12)
    loader = BatchLoader(split, 10, **RAW, train=False, crop_size=8)
    batches = list(loader)
    assert len(loader) == len(batches) == 3 and [len(y) for _, y in batches] == [10, 10, 5]
    x = torch.cat([x for x, _ in batches])
    assert torch.equal(torch.cat([y for _, y in batches]), torch.arange(25))
    assert torch.equal(x.round().to(torch.uint8), TF.center_crop(split.images, [8, 8]))
    assert same(batches, list(loader))  # no randomness in test mode


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("train", [True, False])
def test_ddp_rank_slices_make_up_the_global_batch(world_size, train):
    split = random_split(42, 8)

    def batches(rank, world):
        return list(BatchLoader(split, 8, **RAW, train=train, crop_size=8, padding=2, drop_last=False,
                                generator=torch.Generator().manual_seed(3), rank=rank, world_size=world))

    whole = batches(0, 1)
    per_rank = [batches(rank, world_size) for rank in range(world_size)]
    assert all(len(b) == len(whole) for b in per_rank)
    for i, (x, y) in enumerate(whole):
        for rank in range(world_size):
            assert torch.equal(per_rank[rank][i][0], x[rank::world_size])
            assert torch.equal(per_rank[rank][i][1], y[rank::world_size])
    with pytest.raises(ValueError, match="divisible by world_size"):
        BatchLoader(split, 10, **RAW, train=train, crop_size=8, world_size=4)


# ----------------------------------------------------------------------------------------------------
# CIFAR


def test_cifar_missing_names_both_ways_out(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="--set download=true") as error:
        data.load("cifar10", tmp_path)
    assert "cifar-10-batches-py" in str(error.value) and str(tmp_path) in str(error.value)
    assert "--set dataset=imagefolder data_root=DIR" in str(error.value)  # for copies held as image files
    assert isinstance(error.value, FileNotFoundError)
    (tmp_path / "cifar-100-python").mkdir()
    with pytest.raises(DatasetNotFoundError, match="incomplete or corrupted"):
        data.load("cifar100", tmp_path)


def test_cifar_download_offline_fails_clearly(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DatasetNotFoundError, match="could not download cifar10.*name resolution") as error:
        data.load("cifar10", tmp_path, download=True)
    assert "cifar-10-batches-py" in str(error.value)


def test_cifar_conversion_and_subset(tmp_path, monkeypatch):
    # a stand-in for torchvision's class: N x H x W x C uint8 numpy data and a list of targets
    class FakeCIFAR:
        classes = [f"class{c}" for c in range(10)]

        def __init__(self, root, train, download):
            n = 50 if train else 20
            self.targets = [i % 10 for i in range(n)]
            self.data = np.zeros((n, 32, 32, 3), dtype=np.uint8)
            self.data[..., 0] = np.array(self.targets)[:, None, None]  # red = label
            self.data[..., 1] = np.arange(n)[:, None, None]  # green = index
            self.data[..., 2] = 7

    monkeypatch.setitem(data.files._CIFAR, "cifar10", (FakeCIFAR, "cifar-10-batches-py"))
    (tmp_path / "cifar-10-batches-py").mkdir()
    ds = data.load("cifar10", tmp_path, num_classes=3, train_per_class=2)
    assert ds.classes == ["class0", "class1", "class2"] and ds.train.images.shape == (6, 3, 32, 32)
    assert ds.train.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert ds.train.images[:, 0, 5, 5].tolist() == ds.train.labels.tolist()
    assert ds.train.images[:, 1, 5, 5].tolist() == [0, 1, 2, 10, 11, 12]  # the first two of each class
    assert (ds.train.images[:, 2] == 7).all() and ds.test.images.shape == (6, 3, 32, 32)
    # the references' CIFAR-10 normalisation and 2-pixel padding (PuzzleMix load_data.py)
    assert ds.mean == pytest.approx((125.3 / 255, 123.0 / 255, 113.9 / 255))
    assert ds.std == pytest.approx((63.0 / 255, 62.1 / 255, 66.7 / 255))
    assert (ds.crop_size, ds.train_padding) == (32, 2)
    with pytest.raises(ValueError, match="class 0 has 2 images, fewer than the 3"):
        data.load("cifar10", tmp_path, test_per_class=3)


# ----------------------------------------------------------------------------------------------------
# Tiny-ImageNet on a small fake folder in the official layout

WNIDS = ["n03", "n01", "n02"]  # deliberately not sorted: labels follow wnids.txt
VAL = ["n02", "n03", "n01", "n02", "n01", "n03"]  # val_<i>.JPEG -> wnid, not in sorted order


def solid(red, green, size=64):
    image = torch.empty(3, size, size, dtype=torch.uint8)
    image[0], image[1], image[2] = red, green, 128
    return image


@pytest.fixture
def tiny_root(tmp_path):
    """11 train images per class named <wnid>_0..10 (red encodes the label, green the index k); one of them
    greyscale; 6 val images whose labels come only from val_annotations.txt."""
    root = tmp_path / "tiny-imagenet-200"
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    for label, wnid in enumerate(WNIDS):
        (root / "train" / wnid / "images").mkdir(parents=True)
        for k in range(11):
            image = solid(20 * label + 10, 10 * k + 5)
            if wnid == "n02" and k == 0:
                image = image[:1].clone()  # greyscale JPEG
            write_jpeg(image, str(root / "train" / wnid / "images" / f"{wnid}_{k}.JPEG"), quality=95)
    lines = []
    for i, wnid in enumerate(VAL):
        write_jpeg(solid(20 * WNIDS.index(wnid) + 10, 10 * i + 5), str(root / "val" / "images" / f"val_{i}.JPEG"),
                   quality=95)
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t10\t10")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


def decoded_codes(images):
    return [(round((r - 10) / 20), round((g - 5) / 10)) for r, g in images[:, :2, 32, 32].tolist()]


def test_tiny_imagenet_loads_with_annotated_val_labels(tiny_root):
    ds = data.load("tiny_imagenet", tiny_root.parent)  # the parent folder works too
    assert ds.classes == WNIDS and (ds.crop_size, ds.train_padding) == (64, 4)
    assert ds.train.images.shape == (33, 3, 64, 64) and ds.test.images.shape == (6, 3, 64, 64)
    # val: the label of val_i is the annotation's, and the images are in val_0..5 order
    assert ds.test.labels.tolist() == [WNIDS.index(w) for w in VAL]
    assert decoded_codes(ds.test.images) == [(WNIDS.index(w), i) for i, w in enumerate(VAL)]
    # train: the label matches the folder, images 0..10 in natural order (10 after 9)
    codes = decoded_codes(ds.train.images)
    assert all(code == (label, k) for code, label, k in zip(codes, ds.train.labels.tolist(), [*range(11)] * 3,
                                                            strict=True)
               if not (label == 2 and k == 0))
    grey = ds.train.images[22]  # n02_0, written with one channel
    assert grey.shape == (3, 64, 64) and torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


def test_tiny_imagenet_subset_takes_the_first_files_in_natural_order(tiny_root):
    ds = data.load("tiny_imagenet", tiny_root, num_classes=2, train_per_class=3, test_per_class=1)
    assert ds.classes == WNIDS[:2]
    assert decoded_codes(ds.train.images) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert ds.test.labels.tolist() == [0, 1] and decoded_codes(ds.test.images) == [(0, 1), (1, 2)]
    with pytest.raises(ValueError, match="fewer than the 12"):
        data.load("tiny_imagenet", tiny_root, train_per_class=12)
    with pytest.raises(ValueError, match="has 3 classes; cannot keep 4"):
        data.load("tiny_imagenet", tiny_root, num_classes=4)


def remove(path):
    path.unlink()


def rewrite_annotation(root, old, new):
    file = root / "val" / "val_annotations.txt"
    file.write_text(file.read_text().replace(old, new, 1))


def empty_class(root):
    for file in (root / "train" / "n01" / "images").iterdir():
        file.unlink()


@pytest.mark.parametrize("break_it, error, message", [
    (lambda r: remove(r / "wnids.txt"), DatasetNotFoundError, "wnids.txt not found.*official layout"),
    (lambda r: remove(r / "val" / "val_annotations.txt"), DatasetNotFoundError, "val_annotations.txt not found"),
    (lambda r: rewrite_annotation(r, "\tn01\t", "\tn99\t"), ValueError, "names n99, which is not in wnids.txt"),
    (lambda r: remove(r / "val" / "images" / "val_3.JPEG"), DatasetNotFoundError, "val_3.JPEG.*not in val/images"),
    (lambda r: write_jpeg(solid(0, 0), str(r / "val" / "images" / "val_9.JPEG")), ValueError,
     "1 images that val_annotations.txt does not list, e.g. val_9.JPEG"),
    (empty_class, DatasetNotFoundError, "class n01 has no train images"),
    (lambda r: (r / "train" / "n77").mkdir(), ValueError, r"not listed in wnids.txt: \['n77'\]"),
    (lambda r: rewrite_annotation(r, "\tn02\t", "\tn01\t") or rewrite_annotation(r, "\tn02\t", "\tn01\t"),
     DatasetNotFoundError, "no val images annotated for 1 classes, e.g. n02"),
    (lambda r: (r / "wnids.txt").write_text("n03\nn01\nn03\n"), ValueError, "lists a wnid twice"),
])
def test_tiny_imagenet_broken_layouts(tiny_root, break_it, error, message):
    break_it(tiny_root)
    with pytest.raises(error, match=message):
        data.load("tiny_imagenet", tiny_root)


# ----------------------------------------------------------------------------------------------------
# imagefolder


@pytest.fixture
def folder_root(tmp_path):
    """train/{cat,ant}/img_0..3.png and val/{cat,ant}/img_0..1.png, 8x8; red encodes the class, green k."""
    for split, n in [("train", 4), ("val", 2)]:
        for code, name in [(1, "cat"), (0, "ant")]:
            (tmp_path / split / name).mkdir(parents=True)
            for k in range(n):
                write_png(solid(code, k, size=8), str(tmp_path / split / name / f"img_{k}.png"))
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    return tmp_path


def test_imagefolder_loads_sorted_classes(folder_root):
    ds = data.load("imagefolder", folder_root)
    assert ds.classes == ["ant", "cat"] and (ds.crop_size, ds.train_padding) == (8, 4)
    assert ds.train.labels.tolist() == [0] * 4 + [1] * 4 and ds.test.labels.tolist() == [0, 0, 1, 1]
    assert torch.equal(ds.train.images[:, 0, 0, 0], ds.train.labels.to(torch.uint8))
    assert ds.train.images[:, 1, 0, 0].tolist() == [0, 1, 2, 3] * 2
    x = ds.train.images.double() / 255
    assert np.allclose(ds.mean, x.mean((0, 2, 3)).tolist()) and np.allclose(ds.std, x.std((0, 2, 3)).tolist(), atol=1e-3)
    ds = data.load("imagefolder", folder_root, num_classes=1, train_per_class=2)
    assert ds.classes == ["ant"] and ds.train.images[:, 1, 0, 0].tolist() == [0, 1] and len(ds.test) == 2


def test_imagefolder_large_images_get_no_padding(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        write_png(solid(0, 0, size=80), str(tmp_path / split / "a" / "0.png"))
    ds = data.load("imagefolder", tmp_path)
    assert (ds.crop_size, ds.train_padding) == (80, 0)


@pytest.mark.parametrize("break_it, error, message", [
    (lambda r: (r / "val").rename(r / "elsewhere"), DatasetNotFoundError, r"root/test/<class>.*found \['elsewhere'"),
    (lambda r: (r / "val" / "cat").rename(r / "val" / "dog"), ValueError,
     r"only in train \['cat'\], only in val \['dog'\]"),
    (lambda r: [p.unlink() for p in (r / "val" / "ant").iterdir()], DatasetNotFoundError, "val/ant holds no images"),
    (lambda r: write_png(solid(0, 0, size=9), str(r / "train" / "cat" / "img_9.png")), ValueError,
     r"img_9.png is \(9, 9\) but .* is \(8, 8\): all images must have the same size"),
])
def test_imagefolder_broken_layouts(folder_root, break_it, error, message):
    break_it(folder_root)
    with pytest.raises(error, match=message):
        data.load("imagefolder", folder_root)


# ----------------------------------------------------------------------------------------------------
# fine-grained


@pytest.fixture
def cub_root(tmp_path):
    """Two classes, three images each of different sizes; images 1, 2, 4, 5 train, 3 and 6 test."""
    root = tmp_path / "CUB_200_2011"
    root.mkdir()
    (root / "classes.txt").write_text("1 001.Albatross\n2 002.Auklet\n")
    images, labels, split = [], [], []
    for image_id in range(1, 7):
        label = 1 if image_id <= 3 else 2
        path = f"{label:03d}.{['Albatross', 'Auklet'][label - 1]}/bird_{image_id}.jpg"
        (root / "images" / path).parent.mkdir(parents=True, exist_ok=True)
        image = solid(100 * label, 0, size=40)[:, : 30 + image_id]  # 31..36 x 40
        write_jpeg(image.contiguous(), str(root / "images" / path), quality=95)
        images.append(f"{image_id} {path}")
        labels.append(f"{image_id} {label}")
        split.append(f"{image_id} {0 if image_id % 3 == 0 else 1}")
    for name, lines in [("images.txt", images), ("image_class_labels.txt", labels), ("train_test_split.txt", split)]:
        (root / name).write_text("\n".join(lines) + "\n")
    return root


def test_cub200_loads_short_side_resized(cub_root):
    ds = data.load("cub200", cub_root.parent)
    assert ds.classes == ["001.Albatross", "002.Auklet"]
    assert ds.train.labels.tolist() == [0, 0, 1, 1] and ds.test.labels.tolist() == [0, 1]
    # image k is (30 + k) x 40: its short side becomes 256 and its width int(256 * 40 / (30 + k)), as
    # torchvision's Resize(256); the images sit top-left on a zero canvas of the largest size
    expected = [(256, int(256 * 40 / (30 + k))) for k in (1, 2, 4, 5)]
    assert ds.train.sizes.tolist() == [list(size) for size in expected]
    assert ds.train.images.shape == (4, 3, 256, max(w for _, w in expected))
    assert (ds.train.images[1, :, :, expected[1][1]:] == 0).all()
    assert (ds.train.images[:, 0, 128, 128].float() / 100).round().tolist() == [1, 1, 2, 2]
    assert (ds.crop_size, ds.train_padding, ds.mean) == (224, 0, (0.485, 0.456, 0.406))


def test_fine_grained_crops_stay_inside_each_image_and_test_matches_torchvision(cub_root):
    ds = data.load("cub200", cub_root.parent)
    options = dict(mean=ds.mean, std=ds.std, crop_size=224)
    train = BatchLoader(ds.train, 4, train=True, generator=torch.Generator().manual_seed(0), **options)
    canvas_value = -torch.tensor(ds.mean) / torch.tensor(ds.std)  # what a zero canvas pixel becomes
    for _ in range(20):
        images, _ = next(iter(train))
        on_canvas = (images - canvas_value.view(1, 3, 1, 1)).abs().sum(1) < 1e-4
        assert not on_canvas.any()  # no crop reaches past its image into the canvas
    test_images, _ = next(iter(BatchLoader(ds.test, 2, train=False, **options)))
    files = sorted((cub_root / "images").rglob("*.jpg"), key=lambda p: p.name)
    for row, path in zip(test_images, [files[2], files[5]], strict=True):  # the test images: 3 and 6
        reference = TF.center_crop(TF.resize(decode_image(read_file(str(path)), mode=ImageReadMode.RGB), [256]),
                                   [224])
        reference = TF.normalize(reference.float() / 255, ds.mean, ds.std)
        assert torch.allclose(row, reference, atol=1e-5)


@pytest.mark.parametrize("missing", ["images.txt", "train_test_split.txt", "classes.txt"])
def test_cub200_missing_file(cub_root, missing):
    (cub_root / missing).unlink()
    with pytest.raises(DatasetNotFoundError, match=f"missing {missing}.*official CUB_200_2011"):
        data.load("cub200", cub_root)


def test_cub200_ids_disagree(cub_root):
    (cub_root / "image_class_labels.txt").write_text("1 1\n")
    with pytest.raises(ValueError, match="list different image ids"):
        data.load("cub200", cub_root)


def test_fgvc_aircraft_through_torchvision(tmp_path):
    folder = tmp_path / "fgvc-aircraft-2013b" / "data"
    (folder / "images").mkdir(parents=True)
    (folder / "variants.txt").write_text("707-320\nA320\n")
    (folder / "images_variant_trainval.txt").write_text("0000001 A320\n0000002 707-320\n")
    (folder / "images_variant_test.txt").write_text("0000003 707-320\n")
    for i, red in [(1, 200), (2, 50), (3, 50)]:
        write_jpeg(solid(red, 0, size=48), str(folder / "images" / f"000000{i}.jpg"), quality=95)
    ds = data.load("fgvc_aircraft", tmp_path)
    assert ds.classes == ["707-320", "A320"] and ds.train.labels.tolist() == [1, 0] and ds.test.labels.tolist() == [0]
    assert ds.train.images.shape == (2, 3, 256, 256) and abs(int(ds.train.images[0, 0, 9, 9]) - 200) <= 3
    assert ds.train.sizes.tolist() == [[256, 256], [256, 256]]


@pytest.mark.parametrize("name, layout", [("stanford_cars", "stanford_cars/{devkit/cars_meta.mat"),
                                          ("fgvc_aircraft", "fgvc-aircraft-2013b/data/{images/")])
def test_torchvision_fine_grained_missing(tmp_path, name, layout):
    with pytest.raises(DatasetNotFoundError, match=f"{name} not found in .*Expected root/{layout}"):
        data.load(name, tmp_path)


# ----------------------------------------------------------------------------------------------------
# real data (skipped where /work/shared/data is absent)


def test_real_cifar10_jpeg_copy_as_imagefolder(shared_data_dir):
    ds = data.load("imagefolder", shared_data_dir / "cifar10-jpeg", train_per_class=20, test_per_class=10)
    assert ds.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert ds.train.images.shape == (200, 3, 32, 32) and ds.test.images.shape == (100, 3, 32, 32)
    assert ds.train.labels.bincount().tolist() == [20] * 10
    assert (ds.crop_size, ds.train_padding) == (32, 4)
    # the first train image of class 3 is cat/0000.jpg
    expected = decode_image(read_file(str(shared_data_dir / "cifar10-jpeg/train/cat/0000.jpg")), mode=ImageReadMode.RGB)
    assert torch.equal(ds.train.images[60], expected)
    assert all(abs(m - r) < 0.05 for m, r in zip(ds.mean, (0.4913, 0.4821, 0.4465), strict=True))


def test_real_tiny_imagenet_val_labels_follow_annotations(shared_data_dir):
    root = shared_data_dir / "tiny-imagenet-200"
    ds = data.load("tiny_imagenet", root, num_classes=5, train_per_class=10)
    wnids = (root / "wnids.txt").read_text().split()[:5]
    assert ds.classes == wnids and ds.train.images.shape == (50, 3, 64, 64)
    annotated = [line.split("\t")[:2] for line in (root / "val" / "val_annotations.txt").read_text().splitlines()]
    kept = sorted(((name, wnid) for name, wnid in annotated if wnid in wnids), key=lambda p: int(p[0][4:-5]))
    assert len(kept) == 250 and ds.test.images.shape == (250, 3, 64, 64)
    assert ds.test.labels.tolist() == [wnids.index(wnid) for _, wnid in kept]
    for i in (0, 77, 249):  # image i really is the file the label belongs to
        file = root / "val" / "images" / kept[i][0]
        assert torch.equal(ds.test.images[i], decode_image(read_file(str(file)), mode=ImageReadMode.RGB))
    # train: the first 10 of each class in numeric order
    file = root / "train" / wnids[1] / "images" / f"{wnids[1]}_9.JPEG"
    assert torch.equal(ds.train.images[19], decode_image(read_file(str(file)), mode=ImageReadMode.RGB))
    loader = BatchLoader(ds.train, 25, mean=ds.mean, std=ds.std, train=True, crop_size=ds.crop_size,
                         padding=ds.train_padding, generator=torch.Generator().manual_seed(0))
    x, _ = next(iter(loader))
    assert x.shape == (25, 3, 64, 64) and math.isfinite(x.abs().max().item())


# ----------------------------------------------------------------------------------------------------
# Subsets that represent a split


def test_balanced_indices_represent_every_class_of_a_class_sorted_split():
    labels = torch.arange(10).repeat_interleave(100)  # sorted by class, as file and synthetic splits are
    index = data.balanced_indices(labels, 20, seed=0)
    assert labels[index].bincount().tolist() == [2] * 10  # the first 20 would all be class 0
    assert torch.equal(index, index.sort().values) and len(index.unique()) == 20
    assert torch.equal(index, data.balanced_indices(labels, 20, seed=0))  # seeded: the same every time
    assert not torch.equal(index, data.balanced_indices(labels, 20, seed=1))
    # evenly spread inside each class: 10 of a class's 100 images lie 10 apart
    ten = data.balanced_indices(labels, 100, seed=3)
    gaps = ten[labels[ten] == 4].diff()
    assert set(gaps.tolist()) == {10}
    # a remainder goes to classes drawn by the seed; a small class gives all it has, the others share the rest
    assert sorted(labels[data.balanced_indices(labels, 25, seed=0)].bincount().tolist()) == [2] * 5 + [3] * 5
    uneven = torch.cat([torch.zeros(3), torch.ones(100), torch.full((50,), 2)]).long()
    assert uneven[data.balanced_indices(uneven, 60, seed=1)].bincount().tolist() == [3, 29, 28] or \
        uneven[data.balanced_indices(uneven, 60, seed=1)].bincount().tolist() == [3, 28, 29]
    assert torch.equal(data.balanced_indices(labels, 5000), torch.arange(1000))  # more than there are: all
    with pytest.raises(ValueError, match="at least 1 image"):
        data.balanced_indices(labels, 0)


def test_describe_subset_records_which_images():
    labels = torch.arange(4).repeat_interleave(5)
    index = data.balanced_indices(labels, 8, seed=2)
    described = data.describe_subset(labels, index, 2)
    assert described["images"] == 8 and described["of"] == 20 and described["classes"] == 4
    assert described["per_class"] == [2, 2] and described["seed"] == 2 and len(described["indices_sha256"]) == 16
    assert data.describe_subset(labels, torch.arange(20), None)["selection"] == "all"
