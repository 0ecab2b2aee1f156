"""Labelings of small grids: PuzzleMix's mask (an exact minimum cut) and Co-Mixup's batch mask.

Both originals call gco-wrapper's alpha-beta swap, an approximation, once per sample or per output.
Here:

- `grid_labels` minimises PuzzleMix's multi-label energy exactly, for the whole batch in one maximum-flow
  call: the pairwise term w_pq (l_p - l_q)^2 is convex in the label difference, so the energy is
  representable by a graph whose minimum cut is a global minimum (Ishikawa, "Exact optimization for Markov
  random fields with convex priors", TPAMI 2003). `grid_labels_gco` solves the same energy with
  gco-wrapper (`pip install catchup-mix[graphcut]`), as the original does.
- `comixup_masks` runs Co-Mixup's iterative minimisation of its batch objective (saliency, smoothness,
  supermodular label diversity made modular one output at a time). Each output's labelling is found by
  expansion moves, every move solved exactly by dynamic programming over the 2^side states of a grid row.

Everything here runs on the CPU in numpy float64: the callers move their small cost arrays to the
CPU once per batch (one host-device synchronisation, as the originals' `.cpu().numpy()` for gco) and the
result back with non_blocking=True. tests/test_baselines.py checks both solvers against exhaustive search.
"""

import numpy as np
from scipy.sparse import csr_array
from scipy.sparse.csgraph import breadth_first_order, maximum_flow

# scipy's maximum flow takes int32 capacities: each problem's finite capacities are scaled to sum to at most
# 2^29, so any cut of finite edges stays below the "infinite" capacity that keeps a cell's label chain whole.
INFINITE = 2**30
FINITE_TOTAL = 2**29


def grid_energy(labels, unary, weight_down, weight_right) -> np.ndarray:
    """E(l) = sum_p unary[p, l_p] + sum_{p~q} w_pq (l_p - l_q)^2 / (L - 1)^2 for each of N grids.

    labels: (N, H, W) ints in [0, L); unary: (N, H, W, L); weight_down: (N, H-1, W), the weight of the edge
    between (h, w) and (h+1, w); weight_right: (N, H, W-1), between (h, w) and (h, w+1). Returns (N,).
    """
    labels, unary = np.asarray(labels), np.asarray(unary, np.float64)
    scale = max(unary.shape[-1] - 1, 1) ** 2
    data = np.take_along_axis(unary, labels[..., None], -1)[..., 0].sum((1, 2))
    down = (np.asarray(weight_down) * np.diff(labels, axis=1) ** 2).sum((1, 2)) / scale
    right = (np.asarray(weight_right) * np.diff(labels, axis=2) ** 2).sum((1, 2)) / scale
    return data + down + right


def _check_grid(unary, weight_down, weight_right):
    unary = np.asarray(unary, np.float64)
    weight_down, weight_right = np.asarray(weight_down, np.float64), np.asarray(weight_right, np.float64)
    if unary.ndim != 4:
        raise ValueError(f"unary must be (N, H, W, L), got shape {unary.shape}")
    n, h, w, _ = unary.shape
    if weight_down.shape != (n, h - 1, w) or weight_right.shape != (n, h, w - 1):
        raise ValueError(f"edge weights must be (N, H-1, W) and (N, H, W-1) for unary {unary.shape}, got "
                         f"{weight_down.shape} and {weight_right.shape}")
    if not (np.isfinite(unary).all() and np.isfinite(weight_down).all() and np.isfinite(weight_right).all()):
        raise ValueError("grid costs must be finite")
    if (weight_down < 0).any() or (weight_right < 0).any():
        raise ValueError("edge weights must be >= 0: a negative weight makes the energy non-submodular, "
                         "which no minimum cut can solve")
    return unary, weight_down, weight_right


def grid_labels(unary, weight_down, weight_right) -> np.ndarray:
    """The exact minimiser of `grid_energy` on each of N grids (ties broken consistently, deterministic).

    Construction: L - 1 binary nodes per cell, x_t = [label >= t]; x_t = 1 pays unary[t] - unary[t-1];
    an infinite edge keeps x_{t+1} <= x_t; and for neighbours p, q and thresholds s >= t an edge
    x_s^p -> x_t^q (and x_s^q -> x_t^p) of capacity w_pq h(s - t), with h(0) = 1 and h(k > 0) = 2 in units of
    1 / (L - 1)^2, the second differences of d^2. All N grids form one graph; each grid's capacities are
    scaled to integers on their own, so precision does not depend on the batch.
    """
    unary, weight_down, weight_right = _check_grid(unary, weight_down, weight_right)
    n, h, w, num_labels = unary.shape
    if num_labels == 1:
        return np.zeros((n, h, w), np.int64)
    thresholds = num_labels - 1
    node = 2 + np.arange(n * h * w * thresholds).reshape(n, h, w, thresholds)  # 0 = source, 1 = sink
    pieces = []  # (tail, head, capacity), each of shape (N, ...): the problem index comes first

    step = np.diff(unary, axis=-1)  # cost of x_t = 1 given x_{t-1} = 1
    pieces.append((np.where(step >= 0, node, 0), np.where(step >= 0, 1, node), np.abs(step)))
    unit = 1.0 / thresholds**2
    for p_nodes, q_nodes, weight in ((node[:, :-1], node[:, 1:], weight_down),
                                     (node[:, :, :-1], node[:, :, 1:], weight_right)):
        for s in range(thresholds):
            for t in range(s + 1):
                capacity = weight * unary.dtype.type(unit if s == t else 2 * unit)
                pieces.append((p_nodes[..., s], q_nodes[..., t], capacity))
                pieces.append((q_nodes[..., s], p_nodes[..., t], capacity))

    tails = np.concatenate([p[0].reshape(n, -1) for p in pieces], axis=1)
    heads = np.concatenate([p[1].reshape(n, -1) for p in pieces], axis=1)
    capacity = np.concatenate([np.broadcast_to(p[2], p[0].shape).reshape(n, -1) for p in pieces], axis=1)
    scale = FINITE_TOTAL / np.maximum(capacity.sum(axis=1, keepdims=True), 1e-300)
    capacity = np.floor(capacity * scale).astype(np.int64)
    if thresholds > 1:
        chain = (node[..., 1:].ravel(), node[..., :-1].ravel())
        tails = np.concatenate([tails.ravel(), chain[0]])
        heads = np.concatenate([heads.ravel(), chain[1]])
        capacity = np.concatenate([capacity.ravel(), np.full(chain[0].size, INFINITE)])
    keep = capacity.ravel() > 0
    size = 2 + node.size
    graph = csr_array((capacity.ravel()[keep].astype(np.int32), (tails.ravel()[keep], heads.ravel()[keep])),
                      shape=(size, size))
    flow = maximum_flow(graph, 0, 1, method="dinic").flow
    residual = (graph - flow).tocsr()
    residual.data[residual.data < 0] = 0
    residual.eliminate_zeros()
    source_side = np.zeros(size, bool)
    source_side[breadth_first_order(residual, 0, directed=True, return_predecessors=False)] = True
    return source_side[node].sum(-1).astype(np.int64)


def grid_labels_gco(unary, weight_down, weight_right, precision: float = 1e6) -> np.ndarray:
    """The same energy solved by gco-wrapper's alpha-beta swap, as PuzzleMix's `graphcut_multi` does.

    An approximation (a local minimum for swap moves) on integer costs: gco takes int32, so each grid's costs
    are multiplied by precision / (sum of its absolute costs) and truncated, as the original truncates
    `large_val * cost`. Needs `pip install catchup-mix[graphcut]`.
    """
    try:
        import gco
    except ImportError as error:
        raise ImportError("the gco graph cut needs gco-wrapper: pip install catchup-mix[graphcut] "
                          "(or use the built-in exact solver, graph_cut='exact')") from error
    unary, weight_down, weight_right = _check_grid(unary, weight_down, weight_right)
    num_labels = unary.shape[-1]
    levels = np.arange(num_labels)
    pairwise = ((levels[:, None] - levels[None, :]) ** 2).astype(np.int32)
    labels = []
    for u, down, right in zip(unary, weight_down, weight_right, strict=True):
        u = u - u.min(-1, keepdims=True)  # shifting a cell's costs changes no minimiser, keeps int32 ranges small
        scale = precision / max(np.abs(u).sum() + down.sum() + right.sum(), 1e-300)
        pair_scale = scale / max(num_labels - 1, 1) ** 2
        labels.append(gco.cut_grid_graph((u * scale).astype(np.int32), pairwise,
                                         (down * pair_scale).astype(np.int32), (right * pair_scale).astype(np.int32),
                                         algorithm="swap").reshape(u.shape[:2]))
    return np.stack(labels).astype(np.int64)


# ----------------------------------------------------------------------------------------------------
# Co-Mixup


def comixup_objective(cost, mask, beta: float, gamma: float) -> np.ndarray:
    """Co-Mixup's batch objective (its `obj_fn`), one value per partition.

    cost: (P, n, H, W), the cost of showing input i at a cell (minus its saliency, plus the prior);
    mask: (P, n_out, H, W, n), the share of each input at each cell of each output. The terms: sum of costs
    shown; beta/2 * squared differences of neighbouring cells' mask vectors (beta per label change);
    gamma * sum over pairs of different outputs of the overlap of their label counts (the supermodular
    diversity term). beta and gamma as the caller scales them (the original divides both by H * W).
    """
    data = np.einsum("pihw,pohwi->p", cost, mask)
    smooth = (np.diff(mask, axis=2) ** 2).sum((1, 2, 3, 4)) + (np.diff(mask, axis=3) ** 2).sum((1, 2, 3, 4))
    counts = mask.sum((2, 3))  # (P, n_out, n)
    overlap = (counts.sum(1) ** 2).sum(-1) - (counts**2).sum((1, 2))
    return data + beta / 2 * smooth + gamma * overlap


def labelling_energy(unary, pairwise, labels) -> np.ndarray:
    """sum_p unary[l_p, p] + sum_{p~q} pairwise[l_p, l_q] for (N, K, H, W) unary, (N, K, K) pairwise."""
    batch = np.arange(len(labels))[:, None, None]
    data = np.take_along_axis(unary, labels[:, None], 1).sum((1, 2, 3))
    down = pairwise[batch, labels[:, :-1], labels[:, 1:]].sum((1, 2))
    right = pairwise[batch, labels[:, :, :-1], labels[:, :, 1:]].sum((1, 2))
    return data + down + right


def expansion_moves(unary, pairwise, labels):
    """For every label a, the best expansion move from `labels`: each cell keeps its label or takes a.

    unary: (N, K, H, W) cost of label k at each cell; pairwise: (N, K, K) symmetric cost of neighbouring
    labels, zero on the diagonal; labels: (N, H, W). A move is a binary labelling of the grid, solved exactly
    for any pairwise table (metric or not) by dynamic programming over rows: a row has 2^W states, the
    transition between rows costs the vertical pairs. Returns (energy (N, K) of the best move for each a,
    switch (N, K, H, W) bool: the cells that take a).
    """
    n, k = unary.shape[:2]
    grid, label = np.repeat(np.arange(n), k), np.tile(np.arange(k), n)
    energy, switch = _best_moves(unary, pairwise, labels, grid, label)
    return energy.reshape(n, k), switch.reshape(n, k, *switch.shape[1:])


def _best_moves(unary, pairwise, labels, grid, label):
    """`expansion_moves` for the M moves (grid[m], label[m]) only: (energy (M,), switch (M, H, W) bool)."""
    h, w = unary.shape[2:]
    if w > 6:
        raise ValueError(f"the exact move solver enumerates the 2^{w} states of a grid row; grids at most 6 "
                         "cells wide are supported (Co-Mixup's block_num <= 6; its CIFAR and Tiny-ImageNet "
                         "commands use 4)")
    states = 2**w
    bits = ((np.arange(states)[:, None] >> np.arange(w)) & 1).astype(unary.dtype)  # (S, W): cell c switches
    current = labels[grid]  # (M, H, W)
    keep = np.take_along_axis(unary, labels[:, None], 1)[:, 0][grid]  # (M, H, W): cost of the current labels
    row_cost = keep.sum(-1)[..., None] + _times(unary[grid, label] - keep, bits.T)  # (M, H, S)

    # A pair p, q costs V(l_p, l_q), V(l_p, a), V(a, l_q) or V(a, a) = 0 for switch bits (b_p, b_q), that is
    # kk + (ak - kk) b_p + (ka - kk) b_q + (kk - ka - ak) b_p b_q.
    move = np.arange(len(grid))[:, None, None]
    to_label = pairwise[grid[:, None, None], current, label[:, None, None]]  # (M, H, W): V(l_p, a)
    table = pairwise[grid]  # (M, K, K)

    def pair_terms(first, second, first_to, second_to):
        both_keep = table[move, first, second]
        return both_keep, second_to - both_keep, first_to - both_keep, both_keep - first_to - second_to

    if w > 1:
        const, lone_p, lone_q, joint = pair_terms(current[:, :, :-1], current[:, :, 1:], to_label[..., :-1],
                                                  to_label[..., 1:])
        basis = np.concatenate([bits[:, :-1], bits[:, 1:], bits[:, :-1] * bits[:, 1:]], axis=1)
        row_cost += const.sum(-1)[..., None] + _times(np.concatenate([lone_p, lone_q, joint], -1), basis.T)
    total = row_cost[:, 0]
    back = []
    if h > 1:
        const, lone_above, lone_below, joint = pair_terms(current[:, :-1], current[:, 1:], to_label[:, :-1],
                                                          to_label[:, 1:])
        below = const.sum(-1)[..., None] + _times(lone_below, bits.T)  # (M, H-1, S)
        above = _times(lone_above, bits.T)
        both = (bits[:, None, :] * bits[None, :, :]).reshape(states * states, w)  # both rows switch cell c
        pair_joint = _times(joint, both.T).reshape(*joint.shape[:2], states, states)  # (M, H-1, S_below, S_above)
        rows = np.arange(len(grid) * states)
        for row in range(1, h):
            candidates = (total + above[:, row - 1])[:, None, :] + pair_joint[:, row - 1]
            best = candidates.argmin(-1)  # (M, S_below); then a gather, much faster than numpy's min over 2^W
            back.append(best)
            lowest = candidates.reshape(-1, states)[rows, best.ravel()].reshape(best.shape)
            total = lowest + row_cost[:, row] + below[:, row - 1]
    moves = np.arange(len(grid))
    state = total.argmin(-1)
    energy = total[moves, state]
    chosen = [state]
    for argmin in reversed(back):
        state = argmin[moves, state]
        chosen.append(state)
    return energy, bits[np.stack(chosen[::-1], axis=-1)].astype(bool)


def _times(x, matrix):
    """x (..., D) @ matrix (D, E) as one matrix product (numpy would loop over x's leading axes)."""
    return (x.reshape(-1, x.shape[-1]) @ matrix).reshape(*x.shape[:-1], matrix.shape[-1])


def expansion_labels(unary, pairwise, labels=None, tolerance: float = 1e-12) -> np.ndarray:
    """A labelling that no single expansion move improves (the local minima alpha-expansion reaches).

    Starts from `labels` (default: each cell's cheapest label), then repeatedly applies, per grid, the best
    of all expansion moves (`expansion_moves`) while it lowers the energy. Every step is exact, so the energy
    only falls; gco's alpha-beta swap in the original stops at a swap-local minimum. pairwise must be >= 0:
    then a move to label a costs at least sum_p min(unary[current label], unary[a]), and the moves that
    bound rules out (most of them, in Co-Mixup) are not evaluated; the result is the same as evaluating all.
    """
    if (np.asarray(pairwise) < 0).any():
        raise ValueError("expansion_labels: pairwise costs must be >= 0")
    n, k = unary.shape[:2]
    grids = np.arange(n)
    labels = unary.argmin(1) if labels is None else labels
    energy = labelling_energy(unary, pairwise, labels)
    for _ in range(2 * k):
        target = energy - tolerance * np.maximum(np.abs(energy), 1.0)  # what a move must beat to be taken
        bound = np.minimum(unary, np.take_along_axis(unary, labels[:, None], 1)).sum((2, 3))  # (N, K)
        grid, label = np.nonzero(bound < target[:, None])
        if not grid.size:
            break
        move_energy, switch = _best_moves(unary, pairwise, labels, grid, label)
        energies = np.full((n, k), np.inf)
        energies[grid, label] = move_energy
        best = energies.argmin(1)
        better = energies[grids, best] < target
        if not better.any():
            break
        index = np.zeros((n, k), np.int64)
        index[grid, label] = np.arange(len(grid))
        take = switch[index[grids, best]] & better[:, None, None]
        labels = np.where(take, best[:, None, None], labels)
        energy = np.where(better, energies[grids, best], energy)
    return labels


MIXED_PAIRS = ((0, 1), (0, 2), (1, 2))  # the extra labels of an output with >= 2 inputs: halves of two of its top 3


THRESHOLD_PENALTIES = ("original", "paper")


def diversity_penalty(compatibility, others, threshold: float, form: str = "original") -> np.ndarray:
    """Co-Mixup's hard-thresholded diversity penalty per input, p (P, n), from A (P, n, n) and the other
    outputs' label counts c (P, n): "original", ((A c > tau) * A) c as the original's `match.py` computes it
    (lines 224-227); "paper", the per-input [(A c)_i > tau] (A c)_i. See `comixup_masks`."""
    spread = np.einsum("pij,pj->pi", compatibility, others)  # A c
    if form == "original":  # the indicator of each input j scales A's column j, then the product with c
        return np.einsum("pij,pj->pi", compatibility, (spread > threshold) * others)
    return np.where(spread > threshold, spread, 0.0)


def comixup_masks(cost, compatibility, valid, init, beta: float = 0.32, gamma: float = 1.0,
                  threshold: float = 0.83, n_iter: int = 4, set_resolve: bool = True,
                  mix_bonus: float = 5e-4, threshold_penalty: str = "original") -> np.ndarray:
    """Co-Mixup's mask for each partition of a batch (snu-mllab/Co-Mixup `match.py`, `get_onehot_matrix`).

    cost: (P, n, H, W) per input and cell: minus the normalised saliency plus the prior; compatibility:
    (P, n, n), the matrix A of the diversity penalty; valid: (P, n) bool, False for the padding of a short
    last partition (n outputs per partition, as many as inputs); init: (P, n, H, W) random initial labels
    (of valid inputs). beta, gamma, threshold as the original's m_beta, m_gamma, m_thres (divided or
    multiplied by H * W here, as there). Returns the mask (P, n_out, H, W, n): the share of each input at
    each cell of each output (0, 1/2 or 1).

    Block-coordinate descent, as the original: each output in turn gets a labelling that lowers the
    objective with the others fixed (exactly its minimiser when the inner search finds the optimum), where
    the diversity term is made modular by the hard threshold. With c the other outputs' label counts and
    tau = threshold * cells, showing input i costs 2 gamma p_i per cell, where p depends on
    `threshold_penalty`:
    - "original" (default): p = ((A c > tau) * A) c, that is p_i = sum_j A_ij [(A c)_j > tau] c_j, what the
      original computes (`match.py` lines 224-227, `(A @ penalty.squeeze() > thres).float() * A @
      penalty.squeeze()`: `*` and `@` bind equally and from the left, so the indicator multiplies A's
      columns before the product with c). It produced the published numbers.
    - "paper": p_i = [(A c)_i > tau] (A c)_i, the per-input product the paper's thresholded penalty means.
    They differ only through A's off-diagonal entries (omega D): there the original charges an input below
    the threshold for the counts of the inputs above it, and an input above it only for those.
    From the second iteration on, an output that shows 2 or more inputs may also give a cell to half of
    two of its top-3 inputs (cost: the mean of theirs minus `mix_bonus`). After
    iteration n_iter - 2, outputs with the same input set are pushed apart (`set_resolve`). A partition
    stops when its objective changes by less than 1e-6 relative.
    Differences from the original: the pairwise cost of two labels is half the squared distance of their
    mask vectors, which is the objective's own smoothness term (the original's table puts 1 where that gives
    0.75 or 0.25 between two half-labels), and each output's labelling is an expansion-move local minimum
    found with exact moves (`expansion_labels`) instead of gco's swap moves.
    """
    if threshold_penalty not in THRESHOLD_PENALTIES:
        raise ValueError(f"unknown threshold_penalty {threshold_penalty!r}; use one of {', '.join(THRESHOLD_PENALTIES)}")
    cost = np.asarray(cost, np.float64)
    compatibility, valid, init = np.asarray(compatibility, np.float64), np.asarray(valid, bool), np.asarray(init)
    parts, n, h, w = cost.shape
    cells = h * w
    beta, gamma, threshold = beta / cells, gamma / cells, threshold * cells
    big = 1e6 * (1.0 + np.abs(cost).max())  # a cost no labelling pays: padding inputs, unused half-labels
    cost = np.where(valid[:, :, None, None], cost, big)
    mask = np.eye(n)[init] * valid[:, :, None, None, None]  # (P, n_out, H, W, n)
    counts = mask.sum((2, 3))  # (P, n_out, n)
    add_cost = np.zeros((parts, n, n))
    running = np.ones(parts, bool)
    previous = comixup_objective(cost, mask, beta, gamma)
    batch = np.arange(parts)
    base_masks = np.concatenate([np.eye(n), np.zeros((len(MIXED_PAIRS), n))])  # mask vector of each label
    for iteration in range(n_iter):
        for output in range(n):
            own = counts[:, output]
            penalty = 2 * gamma * diversity_penalty(compatibility, counts.sum(1) - own, threshold, threshold_penalty)
            unary = cost + (penalty + gamma * add_cost[:, output])[:, :, None, None]

            # half-labels: pairs of the output's top-3 inputs (in index order), from the second iteration on
            top = np.sort(np.argsort(-own, axis=-1, kind="stable")[:, :3], axis=-1)
            label_masks = np.repeat(base_masks[None], parts, axis=0)
            half_unary = np.full((parts, len(MIXED_PAIRS), h, w), big)
            for slot, (i, j) in enumerate(MIXED_PAIRS):
                if j >= top.shape[1]:
                    continue
                first, second = top[:, i], top[:, j]
                label_masks[batch, n + slot, first] = label_masks[batch, n + slot, second] = 0.5
                usable = (own[batch, first] > 0) & (own[batch, second] > 0) & (iteration > 0)
                half = (unary[batch, first] + unary[batch, second]) / 2 - mix_bonus
                half_unary[:, slot] = np.where(usable[:, None, None], half, big)
            # squared distances of the labels' mask vectors from their dot products (exact: entries 0, 1/2, 1)
            dots = label_masks @ label_masks.transpose(0, 2, 1)  # (P, K, K)
            norms = np.diagonal(dots, axis1=1, axis2=2)
            pairwise = beta * (norms[:, :, None] + norms[:, None] - 2 * dots) / 2
            unary = np.concatenate([unary, half_unary], axis=1)
            # after the random first pass, start from the output's current labelling (where a label expresses
            # it), so that no update raises the objective; other cells start at their cheapest label
            cell_dots = np.einsum("phwi,pki->phwk", mask[:, output], label_masks)
            cell_norms = (mask[:, output] ** 2).sum(-1)
            same = cell_norms[..., None] + norms[:, None, None] - 2 * cell_dots == 0  # (P, H, W, K)
            same &= (np.moveaxis(unary, 1, -1) < big) & (iteration > 0)
            labels = np.where(same.any(-1), same.argmax(-1), unary.argmin(1))
            labels = expansion_labels(unary, pairwise, labels)
            active = (running & valid[:, output])[:, None, None, None]
            mask[:, output] = np.where(active, label_masks[batch[:, None, None], labels], mask[:, output])
            counts[:, output] = mask[:, output].sum((1, 2))
        if set_resolve and iteration == n_iter - 2:
            add_cost = _separate_equal_sets(counts, valid)
        objective = comixup_objective(cost, mask, beta, gamma)
        running &= np.abs(previous - objective) >= 1e-6 * np.abs(objective)
        previous = objective
        if not running.any():
            break
    return mask


def _separate_equal_sets(counts, valid) -> np.ndarray:
    """The original's `resolve_label`: for two outputs that show the same set of (at least two) inputs, the
    first pays 1 (times gamma) more for its lowest input and the second for its second-lowest. (P, n, n)."""
    add_cost = np.zeros_like(counts)
    shown = (counts > 0) & valid[:, None, :]
    same = (shown[:, :, None] == shown[:, None]).all(-1) & valid[:, :, None] & valid[:, None, :]
    for part, first, second in np.argwhere(np.triu(same, 1)):
        inputs = np.flatnonzero(shown[part, first])
        if len(inputs) > 1:
            add_cost[part, first, inputs[0]] = 1.0
            add_cost[part, second, inputs[1]] = 1.0
    return add_cost
