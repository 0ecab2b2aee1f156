"""The corruptions of CIFAR-10/100-C and Tiny-ImageNet-C (Hendrycks & Dietterich, ICLR 2019) on uint8
images, and corrupted test sets in the official file layout.

    from catchup_mix import corruptions
    noisy = corruptions.corrupt(images, "gaussian_noise", severity=3, seed=0)  # uint8 (N, H, W, 3) in and out
    corruptions.write_set(images, labels, "data/CIFAR-100-C-ours")         # <name>.npy + labels.npy
    images, labels = corruptions.load_set("data/CIFAR-100-C", "fog")         # (5, N, H, W, 3), (N,)
    corruptions.generator_fingerprint(32)  # what would make a set now: code hash, frost source, JPEG step

The severity constants are the original benchmark's, read from hendrycks/robustness
(ImageNet-C/create_c/make_cifar_c.py at commit ca36008 for 32x32 images, make_tinyimagenet_c.py at commit
7a64e6a for 64x64); the line of each constant is noted beside it. The operations are our own numpy/scipy code
(Pillow for JPEG and pixelate, as in the original), vectorised over the batch, with the original's numerics:
float64 or float32 where it used them, and its final `np.uint8(...)`, which truncates. 64x64 images then go
through JPEG at quality 85, as the original saved every Tiny-ImageNet-C image (`jpeg_step`). Frost blends
crops of the original's frost photographs when they are installed (the `frost` extra) or in `frost_dir`, and
generated textures with the photographs' statistics otherwise. What cannot equal the original bit for bit
(random streams, ImageMagick, OpenCV's affine warp, frost without the photographs) is listed in
docs/robustness.md.

Benchmark: `python -m catchup_mix.corruptions --benchmark` times the 15 x 5 corruptions of 10,000 images.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import os
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from . import image_ops

# The 15 corruptions of the benchmark, in the order of the original script (their mean accuracy is the metric)
CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")  # released with CIFAR-10-C too
ALL_CORRUPTIONS = CORRUPTIONS + EXTRA_CORRUPTIONS
SEVERITIES = (1, 2, 3, 4, 5)

# The JPEG step of Tiny-ImageNet-C: every corrupted 64x64 image saved as JPEG, quality 85
# (make_tinyimagenet_c.py line 118, `.save(save_path, quality=85, optimize=True)`; optimize only shortens the
# file's Huffman code, the decoded pixels are the same). The CIFAR script saves .npy arrays: no JPEG step.
JPEG_STEP_QUALITY = 85
JPEG_STEP_SIZES = (64,)  # where the original applies it; `jpeg_step=True/False` overrides

# Frost: one of the first five of the original's six photographs (np.random.randint(5)), resized by
# cv2.resize(fx=fy=factor) (make_cifar_c.py lines 239-242, make_tinyimagenet_c.py lines 357-360), then a
# random crop of the image size. The photographs (Apache-2.0, Hendrycks' repository) come with the
# `imagecorruptions` package (the `frost` extra) or from a folder (`frost_dir`).
FROST_PHOTOGRAPHS = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
FROST_RESIZE = {32: 0.2, 64: 0.3}
# Per photograph after that resize: RGB mean and standard deviation (0-255), measured with
# `python -m catchup_mix.corruptions --frost-statistics` (tests/test_corruptions.py checks them against the
# photographs). The generated textures that stand in for missing photographs are mapped to these.
FROST_PHOTOGRAPH_STATISTICS = {
    32: (((77.5, 149.0, 165.7), (200.8, 205.4, 214.5), (200.8, 205.4, 214.5), (138.0, 153.2, 165.6),
          (112.3, 123.3, 134.7)),
         ((26.8, 16.4, 15.3), (21.4, 22.1, 22.6), (21.4, 22.1, 22.6), (29.0, 29.0, 30.2), (44.3, 43.2, 41.6))),
    64: (((77.6, 149.0, 165.7), (200.8, 205.4, 214.5), (200.8, 205.4, 214.5), (137.5, 152.6, 165.0),
          (112.4, 123.4, 134.8)),
         ((25.4, 15.6, 14.6), (20.3, 21.0, 21.5), (20.3, 21.0, 21.5), (26.3, 26.4, 27.8), (42.2, 41.0, 39.3))),
}
GENERATED_FROST = "generated"  # frost_dir value that forces the generated textures

# Severity 1..5 constants by image size. 32: make_cifar_c.py, 64: make_tinyimagenet_c.py (line in the file).
PARAMETERS = {
    32: {
        "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # 131: sigma
        "shot_noise": (500, 250, 100, 75, 50),  # 138: photons per unit intensity
        "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),  # 145: fraction of values flipped to 0 or 1
        "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),  # 184: radius, alias blur
        # 167: sigma, max pixel offset, iterations
        "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
        "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),  # 198: radius, sigma
        "zoom_blur": (1.06, 1.11, 1.16, 1.21, 1.26),  # 216-217: np.arange(1, end, 0.01) zoom factors
        "snow": ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
                 (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),  # 251-255
        "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),  # 238: image weight, frost weight
        "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),  # 229: strength, wibble decay
        "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # 342: added to HSV value
        "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # 334: factor on the deviation from the mean
        "elastic_transform": ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                              (0.1, 0.03, 0.03)),  # 385-389: x image size: alpha, sigma, affine jitter
        "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # 374: size factor
        "jpeg_compression": (80, 65, 58, 50, 40),  # 364: quality
        "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),  # 152: sigma
        "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1),  # 159: sigma
        "spatter": ((0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1, 0.69, 0.5, 0),
                    (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1)),  # 279-283
        "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),  # 353: factor, offset on saturation
    },
    64: {
        "gaussian_noise": (0.04, 0.08, 0.12, 0.15, 0.18),  # 249
        "shot_noise": (250, 100, 50, 30, 15),  # 256
        "impulse_noise": (0.01, 0.02, 0.05, 0.08, 0.14),  # 263
        "defocus_blur": ((0.5, 0.6), (1, 0.1), (1.5, 0.1), (2.5, 0.01), (3, 0.1)),  # 302
        "glass_blur": ((0.1, 1, 1), (0.5, 1, 1), (0.6, 1, 2), (0.7, 2, 1), (0.9, 2, 2)),  # 285
        "motion_blur": ((10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)),  # 316
        "zoom_blur": (1.06, 1.11, 1.16, 1.21, 1.26),  # 334-335
        "snow": ((0.1, 0.2, 1, 0.6, 8, 3, 0.8), (0.1, 0.2, 1, 0.5, 10, 4, 0.8), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.7),
                 (0.25, 0.3, 2.25, 0.6, 12, 6, 0.65), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.6)),  # 369-373
        "frost": ((1, 0.3), (0.9, 0.4), (0.8, 0.45), (0.75, 0.5), (0.7, 0.55)),  # 356
        "fog": ((0.4, 3), (0.7, 3), (1, 2.5), (1.5, 2), (2, 1.75)),  # 347
        "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),  # 460
        "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),  # 452
        "elastic_transform": ((0, 0, 0.08), (0.05, 0.3, 0.06), (0.1, 0.08, 0.06), (0.1, 0.03, 0.03),
                              (0.16, 0.03, 0.02)),  # 503-507
        "pixelate": (0.9, 0.8, 0.7, 0.6, 0.5),  # 492
        "jpeg_compression": (65, 58, 50, 40, 25),  # 482
        "speckle_noise": (0.15, 0.2, 0.25, 0.3, 0.35),  # 270
        "gaussian_blur": (0.5, 0.75, 1, 1.25, 1.5),  # 277
        "spatter": ((0.62, 0.1, 0.7, 0.7, 0.6, 0), (0.65, 0.1, 0.8, 0.7, 0.6, 0), (0.65, 0.3, 1, 0.69, 0.6, 0),
                    (0.65, 0.1, 0.7, 0.68, 0.6, 1), (0.65, 0.1, 0.5, 0.67, 0.6, 1)),  # 397-401
        "saturate": ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (30, 0.2)),  # 471
    },
}


def corrupt(images: np.ndarray, name: str, severity: int, seed: int | list[int] = 0, *,
            jpeg_step: bool | None = None, frost_dir=None) -> np.ndarray:
    """`images` (uint8, N x H x W x 3, H = W = 32 or 64) under corruption `name` at `severity` (1-5).

    The same (images, name, severity, seed, options) always give the same result; different names and
    severities draw from independent streams of the same seed. seed: an int, or a list of ints (numpy
    SeedSequence entropy, e.g. [seed, chunk] when a set is written in chunks).
    jpeg_step: pass the result through JPEG at quality 85, as the original saved Tiny-ImageNet-C; None (the
    default) does it for 64x64 images as the original did, and not for 32x32 (CIFAR-C is stored as .npy).
    frost_dir: where the frost photographs are (see `frost_folder`); None: the `imagecorruptions` package's
    copy if installed, else generated textures; "generated": always the generated textures.
    """
    if name not in ALL_CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; available: {', '.join(ALL_CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    size = _check_images(images)
    folder = frost_folder(frost_dir) if name == "frost" else None  # a bad folder fails even on no images
    if len(images) == 0:
        return images.copy()
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(ALL_CORRUPTIONS.index(name), severity)))
    parameter = PARAMETERS[size][name][severity - 1]
    images = np.ascontiguousarray(images)
    if name == "frost":
        corrupted = _frost(images, parameter, rng, _frost_textures(size, folder))
    else:
        corrupted = _OPERATIONS[name](images, parameter, rng)
    if _jpeg_step_on(jpeg_step, size):
        corrupted = _pillow_each(corrupted, lambda image: jpeg(image, JPEG_STEP_QUALITY))
    return corrupted


def _jpeg_step_on(jpeg_step: bool | None, size: int) -> bool:
    return size in JPEG_STEP_SIZES if jpeg_step is None else bool(jpeg_step)


def frost_folder(frost_dir=None) -> Path | None:
    """The folder the frost photographs are read from, or None for the generated textures.

    frost_dir: a folder holding FROST_PHOTOGRAPHS (an error names what is missing); "generated": None;
    None: the copy that the `imagecorruptions` package installs (`pip install 'catchup-mix[frost]'`), found
    without importing it, if all five photographs are there, else None.
    """
    if frost_dir is not None and str(frost_dir) == GENERATED_FROST:
        return None
    if frost_dir is None:
        import importlib.util

        spec = importlib.util.find_spec("imagecorruptions")
        if spec is None or not spec.submodule_search_locations:
            return None
        folder = Path(list(spec.submodule_search_locations)[0]) / "frost"
        return folder if all((folder / name).is_file() for name in FROST_PHOTOGRAPHS) else None
    folder = Path(frost_dir)
    missing = [name for name in FROST_PHOTOGRAPHS if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"frost_dir {folder} lacks the frost photographs {', '.join(missing)}; they are in "
                         "Hendrycks' repository (ImageNet-C/create_c/) and in the imagecorruptions package "
                         f"(pip install 'catchup-mix[frost]'), or pass frost_dir={GENERATED_FROST!r}")
    return folder


@functools.lru_cache(maxsize=8)
def _frost_textures(size: int, folder: Path | None) -> tuple[np.ndarray, ...]:
    """The frost images that crops are taken from: the photographs resized as the original did, or the
    generated textures with the photographs' statistics."""
    if folder is None:
        means, stds = FROST_PHOTOGRAPH_STATISTICS[size]
        return tuple(image_ops.frost_textures(size, means, stds))
    return tuple(frost_photograph(folder / name, size) for name in FROST_PHOTOGRAPHS)


def frost_photograph(path, size: int) -> np.ndarray:
    """One frost photograph as the original script uses it for `size`-pixel images: RGB uint8, resized by
    FROST_RESIZE[size] with OpenCV's linear interpolation (reproduced by image_ops.resize_linear)."""
    from PIL import Image

    with Image.open(path) as photograph:
        pixels = np.asarray(photograph.convert("RGB"))  # as cv2.imread: the alpha channel dropped
    return image_ops.resize_linear(pixels, FROST_RESIZE[size])


def generator_fingerprint(size: int, *, jpeg_step: bool | None = None, frost_dir=None) -> dict:
    """What `corrupt` and `write_set` would make `size`-pixel sets with, here and now, with these options:

    {"code": a 12-digit hash of corruptions.py and image_ops.py (any change to either changes it),
     "frost": "photographs" or "generated", "frost_files": a 12-digit hash of the five photographs (None
     when generated), "jpeg_step": whether images go through JPEG quality 85 at the end}.

    write_set stores it as "generator" in a set's corruption_set.json; a stored set whose "generator" differs
    from generator_fingerprint(its size, same options) was made by other code or from other frost textures,
    and must be regenerated to be compared with a set made now.
    """
    if size not in PARAMETERS:
        raise ValueError(f"the corruptions are defined for {sorted(PARAMETERS)}-pixel images, not {size}")
    folder = frost_folder(frost_dir)
    return {"code": _code_fingerprint(), "frost": "generated" if folder is None else "photographs",
            "frost_files": None if folder is None else _files_fingerprint(folder, FROST_PHOTOGRAPHS),
            "jpeg_step": _jpeg_step_on(jpeg_step, size)}


@functools.lru_cache(maxsize=8)
def output_fingerprint(size: int, *, jpeg_step: bool | None = None, frost_dir=None) -> str:
    """12 hex digits of what the corruptions make here and now: the hash of every corruption at every severity
    of a fixed seeded batch of two `size`-pixel images (under half a second). It changes when an output
    changes (the code, the frost textures, a library's numerics), and not when an edit leaves every output as
    it was, where generator_fingerprint's code hash changes with any edit: a measurement keyed on it is
    redone only when the corrupted images would differ."""
    images = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    digest = hashlib.sha256()
    for name in ALL_CORRUPTIONS:
        for severity in SEVERITIES:
            digest.update(corrupt(images, name, severity, seed=0, jpeg_step=jpeg_step, frost_dir=frost_dir).tobytes())
    return digest.hexdigest()[:12]


@functools.lru_cache(maxsize=1)
def _code_fingerprint() -> str:
    here = Path(__file__).parent
    return _files_fingerprint(here, ("corruptions.py", "image_ops.py"), text=True)


def _files_fingerprint(folder: Path, names, text: bool = False) -> str:
    """12 hex digits of the SHA-256 of the files' contents (text: with Windows line ends made Unix ones, so
    that a checkout's line-end setting does not change it)."""
    digest = hashlib.sha256()
    for name in names:
        content = (Path(folder) / name).read_bytes()
        digest.update(content.replace(b"\r\n", b"\n") if text else content)
    return digest.hexdigest()[:12]


def _check_images(images) -> int:
    """The image size, after checking that `images` is what the corruptions take."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        shape = getattr(images, "shape", None)
        raise ValueError(f"images must be a uint8 numpy array of shape (N, H, W, 3), got {type(images).__name__} "
                         f"{getattr(images, 'dtype', '')} {shape}; from a torch split use "
                         "split.images.permute(0, 2, 3, 1).numpy()")
    size = images.shape[1]
    if images.shape[2] != size or size not in PARAMETERS:
        raise ValueError(f"the benchmark defines its corruptions for 32x32 (CIFAR-10/100-C) and 64x64 "
                         f"(Tiny-ImageNet-C) images; got {images.shape[1]}x{images.shape[2]}: resize them first")
    return size


# ---------------------------------------------------------------------------------------------------
# The corruptions. Each takes uint8 images (N, S, S, 3), its severity's constant and a Generator.


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    """0..255 floats to uint8 by truncation, as the original's np.uint8(...) of its float results."""
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _unit(images: np.ndarray, dtype=np.float64) -> np.ndarray:
    return images.astype(dtype) / 255


def _gaussian_noise(images, sigma, rng):
    x = _unit(images)
    return _to_uint8(np.clip(x + rng.normal(size=x.shape, scale=sigma), 0, 1) * 255)


def _shot_noise(images, photons, rng):
    x = _unit(images)
    return _to_uint8(np.clip(rng.poisson(x * photons) / photons, 0, 1) * 255)


def _impulse_noise(images, amount, rng):
    # scikit-image's random_noise(mode="s&p", amount): each value independently, with probability `amount`,
    # becomes 1 (salt) or 0 (pepper) with equal chance
    x = _unit(images)
    flipped = rng.random(x.shape) < amount
    salt = rng.random(x.shape) < 0.5
    return _to_uint8(np.where(flipped, salt.astype(np.float64), x) * 255)


def _speckle_noise(images, sigma, rng):
    x = _unit(images)
    return _to_uint8(np.clip(x + x * rng.normal(size=x.shape, scale=sigma), 0, 1) * 255)


def _gaussian_blur(images, sigma, rng):
    return _to_uint8(np.clip(image_ops.gaussian_blur(_unit(images), sigma), 0, 1) * 255)


def _glass_blur(images, parameter, rng):
    sigma, delta, iterations = parameter
    size = images.shape[1]
    x = _to_uint8(image_ops.gaussian_blur(_unit(images), sigma) * 255)
    # The original's "swap" `x[h, w], x[h', w'] = x[h', w'], x[h, w]` works on numpy views: it copies
    # x[h', w'] into x[h, w] and leaves x[h', w'] as it was. We do the same copy, position by position in the
    # original's order (rows and columns from size - delta down to delta + 1), for all images at once.
    batch = np.arange(len(x))
    for _ in range(iterations):
        for h in range(size - delta, delta, -1):
            offsets = rng.integers(-delta, delta, size=(size, len(x), 2))  # (dx, dy) per column; high exclusive
            for w in range(size - delta, delta, -1):
                dx, dy = offsets[w, :, 0], offsets[w, :, 1]
                x[batch, h, w] = x[batch, h + dy, w + dx]
    return _to_uint8(np.clip(image_ops.gaussian_blur(_unit(x), sigma), 0, 1) * 255)


def _disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The original's `disk`: a normalised disk on a 17 x 17 grid (larger radii: 2 radius + 1), smoothed by a
    3 x 3 Gaussian (5 x 5 above radius 8) of sigma `alias_blur`; cropped to where it is not zero."""
    half, taps = (8, 3) if radius <= 8 else (int(radius), 5)
    grid = np.arange(-half, half + 1)
    disk = ((grid[:, None] ** 2 + grid[None, :] ** 2) <= radius**2).astype(np.float32)
    disk /= disk.sum()
    offsets = np.arange(taps) - (taps - 1) / 2
    gaussian = np.exp(-offsets**2 / (2 * alias_blur**2))
    gaussian /= gaussian.sum()
    for axis in (0, 1):
        disk = ndimage.correlate1d(disk, gaussian.astype(np.float32), axis=axis, mode="mirror")
    rows, cols = np.nonzero(disk)
    return disk[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def _defocus_blur(images, parameter, rng):
    kernel = _disk_kernel(*parameter)
    blurred = ndimage.correlate(_unit(images), kernel[None, :, :, None], mode="mirror")
    return _to_uint8(np.clip(blurred, 0, 1) * 255)


def _motion_blur(images, parameter, rng):
    radius, sigma = parameter
    angles = rng.uniform(-45, 45, len(images))
    blurred = image_ops.motion_blur(images.astype(np.float64), radius, sigma, angles)
    return np.clip(np.rint(blurred), 0, 255).astype(np.uint8)  # ImageMagick rounds to the nearest level


def _zoom_blur(images, end, rng):
    x = _unit(images, np.float32)
    factors = np.arange(1, end, 0.01)  # as the original: float steps, so 7, 12, 16, 21, 26 factors
    total = image_ops.apply_spatial(image_ops.zoom_sum(x.shape[1], factors), x)  # every zoom in one product
    return _to_uint8(np.clip((x + total) / (len(factors) + 1), 0, 1) * 255)


def _snow(images, parameter, rng):
    mean, std, zoom, threshold, radius, sigma, keep = parameter
    n, size = images.shape[:2]
    x = _unit(images, np.float32)
    layer = image_ops.clipped_zoom(rng.normal(size=(n, size, size), loc=mean, scale=std), zoom)
    layer[layer < threshold] = 0
    layer = (np.clip(layer, 0, 1) * 255).astype(np.uint8)  # written as an 8-bit PNG for ImageMagick
    blurred = image_ops.motion_blur(layer.astype(np.float64), radius, sigma, rng.uniform(-135, -45, n))
    layer = (np.clip(np.rint(blurred), 0, 255) / 255)[..., None]
    grey = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]  # OpenCV's RGB2GRAY
    x = keep * x + (1 - keep) * np.maximum(x, grey[..., None] * 1.5 + 0.5)
    return _to_uint8(np.clip(x + layer + layer[:, ::-1, ::-1], 0, 1) * 255)


def _frost(images, parameter, rng, textures):
    # textures: the frost images (H_k, W_k, 3) to crop from, of any sizes; each image gets a crop of one,
    # picked uniformly, at a uniform start row in [0, H_k - size) and column in [0, W_k - size), as the
    # original's randint (its high end excluded)
    image_weight, frost_weight = parameter
    n, size = images.shape[:2]
    heights, widths = np.array([texture.shape[:2] for texture in textures]).T
    pick = rng.integers(0, len(textures), n)
    top = rng.integers(0, heights[pick] - size)
    left = rng.integers(0, widths[pick] - size)
    span = np.arange(size)
    crops = np.empty_like(images)
    for k, texture in enumerate(textures):
        chosen = np.nonzero(pick == k)[0]
        crops[chosen] = texture[(top[chosen, None] + span)[:, :, None], (left[chosen, None] + span)[:, None, :]]
    return _to_uint8(np.clip(image_weight * images.astype(np.float64) + frost_weight * crops, 0, 255))


def _fog(images, parameter, rng):
    strength, decay = parameter
    n, size = images.shape[:2]
    x = _unit(images)
    brightest = x.max(axis=(1, 2, 3), keepdims=True)
    x = x + strength * image_ops.plasma_fractal(n, size, decay, rng)[..., None]
    return _to_uint8(np.clip(x * brightest / (brightest + strength), 0, 1) * 255)


def _brightness(images, shift, rng):
    hsv = image_ops.rgb_to_hsv(_unit(images))
    hsv[..., 2] = np.clip(hsv[..., 2] + shift, 0, 1)
    return _to_uint8(np.clip(image_ops.hsv_to_rgb(hsv), 0, 1) * 255)


def _saturate(images, parameter, rng):
    factor, offset = parameter
    hsv = image_ops.rgb_to_hsv(_unit(images))
    hsv[..., 1] = np.clip(hsv[..., 1] * factor + offset, 0, 1)
    return _to_uint8(np.clip(image_ops.hsv_to_rgb(hsv), 0, 1) * 255)


def _contrast(images, factor, rng):
    x = _unit(images)
    means = x.mean(axis=(1, 2), keepdims=True)
    return _to_uint8(np.clip((x - means) * factor + means, 0, 1) * 255)


def _elastic_transform(images, parameter, rng):
    n, size = images.shape[:2]
    alpha, sigma, jitter = (value * size for value in parameter)
    x = _unit(images, np.float32)
    # a random affine map: three points around the centre, each moved by U(-jitter, jitter), as OpenCV's
    # getAffineTransform + warpAffine(INTER_LINEAR, BORDER_REFLECT_101) in the original; OpenCV's linear
    # weights sit on a 1/32-pixel grid, so the source coordinates are rounded to it too
    centre, reach = size // 2, size // 3
    source = np.array([[centre + reach, centre + reach], [centre + reach, centre - reach],
                       [centre - reach, centre - reach]], dtype=np.float32)  # (x, y) points
    target = (source + rng.uniform(-jitter, jitter, size=(n, 3, 2)).astype(np.float32)).astype(np.float64)
    # the affine map from target back to source: [x_s, y_s] = A [x_t, y_t, 1]
    homogeneous = np.concatenate([target, np.ones((n, 3, 1))], axis=2)
    inverse = np.linalg.solve(homogeneous, np.broadcast_to(source.astype(np.float64), (n, 3, 2)))  # (n, 3, 2)
    ys, xs = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    grid = np.stack([xs, ys, np.ones_like(xs)], axis=-1).astype(np.float64)  # (S, S, 3)
    mapped = np.round(np.einsum("hwk,nkj->nhwj", grid, inverse) * 32) / 32
    x = image_ops.sample_bilinear(x, mapped[..., 1], mapped[..., 0], "mirror")
    # a smooth random displacement field, then bilinear resampling with reflected borders
    # (scikit-image gaussian(mode="reflect", truncate=3), scipy map_coordinates(order=1, mode="reflect"))
    dx, dy = ((image_ops.gaussian_blur(rng.uniform(-1, 1, (n, size, size)), sigma, "reflect", 3) * alpha)
              .astype(np.float32) for _ in range(2))
    x = image_ops.sample_bilinear(x, ys + dy, xs + dx, "reflect")
    return _to_uint8(np.clip(x, 0, 1) * 255)


def _pillow_each(images, operation) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(operation(Image.fromarray(image))) for image in images])


def _pixelate(images, factor, rng):
    from PIL import Image

    size = images.shape[1]
    small = int(size * factor)
    return _pillow_each(images, lambda image: image.resize((small, small), Image.BOX).resize((size, size), Image.BOX))


def jpeg(image, quality: int):
    """One PIL image through Pillow's JPEG encoder and decoder at `quality` (its default 4:2:0 subsampling),
    as the original's jpeg_compression."""
    from PIL import Image

    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(buffer)


def _jpeg_compression(images, quality, rng):
    return _pillow_each(images, lambda image: jpeg(image, quality))


def _spatter(images, parameter, rng):
    mean, std, sigma, threshold, intensity, mud = parameter
    n, size = images.shape[:2]
    x = _unit(images, np.float32)
    liquid = image_ops.gaussian_blur(rng.normal(size=(n, size, size), loc=mean, scale=std), sigma)
    liquid[liquid < threshold] = 0
    if not mud:
        # water: pale turquoise drops whose rims are shaded from the distance to the drops' edges
        # the original's (liquid * 255).astype(np.uint8): values past 255 wrap around, as that cast does on
        # x86 (where the benchmark was made); through int64 so that it does so on every machine
        level = (liquid * 255).astype(np.int64).astype(np.uint8)
        edges = image_ops.canny(level, 50, 150)
        # OpenCV's chamfer distance to the nearest edge (float32), truncated at 20, blurred in float32 and
        # truncated to uint8, as the original's distanceTransform, threshold, blur and astype
        distance = np.minimum(image_ops.chamfer_distance(edges), np.float32(20))
        distance = image_ops.equalize_histogram(image_ops.box_blur3(distance).astype(np.uint8))
        relief = ndimage.correlate(distance.astype(np.float64), np.array([[[-2, -1, 0], [-1, 1, 1],
                                                                                     [0, 1, 2]]]), mode="mirror")
        relief = np.clip(np.rint(relief), 0, 255).astype(np.uint8)  # filter2D into uint8 saturates
        relief = image_ops.box_blur3(relief).astype(np.float32)
        shade = level.astype(np.float32) * relief
        peak = shade.max(axis=(1, 2), keepdims=True)
        shade = np.divide(shade, peak, out=np.zeros_like(shade), where=peak > 0) * intensity
        colour = (np.array([175, 238, 238]) / 255).astype(np.float32)  # float64 quotients, as 175 / 255. * ones
        return _to_uint8(np.clip(x + shade[..., None] * colour, 0, 1) * 255)
    # mud: brown blots where the blurred liquid mask is above 0.8
    mask = image_ops.gaussian_blur((liquid > threshold).astype(np.float32), intensity)
    mask[mask < 0.8] = 0
    colour = (np.array([63, 42, 20]) / 255).astype(np.float32)
    return _to_uint8(np.clip(x * (1 - mask[..., None]) + colour * mask[..., None], 0, 1) * 255)


_OPERATIONS = {  # frost is called with its textures by corrupt()
    "gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise, "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur, "glass_blur": _glass_blur, "motion_blur": _motion_blur, "zoom_blur": _zoom_blur,
    "snow": _snow, "fog": _fog, "brightness": _brightness, "contrast": _contrast,
    "elastic_transform": _elastic_transform, "pixelate": _pixelate, "jpeg_compression": _jpeg_compression,
    "speckle_noise": _speckle_noise, "gaussian_blur": _gaussian_blur, "spatter": _spatter, "saturate": _saturate,
}


# ---------------------------------------------------------------------------------------------------
# Corrupted sets in the official layout: <name>.npy holds the 5 severities one after the other (5N x H x W x 3
# uint8, severity-major) and labels.npy the N labels repeated 5 times, as CIFAR-10-C and CIFAR-100-C ship.

SET_CHUNK = 1000  # images per corrupt() call when a set is written; chunk k is seeded with [seed, k * SET_CHUNK]
SET_INFO = "corruption_set.json"  # how a generated set was made (official sets have none)


class CorruptionSetError(ValueError):
    """A corrupted set that is missing or does not fit the test set; the message says what to do."""


def fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """A short hash of a test split: a generated set belongs to exactly these images and labels."""
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    digest.update(np.asarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


def write_set(images: np.ndarray, labels, out, names=ALL_CORRUPTIONS, seed: int = 0, progress: bool = True, *,
              jpeg_step: bool | None = None, frost_dir=None) -> Path:
    """Write the corrupted versions of a test split (uint8 N x H x W x 3, labels N) into folder `out`.

    Each <name>.npy is written to a temporary file and renamed when complete, so an interrupted run leaves
    no partial file behind and a rerun continues with the corruptions not done yet. A folder made for other
    images, labels or seed, or by other code or settings (its "generator", see generator_fingerprint), is
    refused rather than mixed. jpeg_step, frost_dir: as for `corrupt`.
    """
    from tqdm import tqdm

    from .checkpoint import atomic_write, write_json
    from .provenance import git_state

    out = Path(out)
    labels = np.asarray(labels)
    n = len(images)
    _check_images(images)
    unknown = [name for name in names if name not in ALL_CORRUPTIONS]
    if unknown or len(labels) != n or n == 0:
        raise ValueError(f"write_set: unknown corruptions {unknown}" if unknown else
                         f"write_set needs as many labels as images and at least one image, got {len(labels)} "
                         f"labels for {n} images")
    folder = frost_folder(frost_dir)
    options = {"jpeg_step": jpeg_step, "frost_dir": GENERATED_FROST if folder is None else folder}
    info = {"fingerprint": fingerprint(images, labels), "images": n, "size": list(images.shape[1:3]),
            "seed": seed, "chunk": SET_CHUNK, "source": "generated by catchup_mix.corruptions",
            "constants": "hendrycks/robustness make_cifar_c.py (32 px) / make_tinyimagenet_c.py (64 px)",
            "generator": generator_fingerprint(images.shape[1], **options), "libraries": _library_versions()}
    if (out / SET_INFO).is_file():
        before = json.loads((out / SET_INFO).read_text())
        identity = ("fingerprint", "seed", "chunk")
        if {k: before.get(k) for k in identity} != {k: info[k] for k in identity}:
            raise CorruptionSetError(f"{out} holds a corrupted set of other images or another seed "
                                     f"({before.get('images')} images, seed {before.get('seed')}); "
                                     "write to another folder or delete it")
        if before.get("generator") != info["generator"]:
            raise CorruptionSetError(f"{out} was made by other corruption code or settings ({before.get('generator')}; "
                                     f"now {info['generator']}): delete it to make it again, or write to another "
                                     "folder")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / SET_INFO, {**info, **git_state()})
    repeated = np.tile(labels, len(SEVERITIES)).astype(np.uint8 if labels.max() < 256 else np.int64)
    atomic_write(out / "labels.npy", lambda file: np.save(file, repeated))
    todo = [name for name in names if name not in _written(out, n, images.shape)]
    starts = range(0, n, SET_CHUNK)
    with tqdm(total=len(todo) * len(SEVERITIES) * len(starts), unit="chunk", disable=not (progress and todo),
              desc=f"corrupting {n} images") as bar:
        for name in todo:
            # one temporary file per process: processes that share the work write identical files
            partial = out / f".{name}.npy.{os.getpid()}.partial"
            try:
                array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8,
                                                  shape=(len(SEVERITIES) * n, *images.shape[1:]))
                for s, severity in enumerate(SEVERITIES):
                    bar.set_postfix_str(f"{name} {severity}")
                    for start in starts:
                        chunk = images[start:start + SET_CHUNK]
                        array[s * n + start:s * n + start + len(chunk)] = corrupt(chunk, name, severity,
                                                                                  [seed, start], **options)
                        bar.update(1)
                array.flush()
                del array
                os.replace(partial, out / f"{name}.npy")
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
    return out


def set_for(images: np.ndarray, labels, root, names=CORRUPTIONS, seed: int = 0, **options) -> Path:
    """The corrupted set of these images (uint8 N x H x W x 3) under `root`, in a folder named by the images
    and by what makes it (generator_fingerprint): written the first time, found after that, and made anew in a
    new folder when the code changes, so callers that share a set never hit write_set's refusal. options:
    jpeg_step, frost_dir."""
    made_by = json.dumps(generator_fingerprint(images.shape[1], **options), sort_keys=True).encode()
    folder = Path(root) / f"{fingerprint(images, labels)}-{hashlib.sha256(made_by).hexdigest()[:12]}"
    return write_set(images, labels, folder, names, seed=seed, progress=False, **options)


def _library_versions() -> dict:
    """The libraries whose numerics the corruptions use (Pillow's JPEG encoder above all)."""
    import PIL
    import scipy

    return {"numpy": np.__version__, "scipy": scipy.__version__, "pillow": PIL.__version__}


def _written(folder: Path, n: int, shape) -> list[str]:
    """The corruptions already complete in `folder` for n images of `shape`."""
    done = []
    for name in ALL_CORRUPTIONS:
        path = folder / f"{name}.npy"
        if path.is_file():
            stored = np.load(path, mmap_mode="r")
            if stored.shape == (len(SEVERITIES) * n, *shape[1:]) and stored.dtype == np.uint8:
                done.append(name)
    return done


def available_in(folder, names=CORRUPTIONS) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the corruptions of `names` whose <name>.npy is in `folder`, those whose file is not), in `names`'
    order. Only the files' presence: `load_set` checks each one's content."""
    folder = Path(folder)
    present = tuple(name for name in names if (folder / f"{name}.npy").is_file())
    return present, tuple(name for name in names if name not in present)


def load_set(folder, name: str, *, expected_labels=None, image_size: int | None = None):
    """One corruption of an official or generated set: (images uint8 (5, N, H, W, 3) memory-mapped, labels (N,)).

    expected_labels: the clean test labels the set must belong to (same count, same order); image_size: the
    size the model takes. Anything else is refused with a message that says how to make the right set.
    """
    folder = Path(folder)
    fix = (f"generate it with `python -m catchup_mix corrupt --dataset DATASET --data-root DIR --out {folder}`, "
           "or put the official CIFAR-10-C / CIFAR-100-C .npy files there")
    if name not in ALL_CORRUPTIONS:
        raise CorruptionSetError(f"unknown corruption {name!r}; available: {', '.join(ALL_CORRUPTIONS)}")
    if not folder.is_dir():
        raise CorruptionSetError(f"no corruption set at {folder} (no such folder): {fix}")
    path, labels_path = folder / f"{name}.npy", folder / "labels.npy"
    for needed in (path, labels_path):
        if not needed.is_file():
            raise CorruptionSetError(f"corruption set {folder} has no {needed.name}: {fix}")
    try:
        images = np.load(path, mmap_mode="r")
        labels = np.load(labels_path)
    except (ValueError, OSError) as error:
        raise CorruptionSetError(f"{path} or {labels_path} is not a readable .npy file ({error}): {fix}") from None
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8 or images.shape[1] != images.shape[2]:
        raise CorruptionSetError(f"{path} holds {images.dtype} {images.shape}; a corruption file holds uint8 "
                                 f"(5 x N, H, W, 3) square RGB images: {fix}")
    if len(images) % len(SEVERITIES):
        raise CorruptionSetError(f"{path} holds {len(images)} images, not 5 severities of N images: {fix}")
    n = len(images) // len(SEVERITIES)
    labels = np.asarray(labels).astype(np.int64)
    if labels.ndim != 1 or len(labels) not in (n, len(images)):
        raise CorruptionSetError(f"{labels_path} holds {labels.shape} labels for {len(images)} images in {path}; "
                                 f"expected {len(images)} (or {n}): {fix}")
    if len(labels) == len(images) and not (labels.reshape(len(SEVERITIES), n) == labels[:n]).all():
        raise CorruptionSetError(f"{labels_path} does not repeat the same {n} labels for each severity: {fix}")
    labels = labels[:n]
    if image_size is not None and images.shape[1] != image_size:
        raise CorruptionSetError(f"{path} holds {images.shape[1]}x{images.shape[2]} images but the model takes "
                                 f"{image_size}x{image_size}: {fix}")
    if expected_labels is not None:
        expected = np.asarray(expected_labels, dtype=np.int64)
        if len(expected) != n or not (expected == labels).all():
            raise CorruptionSetError(f"{folder} holds {n} images whose labels are not the {len(expected)} test "
                                     f"labels of this model's dataset (another dataset, or another subset?): {fix}")
    return images.reshape(len(SEVERITIES), n, *images.shape[1:]), labels


# ---------------------------------------------------------------------------------------------------
# Benchmark


def benchmark(num_images: int = 10_000, size: int = 32, names=CORRUPTIONS, **options) -> list[dict]:
    """Seconds to corrupt `num_images` synthetic test images at all 5 severities, per corruption, in chunks of
    SET_CHUNK images as write_set does. options: jpeg_step, frost_dir, as for `corrupt`."""
    from . import data

    per_class = -(-num_images // 10)
    split = data.load("synthetic", num_classes=10, test_per_class=per_class, train_per_class=1).test
    images = split.images.permute(0, 2, 3, 1).numpy()[:num_images]
    if size != images.shape[1]:
        images = images.repeat(size // images.shape[1], axis=1).repeat(size // images.shape[2], axis=2)
    rows = []
    for name in names:
        start = time.perf_counter()
        for severity in SEVERITIES:
            for first in range(0, num_images, SET_CHUNK):  # in chunks, as write_set makes a set
                corrupt(images[first:first + SET_CHUNK], name, severity, seed=[0, first], **options)
        rows.append({"corruption": name, "seconds": time.perf_counter() - start})
        print(f"{name:<18} {rows[-1]['seconds']:7.1f} s", flush=True)
    return rows


def frost_photograph_statistics(folder, size: int) -> tuple[tuple, tuple]:
    """RGB means and standard deviations (0-255, to 0.1) of each of FROST_PHOTOGRAPHS in `folder`, resized
    for `size`-pixel images: what FROST_PHOTOGRAPH_STATISTICS holds."""
    photographs = [frost_photograph(Path(folder) / name, size).reshape(-1, 3).astype(np.float64)
                   for name in FROST_PHOTOGRAPHS]
    return (tuple(tuple(np.round(p.mean(axis=0), 1).tolist()) for p in photographs),
            tuple(tuple(np.round(p.std(axis=0), 1).tolist()) for p in photographs))


def add_generator_options(parser: argparse.ArgumentParser) -> None:
    """The command-line switches of `corrupt`'s jpeg_step and frost_dir (here and in `python -m catchup_mix
    corrupt`)."""
    parser.add_argument("--jpeg-step", action=argparse.BooleanOptionalAction, default=None,
                        help="pass every corrupted image through JPEG quality 85 as Tiny-ImageNet-C was saved "
                             "(default: for 64x64 images only, as the original)")
    parser.add_argument("--frost-dir", metavar="DIR", help="folder with the original frost photographs "
                        f"(frost1.png ... frost5.jpg), or {GENERATED_FROST!r} for the generated textures (default: "
                        "the photographs of the imagecorruptions package if installed, else generated)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m catchup_mix.corruptions",
                                     description="Time the corruptions (every severity) on synthetic images.")
    parser.add_argument("--benchmark", action="store_true", help="run the benchmark")
    parser.add_argument("--frost-statistics", action="store_true",
                        help="print the frost photographs' RGB means and standard deviations per image size")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=32, choices=sorted(PARAMETERS))
    parser.add_argument("--corruptions", nargs="+", default=list(CORRUPTIONS), choices=ALL_CORRUPTIONS)
    add_generator_options(parser)
    args = parser.parse_args(argv)
    options = {"jpeg_step": args.jpeg_step, "frost_dir": args.frost_dir}
    try:
        folder = frost_folder(args.frost_dir)
    except ValueError as error:
        parser.error(str(error))
    if args.frost_statistics:
        if folder is None:
            parser.error("--frost-statistics needs the photographs: --frost-dir DIR, or pip install "
                         "'catchup-mix[frost]'")
        for size in PARAMETERS:
            print(f"{size}: {frost_photograph_statistics(folder, size)}  # from {folder}")
        return 0
    if not args.benchmark:
        parser.print_help()
        return 0
    import torch

    from .provenance import describe, git_state

    print(f"{args.images} images of {args.size}x{args.size}, 5 severities each; "
          f"{describe({**git_state(), 'device': f'{os.cpu_count()} CPUs'})}, torch threads {torch.get_num_threads()}; "
          f"generator {generator_fingerprint(args.size, **options)}")
    rows = benchmark(args.images, args.size, args.corruptions, **options)
    total = sum(row["seconds"] for row in rows)
    print(f"{'total':<18} {total:7.1f} s ({len(rows)} corruptions x 5 severities)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
