"""Every mixing method behind one call, in the spirit of timm's `data/mixup.py`.

    method = methods.build("catchup_mix", num_hook_points=model.num_hook_points)
    batch = method(images, labels, generator=generator, model=model)
    logits = model(batch.inputs, feature_hook=batch.feature_hook)
    loss = soft_target_loss(logits, batch.target_distribution(logits.shape[1]))

Each method is a small dataclass whose fields are its options. Every random draw (whether to mix,
the partner permutation, lambda, the layer, the CutMix box) comes from `generator`, a CPU
torch.Generator, so a seeded generator repeats a batch exactly on any device.

The one extension of the call: `model=`. Methods whose mixing depends on the network (saliency from an
input gradient, as PuzzleMix and Co-Mixup compute it) set `needs_model = True` and receive the model the
trainer is training; the others ignore it. The trainer always passes it, so it never needs to know which
method it runs. This module holds the registry and the simple methods; the saliency- and
transport-based baselines (SaliencyMix, PuzzleMix, Co-Mixup, GuidedMixup, AlignMixup) are in
`catchup_mix.baselines`, registered when the package is imported. Partners are a random
permutation of the batch, as in the Mixup, CutMix, Manifold Mixup and PuzzleMix code; torchvision's
v2 MixUp/CutMix and timm pair each sample with its neighbour in a flipped batch and cannot mix hidden
layers, so the ops here are our own (`catchup_mix.ops`).
"""

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from . import ops


@dataclass
class MixedBatch:
    """What a method hands to the training step.

    `lam` is the weight of `targets_a` in the loss: a float for the whole batch, or a (B,) tensor of
    per-sample weights. With Catch-up Mix's `label="channels"` the feature hook sets it when it fires, so
    read it (and `target_distribution`) after the forward pass. Methods that mix more than two samples
    into one (Co-Mixup) give `soft_targets = (classes, weights)`, both (B, K): sample i's target puts
    weights[i, k] on class classes[i, k] (rows sum to 1; a class may repeat). It replaces the pair, which
    then only summarises it; `target_distribution` is the exact target either way.
    """

    inputs: torch.Tensor
    targets_a: torch.Tensor
    targets_b: torch.Tensor
    lam: float | torch.Tensor
    layer: int | None = None  # the mixing point: 0 = input image, k >= 1 = the model's hook point k
    feature_hook: Callable[[torch.Tensor, int], torch.Tensor] | None = None
    soft_targets: tuple[torch.Tensor, torch.Tensor] | None = None

    def target_distribution(self, num_classes: int) -> torch.Tensor:
        """The (B, num_classes) training target: lam * onehot(targets_a) + (1 - lam) * onehot(targets_b),
        or the mixture `soft_targets` describes."""
        if self.soft_targets is not None:
            classes, weights = self.soft_targets
            # a scatter-add, not F.one_hot: no label check on the CPU, and a class that repeats adds up
            target = torch.zeros(len(classes), num_classes, device=weights.device)
            return target.scatter_add_(1, classes, weights.float())
        return ops.mixed_targets(self.targets_a, self.targets_b, self.lam, num_classes)


METHODS: dict[str, type] = {}


def register(name: str):
    """Class decorator that adds a method to the registry (and so to every table)."""

    def add(cls):
        cls.name = name
        METHODS[name] = cls
        return cls

    return add


def available() -> list[str]:
    return list(METHODS)


def settable_options(name: str) -> list[str]:
    """The options a user sets for method `name` (num_hook_points is the model's, set by whoever builds it)."""
    return [f.name for f in fields(METHODS[name]) if f.init and f.name != "num_hook_points"]


def missing_extras(name: str, options: dict) -> list[str]:
    """Method `name` with `options`: the optional packages it needs that this machine lacks (see
    Method.missing_extras); [] for a method or option that needs none."""
    return METHODS[name].missing_extras(options) if name in METHODS else []


def build(name: str, **options):
    """Build a registered method; unknown names or options raise ValueError listing the valid ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(available())}")
    valid = [f.name for f in fields(METHODS[name]) if f.init]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method {name!r}; valid options: {', '.join(valid)}")
    return METHODS[name](**options)


@dataclass(kw_only=True)
class Method:
    """Shared options. `num_hook_points` is the model's, so "all layers" can be resolved and checked."""

    prob: float = 1.0  # probability that a batch is mixed at all
    num_hook_points: int | None = None
    needs_model = False  # a class attribute, not an option: True where mix() uses the model
    # Why mix() must make the CPU wait for the GPU (a solver that runs on the CPU), or None: it never does.
    host_sync = None

    def __post_init__(self):
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"{self.name}: prob must lie in [0, 1], got {self.prob}")
        for option in ("alpha", "cutmix_alpha"):
            if getattr(self, option, 1.0) <= 0:
                raise ValueError(f"{self.name}: {option} must be > 0, got {getattr(self, option)}")

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, generator: torch.Generator | None = None,
                 model: torch.nn.Module | None = None) -> MixedBatch:
        if inputs.shape[0] != targets.shape[0]:
            raise ValueError(f"{inputs.shape[0]} inputs but {targets.shape[0]} targets")
        if self.needs_model and model is None:
            raise ValueError(f"{self.name} computes its mix from the network: call it with model=<the model "
                             "being trained>")
        if self.prob < 1.0 and float(torch.rand((), generator=generator)) >= self.prob:
            return MixedBatch(inputs, targets, targets, 1.0)
        return self.mix(inputs, targets, generator, model)

    def mix(self, inputs, targets, generator, model) -> MixedBatch:
        raise NotImplementedError

    @classmethod
    def missing_extras(cls, options: dict) -> list[str]:
        """What the method with these options needs that is not installed here (an optional package), each
        with its install command; [] when nothing is missing. Checked before training starts."""
        return []

    def _resolve_layers(self, layers) -> tuple[int, ...]:
        """Turn the `layers` option into a checked tuple; None means every mixing point of the model."""
        if layers is None:
            if self.num_hook_points is None:
                raise ValueError(
                    f"{self.name}: layers=None means every layer, which needs the model's hook count: "
                    "pass num_hook_points=model.num_hook_points, or list the layers, e.g. layers=(0, 1, 2)"
                )
            return tuple(range(self.num_hook_points + 1))
        layers = tuple(int(k) for k in layers)
        top = self.num_hook_points if self.num_hook_points is not None else math.inf
        if not layers or any(not 0 <= k <= top for k in layers):
            raise ValueError(f"{self.name}: layers must be a non-empty set of ints in [0, {top}], got {layers}")
        return layers


def draw_partners(batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
    """The partner of sample i is perm[i]; kept on the CPU so checking it needs no device sync."""
    return torch.randperm(batch_size, generator=generator)


def draw_beta(alpha: float, generator: torch.Generator | None) -> float:
    """One lambda ~ Beta(alpha, alpha), drawn through the torch generator so seeds cover it."""
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def draw_layer(layers: tuple[int, ...], generator: torch.Generator | None) -> int:
    return layers[int(torch.randint(len(layers), (), generator=generator))]


def to_device(perm: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The CPU permutation on the batch's device, copied once per batch without making the CPU wait."""
    return perm.to(device, non_blocking=True)


def mix_at_layer(inputs, targets, perm, lam, layer, mix) -> MixedBatch:
    """Mix the images now (layer 0) or give the model a hook that mixes at its hook point `layer`.

    `perm` is on the batch's device. `mix(tensor, batch)` returns the mixed tensor; it gets the batch so
    it may adjust `batch.lam`.
    """
    batch = MixedBatch(inputs, targets, targets[perm], lam, layer=layer)
    if layer == 0:
        batch.inputs = mix(inputs, batch)
    else:
        batch.feature_hook = lambda features, k: mix(features, batch) if k == layer else features
    return batch


def mixup_batch(inputs, targets, layer, alpha, generator) -> MixedBatch:
    """Mixup at `layer` with lam ~ Beta(alpha, alpha): input Mixup for layer 0, Manifold Mixup above."""
    perm = to_device(draw_partners(inputs.shape[0], generator), inputs.device)
    lam = draw_beta(alpha, generator)
    return mix_at_layer(inputs, targets, perm, lam, layer, lambda tensor, batch: ops.mixup(tensor, lam, perm))


def cutmix_batch(inputs, targets, alpha, generator) -> MixedBatch:
    """CutMix on the images; the label weight is the area actually kept."""
    perm = to_device(draw_partners(inputs.shape[0], generator), inputs.device)
    mixed, lam = ops.cutmix(inputs, draw_beta(alpha, generator), perm, generator)
    return MixedBatch(mixed, targets, targets[perm], lam, layer=0)


@register("vanilla")
@dataclass(kw_only=True)
class Vanilla(Method):
    """No mixing: plain cross-entropy training."""

    def mix(self, inputs, targets, generator, model):
        return MixedBatch(inputs, targets, targets, 1.0)


@register("mixup")
@dataclass(kw_only=True)
class Mixup(Method):
    """Input Mixup (Zhang et al. 2018): lam ~ Beta(alpha, alpha), images and labels mixed with lam."""

    alpha: float = 1.0

    def mix(self, inputs, targets, generator, model):
        return mixup_batch(inputs, targets, 0, self.alpha, generator)


@register("cutmix")
@dataclass(kw_only=True)
class CutMix(Method):
    """CutMix (Yun et al. 2019): a box from the partner, label weight from the box's actual area."""

    alpha: float = 1.0

    def mix(self, inputs, targets, generator, model):
        return cutmix_batch(inputs, targets, self.alpha, generator)


@register("manifold_mixup")
@dataclass(kw_only=True)
class ManifoldMixup(Method):
    """Manifold Mixup (Verma et al. 2019): Mixup at a layer drawn per batch.

    The default layers follow the authors' PreActResNet code, which mixes at the input, after the
    first or after the second residual stage: hook points 0, 2 and 3 here (1 is the stem).
    """

    alpha: float = 2.0
    layers: tuple[int, ...] = (0, 2, 3)

    def __post_init__(self):
        super().__post_init__()
        self.layers = self._resolve_layers(self.layers)

    def mix(self, inputs, targets, generator, model):
        return mixup_batch(inputs, targets, draw_layer(self.layers, generator), self.alpha, generator)


@register("catchup_mix")
@dataclass(kw_only=True)
class CatchupMix(Method):
    """Catch-up Mix (Kang et al., AAAI 2024), as reconstructed in method.md.

    One layer k per batch from `layers` (None = the input and every hook point). k = 0: CutMix with
    Beta(cutmix_alpha) on the images. k >= 1: lam ~ Beta(alpha, alpha) and the channel mix of
    `ops.catchup_mix_features` at hook point k. `label="lambda"` weighs the labels by lam,
    `"channels"` by the fraction floor(lam * C) / C of channels actually kept.
    """

    layers: tuple[int, ...] | None = None
    alpha: float = 1.0
    cutmix_alpha: float = 1.0
    selection: str = "low"
    rfi: str = "relative"
    label: str = "lambda"
    # What ranks the channels: "features", the hook point's own maps (the paper), or "next_conv_input", what the
    # next conv reads of them, ReLU(BN(features)) through the BN that follows the hook point (with the batch's
    # statistics, as in training): this project's variant (docs/method.md), not the paper's. In a pre-activation
    # network weight decay silences a filter there (its BN scale shrinks, the ReLU zeroes it) while the residual
    # stream at the hook point keeps it alive. Where no BN follows a hook point, the features rank as they are.
    rank_by: str = "features"
    # model -> {hook point: the BN after it}, found once per model (analysis.batchnorm_after_hook_points)
    _batchnorms: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary, init=False,
                                                   repr=False, compare=False)

    def __post_init__(self):
        super().__post_init__()
        if self.rank_by not in ("features", "next_conv_input"):
            raise ValueError(f"catchup_mix: unknown rank_by {self.rank_by!r}; use 'features' or 'next_conv_input'")
        self.needs_model = self.rank_by == "next_conv_input"
        if self.selection not in ops.SELECTIONS:
            raise ValueError(f"catchup_mix: unknown selection {self.selection!r}; use one of {ops.SELECTIONS}")
        if self.rfi not in ops.RFI_MODES:
            raise ValueError(f"catchup_mix: unknown rfi {self.rfi!r}; use one of {ops.RFI_MODES}")
        if self.label not in ("lambda", "channels"):
            raise ValueError(f"catchup_mix: unknown label {self.label!r}; use 'lambda' or 'channels'")
        self.layers = self._resolve_layers(self.layers)

    def mix(self, inputs, targets, generator, model):
        layer = draw_layer(self.layers, generator)
        if layer == 0:
            return cutmix_batch(inputs, targets, self.cutmix_alpha, generator)
        perm = to_device(draw_partners(inputs.shape[0], generator), inputs.device)
        lam = draw_beta(self.alpha, generator)
        batchnorm = self._batchnorm_after(layer, model, inputs) if self.rank_by == "next_conv_input" else None

        def mix_features(features: torch.Tensor, batch: MixedBatch) -> torch.Tensor:
            if self.label == "channels":
                channels = features.shape[1]
                batch.lam = math.floor(lam * channels) / channels
            ranked_by = None
            if batchnorm is not None:
                with torch.no_grad():  # the ranking is not differentiated; no running statistics updated
                    ranked_by = torch.relu(torch.nn.functional.batch_norm(
                        features, None, None, batchnorm.weight, batchnorm.bias, training=True, eps=batchnorm.eps))
            return ops.catchup_mix_features(features, lam, perm, self.selection, self.rfi, generator, ranked_by)

        return mix_at_layer(inputs, targets, perm, lam, layer, mix_features)

    def _batchnorm_after(self, layer: int, model: torch.nn.Module, inputs: torch.Tensor):
        from . import analysis
        from .saliency import unwrap

        model = unwrap(model)
        if model not in self._batchnorms:
            self._batchnorms[model] = analysis.batchnorm_after_hook_points(model, inputs[:2])
        return self._batchnorms[model].get(layer)
