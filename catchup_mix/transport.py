"""Transport on the device: PuzzleMix's saliency-discounted patch moves and AlignMixup's Sinkhorn plan.

Both are batched torch code on the inputs' device; the PuzzleMix assignment needs no host-device
synchronisation, Sinkhorn one per stopping test (after every iteration, as the original, or every
`check_every` iterations).
"""

import math

import torch


def grid_distances(side: int, device=None) -> torch.Tensor:
    """(side^2, side^2) squared distances between the cells of a side x side grid, divided by (side - 1)^2
    (PuzzleMix `mixup.py`, `cost_matrix`)."""
    rows, columns = torch.meshgrid(torch.arange(side, device=device), torch.arange(side, device=device),
                                   indexing="ij")
    cells = torch.stack([rows.flatten(), columns.flatten()], dim=1).float()
    return torch.cdist(cells, cells) ** 2 / max(side - 1, 1) ** 2


def greedy_assignment(cost: torch.Tensor, rounds: int) -> torch.Tensor:
    """PuzzleMix's approximate assignment of patches (rows) to locations (columns), batched.

    Each round every patch bids for its cheapest location; a location goes to its lowest bid (ties to the
    lowest patch index); each losing patch pays 1 more for the location it lost, so it bids elsewhere next
    round. After `rounds` rounds (the original runs as many as the grid side), location j receives the
    patch that won it in the last round, and a location nobody won keeps its own patch j.
    cost: (B, n, n), updated in place (pass a copy to keep it). Returns (B, n) long: the patch placed at
    each location.

    Two differences from the original `mask_transport`, where a location can also end up empty (its pixels
    zero): a location keeps its own patch instead, and the lowest bid wins even when it is positive (the
    original compares bids against the zeros of patches that did not bid, so such a location had no winner).
    """
    batch, n, _ = cost.shape
    patches = torch.arange(n, device=cost.device).expand(batch, n)
    winner = patches
    for _ in range(rounds):
        choice = cost.argmin(-1)  # (B, n) each patch's location
        bid = cost.gather(-1, choice.unsqueeze(-1)).squeeze(-1)
        lowest = torch.full_like(bid, float("inf")).scatter_reduce(-1, choice, bid, "amin")
        bidder = torch.where(bid == lowest.gather(-1, choice), patches, n)
        winner = torch.full_like(patches, n).scatter_reduce(-1, choice, bidder, "amin")  # n: no bid
        lost = winner.gather(-1, choice) != patches
        # each patch writes only its own chosen entry: a plain scatter, deterministic on the GPU too
        cost.scatter_(-1, choice.unsqueeze(-1), (bid + lost.to(cost.dtype)).unsqueeze(-1))
    return torch.where(winner < n, winner, patches)


def move_patches(images: torch.Tensor, source: torch.Tensor, side: int) -> torch.Tensor:
    """Rearrange the side x side patches of each image: patch source[b, j] goes to location j."""
    batch, channels, height, width = images.shape
    ph, pw = height // side, width // side
    patches = images.reshape(batch, channels, side, ph, side, pw).permute(0, 2, 4, 1, 3, 5)
    patches = patches.reshape(batch, side * side, channels, ph, pw)
    moved = patches.gather(1, source.view(batch, -1, 1, 1, 1).expand_as(patches))
    moved = moved.reshape(batch, side, side, channels, ph, pw).permute(0, 3, 1, 4, 2, 5)
    return moved.reshape(batch, channels, height, width)


def saliency_transport(images: torch.Tensor, shown: torch.Tensor, saliency: torch.Tensor, eps: float) -> torch.Tensor:
    """PuzzleMix's transport: move each image's salient patches into the cells where it is shown.

    images: (B, C, H, W); shown: (B, side, side) bool, where the mask shows this image; saliency:
    (B, side, side) of this image, summing to 1 per image. The cost of putting patch i at location j is
    eps * distance(i, j) - saliency_i * shown_j, assigned greedily with `side` rounds (PuzzleMix `mixup.py`,
    `mask_transport` and `transport_image`).
    """
    side = shown.shape[-1]
    distance = grid_distances(side, images.device)
    cost = eps * distance - saliency.flatten(1).unsqueeze(-1) * shown.flatten(1).unsqueeze(1).to(distance.dtype)
    return move_patches(images, greedy_assignment(cost, rounds=side), side)


def sinkhorn(cost: torch.Tensor, eps: float, max_iter: int = 100, threshold: float = 0.1,
             check_every: int = 1) -> torch.Tensor:
    """Entropic optimal transport between uniform marginals, in the log domain (AlignMixup `utils/OT.py`).

    cost: (B, n, m). Returns the plan (B, n, m) with rows summing to 1/n and columns to 1/m, minimising
    <plan, cost> - eps * entropy(plan): the plan of POT's `ot.sinkhorn(a, b, cost, reg=eps)`.
    Dual updates u_i = eps (log a_i - logsumexp_j (v_j - C_ij) / eps) and the same for v, as the original
    (kept here divided by eps). It stops once the batch mean of sum_i |u_i - u_i(previous)| falls below
    `threshold`, or after max_iter iterations. The original tests that after every iteration
    (`cifar10_100/utils/OT.py` line 59, `if err.item() < thresh: break`), the default here; each test makes the CPU wait for
    the GPU. `check_every=k` tests only after iterations k, 2k, ..., comparing u with the iteration just
    before, which can run up to k - 1 iterations past the original's stop and so give another plan.
    """
    if check_every < 1:
        raise ValueError(f"sinkhorn: check_every must be >= 1, got {check_every}")
    batch, n, m = cost.shape
    kernel = -cost / eps  # log of the Gibbs kernel
    log_a, log_b = -math.log(n), -math.log(m)
    f = torch.zeros(batch, n, 1, device=cost.device, dtype=cost.dtype)  # u / eps
    g = torch.zeros(batch, 1, m, device=cost.device, dtype=cost.dtype)  # v / eps
    for iteration in range(1, max_iter + 1):
        previous = f
        f = log_a - torch.logsumexp(kernel + g, dim=2, keepdim=True)
        g = log_b - torch.logsumexp(kernel + f, dim=1, keepdim=True)
        if iteration % check_every == 0 and eps * float((f - previous).abs().sum((1, 2)).mean()) < threshold:
            break
    return torch.exp(kernel + f + g)


def align_features(features: torch.Tensor, lam: float, perm: torch.Tensor, direction: int, eps: float = 0.1,
                   max_iter: int = 100, threshold: float = 0.1, check_every: int = 1) -> torch.Tensor:
    """AlignMixup's feature mix (AlignMixup_CVPR22 `cifar10_100/models/resnet18_classifier.py`, `mixup_aligned`).

    The H*W positions of a sample's feature map are points in R^C; the plan P between the sample's and its
    partner's points comes from `sinkhorn` on squared Euclidean costs (no gradient through it) and is
    scaled by H*W so its rows sum to 1. direction 0 aligns the partner to the sample,
    lam * A + (1 - lam) * A' P^T; direction 1 the sample to the partner, lam * A P + (1 - lam) * A'.
    Each aligned position is a convex combination of the other map's positions. features: (B, C, H, W).
    """
    batch, channels, height, width = features.shape
    own = features.flatten(2)  # (B, C, n)
    partner = own[perm.to(features.device, non_blocking=True)]
    with torch.no_grad():
        points, partner_points = own.float().transpose(1, 2), partner.float().transpose(1, 2)
        cost = torch.cdist(points, partner_points, compute_mode="donot_use_mm_for_euclid_dist") ** 2
        plan = (sinkhorn(cost, eps, max_iter, threshold, check_every) * (height * width)).to(features.dtype)
    if direction == 0:
        mixed = torch.lerp(partner @ plan.transpose(1, 2), own, lam)
    else:
        mixed = torch.lerp(partner, own @ plan, lam)
    return mixed.view(batch, channels, height, width)
