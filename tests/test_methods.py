"""The method registry: one interface for every method, hooks at the sampled layer only, seeds repeat."""

import math

import pytest
import torch
import torchvision

from catchup_mix import methods, mixed_cross_entropy, models, ops
from catchup_mix.methods import MixedBatch
from catchup_mix.ops import soft_target_loss

SMALL_WIDTH = {"preactresnet18": 8, "wrn16_8": 4, "resnext29_4_24": 16}


def small_model(name, num_classes=10, image_size=32):
    width = SMALL_WIDTH.get(name)
    return models.build(name, num_classes, image_size=image_size, width=width)


def every_method(num_hook_points, **options):
    return [methods.build(name, num_hook_points=num_hook_points, **options) for name in methods.available()]


def as_tensor(lam):
    return torch.as_tensor(lam, dtype=torch.float32)


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def test_registry_lists_the_issue_methods():
    assert set(methods.available()) >= {"vanilla", "mixup", "cutmix", "manifold_mixup", "catchup_mix"}


def test_unknown_name_or_option_lists_the_valid_ones():
    with pytest.raises(ValueError, match="available: .*catchup_mix"):
        methods.build("catchupmix")
    with pytest.raises(ValueError, match="valid options: .*selection"):
        methods.build("catchup_mix", selektion="low")


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(alpha=0), "alpha"),
        (dict(prob=1.5), "prob"),
        (dict(selection="middle"), "selection"),
        (dict(rfi="norm"), "rfi"),
        (dict(label="soft"), "label"),
        (dict(rank_by="gamma"), "rank_by"),
        (dict(layers=(0, 9), num_hook_points=5), "layers"),
        (dict(layers=()), "layers"),
        (dict(), "num_hook_points"),  # "all layers" needs the model's hook count
    ],
)
def test_bad_catchup_options_raise(options, message):
    with pytest.raises(ValueError, match=message):
        methods.build("catchup_mix", **options)


def test_every_method_returns_the_uniform_batch():
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8)
    model = small_model("preactresnet18")
    for method in every_method(5, prob=1.0):
        batch = method(images, labels, generator=seeded(), model=model)
        assert isinstance(batch, MixedBatch)
        lam = as_tensor(batch.lam)
        assert batch.inputs.shape == images.shape and ((0 <= lam) & (lam <= 1)).all()
        assert lam.dim() == 0 or lam.shape == labels.shape
        assert batch.targets_a.shape == batch.targets_b.shape == labels.shape
        if batch.soft_targets is None:  # else the pair only summarises the mixture (Co-Mixup)
            assert sorted(batch.targets_b.tolist()) == labels.tolist()  # a permutation of the labels
        assert (batch.layer is None) == (method.name == "vanilla")
        assert (batch.feature_hook is None) == (batch.layer in (None, 0))


def test_same_seeded_generator_gives_identical_batches():
    images, labels = torch.randn(16, 3, 32, 32), torch.arange(16)
    features = torch.randn(16, 32, 8, 8)
    model = small_model("preactresnet18", num_classes=16)
    for method in every_method(5):
        for seed in range(6):
            first, second = (method(images, labels, generator=seeded(seed), model=model) for _ in range(2))
            assert torch.equal(first.inputs, second.inputs) and torch.equal(as_tensor(first.lam), as_tensor(second.lam))
            assert first.layer == second.layer and torch.equal(first.targets_b, second.targets_b)
            assert torch.equal(first.target_distribution(16), second.target_distribution(16))
            if first.feature_hook is not None:
                mixed = first.feature_hook(features, first.layer)
                assert torch.equal(mixed, second.feature_hook(features, second.layer))


def test_layers_are_drawn_uniformly_from_the_set():
    method = methods.build("catchup_mix", num_hook_points=5)
    generator = seeded()
    images, labels = torch.randn(4, 3, 8, 8), torch.arange(4)
    layers = [method(images, labels, generator=generator).layer for _ in range(1200)]
    counts = [layers.count(k) for k in range(6)]
    assert all(150 < count < 250 for count in counts), counts  # 200 expected each
    manifold = methods.build("manifold_mixup")
    assert {manifold(images, labels, generator=generator).layer for _ in range(100)} == {0, 2, 3}


def test_prob_controls_how_often_a_batch_is_mixed():
    method = methods.build("catchup_mix", num_hook_points=5, prob=0.25)
    generator = seeded()
    images, labels = torch.randn(4, 3, 8, 8), torch.arange(4)
    mixed = sum(method(images, labels, generator=generator).layer is not None for _ in range(2000))
    assert 400 < mixed < 600


def test_catchup_mix_layer_zero_is_cutmix_on_the_images():
    method = methods.build("catchup_mix", layers=(0,))
    images = torch.arange(4).float()[:, None, None, None].expand(4, 1, 16, 16).contiguous()
    for seed in range(10):
        batch = method(images, torch.arange(4), generator=seeded(seed))
        assert batch.feature_hook is None
        moved = batch.targets_b != torch.arange(4)  # samples whose partner is another sample
        from_partner = (batch.inputs != images)[moved].float().mean().item()
        assert math.isclose(batch.lam, 1 - from_partner, abs_tol=1e-6)


def test_catchup_mix_feature_hook_fires_at_the_sampled_layer_only():
    method = methods.build("catchup_mix", layers=(3,))
    batch = method(torch.randn(6, 3, 8, 8), torch.arange(6), generator=seeded())
    features = torch.randn(6, 10, 4, 4)
    for k in (1, 2, 4, 5):
        assert batch.feature_hook(features, k) is features
    mixed = batch.feature_hook(features, 3)
    kept = (mixed == features).all(dim=(2, 3)).sum(dim=1)
    moved = batch.targets_b != torch.arange(6)
    assert torch.all(kept[moved] == math.floor(batch.lam * 10))


def test_catchup_mix_substituted_channels_come_from_the_sample_named_in_targets_b():
    # Labels are not the batch index here, so the partner is found through targets_b and each sample's
    # distinct channel values, not by assuming labels == arange.
    method = methods.build("catchup_mix", layers=(2,))
    labels = torch.tensor([7, 3, 9, 1, 5, 0])
    ident = torch.arange(6 * 8, dtype=torch.float32).reshape(6, 8)  # value names (sample, channel)
    features = (ident * 10)[:, :, None, None].expand(6, 8, 3, 3).contiguous()
    for seed in range(10):
        batch = method(torch.randn(6, 3, 8, 8), labels, generator=seeded(seed))
        mixed = batch.feature_hook(features, 2)
        for i in range(6):
            partner = (labels == batch.targets_b[i]).nonzero().item()
            sources = (mixed[i, :, 0, 0] / 10).long() // 8  # which sample each channel came from
            assert set(sources.tolist()) <= {i, partner}
            assert (sources == partner).sum() == 8 - math.floor(batch.lam * 8) or partner == i


def test_label_channels_sets_lam_to_the_kept_fraction():
    method = methods.build("catchup_mix", layers=(1,), label="channels")
    for seed in range(5):
        batch = method(torch.randn(4, 3, 8, 8), torch.arange(4), generator=seeded(seed))
        drawn = batch.lam
        batch.feature_hook(torch.randn(4, 7, 2, 2), 1)
        assert batch.lam == math.floor(drawn * 7) / 7


def test_manifold_mixup_hook_mixes_features_convexly():
    method = methods.build("manifold_mixup", layers=(2,))
    batch = method(torch.randn(4, 3, 8, 8), torch.arange(4), generator=seeded(3))
    features = torch.randn(4, 5, 2, 2)
    perm = batch.targets_b  # labels are arange, so targets_b is the permutation itself
    expected = batch.lam * features + (1 - batch.lam) * features[perm]
    assert torch.allclose(batch.feature_hook(features, 2), expected, atol=1e-6)


@pytest.mark.parametrize("model_name", ["preactresnet18", "wrn16_8", "resnext29_4_24"])
def test_every_method_trains_one_step_on_every_model(model_name):
    torch.manual_seed(0)
    model = small_model(model_name)
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for method in every_method(model.num_hook_points, prob=1.0):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        before = [p.detach().clone() for p in model.parameters()]
        batch = method(images, labels, generator=seeded(), model=model)
        logits = model(batch.inputs, feature_hook=batch.feature_hook)
        loss = soft_target_loss(logits, batch.target_distribution(10))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert logits.shape == (8, 10) and torch.isfinite(loss)
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("model_name", ["preactresnet18", "wrn16_8", "resnext29_4_24"])
def test_catchup_hook_mixes_inside_the_model_at_the_drawn_layer(model_name):
    model = small_model(model_name).eval()
    calls = []

    def recording(hook):
        def wrapped(features, k):
            out = hook(features, k)
            calls.append((k, out is not features))
            return out

        return wrapped

    method = methods.build("catchup_mix", num_hook_points=model.num_hook_points)
    for seed in range(12):
        batch = method(torch.randn(4, 3, 32, 32), torch.arange(4), generator=seeded(seed))
        if batch.feature_hook is None:
            continue
        calls.clear()
        model(batch.inputs, feature_hook=recording(batch.feature_hook))
        assert [k for k, _ in calls] == list(range(1, model.num_hook_points + 1))
        assert [k for k, changed in calls if changed] == [batch.layer]


@pytest.mark.parametrize("model_name, layer, batchnorm", [("preactresnet18", 3, "stages.2.0.bn1"),
                                                          ("wrn16_8", 4, "head.0"), ("preactresnet18", 5, None),
                                                          ("resnext29_4_24", 2, None)])
def test_rank_by_next_conv_input_ranks_by_what_the_next_bn_and_relu_pass_on(model_name, layer, batchnorm):
    """The project's variant: channels ranked by ReLU(BN(features)) through the BN after the hook point (batch
    statistics, as in training); where no BN follows (the last stage of PreActResNet, any ResNeXt hook point),
    by the features themselves. The draws are those of the paper's ranking: only the channels chosen differ."""
    model = small_model(model_name).eval()  # eval: the forwards here move no BN statistics, nor may the method
    with torch.no_grad():  # silence some channels after the BN: their maps are strong, what the conv sees is not
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight[::3] = 0.0
                module.bias[::3] = -1.0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, labels = torch.randn(6, 3, 32, 32), torch.arange(6)
    seen = {}

    def mixed_by(method):
        batch = method(images, labels, generator=seeded(3), model=model)

        def hook(features, k):
            seen[k] = features
            return batch.feature_hook(features, k)

        assert batch.layer == layer
        with torch.no_grad():
            model(batch.inputs, feature_hook=hook)
        return batch, hook(seen[layer], layer)

    options = dict(num_hook_points=model.num_hook_points, layers=(layer,))
    batch, variant = mixed_by(methods.build("catchup_mix", rank_by="next_conv_input", **options))
    paper_batch, paper = mixed_by(methods.build("catchup_mix", **options))
    assert paper_batch.lam == batch.lam and torch.equal(paper_batch.targets_b, batch.targets_b)
    features = seen[layer]
    perm = torch.tensor([int((labels == t).nonzero()) for t in batch.targets_b])
    if batchnorm is None:
        assert torch.equal(variant, paper)
        return
    module = model.get_submodule(batchnorm)
    conv_input = torch.relu(torch.nn.functional.batch_norm(features, None, None, module.weight, module.bias,
                                                          training=True, eps=module.eps))
    expected = ops.catchup_mix_features(features, batch.lam, perm, ranked_by=conv_input)
    assert torch.equal(variant, expected) and not torch.equal(variant, paper)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # no BN statistics moved
    with pytest.raises(ValueError, match="ranked_by has shape"):
        ops.catchup_mix_features(features, 0.5, perm, ranked_by=conv_input[:, :2])


def test_adapter_runs_catchup_mix_on_torchvision_resnet18():
    torch.manual_seed(0)
    model = models.FeatureHookAdapter(torchvision.models.resnet18(num_classes=10),
                                      ("maxpool", "layer1", "layer2", "layer3", "layer4"))
    method = methods.build("catchup_mix", num_hook_points=model.num_hook_points, layers=(4,))
    images, labels = torch.randn(4, 3, 64, 64), torch.randint(0, 10, (4,))
    batch = method(images, labels, generator=seeded())
    seen = []
    model(batch.inputs, feature_hook=lambda f, k: seen.append((k, f.shape[1])) or batch.feature_hook(f, k))
    assert seen == [(1, 64), (2, 64), (3, 128), (4, 256), (5, 512)]
    logits = model(batch.inputs, feature_hook=batch.feature_hook)
    plain = model(batch.inputs)
    assert not torch.allclose(logits, plain)  # the mix at layer 4 changed the output
    mixed_cross_entropy(logits, batch.targets_a, batch.targets_b, batch.lam).backward()
    assert model.model.conv1.weight.grad is not None


def test_bf16_features_flow_through_a_hooked_model():
    model = small_model("preactresnet18").eval()
    method = methods.build("catchup_mix", layers=(2,))
    batch = method(torch.randn(4, 3, 32, 32), torch.arange(4), generator=seeded())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(batch.inputs, feature_hook=batch.feature_hook)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
