"""Evidence at CPU scale: does choosing channels by their norm matter?

The paper's point is that Catch-up Mix swaps a sample's *strong* feature maps (by relative l2 norm) for
its partner's. Smoke runs are too short to say anything: mixing methods regularise, and regularisation
pays only once plain training over-fits. The `medium` scale trains long enough for that on a small real
training set, on 2 CPU cores, with the reference loss and optimiser (softmax BCE, SGD with Nesterov), and
compares Catch-up Mix with the same op choosing its channels at random (`selection=random`) or the
opposite way (`selection=high`), and with the baselines, paired by seed: at a given seed every run type
starts from the same weights and sees the same data order and augmentation.

Medium protocol (calibration: docs/evidence.md): CIFAR-10 (the JPEG copy in ../shared/data, read as an
image folder), the first 500 training images of each class, the full 10,000-image test set,
PreActResNet-18 at width 16, batch 100, 100 epochs, SGD lr 0.1 with Nesterov momentum 0.9 and a cosine
schedule, weight decay 5e-4, softmax BCE loss, random crop with 2-pixel padding and flips, CPU fp32. The
test set is evaluated every 5 epochs and at each of the last 10 (evaluation costs as much as an epoch of
training here); "best" is the best of the evaluated epochs.
"""

import math
import statistics
from collections import defaultdict

from catchup_mix import methods

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
MEDIUM_DATA_ROOT = "data/cifar10-jpeg"  # where `../shared/data/unpack data` puts the CIFAR-10 copy
CORE = ("vanilla", "cutmix", "catchup_mix", "catchup_mix random", "catchup_mix high")
REFERENCE = "catchup_mix"
COMPARED_WITH = ("catchup_mix random", "catchup_mix high", "cutmix", "vanilla")
LAST_EPOCHS = 5  # the primary number: mean test top-1 of the last 5 epochs (steadier than the last epoch)


def run_types() -> dict[str, tuple[str, dict]]:
    """Run type -> (registry method, options): the channel-selection ablations, then every method."""
    types = {"vanilla": ("vanilla", {}), "cutmix": ("cutmix", {}), "catchup_mix": ("catchup_mix", {}),
             "catchup_mix random": ("catchup_mix", {"selection": "random"}),
             "catchup_mix high": ("catchup_mix", {"selection": "high"})}
    return types | {name: (name, {}) for name in methods.available() if name not in types}


def medium_schedule() -> list[tuple[tuple[str, ...], range]]:
    """(run types, seeds) in the order they are trained: the 15 core runs answer all three claims for the key
    comparisons, then the decisive ablation (low vs random) to 10 seeds, `high` to 5, then the baselines."""
    baselines = tuple(name for name in run_types() if name not in CORE)
    return [(CORE, range(3)), (("catchup_mix", "catchup_mix random"), range(3, 10)),
            (("catchup_mix high",), range(3, 5)), (baselines, range(3))]


def plan_evidence(settings, smoke_base: dict) -> list[Run]:
    """The runs at settings.scale; smoke_base is the smoke-scale PreActResNet-18 config of the harness.

    Medium: medium_schedule(), restricted to settings.seeds (default 0-9: all of it). Smoke: every run type
    at each of settings.seeds."""
    types = run_types()
    if settings.scale == "smoke":
        base = smoke_base
        schedule = [(tuple(types), settings.seeds)]
    elif settings.scale == "medium":
        base = {**MEDIUM_TRAINING, "data_root": settings.data_root or MEDIUM_DATA_ROOT}
        schedule = medium_schedule()
    else:
        raise ValueError(f"evidence has no {settings.scale} scale: it is the CPU-scale experiment (smoke, medium)")
    runs = []
    for labels, seeds in schedule:
        for seed in (seed for seed in seeds if seed in settings.seeds):  # seed-major: every type of a seed
            for label in labels:
                method, options = types[label]
                runs.append(Run("evidence", settings.scale, {"run_type": label},
                                {**base, "method": method, "method_options": options}, seed))
    return runs


# ---------------------------------------------------------------------------------------------------
# Numbers


def run_numbers(result: dict) -> dict:
    """The per-run numbers of the table, from a run's result."""
    evaluated = [row for row in result["history"] if "test_top1" in row]
    summary = result["summary"]
    return {"last": summary["last_top1"], "best": summary["best_top1"],
            "last5": statistics.mean(row["test_top1"] for row in evaluated[-LAST_EPOCHS:]),
            "nll": summary["last_nll"], "ece": summary["last_ece"]}


def t_interval(differences: list[float], confidence: float = 0.95) -> tuple[float, float, float] | None:
    """Mean and two-sided t interval of paired differences; None with fewer than two pairs."""
    from scipy import stats

    if len(differences) < 2:
        return None
    mean = statistics.mean(differences)
    half = stats.t.ppf(0.5 + confidence / 2, len(differences) - 1) * statistics.stdev(differences)
    half /= math.sqrt(len(differences))
    return mean, mean - half, mean + half


def paired_cell(differences: list[float]) -> str:
    interval = t_interval(differences)
    if interval is None:
        return f"{differences[0]:+.2f} (1 seed: no interval)" if differences else "—"
    mean, low, high = interval
    verdict = " not resolved" if low <= 0 <= high else ""
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]{verdict}"


def paired_differences(numbers: dict, a: str, b: str, key: str) -> list[float]:
    """a minus b on `key`, over the seeds both have."""
    seeds = sorted(numbers[a].keys() & numbers[b].keys())
    return [numbers[a][seed][key] - numbers[b][seed][key] for seed in seeds]


# ---------------------------------------------------------------------------------------------------
# Table and figure


def describe_protocol(settings, runs) -> str:
    config = runs[0].config
    if settings.scale == "medium":
        return ("CIFAR-10 (the JPEG copy of ../shared/data, read as an image folder), "
                f"{config['train_per_class']} training images per class, the full 10,000-image test set, "
                f"PreActResNet-18 width {config['width']}, {config['epochs']} epochs")
    return (f"{config['dataset']} data, {config['num_classes']} classes, PreActResNet-18 width {config['width']}, "
            f"{config['epochs']} epochs")


def render_evidence(settings, results, measurement):
    numbers = defaultdict(dict)  # run type -> seed -> per-run numbers
    histories = defaultdict(list)
    for run, result in results:
        if result is not None:
            numbers[run.labels["run_type"]][run.seed] = run_numbers(result)
            histories[run.labels["run_type"]].append(result["history"])
    types = list(dict.fromkeys(run.labels["run_type"] for run, _ in results))
    runs = [run for run, _ in results]
    title = f"Evidence at {settings.scale} scale: {describe_protocol(settings, runs)}"

    rows = []
    for label in types:
        per_seed = list(numbers[label].values())
        rows.append([label, *(report.mean_std([n[key] for n in per_seed]) for key in
                              ("last", "best", "last5", "nll", "ece")), str(len(per_seed))])
    comparisons = []
    for other in COMPARED_WITH:
        if other in numbers and REFERENCE in numbers:
            cells = [paired_cell(paired_differences(numbers, REFERENCE, other, key)) for key in ("last5", "nll", "ece")]
            seeds = len(numbers[REFERENCE].keys() & numbers[other].keys())
            comparisons.append([f"{REFERENCE} − {other}", *cells, str(seeds)])

    done = [result for _, result in results if result is not None]
    hours = sum(r["summary"].get("wall_time_s", r["summary"]["train_time_s"]) for r in done) / 3600
    cells = ("Columns: test top-1 (%) at the last epoch, at the best tested epoch, and averaged over the last "
             f"{LAST_EPOCHS} tested epochs (the primary number); test NLL and ECE (%, 15 bins) at the last epoch; "
             "mean ± sample std over seeds; n = seeds done; — = not run yet.")
    notes = report.provenance_notes(settings, results, cells) + [
        f"Compute so far: {hours:.1f} h of wall-clock time for {len(done)} runs "
        f"({', '.join(sorted({r['summary']['provenance']['device'] for r in done})) or 'none yet'}).",
        f"Paired comparison: {REFERENCE} minus the other run type at the same seed (same initial weights, data "
        "order and augmentation), mean difference and 95% t interval over seeds. \"not resolved\": the "
        "interval covers 0, so these seeds cannot tell the two apart. Positive is better for top-1, negative "
        "for NLL and ECE.",
    ]
    table = report.Table(title, notes, ["Run type", "Last", "Best", f"Mean last {LAST_EPOCHS}", "NLL", "ECE (%)",
                                        "n"], [("Per run type", rows)])
    comparison = report.Table("Catch-up Mix against its channel-selection ablations and baselines", [],
                              ["Paired difference", f"Top-1, mean last {LAST_EPOCHS}", "NLL", "ECE (%)", "Seeds"],
                              [("", comparisons)])
    return report.write_table(settings, "evidence", table, comparison) + _curves(settings, title, types, histories)


def _curves(settings, title, types, histories) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    colours = plt.get_cmap("tab10")
    for index, label in enumerate(types):
        runs = histories.get(label)
        if not runs:
            continue
        runs = [[row for row in history if "test_top1" in row] for history in runs]  # evaluated epochs
        length = min(len(history) for history in runs)
        epochs = [row["epoch"] for row in runs[0][:length]]
        style = dict(color=colours(index % 10), ls="-" if index < 10 else "--")
        for ax, key in zip(axes, ("test_top1", "test_nll"), strict=True):
            values = np.array([[row[key] for row in history[:length]] for history in runs])
            mean = values.mean(0)
            ax.plot(epochs, mean, lw=1.3, label=f"{label} (n={len(runs)})", **style)
            if len(runs) > 1:
                ax.fill_between(epochs, values.min(0), values.max(0), alpha=0.15, color=style["color"], lw=0)
    axes[0].set_ylabel("test top-1 (%)")
    axes[1].set_ylabel("test NLL (nats per image)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    axes[1].set_title("lines: mean over seeds; bands: min to max over seeds", fontsize=8)
    fig.suptitle(report.wrap_title(title, fig), fontsize=10)
    return report.save_figure(settings, "evidence", fig, dpi=150)
