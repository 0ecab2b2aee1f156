"""How robust a trained classifier is: adversarial attacks (FGSM, PGD), corrupted test sets (CIFAR-C),
deformations, out-of-distribution detection and calibration, and the suite that runs them on a checkpoint.

Attacks work in [0, 1] pixel space on a model that takes [0, 1] images (`Normalized` puts a dataset's
normalisation in front of our networks), so eps is in pixel units as in the papers (4/255, 8/255):

    pixel_model = Normalized(model, dataset.mean, dataset.std)
    x_adv = fgsm(pixel_model, x, y, eps=8 / 255)
    x_adv = pgd(pixel_model, x, y, eps=4 / 255, step_size=2 / 255, steps=20,
                generator=torch.Generator().manual_seed(0))

`evaluate_suite(checkpoint, ["clean", "fgsm", "pgd", "corruptions", "deformations", "ood"], ...)` runs all of
it on a trained run and writes <checkpoint>.robustness.json; `python -m catchup_mix evaluate --suite ...` is
the command line. docs/robustness.md describes the settings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
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


def ood_sets(names, config, size: int, count: int, data_root: str | None = None, seed: int = 0) -> dict:
    """Out-of-distribution test images (uint8 N x 3 x size x size) for a model trained on config.dataset.

    names: None for every set available offline, or a list of: noise_gaussian, noise_uniform,
    unseen_classes (test images of the dataset's classes the model was not trained on), cifar10, cifar100,
    tiny_imagenet (read from data_root, resized to `size`), or the path of any folder of images.
    `count` caps each set (and sizes the noise sets).
    """
    automatic = names is None
    names = list(names) if names else [*NOISE_SETS, "unseen_classes", "cifar10", "cifar100", "tiny_imagenet"]
    sets = {}
    for name in names:
        if name in NOISE_SETS:
            sets[name] = noise_images(name, count, size, seed)
            continue
        try:
            images = _named_ood_set(name, config, count, size, data_root)
        except (data.DatasetNotFoundError, ValueError) as error:
            if automatic:
                continue  # not available here: skipped when the sets are chosen automatically
            raise ValueError(f"OOD set {name!r} is not available: {error}") from None
        if images is not None and len(images):
            sets[_ood_label(name)] = _resize(images[:count], size)
        elif not automatic:
            raise ValueError(f"OOD set {name!r} is not available for a model trained on {config.dataset}")
    return sets


def _ood_label(name: str) -> str:
    return name if name == "unseen_classes" or name in OTHER_DATASETS else f"folder:{Path(name).name}"


def _named_ood_set(name: str, config, count: int, size: int, data_root: str | None):
    root = data_root or config.data_root
    if name == "unseen_classes":
        trained = config.num_classes
        if trained is None:
            return None
        if config.dataset == "synthetic":
            loaded = data.load("synthetic", num_classes=min(2 * trained, data.SYNTHETIC_MAX_CLASSES),
                               train_per_class=1, test_per_class=config.test_per_class)
        else:
            loaded = data.load(config.dataset, root, train_per_class=1, test_per_class=config.test_per_class)
        return loaded.test.images[loaded.test.labels >= trained]
    if name in OTHER_DATASETS:
        if name == config.dataset or root is None:
            return None  # the training data is not out of distribution; without a folder there is nothing to read
        per_class = math.ceil(count / OTHER_DATASETS[name])  # decode only what is used, the same from each class
        return data.load(name, root, train_per_class=1, test_per_class=per_class).test.images
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise ValueError(f"{name!r} is neither a known OOD set ({', '.join([*NOISE_SETS, 'unseen_classes'])}, "
                         "cifar10, cifar100, tiny_imagenet) nor a folder of images")
    return data.files.decode_folder(folder, size, desc=f"OOD folder {folder}")


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    from torchvision.transforms.v2.functional import resize

    return resize(images, [size, size], antialias=True)


# ---------------------------------------------------------------------------------------------------
# The suite


@dataclasses.dataclass
class SuiteSettings:
    """What the suite measures; its hash keys cached results (`key`)."""

    fgsm_eps: tuple[float, ...] = (4 / 255, 8 / 255)
    pgd_eps: tuple[float, ...] = (4 / 255, 8 / 255)
    pgd_step_size: float = 2 / 255
    pgd_steps: int = 20
    corruption_names: tuple[str, ...] = corruptions.CORRUPTIONS
    deformations: tuple[str, ...] = tuple(DEFORMATIONS)
    ood: tuple[str, ...] | None = None  # None: every set available offline
    max_images: int | None = None  # the first n test images (None: all)
    batch_size: int = 200
    seed: int = 0  # PGD's random start and the noise images

    def key(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:12]


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
              device=None, autocast=contextlib.nullcontext, corruptions_dir=None, data_root=None,
              progress: bool = False) -> dict:
    """Measure `model` (trained on `dataset` with `config`, taking normalised inputs) on each part of `suite`.

    Accuracies are top-1 in %, OOD metrics in % (fpr95 too), ECE in % with 15 bins. corruptions_dir: an
    official or generated set of this dataset's test split (corruptions.load_set checks it first).
    """
    suite = check_suite(suite)
    settings = settings or SuiteSettings()
    device = torch.device(device or next(model.parameters()).device)
    pixel_model = Normalized(model, dataset.mean, dataset.std).to(device)
    images, labels = _test_split(dataset, settings.max_images)
    size = images.shape[-1]
    sets = {}
    if "corruptions" in suite:
        if corruptions_dir is None:
            raise _no_corruption_set()
        sets = {name: corruptions.load_set(corruptions_dir, name, expected_labels=dataset.test.labels.numpy(),
                                           image_size=dataset.test.images.shape[-1])[0]
                for name in settings.corruption_names}  # every file checked before any work
    unknown = [name for name in settings.deformations if name not in DEFORMATIONS] if "deformations" in suite else []
    if unknown:
        raise ValueError(f"unknown deformations {unknown}; available: {', '.join(DEFORMATIONS)}")
    out_of_distribution = (ood_sets(settings.ood, config, size, len(labels), data_root, settings.seed)
                           if "ood" in suite else {})  # read before any work too: a bad --ood fails fast
    result = {"settings": {**dataclasses.asdict(settings), "suite_key": settings.key()}, "n_images": len(labels)}

    def batches(pixels_uint8: torch.Tensor, targets: torch.Tensor | None = None):
        for start in range(0, len(pixels_uint8), settings.batch_size):
            x = pixels_uint8[start:start + settings.batch_size].to(device).float() / 255
            y = None if targets is None else targets[start:start + settings.batch_size].to(device)
            yield x, y

    def accuracy(pixels_uint8, transform=None) -> float:
        correct = 0
        for x, y in batches(pixels_uint8, labels):
            x = transform(x, y) if transform else x
            with torch.no_grad(), autocast():
                correct += (pixel_model(x).argmax(1) == y).sum().item()
        return 100.0 * correct / len(labels)

    with eval_mode(pixel_model):
        if "clean" in suite or "ood" in suite:
            sums, in_scores = MetricSums(device), []
            for x, y in batches(images, labels):
                with torch.no_grad(), autocast():
                    logits = pixel_model(x)
                sums.add(logits, y)
                in_scores.append(torch.stack([msp_score(logits), energy_score(logits)], 1).cpu())
            result["clean"] = {**sums.result(), "reliability": sums.reliability()}
        if "fgsm" in suite:
            result["fgsm"] = {eps_label(eps): accuracy(images, lambda x, y, eps=eps: fgsm(pixel_model, x, y, eps))
                              for eps in settings.fgsm_eps}
        if "pgd" in suite:
            generator = torch.Generator().manual_seed(settings.seed)
            result["pgd"] = {eps_label(eps): accuracy(images, lambda x, y, eps=eps: pgd(
                pixel_model, x, y, eps, settings.pgd_step_size, settings.pgd_steps, generator=generator))
                for eps in settings.pgd_eps}
        if "corruptions" in suite:
            result["corruptions"] = _corruption_accuracies(sets, corruptions_dir, len(labels), dataset, accuracy,
                                                           progress)
        if "deformations" in suite:
            result["deformations"] = {name: accuracy(images, lambda x, y, name=name: deform(x, name))
                                      for name in settings.deformations}
            result["deformations"]["mean"] = float(np.mean(list(result["deformations"].values())))
        if "ood" in suite:
            result["ood"] = _ood_results(pixel_model, torch.cat(in_scores), out_of_distribution, batches, autocast)
    if "clean" not in suite:
        result.pop("clean", None)
    return result


def _no_corruption_set() -> corruptions.CorruptionSetError:
    return corruptions.CorruptionSetError(
        "the corruptions suite needs a corrupted test set: pass --corruptions-dir DIR (the official CIFAR-100-C "
        "folder, or one written by `python -m catchup_mix corrupt --dataset DATASET --data-root DIR --out DIR`)")


def _center_crop(images: torch.Tensor, crop: int) -> torch.Tensor:
    """As the test loader crops: the centre crop x crop (torchvision's anchor)."""
    height, width = images.shape[-2:]
    top, left = round((height - crop) / 2), round((width - crop) / 2)
    return images[..., top:top + crop, left:left + crop]


def _test_split(dataset: data.Dataset, max_images: int | None):
    """The first max_images test images as the model sees them, and their labels."""
    return _center_crop(dataset.test.images[:max_images], dataset.crop_size), dataset.test.labels[:max_images]


def _corruption_accuracies(sets: dict, folder, n: int, dataset, accuracy, progress: bool) -> dict:
    from tqdm import tqdm

    info = Path(folder) / corruptions.SET_INFO
    per_corruption = {}
    bar = tqdm(total=len(sets) * len(corruptions.SEVERITIES), desc="corruptions", disable=not progress)
    for name, images in sets.items():
        row = {}
        for severity in corruptions.SEVERITIES:
            # a copy: the memory-mapped set is read-only
            pixels = torch.from_numpy(np.array(images[severity - 1, :n])).permute(0, 3, 1, 2)
            row[str(severity)] = accuracy(_center_crop(pixels, dataset.crop_size))
            bar.update(1)
        row["mean"] = float(np.mean([row[str(s)] for s in corruptions.SEVERITIES]))
        per_corruption[name] = row
    bar.close()
    per_severity = {str(s): float(np.mean([row[str(s)] for row in per_corruption.values()]))
                    for s in corruptions.SEVERITIES}
    return {"source": "generated" if info.is_file() else "official", "folder": str(folder),
            "set_info": json.loads(info.read_text()) if info.is_file() else None,
            "mean": float(np.mean([row["mean"] for row in per_corruption.values()])),
            "per_severity": per_severity, "per_corruption": per_corruption}


def _ood_results(pixel_model, in_scores, sets: dict, batches, autocast) -> dict:
    results = {}
    for name, images in sets.items():
        scores = []
        for x, _ in batches(images):
            with torch.no_grad(), autocast():
                logits = pixel_model(x)
            scores.append(torch.stack([msp_score(logits), energy_score(logits)], 1).cpu())
        scores = torch.cat(scores)
        results[name] = {"n": len(images), **{
            score: {k: 100.0 * v for k, v in ood_metrics(in_scores[:, i].numpy(), scores[:, i].numpy()).items()}
            for i, score in enumerate(("msp", "energy"))}}
    if results:
        results["mean"] = {score: {metric: float(np.mean([r[score][metric] for r in results.values()]))
                                   for metric in ("auroc", "aupr_in", "aupr_out", "fpr95")}
                           for score in ("msp", "energy")}
    return results


def evaluate_suite(checkpoint, suite, settings: SuiteSettings | None = None, *, corruptions_dir=None,
                   data_root=None, device: str = "auto", progress: bool = True) -> dict:
    """run_suite on a trained run's checkpoint, written beside it as <checkpoint>.robustness.json."""
    from . import provenance
    from .checkpoint import write_json
    from .evaluate import load_run

    suite = check_suite(suite)
    if "corruptions" in suite and corruptions_dir is None:
        raise _no_corruption_set()  # before the checkpoint and data are loaded
    run = load_run(checkpoint, data_root, device)
    config = run.config
    result = run_suite(run.model, run.dataset, config, suite, settings, device=run.device, autocast=run.autocast,
                       corruptions_dir=corruptions_dir, data_root=data_root, progress=progress)
    result = {"checkpoint": str(checkpoint), "epoch": run.epoch, "suite": suite, "method": config.method,
              "model": config.model, "dataset": config.dataset, "seed": config.seed, "precision": config.precision,
              "same_numerics_as_training": run.same_numerics, **result, "provenance": provenance.collect(run.device)}
    write_json(Path(checkpoint).with_suffix(".robustness.json"), result)
    return result


def summary_lines(result: dict) -> list[str]:
    """A short table of a suite's result, one line per measurement."""
    lines = [f"{result.get('method', '?')} {result.get('model', '')} on {result.get('dataset', '')}, "
             f"{result['n_images']} test images"]
    if "clean" in result:
        clean = result["clean"]
        lines.append(f"{'clean':<24} top-1 {clean['top1']:6.2f}   ECE {clean['ece']:5.2f}   NLL {clean['nll']:.3f}")
    settings = result["settings"]
    for eps, value in result.get("fgsm", {}).items():
        lines.append(f"{'FGSM ' + eps:<24} top-1 {value:6.2f}")
    for eps, value in result.get("pgd", {}).items():
        label = f"PGD-{settings['pgd_steps']} {eps}"
        lines.append(f"{label:<24} top-1 {value:6.2f}")
    if "corruptions" in result:
        part = result["corruptions"]
        lines.append(f"{'corruptions (' + part['source'] + ')':<24} top-1 {part['mean']:6.2f}   by severity "
                     + " ".join(f"{v:.1f}" for v in part["per_severity"].values()))
    if "deformations" in result:
        part = result["deformations"]
        lines.append(f"{'deformations':<24} top-1 {part['mean']:6.2f}   "
                     + " ".join(f"{k} {v:.1f}" for k, v in part.items() if k != "mean"))
    for name, part in result.get("ood", {}).items():
        if name != "mean":
            lines.append(f"{'OOD ' + name:<24} AUROC {part['msp']['auroc']:6.2f} (MSP) "
                         f"{part['energy']['auroc']:6.2f} (energy)   FPR95 {part['msp']['fpr95']:6.2f} (MSP)")
    return lines
