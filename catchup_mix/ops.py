"""The mixing operations themselves: pure functions on tensors, no state, no model.

`catchup_mix_features` is the Catch-up Mix channel mix (method.md, step 4). The other functions are
the pieces every mixing method shares: the mixed target and its two losses, input Mixup and the CutMix box.

A partner permutation `perm` may live on the CPU (checked to be a permutation, at no device cost) or on the
features' device (trusted as it is: checking it there would make the GPU wait for the CPU).
"""

import math

import torch
import torch.nn.functional as F

SELECTIONS = ("low", "high", "random")
RFI_MODES = ("relative", "absolute")
LOSSES = ("ce", "softmax_bce")


def catchup_mix_features(
    features: torch.Tensor,
    lam: float,
    perm: torch.Tensor,
    selection: str = "low",
    rfi: str = "relative",
    generator: torch.Generator | None = None,
    ranked_by: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mix each sample's feature maps with its partner's, channel by channel.

    Sample i keeps its own map in the floor(lam * C) channels where its relative filter influence
    RFI_i[c] = n_i[c] / sum(n_i) - n_j[c] / sum(n_j) is lowest (n = l2 norm of a map, j = perm[i]),
    and takes partner j's map in the other channels. `selection="high"` keeps the highest-RFI
    channels instead and `"random"` a uniformly random set (ablations); `rfi="absolute"` drops the
    normalisation by the sum. Gradients flow into both samples' maps; the ranking has none.

    features: (B, C, H, W); lam: in [0, 1]; perm: (B,) permutation of range(B), on any device.
    ranked_by: (B, C, h, w) maps whose norms rank the channels instead of the features' own (this project's
    variant, docs/method.md: what the next conv sees of the features); the features are what is mixed.
    """
    _check_mix_arguments(features, lam, perm)
    if selection not in SELECTIONS:
        raise ValueError(f"unknown selection {selection!r}; use one of {SELECTIONS}")
    if rfi not in RFI_MODES:
        raise ValueError(f"unknown rfi {rfi!r}; use one of {RFI_MODES}")
    batch, channels = features.shape[:2]
    if ranked_by is not None and ranked_by.shape[:2] != features.shape[:2]:
        raise ValueError(f"ranked_by has shape {tuple(ranked_by.shape)}; it must have the features' batch and "
                         f"channels, {tuple(features.shape[:2])}")
    perm = perm.to(features.device, non_blocking=True)
    kept = math.floor(lam * channels)
    with torch.no_grad():
        if selection == "random":
            device = generator.device if generator is not None else features.device
            score = torch.rand(batch, channels, generator=generator, device=device)
            score = score.to(features.device, non_blocking=True)
        else:
            # norms accumulated in float32 (bf16 sums over H*W would reorder near-equal channels at random),
            # without a float32 copy of the features
            ranked = features if ranked_by is None else ranked_by
            norms = torch.linalg.vector_norm(ranked.detach().flatten(2), dim=2, dtype=torch.float32)
            if rfi == "relative":
                norms = norms / norms.sum(dim=1, keepdim=True).clamp_min(1e-12)
            influence = norms - norms[perm]
            score = influence if selection == "low" else -influence
        # rank[b, c] = position of channel c when sample b's channels are sorted by ascending score.
        rank = score.argsort(dim=1, stable=True).argsort(dim=1)
        keep_own = (rank < kept)[:, :, None, None]
    return torch.where(keep_own, features, features[perm])


def mixed_targets(targets_a: torch.Tensor, targets_b: torch.Tensor, lam, num_classes: int) -> torch.Tensor:
    """The references' `target_reweighted`: lam * onehot(targets_a) + (1 - lam) * onehot(targets_b).

    lam: a float, or a (B,) tensor of per-sample weights (PuzzleMix-style masks). Returns (B, num_classes).
    """
    one_hot_a = _one_hot(targets_a, num_classes)
    if isinstance(lam, int | float) and lam == 1:
        return one_hot_a
    one_hot_b = _one_hot(targets_b, num_classes)
    if isinstance(lam, torch.Tensor):
        lam = lam.to(one_hot_a.device, torch.float32, non_blocking=True).reshape(-1, 1)
    return torch.lerp(one_hot_b, one_hot_a, lam)


def _one_hot(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    # scatter, not F.one_hot: on a GPU F.one_hot may check its labels on the CPU, making the GPU wait
    return torch.zeros(len(targets), num_classes, device=targets.device).scatter_(1, targets[:, None], 1.0)


def soft_target_loss(logits: torch.Tensor, targets: torch.Tensor, loss: str = "ce",
                     label_smoothing: float = 0.0) -> torch.Tensor:
    """The training loss against a (B, num_classes) target distribution, averaged over the batch.

    loss="ce": cross-entropy, -sum_c t_c log softmax(logits)_c; with mixed targets it equals
    lam * CE(y_a) + (1 - lam) * CE(y_b). loss="softmax_bce": binary cross-entropy of the softmax output
    against the target, averaged over batch AND classes, as PuzzleMix and Co-Mixup train every method
    (`nn.BCELoss()(softmax(output), target_reweighted)`). label_smoothing mixes the target with the
    uniform distribution first.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; use one of {LOSSES}")
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must have one shape")
    if label_smoothing:
        targets = targets * (1 - label_smoothing) + label_smoothing / targets.shape[1]
    if loss == "ce":
        return F.cross_entropy(logits, targets)
    return F.binary_cross_entropy(F.softmax(logits, dim=1), targets)


def mixed_cross_entropy(
    logits: torch.Tensor,
    targets_a: torch.Tensor,
    targets_b: torch.Tensor,
    lam,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """lam * CE(logits, targets_a) + (1 - lam) * CE(logits, targets_b), averaged over the batch.

    lam: a float or a (B,) tensor of per-sample weights.
    """
    targets = mixed_targets(targets_a, targets_b, lam, logits.shape[1])
    return soft_target_loss(logits, targets, "ce", label_smoothing)


def mixup(inputs: torch.Tensor, lam: float, perm: torch.Tensor) -> torch.Tensor:
    """Input or Manifold Mixup: the convex combination lam * x + (1 - lam) * x[perm]."""
    _check_mix_arguments(inputs, lam, perm)
    return torch.lerp(inputs[perm.to(inputs.device, non_blocking=True)], inputs, lam)


def cutmix(
    images: torch.Tensor, lam: float, perm: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, float]:
    """CutMix: paste a box of area about (1 - lam) from x[perm] into x.

    The box is drawn as in the CutMix paper's code (and timm's `rand_bbox`): centre uniform over the
    image, sides sqrt(1 - lam) * H and W, clipped at the border. Returns the mixed images and lam
    recomputed from the box actually pasted, which is the label weight to use.
    """
    _check_mix_arguments(images, lam, perm)
    height, width = images.shape[-2:]
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    centre_y = int(torch.randint(height, (1,), generator=generator))
    centre_x = int(torch.randint(width, (1,), generator=generator))
    y0, y1 = max(centre_y - cut_h // 2, 0), min(centre_y + cut_h // 2, height)
    x0, x1 = max(centre_x - cut_w // 2, 0), min(centre_x + cut_w // 2, width)
    mixed = images.clone()
    mixed[:, :, y0:y1, x0:x1] = images[perm.to(images.device, non_blocking=True), :, y0:y1, x0:x1]
    return mixed, 1.0 - (y1 - y0) * (x1 - x0) / (height * width)


def _check_mix_arguments(tensor: torch.Tensor, lam: float, perm: torch.Tensor) -> None:
    if tensor.dim() != 4:
        raise ValueError(f"expected a 4-D (B, C, H, W) tensor, got shape {tuple(tensor.shape)}")
    if not 0.0 <= float(lam) <= 1.0:
        raise ValueError(f"lam must lie in [0, 1], got {float(lam)}")
    batch = tensor.shape[0]
    if perm.dim() != 1 or perm.numel() != batch:
        raise ValueError(f"perm must have shape ({batch},) to match the batch, got {tuple(perm.shape)}")
    if perm.dtype.is_floating_point or perm.dtype == torch.bool:
        raise ValueError(f"perm must hold integer indices, got dtype {perm.dtype}")
    # A partner index used twice would silently mix one sample into two others: refuse it. Checked on a
    # CPU perm only; a perm already on the GPU is trusted (see the module docstring).
    if perm.device.type == "cpu" and not torch.equal(perm.sort().values, torch.arange(batch)):
        raise ValueError("perm must be a permutation of range(batch size), e.g. torch.randperm(batch)")
