"""The Catch-up Mix channel mix and the shared ops, checked against method.md."""

import math

import pytest
import torch

from catchup_mix import catchup_mix_features, mixed_cross_entropy
from catchup_mix.ops import cutmix, mixup


def constant_maps(norms_per_sample, size=1):
    """(B, C, size, size) maps whose channel c of sample b is constant with l2 norm norms[b][c]."""
    norms = torch.tensor(norms_per_sample, dtype=torch.float32)
    return (norms / size)[:, :, None, None].expand(-1, -1, size, size).contiguous()


def channel_norms(features):
    return features.flatten(2).norm(dim=2)


def distinct_maps(batch, channels, size=3, seed=0):
    """Random positive maps whose value identifies (sample, channel), so origins can be traced."""
    generator = torch.Generator().manual_seed(seed)
    scale = torch.rand(batch, channels, generator=generator) + 0.1
    ident = torch.arange(batch * channels, dtype=torch.float32).reshape(batch, channels)
    return (scale * 1000 + ident)[:, :, None, None].expand(-1, -1, size, size).contiguous()


def test_worked_example_from_method_md():
    features = constant_maps([[10, 4, 2, 1], [1, 2, 4, 10]], size=2)
    mixed = catchup_mix_features(features, 0.5, torch.tensor([1, 0]))
    assert torch.allclose(channel_norms(mixed)[0], torch.tensor([1.0, 2, 2, 1]))
    # the source keeps channels 2 and 3 (its lowest RFI), the partner supplies 0 and 1
    assert torch.equal(mixed[0, 2:], features[0, 2:])
    assert torch.equal(mixed[0, :2], features[1, :2])


def test_relative_filter_influence_values_of_the_worked_example():
    # RFI_source = [0.529, 0.118, -0.118, -0.529]: with lam = 0.75 the source keeps the three lowest.
    features = constant_maps([[10, 4, 2, 1], [1, 2, 4, 10]])
    mixed = catchup_mix_features(features, 0.75, torch.tensor([1, 0]))
    assert torch.equal(mixed[0, 1:], features[0, 1:]) and torch.equal(mixed[0, 0], features[1, 0])


@pytest.mark.parametrize("selection", ["low", "high", "random"])
def test_exactly_floor_lam_c_channels_come_from_the_source(selection):
    generator = torch.Generator().manual_seed(1)
    for trial in range(20):
        batch, channels = 6, 7 + trial
        features = distinct_maps(batch, channels, seed=trial)
        lam = float(torch.rand((), generator=generator))
        perm = torch.randperm(batch, generator=generator)
        while torch.equal(perm, torch.arange(batch)):
            perm = torch.randperm(batch, generator=generator)
        mixed = catchup_mix_features(features, lam, perm, selection=selection, generator=generator)
        from_source = (mixed == features).all(dim=(2, 3)).sum(dim=1)
        from_partner = (mixed == features[perm]).all(dim=(2, 3)).sum(dim=1)
        moved = perm != torch.arange(batch)
        assert torch.all(from_source[moved] == math.floor(lam * channels))
        assert torch.all(from_partner[moved] == channels - math.floor(lam * channels))


def test_lam_one_keeps_input_and_lam_zero_gives_partner():
    features = distinct_maps(4, 5)
    perm = torch.tensor([2, 3, 0, 1])
    assert torch.equal(catchup_mix_features(features, 1.0, perm), features)
    assert torch.equal(catchup_mix_features(features, 0.0, perm), features[perm])


def test_identity_permutation_changes_nothing():
    features = torch.randn(5, 8, 4, 4)
    for lam in (0.0, 0.3, 1.0):
        assert torch.equal(catchup_mix_features(features, lam, torch.arange(5)), features)


def test_low_keeps_weak_channels_and_high_keeps_strong_ones():
    features = constant_maps([[10, 4, 2, 1], [1, 2, 4, 10]])
    perm = torch.tensor([1, 0])
    low = channel_norms(catchup_mix_features(features, 0.5, perm, selection="low"))[0]
    high = channel_norms(catchup_mix_features(features, 0.5, perm, selection="high"))[0]
    assert torch.allclose(low, torch.tensor([1.0, 2, 2, 1]))
    assert torch.allclose(high, torch.tensor([10.0, 4, 4, 10]))  # the opposite: strong maps survive


def test_relative_and_absolute_rfi_can_disagree():
    # The partner (sample 0) is large everywhere: absolute differences rank by raw size, relative by share.
    features = constant_maps([[100, 60, 40], [30, 2, 1]])
    perm = torch.tensor([1, 0])
    relative = catchup_mix_features(features, 1 / 3, perm, rfi="relative")
    absolute = catchup_mix_features(features, 1 / 3, perm, rfi="absolute")
    # RFI_1 relative = [30/33 - 0.5, 2/33 - 0.3, 1/33 - 0.2] = [0.41, -0.24, -0.17] -> keeps channel 1
    # RFI_1 absolute = [30 - 100, 2 - 60, 1 - 40] = [-70, -58, -39] -> keeps channel 0
    assert torch.equal(relative[1, 1], features[1, 1]) and not torch.equal(relative[1, 0], features[1, 0])
    assert torch.equal(absolute[1, 0], features[1, 0]) and not torch.equal(absolute[1, 1], features[1, 1])


def test_random_selection_follows_generator_and_is_uniform():
    features = constant_maps([[10, 4, 2, 1], [1, 2, 4, 10]])
    perm = torch.tensor([1, 0])
    draws = [
        catchup_mix_features(features, 0.5, perm, "random", generator=torch.Generator().manual_seed(s))
        for s in range(400)
    ]
    again = catchup_mix_features(features, 0.5, perm, "random", generator=torch.Generator().manual_seed(7))
    assert torch.equal(draws[7], again)
    kept = torch.stack([(d[0] == features[0]).flatten(1).all(1) for d in draws]).float().mean(0)
    # each channel kept in about half of the draws, unlike "low" which always keeps channels 2 and 3
    assert torch.all((kept > 0.4) & (kept < 0.6)), kept


def test_gradients_reach_both_samples_and_not_through_the_ranking():
    features = distinct_maps(4, 6).requires_grad_(True)
    perm = torch.tensor([1, 2, 3, 0])
    mixed = catchup_mix_features(features, 0.5, perm)
    mixed.sum().backward()
    own = (mixed == features).all(dim=(2, 3)).float()  # (B, C): channel kept by its own sample
    taken = (mixed == features[perm]).all(dim=(2, 3)).float()  # channel supplied by the partner
    # d sum / d features[i, c] = [i keeps c] + [the sample whose partner is i takes c]: exactly 0, 1 or 2,
    # which would not hold if the norms or the sort passed any gradient.
    inverse = torch.argsort(perm)
    expected = own + taken[inverse]
    assert torch.equal(features.grad[:, :, 0, 0], expected)
    assert torch.all(expected.sum(1) > 0)  # every sample of every pair receives gradient


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_features_are_ranked_by_their_exact_norms(dtype):
    # 512 values per map: a bf16/fp16 running sum of squares would round these near-equal norms together
    # and rank the channels at random; the op must rank them as float64 arithmetic on the same values does.
    generator = torch.Generator().manual_seed(0)
    features = (1 + 0.01 * torch.rand(2, 16, 16, 32, generator=generator)).to(dtype)
    perm = torch.tensor([1, 0])
    mixed = catchup_mix_features(features, 0.5, perm, rfi="absolute")
    assert mixed.dtype == dtype
    norms = features.double().flatten(2).norm(dim=2)
    influence = norms[0] - norms[1]
    expected_kept = influence.argsort()[:8]  # sample 0 keeps its 8 lowest-influence channels
    kept = (mixed[0] == features[0]).flatten(1).all(1).nonzero().squeeze(1)
    assert sorted(kept.tolist()) == sorted(expected_kept.tolist())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(features=torch.zeros(2, 3, 4)), "4-D"),
        (dict(perm=torch.tensor([0, 1, 2])), "shape"),
        (dict(perm=torch.tensor([0, 0])), "permutation"),
        (dict(perm=torch.tensor([0.0, 1.0])), "integer"),
        (dict(lam=1.5), "lam"),
        (dict(lam=-0.1), "lam"),
        (dict(selection="lowest"), "selection"),
        (dict(rfi="relativ"), "rfi"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_problem(kwargs, message):
    arguments = dict(features=torch.zeros(2, 3, 4, 4), lam=0.5, perm=torch.tensor([1, 0]))
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        catchup_mix_features(**arguments)


def test_mixed_cross_entropy_is_the_weighted_sum():
    logits = torch.randn(5, 3)
    a, b = torch.tensor([0, 1, 2, 0, 1]), torch.tensor([2, 2, 0, 1, 0])
    ce = torch.nn.functional.cross_entropy
    assert torch.allclose(mixed_cross_entropy(logits, a, b, 0.3), 0.3 * ce(logits, a) + 0.7 * ce(logits, b))
    assert torch.allclose(mixed_cross_entropy(logits, a, b, 1.0), ce(logits, a))
    smoothed = mixed_cross_entropy(logits, a, b, 0.3, label_smoothing=0.1)
    assert torch.allclose(smoothed, 0.3 * ce(logits, a, label_smoothing=0.1) + 0.7 * ce(logits, b, label_smoothing=0.1))


def test_mixup_is_convex_combination():
    x = torch.randn(4, 3, 2, 2)
    perm = torch.tensor([1, 0, 3, 2])
    assert torch.allclose(mixup(x, 0.25, perm), 0.25 * x + 0.75 * x[perm])


def test_cutmix_pastes_one_box_and_reports_its_area():
    x = torch.zeros(3, 1, 32, 32)
    x[1] = 1.0
    x[2] = 2.0
    perm = torch.tensor([1, 2, 0])
    for seed in range(30):
        mixed, lam = cutmix(x, 0.4, perm, torch.Generator().manual_seed(seed))
        pasted = (mixed[0] == 1.0).float()
        area = pasted.sum().item() / (32 * 32)
        assert math.isclose(lam, 1 - area)
        rows, cols = pasted[0].any(1).nonzero(), pasted[0].any(0).nonzero()
        if area > 0:  # the pasted region is one axis-aligned box
            assert pasted.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert lam >= 0.4 - 1e-6  # clipping at the border only shrinks the box
