"""Image operations the corruptions are built from, on batches of float images (N, H, W[, C]) in numpy.

The original corruption code (hendrycks/robustness) calls scikit-image, OpenCV and ImageMagick on one image
at a time; these are the same operations written once with numpy/scipy for a whole batch: bilinear
resampling with a border mode, the crop-and-zoom of `clipped_zoom`, ImageMagick's one-sided motion blur,
the diamond-square plasma of `fog`, HSV conversion, OpenCV's linear resize, box blur, chamfer distance
transform, histogram equalisation and Canny edges, and procedurally generated frost textures.
docs/robustness.md lists where they differ from the libraries the original called.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def fold_index(index: np.ndarray, size: int, border: str) -> np.ndarray:
    """Integer pixel indices outside [0, size) brought inside by a border rule.

    "mirror": d c b | a b c d | c b a (OpenCV's BORDER_REFLECT_101, scipy's "mirror");
    "reflect": c b a | a b c d | d c b (scipy's "reflect", scikit-image's "reflect"); "edge": a a | a b c d | d d.
    """
    if border == "edge" or size == 1:
        return np.clip(index, 0, size - 1)
    if border == "mirror":
        period = 2 * (size - 1)
        index = np.mod(index, period)
        return np.where(index >= size, period - index, index)
    if border == "reflect":
        period = 2 * size
        index = np.mod(index, period)
        return np.where(index >= size, period - 1 - index, index)
    raise ValueError(f"unknown border {border!r}; use mirror, reflect or edge")


def sample_bilinear(images: np.ndarray, rows: np.ndarray, cols: np.ndarray, border: str) -> np.ndarray:
    """images (N, H, W, C) sampled at real-valued (rows, cols) of shape (N, H', W') -> (N, H', W', C).

    Linear interpolation between the four neighbours, each neighbour's index folded by `border`: the same
    numbers as scipy.ndimage.map_coordinates(order=1, mode=border) and OpenCV's INTER_LINEAR warps.
    """
    n, height, width = images.shape[:3]
    top, left = np.floor(rows), np.floor(cols)
    down = (rows - top).astype(images.dtype)[..., None]
    right = (cols - left).astype(images.dtype)[..., None]
    top, left = top.astype(np.int64), left.astype(np.int64)
    pixels = images.reshape(n * height * width, -1)
    first = (np.arange(n) * height)[:, None, None]

    def at(r, c):  # one gather from the flattened batch: much faster than indexing three arrays
        return np.take(pixels, (first + r) * width + c, axis=0)

    r0, r1 = fold_index(top, height, border), fold_index(top + 1, height, border)
    c0, c1 = fold_index(left, width, border), fold_index(left + 1, width, border)
    upper = at(r0, c0) * (1 - right) + at(r0, c1) * right
    lower = at(r1, c0) * (1 - right) + at(r1, c1) * right
    return (upper * (1 - down) + lower * down).reshape(*rows.shape, *images.shape[3:])


def zoom_rows(size: int, factor: float):
    """The original's `clipped_zoom` along one axis, as a sparse (size x size) matrix: the centre crop of
    ceil(size / factor) pixels zoomed by `factor` >= 1 and trimmed back to `size` pixels.

    The zoom is scipy.ndimage.zoom(order=1): output pixel o (of round(crop * factor), Python's rounding as
    scipy's) reads input coordinate o * (crop - 1) / (outputs - 1), between its two neighbours; the trim
    keeps the middle `size` outputs.
    """
    from scipy import sparse

    crop = int(np.ceil(size / factor))
    top = (size - crop) // 2
    zoomed = round(crop * factor)
    step = (crop - 1) / (zoomed - 1) if zoomed > 1 else 1.0
    coordinates = (np.arange(size) + (zoomed - size) // 2) * step
    low = np.floor(coordinates).astype(np.int64)
    weight = coordinates - low
    rows = np.tile(np.arange(size), 2)
    cols = top + np.concatenate([low, np.minimum(low + 1, crop - 1)])
    return sparse.csr_matrix((np.concatenate([1 - weight, weight]), (rows, cols)), shape=(size, size))


def zoom_sum(size: int, factors) -> object:
    """Sum over `factors` of the 2-D clipped zooms, as one sparse (size^2 x size^2) matrix on flattened images."""
    from scipy import sparse

    total = sparse.csr_matrix((size * size, size * size))
    for factor in factors:
        rows = zoom_rows(size, factor)
        total = total + sparse.kron(rows, rows, format="csr")
    return total


def apply_spatial(matrix, images: np.ndarray) -> np.ndarray:
    """A linear map on the flattened H x W pixels of each image of (N, H, W[, C]): one sparse product."""
    n, height, width = images.shape[:3]
    flat = images.reshape(n, height * width, -1).transpose(1, 0, 2).reshape(height * width, -1)
    out = (matrix.astype(images.dtype) @ flat).reshape(height * width, n, -1).transpose(1, 0, 2)
    return out.reshape(images.shape)


def clipped_zoom(images: np.ndarray, factor: float) -> np.ndarray:
    """The original's `clipped_zoom` on a batch of square images (N, S, S[, C])."""
    return apply_spatial(zoom_sum(images.shape[1], [factor]), images)


_RESIZE_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS: linear weights in units of 1/2048


def _resize_taps(source: int, factor: float):
    """The two source pixels and fixed-point weights of each output pixel of OpenCV's INTER_LINEAR resize along
    one axis: output pixel o reads source coordinate (o + 0.5) / factor - 0.5 (a float32), between its two
    neighbours; coordinates beyond the first or last pixel take that pixel."""
    outputs = round(source * factor)  # saturate_cast<int>: rounds half to even, as Python's round
    position = ((np.arange(outputs) + 0.5) * (1 / factor) - 0.5).astype(np.float32)
    first = np.floor(position).astype(np.int64)
    fraction = (position - first).astype(np.float32)
    beyond = (first < 0) | (first >= source - 1)
    fraction[beyond] = 0
    first = np.clip(first, 0, source - 1)
    one = np.float32(1 << _RESIZE_BITS)
    weights = np.rint((np.float32(1) - fraction) * one), np.rint(fraction * one)
    return first, np.minimum(first + 1, source - 1), *(w.astype(np.int64) for w in weights)


def resize_linear(image: np.ndarray, factor: float) -> np.ndarray:
    """OpenCV's resize(image, (0, 0), fx=factor, fy=factor) with INTER_LINEAR on one uint8 image (H, W, C).

    Its fixed-point arithmetic: weights in 1/2048, the horizontal pass in integers, the vertical pass as
    OpenCV's vectorised code does it (each row sum shifted right by 4, multiplied by its weight keeping the
    high 16 bits, the two added and rounded by a shift of 2). Equal to OpenCV 4.10's and 5.0's results bit
    for bit at the factors frost uses, 0.2 and 0.3 (tests/test_corruptions.py); within one grey level at
    others, where OpenCV's vectorised and scalar code paths split an image's pixels differently.
    """
    height, width = image.shape[:2]
    x0, x1, a0, a1 = _resize_taps(width, factor)
    y0, y1, b0, b1 = _resize_taps(height, factor)
    pixels = image.astype(np.int64).reshape(height, width, -1)
    rows = pixels[:, x0] * a0[None, :, None] + pixels[:, x1] * a1[None, :, None]
    top = ((rows[y0] >> 4) * b0[:, None, None]) >> 16
    bottom = ((rows[y1] >> 4) * b1[:, None, None]) >> 16
    out = np.clip((top + bottom + 2) >> 2, 0, 255).astype(np.uint8)
    return out.reshape(len(y0), len(x0), *image.shape[2:])


def motion_blur(images: np.ndarray, radius: float, sigma: float, angles: np.ndarray) -> np.ndarray:
    """ImageMagick's MotionBlurImage on a batch (N, H, W[, C]), one angle (degrees) per image.

    As in ImageMagick's effect.c: a one-sided kernel of width 2 ceil(radius) + 1 with weights
    exp(-i^2 / (2 sigma^2)) (normalised), tap i reading the pixel at offset (ceil(i cos a - 0.5),
    ceil(i sin a - 0.5)) in (x, y), pixels beyond the border repeating the edge ("edge" virtual pixels).
    """
    width = int(2 * math.ceil(radius) + 1)
    taps = np.arange(width)
    kernel = np.exp(-taps**2 / (2 * sigma**2))
    kernel /= kernel.sum()
    angle = np.deg2rad(np.asarray(angles, dtype=np.float64))[:, None]
    dx = np.ceil(taps * np.cos(angle) - 0.5).astype(np.int64)  # (N, width)
    dy = np.ceil(taps * np.sin(angle) - 0.5).astype(np.int64)
    n, height, columns = images.shape[:3]
    pixels = images.reshape(n * height * columns, -1)
    first = (np.arange(n) * height)[:, None, None]
    out = np.zeros((n, height, columns, pixels.shape[1]))
    for i, weight in enumerate(kernel):
        rows = np.clip(np.arange(height)[None] + dy[:, i, None], 0, height - 1)[:, :, None]
        cols = np.clip(np.arange(columns)[None] + dx[:, i, None], 0, columns - 1)[:, None, :]
        out += weight * np.take(pixels, (first + rows) * columns + cols, axis=0)  # one gather, flat indices
    return out.reshape(images.shape)


def plasma_fractal(n: int, size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """n diamond-square height maps (n, size, size) in [0, 1] on a torus, as the original `plasma_fractal`:
    each new point is the mean of its 4 neighbours plus wibble * U(-wibble, wibble), wibble starting at 100
    and divided by `decay` at each halving of the step. size must be a power of two."""
    if size & (size - 1):
        raise ValueError(f"plasma_fractal needs a power-of-two size, got {size}")
    heights = np.zeros((n, size, size))
    step, wibble = size, 100.0

    def noisy_mean(neighbour_sum):
        return neighbour_sum / 4 + wibble * rng.uniform(-wibble, wibble, neighbour_sum.shape)

    while step >= 2:
        half = step // 2
        corners = heights[:, 0::step, 0::step]
        # square step: the centre of each square from its 4 corners
        square = corners + np.roll(corners, -1, axis=1)
        heights[:, half::step, half::step] = noisy_mean(square + np.roll(square, -1, axis=2))
        centres = heights[:, half::step, half::step]
        # diamond step: edge midpoints from the 2 corners and the 2 centres beside them
        heights[:, 0::step, half::step] = noisy_mean(
            corners + np.roll(corners, -1, axis=2) + centres + np.roll(centres, 1, axis=1))
        heights[:, half::step, 0::step] = noisy_mean(
            corners + np.roll(corners, -1, axis=1) + centres + np.roll(centres, 1, axis=2))
        step, wibble = half, wibble / decay
    heights -= heights.min(axis=(1, 2), keepdims=True)
    return heights / heights.max(axis=(1, 2), keepdims=True)


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) RGB in [0, 1] -> HSV in [0, 1], with scikit-image's conventions (grey: hue 0, black:
    saturation 0; when channels tie for the maximum, blue's formula wins over green's over red's)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = rgb.max(axis=-1)
    delta = value - rgb.min(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        saturation = np.where(value > 0, delta / value, 0.0)
        hue = np.where(r == value, (g - b) / delta, 0.0)
        hue = np.where(g == value, 2 + (b - r) / delta, hue)
        hue = np.where(b == value, 4 + (r - g) / delta, hue)
    hue = np.where(delta > 0, (hue / 6) % 1, 0.0)
    return np.stack([hue, saturation, value], axis=-1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of rgb_to_hsv."""
    hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    sector = np.floor(hue * 6)
    fraction = hue * 6 - sector
    p = value * (1 - saturation)
    q = value * (1 - fraction * saturation)
    t = value * (1 - (1 - fraction) * saturation)
    sector = sector.astype(np.int64) % 6
    choices = [(value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q)]
    return np.stack([np.choose(sector, [c[k] for c in choices]) for k in range(3)], axis=-1)


def gaussian_blur(images: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """scikit-image's `gaussian` over the two spatial axes of (N, H, W[, C]) (its defaults: mode
    "nearest", truncate 4; it calls the same scipy filter)."""
    sigmas = (0, sigma, sigma) + (0,) * (images.ndim - 3)
    return ndimage.gaussian_filter(images, sigmas, mode=mode, truncate=truncate)


def box_blur3(images: np.ndarray) -> np.ndarray:
    """OpenCV's blur(ksize=(3, 3)) on (N, H, W) float32 or uint8: the 3 x 3 mean, border mirrored
    (BORDER_REFLECT_101), in the input's type as OpenCV returns it.

    As OpenCV's box filter: the 9 values are summed exactly (float64 sums of float32 values, integer sums of
    uint8 ones), the sum times 1/9 in float64 is then stored as float32, or rounded to the nearest uint8. The
    order matters where a mean is a whole number: a float32 2.9999998 truncates to 2 where 3.0 gives 3.
    """
    if images.dtype not in (np.float32, np.uint8):
        raise ValueError(f"box_blur3 takes float32 or uint8 images, as OpenCV's blur; got {images.dtype}")
    sums = ndimage.correlate(images.astype(np.float64), np.ones((1, 3, 3)), mode="mirror")
    if images.dtype == np.uint8:
        return np.clip(np.rint(sums * (1 / 9)), 0, 255).astype(np.uint8)
    return (sums * (1 / 9)).astype(np.float32)


# OpenCV's distanceTransform(DIST_L2, mask 5): chamfer weights 1 (axial), 1.4 (diagonal) and 2.1969 (knight's
# move), added in float32 as OpenCV 4.10 and 5.0 do
_AXIAL, _DIAGONAL, _KNIGHT = np.float32(1.0), np.float32(1.4), np.float32(2.1969)
_CHAMFER_MASK = ((-2, -1, _KNIGHT), (-2, 1, _KNIGHT), (-1, -2, _KNIGHT), (-1, -1, _DIAGONAL), (-1, 0, _AXIAL),
                 (-1, 1, _DIAGONAL), (-1, 2, _KNIGHT))  # the mask's half above a pixel: (rows, columns, weight)
_CHAMFER_FAR = np.float32(1e30)  # "no feature seen yet"


def chamfer_distance(features: np.ndarray) -> np.ndarray:
    """OpenCV's distanceTransform(src, DIST_L2, 5) for each image of (N, H, W): the float32 distance of every
    pixel to the nearest True pixel of `features` (OpenCV's zero pixels) in the 5 x 5 chamfer metric.

    OpenCV's two raster passes over a frame of two far pixels: forward (top-left to bottom-right) from the
    mask's neighbours above and to the left, backward from those below and to the right. Each row's
    neighbours in other rows are taken for the whole row and batch at once, the one beside it column by
    column, so that the float32 sums are OpenCV's. Equal to OpenCV 4.10 and 5.0 (docs/robustness.md). An
    image without any feature gets a very large distance (not OpenCV's; spatter truncates at 20 either way).
    """
    n, height, width = features.shape
    pad = 2
    distance = np.full((n, height + 2 * pad, width + 2 * pad), _CHAMFER_FAR, dtype=np.float32)
    inside = slice(pad, pad + width)
    for rows, direction in ((range(height), 1), (range(height - 1, -1, -1), -1)):
        for row in rows:
            i = row + pad
            if direction == 1:
                candidate = np.where(features[:, row], np.float32(0), _CHAMFER_FAR)
            else:
                candidate = distance[:, i, inside]  # the forward pass's values
            for dy, dx, weight in _CHAMFER_MASK:  # backward: the same mask turned by 180 degrees
                dy, dx = dy * direction, dx * direction
                candidate = np.minimum(candidate, distance[:, i + dy, pad + dx:pad + dx + width] + weight)
            line = distance[:, i]
            line[:, inside] = candidate
            columns = range(pad, pad + width) if direction == 1 else range(pad + width - 1, pad - 1, -1)
            for j in columns:  # the neighbour in the same row, already final: one column at a time
                np.minimum(line[:, j], line[:, j - direction] + _AXIAL, out=line[:, j])
    return distance[:, pad:pad + height, inside]


def equalize_histogram(images: np.ndarray) -> np.ndarray:
    """OpenCV's equalizeHist on each uint8 image of (N, H, W): lut[v] = round((cdf(v) - cdf(lowest)) x
    255 / (pixels - count(lowest))), lowest being the smallest value present, in float32 as OpenCV computes
    it (a quotient that is exactly k + 0.5 in real numbers rounds as its float32 value does); a constant
    image is left as is."""
    n = images.shape[0]
    pixels = images[0].size
    counts = np.bincount((images.reshape(n, -1) + 256 * np.arange(n)[:, None]).ravel(), minlength=256 * n)
    counts = counts.reshape(n, 256)
    lowest = (counts > 0).argmax(axis=1)
    lowest_count = counts[np.arange(n), lowest]
    cdf = np.cumsum(counts, axis=1)
    scale = np.float32(255) / np.maximum(pixels - lowest_count, 1).astype(np.float32)
    lut = np.rint((cdf - lowest_count[:, None]).astype(np.float32) * scale[:, None])
    lut = np.clip(lut, 0, 255).astype(np.uint8)
    constant = lowest_count == pixels
    lut[constant] = np.arange(256, dtype=np.uint8)
    return np.take_along_axis(lut, images.reshape(n, -1).astype(np.int64), axis=1).reshape(images.shape)


def canny(images: np.ndarray, low: float, high: float) -> np.ndarray:
    """OpenCV's Canny edges (aperture 3, L1 gradient) of each uint8 image of (N, H, W): bool edges.

    Sobel gradients with the edge pixels repeated; non-maximum suppression along the gradient's direction
    rounded to 0, 45, 90 or 135 degrees (strictly greater than the neighbour before, at least the one after,
    as OpenCV breaks ties); then hysteresis: pixels above `high`, and pixels above `low` connected to them
    through 8-neighbours.
    """
    x = np.pad(images.astype(np.float64), ((0, 0), (1, 1), (1, 1)), mode="edge")
    gx = (x[:, :-2, 2:] + 2 * x[:, 1:-1, 2:] + x[:, 2:, 2:]) - (x[:, :-2, :-2] + 2 * x[:, 1:-1, :-2] + x[:, 2:, :-2])
    gy = (x[:, 2:, :-2] + 2 * x[:, 2:, 1:-1] + x[:, 2:, 2:]) - (x[:, :-2, :-2] + 2 * x[:, :-2, 1:-1] + x[:, :-2, 2:])
    magnitude = np.abs(gx) + np.abs(gy)
    padded = np.pad(magnitude, ((0, 0), (1, 1), (1, 1)))

    def neighbour(dy, dx):
        return padded[:, 1 + dy:padded.shape[1] - 1 + dy, 1 + dx:padded.shape[2] - 1 + dx]

    ax, ay = np.abs(gx), np.abs(gy)
    tan22, tan67 = math.tan(math.radians(22.5)), math.tan(math.radians(67.5))
    horizontal = ay < ax * tan22
    vertical = ay > ax * tan67
    same_sign = (gx > 0) == (gy > 0)  # gradient along the main diagonal (down-right in image coordinates)
    keep = np.where(
        horizontal, (magnitude > neighbour(0, -1)) & (magnitude >= neighbour(0, 1)),
        np.where(vertical, (magnitude > neighbour(-1, 0)) & (magnitude >= neighbour(1, 0)),
                 np.where(same_sign, (magnitude > neighbour(-1, -1)) & (magnitude > neighbour(1, 1)),
                          (magnitude > neighbour(-1, 1)) & (magnitude > neighbour(1, -1)))))
    candidate = keep & (magnitude > low)
    strong = candidate & (magnitude > high)
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connected within an image, never across images
    components, _ = ndimage.label(candidate, structure=structure)
    connected = np.zeros(components.max() + 1, dtype=bool)
    connected[components[strong]] = True
    connected[0] = False
    return connected[components]


FROST_SEED = 20190101  # fixed: the textures are part of the benchmark's definition, like the photographs


def frost_textures(image_size: int, means: tuple, stds: tuple) -> np.ndarray:
    """Textures (K, 10 s, 10 s, 3) uint8 for images of size s, one per (mean, std) pair: ice needles in the
    three directions of hexagonal ice, each with side branches at 60 degrees, over a cloudy haze.

    Generated from FROST_SEED (our code, our licence) as a stand-in for the original's frost photographs;
    texture k is then mapped, channel by channel, to mean means[k] and standard deviation stds[k] (RGB,
    0-255): the statistics of photograph k (corruptions.FROST_PHOTOGRAPH_STATISTICS), so that frost changes
    an image by about as much as with the photographs (docs/robustness.md).
    """
    if len(means) != len(stds):
        raise ValueError(f"frost_textures needs one std per mean, got {len(means)} means and {len(stds)} stds")
    rng = np.random.default_rng(FROST_SEED)
    side = 10 * image_size
    textures = []
    for mean, std in zip(means, stds, strict=True):
        haze = ndimage.gaussian_filter(rng.random((side, side)), side / 30, mode="wrap")
        haze = (haze - haze.min()) / (haze.max() - haze.min())
        # needles grow where the haze is dense: clumps of crystals and clearer patches, as on a frozen pane
        start = rng.random((int(side * side / 16), 2)) * side
        start = start[rng.random(len(start)) < haze[start[:, 1].astype(int), start[:, 0].astype(int)] ** 1.5]
        needles = len(start)
        angle = rng.integers(0, 3, needles) * np.pi / 3 + rng.normal(0, 0.12, needles)
        length = rng.exponential(image_size / 4, needles) + 2
        # each needle: a trunk and two side branches at +-60 degrees from a point along it
        fork = rng.random(needles) * length
        segments = [(start, angle, length)]
        for side_angle in (np.pi / 3, -np.pi / 3):
            base = start + fork[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
            segments.append((base, angle + side_angle, 0.4 * length * rng.random(needles)))
        canvas = np.zeros((side, side))
        for base, direction, extent in segments:
            steps = np.arange(0, extent.max(), 0.5)
            inside = steps[None, :] <= extent[:, None]
            x = (base[:, 0, None] + steps * np.cos(direction)[:, None])[inside]
            y = (base[:, 1, None] + steps * np.sin(direction)[:, None])[inside]
            flat = (np.round(y).astype(np.int64) % side) * side + np.round(x).astype(np.int64) % side
            canvas += np.bincount(flat, minlength=side * side).reshape(side, side)
        crystals = 1 - np.exp(-ndimage.gaussian_filter(canvas, 0.6, mode="wrap") * 1.5)
        value = 0.35 * haze + 0.75 * crystals
        textures.append(_match_statistics(value, mean, std))
    return np.stack(textures)


def _match_statistics(value: np.ndarray, mean, std, rounds: int = 6) -> np.ndarray:
    """A grey texture (H, W) as uint8 RGB whose channels have the given means and standard deviations:
    scale * value + shift per channel, clipped to 0-255; scale and shift refined a few times because the
    clipping moves the statistics."""
    channels = []
    for target_mean, target_std in zip(mean, std, strict=True):
        scale = target_std / value.std()
        shift = target_mean - scale * value.mean()
        for _ in range(rounds):
            channel = np.clip(value * scale + shift, 0, 255)
            scale *= target_std / max(channel.std(), 1e-6)
            shift += target_mean - channel.mean()
        channels.append(np.round(np.clip(value * scale + shift, 0, 255)).astype(np.uint8))
    return np.stack(channels, axis=-1)
