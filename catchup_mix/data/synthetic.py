"""The built-in default data: synthetic images generated from a seed, no files.

A class is a (shape, texture, hue) triple: class c takes shape c % 8, texture c % 5 and hue c % 6, so
for c < 24 any two classes differ in at least two of the three (sharing two would need a difference
that is a multiple of lcm(8, 6) = 24, lcm(5, 6) = 30 or lcm(8, 5) = 40). Cues are redundant, so what a
CutMix box or a swapped channel leaves of an object still says something about its class, and the hue
alone is shared (by 2 of the default 10 classes). Nuisances: position, scale, small rotation, aspect,
hue/saturation/brightness jitter, a gradient + blotchy background of random colour, pixel noise, and a
fainter distractor object with random attributes. Calibrated so that a width-16 PreActResNet-18 trained
10 epochs on the default 5,000 images reaches roughly 65-85% test accuracy (recipe-dependent).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .containers import Dataset, ImageSplit, channel_stats

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


def load_synthetic(num_classes, train_per_class, test_per_class, seed) -> Dataset:
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
    mean, std = channel_stats(splits[0].images)
    return Dataset("synthetic", splits[0], splits[1], synthetic_class_names(num_classes), mean, std,
                   crop_size=SYNTHETIC_SIZE, train_padding=4)
