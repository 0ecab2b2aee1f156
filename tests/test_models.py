"""The networks: hook points, reference sizes, adapters, FLOP counts, bad inputs."""

import copy
import os
import urllib.error

import pytest
import torch
import torchvision

import catchup_mix.models as models

OURS = ["preactresnet18", "wrn16_8", "resnext29_4_24"]
SMALL_WIDTH = {"preactresnet18": 8, "wrn16_8": 2, "resnext29_4_24": 8}


def hook_shapes(name: str, w: int) -> list[tuple[int, int, int]]:
    """(C, H, W) at k = 1.. for a 32x32 input, or 64x64 with its stride-2 stem, at width w."""
    if name == "preactresnet18":
        return [(w, 32, 32), (w, 32, 32), (2 * w, 16, 16), (4 * w, 8, 8), (8 * w, 4, 4)]
    if name == "wrn16_8":
        return [(w, 32, 32), (8 * w, 32, 32), (16 * w, 16, 16), (32 * w, 8, 8)]
    return [(w, 32, 32), (4 * w, 32, 32), (8 * w, 16, 16), (16 * w, 8, 8)]  # resnext29_4_24


def record(seen):
    def hook(features, k):
        seen.append((k, tuple(features.shape)))
        return features

    return hook


@pytest.mark.parametrize("image_size", [32, 64])
@pytest.mark.parametrize("name", OURS)
def test_hook_points_in_order_with_documented_shapes(name, image_size):
    w = SMALL_WIDTH[name]
    model = models.build(name, num_classes=7, image_size=image_size, width=w)
    seen = []
    logits = model(torch.randn(3, 3, image_size, image_size), feature_hook=record(seen))
    expected = hook_shapes(name, w)
    assert logits.shape == (3, 7)
    assert model.num_hook_points == {"preactresnet18": 5}.get(name, 4) == len(expected)
    assert seen == [(k, (3, *shape)) for k, shape in enumerate(expected, start=1)]
    assert model.hook_channels == [c for c, _, _ in expected]


@pytest.mark.parametrize("name", OURS)
def test_the_hook_return_value_is_what_the_network_continues_with(name):
    model = models.build(name, num_classes=5, width=SMALL_WIDTH[name]).eval()
    x = torch.randn(2, 3, 32, 32)
    plain = model(x)
    assert torch.equal(model(x, feature_hook=lambda f, k: f), plain)
    for zeroed in range(1, model.num_hook_points + 1):
        out = model(x, feature_hook=lambda f, k, zeroed=zeroed: torch.zeros_like(f) if k == zeroed else f)
        assert not torch.allclose(out, plain), f"zeroing hook point {zeroed} had no effect"


@pytest.mark.parametrize("name", [*OURS, "torchvision_resnet18"])
def test_channels_last_and_bf16_autocast(name):
    model = models.build(name, num_classes=5, width=SMALL_WIDTH.get(name)).eval()
    x = torch.randn(2, 3, 32, 32)
    reference = model(x)
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(model(x), reference, rtol=1e-4, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        seen = []
        low = model(x, feature_hook=record(seen))
    assert low.dtype == torch.bfloat16 and len(seen) == model.num_hook_points
    assert (low.float() - reference).norm() < 0.05 * reference.norm()


# Reference parameter counts, worked out by hand from the reference code (layer by layer, below), not from
# our modules: a conv has cin/groups * cout * k * k weights (+ cout with bias), a BN 2c, a linear i*o + o.
def conv(cin, cout, k, groups=1, bias=False):
    return cin // groups * cout * k * k + (cout if bias else 0)


def bn(c):
    return 2 * c


def linear(i, o):
    return i * o + o


def puzzlemix_preactresnet18_params(num_classes):
    # PuzzleMix models/preresnet.py: bare 3x3 stem; blocks bn-conv-bn-conv, 1x1 bias-free projection on a
    # change of shape; no final BN; linear 512 -> classes.
    def block(cin, cout):
        return bn(cin) + conv(cin, cout, 3) + bn(cout) + conv(cout, cout, 3) + (conv(cin, cout, 1) if cin != cout else 0)

    stages = [(64, 64), (64, 128), (128, 256), (256, 512)]
    return conv(3, 64, 3) + sum(block(a, b) + block(b, b) for a, b in stages) + linear(512, num_classes)


def comixup_wrn16_8_params(num_classes):
    # Co-Mixup models/wide_resnet.py: biased convs everywhere, 1x1 biased projection, final BN, linear.
    def block(cin, cout):
        projection = conv(cin, cout, 1, bias=True) if cin != cout else 0
        return bn(cin) + conv(cin, cout, 3, bias=True) + bn(cout) + conv(cout, cout, 3, bias=True) + projection

    stages = [(16, 128), (128, 256), (256, 512)]
    body = sum(block(a, b) + block(b, b) for a, b in stages)
    return conv(3, 16, 3, bias=True) + body + bn(512) + linear(512, num_classes)


def comixup_resnext29_4_24_params(num_classes):
    # Co-Mixup models/resnext.py: conv-BN stem; bottleneck D*C = 4 * floor(planes * 24 / 64) wide, expanded
    # to planes * 4, BN after each conv; the first block of each stage has a 1x1 conv + BN projection.
    def block(cin, planes, first):
        inner, out = 4 * (planes * 24 // 64), 4 * planes
        body = conv(cin, inner, 1) + bn(inner) + conv(inner, inner, 3, groups=4) + bn(inner)
        body += conv(inner, out, 1) + bn(out)
        return body + (conv(cin, out, 1) + bn(out) if first else 0)

    total, cin = conv(3, 64, 3) + bn(64), 64
    for planes in (64, 128, 256):
        total += block(cin, planes, True) + 2 * block(4 * planes, planes, False)
        cin = 4 * planes
    return total + linear(1024, num_classes)


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


def test_full_width_parameter_counts_match_the_reference_designs():
    preact = count_parameters(models.build("preactresnet18", 100))
    assert preact == puzzlemix_preactresnet18_params(100) == 11_217_316  # the usual "11.2M"
    wrn = count_parameters(models.build("wrn16_8", 100))
    assert wrn == comixup_wrn16_8_params(100)
    assert abs(wrn - 11.0e6) < 0.02 * 11.0e6  # WRN-16-8 is 11.0M in Zagoruyko & Komodakis (2016), Table 3
    resnext = count_parameters(models.build("resnext29_4_24", 100))
    assert resnext == comixup_resnext29_4_24_params(100)
    # torchvision's own figure for its ImageNet ResNets (weights metadata "num_params").
    for name, weights in [("torchvision_resnet18", torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
                          ("torchvision_resnet50", torchvision.models.ResNet50_Weights.IMAGENET1K_V1)]:
        assert count_parameters(models.build(name, 1000)) == weights.meta["num_params"]


def test_width_scales_every_layer():
    # Halving the width quarters every conv and linear weight; only BN, biases and the classifier's
    # bias scale differently, so the count drops by almost exactly 4.
    full, half = (count_parameters(models.build("preactresnet18", 10, width=w)) for w in (64, 32))
    assert 3.9 < full / half < 4.0


def test_reference_details_that_the_counts_do_not_see():
    wrn = models.build("wrn16_8", 10)
    # Co-Mixup's wide block puts the stride on its second conv.
    assert wrn.stages[1][0].conv1.stride == (1, 1) and wrn.stages[1][0].conv2.stride == (2, 2)
    resnext = models.build("resnext29_4_24", 10)
    # Co-Mixup's ResNeXt init: convs N(0, 2 / (k * k * cout)), classifier N(0, 2 / fan_in) with zero bias.
    expand = resnext.stages[2][2].residual[6]  # 1x1 conv 384 -> 1024
    assert abs(expand.weight.std().item() - (2 / 1024) ** 0.5) < 0.03 * (2 / 1024) ** 0.5
    assert abs(resnext.fc.weight.std().item() - (2 / 1024) ** 0.5) < 0.05 * (2 / 1024) ** 0.5
    assert torch.count_nonzero(resnext.fc.bias) == 0


def test_count_flops_preactresnet18_cifar():
    model = models.build("preactresnet18", 100)
    flops = models.count_flops(model, 32)
    macs = flops // 2  # count_flops counts 2 FLOPs per multiply-add
    # Hand count of multiply-adds: stem 27*64*32^2 = 1,769,472; stage 1 four 64->64 3x3 convs at 32^2 =
    # 150,994,944; stages 2-4 each 134,217,728 (four 3x3 convs and a 1x1 projection); fc 51,200.
    assert macs == 1_769_472 + 150_994_944 + 3 * 134_217_728 + 51_200
    assert abs(macs - 0.56e9) < 0.05 * 0.56e9  # the usual "0.56 GMACs" of a CIFAR ResNet-18
    assert model.training  # left in the mode it was found in
    model.stages[0].eval()
    models.count_flops(model, 32)
    assert model.training and not model.stages[0][1].bn1.training
    assert all(not m._forward_hooks for m in model.modules())  # its counting hooks are gone


def test_count_flops_torchvision_resnet_matches_torchvision_metadata():
    model = models.build("torchvision_resnet18", 1000)
    gmacs = models.count_flops(model, 224) / 2e9
    # torchvision's "_ops" figure (GFLOPS in its docs) counts one per multiply-add.
    assert abs(gmacs - torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["_ops"]) < 0.01


def torchvision_resnet18_hook_shapes():
    # 64x64 input: conv1 stride 2 and maxpool -> 16x16, then 16, 8, 4, 2.
    return [(64, 16, 16), (64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]


def test_adapter_on_torchvision_resnet18():
    model = models.build("torchvision_resnet18", num_classes=10).eval()
    assert isinstance(model, models.FeatureHookAdapter) and model.num_hook_points == 5
    assert model.hook_channels == [64, 64, 128, 256, 512]
    x = torch.randn(2, 3, 64, 64)
    plain = model(x)
    seen = []
    assert torch.equal(model(x, feature_hook=record(seen)), plain)
    assert seen == [(k, (2, *shape)) for k, shape in enumerate(torchvision_resnet18_hook_shapes(), start=1)]
    zeroed = model(x, feature_hook=lambda f, k: torch.zeros_like(f) if k == 3 else f)
    assert not torch.allclose(zeroed, plain)


def test_adapter_clears_the_hook_after_an_exception():
    model = models.build("torchvision_resnet18", num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    plain = model(x)

    def failing(features, k):
        if k == 3:
            raise RuntimeError("boom")
        return torch.zeros_like(features)

    with pytest.raises(RuntimeError, match="boom"):
        model(x, feature_hook=failing)
    # The forward hooks live on the wrapped network: calling it directly must not find `failing` set.
    assert torch.equal(model.model(x), plain)
    assert torch.equal(model(x), plain)


def test_adapter_deepcopy_hooks_the_copy():
    # e.g. an EMA copy of the model: its hooks must call the copy's feature_hook, not the original's.
    model = models.build("torchvision_resnet18", num_classes=10).eval()
    twin = copy.deepcopy(model)
    seen = []
    twin(torch.randn(1, 3, 64, 64), feature_hook=record(seen))
    assert [k for k, _ in seen] == [1, 2, 3, 4, 5]


def test_adapter_on_any_module_names():
    net = torchvision.models.resnet18(num_classes=3)
    adapter = models.FeatureHookAdapter(net, ["layer2", "layer4"])
    seen = []
    adapter(torch.randn(1, 3, 64, 64), feature_hook=record(seen))
    assert seen == [(1, (1, 128, 8, 8)), (2, (1, 512, 2, 2))]
    assert adapter.num_hook_points == 2 and adapter.hook_channels is None


def test_pretrained_weights_from_the_hub_cache(tmp_path, monkeypatch):
    # Offline use: a checkpoint placed in the torch hub cache is used without a download.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    planted = torchvision.models.resnet18().state_dict()
    target = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    os.makedirs(os.path.dirname(target))
    torch.save(planted, target)
    model = models.build("torchvision_resnet18", num_classes=10, pretrained=True)
    assert torch.equal(model.model.conv1.weight, planted["conv1.weight"])
    assert torch.equal(model.model.layer4[1].bn2.running_var, planted["layer4.1.bn2.running_var"])
    assert model.model.fc.out_features == 10  # a new classifier on ImageNet features
    assert models.build("torchvision_resnet18", 1000, pretrained=True).model.fc.weight.equal(planted["fc.weight"])


def test_pretrained_download_failure_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError, match="could not download") as failure:
        models.build("torchvision_resnet18", 10, pretrained=True)
    assert os.path.join(str(tmp_path), "hub", "checkpoints", "resnet18-f37072fd.pth") in str(failure.value)


def test_available():
    assert models.available() == [*OURS, "torchvision_resnet18", "torchvision_resnet50"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="resnet1001"), "unknown model"),
        (dict(name="preactresnet18", width=0), "width"),
        (dict(name="preactresnet18", width=-8), "width"),
        (dict(name="preactresnet18", width=8.0), "width"),
        (dict(name="wrn16_8", width=True), "width"),
        (dict(name="resnext29_4_24", width=12), "divisible by 8"),
        (dict(name="torchvision_resnet18", width=32), "fixed width"),
        (dict(name="preactresnet18", pretrained=True), "pretrained"),
        (dict(name="preactresnet18", num_classes=0), "num_classes"),
        (dict(name="preactresnet18", image_size=0), "image_size"),
    ],
)
def test_bad_build_arguments(kwargs, message):
    kwargs = {"num_classes": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        models.build(**kwargs)


def test_unknown_module_name_for_the_adapter():
    net = torchvision.models.resnet18()
    with pytest.raises(ValueError, match="layer5.*valid names include.*conv1"):
        models.FeatureHookAdapter(net, ["layer1", "layer5"])
    with pytest.raises(ValueError, match="hook_channels"):
        models.FeatureHookAdapter(net, ["layer1"], hook_channels=[64, 128])
