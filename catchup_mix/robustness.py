"""How robust a trained classifier is: adversarial attacks (FGSM, PGD), corrupted test sets (CIFAR-C),
deformations, out-of-distribution detection and calibration, and the suite that runs them on a checkpoint.

Attacks work in [0, 1] pixel space on a model that takes [0, 1] images (`Normalized` puts a dataset's
normalisation in front of our networks), so eps is in pixel units as in the papers (4/255, 8/255):

    pixel_model = Normalized(model, dataset.mean, dataset.std)
    x_adv = fgsm(pixel_model, x, y, eps=8 / 255)
    x_adv = pgd(pixel_model, x, y, eps=4 / 255, step_size=2 / 255, steps=20,
                generator=torch.Generator().manual_seed(0))

`evaluate_suite(checkpoint, ["clean", "fgsm", "pgd", "corruptions", "deformations", "ood"], ...)` runs all of
it on a trained run and keeps every part in <checkpoint>.robustness.json, merged part by part;
`python -m catchup_mix evaluate --suite ...` is the command line. The parts are also functions of their own
(`clean_metrics`, `fgsm_accuracies`, `pgd_accuracies`, `corruption_accuracies`, `deformation_accuracies`,
`ood_detection`) on any model and uint8 images. docs/robustness.md describes the settings.

Conventions: FGSM and PGD ascend the cross-entropy summed over the batch (so a step does not depend on the
batch size); AUPR-in takes in-distribution images as positives and AUPR-out the OOD ones (scores negated),
both as average precision; FPR95 is the fraction of OOD images accepted at the highest threshold that keeps
95% of the in-distribution ones. Deformations rotate by positive angles clockwise (torchvision's convention:
"rotate+15" turns the image 15 degrees clockwise) and fill the uncovered corners black; bilinear
interpolation against that black darkens a band about one pixel wide along the border.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import corruptions, data
from .evaluate import MetricSums

SUITES = ("clean", "fgsm", "pgd", "corruptions", "deformations", "ood")


# ---------------------------------------------------------------------------------------------------
# Attacks


class Normalized(nn.Module):
    """`model` on [0, 1] images: subtracts the dataset's per-channel mean and divides by its std first."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean.to(x.device)) / self.std.to(x.device))


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """The model (every submodule) in eval mode inside, each submodule's own mode restored after."""
    modes = [module.training for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, mode in zip(model.modules(), modes, strict=True):
            module.training = mode


def _check_pixels(x: torch.Tensor, eps: float) -> None:
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError("attacks take images in [0, 1] pixel space; wrap a network trained on normalised "
                         "inputs in robustness.Normalized(model, mean, std) and pass unnormalised images")


def _input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d(summed cross-entropy)/dx; only x gets a gradient (nothing accumulates in the parameters' .grad)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x).float(), y, reduction="sum")
        (gradient,) = torch.autograd.grad(loss, x)
    return gradient


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015): one step x + eps sign(grad of the cross-entropy),
    clipped to [0, 1]. The model runs in eval mode and gets its modes back."""
    _check_pixels(x, eps)
    if eps == 0:
        return x.detach().clone()
    with eval_mode(model):
        gradient = _input_gradient(model, x, y)
    return (x.detach() + eps * gradient.sign()).clamp(0, 1)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float, steps: int,
        random_start: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient descent in the L-inf ball of radius eps (Madry et al. 2018): from a uniform random
    point of the ball (random_start), `steps` signed-gradient steps of `step_size`, each projected back onto
    the ball and into [0, 1]. The start is drawn on the CPU from `generator` (None: torch's global one)."""
    _check_pixels(x, eps)
    if step_size <= 0 or steps < 0:
        raise ValueError(f"pgd needs step_size > 0 and steps >= 0, got {step_size} and {steps}")
    x = x.detach()
    if eps == 0:
        return x.clone()
    adversarial = x
    if random_start:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        adversarial = (x + (noise * eps * 2 - eps)).clamp(0, 1)
    with eval_mode(model):
        for _ in range(steps):
            adversarial = adversarial + step_size * _input_gradient(model, adversarial, y).sign()
            adversarial = (x + (adversarial - x).clamp(-eps, eps)).clamp(0, 1)
    return adversarial


# ---------------------------------------------------------------------------------------------------
# Deformations: fixed affine maps, bilinear, the outside filled with 0 (black), as the training crops pad


DEFORMATIONS = {
    "rotate-30": dict(angle=-30.0), "rotate-15": dict(angle=-15.0),
    "rotate+15": dict(angle=15.0), "rotate+30": dict(angle=30.0),
    "shear-15": dict(shear=-15.0), "shear+15": dict(shear=15.0),  # horizontal shear, degrees
    "zoom_in_1.25": dict(scale=1.25), "zoom_out_0.75": dict(scale=0.75),
}


def deform(x: torch.Tensor, name: str) -> torch.Tensor:
    """Images (N, C, H, W) in [0, 1] under deformation `name` of DEFORMATIONS, about the image centre."""
    from torchvision.transforms.v2 import functional as TF

    if name not in DEFORMATIONS:
        raise ValueError(f"unknown deformation {name!r}; available: {', '.join(DEFORMATIONS)}")
    spec = DEFORMATIONS[name]
    return TF.affine(x, angle=spec.get("angle", 0.0), translate=[0.0, 0.0], scale=spec.get("scale", 1.0),
                     shear=[spec.get("shear", 0.0), 0.0], interpolation=TF.InterpolationMode.BILINEAR, fill=0.0)


# ---------------------------------------------------------------------------------------------------
# Out-of-distribution detection: scores (higher = more in-distribution) and their metrics


def msp_score(logits: torch.Tensor) -> torch.Tensor:
    """Maximum softmax probability (Hendrycks & Gimpel 2017)."""
    return F.softmax(logits.float(), dim=1).max(dim=1).values


def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Negative free energy T logsumexp(logits / T) (Liu et al. 2020): higher on in-distribution inputs."""
    return temperature * torch.logsumexp(logits.float() / temperature, dim=1)


def ood_metrics(in_scores, out_scores) -> dict:
    """Detection of out-of-distribution inputs by a score that is higher on in-distribution ones.

    auroc: probability that an in-distribution input scores higher than an OOD one (ties count half);
    aupr_in / aupr_out: average precision with in-distribution / OOD inputs as the positives;
    fpr95: fraction of OOD inputs accepted at the highest threshold that keeps 95% of in-distribution ones.
    All in [0, 1].
    """
    from scipy.stats import rankdata

    inside = np.asarray(in_scores, dtype=np.float64).ravel()
    outside = np.asarray(out_scores, dtype=np.float64).ravel()
    if not len(inside) or not len(outside):
        raise ValueError("ood_metrics needs at least one in-distribution and one out-of-distribution score")
    ranks = rankdata(np.concatenate([inside, outside]))
    auroc = (ranks[:len(inside)].sum() - len(inside) * (len(inside) + 1) / 2) / (len(inside) * len(outside))
    accepted = np.sort(inside)[::-1][math.ceil(round(0.95 * len(inside), 9)) - 1]
    return {"auroc": float(auroc), "aupr_in": _average_precision(inside, outside),
            "aupr_out": _average_precision(-outside, -inside), "fpr95": float((outside >= accepted).mean())}


def _average_precision(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Area under the precision-recall curve as the sum of precision x recall steps over distinct thresholds."""
    scores = np.concatenate([positives, negatives])
    is_positive = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
    order = np.argsort(-scores, kind="stable")
    scores, is_positive = scores[order], is_positive[order]
    last_of_each_score = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
    true_positives = np.cumsum(is_positive)[last_of_each_score]
    precision = true_positives / (last_of_each_score + 1)
    recall = true_positives / len(positives)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


NOISE_SETS = ("noise_gaussian", "noise_uniform")
OTHER_DATASETS = {"cifar10": 10, "cifar100": 100, "tiny_imagenet": 200}  # their number of classes


def noise_images(kind: str, count: int, size: int, seed: int = 0) -> torch.Tensor:
    """uint8 (count, 3, size, size) noise images, as Outlier Exposure's test sets (Hendrycks et al. 2019):
    Gaussian N(0.5, 0.25^2) per value clipped to [0, 1], or uniform U(0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (count, 3, size, size)
    if kind == "noise_gaussian":
        pixels = (0.5 + 0.25 * torch.randn(shape, generator=generator)).clamp(0, 1)
    elif kind == "noise_uniform":
        pixels = torch.rand(shape, generator=generator)
    else:
        raise ValueError(f"unknown noise set {kind!r}; available: {', '.join(NOISE_SETS)}")
    return (pixels * 255).round().to(torch.uint8)


def ood_sets(names, config, size: int, count: int, data_root: str | None = None, seed: int = 0,
             ood_root: str | None = None, skipped: dict | None = None) -> dict:
    """Out-of-distribution test images (uint8 N x 3 x size x size) for a model trained on config.dataset.

    names: None for every set available offline, or a list of: noise_gaussian, noise_uniform,
    unseen_classes (test images of the dataset's classes the model was not trained on, read from data_root or
    config.data_root), cifar10, cifar100, tiny_imagenet (their test/val split, read from ood_root, default
    data_root or config.data_root, resized to `size`), or the path of any folder of images. Each set holds at
    most `count` images, class-balanced and evenly spread where it has classes (`data.balanced_indices` with
    `seed`), and the noise sets exactly `count`. With names=None, the sets not available here are left out and,
    if `skipped` is a dict, named in it with the reason.
    """
    automatic = names is None
    skipped = {} if skipped is None else skipped
    names = list(names) if names else [*NOISE_SETS, "unseen_classes", "cifar10", "cifar100", "tiny_imagenet"]
    sets = {}
    for name in names:
        if name in NOISE_SETS:
            sets[name] = noise_images(name, count, size, seed)
            continue
        try:
            images, labels = _named_ood_set(name, config, size, data_root, ood_root)
        except (data.DatasetNotFoundError, ValueError) as error:
            if automatic:  # not available here: skipped when the sets are chosen automatically, with the reason
                skipped[name] = re.split(r"[.;] ", str(error))[0]  # its first clause: what is missing where
                continue
            raise ValueError(f"OOD set {name!r} is not available: {error}") from None
        if images is not None and len(images):
            sets[_ood_label(name)] = _resize(images[data.balanced_indices(labels, count, seed)], size)
        elif not automatic:
            raise ValueError(f"OOD set {name!r} is not available for a model trained on {config.dataset}")
        else:
            skipped[name] = f"not an OOD set for a model trained on {config.dataset}"
    return sets


def _ood_label(name: str) -> str:
    return name if name == "unseen_classes" or name in OTHER_DATASETS else f"folder:{Path(name).name}"


def _named_ood_set(name: str, config, size: int, data_root: str | None, ood_root: str | None):
    """(uint8 images, labels) of one named OOD set; (None, None) where it does not apply."""
    root = data_root or config.data_root
    if name == "unseen_classes":
        trained = config.num_classes
        if trained is None:
            return None, None
        if config.dataset == "synthetic":
            loaded = data.load("synthetic", num_classes=min(2 * trained, data.SYNTHETIC_MAX_CLASSES),
                               train_per_class=1, test_per_class=config.test_per_class)
        else:
            loaded = data.load(config.dataset, root, train_per_class=1, test_per_class=config.test_per_class)
        unseen = loaded.test.labels >= trained
        return loaded.test.images[unseen], loaded.test.labels[unseen]
    if name in OTHER_DATASETS:
        root = ood_root or root
        if name == config.dataset or root is None:
            return None, None  # the training data is not out of distribution; without a folder nothing to read
        test = data.load(name, root, train_per_class=1).test
        return test.images, test.labels
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise ValueError(f"{name!r} is neither a known OOD set ({', '.join([*NOISE_SETS, 'unseen_classes'])}, "
                         "cifar10, cifar100, tiny_imagenet) nor a folder of images")
    images = data.files.decode_folder(folder, size, desc=f"OOD folder {folder}")
    return images, torch.zeros(len(images), dtype=torch.int64)  # no classes: evenly spread over the folder


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    from torchvision.transforms.v2.functional import resize

    return resize(images, [size, size], antialias=True)


# ---------------------------------------------------------------------------------------------------
# Measurements on uint8 test images, one function per part of the suite. Each takes a model on [0, 1]
# images (`Normalized`), uint8 images (N, 3, H, W) as the model sees them and their labels; batches go to the
# model's device. batch_size changes no number, except perhaps PGD's: its random start is drawn batch by batch.


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


PROGRESS_EVERY_S = 20  # without a terminal, a line of progress this often (logs, CI, Slurm)


class _Progress:
    """How far a long part has come: a bar on a terminal; elsewhere a line every PROGRESS_EVERY_S seconds
    ("PGD-20 8/255: 4,000 of 10,000 images"), so a log never goes silent for minutes. Off when not enabled."""

    def __init__(self, total: int, desc: str | None, unit: str, enabled: bool):
        import sys

        from tqdm import tqdm

        self.total, self.desc, self.unit, self.done = total, desc or "measuring", unit, 0
        self.lines = enabled and not sys.stderr.isatty()
        self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not enabled or self.lines)
        self.last = time.monotonic()

    def update(self, count: int) -> None:
        self.done += count
        self.bar.update(count)
        if self.lines and time.monotonic() - self.last >= PROGRESS_EVERY_S and self.done < self.total:
            print(f"{self.desc}: {self.done:,} of {self.total:,} {self.unit}", flush=True)
            self.last = time.monotonic()

    def close(self) -> None:
        self.bar.close()


def _batches(images: torch.Tensor, labels: torch.Tensor | None, batch_size: int, device, desc: str | None = None,
             progress: bool = False):
    """(x in [0, 1] on `device`, y) batch by batch; with progress, how many images are done (`_Progress`)."""
    shown = _Progress(len(images), desc, "images", progress)
    try:
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device).float() / 255
            yield x, None if labels is None else labels[start:start + batch_size].to(device)
            shown.update(len(x))
    finally:
        shown.close()


def accuracy(pixel_model: nn.Module, images: torch.Tensor, labels: torch.Tensor, transform=None, *,
             batch_size: int = 200, autocast=contextlib.nullcontext, desc: str | None = None,
             progress: bool = False) -> float:
    """Top-1 (%) of `pixel_model` on `images`, each batch first passed through transform(x, y) if given
    (an attack or a deformation)."""
    correct = 0
    with eval_mode(pixel_model):
        for x, y in _batches(images, labels, batch_size, _device(pixel_model), desc, progress):
            x = transform(x, y) if transform else x
            with torch.no_grad(), autocast():
                correct += (pixel_model(x).argmax(1) == y).sum().item()
    return 100.0 * correct / len(labels)


def clean_metrics(pixel_model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 200,
                  autocast=contextlib.nullcontext) -> dict:
    """Top-1, top-5 (%), NLL, ECE (%, 15 bins) and the reliability diagram's bins, on clean images."""
    sums = MetricSums(_device(pixel_model))
    with eval_mode(pixel_model):
        for x, y in _batches(images, labels, batch_size, _device(pixel_model)):
            with torch.no_grad(), autocast():
                sums.add(pixel_model(x), y)
    return {**sums.result(), "reliability": sums.reliability()}


def fgsm_accuracies(pixel_model, images, labels, eps: tuple[float, ...], **options) -> dict:
    """{eps label: top-1 (%) under FGSM at that eps}; options as `accuracy`'s."""
    return {eps_label(e): accuracy(pixel_model, images, labels, lambda x, y, e=e: fgsm(pixel_model, x, y, e),
                                   desc=f"FGSM {eps_label(e)}", **options) for e in eps}


def pgd_accuracies(pixel_model, images, labels, eps: tuple[float, ...], steps: int, step_size: float | None = None,
                   step_fraction: float | None = None, seed: int = 0, **options) -> dict:
    """{eps label: top-1 (%) under PGD-`steps` at that eps}, with steps of `step_size`, or of `step_fraction`
    x eps when given; every eps starts from its own stream of `seed`, so an eps's number does not depend on
    which other eps are measured."""
    if (step_size is None) == (step_fraction is None):
        raise ValueError("pgd_accuracies needs exactly one of step_size and step_fraction")
    result = {}
    for e in eps:
        generator = torch.Generator().manual_seed(seed)
        step = step_size if step_fraction is None else step_fraction * e
        result[eps_label(e)] = accuracy(
            pixel_model, images, labels,
            lambda x, y, e=e, step=step, generator=generator: pgd(pixel_model, x, y, e, step, steps, generator=generator),
            desc=f"PGD-{steps} {eps_label(e)}", **options)
    return result


def check_deformations(names) -> None:
    unknown = [name for name in names if name not in DEFORMATIONS]
    if unknown:
        raise ValueError(f"unknown deformations {unknown}; available: {', '.join(DEFORMATIONS)}")


def deformation_accuracies(pixel_model, images, labels, names: tuple[str, ...], **options) -> dict:
    """{deformation: top-1 (%)} and their "mean"."""
    check_deformations(names)
    result = {name: accuracy(pixel_model, images, labels, lambda x, y, name=name: deform(x, name), desc=name,
                             **options) for name in names}
    result["mean"] = float(np.mean(list(result.values())))
    return result


def corruption_accuracies(pixel_model, folder, names: tuple[str, ...], labels: torch.Tensor, crop_size: int, *,
                          index: torch.Tensor | None = None, severities: tuple[int, ...] = corruptions.SEVERITIES,
                          **options) -> dict:
    """Top-1 (%) on each corruption x severity of the set in `folder` (official or generated by
    `corruptions.write_set`), whose clean labels are `labels`; `index` picks those images of the set (None:
    all). Every file is checked before any work. Returns the mean, per severity, per corruption and the set's
    source and info."""
    sets = {name: corruptions.load_set(folder, name, expected_labels=labels)[0] for name in names}
    rows = slice(None) if index is None else index.numpy()
    targets = labels if index is None else labels[index]
    per_corruption = {}
    progress = options.pop("progress", False)
    shown = _Progress(len(sets) * len(severities), "corruptions", "sets (corruption x severity)", progress)
    for name, images in sets.items():
        row = {}
        for severity in severities:
            # a copy of the rows used: the memory-mapped set is read-only
            pixels = torch.from_numpy(np.array(images[severity - 1, rows])).permute(0, 3, 1, 2)
            row[str(severity)] = accuracy(pixel_model, _center_crop(pixels, crop_size), targets, **options)
            shown.update(1)
        row["mean"] = float(np.mean([row[str(s)] for s in severities]))
        per_corruption[name] = row
    shown.close()
    info = Path(folder) / corruptions.SET_INFO
    per_severity = {str(s): float(np.mean([row[str(s)] for row in per_corruption.values()])) for s in severities}
    return {"source": "generated" if info.is_file() else "official", "folder": str(folder),
            "set_info": json.loads(info.read_text()) if info.is_file() else None,
            "mean": float(np.mean([row["mean"] for row in per_corruption.values()])),
            "per_severity": per_severity, "per_corruption": per_corruption}


def ood_detection(pixel_model, in_images: torch.Tensor, out_sets: dict, *, batch_size: int = 200,
                  autocast=contextlib.nullcontext, progress: bool = False) -> dict:
    """Per OOD set, AUROC, AUPR (in and out) and FPR95 (%) of the MSP and energy scores against `in_images`
    as the in-distribution, and their "mean" over the sets."""

    def scores(images, desc):
        found = []
        with eval_mode(pixel_model):
            for x, _ in _batches(images, None, batch_size, _device(pixel_model), desc, progress):
                with torch.no_grad(), autocast():
                    logits = pixel_model(x)
                found.append(torch.stack([msp_score(logits), energy_score(logits)], 1).cpu())
        return torch.cat(found)

    inside = scores(in_images, "OOD: in-distribution")
    results = {}
    for name, images in out_sets.items():
        outside = scores(images, f"OOD: {name}")
        results[name] = {"n": len(images), **{
            score: {k: 100.0 * v for k, v in ood_metrics(inside[:, i].numpy(), outside[:, i].numpy()).items()}
            for i, score in enumerate(("msp", "energy"))}}
    if results:
        results["mean"] = {score: {metric: float(np.mean([r[score][metric] for r in results.values()]))
                                   for metric in ("auroc", "aupr_in", "aupr_out", "fpr95")}
                           for score in ("msp", "energy")}
    return results


def _center_crop(images: torch.Tensor, crop: int) -> torch.Tensor:
    """As the test loader crops: the centre crop x crop (torchvision's anchor)."""
    height, width = images.shape[-2:]
    top, left = round((height - crop) / 2), round((width - crop) / 2)
    return images[..., top:top + crop, left:left + crop]


def test_subset(dataset: data.Dataset, count: int | None = None, seed: int = 0):
    """(uint8 images as the model sees them, labels, index, description) of `count` test images,
    class-balanced and evenly spread (`data.balanced_indices`; None: the whole test split)."""
    labels = dataset.test.labels
    index = torch.arange(len(labels)) if count is None else data.balanced_indices(labels, count, seed)
    images = _center_crop(dataset.test.images[index], dataset.crop_size)
    return images, labels[index], index, data.describe_subset(labels, index, None if count is None else seed)


# ---------------------------------------------------------------------------------------------------
# The suite


@dataclasses.dataclass
class SuiteSettings:
    """What the suite measures. Each part is keyed by the settings it depends on (`part_key`), so a stored
    part is reused, or replaced, only by the same measurement."""

    fgsm_eps: tuple[float, ...] = (4 / 255, 8 / 255)
    pgd_eps: tuple[float, ...] = (4 / 255, 8 / 255)
    pgd_step_size: float = 2 / 255
    pgd_step_fraction: float | None = None  # when set, each eps's step is this x eps (instead of pgd_step_size)
    pgd_steps: int = 20
    corruption_names: tuple[str, ...] = corruptions.CORRUPTIONS
    severities: tuple[int, ...] = corruptions.SEVERITIES
    deformations: tuple[str, ...] = tuple(DEFORMATIONS)
    ood: tuple[str, ...] | None = None  # None: every set available offline
    max_images: int | None = None  # a class-balanced subset of this many test images (None: all)
    batch_size: int = 200
    seed: int = 0  # the subset, PGD's random start and the noise images

    def key(self) -> str:
        return _hash(dataclasses.asdict(self))

    def part_settings(self, part: str) -> dict:
        """The settings `part`'s numbers depend on."""
        own = {"clean": (), "fgsm": ("fgsm_eps",), "deformations": ("deformations",), "ood": ("ood",),
               "pgd": ("pgd_eps", "pgd_step_size", "pgd_step_fraction", "pgd_steps", "batch_size"),
               "corruptions": ("corruption_names", "severities")}[part]
        return {"part": part, "max_images": self.max_images, "seed": self.seed,
                **{name: getattr(self, name) for name in own}}

    def part_key(self, part: str) -> str:
        return _hash(self.part_settings(part))


def _hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


def eps_label(eps: float) -> str:
    """4/255 for 4 / 255: how the papers write it, and the key in the result."""
    levels = eps * 255
    return f"{round(levels)}/255" if abs(levels - round(levels)) < 1e-6 else f"{eps:g}"


def check_suite(suite) -> list[str]:
    suite = [name.strip() for name in (suite.split(",") if isinstance(suite, str) else suite) if name.strip()]
    unknown = [name for name in suite if name not in SUITES]
    if unknown or not suite:
        raise ValueError(f"unknown suite {', '.join(unknown) or '(empty)'}; choose from {', '.join(SUITES)}, "
                         f"comma-separated, e.g. --suite clean,fgsm,pgd")
    return suite


def run_suite(model: nn.Module, dataset: data.Dataset, config, suite, settings: SuiteSettings | None = None, *,
              device=None, autocast=contextlib.nullcontext, corruptions_dir=None, data_root=None, ood_root=None,
              progress: bool = False, on_part=None) -> dict:
    """Measure `model` (trained on `dataset` with `config`, taking normalised inputs) on each part of `suite`,
    in the order of SUITES, on the same class-balanced test subset (settings.max_images, settings.seed).

    Accuracies are top-1 in %, OOD metrics in % (fpr95 too), ECE in % with 15 bins. corruptions_dir: an
    official or generated set of this dataset's test split. on_part(name, entry) is called as each part
    finishes (to save it), with entry {"numbers", "settings" (settings.part_settings), "subset", "seconds"};
    every input is checked before the first part starts. Returns {"settings", "n_images", "subset", part:
    numbers for each part}.
    """
    suite = check_suite(suite)
    settings = settings or SuiteSettings()
    device = torch.device(device or next(model.parameters()).device)
    pixel_model = Normalized(model, dataset.mean, dataset.std).to(device)
    images, labels, index, subset = test_subset(dataset, settings.max_images, settings.seed)
    # every input checked before any work: a bad folder or name fails in a second, not after an hour
    if "corruptions" in suite:
        if corruptions_dir is None:
            raise _no_corruption_set()
        for name in settings.corruption_names:
            corruptions.load_set(corruptions_dir, name, expected_labels=dataset.test.labels)
    if "deformations" in suite:
        check_deformations(settings.deformations)
    skipped = {}
    out_of_distribution = (ood_sets(settings.ood, config, images.shape[-1], len(labels), data_root, settings.seed,
                                    ood_root, skipped) if "ood" in suite else {})
    if "ood" in suite and progress:  # which sets run, which do not and why, before the hours of work
        print(f"OOD sets: {', '.join(out_of_distribution) or 'none'}"
              + "".join(f"; skipped {name} ({why})" for name, why in skipped.items())
              + ("; --ood-root DIR names the folder holding cifar-10-batches-py, cifar-100-python or "
                 "tiny-imagenet-200" if skipped else ""), flush=True)
    options = dict(batch_size=settings.batch_size, autocast=autocast)
    measure = {
        "clean": lambda: clean_metrics(pixel_model, images, labels, **options),
        "fgsm": lambda: fgsm_accuracies(pixel_model, images, labels, settings.fgsm_eps, progress=progress, **options),
        "pgd": lambda: pgd_accuracies(pixel_model, images, labels, settings.pgd_eps, settings.pgd_steps,
                                      None if settings.pgd_step_fraction else settings.pgd_step_size,
                                      settings.pgd_step_fraction, settings.seed, progress=progress, **options),
        "corruptions": lambda: corruption_accuracies(pixel_model, corruptions_dir, settings.corruption_names,
                                                     dataset.test.labels, dataset.crop_size, index=index,
                                                     severities=settings.severities, progress=progress, **options),
        "deformations": lambda: deformation_accuracies(pixel_model, images, labels, settings.deformations,
                                                       progress=progress, **options),
        "ood": lambda: ood_detection(pixel_model, images, out_of_distribution, progress=progress, **options),
    }
    result = {"settings": {**dataclasses.asdict(settings), "suite_key": settings.key()}, "n_images": len(labels),
              "subset": subset}
    for part in SUITES:
        if part in suite:
            started = time.perf_counter()
            result[part] = measure[part]()
            if on_part is not None:
                on_part(part, {"numbers": result[part], "settings": settings.part_settings(part), "subset": subset,
                               "seconds": time.perf_counter() - started})
    return result


def _no_corruption_set() -> corruptions.CorruptionSetError:
    return corruptions.CorruptionSetError(
        "the corruptions suite needs a corrupted test set: pass --corruptions-dir DIR (the official CIFAR-100-C "
        "folder, or one written by `python -m catchup_mix corrupt --dataset DATASET --data-root DIR --out DIR`)")


def default_output(checkpoint) -> Path:
    """Where `evaluate --suite` keeps a checkpoint's measurements unless told otherwise."""
    return Path(checkpoint).with_suffix(".robustness.json")


def evaluate_suite(checkpoint, suite, settings: SuiteSettings | None = None, *, corruptions_dir=None,
                   data_root=None, ood_root=None, device: str = "auto", progress: bool = True, out=None,
                   remeasure: bool = False, show=None) -> dict:
    """run_suite on a trained run's checkpoint, kept in `out` (default <checkpoint>.robustness.json).

    The file holds every part ever measured, each under the settings it was measured with
    (checkpoint.MeasurementFile): a part already there with today's settings is not measured again (unless
    `remeasure`), so a rerun after an interruption continues, and measuring one part never removes another.
    Each part is written as it finishes, after show(lines) printed it (default: print). Returns the file's
    content.
    """
    from . import provenance
    from .checkpoint import MeasurementFile, check_writable, checkpoint_identity, measured_weights
    from .evaluate import load_run

    suite = check_suite(suite)
    settings = settings or SuiteSettings()
    out = Path(out) if out is not None else default_output(checkpoint)
    show = show or (lambda lines: print("\n".join(lines), flush=True))
    store = MeasurementFile(out)  # an unreadable file stops here, untouched
    check_writable(out.parent)  # before the checkpoint, the data and the hours of work
    identity = checkpoint_identity(checkpoint)  # the numbers kept belong to these weights, and only to these
    todo = [part for part in suite if remeasure or store.get(part, settings.part_key(part), identity["weights"]) is None]
    kept = [part for part in suite if part not in todo]
    if kept:
        show([f"already measured with these settings on these weights (epoch {identity['epoch']}) in {out}, kept: "
              f"{', '.join(kept)} (--remeasure to redo)"])
    others = {part: store.get(part, settings.part_key(part)) for part in todo}
    others = {part: entry for part, entry in others.items() if entry and measured_weights(entry) != identity["weights"]}
    if others:
        earlier = sorted({str(entry.get("checkpoint", {}).get("epoch", "unknown")) for entry in others.values()})
        show([f"{out} holds {', '.join(others)} measured on other weights (epoch {', '.join(earlier)}; the checkpoint "
              f"has changed since, e.g. trained further): measuring these weights (epoch {identity['epoch']}) anew; "
              "the earlier numbers are kept apart, under \"replaced\" in that file"])
    if "corruptions" in todo and corruptions_dir is None:
        raise _no_corruption_set()  # before the checkpoint and data are loaded
    if todo:
        run = load_run(checkpoint, data_root, device)
        config = run.config
        header = {"checkpoint": str(checkpoint), "epoch": run.epoch, "method": config.method, "model": config.model,
                  "dataset": config.dataset, "seed": config.seed, "precision": config.precision,
                  "same_numerics_as_training": run.same_numerics}
        info = provenance.collect(run.device)

        def save(part, entry):
            show(part_lines(part, entry["numbers"], entry["settings"]))
            store.put(part, settings.part_key(part), {**entry, "provenance": info,
                                                      "checkpoint": {"epoch": run.epoch, "weights": run.weights}},
                      **header, weights=run.weights)

        show([f"{config.method} {config.model} on {config.dataset}: measuring {', '.join(todo)}"])
        run_suite(run.model, run.dataset, config, todo, settings, device=run.device, autocast=run.autocast,
                  corruptions_dir=corruptions_dir, data_root=data_root, ood_root=ood_root, progress=progress,
                  on_part=save)
    return store.data


def current_parts(stored: dict, suite, settings: SuiteSettings) -> dict:
    """{part: entry} of a MeasurementFile's content, for the parts of `suite` measured with `settings` on the
    weights the file was last measured on (its "weights"; parts of earlier weights are left out)."""
    from .checkpoint import measured_weights

    parts = stored.get("parts", {})
    found = {part: parts.get(part, {}).get(settings.part_key(part)) for part in check_suite(suite)}
    return {part: entry for part, entry in found.items()
            if entry is not None and measured_weights(entry) == stored.get("weights")}


def part_lines(part: str, numbers: dict, part_settings: dict) -> list[str]:
    """A part's numbers as short table lines."""
    if part == "clean":
        return [f"{'clean':<24} top-1 {numbers['top1']:6.2f}   ECE {numbers['ece']:5.2f}   NLL {numbers['nll']:.3f}"]
    if part == "fgsm":
        return [f"{'FGSM ' + eps:<24} top-1 {value:6.2f}" for eps, value in numbers.items()]
    if part == "pgd":
        return [f"{'PGD-' + str(part_settings['pgd_steps']) + ' ' + eps:<24} top-1 {value:6.2f}"
                for eps, value in numbers.items()]
    if part == "corruptions":
        return [f"{'corruptions (' + numbers['source'] + ')':<24} top-1 {numbers['mean']:6.2f}   by severity "
                + " ".join(f"{v:.1f}" for v in numbers["per_severity"].values())]
    if part == "deformations":
        return [f"{'deformations':<24} top-1 {numbers['mean']:6.2f}   "
                + " ".join(f"{k} {v:.1f}" for k, v in numbers.items() if k != "mean")]
    return [f"{'OOD ' + name:<24} AUROC {value['msp']['auroc']:6.2f} (MSP) {value['energy']['auroc']:6.2f} (energy)"
            f"   FPR95 {value['msp']['fpr95']:6.2f} (MSP)" for name, value in numbers.items() if name != "mean"]


def summary_lines(stored: dict, suite, settings: SuiteSettings) -> list[str]:
    """The table of what a MeasurementFile holds for `suite` at `settings`, with the subset it was measured on."""
    parts = current_parts(stored, suite, settings)
    subset = next(iter(parts.values()))["subset"] if parts else None
    lines = [f"{stored.get('method', '?')} {stored.get('model', '')} on {stored.get('dataset', '')}, "
             + (f"{subset['images']} test images ({subset['selection']}, {subset['classes']} classes)"
                if subset else "nothing measured")]
    for part, entry in parts.items():
        lines += part_lines(part, entry["numbers"], entry["settings"])
    return lines
