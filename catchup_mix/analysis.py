"""Filter analysis: how much a trained network leans on a few channels, how flat its loss is, where it looks.

Every measurement takes a model with the project's `forward(x, feature_hook=None)` and data; it observes
through the feature hook and never changes the model (weights, BN statistics and train/eval mode are as
they were afterwards). Inputs are moved to the device of the model's parameters.

Channel statistics (the paper's "struggling filters"):
- `channel_norms(model, batches)`: per hook point, the mean over images of each channel's l2 norm over
  H x W (the norm Catch-up Mix ranks channels by), in eval mode.
- `gini(values)`: population Gini coefficient of non-negative values; 0 when all are equal, (C-1)/C when
  one of C is non-zero.
- `top_share(values, fraction=0.1)` / `bottom_share(...)`: share of the total held by the strongest / weakest
  `fraction` of the channels.
- `lagging_fraction(values, threshold=0.1)`: fraction of channels whose mean norm is below `threshold`
  times the mean over the layer's channels: a "lagging" (struggling) channel carries under a tenth of an
  average channel's signal (also counted at 0.25 and 0.5, where small networks have their weak tail).
- `filter_statistics(norms)` and `probe_filters(model, images)`: all of these per hook point; the latter is
  the trainer's per-epoch probe (`filter_probe` in the config).

Inside the blocks, where a filter that has stopped learning shows (the hook points carry the residual stream,
which the shortcuts keep alive):
- `conv_input_norms(model, batches)`: per Conv2d (qualified module name), the mean l2 norm of each input
  channel; in a pre-activation network the output of the BN+ReLU before the conv.
- `dead_channels(model, batches)`: per Conv2d, the fraction of positions where each input channel is
  exactly zero; at DEAD_FRACTION (0.99) or more the channel is dead.
- `batchnorm_scales(model)`: |gamma| of every BatchNorm2d, which weight decay shrinks for unused channels.
- `block_statistics(...)`: the statistics above per conv and per BN; `observe_activations` makes one pass
  for the hook points and the conv inputs together (the probe uses it).
- `reliance(model, batches, hook_point)`: top-1 accuracy with the top-p% channels by mean norm zeroed at one
  hook point, against the lowest-p% and random p% (the mean of several seeded draws) as controls.

Flatness (loss computed in eval mode, so BN uses its running statistics; PyHessian and Li et al. 2018's
code do the same):
- `hessian_top_eigenvalue(model, loss_fn, batches)`: power iteration on Hessian-vector products of the
  loss averaged over `batches`, over all trainable parameters (PyHessian, Yao et al. 2020:
  amirgholami/PyHessian `pyhessian/hessian.py`, `eigenvalues`).
- `hessian_trace(model, loss_fn, batches)`: Hutchinson's estimator E[v^T H v] with Rademacher v
  (PyHessian `trace`). With `return_info=True` both say how far to trust them (products used, residual,
  standard error). Neither is invariant to reparametrisation (Dinh et al. 2017: rescaling the layers of a
  ReLU network changes its Hessian, not its function); the filter-normalised landscapes below are, by
  construction, invariant to the per-filter scale.
- `loss_landscape_1d` / `loss_landscape_2d`: the loss at w + a d1 (+ b d2) for filter-normalised random
  directions (Li et al. 2018, tomgoldstein/loss-landscape `net_plotter.py`): Gaussian directions from a
  fixed seed, each filter (slice along the first axis of a weight of 2 or more dimensions) rescaled to the
  norm of the same filter of the weights. Biases and BN parameters, the 1-D parameters, get a zero
  direction: `ignore='biasbn'`, the setting of all of Li et al.'s scripts.

Where the network looks:
- `grad_cam(model, images, targets)`: Grad-CAM (Selvaraju et al. 2017) at the last hook point: ReLU of the
  channel maps weighted by the spatial mean of the target logit's gradient.
"""

import contextlib
import dataclasses
import functools
import inspect
import math
import statistics
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from . import data

Batches = Iterable  # of input tensors, or of (inputs, labels) pairs


# ----------------------------------------------------------------------------------------------------
# Helpers shared by the measurements


def _device_of(model: torch.nn.Module, fallback: torch.device) -> torch.device:
    parameter = next(model.parameters(), None)
    return fallback if parameter is None else parameter.device


def _pairs(batches: Batches, model: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(inputs, labels or None) on the model's device, as a list: several measurements pass over it again."""
    if isinstance(batches, torch.Tensor):
        raise ValueError("batches is one tensor: pass an iterable of batches, e.g. [images]")
    pairs = []
    for batch in batches:
        inputs, labels = (batch[0], batch[1]) if isinstance(batch, tuple | list) else (batch, None)
        device = _device_of(model, inputs.device)
        pairs.append((inputs.to(device), None if labels is None else labels.to(device)))
    if not pairs:
        raise ValueError("batches is empty: pass at least one batch of inputs")
    return pairs


def _labelled(pairs: list) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if any(labels is None for _, labels in pairs):
        raise ValueError("this measurement needs labels: pass batches of (inputs, labels) pairs")
    return pairs


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    """Eval mode inside the block, the model's own modes (per module) restored after."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


def fixed_batch(dataset: data.Dataset, split: str, count: int, device="cpu",
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` images of a split, class-balanced and evenly spread (`data.balanced_indices` with `seed`),
    normalised as for testing (centre crop, no flip). The same images for every run on the same data;
    `data.describe_subset(split.labels, data.balanced_indices(split.labels, count, seed), seed)` records which."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    whole = getattr(dataset, split)
    subset = whole.subset(data.balanced_indices(whole.labels, count, seed))
    loader = data.BatchLoader(subset, len(subset), mean=dataset.mean, std=dataset.std, train=False,
                              crop_size=dataset.crop_size, device=device)
    return next(iter(loader))


# ----------------------------------------------------------------------------------------------------
# Channel statistics


@torch.no_grad()
def channel_norms(model: torch.nn.Module, batches: Batches) -> dict[int, torch.Tensor]:
    """{hook point k: (C,) float32 CPU tensor}: each channel's l2 norm over H x W, averaged over every image
    of `batches` (input tensors or (inputs, labels) pairs), at every hook point, in eval mode."""
    return observe_activations(model, batches, conv_inputs=False).hook_norms


def conv_input_norms(model: torch.nn.Module, batches: Batches) -> dict[str, torch.Tensor]:
    """{qualified name of each Conv2d: (C_in,) float32 CPU tensor}: each input channel's l2 norm over H x W,
    averaged over every image of `batches`, in eval mode. In a pre-activation network a conv's input is the
    output of the BN+ReLU before it, where a filter that has stopped learning shows (its BN scale shrinks
    and the ReLU zeroes it); the hook points see the residual stream, where the shortcut keeps it alive."""
    return observe_activations(model, batches).conv_norms


def dead_channels(model: torch.nn.Module, batches: Batches) -> dict[str, torch.Tensor]:
    """{qualified name of each Conv2d: (C_in,) float32 CPU tensor}: the fraction of positions (H x W over every
    image of `batches`) where the input channel is exactly zero, in eval mode. A channel at DEAD_FRACTION
    or more is "dead": the ReLU before the conv passes it almost never, so its filter gets almost no gradient."""
    return observe_activations(model, batches).conv_zero_fractions


def batchnorm_scales(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{qualified name of each affine BatchNorm2d: (C,) float32 CPU tensor of |gamma|}: weight decay shrinks
    the scale of a channel the loss does not use, so a lagging filter's BN scale falls towards zero."""
    return {name: module.weight.detach().abs().float().cpu() for name, module in model.named_modules()
            if isinstance(module, torch.nn.BatchNorm2d) and module.weight is not None}


@torch.no_grad()
def batchnorm_after_hook_points(model: torch.nn.Module, inputs: torch.Tensor) -> dict[int, torch.nn.Module | None]:
    """{hook point k: the BatchNorm2d that reads hook point k's features as they are, or None where no BN
    does}, found on one eval-mode forward of `inputs` (two images are enough). In a pre-activation network it
    is the next block's first BN, and ReLU(BN(features)) is what the next conv reads; a post-activation
    network (ResNeXt, torchvision's ResNets) feeds its hook points to a conv directly: None."""
    seen: dict[int, torch.Tensor] = {}
    found: dict[int, torch.nn.Module] = {}

    def observe(features: torch.Tensor, k: int) -> torch.Tensor:
        seen[k] = features
        return features

    def observe_batchnorm(module, args) -> None:
        for k, features in seen.items():
            if args[0] is features:
                found.setdefault(k, module)

    handles = [module.register_forward_pre_hook(observe_batchnorm) for module in model.modules()
               if isinstance(module, torch.nn.BatchNorm2d)]
    try:
        with _eval_mode(model):
            model(inputs.to(_device_of(model, inputs.device)), feature_hook=observe)
    finally:
        for handle in handles:
            handle.remove()
    return {k: found.get(k) for k in sorted(seen)}


# A channel that is zero at this fraction of positions or more is dead (docs/evidence.md: the pilot found them
# at 99-100%, every other channel well under 90%).
DEAD_FRACTION = 0.99


@dataclasses.dataclass
class Activations:
    """What one eval-mode pass sees (`observe_activations`): the channel norms at the hook points (as
    `channel_norms`) and each conv's input channels (as `conv_input_norms` and `dead_channels`)."""

    hook_norms: dict[int, torch.Tensor]
    conv_norms: dict[str, torch.Tensor]
    conv_zero_fractions: dict[str, torch.Tensor]
    # conv name -> what it reads: "input" (the network's input), or the name of the first conv (in module order)
    # that reads the same tensor: its own, or e.g. conv1's for a pre-activation block's projection shortcut
    reads: dict[str, str]

    def distinct_convs(self) -> list[str]:
        """The convs whose input a filter makes (not the network's input), each tensor once: the statistics
        of the others would say nothing, or repeat an earlier conv's."""
        return [name for name, reads in self.reads.items() if reads == name]


@torch.no_grad()
def observe_activations(model: torch.nn.Module, batches: Batches, conv_inputs: bool = True) -> Activations:
    """One pass in eval mode over `batches`: the hook points and (conv_inputs) the input of every Conv2d."""
    sums: dict = defaultdict(float)  # ("hook", k) / ("norm", name) / ("zeros", name) -> running sum
    positions: dict[str, int] = defaultdict(int)
    reads: dict[str, str] = {}  # as Activations.reads, but the first reader in the order of the forward
    seen: list[tuple[weakref.ref, str]] = []  # this batch's conv inputs; weak, so a freed address is not matched

    def observe(features: torch.Tensor, k: int) -> torch.Tensor:
        sums["hook", k] = sums["hook", k] + torch.linalg.vector_norm(features.float().flatten(2), dim=2).sum(0)
        return features

    def observe_conv(name: str, module, args) -> None:
        x = args[0]
        if name not in reads:
            same = [reader for ref, reader in seen if ref() is x]
            reads[name] = "input" if x is batch[0] else same[0] if same else name
        seen.append((weakref.ref(x), name))
        flat = x.float().flatten(2)  # (B, C_in, H x W)
        sums["norm", name] = sums["norm", name] + torch.linalg.vector_norm(flat, dim=2).sum(0)
        sums["zeros", name] = sums["zeros", name] + (flat == 0).sum((0, 2))
        positions[name] += flat.shape[0] * flat.shape[2]

    # The conv inputs need no hook points: a CNN of any make can be measured there (its hook_norms stay empty).
    takes_hook = "feature_hook" in inspect.signature(model.forward).parameters
    if not takes_hook and not conv_inputs:
        raise TypeError(f"{type(model).__name__}.forward takes no feature_hook, so it has no hook points to "
                        "measure: wrap it in catchup_mix.models.FeatureHookAdapter")
    batch: list[torch.Tensor | None] = [None]  # the inputs in flight, to tell the network's input apart
    handles = [module.register_forward_pre_hook(functools.partial(observe_conv, name))
               for name, module in model.named_modules() if conv_inputs and isinstance(module, torch.nn.Conv2d)]
    count = 0
    try:
        with _eval_mode(model):
            for inputs, _ in _pairs(batches, model):
                batch[0] = inputs
                seen.clear()
                model(inputs, feature_hook=observe) if takes_hook else model(inputs)
                count += len(inputs)
    finally:
        for handle in handles:
            handle.remove()
    by = {kind: {key: total for (what, key), total in sums.items() if what == kind} for kind in ("hook", "norm", "zeros")}
    order = [name for name, module in model.named_modules() if name in reads]
    first = {}  # a tensor read by several convs is named after the first of them in module order
    for name in order:
        first.setdefault(reads[name], name)
    reads = {name: reads[name] if reads[name] == "input" else first[reads[name]] for name in order}
    return Activations(
        hook_norms={k: (total / count).cpu() for k, total in sorted(by["hook"].items())},
        conv_norms={name: (by["norm"][name] / count).cpu() for name in order},
        conv_zero_fractions={name: (by["zeros"][name].double() / positions[name]).float().cpu() for name in order},
        reads=reads)


def _non_negative(values) -> torch.Tensor:
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    if values.numel() == 0:
        raise ValueError("values is empty: pass the norms of at least one channel")
    if not torch.isfinite(values).all() or (values < 0).any():
        raise ValueError("values must be finite and non-negative (channel norms)")
    return values


def gini(values) -> float:
    """Population Gini coefficient: sum_ij |x_i - x_j| / (2 C^2 mean). 0 when all C values are equal (also
    when all are 0), (C-1)/C when a single one is non-zero."""
    x = _non_negative(values).sort().values
    total = x.sum()
    if total == 0:
        return 0.0
    n = len(x)
    ranks = torch.arange(1, n + 1, dtype=x.dtype)
    # the same sum over pairs, in O(C log C): with x ascending, sum_ij |x_i - x_j| = 2 sum_i (2i - C - 1) x_i
    return float((2 * ranks - n - 1).mul(x).sum() / (n * total))


def top_share(values, fraction: float = 0.1) -> float:
    """Share of the total held by the largest `fraction` of the values: the largest floor(fraction C) in
    full plus the next one in part, so that equal values give exactly `fraction` for any C."""
    return _share(values, fraction, largest=True)


def bottom_share(values, fraction: float = 0.1) -> float:
    """Share of the total held by the smallest `fraction` of the values (counted as `top_share` counts):
    `fraction` when all are equal, near 0 when the weakest channels carry almost nothing."""
    return _share(values, fraction, largest=False)


def _share(values, fraction: float, largest: bool) -> float:
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    x = _non_negative(values).sort(descending=largest).values
    total = x.sum()
    if total == 0:
        return fraction  # all equal
    whole, part = divmod(fraction * len(x), 1)
    whole = int(whole)
    share = x[:whole].sum() + (part * x[whole] if whole < len(x) else 0)
    return float(share / total)


def lagging_fraction(values, threshold: float = 0.1) -> float:
    """Fraction of the channels that lag: mean norm below `threshold` x the mean over the layer's channels."""
    if not (math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be a positive number, got {threshold}")
    x = _non_negative(values)
    return float((x < threshold * x.mean()).double().mean())


# At small scale no channel falls under a tenth of its layer's mean (the default "lagging" threshold), so the
# statistics also count channels under a quarter and a half of it; together with the weakest 10%'s share of
# the norm they show a weak tail that the 0.1 threshold cannot (docs/evidence.md).
EXTRA_LAGGING_THRESHOLDS = (0.25, 0.5)


def filter_statistics(norms: dict, lagging_threshold: float = 0.1, top_fraction: float = 0.1) -> dict[str, dict]:
    """{"gini", "top_share", "bottom_share", "lagging", "lagging_0.25", "lagging_0.5"} -> {layer: value}, from
    {layer: (C,) values} (`channel_norms`, `conv_input_norms`, `batchnorm_scales`): top/bottom share of the
    strongest/weakest `top_fraction` of the channels, lagging at `lagging_threshold` and at each of
    EXTRA_LAGGING_THRESHOLDS x the layer's mean."""
    result = {
        "gini": {k: gini(v) for k, v in norms.items()},
        "top_share": {k: top_share(v, top_fraction) for k, v in norms.items()},
        "bottom_share": {k: bottom_share(v, top_fraction) for k, v in norms.items()},
        "lagging": {k: lagging_fraction(v, lagging_threshold) for k, v in norms.items()},
    }
    for threshold in EXTRA_LAGGING_THRESHOLDS:
        result[f"lagging_{threshold:g}"] = {k: lagging_fraction(v, threshold) for k, v in norms.items()}
    return result


def block_statistics(conv_norms: dict[str, torch.Tensor], zero_fractions: dict[str, torch.Tensor],
                     bn_scales: dict[str, torch.Tensor], lagging_threshold: float = 0.1,
                     top_fraction: float = 0.1) -> dict[str, dict[str, float]]:
    """The statistics of `filter_statistics` inside the blocks: "conv_input_<statistic>" per conv (from
    `conv_input_norms`), "conv_input_dead" (the fraction of a conv's input channels that are dead, from
    `dead_channels`) and "bn_scale_<statistic>" per BatchNorm (from `batchnorm_scales`)."""
    result = {f"conv_input_{name}": values
              for name, values in filter_statistics(conv_norms, lagging_threshold, top_fraction).items()}
    result["conv_input_dead"] = {name: float((zeros >= DEAD_FRACTION).double().mean())
                                 for name, zeros in zero_fractions.items()}
    return result | {f"bn_scale_{name}": values
                     for name, values in filter_statistics(bn_scales, lagging_threshold, top_fraction).items()}


# What the probe logs inside the blocks every epoch (each is one number per conv or BN: the full set of
# block_statistics would triple a run's history); the evidence measurement stores all of them once, at the end.
PROBE_BLOCK_STATISTICS = ("conv_input_gini", "conv_input_lagging",
                          "conv_input_lagging_0.25", "conv_input_lagging_0.5", "conv_input_dead",
                          "bn_scale_lagging", "bn_scale_lagging_0.25")


def probe_filters(model: torch.nn.Module, images: torch.Tensor, lagging_threshold: float = 0.1) -> dict:
    """The trainer's per-epoch filter probe: entries of a metrics row, one dict per statistic keyed by layer,
    values rounded to 4 digits: every statistic of `filter_statistics` per hook point ("filter_gini": {"1":
    ..., "2": ...}, "filter_top_share", ...), PROBE_BLOCK_STATISTICS per conv and BN ("conv_input_dead":
    {"stages.1.0.conv1": ...}, ...; convs reading the network's input, or a tensor an earlier conv read, are
    left out: nothing to learn there, or the same numbers twice), and the probe's own time in seconds
    ("filter_probe_s"). One pass over `images`, no random draw, the model untouched."""
    started = time.perf_counter()
    observed = observe_activations(model, [images])
    own = observed.distinct_convs()
    inside = block_statistics({name: observed.conv_norms[name] for name in own},
                              {name: observed.conv_zero_fractions[name] for name in own},
                              batchnorm_scales(model), lagging_threshold)
    measured = {f"filter_{name}": values
                for name, values in filter_statistics(observed.hook_norms, lagging_threshold).items()}
    measured |= {name: inside[name] for name in PROBE_BLOCK_STATISTICS}
    row = {name: {str(k): round(v, 4) for k, v in values.items()} for name, values in measured.items()}
    row["filter_probe_s"] = time.perf_counter() - started  # the values above are on the CPU: nothing pending
    return row


def _zeroing_hook(hook_point: int, channels: torch.Tensor, num_channels: int):
    keep = None

    def hook(features: torch.Tensor, k: int) -> torch.Tensor:
        nonlocal keep
        if k != hook_point:
            return features
        if features.shape[1] != num_channels:
            raise ValueError(f"hook point {hook_point} has {features.shape[1]} channels, but {num_channels} norms "
                             "were given: pass the norms of this hook point")
        if keep is None:
            keep = torch.ones(num_channels, dtype=features.dtype, device=features.device)
            keep[channels.to(features.device)] = 0
        return features * keep.view(1, -1, 1, 1)

    return hook


@torch.no_grad()
def _accuracy(model, pairs, feature_hook=None) -> float:
    correct = total = 0
    for inputs, labels in pairs:
        correct += int((model(inputs, feature_hook=feature_hook).argmax(1) == labels).sum())
        total += len(labels)
    return 100.0 * correct / total


def reliance(model: torch.nn.Module, batches: Batches, hook_point: int,
             fractions: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5), seed: int = 0,
             norms: torch.Tensor | None = None, random_draws: int = 5) -> dict[str, list]:
    """Top-1 accuracy (%) over `batches` ((inputs, labels) pairs) with channels zeroed at `hook_point`.

    For each p in `fractions`, round(p C) channels of the hook point's C are set to zero through the feature
    hook: the top ones by mean norm ("top"), the lowest ones ("lowest") and random ones, the control: in each
    of `random_draws` permutations drawn one after the other from `seed`, its first round(p C) channels (so
    the zeroed sets grow with p as the others do); "random" is the mean over the draws, "random_std" their
    sample std (0 for one draw), "random_draws" every draw's accuracies. Channels are ranked by `norms`
    ((C,)), by default `channel_norms` over the same batches. Returns {"fractions", "channels_zeroed", "top",
    "lowest", "random", "random_std", "random_draws"}: lists in the order of `fractions`.

    Zeroing a channel removes its map from the hook point onwards, but not what a following BatchNorm adds
    back: its shift (beta - mean x gamma / std) still reaches the next layer, so "zeroed" is "set to the
    value an all-zero map gets", not "removed from the network".
    """
    pairs = _labelled(_pairs(batches, model))
    if not 1 <= hook_point <= model.num_hook_points:
        raise ValueError(f"hook_point must lie in 1..{model.num_hook_points}, got {hook_point}")
    if any(not 0 <= p <= 1 for p in fractions):
        raise ValueError(f"fractions must lie in [0, 1], got {list(fractions)}")
    if random_draws < 1:
        raise ValueError(f"random_draws must be at least 1, got {random_draws}")
    with _eval_mode(model):
        if norms is None:
            norms = channel_norms(model, pairs)[hook_point]
        order = torch.as_tensor(norms).argsort(descending=True)
        num_channels = len(order)
        generator = torch.Generator().manual_seed(seed)
        permutations = [torch.randperm(num_channels, generator=generator) for _ in range(random_draws)]
        result = {"fractions": list(fractions), "channels_zeroed": [], "top": [], "lowest": [], "random": [],
                  "random_std": [], "random_draws": []}
        clean = None
        for p in fractions:
            n = math.floor(p * num_channels + 0.5)
            result["channels_zeroed"].append(n)

            def accuracy_without(channels):
                nonlocal clean
                if len(channels) == 0:  # nothing zeroed: one evaluation serves every choice
                    clean = _accuracy(model, pairs) if clean is None else clean
                    return clean
                return _accuracy(model, pairs, _zeroing_hook(hook_point, channels, num_channels))

            result["top"].append(accuracy_without(order[:n]))
            result["lowest"].append(accuracy_without(order[num_channels - n:]))
            draws = [accuracy_without(permutation[:n]) for permutation in permutations]
            result["random_draws"].append(draws)
            result["random"].append(sum(draws) / len(draws))
            result["random_std"].append(statistics.stdev(draws) if len(draws) > 1 else 0.0)
    return result


# ----------------------------------------------------------------------------------------------------
# Flatness


def _parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("the model has no trainable parameters")
    return parameters


def _mean_loss(model, loss_fn, pairs) -> torch.Tensor:
    """Loss averaged over all samples of `pairs` (each batch's mean loss weighted by its size)."""
    total = count = 0
    for inputs, targets in pairs:
        total = total + loss_fn(model(inputs), targets) * len(inputs)
        count += len(inputs)
    return total / count


def _hessian_vector_product(model, loss_fn, pairs, parameters, vector) -> list[torch.Tensor]:
    """H v of the mean loss over `pairs`, one batch at a time (memory of one batch's double backward)."""
    count = sum(len(inputs) for inputs, _ in pairs)
    product = [torch.zeros_like(p) for p in parameters]
    for inputs, targets in pairs:
        loss = loss_fn(model(inputs), targets) * (len(inputs) / count)
        # allow_unused: a parameter the loss does not reach has a zero row and column
        gradient = torch.autograd.grad(loss, parameters, create_graph=True, allow_unused=True)
        dot = sum((g * v).sum() for g, v in zip(gradient, vector, strict=True) if g is not None)
        for total, part in zip(product, torch.autograd.grad(dot, parameters, allow_unused=True), strict=True):
            if part is not None:
                total += part
    return product


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b, strict=True)))


def _random_like(parameters, generator, rademacher=False) -> list[torch.Tensor]:
    """Drawn on the CPU from `generator`, so the same seed gives the same vector on any device."""
    vectors = []
    for p in parameters:
        if rademacher:
            v = torch.randint(0, 2, p.shape, generator=generator, dtype=torch.float32) * 2 - 1
        else:
            v = torch.randn(p.shape, generator=generator)
        vectors.append(v.to(device=p.device, dtype=p.dtype))
    return vectors


def hessian_top_eigenvalue(model: torch.nn.Module, loss_fn: Callable, batches: Batches, iters: int = 20,
                           seed: int = 0, tol: float = 1e-3, return_info: bool = False):
    """Largest-magnitude eigenvalue of the Hessian of the mean loss `loss_fn(model(inputs), targets)` over
    `batches` w.r.t. all trainable parameters, by power iteration on Hessian-vector products from a Gaussian
    start drawn with `seed`; at most `iters` products, fewer once the estimate changes by less than `tol`
    (relative), as PyHessian's `eigenvalues(maxIter, tol)`. For a trained network it is usually the top
    positive one; power iteration finds the largest |eigenvalue|, so "flatter" reads on its magnitude.

    return_info: return (value, info) with info["iterations"] (Hessian-vector products used),
    info["residual"] (||H v - value v|| / |value| for the final unit vector v: 0 for an exact eigenpair) and
    info["converged"] (the tolerance was met before the cap).
    """
    if iters < 1:
        raise ValueError(f"iters must be at least 1, got {iters}")
    pairs = _labelled(_pairs(batches, model))
    parameters = _parameters(model)
    vector = _random_like(parameters, torch.Generator().manual_seed(seed))
    eigenvalue, converged, iterations = None, False, 0
    with _eval_mode(model):
        while iterations < iters and not converged:
            iterations += 1
            norm = math.sqrt(_dot(vector, vector))
            unit = [v / norm for v in vector]
            product = _hessian_vector_product(model, loss_fn, pairs, parameters, unit)
            estimate = _dot(unit, product)  # Rayleigh quotient of the unit vector
            vector = product
            converged = eigenvalue is not None and abs(estimate - eigenvalue) <= tol * (abs(eigenvalue) + 1e-12)
            eigenvalue = estimate
    if not return_info:
        return eigenvalue
    residual = [h - eigenvalue * u for h, u in zip(product, unit, strict=True)]
    relative = math.sqrt(_dot(residual, residual)) / max(abs(eigenvalue), 1e-30)
    return eigenvalue, {"iterations": iterations, "residual": relative, "converged": converged}


def hessian_trace(model: torch.nn.Module, loss_fn: Callable, batches: Batches, samples: int = 20,
                  seed: int = 0, return_info: bool = False):
    """Hutchinson's estimate of the Hessian's trace (same loss and parameters as `hessian_top_eigenvalue`):
    the mean of v^T H v over `samples` Rademacher vectors v drawn with `seed`. Exact for a diagonal Hessian.

    return_info: return (value, info) with info["samples"] and info["stderr"], the standard error of the
    mean (sample std of the v^T H v over sqrt(samples); None for one sample).
    """
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    pairs = _labelled(_pairs(batches, model))
    parameters = _parameters(model)
    generator = torch.Generator().manual_seed(seed)
    quadratic_forms = []
    with _eval_mode(model):
        for _ in range(samples):
            vector = _random_like(parameters, generator, rademacher=True)
            quadratic_forms.append(_dot(vector, _hessian_vector_product(model, loss_fn, pairs, parameters, vector)))
    trace = sum(quadratic_forms) / samples
    if not return_info:
        return trace
    stderr = statistics.stdev(quadratic_forms) / math.sqrt(samples) if samples > 1 else None
    return trace, {"samples": samples, "stderr": stderr}


def filter_normalized_direction(model: torch.nn.Module, generator: torch.Generator) -> list[torch.Tensor]:
    """A Gaussian direction over the trainable parameters (drawn on the CPU from `generator`), each filter
    rescaled to the norm of the same filter of the weights (Li et al. 2018); zero for 1-D parameters
    (biases, BN weights and biases), as Li et al.'s `ignore='biasbn'`."""
    parameters = _parameters(model)
    direction = []
    for p, d in zip(parameters, _random_like(parameters, generator), strict=True):
        if p.dim() <= 1:
            d = torch.zeros_like(p)
        else:
            filter_norms = p.detach().flatten(1).norm(dim=1) / (d.flatten(1).norm(dim=1) + 1e-10)
            d = d * filter_norms.view(-1, *[1] * (p.dim() - 1))
        direction.append(d)
    return direction


@torch.no_grad()
def _loss_surface(model, loss_fn, batches, directions, grid) -> list[float]:
    """The mean loss at w + sum_i grid[j][i] directions[i] for each j; the weights restored after."""
    pairs = _labelled(_pairs(batches, model))
    parameters = _parameters(model)
    original = [p.detach().clone() for p in parameters]
    losses = []
    with _eval_mode(model):
        try:
            for steps in grid:
                for p, w, *offsets in zip(parameters, original, *directions, strict=True):
                    p.copy_(w)
                    for step, d in zip(steps, offsets, strict=True):
                        if step:  # w + 0 d is w exactly: distance 0 is the checkpoint itself
                            p.add_(d, alpha=step)
                losses.append(float(_mean_loss(model, loss_fn, pairs)))
        finally:
            for p, w in zip(parameters, original, strict=True):
                p.copy_(w)
    return losses


def loss_landscape_1d(model: torch.nn.Module, loss_fn: Callable, batches: Batches,
                      alphas: Sequence[float] = tuple(i / 10 for i in range(-10, 11)), seed: int = 0) -> list[float]:
    """Mean loss over `batches` at w + a d for each a of `alphas`, d = `filter_normalized_direction` drawn
    from `seed` (the first direction of `loss_landscape_2d` with the same seed: its b = 0 row)."""
    direction = filter_normalized_direction(model, torch.Generator().manual_seed(seed))
    return _loss_surface(model, loss_fn, batches, [direction], [(a,) for a in alphas])


def loss_landscape_2d(model: torch.nn.Module, loss_fn: Callable, batches: Batches,
                      alphas: Sequence[float] = tuple(i / 5 for i in range(-5, 6)),
                      betas: Sequence[float] | None = None, seed: int = 0) -> list[list[float]]:
    """Mean loss at w + a d1 + b d2: rows b in `betas` (default: `alphas`), columns a in `alphas`; d1 and
    d2 two filter-normalised directions drawn one after the other from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    directions = [filter_normalized_direction(model, generator) for _ in range(2)]
    betas = alphas if betas is None else betas
    losses = _loss_surface(model, loss_fn, batches, directions, [(a, b) for b in betas for a in alphas])
    return [losses[i * len(alphas):(i + 1) * len(alphas)] for i in range(len(betas))]


# ----------------------------------------------------------------------------------------------------
# Grad-CAM


def grad_cam(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor,
             hook_point: int | None = None) -> torch.Tensor:
    """(B, h, w) Grad-CAM maps at `hook_point` (default: the last, i.e. the last stage's output) for the
    logits of `targets`, at the hook point's resolution, in eval mode: ReLU(sum_c a_c A_c) with a_c the mean
    over h x w of d logit / d A_c. Upsample for display (`F.interpolate`)."""
    hook_point = model.num_hook_points if hook_point is None else hook_point
    if not 1 <= hook_point <= model.num_hook_points:
        raise ValueError(f"hook_point must lie in 1..{model.num_hook_points}, got {hook_point}")
    device = _device_of(model, images.device)
    images, targets = images.to(device), torch.as_tensor(targets, device=device)
    captured = {}

    def capture(features: torch.Tensor, k: int) -> torch.Tensor:
        if k == hook_point:
            # a leaf from here on: the gradient stops at the maps, nothing flows into earlier layers
            features = features.detach().requires_grad_(True)
            captured["maps"] = features
        return features

    with _eval_mode(model), torch.enable_grad():
        logits = model(images, feature_hook=capture)
        # samples do not interact in eval mode, so one backward of the summed scores gives each its own
        (gradient,) = torch.autograd.grad(logits.gather(1, targets.view(-1, 1)).sum(), captured["maps"])
    maps = captured["maps"].detach()
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * maps).sum(dim=1))
