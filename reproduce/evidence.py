"""Evidence at CPU scale: the paper's three claims (accuracy, robustness, the filter mechanism) measured on
runs trained long enough to mean something.

The paper's point is that Catch-up Mix swaps a sample's *strong* feature maps (by relative l2 norm) for
its partner's. Smoke runs are too short to say anything: mixing methods regularise, and regularisation
pays only once plain training over-fits. The `medium` scale trains long enough for that on a small real
training set, on 2 CPU cores, with the reference loss and optimiser (softmax BCE, SGD with Nesterov), and
compares Catch-up Mix with the same op choosing its channels at random (`selection=random`) or the
opposite way (`selection=high`), and with the baselines, paired by seed: at a given seed every run type
starts from the same weights and sees the same data order and augmentation. Each run measures itself right
after training (`Measurement`: calibration, attacks, corruptions, deformations, OOD detection, the channel
statistics, reliance and the Hessian) into its result file; evidence_report.py makes the tables and
evidence_figures.py the figures from the stored results alone.

Medium protocol (calibration: docs/evidence.md): CIFAR-10 (the JPEG copy in ../shared/data, read as an
image folder), the first 500 training images of each class, the full 10,000-image test set,
PreActResNet-18 at width 16, batch 100, 100 epochs, SGD lr 0.1 with Nesterov momentum 0.9 and a cosine
schedule, weight decay 5e-4, softmax BCE loss, random crop with 2-pixel padding and flips, CPU fp32. The
test set is evaluated every 5 epochs and at each of the last 10 (evaluation costs as much as an epoch of
training here); "best" is the best of the evaluated epochs.
"""

import hashlib
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from catchup_mix import analysis, corruptions, data, methods, robustness

from . import report
from .runner import Run

MEDIUM_TRAINING = dict(
    dataset="imagefolder", num_classes=None, train_per_class=500, test_per_class=None, model="preactresnet18",
    width=16, epochs=100, batch_size=100, lr=0.1, schedule="cosine", momentum=0.9, nesterov=True,
    weight_decay=5e-4, loss="softmax_bce", crop_padding=2, device="cpu", log_every=10**6, eval_every=5,
    # the filter probe after every epoch (500 fixed test images; it never changes the weights), so Gini and
    # lagging over the epochs are in every run's history
    filter_probe=500,
)
# The medium protocol where filters lag (issue 28, docs/evidence.md "Where filters lag"): weight decay under
# BatchNorm is what shrinks an unused filter, and what decides how far it has shrunk is the cumulative decay, the
# sum over steps of lr x wd. The paper's CIFAR-100 protocol (Co-Mixup's: 150,000 steps at lr 0.2/0.02/0.002, wd
# 1e-4) sums to about 1.1; the medium protocol (5,000 steps at a mean lr of 0.05, wd 5e-4) to 0.125. This one
# keeps everything else and takes the weight decay that vanilla calibration runs chose.
MEDIUM_WD_TRAINING = {**MEDIUM_TRAINING, "weight_decay": 5e-3}
PROTOCOLS = {"medium": MEDIUM_TRAINING, "medium_wd": MEDIUM_WD_TRAINING}
# What a medium run costs on a 2-core machine, for `reproduce list` and the README (docs/evidence.md): one run on
# one torch thread takes about this long with its test passes, probe and measurements, and two run side by side.
MINUTES_PER_RUN = 45
RUNS_AT_ONCE = 2
MEDIUM_DATA_ROOT = "data/cifar10-jpeg"  # where `../shared/data/unpack data` puts the CIFAR-10 copy
CORE = ("vanilla", "cutmix", "catchup_mix", "catchup_mix random", "catchup_mix high")
SELECTIONS = ("vanilla", "catchup_mix", "catchup_mix random", "catchup_mix high")
# This project's variant, not the paper's (docs/method.md): channels ranked by what the next conv reads of them,
# where weight decay silences filters that the hook points' residual stream keeps alive. medium_wd only.
VARIANTS = {"catchup_mix next_conv_input": ("catchup_mix", {"rank_by": "next_conv_input"})}


def run_types() -> dict[str, tuple[str, dict]]:
    """Run type -> (registry method, options): the channel-selection ablations, then every method."""
    types = {"vanilla": ("vanilla", {}), "cutmix": ("cutmix", {}), "catchup_mix": ("catchup_mix", {}),
             "catchup_mix random": ("catchup_mix", {"selection": "random"}),
             "catchup_mix high": ("catchup_mix", {"selection": "high"})}
    return types | {name: (name, {}) for name in methods.available() if name not in types}


def schedule(scale: str) -> list[tuple[tuple[str, ...], range]]:
    """(run types, seeds) in the order they are trained at a CPU scale.

    medium: the 15 core runs answer all three claims for the key comparisons, then the decisive ablation (low vs
    random) to 10 seeds, `high` to 5, then the baselines. medium_wd: the selection ablation where filters lag,
    vanilla, the three selections and the variant that ranks by the next conv's input at seeds 0-4, then low
    and random to 10 seeds."""
    if scale == "medium_wd":
        return [((*SELECTIONS, *VARIANTS), range(5)), (("catchup_mix", "catchup_mix random"), range(5, 10))]
    baselines = tuple(name for name in run_types() if name not in CORE)
    return [(CORE, range(3)), (("catchup_mix", "catchup_mix random"), range(3, 10)),
            (("catchup_mix high",), range(3, 5)), (baselines, range(3))]


def plan_evidence(settings, smoke_base: dict, method_options: dict | None = None) -> list[Run]:
    """The runs at settings.scale; smoke_base is the smoke-scale PreActResNet-18 config of the harness, and
    method_options the options it gives some methods at that scale (method -> options).

    Medium scales: schedule(scale), restricted to settings.seeds (default 0-9: all of it). Smoke: every run type
    at each of settings.seeds."""
    types = run_types() | VARIANTS
    if settings.scale == "smoke":
        base = smoke_base
        order = [(tuple(run_types()), settings.seeds)]
    elif settings.scale in PROTOCOLS:
        base = {**PROTOCOLS[settings.scale], "data_root": settings.data_root or MEDIUM_DATA_ROOT}
        order = schedule(settings.scale)
    else:
        raise ValueError(f"evidence has no {settings.scale} scale: it is the CPU-scale experiment (smoke, "
                         f"{', '.join(PROTOCOLS)})")
    runs = []
    for labels, seeds in order:
        for seed in (seed for seed in seeds if seed in settings.seeds):  # seed-major: every type of a seed
            for label in labels:
                method, options = types[label]
                options = {**(method_options or {}).get(method, {}), **options}
                runs.append(Run("evidence", settings.scale, {"run_type": label},
                                {**base, "method": method, "method_options": options}, seed))
    return runs


# ---------------------------------------------------------------------------------------------------
# Measurements: each run measures itself right after training (runner.execute), part by part, into its
# result file ("measurements": part -> settings key -> entry). A part is measured once per settings; an
# interrupted measurement keeps the parts that finished, and the next run of the command does the rest.

ADVERSARIAL_EPS = (1 / 255, 2 / 255, 4 / 255, 8 / 255)
# What each part measures, per scale: fixed images (class-balanced test subsets, data.balanced_indices with
# SUBSET_SEED), the same for every run. Medium sizes keep all parts together under a quarter of a run's
# training time on one CPU thread; docs/evidence.md gives each part's cost and sampling error.
MEASUREMENTS = {
    "medium": {
        "calibration": dict(images=None),
        "fgsm": dict(images=2000, eps=ADVERSARIAL_EPS),
        "pgd": dict(images=500, eps=(2 / 255, 8 / 255), steps=20, step_fraction=0.25),
        "corruptions": dict(images=500, corruptions=corruptions.CORRUPTIONS, severities=corruptions.SEVERITIES),
        "deformations": dict(images=1000, deformations=tuple(robustness.DEFORMATIONS)),
        "ood": dict(images=1000, sets=("tiny_imagenet", "noise_gaussian", "noise_uniform")),
        "filters": dict(images=2000, top_fraction=0.1),
        "reliance": dict(images=300, fractions=(0.0, 0.1, 0.25, 0.5), draws=5),
        "hessian": dict(images=200, batch=100, iters=20, tol=1e-3, trace_samples=10),
    },
    "smoke": {
        "calibration": dict(images=None),
        "fgsm": dict(images=100, eps=(2 / 255, 8 / 255)),
        "pgd": dict(images=50, eps=(8 / 255,), steps=2, step_fraction=0.25),
        "corruptions": dict(images=50, corruptions=("gaussian_noise", "fog", "contrast"),
                            severities=corruptions.SEVERITIES),
        "deformations": dict(images=100, deformations=("rotate+15", "zoom_out_0.75")),
        "ood": dict(images=100, sets=("noise_gaussian", "noise_uniform")),
        "filters": dict(images=100, top_fraction=0.1),
        "reliance": dict(images=50, fractions=(0.0, 0.5), draws=2),
        "hessian": dict(images=20, batch=10, iters=3, tol=1e-3, trace_samples=2),
    },
}
# Where filters lag, the same parts and one more: inside the blocks (conv inputs, dead channels, BN scales). The
# medium protocol's 52 committed runs were measured without it, and their run folders are gone: adding it there
# would train all of them again.
MEASUREMENTS["medium_wd"] = {**MEASUREMENTS["medium"], "blocks": dict(images=2000, top_fraction=0.1)}
SUBSET_SEED = 0  # the subsets, PGD's random starts, the noise images, the random channels, the Hessian vectors
BATCH = 250


class Measurement:
    """The evidence's measurement of one run at one scale (runner.execute calls it right after training).

    Each part of MEASUREMENTS[scale] is stored in the run's result file under the hash of its settings
    (checkpoint.MeasurementFile), with the subset it used, the seconds it took, and the provenance of the
    measurement and of the checkpoint; `missing(result)` names the parts not stored with today's settings.
    """

    def __init__(self, settings):
        self.scale, self.out = settings.scale, settings.out
        self.plan = MEASUREMENTS[settings.scale]

    def part_settings(self, part: str) -> dict:
        return {"part": part, **self.plan[part], "seed": SUBSET_SEED}

    def key(self, part: str) -> str:
        return settings_key(self.part_settings(part))

    def missing(self, result: dict) -> list[str]:
        """The parts not stored with today's settings, and the corruptions if their images were made by code
        that corrupts differently from today's (a different output fingerprint: redone, on this machine)."""
        stored = result.get("measurements", {})
        entries = {part: stored.get(part, {}).get(self.key(part)) for part in self.plan}
        made = entries["corruptions"] and entries["corruptions"]["numbers"]
        stale = bool(made) and made.get("output_fingerprint") != corruptions.output_fingerprint(made["set_info"]["size"][0])
        if stale:
            _check_same_frost_source(made["set_info"])
        return [part for part, entry in entries.items() if entry is None or (part == "corruptions" and stale)]

    def __call__(self, run, result_path: Path, checkpoint: Path) -> None:
        from catchup_mix import provenance
        from catchup_mix.checkpoint import MeasurementFile, measured_weights
        from catchup_mix.evaluate import load_run

        store = MeasurementFile(result_path, field="measurements")
        loaded = load_run(checkpoint, data_root=run.config.get("data_root"), device=run.config.get("device", "auto"))
        # A result's parts belong to one set of weights: where stored parts measured other weights than this
        # checkpoint's (a run trained again elsewhere to measure a new part), they are measured again too. Parts
        # stored before the weights were recorded were measured in the process that trained the run.
        other = [part for part in self.plan if (entry := store.get(part, self.key(part)))
                 and measured_weights(entry) not in (None, loaded.weights)]
        todo = list(dict.fromkeys([*self.missing(store.data), *other]))
        pixel_model = robustness.Normalized(loaded.model, loaded.dataset.mean, loaded.dataset.std).to(loaded.device)
        made = {key: loaded.provenance.get(key) for key in ("commit", "dirty", "time_utc", "host", "device")}
        info = provenance.collect(loaded.device)
        if other:
            print(f"[evidence] {run.name}: {', '.join(other)} measured other weights than this checkpoint's: measured "
                  "again (the earlier numbers stay, under \"replaced\" in the result file)", flush=True)
        print(f"[evidence] {run.name}: measuring {', '.join(todo)}", flush=True)
        for part in todo:
            started = time.perf_counter()
            numbers, subset = MEASURE[part](self, loaded, pixel_model, self.plan[part])
            seconds = time.perf_counter() - started
            store.put(part, self.key(part), {"settings": self.part_settings(part), "subset": subset,
                                             "numbers": numbers, "seconds": seconds, "provenance": info,
                                             "checkpoint": {"epoch": loaded.epoch, "weights": loaded.weights, **made}})
            print(f"[evidence] {run.name}: {part} measured in {seconds:.0f} s", flush=True)

    def corruption_set(self, images: torch.Tensor, labels: torch.Tensor) -> Path:
        """The corrupted versions of the fixed subset, generated once per machine and code version and shared by
        every run (write_set lets several processes share the work)."""
        return corruptions.set_for(images.permute(0, 2, 3, 1).numpy(), labels.numpy(),
                                   self.out / "runs" / self.scale / "corruptions",
                                   self.plan["corruptions"]["corruptions"], seed=SUBSET_SEED)

    def ood_root(self, loaded) -> str | None:
        """Where the other datasets lie: beside the training data (`unpack data` puts CIFAR-10 and
        Tiny-ImageNet side by side)."""
        root = loaded.config.data_root
        return None if root is None else str(Path(root).expanduser().resolve().parent)


def _check_same_frost_source(set_info: dict) -> None:
    """Stop, before a run is trained again only to measure its corruptions, when the difference is an install
    rather than the code: frost made from the photographs (the `frost` extra) where the run was measured and
    from generated textures here, or the other way round. Every committed result would be retrained."""
    theirs = (set_info.get("generator") or {}).get("frost")
    ours = corruptions.generator_fingerprint(set_info["size"][0])["frost"]
    if theirs and theirs != ours:
        fix = ("install the photographs: pip install --no-deps imagecorruptions (the frost extra; nox does this)"
               if theirs == "photographs" else "uninstall imagecorruptions, or measure in an environment without it")
        raise RuntimeError(f"the stored corruption numbers were made with frost from {theirs}, but here frost would "
                           f"be made from {ours}, so every run would be trained again to measure it anew: {fix}")


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def _subset(loaded, count):
    images, labels, _, subset = robustness.test_subset(loaded.dataset, count, SUBSET_SEED)
    return images, labels, subset


def _options(loaded) -> dict:
    return dict(batch_size=BATCH, autocast=loaded.autocast)


def _with_clean(numbers: dict, pixel_model, images, labels, loaded) -> dict:
    """A part's numbers with the clean top-1 of the same images beside them, to read the drop from."""
    return {"clean": robustness.accuracy(pixel_model, images, labels, **_options(loaded)), **numbers}


def _measure_calibration(measurement, loaded, pixel_model, plan):
    images, labels, subset = _subset(loaded, plan["images"])
    return robustness.clean_metrics(pixel_model, images, labels, **_options(loaded)), subset


def _measure_fgsm(measurement, loaded, pixel_model, plan):
    images, labels, subset = _subset(loaded, plan["images"])
    numbers = robustness.fgsm_accuracies(pixel_model, images, labels, plan["eps"], **_options(loaded))
    return _with_clean(numbers, pixel_model, images, labels, loaded), subset


def _measure_pgd(measurement, loaded, pixel_model, plan):
    images, labels, subset = _subset(loaded, plan["images"])
    numbers = robustness.pgd_accuracies(pixel_model, images, labels, plan["eps"], plan["steps"],
                                        step_fraction=plan["step_fraction"], seed=SUBSET_SEED, **_options(loaded))
    return _with_clean(numbers, pixel_model, images, labels, loaded), subset


def _measure_corruptions(measurement, loaded, pixel_model, plan):
    dataset = loaded.dataset
    index = data.balanced_indices(dataset.test.labels, plan["images"], SUBSET_SEED)
    split = dataset.test.subset(index)
    folder = measurement.corruption_set(split.images, split.labels)
    numbers = robustness.corruption_accuracies(pixel_model, folder, plan["corruptions"], split.labels,
                                               dataset.crop_size, severities=plan["severities"], **_options(loaded))
    numbers["output_fingerprint"] = corruptions.output_fingerprint(split.images.shape[-1])
    images = robustness._center_crop(split.images, dataset.crop_size)
    subset = data.describe_subset(dataset.test.labels, index, SUBSET_SEED)
    return _with_clean(numbers, pixel_model, images, split.labels, loaded), subset


def _measure_deformations(measurement, loaded, pixel_model, plan):
    images, labels, subset = _subset(loaded, plan["images"])
    numbers = robustness.deformation_accuracies(pixel_model, images, labels, plan["deformations"], **_options(loaded))
    return _with_clean(numbers, pixel_model, images, labels, loaded), subset


def _measure_ood(measurement, loaded, pixel_model, plan):
    images, _, subset = _subset(loaded, plan["images"])
    sets = robustness.ood_sets(plan["sets"], loaded.config, images.shape[-1], plan["images"], seed=SUBSET_SEED,
                               ood_root=measurement.ood_root(loaded))
    return robustness.ood_detection(pixel_model, images, sets, **_options(loaded)), subset


def _normalised_batches(loaded, split: str, count: int, batch: int = BATCH):
    images, labels = analysis.fixed_batch(loaded.dataset, split, count, loaded.device, seed=SUBSET_SEED)
    whole = getattr(loaded.dataset, split).labels
    subset = data.describe_subset(whole, data.balanced_indices(whole, count, SUBSET_SEED), SUBSET_SEED)
    return list(zip(images.split(batch), labels.split(batch), strict=True)), subset


def _measure_filters(measurement, loaded, pixel_model, plan):
    batches, subset = _normalised_batches(loaded, "test", plan["images"])
    norms = analysis.channel_norms(loaded.model, batches)
    statistics_ = analysis.filter_statistics(norms, top_fraction=plan["top_fraction"])
    return {"norms": {str(k): [round(v, 5) for v in values.tolist()] for k, values in norms.items()},
            **{name: {str(k): v for k, v in values.items()} for name, values in statistics_.items()}}, subset


def _measure_blocks(measurement, loaded, pixel_model, plan):
    """Inside the blocks: each conv's input channels (mean norm, fraction of zero positions, what it reads),
    every BN's |gamma|, and their statistics over the convs with an input of their own."""
    batches, subset = _normalised_batches(loaded, "test", plan["images"])
    seen = analysis.observe_activations(loaded.model, batches)
    scales = analysis.batchnorm_scales(loaded.model)
    own = seen.distinct_convs()
    statistics_ = analysis.block_statistics({name: seen.conv_norms[name] for name in own},
                                            {name: seen.conv_zero_fractions[name] for name in own}, scales,
                                            top_fraction=plan["top_fraction"])

    def lists(values: dict) -> dict:
        return {name: [round(v, 5) for v in tensor.tolist()] for name, tensor in values.items()}

    return {"conv_input_norms": lists(seen.conv_norms), "conv_input_zero_fractions": lists(seen.conv_zero_fractions),
            "conv_reads": seen.reads, "bn_scales": lists(scales), **statistics_}, subset


def _measure_reliance(measurement, loaded, pixel_model, plan):
    batches, subset = _normalised_batches(loaded, "test", plan["images"])
    norms = analysis.channel_norms(loaded.model, batches)  # one ranking pass for every hook point
    return {str(k): analysis.reliance(loaded.model, batches, k, plan["fractions"], seed=SUBSET_SEED, norms=norms[k],
                                      random_draws=plan["draws"])
            for k in norms}, subset


def _measure_hessian(measurement, loaded, pixel_model, plan):
    batches, subset = _normalised_batches(loaded, "train", plan["images"], plan["batch"])
    eigenvalue, eigen_info = analysis.hessian_top_eigenvalue(loaded.model, F.cross_entropy, batches, plan["iters"],
                                                             seed=SUBSET_SEED, tol=plan["tol"], return_info=True)
    trace, trace_info = analysis.hessian_trace(loaded.model, F.cross_entropy, batches, plan["trace_samples"],
                                               seed=SUBSET_SEED, return_info=True)
    return {"top_eigenvalue": eigenvalue, **{f"eigenvalue_{k}": v for k, v in eigen_info.items()},
            "trace": trace, **{f"trace_{k}": v for k, v in trace_info.items()}}, subset


MEASURE = {"calibration": _measure_calibration, "fgsm": _measure_fgsm, "pgd": _measure_pgd,
           "corruptions": _measure_corruptions, "deformations": _measure_deformations, "ood": _measure_ood,
           "filters": _measure_filters, "reliance": _measure_reliance, "hessian": _measure_hessian,
           "blocks": _measure_blocks}


def stage_of(name: str) -> str:
    """The stage a conv or BN belongs to, from its module name: "stages.1.0.conv1" -> "stage 2"."""
    parts = name.split(".")
    return f"stage {int(parts[1]) + 1}" if parts[0] == "stages" and parts[1].isdigit() else ".".join(parts[:2])


def describe_protocol(settings, runs) -> str:
    config = runs[0].config
    if settings.scale in PROTOCOLS:
        return ("CIFAR-10 (the project's JPEG copy, read as an image folder), "
                f"{config['train_per_class']} training images per class, the full 10,000-image test set, "
                f"PreActResNet-18 width {config['width']}, {config['epochs']} epochs, "
                f"weight decay {config['weight_decay']:g}")
    return (f"{report.data_title(config)}, {config['num_classes']} classes, PreActResNet-18 width {config['width']}, "
            f"{config['epochs']} epochs")
