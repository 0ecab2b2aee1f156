"""The saliency- and transport-based baselines, behind the registry's one call.

    saliencymix   SaliencyMix (Uddin et al., ICLR 2021)
    puzzlemix     PuzzleMix (Kim, Choo and Song, ICML 2020)
    comixup       Co-Mixup (Kim et al., ICLR 2021)
    guidedmixup   GuidedMixup (Kang and Kim, AAAI 2023), spectral-residual variant
    alignmixup    AlignMixup (Venkataramanan et al., CVPR 2022)

Defaults follow each official repository; every class docstring says where each value comes from.
`catchup_mix/__init__.py` imports this module, so the methods are registered whenever
`catchup_mix.methods` is imported. PuzzleMix and Co-Mixup need the model (`needs_model = True`): their
saliency is an input gradient of the network being trained (`saliency.input_gradient`). Where a method
needs the CPU (the graph cuts: scipy max flow, Co-Mixup's labelling; SaliencyMix's OpenCV saliency), its
docstring says so; everything else runs on the inputs' device without host-device synchronisation.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from . import graphcut, ops, saliency, transport
from .methods import Method, MixedBatch, draw_beta, draw_partners, mix_at_layer, register, to_device


def _check_divisible(name: str, size: int, blocks: int, option: str) -> None:
    if size % blocks:
        raise ValueError(f"{name}: an image side of {size} px does not split into {blocks} blocks; "
                         f"choose {option} dividing the image size")


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each (H, W) map divided by its sum (all-zero maps stay zero)."""
    return maps / maps.sum((-2, -1), keepdim=True).clamp_min(torch.finfo(maps.dtype).tiny)


@register("saliencymix")
@dataclass(kw_only=True)
class SaliencyMix(Method):
    """A CutMix box centred on the most salient pixel of the partner image, pasted from the partner.

    lam ~ Beta(alpha, alpha); the box has sides int(H sqrt(1 - lam)) x int(W sqrt(1 - lam)) around the
    saliency peak, clipped at the border; the label weight is 1 - the box's share of the image.
    As the official code (afm-shahab-uddin/SaliencyMix `SaliencyMix_CIFAR/saliencymix.py`: `saliency_bbox`
    and the training loop, `saliency_bbox(images[rand_index[0]], lam)`), one box serves the whole batch:
    the peak of the first partner's map; `per_sample=True` centres each box on its own partner's peak.
    Defaults: alpha 1 and prob 0.5: `SaliencyMix_CIFAR/command.sh` line 19 (the CIFAR-100 ResNet-18
    command, `--beta 1.0 --salmix_prob 0.5`); `saliencymix.py` (at 9ee02b8) declares `--beta` (default 1)
    at line 43 and `--salmix_prob` (default 0.5) at line 45.

    saliency: the map whose peak centres the box.
    - "opencv_fine_grained": the original's. OpenCV's StaticSaliencyFineGrained on each image as the
      original's `saliency_bbox` hands it over (the normalised float32 image, channels last), then the
      argmax of the map scaled to 0..255 and truncated to uint8 (`(saliencyMap * 255).astype("uint8")`,
      `np.argmax`): `saliency.opencv_fine_grained`. It needs opencv-contrib (`pip install
      'catchup-mix[saliency]'`; without it `missing_extras` names the package, and training stops before it
      starts) and runs on the CPU (one host-device synchronisation per batch). The paper-scale plan of
      `python -m reproduce` sets it, so a run's config and run key say which map it used.
      Caveat, from OpenCV's source (`staticSaliencyFineGrained.cpp`): the detector expects 8-bit images;
      given float32 it reads the bytes of the float buffer as 8-bit pixels (`gray.at<uchar>`), so the
      map follows the floats' bit patterns more than the picture. Changing 20 pixels by one unit in the
      last place moves the peak across the image, and normalising with CIFAR-100's constants instead of
      the CIFAR-10 ones the original uses for both datasets (`saliencymix.py` lines 65-66) keeps the peak
      in 3 of 1,000 CIFAR-10 test images. This option runs the same procedure; it cannot give the
      original's peak pixel for pixel, since our inputs are normalised with the dataset's own constants.
    - "spectral_residual" (the default, dependency-free): `saliency.spectral_residual`, on the device.
      On 1,000 CIFAR-10 test images normalised as the original, its peak lies 16.5 px from the original's
      on average (two uniformly random pixels of 32 x 32: 16.7 px) and the boxes overlap with IoU 0.23 (a
      uniformly random centre: 0.22); it centres its peaks, where 41% of the original's lie in the top
      quarter of the image (README, "The saliency and transport baselines").
    """

    alpha: float = 1.0
    prob: float = 0.5
    per_sample: bool = False
    saliency: str = "spectral_residual"

    def __post_init__(self):
        super().__post_init__()
        if self.saliency not in SALIENCYMIX_MAPS:
            raise ValueError(f"saliencymix: unknown saliency {self.saliency!r}; use one of {', '.join(SALIENCYMIX_MAPS)}")
        self.host_sync = None
        if self.saliency == "opencv_fine_grained":
            self.host_sync = "OpenCV's saliency runs on the CPU: one wait per batch"

    @classmethod
    def missing_extras(cls, options: dict) -> list[str]:
        if options.get("saliency") != "opencv_fine_grained":
            return []
        try:
            saliency.opencv_saliency_module()
        except ImportError as error:
            return [f"saliencymix with saliency='opencv_fine_grained': {error} (or use "
                    "saliency='spectral_residual')"]
        return []

    def mix(self, inputs, targets, generator, model):
        batch, _, height, width = inputs.shape
        perm = to_device(draw_partners(batch, generator), inputs.device)
        cut = math.sqrt(1.0 - draw_beta(self.alpha, generator))
        half_h, half_w = int(height * cut) // 2, int(width * cut) // 2
        partners = inputs[perm]
        peak = SALIENCYMIX_MAPS[self.saliency](partners if self.per_sample else partners[:1]).flatten(1).argmax(1)
        top, bottom = (peak // width - half_h).clamp(0, height), (peak // width + half_h).clamp(0, height)
        left, right = (peak % width - half_w).clamp(0, width), (peak % width + half_w).clamp(0, width)
        rows = torch.arange(height, device=inputs.device)
        columns = torch.arange(width, device=inputs.device)
        box = (((rows >= top[:, None]) & (rows < bottom[:, None]))[:, :, None]
               & ((columns >= left[:, None]) & (columns < right[:, None]))[:, None, :])
        lam = 1.0 - ((bottom - top) * (right - left)).float() / (height * width)
        return MixedBatch(torch.where(box[:, None], partners, inputs), targets, targets[perm],
                          lam.expand(batch), layer=0)


# SaliencyMix's maps, each (B, C, H, W) -> (B, H, W), whose argmax (first maximum) is the box's centre
SALIENCYMIX_MAPS = {
    "spectral_residual": saliency.spectral_residual,
    # the original's uint8 map, `(saliencyMap * 255).astype("uint8")`: flooring in float32 gives its ties
    "opencv_fine_grained": lambda images: (saliency.opencv_fine_grained(images) * 255).floor(),
}


@register("puzzlemix")
@dataclass(kw_only=True)
class PuzzleMix(Method):
    """PuzzleMix: a mask over a block grid from a graph cut, then saliency-driven patch transport.

    Per batch: partners perm, lam ~ Beta(alpha, alpha), a grid of n x n blocks with n drawn from
    `block_nums`, and the saliency of each image (`saliency.input_gradient`: one forward and backward of
    the model, in eval mode, as the original without `clean_lam`). The mask gives each block a share
    m in {0, 1/(L-1), ..., 1} of the image itself (L = n_labels) minimising
      sum_p [m_p c_own(p) + (1 - m_p) c_partner(p) + prior(m_p)] + sum_{p~q} w_pq (m_p - m_q)^2,
    where showing one image at a block costs the other's normalised saliency there, prior(m) =
    eta / n^2 * -log Binomial(k; L - 1, lam) favours the share lam, and the smoothness weight
    w_pq = beta' (1 + gamma (d_01 + d_10 - d_00 - d_11) / 2), beta' = beta / n / 16, rewards cutting where
    the images fit (d_ab: the mean colour jump across the boundary when block p shows a and q shows b,
    half of each d also added to the two blocks' costs): PuzzleMix `mixup.py`, `mixup_graph` and
    `graphcut_multi`. The minimisation is exact (`graphcut.grid_labels`, scipy max flow on the CPU: one
    host-device synchronisation per batch); `graph_cut="gco"` uses gco-wrapper's alpha-beta swap as the
    original does. With `transport`, each image's salient patches move into the cells where it is shown
    (`transport.saliency_transport`, on the device). Label weight: each sample's mean mask, a (B,) tensor.

    Defaults: the README's CIFAR-100 command (`--mixup_alpha 1.0 --n_labels 3 --eta 0.2 --beta 1.2
    --gamma 0.5 --neigh_size 4 --transport True --t_size 4 --t_eps 0.8`); `main.py` has the same defaults
    (`--neigh_size` 4, `--n_labels` 3, `--beta` 1.2, `--gamma` 0.5, `--eta` 0.2, `--t_eps` 0.8, lines
    94-105) except `--t_size` -1 (line 106: transport at the mask's resolution), which its Tiny-ImageNet
    command keeps. `t_size=None` follows both commands: 4 px for images of at most 32 px, the block size above.
    Blocks: `block_num = 2**np.random.randint(1, 5)` in `mixup.py` `mixup_process`, so {2, 4, 8, 16}.
    Left out: the adversarial option (`--adv_p`) and `clean_lam` (training on the clean batch as well).
    Differences: the colour jumps d are measured on the batch rescaled to [0, 1] per channel (the original
    un-normalises with the dataset's mean and std, which a method does not see here); the neighbourhood
    size is gcd(neigh_size, block size) (the original's min() breaks when it does not divide the block);
    the transport keeps a location's own patch where the original's greedy assignment leaves it empty.
    """

    needs_model = True
    host_sync = "the graph cut of the mask runs on the CPU (as the original's gco does): one wait per batch"
    alpha: float = 1.0
    block_nums: tuple[int, ...] = (2, 4, 8, 16)
    n_labels: int = 3
    beta: float = 1.2
    gamma: float = 0.5
    eta: float = 0.2
    neigh_size: int = 4
    transport: bool = True
    t_eps: float = 0.8
    t_size: int | None = None
    graph_cut: str = "exact"

    def __post_init__(self):
        super().__post_init__()
        self.block_nums = tuple(int(n) for n in self.block_nums)
        if not self.block_nums or min(self.block_nums) < 1:
            raise ValueError(f"puzzlemix: block_nums must be positive ints, got {self.block_nums}")
        if self.n_labels < 2:
            raise ValueError(f"puzzlemix: n_labels must be >= 2, got {self.n_labels}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"puzzlemix: gamma must lie in [0, 1] (above 1 the smoothness weights can turn "
                             f"negative, which no graph cut can minimise), got {self.gamma}")
        if min(self.beta, self.eta, self.t_eps) < 0 or self.neigh_size < 1 or (self.t_size or 1) < 1:
            raise ValueError("puzzlemix: beta, eta and t_eps must be >= 0, neigh_size and t_size >= 1")
        if self.graph_cut not in ("exact", "gco"):
            raise ValueError(f"puzzlemix: unknown graph_cut {self.graph_cut!r}; use 'exact' or 'gco'")

    def mix(self, inputs, targets, generator, model):
        batch, _, height, width = inputs.shape
        if height != width:
            raise ValueError(f"puzzlemix: its block grids are square, as the original's; got {height}x{width} images")
        perm = to_device(draw_partners(batch, generator), inputs.device)
        lam = draw_beta(self.alpha, generator)
        blocks = self.block_nums[int(torch.randint(len(self.block_nums), (), generator=generator))]
        _check_divisible("puzzlemix", height, blocks, "block_nums")
        salient = saliency.input_gradient(model, inputs, targets)
        mask = self.block_mask(inputs, salient, perm, lam, blocks)  # (B, n, n): share of the image itself
        own, partner = inputs, inputs[perm]
        if self.transport:
            block = height // blocks
            t_size = min(self.t_size or (4 if height <= 32 else block), block)
            _check_divisible("puzzlemix", height, height // t_size, "t_size")
            side = height // t_size
            fine = F.interpolate(mask.unsqueeze(1), size=(side, side), mode="nearest").squeeze(1)
            cells = _normalise(F.adaptive_avg_pool2d(salient, side))
            own = transport.saliency_transport(own, fine > 0, cells, self.t_eps)
            partner = transport.saliency_transport(partner, fine < 1, cells[perm], self.t_eps)
        pixels = F.interpolate(mask.unsqueeze(1), size=(height, width), mode="nearest")
        return MixedBatch(torch.lerp(partner, own, pixels), targets, targets[perm], mask.mean((1, 2)), layer=0)

    def block_mask(self, inputs, salient, perm, lam, blocks) -> torch.Tensor:
        """The graph-cut mask (B, blocks, blocks) on the inputs' device, values k / (n_labels - 1)."""
        block = inputs.shape[-1] // blocks
        own_saliency = _normalise(F.avg_pool2d(salient.unsqueeze(1), block).squeeze(1))
        cost_own, cost_partner = own_saliency[perm].clone(), own_saliency.clone()  # showing one hides the other
        low, high = inputs.amin((0, 2, 3), keepdim=True), inputs.amax((0, 2, 3), keepdim=True)
        neigh = math.gcd(self.neigh_size, block)
        pooled = F.avg_pool2d((inputs - low) / (high - low).clamp_min(1e-12), neigh)
        beta = self.beta / blocks / 16
        weights = []
        for axis in (1, 2):  # each block and the one below it, then each block and the one to its right
            shown = {1: pooled, 0: pooled[perm]}  # 1: the sample itself, 0: its partner
            if axis == 2:
                shown = {key: value.transpose(2, 3) for key, value in shown.items()}
            jump = {(a, b): beta * self.gamma * _boundary_jump(shown[a], shown[b], block // neigh)
                    for a in (0, 1) for b in (0, 1)}
            if axis == 2:
                jump = {key: value.transpose(1, 2) for key, value in jump.items()}
            first = (slice(None),) * axis + (slice(None, -1),)  # the blocks before each boundary
            second = (slice(None),) * axis + (slice(1, None),)  # the blocks after it
            cost_own[first] += (jump[1, 0] + jump[1, 1]) / 2
            cost_partner[first] += (jump[0, 1] + jump[0, 0]) / 2
            cost_own[second] += (jump[0, 1] + jump[1, 1]) / 2
            cost_partner[second] += (jump[1, 0] + jump[0, 0]) / 2
            weights.append((beta + (jump[1, 0] + jump[0, 1] - jump[1, 1] - jump[0, 0]) / 2).clamp_min(0))
        levels = torch.linspace(0, 1, self.n_labels, device=inputs.device, dtype=cost_own.dtype)
        draws = self.n_labels - 1
        prior = torch.tensor([-math.log(math.comb(draws, k) * lam**k * (1 - lam) ** (draws - k) + 1e-8)
                              for k in range(self.n_labels)], device=inputs.device, dtype=cost_own.dtype)
        unary = levels * cost_own.unsqueeze(-1) + (1 - levels) * cost_partner.unsqueeze(-1) + \
            self.eta / blocks**2 * prior
        solve = graphcut.grid_labels if self.graph_cut == "exact" else graphcut.grid_labels_gco
        # the one host-device synchronisation: the graph cut runs on the CPU, as the original's gco
        labels = solve(*(tensor.detach().double().cpu().numpy() for tensor in (unary, *weights)))
        return torch.from_numpy(labels / draws).to(inputs.device, inputs.dtype, non_blocking=True)


def _boundary_jump(first: torch.Tensor, second: torch.Tensor, k: int) -> torch.Tensor:
    """Mean |colour jump| across each horizontal block boundary when `first` is shown above it and
    `second` below (PuzzleMix `neigh_penalty`): the last pooled row of the upper block against the first of
    the lower one, averaged over channels and over each block's k pooled columns. (B, n - 1, n)."""
    jump = (first[:, :, k - 1:-1:k] - second[:, :, k::k]).abs().mean(1)  # (B, n - 1, n * k)
    return jump.unflatten(-1, (-1, k)).mean(-1)


@register("comixup")
@dataclass(kw_only=True)
class CoMixup(Method):
    """Co-Mixup: each partition of the batch is remixed jointly into as many outputs as inputs.

    The batch is split into partitions of `part` samples; for each, `graphcut.comixup_masks` labels every
    cell of a block_num x block_num grid of every output with an input (or half of two), minimising
    minus the saliency shown (`saliency.input_gradient`, the model in eval mode) plus a Dirichlet(alpha)
    prior on the inputs' shares (eta), label smoothness (beta) and the supermodular penalty on outputs that
    show the same inputs (gamma, with threshold and the compatibility matrix A = (1 - omega) I + omega D,
    D the distance between the inputs' saliency peaks: Co-Mixup `main.py` and `mixup.py`). Output o is
    sum_i mask_oi * x_i and its target the same shares of the inputs' labels (`soft_targets`; targets_a,
    targets_b and lam summarise it by its two largest parts). The labelling runs on the CPU (one
    host-device synchronisation per batch, as the original's), the mixing on the device.

    Defaults: the README's CIFAR-100 and Tiny-ImageNet commands (`--m_part 20 --m_block_num 4
    --mixup_alpha 2.0 --m_beta 0.32 --m_gamma 1.0 --m_thres 0.83 --m_eta 0.05 --m_omega 0.001`), the same
    as `main.py`'s defaults (snu-mllab/Co-Mixup `main.py` at commit d8d1646, lines 86-112: `--m_block_num`
    86, `--m_part` 90, `--m_beta` 91, `--m_gamma` 92, `--m_thres` 93, `--m_thres_type` 97, `--m_eta` 102,
    `--mixup_alpha` 103, `--m_omega` 107, `--set_resolve` 108, `--m_niter` 112), with `--m_niter 4`,
    `--m_thres_type hard` and `--set_resolve True`; the 8 x 8 peak window and the l1 distance of A: `main.py`
    `train()`, `F.avg_pool2d(sc, kernel_size=8, stride=1)` and `distance(z_idx_2d, dist_type='l1')`.
    threshold_penalty: the hard threshold's modular penalty, "original" (default: what the original's
    `match.py` computes, lines 224-227, through operator precedence: ((A c > tau) * A) c) or "paper" (the
    per-input [(A c)_i > tau] (A c)_i); see `graphcut.comixup_masks`.
    Left out: `clean_lam` (the README's commands set 1.0: the clean batch's loss, weighted
    2 clean_lam / num_classes, is added to the training loss; not offered here), `--m_thres_type soft`
    and a random block_num (-1). Differences: see `graphcut.comixup_masks` (exact expansion moves, the
    objective's own pairwise costs); partitions whose peaks all coincide get A = I (the original divides by
    zero there); block_num is at most 6 (the exact moves enumerate 2^block_num row states).
    """

    needs_model = True
    host_sync = "the labelling of the batch's masks runs on the CPU (as the original's): one wait per batch"
    alpha: float = 2.0
    block_num: int = 4
    part: int = 20
    beta: float = 0.32
    gamma: float = 1.0
    threshold: float = 0.83
    eta: float = 0.05
    omega: float = 0.001
    n_iter: int = 4
    set_resolve: bool = True
    threshold_penalty: str = "original"

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.block_num <= 6:
            raise ValueError(f"comixup: block_num must lie in [1, 6], got {self.block_num}")
        if self.part < 2 or self.n_iter < 1:
            raise ValueError(f"comixup: part must be >= 2 and n_iter >= 1, got {self.part} and {self.n_iter}")
        if min(self.beta, self.gamma, self.eta) < 0 or not 0 <= self.omega <= 1:
            raise ValueError("comixup: beta, gamma and eta must be >= 0 and omega in [0, 1]")
        if self.threshold_penalty not in graphcut.THRESHOLD_PENALTIES:
            raise ValueError(f"comixup: unknown threshold_penalty {self.threshold_penalty!r}; use one of "
                             f"{', '.join(graphcut.THRESHOLD_PENALTIES)}")

    def mix(self, inputs, targets, generator, model):
        batch, _, height, width = inputs.shape
        _check_divisible("comixup", height, self.block_num, "block_num")
        _check_divisible("comixup", width, self.block_num, "block_num")
        # the one host-device synchronisation: the labelling runs on the CPU, as the original's gco
        salient = saliency.input_gradient(model, inputs, targets).detach().double().cpu()
        size = min(self.part, batch)
        parts = math.ceil(batch / size)
        index = torch.arange(parts * size).view(parts, size)
        valid = index < batch
        index = index.clamp(max=batch - 1)  # padding of a short last partition repeats the last sample
        cells = _normalise(F.adaptive_avg_pool2d(salient, self.block_num))[index]  # (P, n, grid, grid)
        compatibility = _peak_compatibility(salient, index, valid, self.omega)
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        rng = np.random.default_rng(seed)
        prior = np.zeros((parts, size))
        for p, count in enumerate(valid.sum(1).tolist()):
            prior[p, :count] = rng.dirichlet(np.full(count, self.alpha))
        cost = -cells.numpy() - self.eta / self.block_num**2 * np.log(prior + 1e-8)[:, :, None, None]
        uniform = torch.rand(parts, size, self.block_num, self.block_num, generator=generator, dtype=torch.float64)
        init = (uniform * valid.sum(1).view(-1, 1, 1, 1)).long().numpy()
        mask = graphcut.comixup_masks(cost, compatibility.numpy(), valid.numpy(), init, beta=self.beta,
                                      gamma=self.gamma, threshold=self.threshold, n_iter=self.n_iter,
                                      set_resolve=self.set_resolve, threshold_penalty=self.threshold_penalty)
        mask = torch.from_numpy(mask).to(inputs.device, inputs.dtype, non_blocking=True)  # (P, o, g, g, i)
        index = to_device(index, inputs.device)
        pixels = F.interpolate(mask.permute(0, 1, 4, 2, 3).flatten(0, 1), size=(height, width), mode="nearest")
        pixels = pixels.unflatten(0, (parts, size))  # (P, o, i, H, W)
        mixed = torch.einsum("poihw,pichw->pochw", pixels, inputs[index]).flatten(0, 1)[:batch]
        shares = mask.mean((2, 3)).flatten(0, 1)[:batch]  # (B, n): share of each partition input per output
        classes = targets[index].repeat_interleave(size, dim=0)[:batch]  # (B, n)
        top = shares.topk(min(2, size), dim=1)
        first, second = top.indices[:, 0], top.indices[:, -1]
        rows = torch.arange(batch, device=inputs.device)
        lam = top.values[:, 0] / (top.values[:, 0] + top.values[:, -1])
        return MixedBatch(mixed.contiguous(), classes[rows, first], classes[rows, second], lam, layer=0,
                          soft_targets=(classes, shares))


def _peak_compatibility(salient: torch.Tensor, index: torch.Tensor, valid: torch.Tensor, omega: float):
    """Co-Mixup's A = (1 - omega) I + omega D per partition (its `main.py`): D is the l1 distance between
    the inputs' saliency peaks (argmax of the map averaged over 8 x 8 windows), scaled to sum to n.
    A partition whose peaks all coincide gets D = I, where the original divides by zero. (P, n, n)."""
    peaks = F.avg_pool2d(salient.unsqueeze(1), min(8, *salient.shape[-2:]), stride=1).squeeze(1)
    peak = peaks.flatten(1).argmax(1)
    where = torch.stack([peak // peaks.shape[-1], peak % peaks.shape[-1]], dim=1)[index].double()
    pairs = valid.unsqueeze(2) & valid.unsqueeze(1)
    distance = (where.unsqueeze(2) - where.unsqueeze(1)).abs().sum(-1) * pairs
    total = distance.sum((1, 2), keepdim=True)
    identity = torch.eye(index.shape[1], dtype=distance.dtype)
    distance = torch.where(total > 0, distance / total.clamp_min(1e-12) * valid.sum(1).view(-1, 1, 1), identity)
    return (1 - omega) * identity + omega * distance


@register("guidedmixup")
@dataclass(kw_only=True)
class GuidedMixup(Method):
    """GuidedMixup with spectral-residual saliency (Guided-SR): pixel-wise mixing ratios from saliency.

    Each image's spectral-residual map (`saliency.spectral_residual`, blurred 7 x 7, sigma 3), blurred once
    more the same way and normalised to sum 1 (3neutronstar/GuidedMixup `mixup.py`, the `guided` branch);
    partners chosen greedily to be far apart in saliency: starting from the farthest pair, each sample takes
    the farthest (l2 distance of the maps) sample not yet taken, closing one cycle over the batch (the
    repository's `pairing.pyx`, `onecycle_cover`; `pairing="random"` draws a random permutation instead).
    The mix is x * s / (s + s') + x' * s' / (s + s') pixel by pixel, each label weighted by its mean
    ratio. Defaults from the README's CIFAR-100 Guided-SR command (`--guided_type sr --condition greedy
    --mix_prob 0.5`); the blur: `spectral_residual.py` line 32, `SpectralResidual(blur=7, sigma=3,
    kernel_size=3)`, and `mixup.py`'s `TF.gaussian_blur(sc_a, (7, 7), (3, 3))`. The partner permutation
    comes from the saliency, on the device.
    Note: that repository's CIFAR `mixup.py` passes condition 'greedy_c' to a `pairing` function that
    treats anything but 'greedy' as random, so its CIFAR script pairs at random; its FGVC code and the
    paper pair greedily, as here by default.
    Left out: the Guided-AP variant (input-gradient saliency, `--guided_type ap`).
    """

    prob: float = 0.5
    pairing: str = "greedy"

    def __post_init__(self):
        super().__post_init__()
        if self.pairing not in ("greedy", "random"):
            raise ValueError(f"guidedmixup: unknown pairing {self.pairing!r}; use 'greedy' or 'random'")

    def mix(self, inputs, targets, generator, model):
        salient = saliency.spectral_residual(inputs)
        salient = _normalise(TF.gaussian_blur(salient.unsqueeze(1), [7, 7], [3.0, 3.0]).squeeze(1))
        if self.pairing == "greedy":
            perm = farthest_cycle(salient.flatten(1))
        else:
            perm = to_device(draw_partners(inputs.shape[0], generator), inputs.device)
        total = (salient + salient[perm]).clamp_min(torch.finfo(salient.dtype).tiny)
        ratio = salient / total
        mixed = torch.lerp(inputs[perm], inputs, ratio.unsqueeze(1).to(inputs.dtype))
        return MixedBatch(mixed, targets, targets[perm], ratio.mean((1, 2)), layer=0)


def farthest_cycle(points: torch.Tensor) -> torch.Tensor:
    """GuidedMixup's greedy pairing: one cycle through the batch, each step to the farthest unvisited point.

    points: (B, D). Starts with the farthest pair (i, j): i's partner is j, j's partner the farthest
    unvisited point from j, and so on; the last point's partner is i. Returns the (B,) partner permutation
    on the points' device, computed there without host synchronisation.
    """
    count = points.shape[0]
    if count < 2:
        return torch.zeros(count, dtype=torch.long, device=points.device)
    distance = torch.cdist(points.float(), points.float())
    distance.fill_diagonal_(-math.inf)
    first = distance.flatten().argmax()
    start, current = first // count, first % count
    partner = torch.empty(count, dtype=torch.long, device=points.device)
    partner[start] = current
    distance[:, start] = -math.inf
    for _ in range(count - 2):
        distance[:, current] = -math.inf
        following = distance[current].argmax()
        partner[current] = following
        current = following
    partner[current] = start
    return partner


@register("alignmixup")
@dataclass(kw_only=True)
class AlignMixup(Method):
    """AlignMixup: input Mixup or, at the last hook point, Mixup of optimally aligned feature maps.

    Per batch (AlignMixup_CVPR22 `cifar10_100/models/resnet18_classifier.py`): lam ~ Beta(alpha, alpha),
    partners perm, then with probability 1/2 input Mixup, else at the model's last hook point (after the
    last stage, before pooling) the partner's map is aligned to the sample's, or the sample's to the
    partner's (1/2 each), by an entropic optimal-transport plan between their H*W feature vectors, and the
    two are mixed with lam (`transport.align_features`). Labels: lam and 1 - lam.
    Defaults: alpha 2 (README commands and `cifar10_100/main.py` `--alpha`, default 2.0); Sinkhorn eps 0.1
    and max_iter 100 (`resnet18_classifier.py` line 27, `SinkhornDistance(eps=0.1, max_iter=100)`),
    threshold 0.1 (`utils/OT.py` line 49, `thresh = 1e-1`), and the stopping test after every iteration
    (`utils/OT.py` line 59, `if err.item() < thresh: break`). Each test reads the error on the CPU, a
    host-device synchronisation per iteration on a GPU; `check_every=k` tests after every k-th iteration
    only (k - 1 waits fewer in k), which changes the plan wherever the original would have stopped in
    between: with k = 10, by up to 0.045 per plan entry against the original's code on last-stage
    ResNet features, where the default agrees with it to 2e-6 (README, "The saliency and transport
    baselines").
    """

    host_sync = "Sinkhorn's stopping test reads its error on the CPU: one wait per check_every iterations"
    alpha: float = 2.0
    eps: float = 0.1
    max_iter: int = 100
    threshold: float = 0.1
    check_every: int = 1

    def __post_init__(self):
        super().__post_init__()
        if self.num_hook_points is None:
            raise ValueError("alignmixup mixes at the model's last hook point: pass "
                             "num_hook_points=model.num_hook_points")
        if self.eps <= 0 or self.max_iter < 1 or self.check_every < 1:
            raise ValueError(f"alignmixup: eps must be > 0, max_iter and check_every >= 1, got {self.eps}, "
                             f"{self.max_iter} and {self.check_every}")

    def mix(self, inputs, targets, generator, model):
        perm = to_device(draw_partners(inputs.shape[0], generator), inputs.device)
        lam = draw_beta(self.alpha, generator)
        layer = (0, self.num_hook_points)[int(torch.randint(2, (), generator=generator))]
        direction = int(torch.randint(2, (), generator=generator))
        if layer == 0:
            return mix_at_layer(inputs, targets, perm, lam, 0, lambda images, batch: ops.mixup(images, lam, perm))
        return mix_at_layer(inputs, targets, perm, lam, layer, lambda features, batch: transport.align_features(
            features, lam, perm, direction, self.eps, self.max_iter, self.threshold, self.check_every))
