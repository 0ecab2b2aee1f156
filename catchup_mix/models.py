"""The networks of the paper's tables, each with numbered feature hook points; none knows about mixing.

    model = models.build("preactresnet18", num_classes=100)
    logits = model(images, feature_hook=lambda features, k: features)

Hook points: k = 1 is the stem output, k = 2..S+1 the output of each of the S stages (k = 0, the
input image, is the caller's). At each point the forward calls `features = feature_hook(features, k)`
and continues with what it returns. Every model has `num_hook_points` (= S + 1) and `hook_channels`
(channels at each point, k = 1 first).

What each network follows:
- preactresnet18: snu-mllab/PuzzleMix `models/preresnet.py` (identical in snu-mllab/Co-Mixup): 3x3 stem
  conv without BN, pre-activation basic blocks [2, 2, 2, 2], projection shortcuts as a bare 1x1 conv on
  the pre-activated input, no BN-ReLU before pooling, PyTorch default init. The stem conv has stride 2
  for 64x64 Tiny-ImageNet, as PuzzleMix `main.py` passes `stride = 2` for tiny-imagenet-200.
- wrn16_8: snu-mllab/Co-Mixup `models/wide_resnet.py` (from Manifold Mixup): convs with bias, the
  stride on the block's second conv, shortcut 1x1 conv on the raw block input, final BN-ReLU, no dropout
  (Co-Mixup removed it), PyTorch default init (its `conv_init` is never applied by `main.py`).
  Stem stride 2 for 64x64 as in Co-Mixup `main.py`.
- resnext29_4_24: snu-mllab/Co-Mixup `models/resnext.py`: conv-BN-ReLU stem, post-activation
  bottlenecks (cardinality 4, 24 channels per group at 64 planes), 1x1 conv + BN projections, He-normal
  conv init (fan_out) and linear init (fan_in, zero bias).
- torchvision_resnet18/50: torchvision's ResNets, hooked after `maxpool` and `layer1..4` through
  `FeatureHookAdapter`; `pretrained=True` loads the IMAGENET1K_V1 weights.

Deviations, all deliberate:
- Global average pooling is adaptive instead of a fixed `avg_pool2d(4)` / `(8)`: identical at the
  reference input sizes, and other sizes still work.
- Kept on purpose, not a deviation: WRN's final BN keeps the reference's momentum=0.9, although in PyTorch's convention that
  makes its test-time statistics those of the last one or two (mixed) training batches; it reads like a
  TensorFlow-convention slip, but the published WRN16-8 numbers were obtained with it.
- ResNeXt has no Tiny-ImageNet setting in the reference (its fixed 8x8 pooling breaks at 64x64); here it
  gets the same stride-2 stem as the others at image_size > 32. Its optional p=0.5 dropout before the
  classifier (off by default there) is not offered.
- `width` scales every layer of our own models proportionally, for fast CPU smoke runs; None is the
  paper's network.
"""

import functools
import os
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

FeatureHook = Callable[[torch.Tensor, int], torch.Tensor]


# ----------------------------------------------------------------------------------------------------
# Our own networks: stem -> stages (a hook point after each) -> head -> global average pool -> linear


class HookedCNN(nn.Module):
    """The forward shared by our networks; subclasses only build the parts."""

    def __init__(self, stem: nn.Module, stages: Sequence[nn.Module], head: nn.Module,
                 hook_channels: Sequence[int], num_classes: int):
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.head = head  # what runs between the last stage and the pooling (final BN-ReLU or nothing)
        self.fc = nn.Linear(hook_channels[-1], num_classes)
        self.hook_channels = list(hook_channels)
        self.num_hook_points = len(self.hook_channels)

    def forward(self, x: torch.Tensor, feature_hook: FeatureHook | None = None) -> torch.Tensor:
        for k, part in enumerate([self.stem, *self.stages], start=1):
            x = part(x)
            if feature_hook is not None:
                x = feature_hook(x, k)
        x = F.adaptive_avg_pool2d(self.head(x), 1).flatten(1)
        return self.fc(x)


def _stages(make_block: Callable[[int, int, int], nn.Module], in_channels: int, channels: Sequence[int],
            num_blocks: int) -> list[nn.Sequential]:
    """Stages of `num_blocks` blocks `make_block(in_channels, out_channels, stride)`. The first stage keeps
    the stem's resolution and each later one halves it; only a stage's first block changes shape."""
    stages = []
    for i, out_channels in enumerate(channels):
        blocks = [make_block(in_channels, out_channels, 1 if i == 0 else 2)]
        blocks += [make_block(out_channels, out_channels, 1) for _ in range(num_blocks - 1)]
        stages.append(nn.Sequential(*blocks))
        in_channels = out_channels
    return stages


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False, groups: int = 1):
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias, groups=groups)


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice; a projection shortcut takes the pre-activated input, an identity the raw one."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        needs_projection = stride != 1 or in_channels != out_channels
        self.shortcut = (nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
                         if needs_projection else None)

    def forward(self, x):
        activated = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(activated)
        out = self.conv2(F.relu(self.bn2(self.conv1(activated))))
        return out + shortcut


class PreActResNet18(HookedCNN):
    """Two pre-activation blocks per stage, stages 1x, 2x, 4x, 8x the stem width; no BN-ReLU at the end."""

    def __init__(self, num_classes: int, width: int = 64, stem_stride: int = 1):
        channels = [width, 2 * width, 4 * width, 8 * width]
        stages = _stages(PreActBlock, width, channels, 2)
        stem = _conv3x3(3, width, stem_stride)
        super().__init__(stem, stages, nn.Identity(), [width, *channels], num_classes)


class WideBasicBlock(nn.Module):
    """Co-Mixup's wide block: BN-ReLU-conv twice with the stride on the second conv; biased convs."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = _conv3x3(in_channels, out_channels, bias=True)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels, stride, bias=True)
        needs_projection = stride != 1 or in_channels != out_channels
        self.shortcut = (nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=True)
                         if needs_projection else nn.Identity())

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + self.shortcut(x)


class WideResNet16_8(HookedCNN):
    """Depth 16 = 6 * 2 + 4: two blocks per stage, stages 8x the stem width."""

    def __init__(self, num_classes: int, width: int = 16, stem_stride: int = 1):
        channels = [8 * width, 16 * width, 32 * width]
        stages = _stages(WideBasicBlock, width, channels, 2)
        stem = _conv3x3(3, width, stem_stride, bias=True)
        # momentum=0.9 as in the reference (see the module docstring)
        head = nn.Sequential(nn.BatchNorm2d(channels[-1], momentum=0.9), nn.ReLU())
        super().__init__(stem, stages, head, [width, *channels], num_classes)


class ResNeXtBottleneck(nn.Module):
    """Post-activation ResNeXt block (type C): 1x1 reduce, grouped 3x3, 1x1 expand, each with BN.

    The block's planes are out_channels / 4; its grouped conv has `cardinality` groups of
    floor(planes * base_width / 64) channels, as in the reference.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, *,
                 cardinality: int, base_width: int):
        super().__init__()
        inner = cardinality * (out_channels // 4 * base_width // 64)
        self.residual = nn.Sequential(
            nn.Conv2d(in_channels, inner, 1, bias=False), nn.BatchNorm2d(inner), nn.ReLU(),
            _conv3x3(inner, inner, stride, groups=cardinality), nn.BatchNorm2d(inner), nn.ReLU(),
            nn.Conv2d(inner, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
        )
        needs_projection = stride != 1 or in_channels != out_channels
        self.shortcut = (nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(out_channels))
                         if needs_projection else nn.Identity())

    def forward(self, x):
        return F.relu(self.residual(x) + self.shortcut(x))


class ResNeXt29_4x24d(HookedCNN):
    """Depth 29 = 9 * 3 + 2: three bottlenecks per stage, planes width, 2 width, 4 width expanded 4x;
    4 groups of 24 channels per 64 planes."""

    def __init__(self, num_classes: int, width: int = 64, stem_stride: int = 1):
        if width % 8:
            raise ValueError(f"resnext29_4_24 needs a width divisible by 8, got {width}: each of its 4 groups "
                             "has 24/64 of the stage width, which must stay a whole number")
        channels = [4 * width, 8 * width, 16 * width]
        block = functools.partial(ResNeXtBottleneck, cardinality=4, base_width=24)
        stages = _stages(block, width, channels, 3)
        stem = nn.Sequential(_conv3x3(3, width, stem_stride), nn.BatchNorm2d(width), nn.ReLU())
        super().__init__(stem, stages, nn.Identity(), [width, *channels], num_classes)
        # The reference's He-normal init: convs by fan_out, the classifier by fan_in with a zero bias.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------------------------------
# Networks we did not write: hook points through PyTorch forward hooks


class FeatureHookAdapter(nn.Module):
    """Gives a CNN we did not write the same `forward(x, feature_hook)` and hook points.

    Hook point k (1-based) is the output of `module_names[k - 1]`: while a feature_hook is set, a forward
    hook on that module replaces its output with `feature_hook(output, k)`. `hook_channels`, if known,
    is the channel count at each point.
    """

    def __init__(self, model: nn.Module, module_names: Sequence[str],
                 hook_channels: Sequence[int] | None = None):
        super().__init__()
        names = dict(model.named_modules())
        unknown = [n for n in module_names if not n or n not in names]
        if unknown:
            valid = [n for n in names if n][:12]
            raise ValueError(f"unknown module names {unknown}; valid names include {valid}")
        if hook_channels is not None and len(hook_channels) != len(module_names):
            raise ValueError(f"{len(hook_channels)} hook_channels for {len(module_names)} module names")
        self.model = model
        self.module_names = tuple(module_names)
        self.num_hook_points = len(self.module_names)
        self.hook_channels = None if hook_channels is None else list(hook_channels)
        self._feature_hook: FeatureHook | None = None
        for k, name in enumerate(self.module_names, start=1):
            # A bound method (not a closure) so that copy.deepcopy(adapter) hooks the copy, not the original.
            names[name].register_forward_hook(functools.partial(self._at_hook_point, k))

    def _at_hook_point(self, k: int, module: nn.Module, inputs, output: torch.Tensor):
        # Returning None leaves the module output as it is.
        return None if self._feature_hook is None else self._feature_hook(output, k)

    def forward(self, x: torch.Tensor, feature_hook: FeatureHook | None = None) -> torch.Tensor:
        self._feature_hook = feature_hook
        try:
            return self.model(x)
        finally:
            self._feature_hook = None  # never left set by an exception


TORCHVISION_RESNET_HOOKS = ("maxpool", "layer1", "layer2", "layer3", "layer4")


def adapt_torchvision_resnet(model: torchvision.models.ResNet) -> FeatureHookAdapter:
    """Hook points after the stem (conv-BN-ReLU-maxpool) and after each of the four stages."""
    # A stage's output channels are those of its last BatchNorm (bn2 of a basic block, bn3 of a bottleneck).
    stage_channels = []
    for name in TORCHVISION_RESNET_HOOKS[1:]:
        norms = [m for m in model.get_submodule(name).modules() if isinstance(m, nn.BatchNorm2d)]
        stage_channels.append(norms[-1].num_features)
    return FeatureHookAdapter(model, TORCHVISION_RESNET_HOOKS, [model.conv1.out_channels, *stage_channels])


_TORCHVISION = {
    "torchvision_resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    "torchvision_resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
}


def _build_torchvision(name: str, num_classes: int, pretrained: bool) -> FeatureHookAdapter:
    constructor, weights = _TORCHVISION[name]
    if not pretrained:
        return adapt_torchvision_resnet(constructor(num_classes=num_classes))
    try:
        model = constructor(weights=weights)
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a corrupt file raises RuntimeError
        target = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
        raise RuntimeError(
            f"could not download or load the torchvision ImageNet weights for {name} ({err}). "
            f"Offline, fetch {weights.url} elsewhere and place it at {target} (the torch hub cache; "
            f"set TORCH_HOME to move it)."
        ) from err
    if num_classes != model.fc.out_features:
        model.fc = nn.Linear(model.fc.in_features, num_classes)  # ImageNet features, a new classifier
    return adapt_torchvision_resnet(model)


# ----------------------------------------------------------------------------------------------------
# The registry

# name -> (class, the paper's width)
_OURS = {
    "preactresnet18": (PreActResNet18, 64),
    "wrn16_8": (WideResNet16_8, 16),
    "resnext29_4_24": (ResNeXt29_4x24d, 64),
}


def available() -> list[str]:
    return [*_OURS, *_TORCHVISION]


def _check_positive_int(what: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")


def build(name: str, num_classes: int, image_size: int = 32, width: int | None = None,
          pretrained: bool = False) -> nn.Module:
    """A network with `forward(x, feature_hook=None)`, `num_hook_points` and `hook_channels`.

    image_size: 32 (CIFAR) or 64 (Tiny-ImageNet); above 32 our own models get a stride-2 stem, as in
    PuzzleMix / Co-Mixup, so the stage resolutions match CIFAR's. torchvision models ignore it.
    width: base channel count of our own models (None = the paper's: 64, 16, 64), scaling every layer.
    pretrained: torchvision ImageNet weights; torchvision models only.
    """
    if name not in available():
        raise ValueError(f"unknown model {name!r}; use one of {available()}")
    _check_positive_int("num_classes", num_classes)
    _check_positive_int("image_size", image_size)
    if name in _TORCHVISION:
        if width is not None:
            raise ValueError(f"{name} has a fixed width; pass width=None")
        return _build_torchvision(name, num_classes, pretrained)
    if pretrained:
        raise ValueError(f"no pretrained weights for {name}; pretrained=True is for {list(_TORCHVISION)}")
    cls, paper_width = _OURS[name]
    width = paper_width if width is None else width
    _check_positive_int("width", width)
    return cls(num_classes, width=width, stem_stride=1 if image_size <= 32 else 2)


def count_flops(model: nn.Module, image_size: int, in_channels: int = 3) -> int:
    """Forward FLOPs of one image, 2 per multiply-add, over Conv2d and Linear layers (BN, ReLU, adds and
    biases are not counted). Divide by 2 for the MAC figures most papers quote."""
    flops = 0

    def conv(module, inputs, output):
        nonlocal flops
        kh, kw = module.kernel_size
        flops += 2 * output.numel() * (module.in_channels // module.groups) * kh * kw

    def linear(module, inputs, output):
        nonlocal flops
        flops += 2 * output.numel() * module.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear))
    like = next(model.parameters())
    modes = {m: m.training for m in model.modules()}  # per module: some may be frozen in eval mode
    model.eval()  # no BN statistics updated by the dummy image
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, image_size, image_size, device=like.device, dtype=like.dtype))
    finally:
        for m, training in modes.items():
            m.training = training
        for handle in handles:
            handle.remove()
    return flops
