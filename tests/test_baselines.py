"""The saliency- and transport-based baselines: their solvers against exhaustive search and reference
libraries (POT, gco-wrapper), the provenance of every mixed pixel, label weights, seeds, training steps."""

import contextlib
import dataclasses
import itertools
import math
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from scipy.special import logsumexp

from catchup_mix import baselines, graphcut, methods, models, saliency, transport
from catchup_mix.methods import MixedBatch, draw_beta, draw_partners
from catchup_mix.train import train_step

NEW = ("saliencymix", "puzzlemix", "comixup", "guidedmixup", "alignmixup")


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def tiny_model(num_classes=10):
    torch.manual_seed(0)
    return models.build("preactresnet18", num_classes, width=4)


def structured_images(count, size=32, seed=0):
    """Random smooth images with a bright blob each, so saliency has structure."""
    generator = seeded(seed)
    images = torch.rand(count, 3, size // 4, size // 4, generator=generator)
    images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    for i in range(count):
        y, x = torch.randint(0, size - 8, (2,), generator=generator).tolist()
        images[i, :, y:y + 8, x:x + 8] += 2.0
    return images


# ---------------------------------------------------------------------------------------------------
# Registry, options, the model argument


def test_the_baselines_are_registered_with_the_package():
    assert set(NEW) <= set(methods.available())
    assert {name for name in methods.available() if methods.METHODS[name].needs_model} == {"puzzlemix", "comixup"}


@pytest.mark.parametrize("name", ["puzzlemix", "comixup"])
def test_methods_that_need_the_model_refuse_a_call_without_it(name):
    with pytest.raises(ValueError, match="model="):
        methods.build(name)(torch.randn(4, 3, 32, 32), torch.arange(4), generator=seeded())


@pytest.mark.parametrize("name, options, message", [
    ("puzzlemix", dict(gamma=1.5), "gamma"),
    ("puzzlemix", dict(n_labels=1), "n_labels"),
    ("puzzlemix", dict(graph_cut="swap"), "graph_cut"),
    ("puzzlemix", dict(block_nums=()), "block_nums"),
    ("comixup", dict(block_num=8), "block_num"),
    ("comixup", dict(part=1), "part"),
    ("guidedmixup", dict(pairing="nearest"), "pairing"),
    ("alignmixup", dict(), "num_hook_points"),
    ("saliencymix", dict(alpha=0), "alpha"),
    ("saliencymix", dict(saliency="itti"), "saliency"),
    ("comixup", dict(threshold_penalty="soft"), "threshold_penalty"),
    ("alignmixup", dict(num_hook_points=5, check_every=0), "check_every"),
])
def test_bad_options_raise_naming_the_option(name, options, message):
    with pytest.raises(ValueError, match=message):
        methods.build(name, **options)


def test_puzzlemix_refuses_block_counts_that_do_not_divide_the_image():
    method = methods.build("puzzlemix", block_nums=(3,))
    with pytest.raises(ValueError, match="block_nums"):
        method(torch.randn(2, 3, 32, 32), torch.arange(2), generator=seeded(), model=tiny_model())


# ---------------------------------------------------------------------------------------------------
# Every method: seeds, label weights, a training step with each loss


@pytest.mark.parametrize("name", NEW)
def test_seeded_calls_repeat_and_targets_are_distributions(name):
    model = tiny_model()
    images, labels = structured_images(12), torch.randint(0, 10, (12,), generator=seeded(1))
    method = methods.build(name, num_hook_points=model.num_hook_points, prob=1.0)
    features = torch.randn(12, 32, 4, 4)
    for seed in range(3):
        first, second = (method(images, labels, generator=seeded(seed), model=model) for _ in range(2))
        assert torch.equal(first.inputs, second.inputs)
        assert torch.equal(torch.as_tensor(first.lam), torch.as_tensor(second.lam))
        target = first.target_distribution(10)
        assert torch.equal(target, second.target_distribution(10))
        assert torch.allclose(target.sum(1), torch.ones(12), atol=1e-6) and (target >= 0).all()
        if first.feature_hook is not None:
            assert torch.equal(first.feature_hook(features, first.layer), second.feature_hook(features, second.layer))
    assert all(p.grad is None for p in model.parameters())  # the saliency pass leaves no gradient behind


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("loss", ["ce", "softmax_bce"])
def test_a_training_step_of_each_method_stays_finite(name, loss):
    model = tiny_model()
    method = methods.build(name, num_hook_points=model.num_hook_points, prob=1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    images, labels = structured_images(10), torch.randint(0, 10, (10,), generator=seeded(2))
    generator = seeded(3)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        value, layer = train_step(model, method, images, labels, optimizer, generator, contextlib.nullcontext,
                                  loss=loss)
        assert torch.isfinite(value) and layer is not None
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert model.training  # the saliency pass put it back in train mode


def test_soft_targets_sum_repeated_classes():
    batch = MixedBatch(torch.zeros(2, 1, 1, 1), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long),
                       1.0, soft_targets=(torch.tensor([[1, 1, 3], [0, 2, 2]]),
                                          torch.tensor([[0.25, 0.25, 0.5], [0.5, 0.25, 0.25]])))
    assert torch.equal(batch.target_distribution(4), torch.tensor([[0, 0.5, 0, 0.5], [0.5, 0, 0.5, 0]]))


# ---------------------------------------------------------------------------------------------------
# Where every mixed pixel comes from


def test_saliencymix_pastes_a_box_from_the_partner_around_its_saliency_peak():
    images = structured_images(6)
    peaks = saliency.spectral_residual(images).flatten(1).argmax(1)
    for per_sample in (False, True):
        method = methods.build("saliencymix", prob=1.0, per_sample=per_sample)
        for seed in range(4):
            batch = method(images, torch.arange(6), generator=seeded(seed))
            perm = batch.targets_b
            partners = images[perm]
            assert ((batch.inputs == images) | (batch.inputs == partners)).all()
            moved = perm != torch.arange(6)
            changed = (batch.inputs != images).any(1)  # (B, H, W)
            assert torch.allclose(batch.lam[moved], 1 - changed[moved].float().mean((1, 2)), atol=1e-6)
            for b in torch.nonzero(moved).flatten().tolist():
                rows, columns = torch.nonzero(changed[b], as_tuple=True)
                if len(rows) == 0:
                    continue
                box = changed[b, rows.min():rows.max() + 1, columns.min():columns.max() + 1]
                assert box.all() and box.numel() == len(rows)  # one rectangle
                centre = peaks[perm[b] if per_sample else perm[0]]  # the partner's (or first partner's) peak
                assert rows.min() <= centre // 32 <= rows.max() + 1 and columns.min() <= centre % 32 <= columns.max() + 1
                if not per_sample:  # one box for the whole batch
                    first = int(torch.nonzero(moved)[0])
                    assert torch.equal(changed[b], changed[first])


def opencv_saliency():
    cv2 = pytest.importorskip("cv2", reason="the saliency extra (opencv-contrib-python-headless)")
    if not hasattr(cv2, "saliency"):
        pytest.skip("OpenCV without its contrib modules")
    return cv2


def original_saliency_bbox(cv2, img: torch.Tensor, lam: float):
    """A numpy reading of SaliencyMix's `saliency_bbox` (`SaliencyMix_CIFAR/saliencymix.py`): OpenCV's map
    of the CHW float image made HWC, scaled to uint8, its argmax the centre of a box of sides
    int(side * sqrt(1 - lam)). Returns rows x1:x2 and columns y1:y2."""
    size = img.shape
    cut_rat = np.sqrt(1.0 - lam)
    cut_w, cut_h = int(size[1] * cut_rat), int(size[2] * cut_rat)
    _, saliency_map = cv2.saliency.StaticSaliencyFineGrained_create().computeSaliency(img.numpy().transpose(1, 2, 0))
    x, y = np.unravel_index(np.argmax((saliency_map * 255).astype("uint8"), axis=None), saliency_map.shape)
    return (np.clip(x - cut_w // 2, 0, size[1]), np.clip(y - cut_h // 2, 0, size[2]),
            np.clip(x + cut_w // 2, 0, size[1]), np.clip(y + cut_h // 2, 0, size[2]))


def test_saliencymix_with_opencv_saliency_pastes_the_original_box():
    cv2 = opencv_saliency()
    images = (structured_images(8) - 0.5) / 0.25  # normalised, as the original's loader hands them over
    method = methods.build("saliencymix", prob=1.0, saliency="opencv_fine_grained")
    assert method.host_sync and methods.build("saliencymix").host_sync is None
    for seed in range(6):
        batch = method(images, torch.arange(8), generator=seeded(seed))
        draws = seeded(seed)  # the method's own draws, in its order
        perm, lam = draw_partners(8, draws), draw_beta(1.0, draws)
        x1, y1, x2, y2 = original_saliency_bbox(cv2, images[perm[0]], lam)
        expected = images.clone()
        expected[:, :, x1:x2, y1:y2] = images[perm, :, x1:x2, y1:y2]
        assert torch.equal(batch.inputs, expected)
        assert torch.allclose(batch.lam, torch.full((8,), 1 - (x2 - x1) * (y2 - y1) / 32**2))


def test_opencv_saliency_is_opencv_fine_grained_map_of_each_image():
    cv2 = opencv_saliency()
    images = torch.randn(3, 3, 16, 24, generator=seeded(5))
    maps = saliency.opencv_fine_grained(images)
    assert maps.shape == (3, 16, 24) and maps.dtype == torch.float32
    for image, got in zip(images, maps, strict=True):
        _, expected = cv2.saliency.StaticSaliencyFineGrained_create().computeSaliency(image.numpy().transpose(1, 2, 0))
        assert np.array_equal(got.numpy(), expected)


def test_asking_for_opencv_saliency_without_the_extra_names_the_package(monkeypatch, tmp_path, capsys):
    from catchup_mix.config import ConfigError, make_config
    from catchup_mix.train import train
    from reproduce.__main__ import main as reproduce_main

    options = {"saliency": "opencv_fine_grained"}
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` fails
    (missing,) = methods.missing_extras("saliencymix", options)
    assert re.search(r"pip install 'catchup-mix\[saliency\]'.*spectral_residual", missing)
    with pytest.raises(ConfigError, match=r"catchup-mix\[saliency\]"):  # training stops before it starts
        train(make_config({"method": "saliencymix", "method_options": options, "output_dir": str(tmp_path / "r")}))
    assert not (tmp_path / "r").exists()
    # issue 29: a dry run of the paper plan works without the extra and names it per run that needs it
    assert reproduce_main(["table1", "--scale", "paper", "--dry-run", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("#   needs an optional package not installed here: saliencymix") == 9  # 3 nets x 3 seeds
    assert reproduce_main(["table1", "--scale", "paper", "--allow-cpu", "--out", str(tmp_path)]) == 2
    assert "Nothing was trained; --dry-run lists the runs" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "cv2", types.SimpleNamespace(__version__="4.12.0"))  # no contrib modules
    assert "without its contrib modules" in methods.missing_extras("saliencymix", options)[0]
    assert methods.missing_extras("saliencymix", {}) == []  # the default needs no OpenCV


def test_paper_scale_runs_saliencymix_with_the_original_saliency_named_in_the_run_key():
    opencv_saliency()
    from reproduce import artifacts

    paper = artifacts.plan_table1(artifacts.Settings("paper", [0], Path(".")))
    smoke = artifacts.plan_table1(artifacts.Settings("smoke", [0], Path(".")))
    chosen = [run for run in paper if run.labels["method"] == "saliencymix"]
    assert chosen and all(run.config["method_options"] == {"saliency": "opencv_fine_grained"} for run in chosen)
    assert all(run.config["method_options"] == {} for run in paper if run.labels["method"] != "saliencymix")
    assert all(run.config["method_options"] == artifacts.SMOKE_METHOD_OPTIONS.get(run.labels["method"], {})
               for run in smoke)  # smoke keeps its own (cheaper) options and the default saliency
    substitute = dataclasses.replace(chosen[0], config={**chosen[0].config, "method_options": {}})
    assert substitute.key != chosen[0].key


def test_puzzlemix_without_transport_takes_each_block_from_one_image_or_both():
    model = tiny_model()
    images, labels = structured_images(8), torch.arange(8)
    method = methods.build("puzzlemix", transport=False)
    for seed in range(4):
        batch = method(images, labels, generator=seeded(seed), model=model)
        perm = batch.targets_b
        partners = images[perm]
        own, other = batch.inputs == images, batch.inputs == partners
        half = torch.isclose(batch.inputs, (images + partners) / 2, atol=1e-6)
        assert (own | other | half).all()
        share = torch.where(own & ~other, 1.0, torch.where(other & ~own, 0.0, 0.5)).mean((1, 2, 3))
        distinct = perm != torch.arange(8)
        assert torch.allclose(batch.lam[distinct], share[distinct], atol=1e-6)


def test_puzzlemix_transported_patches_are_the_sample_own_patches():
    model = tiny_model()
    images, labels = structured_images(6), torch.arange(6)
    method = methods.build("puzzlemix", block_nums=(4,), t_size=8)  # 4 x 4 blocks, transport on 8 px patches
    batch = method(images, labels, generator=seeded(5), model=model)
    perm = batch.targets_b
    own_patches = images.unfold(2, 8, 8).unfold(3, 8, 8)  # (B, C, 4, 4, 8, 8)
    mixed_patches = batch.inputs.unfold(2, 8, 8).unfold(3, 8, 8)
    for b in range(6):
        for i in range(4):
            for j in range(4):
                patch = mixed_patches[b, :, i, j]
                from_own = any(torch.equal(patch, own_patches[b, :, y, x]) for y in range(4) for x in range(4))
                from_partner = any(torch.equal(patch, own_patches[perm[b], :, y, x]) for y in range(4) for x in range(4))
                blend = any(torch.allclose(patch, (own_patches[b, :, y, x] + own_patches[perm[b], :, v, u]) / 2, atol=1e-6)
                            for y in range(4) for x in range(4) for v in range(4) for u in range(4))
                assert from_own or from_partner or blend


def test_comixup_outputs_are_made_of_the_partition_inputs_in_the_target_shares():
    model = tiny_model()
    images, labels = structured_images(7, seed=3), torch.arange(7)
    method = methods.build("comixup", part=4)  # partitions of 4 and 3 samples
    batch = method(images, labels, generator=seeded(0), model=model)
    classes, weights = batch.soft_targets
    cells = batch.inputs.unfold(2, 8, 8).unfold(3, 8, 8)  # 4 x 4 grid of 8 px cells
    sources = images.unfold(2, 8, 8).unfold(3, 8, 8)
    for out in range(7):
        members = range(0, 4) if out < 4 else range(4, 7)  # inputs of the output's partition
        share = torch.zeros(7)
        for i in range(4):
            for j in range(4):
                cell = cells[out, :, i, j]
                whole = [m for m in members if torch.equal(cell, sources[m, :, i, j])]
                halves = [(a, b) for a, b in itertools.combinations(members, 2)
                          if torch.allclose(cell, (sources[a, :, i, j] + sources[b, :, i, j]) / 2, atol=1e-6)]
                assert len(whole) == 1 or len(halves) == 1
                if whole:
                    share[whole[0]] += 1 / 16
                else:
                    share[list(halves[0])] += 1 / 32
        expected = torch.zeros(7).index_add_(0, classes[out], weights[out])
        assert torch.allclose(share, expected, atol=1e-6)
        assert set(torch.nonzero(share).flatten().tolist()) <= set(members)
    target = batch.target_distribution(7)
    assert torch.allclose(target.sum(1), torch.ones(7))


def test_guidedmixup_mixes_each_pixel_between_the_pair_by_their_saliency_ratio():
    images = structured_images(8)
    batch = methods.build("guidedmixup", prob=1.0)(images, torch.arange(8), generator=seeded())
    perm = batch.targets_b
    assert sorted(perm.tolist()) == list(range(8)) and (perm != torch.arange(8)).all()
    maps = saliency.spectral_residual(images)
    maps = torchvision.transforms.functional.gaussian_blur(maps[:, None], [7, 7], [3.0, 3.0])[:, 0]
    maps = maps / maps.sum((1, 2), keepdim=True)
    ratio = maps / (maps + maps[perm])
    assert ((ratio >= 0) & (ratio <= 1)).all()
    assert torch.allclose(batch.inputs, ratio[:, None] * images + (1 - ratio[:, None]) * images[perm], atol=1e-5)
    assert torch.allclose(batch.lam, ratio.mean((1, 2)), atol=1e-6)
    assert torch.equal(perm, baselines.farthest_cycle(maps.flatten(1)))
    random_pairs = methods.build("guidedmixup", prob=1.0, pairing="random")
    assert not torch.equal(random_pairs(images, torch.arange(8), generator=seeded()).targets_b, perm)


def test_farthest_cycle_is_one_greedy_tour_over_the_batch():
    points = torch.randn(9, 5, generator=seeded(6))
    partner = baselines.farthest_cycle(points)
    distance = torch.cdist(points, points)
    visited, current = [], int(torch.nonzero(distance == distance.max())[0, 0])
    assert int(partner[current]) == int(torch.nonzero(distance == distance.max())[0, 1])
    for _ in range(9):
        visited.append(current)
        current = int(partner[current])
    assert sorted(visited) == list(range(9)) and current == visited[0]  # one cycle through all
    for step in range(1, 8):  # each step goes to the farthest point not visited yet
        here, rest = visited[step], [p for p in range(9) if p not in visited[: step + 1]]
        assert int(partner[here]) == max(rest, key=lambda p: float(distance[here, p]))


def test_alignmixup_mixes_at_the_input_or_the_last_hook_point_with_the_pot_plan():
    ot = pytest.importorskip("ot")
    method = methods.build("alignmixup", num_hook_points=5, threshold=1e-10, max_iter=3000)
    images, labels = torch.randn(6, 3, 8, 8), torch.arange(6)
    features = 0.3 * torch.randn(6, 16, 4, 4, generator=seeded(9))
    layers = set()
    for seed in range(12):
        batch = method(images, labels, generator=seeded(seed))
        layers.add(batch.layer)
        perm, lam = batch.targets_b, batch.lam
        if batch.layer == 0:
            assert torch.allclose(batch.inputs, lam * images + (1 - lam) * images[perm], atol=1e-6)
            continue
        assert batch.layer == 5 and torch.equal(batch.feature_hook(features, 4), features)
        mixed = batch.feature_hook(features, 5).flatten(2)
        own, partner = features.flatten(2), features.flatten(2)[perm]
        for b in range(2):
            cost = torch.cdist(own[b].T, partner[b].T) ** 2
            plan = 16 * torch.from_numpy(ot.sinkhorn(np.full(16, 1 / 16), np.full(16, 1 / 16), cost.double().numpy(),
                                                     0.1, method="sinkhorn_log", numItermax=5000, stopThr=1e-7))
            plan = plan.float()
            aligned_partner = lam * own[b] + (1 - lam) * partner[b] @ plan.T
            aligned_own = lam * own[b] @ plan + (1 - lam) * partner[b]
            closest = min((mixed[b] - aligned_partner).abs().max(), (mixed[b] - aligned_own).abs().max())
            assert closest < 1e-3  # float32 features against a float64 plan
    assert layers == {0, 5}


# ---------------------------------------------------------------------------------------------------
# Solvers against exhaustive search and reference libraries


def random_grid(rng, n, h, w, labels):
    return (rng.normal(size=(n, h, w, labels)), rng.uniform(0, 1.5, size=(n, h - 1, w)),
            rng.uniform(0, 1.5, size=(n, h, w - 1)))


@pytest.mark.parametrize("labels, height, width", [(2, 3, 3), (3, 3, 3), (4, 2, 3)])
def test_grid_labels_equal_exhaustive_search(labels, height, width):
    rng = np.random.default_rng(labels)
    every = np.array(list(itertools.product(range(labels), repeat=height * width))).reshape(-1, height, width)
    unary, down, right = random_grid(rng, 12, height, width, labels)
    found = graphcut.grid_energy(graphcut.grid_labels(unary, down, right), unary, down, right)
    for i in range(12):
        energies = graphcut.grid_energy(every, *(np.repeat(a[i:i + 1], len(every), 0) for a in (unary, down, right)))
        assert found[i] == pytest.approx(energies.min(), abs=1e-6)


def test_grid_labels_refuse_negative_weights():
    unary, down, right = random_grid(np.random.default_rng(0), 1, 2, 2, 2)
    with pytest.raises(ValueError, match="non-submodular"):
        graphcut.grid_labels(unary, -down, right)


def test_grid_labels_are_never_worse_than_gco_swap():
    pytest.importorskip("gco")
    rng = np.random.default_rng(7)
    unary, down, right = random_grid(rng, 20, 8, 8, 3)
    exact = graphcut.grid_energy(graphcut.grid_labels(unary, down, right), unary, down, right)
    swap = graphcut.grid_energy(graphcut.grid_labels_gco(unary, down, right), unary, down, right)
    assert (exact <= swap + 1e-6).all()
    assert np.mean(np.isclose(exact, swap, atol=1e-6)) > 0.2  # swap often finds the optimum too


def test_puzzlemix_can_cut_with_gco_as_the_original():
    pytest.importorskip("gco")
    model = tiny_model()
    images, labels = structured_images(6), torch.arange(6)
    exact = methods.build("puzzlemix", transport=False)(images, labels, generator=seeded(1), model=model)
    swap = methods.build("puzzlemix", transport=False, graph_cut="gco")(images, labels, generator=seeded(1), model=model)
    assert torch.equal(exact.targets_b, swap.targets_b)  # the same draws, the same problem
    pixels = swap.inputs
    partners = images[swap.targets_b]
    assert ((pixels == images) | (pixels == partners) | torch.isclose(pixels, (images + partners) / 2, atol=1e-6)).all()


def test_expansion_moves_equal_exhaustive_search_over_binary_moves():
    rng = np.random.default_rng(3)
    n, k, h, w = 3, 4, 3, 3
    unary = rng.normal(size=(n, k, h, w))
    vectors = rng.uniform(size=(n, k, 3))
    pairwise = ((vectors[:, :, None] - vectors[:, None]) ** 2).sum(-1)  # not a metric
    labels = rng.integers(k, size=(n, h, w))
    energy, switch = graphcut.expansion_moves(unary, pairwise, labels)
    moves = np.array(list(itertools.product((False, True), repeat=h * w))).reshape(-1, h, w)
    for i in range(n):
        for alpha in range(k):
            candidates = np.where(moves, alpha, labels[i])
            energies = graphcut.labelling_energy(np.repeat(unary[i:i + 1], len(moves), 0),
                                                 np.repeat(pairwise[i:i + 1], len(moves), 0), candidates)
            assert energy[i, alpha] == pytest.approx(energies.min(), abs=1e-9)
            chosen = np.where(switch[i, alpha], alpha, labels[i])[None]
            assert graphcut.labelling_energy(unary[i:i + 1], pairwise[i:i + 1], chosen)[0] == pytest.approx(energy[i, alpha])


def test_expansion_labels_are_expansion_optimal_and_mostly_global_optima():
    rng = np.random.default_rng(4)
    k, h, w, trials = 4, 2, 3, 40
    masks = np.eye(k)
    masks[-1] = [0.5, 0.5, 0, 0]  # a Co-Mixup half-label: the table is not a metric
    table = ((masks[:, None] - masks[None]) ** 2).sum(-1) / 2
    every = np.array(list(itertools.product(range(k), repeat=h * w))).reshape(-1, h, w)
    exact = 0
    for _ in range(trials):
        unary, pairwise = 0.3 * rng.normal(size=(1, k, h, w)), rng.uniform(0.2, 1.0) * table[None]
        labels = graphcut.expansion_labels(unary, pairwise)
        energy = graphcut.labelling_energy(unary, pairwise, labels)[0]
        moves, _ = graphcut.expansion_moves(unary, pairwise, labels)
        assert (moves >= energy - 1e-9).all()  # no expansion move improves it
        optimum = graphcut.labelling_energy(np.repeat(unary, len(every), 0), np.repeat(pairwise, len(every), 0), every).min()
        assert energy >= optimum - 1e-9
        exact += energy <= optimum + 1e-9
    assert exact >= 0.9 * trials


def test_expansion_labels_equal_a_search_over_every_move_and_refuse_negative_costs():
    rng = np.random.default_rng(7)
    n, inputs, side = 6, 8, 4
    masks = np.concatenate([np.eye(inputs), [[0.5, 0.5] + [0] * 6, [0.5, 0, 0.5] + [0] * 5]])
    pairwise = np.broadcast_to(0.02 * ((masks[:, None] - masks[None]) ** 2).sum(-1) / 2, (n, 10, 10)).copy()

    def every_move(unary, labels):  # the best of all expansion moves, applied while it lowers the energy
        energy = graphcut.labelling_energy(unary, pairwise, labels)
        for _ in range(20):
            moves, switch = graphcut.expansion_moves(unary, pairwise, labels)
            best = moves.argmin(1)
            better = moves[np.arange(n), best] < energy - 1e-12 * np.maximum(np.abs(energy), 1.0)
            if not better.any():
                break
            labels = np.where(switch[np.arange(n), best] & better[:, None, None], best[:, None, None], labels)
            energy = np.where(better, moves[np.arange(n), best], energy)
        return labels

    for _ in range(10):
        unary = -rng.uniform(size=(n, 10, side, side)) / 16 + rng.uniform(0, 0.1, size=(n, 10, 1, 1))
        start = rng.integers(10, size=(n, side, side))
        assert np.array_equal(graphcut.expansion_labels(unary, pairwise, start), every_move(unary, start))
    with pytest.raises(ValueError, match="pairwise"):
        graphcut.expansion_labels(unary, -pairwise, start)


def comixup_brute_force(cost, beta, gamma):
    """The minimum of Co-Mixup's objective over every one-hot labelling of every output (n^(n*H*W))."""
    n, h, w = cost.shape
    labels = np.array(list(itertools.product(range(n), repeat=n * h * w)), dtype=np.int8).reshape(-1, n, h, w)
    data = cost[labels, np.arange(h)[:, None], np.arange(w)].sum((1, 2, 3))
    changes = (labels[:, :, 1:] != labels[:, :, :-1]).sum((1, 2, 3)) + (labels[:, :, :, 1:] != labels[:, :, :, :-1]).sum((1, 2, 3))
    counts = np.stack([(labels == i).sum((2, 3)) for i in range(n)], axis=-1)  # (M, n_out, n)
    overlap = (counts.sum(1) ** 2).sum(-1) - (counts**2).sum((1, 2))
    return (data + beta * changes + gamma * overlap).min()


def test_comixup_descent_never_rises_and_mostly_reaches_the_exhaustive_optimum():
    rng = np.random.default_rng(1)
    n, side, trials, reached = 3, 2, 8, 0
    cells = side * side
    for _ in range(trials):
        saliency_map = rng.uniform(size=(n, side, side)) ** 2
        cost = -saliency_map / saliency_map.sum((1, 2), keepdims=True) + 0.01 * rng.normal(size=(n, 1, 1))
        init = rng.integers(n, size=(1, n, side, side))
        objectives = []
        for n_iter in (1, 2, 3, 4):  # threshold 0, A = I: each update minimises the exact objective
            mask = graphcut.comixup_masks(cost[None], np.eye(n)[None], np.ones((1, n), bool), init, threshold=0.0,
                                          n_iter=n_iter, set_resolve=False, mix_bonus=0.0)
            objectives.append(graphcut.comixup_objective(cost[None], mask, 0.32 / cells, 1.0 / cells)[0])
        assert all(later <= earlier + 1e-12 for earlier, later in zip(objectives, objectives[1:], strict=False))
        optimum = comixup_brute_force(cost, 0.32 / cells, 1.0 / cells)
        assert objectives[-1] >= optimum - 1e-9 or (mask == 0.5).any()  # half cells may beat one-hot labellings
        reached += objectives[-1] <= optimum + 1e-9
    assert reached >= 0.75 * trials  # block-coordinate descent, like the original, can stall


def test_comixup_masks_are_distributions_over_valid_inputs():
    rng = np.random.default_rng(2)
    parts, n, side = 2, 5, 4
    cost = -rng.uniform(size=(parts, n, side, side)) / 8
    valid = np.array([[True] * 5, [True, True, True, False, False]])
    init = (rng.uniform(size=(parts, n, side, side)) * valid.sum(1)[:, None, None, None]).astype(int)
    mask = graphcut.comixup_masks(cost, np.broadcast_to(np.eye(n), (parts, n, n)), valid, init)
    assert np.allclose(mask[0].sum(-1), 1) and np.allclose(mask[1, :3].sum(-1), 1)
    assert (mask[1, 3:] == 0).all() and (mask[1, :, :, :, 3:] == 0).all()  # padding neither shows nor is shown
    assert set(np.unique(mask)) <= {0.0, 0.5, 1.0}


def test_comixup_threshold_penalties_are_the_original_line_and_the_per_input_product():
    rng = np.random.default_rng(6)
    parts, n, tau = 4, 20, 0.83 * 16
    peaks = rng.integers(0, 25, size=(parts, n, 2))
    distance = np.abs(peaks[:, :, None] - peaks[:, None]).sum(-1).astype(float)
    distance = distance / distance.sum((1, 2), keepdims=True) * n
    compatibility = 0.999 * np.eye(n) + 0.001 * distance  # A as Co-Mixup builds it, omega = 0.001
    others = rng.integers(0, 2, size=(parts, n)) * rng.uniform(10, 40, size=(parts, n))  # counts around tau
    for p in range(parts):
        A, penalty = torch.from_numpy(compatibility[p]), torch.from_numpy(others[p])
        # Co-Mixup `match.py` lines 224-227, as written (`*` and `@` bind equally, left to right)
        original = ((A @ penalty.squeeze() > tau).double() * A @ penalty.squeeze()).numpy()
        paper = ((A @ penalty > tau).double() * (A @ penalty)).numpy()
        assert np.allclose(graphcut.diversity_penalty(compatibility[p:p + 1], others[p:p + 1], tau)[0], original)
        assert np.allclose(graphcut.diversity_penalty(compatibility[p:p + 1], others[p:p + 1], tau, "paper")[0], paper)
        assert not np.allclose(original, paper)  # they differ through A's off-diagonal entries
    identity = np.broadcast_to(np.eye(n), compatibility.shape)
    assert np.array_equal(graphcut.diversity_penalty(identity, others, tau, "original"),
                          graphcut.diversity_penalty(identity, others, tau, "paper"))


def test_comixup_uses_the_original_threshold_penalty_unless_asked_for_the_paper_one():
    model = tiny_model()
    images, labels = structured_images(20, seed=3), torch.arange(20) % 10
    default = methods.build("comixup")
    assert default.threshold_penalty == "original"
    paper = methods.build("comixup", threshold_penalty="paper")
    outputs = [(method(images, labels, generator=seeded(seed), model=model).inputs for method in (default, paper))
               for seed in range(3)]
    assert any(not torch.equal(first, second) for first, second in outputs)


def original_sinkhorn(cost, eps=0.1, max_iter=100, thresh=0.1):
    """A numpy reading of AlignMixup's `utils/OT.py` (SinkhornDistance.forward) in float64: log-domain updates
    of u and v from uniform marginals, stopping as soon as the batch mean of sum_i |u - u_prev| is below
    thresh, tested after every iteration. Returns (plan, iterations run)."""
    batch, n, m = cost.shape
    mu, nu = np.full((batch, n), 1 / n), np.full((batch, m), 1 / m)
    u, v = np.zeros((batch, n)), np.zeros((batch, m))

    def modified(u, v):
        return (-cost + u[:, :, None] + v[:, None, :]) / eps

    iterations = 0
    while iterations < max_iter:
        iterations += 1
        previous = u
        u = eps * (np.log(mu + 1e-8) - logsumexp(modified(u, v), axis=-1)) + u
        v = eps * (np.log(nu + 1e-8) - logsumexp(modified(u, v).transpose(0, 2, 1), axis=-1)) + v
        if np.abs(u - previous).sum(-1).mean() < thresh:
            break
    return np.exp(modified(u, v)), iterations


def test_sinkhorn_stops_where_the_original_does_and_every_k_stops_later():
    generator = seeded(11)
    stops = set()
    for scale in (0.5, 1.0, 2.0, 4.0):
        features = scale * torch.rand(4, 16, 8, generator=generator, dtype=torch.float64)
        cost = torch.cdist(features, features.roll(1, 0)) ** 2
        expected, iterations = original_sinkhorn(cost.numpy())
        stops.add(iterations)
        plan = transport.sinkhorn(cost, 0.1)  # the original's rule: a test after every iteration
        assert np.allclose(plan.numpy(), expected, atol=1e-7)
        assert torch.equal(plan, transport.sinkhorn(cost, 0.1, max_iter=iterations, threshold=0.0))
        later = math.ceil(iterations / 10) * 10  # the first test of check_every=10 after the original's stop
        every_tenth = transport.sinkhorn(cost, 0.1, check_every=10)
        assert torch.equal(every_tenth, transport.sinkhorn(cost, 0.1, max_iter=later, threshold=0.0))
        if iterations % 10:
            assert (every_tenth - plan).abs().max() > 1e-6
    assert any(1 < k < 100 and k % 10 for k in stops), stops  # the cases where the two rules differ occurred
    with pytest.raises(ValueError, match="check_every"):
        transport.sinkhorn(cost, 0.1, check_every=0)


def test_sinkhorn_equals_pot():
    ot = pytest.importorskip("ot")
    generator = seeded(8)
    cost = torch.rand(3, 6, 5, generator=generator, dtype=torch.float64) * 2
    plan = transport.sinkhorn(cost, eps=0.1, max_iter=5000, threshold=1e-12)
    for b in range(3):
        expected = ot.sinkhorn(np.full(6, 1 / 6), np.full(5, 1 / 5), cost[b].numpy(), 0.1, method="sinkhorn_log",
                               numItermax=10000, stopThr=1e-13)
        assert np.allclose(plan[b].numpy(), expected, atol=1e-8)
    assert torch.allclose(plan.sum(2), torch.full((3, 6), 1 / 6, dtype=torch.float64))


def test_greedy_transport_moves_a_hidden_salient_patch_into_the_shown_region():
    side = 4
    shown = torch.zeros(1, side, side, dtype=torch.bool)
    shown[0, :, 2:] = True  # the right half shows this image
    salience = torch.full((1, side, side), 0.01)
    salience[0, 1, 1] = 0.9  # a salient patch just left of the shown region
    salience /= salience.sum()
    distance = transport.grid_distances(side)
    source = transport.greedy_assignment(0.8 * distance - salience.flatten(1)[..., None] * shown.flatten(1)[:, None],
                                         rounds=side)
    assert int(source[0, 1 * side + 2]) == 1 * side + 1  # it moved one cell right, into the shown half
    images = torch.arange(16.0).view(1, 1, 4, 4)
    moved = transport.move_patches(images, source, side)
    assert moved[0, 0, 1, 2] == 5 and set(moved.flatten().tolist()) <= set(range(16))
    no_one_shown = transport.greedy_assignment(0.8 * distance.expand(1, 16, 16).clone(), rounds=side)
    assert torch.equal(no_one_shown, torch.arange(16).view(1, 16))  # nothing to gain: every patch stays


# ---------------------------------------------------------------------------------------------------
# Saliency


def test_input_gradient_is_taken_in_eval_mode_through_wrappers_and_leaves_no_gradient():
    model = tiny_model()
    model.train()
    images, labels = structured_images(4), torch.arange(4)
    direct = saliency.input_gradient(model, images, labels)
    wrapped = saliency.input_gradient(torch.nn.DataParallel(model), images, labels)
    assert direct.shape == (4, 32, 32) and (direct >= 0).all() and direct.sum() > 0
    assert torch.equal(direct, wrapped) and model.training
    assert all(p.grad is None for p in model.parameters())
    class Compiled(torch.nn.Module):  # what torch.compile returns keeps the module as _orig_mod
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner
    assert saliency.unwrap(Compiled(torch.nn.DataParallel(model))) is model


def test_spectral_residual_equals_a_numpy_reading_of_guidedmixup():
    from scipy import ndimage

    images = structured_images(3, size=24)
    maps = saliency.spectral_residual(images)
    for b in range(3):
        grey = np.tensordot([0.2989, 0.587, 0.114], images[b].double().numpy(), axes=1)
        spectrum = np.fft.fft2(grey)
        amplitude = np.sqrt(spectrum.real**2 + spectrum.imag**2 + 1e-10)
        residual = np.exp(np.log(amplitude) - ndimage.uniform_filter(np.log(amplitude), 3, mode="nearest"))
        expected = np.abs(np.fft.ifft2(spectrum * residual / amplitude))
        expected = ndimage.gaussian_filter(expected, 3.0, truncate=1.0, mode="mirror")  # 7 x 7, sigma 3
        assert np.allclose(maps[b].numpy(), expected, rtol=1e-3, atol=1e-4)
    flat = saliency.spectral_residual(torch.full((1, 3, 16, 16), 0.3))
    assert torch.allclose(flat, flat.mean().expand_as(flat), rtol=1e-4)  # nothing stands out
    large = saliency.spectral_residual(torch.nn.functional.interpolate(images, size=(160, 160)))
    assert large.shape == (3, 160, 160) and (large >= 0).all()  # computed at 128 px, resized back
