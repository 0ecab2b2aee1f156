"""The evidence's tables and figures, from the stored results alone: one section per claim of the paper.

1. Accuracy: test top-1 (mean of the last 5 tested epochs, last, best), NLL and ECE.
2. Robustness: FGSM and PGD-20 accuracy per radius, corruption accuracy and mCE (Hendrycks & Dietterich's
   definition with vanilla at the same seed in AlexNet's place), deformations, OOD detection, calibration.
3. The mechanism: per hook point, the Gini coefficient, top- and bottom-10% shares and lagging fractions of
   the channel norms, the accuracy lost when the strongest channels are zeroed (reliance), and the top
   Hessian eigenvalue and trace.

Each claim has a table of every run type (mean ± sample std over seeds) and a table of Catch-up Mix minus
every other run type at the same seeds (mean difference and 95% t interval; "not resolved" where the
interval covers 0). Only numbers measured with today's settings (evidence.Measurement's keys) are used, so
no table mixes numbers measured differently.
"""

import math
import statistics
from collections import defaultdict

from catchup_mix.robustness import eps_label

from . import evidence, report

REFERENCE = "catchup_mix"
LAST_EPOCHS = 5  # the primary accuracy: mean test top-1 of the last 5 tested epochs (steadier than the last)
HOOK_NAMES = {"1": "stem", "2": "stage 1", "3": "stage 2", "4": "stage 3", "5": "stage 4"}


# ---------------------------------------------------------------------------------------------------
# Per-run numbers: one flat dict of named scalars per run


def run_numbers(result: dict, measurement) -> dict:
    """Every scalar of one run's result that a table compares, by name; measured parts only where they were
    measured with today's settings."""
    evaluated = [row for row in result["history"] if "test_top1" in row]
    summary = result["summary"]
    numbers = {"last": summary["last_top1"], "best": summary["best_top1"],
               "last5": statistics.mean(row["test_top1"] for row in evaluated[-LAST_EPOCHS:]),
               "nll": summary["last_nll"], "ece": summary["last_ece"]}
    stored = result.get("measurements", {})
    parts = {part: stored.get(part, {}).get(measurement.key(part)) for part in measurement.plan}
    parts = {part: entry["numbers"] for part, entry in parts.items() if entry is not None}
    if "calibration" in parts:
        numbers |= {"calibration ece": parts["calibration"]["ece"], "calibration nll": parts["calibration"]["nll"]}
    for attack in ("fgsm", "pgd"):
        for eps, value in parts.get(attack, {}).items():
            numbers[f"{attack} {eps}"] = value  # "fgsm clean": the subset's clean accuracy
    if "corruptions" in parts:
        part = parts["corruptions"]
        numbers["corruptions"] = part["mean"]
        numbers |= {f"corruptions severity {s}": v for s, v in part["per_severity"].items()}
        numbers["corruptions clean"] = part["clean"]
        numbers["corruptions made by"] = part.get("output_fingerprint")
        numbers["corruption errors"] = {name: [100 - row[s] for s in part["per_severity"]]
                                        for name, row in part["per_corruption"].items()}
    if "deformations" in parts:
        numbers |= {f"deformation {name}": value for name, value in parts["deformations"].items()}
    for name, value in parts.get("ood", {}).items():
        for score in ("msp", "energy"):
            numbers |= {f"ood {name} {score} {metric}": value[score][metric] for metric in value[score]}
    if "filters" in parts:
        for statistic, values in parts["filters"].items():
            if statistic != "norms":
                numbers |= {f"{statistic} {k}": value for k, value in values.items()}
    for k, curves in parts.get("reliance", {}).items():
        clean = curves["top"][curves["fractions"].index(0.0)] if 0.0 in curves["fractions"] else None
        for i, fraction in enumerate(curves["fractions"]):
            if fraction and clean is not None:
                # accuracy lost when the strongest p% are zeroed, and that loss beyond the random control's
                numbers[f"reliance top {fraction:g} {k}"] = clean - curves["top"][i]
                numbers[f"reliance excess {fraction:g} {k}"] = curves["random"][i] - curves["top"][i]
        numbers[f"reliance curves {k}"] = curves
    if "hessian" in parts:
        numbers |= {f"hessian {name}": value for name, value in parts["hessian"].items()}
    if "blocks" in parts:
        numbers |= block_numbers(parts["blocks"])
    for statistic in ("gini", "top_share", "lagging_0.5", "reliance top 0.25"):  # one number per run: the layers' mean
        per_layer = [value for key, value in numbers.items() if key.rsplit(" ", 1)[0] == statistic]
        if per_layer:
            numbers[f"{statistic} mean"] = statistics.mean(per_layer)
    return numbers


# Inside the blocks, per stage and over the network ("all"): (key, statistic of the blocks part, scale, what)
BLOCK_STATISTICS = (
    ("dead", "conv_input_dead", 1, "dead conv-input channels (zero on at least 99% of positions), a count"),
    ("conv lagging_0.25", "conv_input_lagging_0.25", 100, "conv-input channels under 0.25 x their conv's mean norm (%)"),
    ("conv lagging_0.5", "conv_input_lagging_0.5", 100, "conv-input channels under 0.5 x their conv's mean norm (%)"),
    ("bn lagging", "bn_scale_lagging", 100, "BN scales |gamma| under 0.1 x their BN's mean (%)"),
)


def block_numbers(blocks: dict) -> dict:
    """Inside the blocks, per stage and over the network: dead conv-input channels (a count), and the shares
    (%) of conv-input channels under 0.25 and 0.5 x their conv's mean norm and of BN scales under 0.1 x their
    BN's mean. Every conv input counts once (the statistics are over the distinct ones)."""
    sizes = {name: len(values) for name, values in [*blocks["conv_input_norms"].items(), *blocks["bn_scales"].items()]}
    numbers = {}
    for key, statistic, scale, _ in BLOCK_STATISTICS:
        layers = blocks[statistic]
        for group in ["all", *dict.fromkeys(evidence.stage_of(name) for name in layers)]:
            members = [name for name in layers if group == "all" or evidence.stage_of(name) == group]
            channels = sum(layers[name] * sizes[name] for name in members)  # the channels counted, over the group
            numbers[f"{key} {group}"] = channels if key == "dead" else scale * channels / sum(sizes[n] for n in members)
    return numbers


def keep_one_corruption_set(numbers: dict) -> list[str]:
    """Corruption numbers of the runs whose corrupted images were made like most runs' (the same output
    fingerprint): the others' are dropped, so a table never compares accuracies on different images. Returns
    the runs dropped."""
    made = [run.get("corruptions made by") for seeds in numbers.values() for run in seeds.values()]
    made = [fingerprint for fingerprint in made if fingerprint is not None]
    if not made:
        return []
    common = max(set(made), key=made.count)
    dropped = []
    for label, seeds in numbers.items():
        for seed, run in seeds.items():
            if run.get("corruptions made by") not in (None, common):
                dropped.append(f"{label} seed {seed}")
                for key in [key for key in run if key.startswith("corruption")]:
                    del run[key]
    return dropped


def add_mce(numbers: dict) -> None:
    """mCE of every run against vanilla at the same seed, in %: for each corruption the run's errors summed over
    the severities over vanilla's, then the mean over corruptions (Hendrycks & Dietterich 2019, with vanilla
    in AlexNet's place: vanilla's own mCE is 100)."""
    for seeds in numbers.values():
        for seed, run in seeds.items():
            baseline = numbers.get("vanilla", {}).get(seed, {}).get("corruption errors")
            errors = run.get("corruption errors")
            if baseline and errors:
                run["mce"] = 100 * statistics.mean(sum(errors[name]) / sum(baseline[name]) for name in errors)


# ---------------------------------------------------------------------------------------------------
# Statistics


def t_interval(differences: list[float], confidence: float = 0.95) -> tuple[float, float, float] | None:
    """Mean and two-sided t interval of paired differences; None with fewer than two pairs."""
    from scipy import stats

    if len(differences) < 2:
        return None
    mean = statistics.mean(differences)
    half = stats.t.ppf(0.5 + confidence / 2, len(differences) - 1) * statistics.stdev(differences)
    half /= math.sqrt(len(differences))
    return mean, mean - half, mean + half


def paired_differences(numbers: dict, a: str, b: str, key: str) -> list[float]:
    """a minus b on `key`, over the seeds where both have it."""
    seeds = sorted(seed for seed in numbers.get(a, {}).keys() & numbers.get(b, {}).keys()
                   if key in numbers[a][seed] and key in numbers[b][seed])
    return [numbers[a][seed][key] - numbers[b][seed][key] for seed in seeds]


def paired_cell(differences: list[float], digits: int = 2, scale: float = 1.0) -> str:
    if not differences:
        return "—"
    differences = [scale * d for d in differences]
    interval = t_interval(differences)
    if interval is None:
        return f"{differences[0]:+.{digits}f} (1 seed)"
    mean, low, high = interval
    if high - low <= 1e-9 * max(1.0, abs(mean)):
        # every seed gave the same difference (one channel of a count, say): an interval of width 0 says nothing
        return f"{mean:+.{digits}f} on every seed, no spread to judge by (n={len(differences)})"
    verdict = ", not resolved" if low <= 0 <= high else ""
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]{verdict} (n={len(differences)})"


def mean_cell(numbers: dict, run_type: str, key: str, digits: int = 2, scale: float = 1.0) -> str:
    values = [scale * run[key] for run in numbers.get(run_type, {}).values() if key in run]
    return report.mean_std(values, digits)


# ---------------------------------------------------------------------------------------------------
# The three claims as tables


# The headline comparisons: (key, what, +1 if higher is better for Catch-up Mix, digits, scale)
SUMMARY = (
    ("last5", f"Top-1, mean of the last {LAST_EPOCHS} tested epochs (points)", 1, 2, 1),
    ("calibration ece", "ECE (points)", -1, 2, 1),
    ("fgsm 8/255", "FGSM 8/255 top-1 (points)", 1, 2, 1),
    ("pgd 8/255", "PGD-20 8/255 top-1 (points)", 1, 2, 1),
    ("corruptions", "Corruption top-1, mean of 15 x 5 (points)", 1, 2, 1),
    ("mce", "mCE (% of vanilla)", -1, 1, 1),
    ("deformation mean", "Deformation top-1, mean (points)", 1, 2, 1),
    ("ood tiny_imagenet msp auroc", "OOD AUROC vs Tiny-ImageNet, MSP (points)", 1, 2, 1),
    ("gini mean", "Gini of the channel norms, mean over layers", -1, 3, 1),
    ("top_share mean", "Strongest 10%'s share of the norm, mean over layers (points)", -1, 2, 100),
    ("lagging_0.5 mean", "Channels under 0.5 x the layer mean, mean over layers (points)", -1, 2, 100),
    ("reliance top 0.25 mean", "Top-1 lost with the strongest 25% zeroed, mean over layers (points)", -1, 2, 1),
    ("hessian top_eigenvalue", "Top Hessian eigenvalue", -1, 2, 1),
    ("hessian trace", "Hessian trace", -1, 1, 1),
)
SUMMARY_BLOCKS = (  # where the blocks are measured (medium_wd): where lagging filters live
    ("dead all", "Dead conv-input channels, count over the network", -1, 2, 1),
    ("conv lagging_0.25 all", "Conv-input channels under 0.25 x their conv's mean (%)", -1, 2, 1),
    ("bn lagging all", "BN scales under 0.1 x their BN's mean (%)", -1, 2, 1),
)
SUMMARY_AGAINST = ("vanilla", "cutmix", "catchup_mix random", "catchup_mix high", *evidence.VARIANTS)
# Further pairs the summary shows where the scale has both: does this project's variant beat random channels?
SUMMARY_PAIRS = (("catchup_mix next_conv_input", "catchup_mix random"),)


# The summary figure's panels: (key, what, +1 if higher is better for Catch-up Mix, scale); the blocks' one where
# the scale measures them
FOREST = (("last5", f"top-1, mean of the last {LAST_EPOCHS} tested epochs (points)", 1, 1),
          ("calibration ece", "ECE, 15 bins (points)", -1, 1),
          ("fgsm 8/255", "FGSM 8/255 top-1 (points)", 1, 1),
          ("corruptions", "corruption top-1, mean of 15 x 5 (points)", 1, 1),
          ("gini mean", "Gini of the channel norms,\nmean over the hook points", -1, 1))
FOREST_BLOCKS = (("dead all", "dead conv-input channels\n(count over the network)", -1, 1),)


def forest(types: list[str], numbers: dict, blocks: bool) -> dict:
    """What the summary figure draws: per panel and run type, Catch-up Mix minus that run type paired by seed,
    as (mean, low, high, n) of the 95% t interval (low = high = mean for one seed), or None."""
    panels = [*FOREST, *(FOREST_BLOCKS if blocks else ())]
    rows = [label for label in types if label != REFERENCE and numbers.get(label)]
    cells = {}
    for key, _, _, scale in panels:
        for label in rows:
            differences = [scale * d for d in paired_differences(numbers, REFERENCE, label, key)]
            interval = t_interval(differences)
            cells[label, key] = ((*interval, len(differences)) if interval else
                                 (differences[0], differences[0], differences[0], 1) if differences else None)
    return {"panels": panels, "rows": rows, "cells": cells, "reference": REFERENCE}



def summary_table(title: str, types: list[str], numbers: dict, notes: list[str], blocks: bool) -> report.Table:
    """The key comparisons of all three claims in one table: Catch-up Mix minus vanilla, CutMix, its own
    random- and high-channel ablations and this project's variant, those of them the scale has; then the variant
    minus random channels where both were run."""
    pairs = [(REFERENCE, other) for other in SUMMARY_AGAINST if other in types]
    pairs += [(a, b) for a, b in SUMMARY_PAIRS if a in types and b in types]
    rows = [[what, "higher" if sign > 0 else "lower",
             *(paired_cell(paired_differences(numbers, a, b, key), digits, scale) for a, b in pairs)]
            for key, what, sign, digits, scale in (*SUMMARY, *(SUMMARY_BLOCKS if blocks else ()))]
    columns = [f"vs {b}" if a == REFERENCE else f"{a} minus {b}" for a, b in pairs]
    return report.Table(title, notes, ["Catch-up Mix minus ... (95% t interval)", "Better if", *columns],
                        [("", rows)])


def claim_tables(title: str, types: list[str], numbers: dict, columns: list[tuple], better: str,
                 notes: list[str]) -> list[report.Table]:
    """A table of every run type (mean ± std over seeds, n) and one of Catch-up Mix minus every other run type.
    columns: (key, label, digits, scale)."""
    rows = [[label, *(mean_cell(numbers, label, key, digits, scale) for key, _, digits, scale in columns),
             str(len(numbers.get(label, {})))] for label in types]
    differences = [[f"{REFERENCE} − {other}",
                    *(paired_cell(paired_differences(numbers, REFERENCE, other, key), digits, scale)
                      for key, _, digits, scale in columns)]
                   for other in types if other != REFERENCE]
    labels = [label for _, label, _, _ in columns]
    return [report.Table(title, notes, ["Run type", *labels, "n"], [("Per run type (mean ± std over seeds)", rows)]),
            report.Table(f"{title}: Catch-up Mix minus each run type, paired by seed", [better],
                         ["Paired difference", *labels], [("", differences)])]


def per_layer_columns(statistic: str, hook_points: list[str], digits: int, scale: float) -> list[tuple]:
    return [(f"{statistic} {k}", f"k={k} ({HOOK_NAMES.get(k, k)})", digits, scale) for k in hook_points]


def render(settings, results, measurement_unused) -> list:
    """tables/evidence.md (+ .tex) and the figures, from the stored results."""
    measurement = evidence.Measurement(settings)
    numbers = defaultdict(dict)  # run type -> seed -> run_numbers
    stored = defaultdict(dict)  # run type -> seed -> result
    for run, result in results:
        if result is not None:
            numbers[run.labels["run_type"]][run.seed] = run_numbers(result, measurement)
            stored[run.labels["run_type"]][run.seed] = result
    excluded = keep_one_corruption_set(numbers)
    add_mce(numbers)
    types = list(dict.fromkeys(run.labels["run_type"] for run, _ in results))
    hook_points = sorted({key.split()[-1] for runs in numbers.values() for run in runs.values()
                          for key in run if key.startswith("gini ") and key.split()[-1].isdigit()},
                         key=int) or ["1", "2", "3", "4", "5"]
    plan = measurement.plan
    title = f"Evidence at {settings.scale} scale: {evidence.describe_protocol(settings, [run for run, _ in results])}"
    positive = "Positive differences favour Catch-up Mix."

    accuracy = claim_tables(
        "Claim 1, accuracy: test top-1 (%), NLL and ECE (%) on the whole test set", types, numbers,
        [("last5", f"Top-1, mean of last {LAST_EPOCHS}", 2, 1), ("last", "Top-1, last epoch", 2, 1),
         ("best", "Top-1, best tested epoch", 2, 1), ("nll", "NLL", 3, 1), ("ece", "ECE (%)", 2, 1)],
        f"{positive} (top-1; for NLL and ECE: negative).",
        ["Top-1 from the test passes during training (every 5 epochs and each of the last 10); NLL and ECE (15 "
         "bins) at the last epoch."])
    fgsm_eps = [eps_label(e) for e in plan["fgsm"]["eps"]]
    pgd_eps = [eps_label(e) for e in plan["pgd"]["eps"]]
    adversarial = claim_tables(
        "Claim 2a, adversarial robustness: top-1 (%) under FGSM and PGD-20", types, numbers,
        [("fgsm clean", "clean (FGSM subset)", 2, 1), *[(f"fgsm {e}", f"FGSM {e}", 2, 1) for e in fgsm_eps],
         *[(f"pgd {e}", f"PGD-{plan['pgd']['steps']} {e}", 2, 1) for e in pgd_eps]], positive,
        [f"FGSM on {plan['fgsm']['images']} and PGD on {plan['pgd']['images']} fixed test images (class-balanced), in "
         f"[0, 1] pixel space, model in eval mode; PGD: {plan['pgd']['steps']} steps of eps x "
         f"{plan['pgd']['step_fraction']:g}, uniform random start (seed {evidence.SUBSET_SEED}). Sampling error of one "
         f"accuracy near 50%: about {binomial_error(plan['fgsm']['images']):.1f} (FGSM) and "
         f"{binomial_error(plan['pgd']['images']):.1f} points (PGD); paired differences on the same images are "
         "tighter."])
    ood_sets = list(plan["ood"]["sets"])
    shift = claim_tables(
        "Claim 2b, corruptions, deformations, OOD detection and calibration", types, numbers,
        [("corruptions", "Corruptions, mean top-1 (%)", 2, 1), ("mce", "mCE (% of vanilla)", 1, 1),
         ("deformation mean", "Deformations, mean top-1 (%)", 2, 1),
         *[(f"ood {name} msp auroc", f"OOD AUROC {name} (MSP)", 2, 1) for name in ood_sets],
         ("ood mean energy auroc", "OOD AUROC mean (energy)", 2, 1),
         ("ood mean msp fpr95", "FPR95 mean (MSP)", 2, 1), ("calibration ece", "ECE (%)", 2, 1)],
        f"{positive} (accuracies, AUROC); for mCE, FPR95 and ECE negative ones do.",
        [f"Corruptions: the {len(plan['corruptions']['corruptions'])} benchmark corruptions x 5 severities of "
         f"{plan['corruptions']['images']} fixed test images (CIFAR-10-C made by catchup_mix.corruptions with the "
         "constants of Hendrycks' make_cifar_c.py, generated once and shared by every run); mCE per Hendrycks & "
         "Dietterich (2019) with vanilla at the same seed in AlexNet's place (vanilla = 100). Deformations: the mean "
         f"over {', '.join(plan['deformations']['deformations'])} on {plan['deformations']['images']} images. OOD: "
         f"{plan['ood']['images']} CIFAR-10 test images against {plan['ood']['images']} of each of "
         f"{', '.join(ood_sets)} (Tiny-ImageNet val resized to 32x32). ECE: 15 bins, the whole test set.",
         "Corruption numbers left out because their images were made by code that corrupts differently from "
         f"most runs' (run the command again to measure them on today's): {', '.join(excluded) or 'none'}."])
    mechanism = []
    for statistic, label, scale, digits in MECHANISM_STATISTICS:
        mechanism += claim_tables(f"Claim 3, mechanism: {label}, per hook point", types, numbers,
                                  per_layer_columns(statistic, hook_points, digits, scale),
                                  MECHANISM_BETTER[statistic], [])
    for fraction in [f for f in plan["reliance"]["fractions"] if f]:
        mechanism += claim_tables(
            f"Claim 3, reliance: top-1 lost (points) when the strongest {100 * fraction:g}% of a layer's channels "
            "are zeroed", types, numbers, per_layer_columns(f"reliance top {fraction:g}", hook_points, 2, 1),
            "Negative differences favour Catch-up Mix (it loses less when its strongest channels go).",
            [f"On {plan['reliance']['images']} fixed test images; channels ranked by mean norm over them; controls "
             f"(the weakest channels, and {plan['reliance']['draws']} random draws) in the figure and in each "
             "result's measurements. Zeroing a channel before a BatchNorm still passes that BatchNorm's shift on."])
    hessian = plan["hessian"]
    mechanism += claim_tables(
        "Claim 3, flatness: top Hessian eigenvalue and trace of the training loss", types, numbers,
        [("hessian top_eigenvalue", "Top eigenvalue", 2, 1), ("hessian eigenvalue_residual", "its residual", 3, 1),
         ("hessian trace", "Trace (Hutchinson)", 1, 1), ("hessian trace_stderr", "its std. error", 1, 1)],
        "Negative differences favour Catch-up Mix (flatter), on the magnitude of the eigenvalue.",
        [f"Cross-entropy on {hessian['images']} fixed clean training images, eval mode, all trainable parameters. "
         f"Top eigenvalue: power iteration, at most {hessian['iters']} Hessian-vector products (stop at a relative "
         f"change under {hessian['tol']:g}); residual = ||Hv - lambda v|| / |lambda| of the final vector (0 for an "
         f"exact eigenpair; runs whose iteration hit the cap unconverged: {unconverged(numbers)}). Trace: "
         f"{hessian['trace_samples']} Rademacher vectors, with the standard error of their mean. Neither is "
         "invariant to reparametrisation (Dinh et al. 2017)."])
    if "blocks" in plan:
        stages = sorted({key.removeprefix("dead ") for runs in numbers.values() for run in runs.values() for key in run
                         if key.startswith("dead ")}, key=lambda group: (group != "all", group))
        for key, _, _, what in BLOCK_STATISTICS:
            mechanism += claim_tables(
                f"Claim 3, inside the blocks: {what}, per stage", types, numbers,
                [(f"{key} {group}", "network" if group == "all" else group, 2, 1) for group in stages],
                "Negative differences favour the paper's claim (fewer lagging or dead channels).",
                [f"On {plan['blocks']['images']} fixed test images, the last epoch's weights in eval mode. A conv's "
                 "input: in PreActResNet-18 the output of the BN and ReLU before it, where a filter that weight "
                 "decay has silenced shows; each distinct input once (a projection shortcut reads its block's "
                 "conv1 input; the stem reads the image and is left out). Shares are over the channels of the "
                 "stage's conv inputs (BN scales: of its BNs)."])
    summary = summary_table(f"{title}: the key comparisons", types, numbers,
                            evidence_notes(settings, results, measurement, numbers), "blocks" in plan)
    tables = [summary, *accuracy, *adversarial, *shift, *mechanism, cost_table(settings, stored, measurement)]
    from . import evidence_figures

    return report.write_table(settings, "evidence", *tables) + evidence_figures.draw(
        settings, title, types, numbers, stored, plan, hook_points, forest(types, numbers, "blocks" in plan))


# (statistic, label, scale, digits) per hook point
MECHANISM_STATISTICS = (
    ("gini", "Gini coefficient of the channel norms", 1, 3),
    ("top_share", "share of the norm held by the strongest 10% of channels (%)", 100, 1),
    ("bottom_share", "share of the norm held by the weakest 10% of channels (%)", 100, 2),
    ("lagging_0.5", "channels under 0.5 x their layer's mean norm (%)", 100, 1),
    ("lagging_0.25", "channels under 0.25 x their layer's mean norm (%)", 100, 1),
)
MECHANISM_BETTER = {
    "gini": "Negative differences favour the paper's claim (more equal channels).",
    "top_share": "Negative differences favour the paper's claim (less weight on the strongest channels).",
    "bottom_share": "Positive differences favour the paper's claim (the weakest channels carry more).",
    "lagging_0.5": "Negative differences favour the paper's claim (fewer lagging channels).",
    "lagging_0.25": "Negative differences favour the paper's claim (fewer lagging channels).",
}


def binomial_error(images: int, accuracy: float = 0.5) -> float:
    """The standard error, in points, of an accuracy measured on `images` independent images."""
    return 100 * math.sqrt(accuracy * (1 - accuracy) / images)


def unconverged(numbers: dict) -> str:
    runs = [f"{label} seed {seed}" for label, seeds in numbers.items() for seed, run in seeds.items()
            if run.get("hessian eigenvalue_converged") is False]
    return ", ".join(runs) or "none"


def evidence_notes(settings, results, measurement, numbers) -> list[str]:
    done = [result for _, result in results if result is not None]
    measured = sum(not measurement.missing(result) for result in done)
    hours = sum(r["summary"].get("wall_time_s", r["summary"]["train_time_s"]) for r in done) / 3600
    cells = ("Cells: mean ± sample std over seeds; n = seeds done; — = not run or not measured yet. Differences: "
             "Catch-up Mix minus the other run type at the same seed (same initial weights, data order and "
             "augmentation; only the mixing draws differ), mean and 95% t interval over the seeds both have; "
             "\"not resolved\": the interval covers 0. Intervals are not adjusted for the many comparisons: "
             "expect about one in twenty to exclude 0 by chance.")
    return report.provenance_notes(settings, results, cells) + [
        f"Compute so far: {hours:.1f} h of wall-clock training and testing for {len(done)} runs, {measured} of them "
        f"measured with today's settings "
        f"({', '.join(sorted({r['summary']['provenance']['device'] for r in done})) or 'none yet'}).",
        "Repeatability: docs/evidence.md says which numbers repeat bit for bit and where.",
    ]


def cost_table(settings, stored: dict, measurement) -> report.Table:
    """What each measurement costs against the run's training time."""
    seconds = defaultdict(list)
    shares = []
    for seeds in stored.values():
        for result in seeds.values():
            entries = {part: result.get("measurements", {}).get(part, {}).get(measurement.key(part))
                       for part in measurement.plan}
            if all(entries.values()):
                total = sum(entry["seconds"] for entry in entries.values())
                shares.append(100 * total / result["summary"]["train_time_s"])
            for part, entry in entries.items():
                if entry is not None:
                    seconds[part].append(entry["seconds"])
    rows = [[part, f"{statistics.median(seconds[part]):.0f}" if seconds[part] else "—", str(len(seconds[part])),
             describe_part(measurement.plan[part])] for part in measurement.plan]
    share = (f"All measurements together: median {statistics.median(shares):.1f}% (range {min(shares):.1f}-"
             f"{max(shares):.1f}%) of a run's training time, over {len(shares)} fully measured runs."
             if shares else "No run fully measured yet.")
    return report.Table("What the measurements cost", [share, "Seconds as measured in the training process, on "
                                                              "the machine and load of each run (its provenance)."],
                        ["Part", "Median seconds", "Runs", "Settings"], [("", rows)])


def describe_part(settings: dict) -> str:
    return "; ".join(f"{key} {setting_text(value)}" for key, value in settings.items())


def setting_text(value) -> str:
    if isinstance(value, tuple | list):
        return ", ".join(setting_text(v) for v in value)
    if isinstance(value, float) and 0 < value < 0.1:
        return eps_label(value)  # the radii: 8/255 rather than 0.0314
    return "all" if value is None else str(value)
