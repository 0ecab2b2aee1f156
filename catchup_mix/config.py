"""Typed training configuration, the named protocol presets, and their validation.

A run is described by one flat `Config`. It starts from a preset (or a JSON/TOML file), takes
`key=value` overrides, and is validated before any work starts: an unknown key or a bad value
stops the run with a message that lists what is allowed.
"""

import dataclasses
import difflib
import json
import math
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin

import torch

from .precision import native_bf16

SCHEDULES = ("step", "cosine", "onecycle")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LOSSES = ("ce", "softmax_bce")


@dataclass
class Config:
    # data
    dataset: str = "synthetic"
    data_root: str | None = None  # folder of the dataset files; unused for synthetic
    download: bool = False  # let torchvision download CIFAR when the files are missing
    num_classes: int | None = None  # keep only the first N classes (smoke runs); None = all
    train_per_class: int | None = None  # keep the first n training images per class; None = all
    test_per_class: int | None = None
    crop_padding: int | None = None  # zero padding before the random training crop; None = the dataset's own
    # model
    model: str = "preactresnet18"
    width: int | None = None  # base channels; None = the paper's width
    pretrained: bool = False  # ImageNet weights, torchvision models only
    # mixing
    method: str = "vanilla"
    method_options: dict[str, Any] = field(default_factory=dict)
    # optimisation (defaults: the Co-Mixup CIFAR-100 protocol)
    epochs: int = 300
    batch_size: int = 100  # global batch; split over GPUs under torchrun
    lr: float = 0.2
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    schedule: str = "step"  # step: lr x gamma at each milestone; cosine; onecycle: linear up then down
    milestones: list[int] = field(default_factory=lambda: [100, 200])
    gamma: float = 0.1
    warmup_epochs: float = 0.0  # linear warm-up before the schedule (cosine and step)
    loss: str = "ce"  # or "softmax_bce": BCE of the softmax against the mixed target (PuzzleMix, Co-Mixup)
    label_smoothing: float = 0.0
    # run
    seed: int = 0
    deterministic: bool = False  # bitwise repeatable on the CPU; deterministic kernels on CUDA (slower)
    device: str = "auto"
    # auto: bf16 autocast on GPUs with native bf16, fp16 autocast + GradScaler on older GPUs, fp32 on the CPU
    precision: str = "auto"
    channels_last: bool = True  # on CUDA
    compile: bool = False  # torch.compile the model
    output_dir: str = "runs/default"
    eval_every: int = 1  # test every k epochs, and at each of the last 10 epochs
    log_every: int = 50  # steps between progress updates and finite-loss checks
    # filter probe: after each epoch, channel-norm Gini, top-10% share and lagging fraction per hook point of
    # this many fixed test images, into metrics.jsonl and TensorBoard (catchup_mix.analysis); 0 = off
    filter_probe: int = 0
    lagging_threshold: float = 0.1  # a channel lags when its mean norm is under this x its layer's mean


# The reference protocols, every setting spelled out: docs/protocols.md gives the file and line of the
# reference code each one comes from, and tests/test_protocols.py holds these presets to that card.
_REFERENCE_SGD = dict(schedule="step", gamma=0.1, momentum=0.9, nesterov=True)
PRESETS: dict[str, dict[str, Any]] = {
    # Co-Mixup (Kim et al. 2021) main.py: PreActResNet-18 / WRN16-8 / ResNeXt29-4-24 on CIFAR-100; every method,
    # vanilla included, trained with BCE on the softmax.
    "cifar100_300ep": dict(
        dataset="cifar100", epochs=300, batch_size=100, lr=0.2, weight_decay=1e-4, milestones=[100, 200],
        loss="softmax_bce", crop_padding=2, **_REFERENCE_SGD,
    ),
    # PuzzleMix / GuidedMixup main.py: PreActResNet-18 on CIFAR-100, 1200 epochs.
    "cifar100_1200ep": dict(
        dataset="cifar100", epochs=1200, batch_size=100, lr=0.1, weight_decay=1e-4, milestones=[400, 800],
        loss="softmax_bce", crop_padding=2, **_REFERENCE_SGD,
    ),
    # PuzzleMix README / main.py: PreActResNet-18 on Tiny-ImageNet (64 px, stride-2 stem), 1200 epochs.
    "tiny_imagenet_1200ep": dict(
        dataset="tiny_imagenet", epochs=1200, batch_size=100, lr=0.2, weight_decay=1e-4, milestones=[600, 900],
        loss="softmax_bce", crop_padding=4, **_REFERENCE_SGD,
    ),
    # GuidedMixup FGVC/scripts/fgvc/cub.sh + main.py defaults: torchvision ResNet through the hook adapter,
    # short side 256 then a 224 crop, cross-entropy (that code's default). ImageNet-pretrained as in the
    # paper family's fine-grained tables (cub.sh itself needs --model pretrained_resnet18 for that).
    "fgvc_300ep": dict(
        dataset="cub200", model="torchvision_resnet18", pretrained=True, epochs=300, batch_size=16, lr=0.01,
        weight_decay=5e-4, milestones=[150, 225], loss="ce", crop_padding=0, **_REFERENCE_SGD,
    ),
    # Minutes on a laptop CPU: the built-in synthetic data and a narrow PreActResNet-18.
    "smoke": dict(
        dataset="synthetic", width=16, epochs=10, batch_size=128, lr=0.1, weight_decay=5e-4,
        schedule="onecycle", output_dir="runs/smoke",
    ),
}


class ConfigError(ValueError):
    """A configuration that cannot run; the message says what is wrong and what is allowed."""


def load_config(source: str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Build a validated Config from a preset name or a .json/.toml file, then `overrides`."""
    values: dict[str, Any] = {}
    if source:
        values.update(_read_source(source))
    values.update(overrides or {})
    return make_config(values)


def make_config(values: dict[str, Any]) -> Config:
    known = {f.name: f for f in dataclasses.fields(Config)}
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {key!r}.{hint} Valid keys: {', '.join(known)}")
    config = Config(**{key: _coerce(known[key], value) for key, value in values.items()})
    validate(config)
    return config


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["lr=0.1", "method_options.alpha=2"]` -> {"lr": 0.1, "method_options": {"alpha": 2}}.

    Values are read as JSON where they parse (numbers, true/false/null, lists, objects) and as
    plain strings otherwise. A dotted key sets one entry of a dict-valued key.
    """
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {pair!r} is not of the form key=value")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        if "." in key:
            parent, child = key.split(".", 1)
            overrides.setdefault(parent, {})[child] = value
        else:
            overrides[key] = value
    return overrides


def validate(config: Config) -> None:
    """Reject values that cannot work, naming the allowed ones. Imports stay local: light to load."""
    from . import data, methods, models

    def check(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    check(config.dataset in data.available(), f"unknown dataset {config.dataset!r}; available: {', '.join(data.available())}")
    check(config.model in models.available(), f"unknown model {config.model!r}; available: {', '.join(models.available())}")
    check(config.method in methods.available(), f"unknown method {config.method!r}; available: {', '.join(methods.available())}")
    check(config.schedule in SCHEDULES, f"unknown schedule {config.schedule!r}; use one of {', '.join(SCHEDULES)}")
    check(config.device in DEVICES, f"unknown device {config.device!r}; use one of {', '.join(DEVICES)}")
    check(config.precision in PRECISIONS,
          f"unknown precision {config.precision!r}; use one of {', '.join(PRECISIONS)}")
    check(config.loss in LOSSES, f"unknown loss {config.loss!r}; use one of {', '.join(LOSSES)}")
    check(not (config.device == "cpu" and config.precision in ("bf16", "fp16")),
          f"precision={config.precision} is for GPUs; on the CPU use precision=fp32 (or auto)")
    for key in ("epochs", "batch_size", "log_every", "eval_every"):
        check(getattr(config, key) >= 1, f"{key} must be >= 1, got {getattr(config, key)}")
    for key in ("lr", "weight_decay", "momentum", "warmup_epochs", "label_smoothing"):
        value = getattr(config, key)
        check(math.isfinite(value) and value >= 0, f"{key} must be a finite number >= 0, got {value}")
    check(config.lr > 0, f"lr must be > 0, got {config.lr}")
    check(config.label_smoothing < 1, f"label_smoothing must be < 1, got {config.label_smoothing}")
    check(0 < config.gamma <= 1, f"gamma must lie in (0, 1], got {config.gamma}")
    check(all(m >= 1 for m in config.milestones), f"milestones must be epochs >= 1, got {config.milestones}")
    check(config.crop_padding is None or config.crop_padding >= 0,
          f"crop_padding must be >= 0 or null, got {config.crop_padding}")
    check(config.filter_probe >= 0, f"filter_probe must be >= 0 (0 = off), got {config.filter_probe}")
    check(math.isfinite(config.lagging_threshold) and config.lagging_threshold > 0,
          f"lagging_threshold must be a positive number, got {config.lagging_threshold}")
    for key in ("num_classes", "train_per_class", "test_per_class", "width"):
        value = getattr(config, key)
        check(value is None or value >= 1, f"{key} must be >= 1 or null, got {value}")
    # Build the model on the meta device (no memory, no time) to learn its hook points, then the
    # method, which checks its option names and values against them.
    settable = methods.settable_options(config.method)
    unknown = sorted(set(config.method_options) - set(settable))
    check(not unknown, f"unknown method option(s) {unknown} for method {config.method!r}; settable with "
                       f"--set method_options.NAME=VALUE: {', '.join(settable)}"
                       + (" (num_hook_points comes from the model)" if "num_hook_points" in unknown else ""))
    try:
        with torch.device("meta"):
            model = models.build(config.model, num_classes=10, width=config.width)
        methods.build(config.method, num_hook_points=model.num_hook_points, **config.method_options)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def resolve_runtime(config: Config) -> Config:
    """The config with `device` and `precision` fixed to what this machine runs ("auto" resolved).

    The resolved values are what a checkpoint and a run-cache key record, so that a CPU fp32 run is
    never continued, or looked up, as a GPU bf16 one.
    """
    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda was asked for, but torch sees no CUDA GPU; use device=cpu or auto")
    precision = config.precision
    if precision == "auto":
        precision = "fp32" if device == "cpu" else ("bf16" if native_bf16() else "fp16")
    if precision == "bf16" and device == "cuda" and not native_bf16():
        raise ConfigError(f"precision=bf16 but {torch.cuda.get_device_name()} has no native bf16 (it would be "
                          "emulated, slowly): use precision=fp16 (with loss scaling) or fp32, or leave it auto")
    if device == "cpu" and precision != "fp32":
        raise ConfigError(f"precision={precision} is for GPUs; on the CPU use precision=fp32 (or auto)")
    return dataclasses.replace(config, device=device, precision=precision)


def _read_source(source: str) -> dict[str, Any]:
    if source in PRESETS:
        return dict(PRESETS[source])
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"config {source!r} is neither a preset ({', '.join(PRESETS)}) nor an existing file")
    if path.suffix == ".json":
        return json.loads(path.read_text())
    if path.suffix == ".toml":
        import tomllib  # Python 3.11+

        return tomllib.loads(path.read_text())
    raise ConfigError(f"config file {source!r} must end in .json or .toml")


def _coerce(spec: dataclasses.Field, value: Any) -> Any:
    """Check a value against the field's annotation, turning ints into floats where a float is due."""
    allowed = get_args(spec.type) if isinstance(spec.type, types.UnionType) else (spec.type,)
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"{spec.name} may not be null")
    for kind in allowed:
        base = get_origin(kind) or kind
        if base is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if base in (str, bool, dict) and isinstance(value, base):
            return value
        if base is list and isinstance(value, list | tuple):
            item = get_args(kind)[0]
            if all(isinstance(v, item) and not isinstance(v, bool) for v in value):
                return list(value)
    names = " or ".join(getattr(kind, "__name__", str(kind)) for kind in allowed)
    raise ConfigError(f"{spec.name} must be {names}, got {value!r}")
