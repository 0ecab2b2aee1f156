"""Filter analysis on hand-made cases: channel statistics, reliance, flatness, Grad-CAM, the training probe,
and the artifacts that draw them."""

import json
import shutil
from collections import defaultdict
from pathlib import Path

import matplotlib.image
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from catchup_mix import analysis, data, methods, models
from catchup_mix.checkpoint import load_checkpoint
from catchup_mix.config import make_config
from catchup_mix.train import train
from reproduce import artifacts, filters, runner
from reproduce.__main__ import main as reproduce_main


def tiny_model(seed=0, num_classes=5):
    torch.manual_seed(seed)
    return models.build("preactresnet18", num_classes, width=4)


def images_and_labels(n=12, seed=0, num_classes=5):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=generator), torch.randint(0, num_classes, (n,), generator=generator)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------------
# Channel statistics


@pytest.mark.parametrize("channels", [1, 2, 7, 64])
def test_gini_of_equal_norms_is_zero_and_of_one_nonzero_channel_is_c_minus_1_over_c(channels):
    assert analysis.gini(torch.full((channels,), 3.5)) == pytest.approx(0, abs=1e-12)
    one = torch.zeros(channels)
    one[channels // 2] = 2.0
    assert analysis.gini(one) == pytest.approx((channels - 1) / channels, abs=1e-12)


def test_gini_equals_its_pairwise_definition():
    values = torch.rand(33, generator=torch.Generator().manual_seed(1)) * 5
    pairwise = (values[:, None] - values[None, :]).abs().sum() / (2 * len(values) ** 2 * values.mean())
    assert analysis.gini(values) == pytest.approx(float(pairwise), rel=1e-6)
    assert analysis.gini(values * 10) == pytest.approx(analysis.gini(values))  # scale-free


@pytest.mark.parametrize("channels", [3, 10, 64])
@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 1.0])
def test_top_share_of_equal_norms_is_the_fraction(channels, fraction):
    assert analysis.top_share(torch.ones(channels), fraction) == pytest.approx(fraction, abs=1e-12)


def test_top_share_of_one_dominant_channel_and_of_a_hand_case():
    assert analysis.top_share(torch.tensor([10.0] + [0.0] * 9), 0.1) == pytest.approx(1.0)
    # the top 25% of 4 channels is the largest one: 4 of 4 + 3 + 2 + 1
    assert analysis.top_share(torch.tensor([1.0, 4.0, 2.0, 3.0]), 0.25) == pytest.approx(0.4)
    # 30% of 5 channels: the largest in full and half of the next: (5 + 0.5 * 4) / 15
    assert analysis.top_share(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), 0.3) == pytest.approx(7 / 15)


def test_lagging_fraction_counts_channels_under_the_threshold_times_the_mean():
    norms = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.05])  # mean 0.81: 0.05 is under 0.081, over 0.0081
    assert analysis.lagging_fraction(norms) == pytest.approx(0.2)
    assert analysis.lagging_fraction(norms, threshold=0.01) == 0.0
    assert analysis.lagging_fraction(norms, threshold=1.5) == 1.0  # every channel under 1.5 x 0.81


@pytest.mark.parametrize("bad", [torch.tensor([]), torch.tensor([1.0, -1.0]), torch.tensor([1.0, float("nan")])])
def test_statistics_reject_what_is_not_a_set_of_norms(bad):
    for statistic in (analysis.gini, analysis.top_share, analysis.lagging_fraction):
        with pytest.raises(ValueError, match="values"):
            statistic(bad)


def test_channel_norms_are_mean_l2_norms_per_channel_and_leave_the_model_as_it_was():
    model = tiny_model()
    model.train()  # BN in training mode would update its statistics: the measurement must not
    images, labels = images_and_labels()
    before = state(model)
    seen = {}
    model.eval()
    with torch.no_grad():
        model(images, feature_hook=lambda f, k: seen.setdefault(k, f))
    model.train()
    expected = {k: f.flatten(2).norm(dim=2).mean(0) for k, f in seen.items()}

    as_pairs = analysis.channel_norms(model, [(images[:5], labels[:5]), (images[5:], labels[5:])])
    as_tensors = analysis.channel_norms(model, [images[:7], images[7:]])
    assert list(as_pairs) == [1, 2, 3, 4, 5]
    for k, norms in expected.items():
        assert as_pairs[k].shape == (model.hook_channels[k - 1],)
        torch.testing.assert_close(as_pairs[k], norms, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(as_tensors[k], norms, rtol=1e-5, atol=1e-6)
    assert model.training and same_state(state(model), before)
    with pytest.raises(ValueError, match="iterable of batches"):
        analysis.channel_norms(model, images)


def test_filter_statistics_and_probe_report_every_hook_point():
    model = tiny_model()
    images, _ = images_and_labels()
    statistics = analysis.filter_statistics(analysis.channel_norms(model, [images]), lagging_threshold=0.5)
    assert set(statistics) == {"gini", "top_share", "bottom_share", "lagging", "lagging_0.25", "lagging_0.5"}
    assert all(list(values) == [1, 2, 3, 4, 5] for values in statistics.values())
    # lagging under a higher threshold counts at least the channels under a lower one
    assert all(statistics["lagging_0.25"][k] <= statistics["lagging_0.5"][k] for k in range(1, 6))
    row = analysis.probe_filters(model, images, lagging_threshold=0.5)
    assert row["filter_gini"] == {str(k): round(v, 4) for k, v in statistics["gini"].items()}
    assert row["filter_lagging"] == {str(k): round(v, 4) for k, v in statistics["lagging"].items()}
    assert row["filter_bottom_share"] == {str(k): round(v, 4) for k, v in statistics["bottom_share"].items()}
    assert row["filter_probe_s"] > 0


class TwoConvs(nn.Module):
    """conv_a reads the image; its channel 1 is always negative, so after the ReLU conv_b and conv_c (which read
    the same tensor) see it dead; channel 0 is the image's first channel, channel 2 its second."""

    num_hook_points = 1

    def __init__(self):
        super().__init__()
        self.conv_a = nn.Conv2d(2, 3, 1)
        self.bn = nn.BatchNorm2d(3)
        self.conv_b = nn.Conv2d(3, 2, 1)
        self.conv_c = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            self.conv_a.weight.copy_(torch.tensor([[1.0, 0], [0, 0], [0, 1]]).view(3, 2, 1, 1))
            self.conv_a.bias.copy_(torch.tensor([0.0, -1.0, 0.0]))
            self.bn.weight.copy_(torch.tensor([1.0, -0.5, 2.0]))

    def forward(self, x, feature_hook=None):
        activated = F.relu(self.conv_a(x))
        out = self.conv_b(activated) + self.conv_c(activated)
        return out if feature_hook is None else feature_hook(out, 1)


def test_conv_inputs_are_their_channels_norms_and_zero_fractions_and_say_what_they_read():
    model = TwoConvs().train()
    images = torch.randn(6, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    before = state(model)
    activated = F.relu(torch.stack([images[:, 0], -torch.ones_like(images[:, 0]), images[:, 1]], 1))
    norms = analysis.conv_input_norms(model, [images[:4], images[4:]])
    assert list(norms) == ["conv_a", "conv_b", "conv_c"]
    torch.testing.assert_close(norms["conv_a"], images.flatten(2).norm(dim=2).mean(0))
    torch.testing.assert_close(norms["conv_b"], activated.flatten(2).norm(dim=2).mean(0))
    dead = analysis.dead_channels(model, [images])
    expected = (activated == 0).float().flatten(2).mean((0, 2))
    torch.testing.assert_close(dead["conv_b"], expected)
    assert dead["conv_b"][1] == 1.0 and 0.2 < dead["conv_b"][0] < 0.8 and dead["conv_a"].sum() == 0
    seen = analysis.observe_activations(model, [images])
    assert seen.reads == {"conv_a": "input", "conv_b": "conv_b", "conv_c": "conv_b"}
    assert seen.distinct_convs() == ["conv_b"]
    assert model.training and same_state(state(model), before)
    torch.testing.assert_close(analysis.batchnorm_scales(model)["bn"], torch.tensor([1.0, 0.5, 2.0]))
    statistics = analysis.block_statistics({"conv_b": norms["conv_b"]}, {"conv_b": dead["conv_b"]},
                                           analysis.batchnorm_scales(model))
    assert statistics["conv_input_dead"] == {"conv_b": pytest.approx(1 / 3)}
    assert statistics["conv_input_lagging"]["conv_b"] == pytest.approx(1 / 3)  # the dead channel: norm 0
    assert statistics["bn_scale_lagging_0.5"] == {"bn": pytest.approx(1 / 3)}  # 0.5 < 0.5 x mean 7/6


def test_conv_inputs_of_every_network_and_of_an_adapted_one():
    for name, width in (("preactresnet18", 4), ("wrn16_8", 1), ("resnext29_4_24", 8)):
        model = models.build(name, 5, width=width)
        convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
        seen = analysis.observe_activations(model, [torch.randn(3, 3, 32, 32)])
        assert list(seen.conv_norms) == list(seen.conv_zero_fractions) == list(convs)  # every conv, in module order
        assert all(seen.conv_norms[n].shape == (m.in_channels,) for n, m in convs.items())
        assert [n for n, reads in seen.reads.items() if reads == "input"] == [next(iter(convs))]  # the stem
    # a pre-activation block's projection shortcut reads conv1's input, the post-BN+ReLU tensor
    assert analysis.observe_activations(tiny_model(), [torch.randn(2, 3, 32, 32)]).reads["stages.1.0.shortcut"] == \
        "stages.1.0.conv1"
    import torchvision

    adapted = models.adapt_torchvision_resnet(torchvision.models.resnet18(num_classes=5))
    dead = analysis.dead_channels(adapted, [torch.randn(2, 3, 64, 64)])
    assert "model.layer1.0.conv1" in dead and dead["model.layer1.0.conv1"].shape == (64,)
    # the plain torchvision ResNet inside (no feature_hook) has the same conv inputs, but no hook points to measure
    plain, images = adapted.model, [torch.randn(2, 3, 64, 64)]
    plain_dead, adapted_dead = analysis.dead_channels(plain, images), analysis.dead_channels(adapted, images)
    assert list(plain_dead) == [name.removeprefix("model.") for name in adapted_dead]
    assert all(torch.equal(plain_dead[name.removeprefix("model.")], zeros) for name, zeros in adapted_dead.items())
    with pytest.raises(TypeError, match="FeatureHookAdapter"):
        analysis.channel_norms(plain, images)


def test_bottom_share_is_the_weakest_fraction_of_the_total():
    norms = torch.tensor([10.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])  # total 55
    assert analysis.bottom_share(norms, 0.1) == pytest.approx(1 / 55)
    assert analysis.bottom_share(norms, 0.25) == pytest.approx((1 + 2 + 0.5 * 3) / 55)  # 2.5 channels
    assert analysis.bottom_share(torch.ones(7), 0.1) == pytest.approx(0.1)  # all equal: the fraction itself
    assert analysis.top_share(norms, 0.1) == pytest.approx(10 / 55)


def test_fixed_batch_spreads_over_the_classes_and_is_always_the_same():
    dataset = data.load("synthetic", num_classes=5, train_per_class=8, test_per_class=4)
    images, labels = analysis.fixed_batch(dataset, "test", 5)
    assert sorted(labels.tolist()) == [0, 1, 2, 3, 4]  # the split is sorted by class: one of each
    again, _ = analysis.fixed_batch(dataset, "test", 5)
    assert torch.equal(images, again) and images.shape == (5, 3, 32, 32)
    _, labels = analysis.fixed_batch(dataset, "test", 10, seed=3)
    assert labels.bincount().tolist() == [2, 2, 2, 2, 2]
    assert len(analysis.fixed_batch(dataset, "train", 1000)[1]) == 40  # at most the whole split


# ---------------------------------------------------------------------------------------------------
# Reliance


class Recording(nn.Module):
    """Wraps a model; records, call after call, what each hook point passes on after the caller's hook."""

    def __init__(self, model):
        super().__init__()
        self.model, self.num_hook_points, self.passed = model, model.num_hook_points, defaultdict(list)

    def forward(self, x, feature_hook=None):
        def hook(features, k):
            features = features if feature_hook is None else feature_hook(features, k)
            self.passed[k].append(features.detach().clone())
            return features

        return self.model(x, feature_hook=hook)


def test_zeroing_no_channel_keeps_the_accuracy_and_zeroing_all_zeroes_the_hook_output():
    model = Recording(tiny_model())
    images, labels = images_and_labels(n=20)
    model.eval()
    with torch.no_grad():
        clean = 100.0 * float((model(images).argmax(1) == labels).float().mean())
    before = state(model)
    model.passed.clear()
    result = analysis.reliance(model, [(images, labels)], hook_point=3, fractions=[0.0, 1.0], random_draws=1)
    assert result["top"][0] == result["lowest"][0] == result["random"][0] == pytest.approx(clean)
    assert result["channels_zeroed"] == [0, model.model.hook_channels[2]]
    # forward passes: the norms, p = 0, then p = 1 for top, lowest and random: hook point 3 passed on zeros
    assert len(model.passed[3]) == 5
    assert all(torch.count_nonzero(passed) == 0 for passed in model.passed[3][2:])
    assert torch.count_nonzero(model.passed[3][1]) > 0 and torch.count_nonzero(model.passed[2][-1]) > 0
    assert same_state(state(model), before)


def test_reliance_zeroes_the_strongest_the_weakest_and_random_channels():
    model = Recording(tiny_model())
    images, labels = images_and_labels(n=10)
    norms = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0, 0.5, 6.0, 0.1])  # hook point 3 has 8 channels
    result = analysis.reliance(model, [(images, labels)], hook_point=3, fractions=[0.25], norms=norms,
                               random_draws=6)
    zeroed = [set(torch.nonzero(passed.abs().sum((0, 2, 3)) == 0).flatten().tolist()) for passed in model.passed[3]]
    top, lowest, *random = zeroed  # round(0.25 x 8) = 2 channels each
    assert top == {6, 0} and lowest == {5, 7} and len(random) == 6 and all(len(r) == 2 for r in random)
    assert len({frozenset(r) for r in random}) > 1  # the draws differ
    draws = result["random_draws"][0]
    assert result["random"] == [pytest.approx(sum(draws) / 6)]
    assert result["random_std"] == [pytest.approx(torch.tensor(draws).std().item())]
    with pytest.raises(ValueError, match="hook point 2 has 4 channels"):
        analysis.reliance(model, [(images, labels)], hook_point=2, fractions=[0.25], norms=norms)


def test_reliance_rejects_a_hook_point_the_model_lacks():
    with pytest.raises(ValueError, match="hook_point"):
        analysis.reliance(tiny_model(), [images_and_labels()], hook_point=6)


# ---------------------------------------------------------------------------------------------------
# Flatness on known quadratics


class Linear(nn.Module):
    """f(x) = x w: with the squared error, a quadratic loss of Hessian (2/N) X^T X."""

    def __init__(self, dim):
        super().__init__()
        self.w = nn.Parameter(torch.randn(dim, generator=torch.Generator().manual_seed(3)))

    def forward(self, x):
        return x @ self.w


def squared_error(outputs, targets):
    return ((outputs - targets) ** 2).mean()


def quadratic_problem():
    generator = torch.Generator().manual_seed(0)
    scales = torch.tensor([3.0, 1.5, 1.0, 0.8, 0.5, 0.3])  # a clear gap below the top eigenvalue
    x = torch.randn(40, 6, generator=generator) * scales
    y = torch.randn(40, generator=generator)
    hessian = 2 * x.T @ x / len(x)
    batches = [(x[:15], y[:15]), (x[15:], y[15:])]  # unequal batches: the mean is over samples
    return batches, hessian


def test_top_hessian_eigenvalue_of_a_known_quadratic_within_1_percent():
    batches, hessian = quadratic_problem()
    expected = float(torch.linalg.eigvalsh(hessian)[-1])
    found = analysis.hessian_top_eigenvalue(Linear(6), squared_error, batches, iters=20, seed=0)
    assert found == pytest.approx(expected, rel=0.01)
    value, info = analysis.hessian_top_eigenvalue(Linear(6), squared_error, batches, iters=20, seed=0,
                                                  return_info=True)
    assert value == found and info["converged"] and info["iterations"] < 20
    assert info["residual"] < 0.1 and info["residual"] >= 0
    # capped after 2 products: not converged, and the residual says the vector is not yet an eigenvector
    _, capped = analysis.hessian_top_eigenvalue(Linear(6), squared_error, batches, iters=2, seed=0, return_info=True)
    assert capped["iterations"] == 2 and not capped["converged"] and capped["residual"] > info["residual"]


class Diagonal(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.w = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return self.w.expand(len(x), -1)


def test_hutchinson_trace_is_exact_for_a_diagonal_hessian_and_close_for_a_full_one():
    curvature = torch.tensor([4.0, 1.0, 0.5, 2.0])  # loss 0.5 sum a_i w_i^2 per sample: Hessian diag(a)
    batches = [(torch.zeros(3, 1), torch.zeros(3))]
    loss = lambda outputs, targets: 0.5 * (curvature * outputs**2).sum(1).mean()  # noqa: E731
    assert analysis.hessian_trace(Diagonal(4), loss, batches, samples=3) == pytest.approx(7.5, rel=1e-6)
    batches, hessian = quadratic_problem()
    estimate = analysis.hessian_trace(Linear(6), squared_error, batches, samples=300, seed=0)
    assert estimate == pytest.approx(float(hessian.trace()), rel=0.1)
    value, info = analysis.hessian_trace(Linear(6), squared_error, batches, samples=300, seed=0, return_info=True)
    assert value == estimate and info["samples"] == 300
    assert 0 < info["stderr"] and abs(value - float(hessian.trace())) < 4 * info["stderr"]
    _, exact = analysis.hessian_trace(Diagonal(4), loss, [(torch.zeros(3, 1), torch.zeros(3))], samples=3,
                                      return_info=True)
    assert exact["stderr"] == pytest.approx(0, abs=1e-9)  # v^T diag(a) v = trace for every Rademacher v


def test_filter_normalised_direction_matches_each_filter_norm_and_leaves_1d_parameters():
    model = tiny_model()
    direction = analysis.filter_normalized_direction(model, torch.Generator().manual_seed(0))
    again = analysis.filter_normalized_direction(model, torch.Generator().manual_seed(0))
    for p, d, d2 in zip(model.parameters(), direction, again, strict=True):
        assert d.shape == p.shape and torch.equal(d, d2)
        if p.dim() <= 1:
            assert torch.count_nonzero(d) == 0  # biases and BN parameters: not moved (Li et al.'s biasbn)
        else:
            torch.testing.assert_close(d.flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1))


def test_landscape_at_distance_zero_is_the_checkpoint_loss_and_the_weights_come_back():
    model = tiny_model()
    images, labels = images_and_labels(n=16)
    batches = [(images[:10], labels[:10]), (images[10:], labels[10:])]
    model.eval()
    with torch.no_grad():
        checkpoint_loss = float(F.cross_entropy(model(images), labels))
    model.train()
    before = state(model)
    alphas = (-0.5, 0.0, 0.5)
    curve = analysis.loss_landscape_1d(model, F.cross_entropy, batches, alphas, seed=4)
    assert curve[1] == pytest.approx(checkpoint_loss, rel=1e-6)
    assert curve[0] != pytest.approx(curve[1]) and curve[2] != pytest.approx(curve[1])
    surface = analysis.loss_landscape_2d(model, F.cross_entropy, batches, alphas, seed=4)
    assert surface[1] == pytest.approx(curve)  # beta = 0: the 1-D landscape of the same seed
    assert len(surface) == 3 and all(len(row) == 3 for row in surface)
    assert model.training and same_state(state(model), before)


# ---------------------------------------------------------------------------------------------------
# Grad-CAM


class Constant(nn.Module):
    def __init__(self, channels, size):
        super().__init__()
        self.value = nn.Parameter(torch.linspace(0.5, 2.0, channels).view(1, channels, 1, 1).expand(1, channels, size,
                                                                                                 size).clone())

    def forward(self, x):
        return self.value.expand(len(x), -1, -1, -1)


def test_grad_cam_of_a_model_whose_last_stage_is_constant_is_uniform():
    model = tiny_model()
    model.stages[-1] = Constant(model.hook_channels[-1], 4)
    with torch.no_grad():
        model.fc.weight.abs_()  # every class score grows with every channel: a positive map
    images, labels = images_and_labels(n=3)
    cams = analysis.grad_cam(model, images, labels)
    assert cams.shape == (3, 4, 4)
    assert (cams > 0).all()
    torch.testing.assert_close(cams, cams[:, :1, :1].expand_as(cams))


@pytest.mark.parametrize("name", ["preactresnet18", "torchvision_resnet18"])
def test_grad_cam_equals_captums_layer_grad_cam(name):
    from captum.attr import LayerGradCam

    torch.manual_seed(0)
    model = models.build(name, 5, width=4 if name == "preactresnet18" else None).eval()
    layer = model.stages[-1] if name == "preactresnet18" else model.model.layer4
    images, labels = images_and_labels(n=4)
    ours = analysis.grad_cam(model, images, labels)
    theirs = LayerGradCam(model, layer).attribute(images, target=labels, relu_attributions=True)
    assert ours.abs().sum() > 0
    torch.testing.assert_close(ours, theirs.squeeze(1), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# The probe during training

TINY = dict(dataset="synthetic", num_classes=4, train_per_class=24, test_per_class=12, model="preactresnet18",
            width=4, epochs=2, batch_size=16, lr=0.05, schedule="cosine", method="catchup_mix", deterministic=True,
            log_every=2)


@pytest.fixture
def restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


def rows(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_the_probe_changes_no_training_result(tmp_path, restore_determinism):
    train(make_config({**TINY, "output_dir": str(tmp_path / "off")}))
    train(make_config({**TINY, "output_dir": str(tmp_path / "on"), "filter_probe": 8}))
    weights = [load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")["model"] for name in ("off", "on")]
    assert same_state(*weights)
    probe_keys = {"filter_gini", "filter_top_share", "filter_bottom_share", "filter_lagging", "filter_lagging_0.25",
                  "filter_lagging_0.5", "filter_probe_s", *analysis.PROBE_BLOCK_STATISTICS}
    timing = {"images_per_s", "epoch_time_s", "eval_time_s"} | probe_keys
    off, on = rows(tmp_path / "off"), rows(tmp_path / "on")
    assert [{k: v for k, v in r.items() if k not in timing} for r in off] == \
           [{k: v for k, v in r.items() if k not in timing} for r in on]
    assert all(not probe_keys & set(r) for r in off)
    for row in on:
        assert list(row["filter_gini"]) == ["1", "2", "3", "4", "5"] and 0 <= row["filter_lagging"]["5"] <= 1

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "on" / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"filter_gini/1", "filter_top_share/5", "filter_lagging/3", "layer_counts/0"} <= set(tags)


def test_a_run_keeps_its_key_with_the_probe_off_and_is_its_own_run_with_it_on():
    config = {**TINY, "seed": 0}
    assert runner.run_key(config) == runner.run_key({**config, "filter_probe": 0, "lagging_threshold": 0.1})
    assert runner.run_key({**config, "filter_probe": 50}) != runner.run_key(config)
    with pytest.raises(ValueError, match="filter_probe"):
        make_config({**TINY, "filter_probe": -1})


# ---------------------------------------------------------------------------------------------------
# The artifacts, end to end on tiny runs

TINY_TRAINING = dict(epochs=2, batch_size=10, lr=0.05, schedule="onecycle", weight_decay=5e-4, log_every=10**6,
                     device="cpu")
TINY_SETUP = dict(reliance_fractions=(0.0, 0.25, 0.5), landscape_images=20, landscape_batch=20, alphas_1d=(-1, 0, 1),
                  grid_2d=(-1, 0, 1), hessian_iters=2, trace_samples=1, gradcam_images=2)
TINY_REGISTRY = ["vanilla", "catchup_mix"]  # every artifact covers the registry: two methods are enough here


@pytest.fixture
def tiny_scale(monkeypatch):
    monkeypatch.setattr(methods, "available", lambda: list(TINY_REGISTRY))
    monkeypatch.setattr(artifacts, "SMOKE_TRAINING", TINY_TRAINING)
    monkeypatch.setattr(artifacts, "SMOKE_SUBSET", dict(num_classes=2, train_per_class=10, test_per_class=5))
    monkeypatch.setattr(artifacts, "SMOKE_WIDTH", {"preactresnet18": 4, "wrn16_8": 1, "resnext29_4_24": 8})
    monkeypatch.setitem(filters.SETUP, "smoke", TINY_SETUP)
    monkeypatch.setitem(filters.PROBE_IMAGES, "smoke", 4)


def figure_is_drawn(out, name):
    image = matplotlib.image.imread(out / "figures" / "smoke" / f"{name}.png")
    assert image.shape[0] > 200 and image[..., :3].std() > 0.05  # not blank
    assert (out / "figures" / "smoke" / f"{name}.pdf").read_bytes().startswith(b"%PDF")
    return json.loads((out / "figures" / "smoke" / f"{name}.json").read_text())


@pytest.mark.slow
def test_filter_artifacts_share_table1_runs_and_write_figures_numbers_and_tables(tmp_path, tiny_scale):
    settings = artifacts.Settings("smoke", [0], tmp_path)
    table1 = {run.key for run in artifacts.plan_table1(settings)}
    for name in ("figure_filters", "figure_reliance", "figure_landscape", "figure_gradcam"):
        planned = artifacts.ARTIFACTS[name].plan(settings)
        assert {run.key for run in planned} <= table1 and len(planned) == len(methods.available())
        assert reproduce_main([name, "--scale", "smoke", "--out", str(tmp_path)]) == 0
    # trained once, for all four
    assert len(list((tmp_path / "runs" / "smoke").iterdir())) == len(methods.available())

    numbers = figure_is_drawn(tmp_path, "figure_filters")
    assert set(numbers["methods"]) == set(methods.available())
    markdown = (tmp_path / "tables" / "smoke" / "figure_filters.md").read_text()
    assert "smoke scale, not paper numbers" in markdown and "| catchup_mix |" in markdown

    reliance = figure_is_drawn(tmp_path, "figure_reliance")["methods"]["vanilla"]["5"]
    assert reliance["fractions"] == [0.0, 0.25, 0.5]
    assert reliance["top"]["mean"][0] == reliance["lowest"]["mean"][0] == reliance["random"]["mean"][0]
    assert "| vanilla |" in (tmp_path / "tables" / "smoke" / "figure_reliance.md").read_text()

    landscape = figure_is_drawn(tmp_path, "figure_landscape")["methods"]["catchup_mix"]
    center = landscape["landscape_1d"]["mean"][1]
    assert landscape["landscape_2d"]["loss"][1][1] == pytest.approx(center)  # both pass through the checkpoint
    assert landscape["top_eigenvalue"]["mean"] > 0
    table = (tmp_path / "tables" / "smoke" / "figure_landscape.md").read_text()
    assert "Top eigenvalue" in table and "| vanilla |" in table

    gradcam = figure_is_drawn(tmp_path, "figure_gradcam")
    assert gradcam["labels"] == [0, 1] and len(gradcam["methods"]["catchup_mix"]["cams"]) == 2


@pytest.mark.slow
def test_lagging_artifact_trains_its_own_probed_runs_and_draws_them(tmp_path, tiny_scale):
    settings = artifacts.Settings("smoke", [0], tmp_path)
    runs = artifacts.plan_lagging(settings)
    assert all(run.config["filter_probe"] == 4 for run in runs)
    assert not {run.key for run in runs} & {run.key for run in artifacts.plan_table1(settings)}
    paper = artifacts.plan_lagging(artifacts.Settings("paper", [0], tmp_path))
    assert all(run.config["epochs"] == 100 and run.config["dataset"] == "cifar100" for run in paper)
    assert reproduce_main(["figure_lagging", "--scale", "smoke", "--out", str(tmp_path)]) == 0
    numbers = figure_is_drawn(tmp_path, "figure_lagging")
    curve = numbers["methods"]["catchup_mix"]["filter_lagging"]["5"]
    assert curve["epochs"] == [1, 2] and all(0 <= value <= 100 for value in curve["mean"])


@pytest.mark.slow
def test_a_result_without_its_checkpoint_is_trained_again_for_a_measurement(tmp_path, tiny_scale):
    run = artifacts.plan_table1_preactresnet18(artifacts.Settings("smoke", [0], tmp_path))[0]
    result = runner.execute(run, tmp_path)
    shutil.rmtree(run.run_dir(tmp_path))  # the results are committed, the runs folder is not
    assert runner.find_result(run, tmp_path) == result
    path = runner.checkpoint(run, tmp_path)
    assert path == run.run_dir(tmp_path) / "checkpoints" / "last.pt"
    saved = load_checkpoint(path)
    assert saved["epoch"] == TINY_TRAINING["epochs"] and saved["config"]["method"] == run.config["method"]
