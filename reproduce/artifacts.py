"""Every table and figure of the paper, as a plan of runs and a way to report them.

An artifact says which training runs it needs at each scale (`plan`), optionally measures something
from them (`measure`: timings, feature maps), and writes its tables and figures (`render`). Tables
take their rows from the method registry, so a newly registered method joins every table.

Scales: `paper` uses the presets of docs/protocols.md; `smoke` shrinks widths, data and epochs so an
artifact finishes in minutes on 2 CPU cores, on the built-in synthetic data or, with --data-root,
on a subset of real data of the same size (5 classes, 100 training and 40 test images each); `medium`
(the evidence artifact only) trains for CPU hours on real data, long enough for regularisation to pay.
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from catchup_mix import methods
from catchup_mix.config import PRESETS, ConfigError

from . import evidence, evidence_report, filters, report, robustness, runner
from .runner import Run

SCALES = ("smoke", "medium", "medium_wd", "paper")
CPU_SCALES = ("medium", "medium_wd")  # the evidence's: CPU hours on real data


def default_seeds(scale: str) -> list[int]:
    """--seeds when not given: 0 at smoke scale, 0 1 2 at paper scale, 0-9 at the CPU scales (where each run
    type has its own number of seeds in the schedule)."""
    return {"smoke": [0], "paper": [0, 1, 2]}.get(scale, list(range(10)))


@dataclass
class Settings:
    scale: str  # one of SCALES
    seeds: list[int]
    out: Path  # where runs/, results/, tables/ and figures/ go
    data_root: str | None = None
    download: bool = False
    overrides: dict = field(default_factory=dict)  # --set KEY=VALUE, applied to every run's config
    run_types: list[str] | None = None  # --run-types: the evidence's run types to plan (None: all)


@dataclass
class Artifact:
    name: str
    reproduces: str
    plan: Callable[[Settings], list[Run]]
    render: Callable[[Settings, list, dict | None], list[Path]]  # (settings, [(run, result)], measurement)
    measure: Callable[[Settings, list], dict] | None = None  # extra measurement after the runs
    # a measurement of each run right after its training (runner.execute): built from the settings
    measure_each_run: Callable[[Settings], object] | None = None
    paper_gpu_hours: Callable[[Settings], float] | None = None  # for artifacts that are not training runs
    scales: tuple[str, ...] = ("smoke", "paper")

    def runs(self, settings: Settings) -> list[Run]:
        """The plan with the command line's --set overrides (a dict value updates a dict-valued key)."""
        return [dataclasses.replace(run, config=with_overrides(run.config, settings.overrides))
                for run in self.plan(settings)]

    def runs_to_train(self, settings: Settings) -> list[Run]:
        """What this command trains: `runs`, only those of settings.run_types (--run-types) where given. The
        tables still show every run stored, so a new method's runs are compared with the stored ones."""
        runs = self.runs(settings)
        if not settings.run_types:
            return runs
        types = list(dict.fromkeys(run.labels.get("run_type") for run in runs))
        if unknown := [name for name in settings.run_types if name not in types]:
            raise ConfigError(f"unknown run type(s) {unknown} for {self.name} at {settings.scale} scale; its run "
                              f"types: {', '.join(map(str, types))} (a method you register joins them)")
        return [run for run in runs if run.labels.get("run_type") in settings.run_types]


def with_overrides(config: dict, overrides: dict) -> dict:
    merged = dict(config)
    for key, value in overrides.items():
        both_dicts = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = {**merged[key], **value} if both_dicts else value
    return merged


# ---------------------------------------------------------------------------------------------------
# Scales

TABLE1_MODELS = ("preactresnet18", "wrn16_8", "resnext29_4_24")
FGVC_DATASETS = ("cub200", "stanford_cars", "fgvc_aircraft")
FGVC_MODELS = ("torchvision_resnet18", "torchvision_resnet50")

# Narrow networks for the CPU; every model keeps its architecture, only the channel counts shrink.
SMOKE_WIDTH = {"preactresnet18": 8, "wrn16_8": 2, "resnext29_4_24": 8}
# Sized so that README's first command (table1: 30 runs) takes minutes on 2 CPU cores, two worker processes of
# one torch thread each: 3 epochs of 20 steps, in which a width-8 PreActResNet-18 reaches 23-33% (chance 20%) in
# about 3.5 s of one core; WRN16-8 at width 2 takes about 7 s, ResNeXt29 at width 8 about 11 s (grouped convs are
# slow on CPUs) and stays near chance. They show that every path runs, not how the methods rank.
# device=cpu: the committed smoke results are CPU fp32 numbers, found on any machine, trained on one torch thread
# (reproduce/runner.py), so they repeat bit for bit on a CPU of the same kind with the locked libraries and
# nowhere else (docs/evidence.md, "Repeatability"); `--set device=cuda` trains them on a GPU, as new runs.
SMOKE_TRAINING = dict(epochs=3, batch_size=25, lr=0.05, schedule="onecycle", weight_decay=5e-4, log_every=10**6,
                      device="cpu")
SMOKE_SUBSET = dict(num_classes=5, train_per_class=100, test_per_class=40)
# Cheaper settings of the costliest baselines, at smoke scale only (every table lists them in its notes):
# Co-Mixup in partitions of 5, as many per batch of 25 as the paper's batch of 100 has partitions of 20 (the
# default 20 would make one partition of 20 and one of 5): a training step 2.2x cheaper on PreActResNet-18
# (225 -> 104 ms at one thread); AlignMixup's Sinkhorn stopped after 20 iterations instead of 100: 2.0x cheaper
# on WRN16-8, whose last stage is 8 x 8 (252 -> 126 ms).
SMOKE_METHOD_OPTIONS = {"comixup": {"part": 5}, "alignmixup": {"max_iter": 20}}


def smoke_data(settings: Settings, real_dataset: str = "imagefolder") -> dict:
    """Synthetic by default; with --data-root, the same-sized subset of the real dataset there."""
    if settings.data_root is None:
        return dict(dataset="synthetic", **SMOKE_SUBSET)
    return dict(dataset=real_dataset, data_root=settings.data_root, **SMOKE_SUBSET)


def base_config(settings: Settings, preset: str, real_smoke_dataset: str = "imagefolder") -> dict:
    """The paper's preset, or the smoke settings; data_root and download from the command line."""
    if settings.scale == "smoke":
        return {**SMOKE_TRAINING, **smoke_data(settings, real_smoke_dataset)}
    config = {k: v for k, v in PRESETS[preset].items()}
    config["data_root"] = settings.data_root or "data"
    config["download"] = settings.download
    return config


def with_model(config: dict, model: str, scale: str) -> dict:
    width = SMOKE_WIDTH.get(model) if scale == "smoke" else None
    return {**config, "model": model, "width": width}


# Method options of the paper-scale runs that differ from the class defaults: SaliencyMix's original OpenCV
# saliency (the `saliency` extra; without it the plan stops with the install command). Smoke and medium
# runs keep the dependency-free defaults. Either way the option is in the run's config and key.
PAPER_METHOD_OPTIONS = {"saliencymix": {"saliency": "opencv_fine_grained"}}


def grid(artifact, settings, base, sections: dict[str, dict]) -> list[Run]:
    """One run per (section, registered method, seed); sections map a label to config changes."""
    runs = []
    for section, changes in sections.items():
        for method in methods.available():
            options = {"paper": PAPER_METHOD_OPTIONS, "smoke": SMOKE_METHOD_OPTIONS}.get(settings.scale, {}).get(method, {})
            config = {**base, **changes, "method": method, "method_options": dict(options)}
            for seed in settings.seeds:
                runs.append(Run(artifact, settings.scale, {"section": section, "method": method}, config, seed))
    return runs


# ---------------------------------------------------------------------------------------------------
# Table 1: CIFAR-100, three networks


def plan_table1(settings: Settings) -> list[Run]:
    base = base_config(settings, "cifar100_300ep")
    sections = {model: with_model({}, model, settings.scale) for model in TABLE1_MODELS}
    return grid("table1", settings, base, sections)


def plan_table1_preactresnet18(settings: Settings) -> list[Run]:
    """Table 1's PreActResNet-18 runs, for the artifacts that measure trained models: the same configs, so
    the same keys, trained once for all of them."""
    return [run for run in plan_table1(settings) if run.labels["section"] == "preactresnet18"]


def render_table1(settings, results, measurement):
    return report.method_table(settings, "table1", "CIFAR-100 top-1 accuracy (%) by network and method",
                               results, section_title=report.MODEL_TITLES.get)


# ---------------------------------------------------------------------------------------------------
# Table 2: Tiny-ImageNet, PreActResNet-18


def plan_table2(settings: Settings) -> list[Run]:
    base = base_config(settings, "tiny_imagenet_1200ep", real_smoke_dataset="tiny_imagenet")
    sections = {"preactresnet18": with_model({}, "preactresnet18", settings.scale)}
    return grid("table2", settings, base, sections)


def render_table2(settings, results, measurement):
    return report.method_table(settings, "table2", "Tiny-ImageNet top-1 accuracy (%), PreActResNet-18",
                               results, section_title=report.MODEL_TITLES.get)


# ---------------------------------------------------------------------------------------------------
# Fine-grained: torchvision ResNets through the hook adapter, on user data


def plan_table_fgvc(settings: Settings) -> list[Run]:
    if settings.scale == "smoke":
        # The adapter path end to end: an untrained torchvision ResNet-18 on the small smoke images.
        base = {**SMOKE_TRAINING, **smoke_data(settings), "model": "torchvision_resnet18", "width": None}
        return grid("table_fgvc", settings, base, {"synthetic/torchvision_resnet18": {}})
    base = base_config(settings, "fgvc_300ep")
    sections = {f"{dataset}/{model}": {"dataset": dataset, "model": model}
                for dataset in FGVC_DATASETS for model in FGVC_MODELS}
    return grid("table_fgvc", settings, base, sections)


def render_table_fgvc(settings, results, measurement):
    return report.method_table(settings, "table_fgvc", "Fine-grained top-1 accuracy (%), torchvision ResNets "
                               "through the hook adapter (ImageNet-pretrained at paper scale)", results,
                               section_title=report.fgvc_title)


# ---------------------------------------------------------------------------------------------------
# Ablation of Catch-up Mix's options (method.md) on PreActResNet-18

def ablation_variants(num_hook_points: int = 5) -> dict[str, dict]:
    """Variant name -> catchup_mix options. The first is the default method."""
    variants = {
        "default (all layers, low, relative, alpha 1, label lambda)": {},
        "layers: input only (CutMix)": {"layers": [0]},
        "layers: features only": {"layers": list(range(1, num_hook_points + 1))},
    }
    variants |= {f"layers: only {k}": {"layers": [k]} for k in range(1, num_hook_points + 1)}
    variants |= {
        "selection: high (opposite)": {"selection": "high"},
        "selection: random (channel CutMix)": {"selection": "random"},
        "rfi: absolute": {"rfi": "absolute"},
        "alpha 0.5": {"alpha": 0.5},
        "alpha 2": {"alpha": 2.0},
        "label: channels": {"label": "channels"},
    }
    return variants


def plan_ablation(settings: Settings) -> list[Run]:
    base = with_model(base_config(settings, "cifar100_300ep"), "preactresnet18", settings.scale)
    runs = []
    for variant, options in {"vanilla (reference)": None, **ablation_variants()}.items():
        config = {**base, "method": "vanilla" if options is None else "catchup_mix", "method_options": options or {}}
        runs += [Run("ablation", settings.scale, {"variant": variant}, config, seed) for seed in settings.seeds]
    return runs


def render_ablation(settings, results, measurement):
    return report.variant_table(settings, "ablation", "Catch-up Mix ablation: CIFAR-100 top-1 accuracy (%), "
                                "PreActResNet-18", results)


# ---------------------------------------------------------------------------------------------------
# Overhead: time per epoch relative to vanilla (no training runs; a timing measurement)


def overhead_setup(settings: Settings) -> dict:
    if settings.scale == "smoke":
        return dict(model_name="preactresnet18", width=16, batch_size=50, rounds=10, steps_per_epoch=20)
    # CIFAR-100 protocol: batch 100, 500 steps per epoch, on the GPU, in bf16 and channels_last
    return dict(model_name="preactresnet18", width=None, batch_size=100, rounds=50, steps_per_epoch=500)


def measure_overhead(settings: Settings, results) -> dict:
    import torch

    from catchup_mix import benchmark, provenance

    setup = overhead_setup(settings)
    steps_per_epoch = setup.pop("steps_per_epoch")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    times = benchmark.time_steps(**setup, device=device)
    rows = benchmark.summarize(times)
    for row in rows:
        row["epoch_s"] = row["median_s"] * steps_per_epoch
    info = provenance.collect(torch.device(device))
    return {"setup": {**setup, "steps_per_epoch": steps_per_epoch, "device": device}, "rows": rows,
            "provenance": info}


def render_overhead(settings, results, measurement):
    return report.overhead_table(settings, "overhead", measurement)


# ---------------------------------------------------------------------------------------------------
# Figure: the feature maps of one real pair before and after Catch-up Mix, at each layer


def plan_figure_mixing(settings: Settings) -> list[Run]:
    # The same run as table 1's Catch-up Mix PreActResNet-18 (same config, so trained once for both).
    base = with_model(base_config(settings, "cifar100_300ep"), "preactresnet18", settings.scale)
    config = {**base, "method": "catchup_mix", "method_options": {}}
    return [Run("figure_mixing", settings.scale, {"model": "preactresnet18", "method": "catchup_mix"}, config,
                settings.seeds[0])]


def measure_figure_mixing(settings: Settings, results) -> dict:
    from . import mixing_figure

    (run, _), = results
    return mixing_figure.measure(runner.checkpoint(run, settings.out), run.config)


def render_figure_mixing(settings, results, measurement):
    from . import mixing_figure

    return mixing_figure.render(settings, measurement)


def plan_evidence(settings: Settings) -> list[Run]:
    # with the filter probe, as figure_lagging's smoke runs: the same configs, so trained once for both
    smoke = with_model({**SMOKE_TRAINING, **smoke_data(settings), "filter_probe": filters.PROBE_IMAGES["smoke"]},
                       "preactresnet18", "smoke")
    return evidence.plan_evidence(settings, smoke, SMOKE_METHOD_OPTIONS if settings.scale == "smoke" else {})


# ---------------------------------------------------------------------------------------------------
# Filter analysis (filters.py): table 1's PreActResNet-18 runs, measured; the lagging probe's own runs


# figure_lagging at paper scale: a shorter protocol than table 1's 300 epochs, to keep the extra runs cheap:
# the Co-Mixup preset over 100 epochs, lr x0.1 at a third and two thirds of them, as 100/200 of 300.
PAPER_LAGGING = dict(epochs=100, milestones=[33, 67])


def plan_lagging(settings: Settings) -> list[Run]:
    """Every method with the filter probe on: at smoke scale table 1's smoke protocol, at paper scale
    PAPER_LAGGING. Runs of their own (the probe is in the run key), so the probe's numbers exist."""
    base = with_model(base_config(settings, "cifar100_300ep"), "preactresnet18", settings.scale)
    base |= {"filter_probe": filters.PROBE_IMAGES[settings.scale]}
    if settings.scale == "paper":
        base |= PAPER_LAGGING
    return grid("figure_lagging", settings, base, {"preactresnet18": {}})


def measured_only(hours: float):
    """paper_gpu_hours of a measurement on the GPU after the runs (a rough figure, like the rest of `list`)."""
    return lambda settings: hours


ARTIFACTS = {
    artifact.name: artifact
    for artifact in [
        Artifact("table1", "CIFAR-100 top-1 of PreActResNet-18, WRN16-8 and ResNeXt29-4-24 for every method "
                 "(Co-Mixup protocol, 300 epochs)", plan_table1, render_table1),
        Artifact("table2", "Tiny-ImageNet top-1 of PreActResNet-18 for every method (PuzzleMix protocol, "
                 "1200 epochs)", plan_table2, render_table2),
        Artifact("table_fgvc", "fine-grained top-1 (CUB-200-2011, Stanford Cars, FGVC-Aircraft) of pretrained "
                 "torchvision ResNet-18/50 through the hook adapter, on user-supplied data", plan_table_fgvc,
                 render_table_fgvc),
        Artifact("ablation", "Catch-up Mix options: layer set, selection, RFI, alpha, label weight "
                 "(CIFAR-100, PreActResNet-18, 300 epochs)", plan_ablation, render_ablation),
        Artifact("overhead", "time per epoch of each method relative to vanilla (PreActResNet-18, batch 100)",
                 lambda settings: [], render_overhead, measure=measure_overhead,
                 paper_gpu_hours=lambda settings: 0.1),
        Artifact("figure_mixing", "Figure 2 in data: one real pair's feature maps before and after Catch-up "
                 "Mix at each layer, with channel norms and the mask", plan_figure_mixing, render_figure_mixing,
                 measure=measure_figure_mixing),
        Artifact("robustness", "FGSM/PGD, CIFAR-100-C corruptions, deformations, OOD detection and calibration of "
                 "table1's PreActResNet-18 runs (every method)", plan_table1_preactresnet18, robustness.render,
                 measure=robustness.measure, paper_gpu_hours=measured_only(0.2)),
        Artifact("evidence", "the paper's three claims at CPU scale (accuracy, robustness, the filter mechanism): "
                 "Catch-up Mix vs vanilla, its channel-selection ablations and (smoke, medium) the baselines, "
                 "paired seeds, each run measured after training, real CIFAR-10 (CPU hours)",
                 plan_evidence, evidence_report.render, measure_each_run=evidence.Measurement,
                 scales=("smoke", "medium", "medium_wd")),
        Artifact("figure_filters", "channel-norm distribution, Gini, top-10% share and lagging channels per layer "
                 "(PreActResNet-18, every method, table 1's runs)", plan_table1_preactresnet18, filters.render_filters,
                 measure=filters.measure_filters, paper_gpu_hours=measured_only(0.01)),
        Artifact("figure_lagging", "lagging channels and Gini per layer over the epochs, from the trainer's filter "
                 "probe (PreActResNet-18, every method; paper scale: 100-epoch protocol)", plan_lagging,
                 filters.render_lagging),
        Artifact("figure_reliance", "test top-1 with the top / lowest / random p% channels zeroed at each layer "
                 "(PreActResNet-18, every method, table 1's runs)", plan_table1_preactresnet18, filters.render_reliance,
                 measure=filters.measure_reliance, paper_gpu_hours=measured_only(0.1)),
        Artifact("figure_landscape", "filter-normalised 1-D and 2-D loss landscapes, top Hessian eigenvalue and "
                 "trace (PreActResNet-18, every method, table 1's runs)", plan_table1_preactresnet18,
                 filters.render_landscape, measure=filters.measure_landscape, paper_gpu_hours=measured_only(0.5)),
        Artifact("figure_gradcam", "Grad-CAM at the last stage for fixed test images (PreActResNet-18, every "
                 "method, table 1's runs)", plan_table1_preactresnet18, filters.render_gradcam,
                 measure=filters.measure_gradcam, paper_gpu_hours=measured_only(0.01)),
    ]
}
