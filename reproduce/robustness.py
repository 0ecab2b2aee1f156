"""The robustness claim: the table1 runs of PreActResNet-18 (every method, no new training) measured on clean
test images, FGSM, PGD, the 15 corruptions x 5 severities of CIFAR-100-C, deformations, OOD detection and
calibration (catchup_mix.robustness), reported as mean ± std over seeds.

Each run's numbers are cached in results/robustness/<scale>/<run>-<run key>-<suite key>.json, written once,
so re-rendering is free and an interrupted measurement resumes with the runs not measured yet. At paper
scale the corrupted set is the official CIFAR-100-C when <data-root>/CIFAR-100-C holds it, and is generated
(runs/paper/corruptions/) otherwise; the table says which.
"""

import json
import statistics
from collections import defaultdict
from pathlib import Path

from catchup_mix import corruptions, methods
from catchup_mix.robustness import SuiteSettings, eps_label

from . import report, runner

SUITE = ("clean", "fgsm", "pgd", "corruptions", "deformations", "ood")
OFFICIAL_FOLDER = "CIFAR-100-C"  # under --data-root, as the benchmark's authors release it
# Smoke: every smoke test image (5 classes x 40), the full attacks (PGD-20); paper: the whole test set.
SMOKE_SUITE = SuiteSettings(max_images=500)
PAPER_SUITE = SuiteSettings()


def suite_settings(settings) -> SuiteSettings:
    return SMOKE_SUITE if settings.scale == "smoke" else PAPER_SUITE


def cache_path(settings, run) -> Path:
    key = suite_settings(settings).key()
    return settings.out / "results" / "robustness" / settings.scale / f"{run.name}-{run.key}-{key}.json"


def official_set(settings, run) -> Path | None:
    """<data-root>/CIFAR-100-C at paper scale for a CIFAR-100 run, when it is there."""
    folder = Path(settings.data_root or "data") / OFFICIAL_FOLDER
    if settings.scale == "paper" and run.config["dataset"] == "cifar100" and (folder / "labels.npy").is_file():
        return folder
    return None


def generated_set(settings, loaded) -> Path:
    """The corrupted test split of a loaded run's dataset, generated once and shared by the runs."""
    images = loaded.dataset.test.images.permute(0, 2, 3, 1).numpy()
    labels = loaded.dataset.test.labels.numpy()
    folder = (settings.out / "runs" / settings.scale / "corruptions" /
              f"{loaded.config.dataset}-{corruptions.fingerprint(images, labels)}")
    corruptions.write_set(images, labels, folder, corruptions.CORRUPTIONS, seed=0)
    return folder


def measure(settings, results) -> dict:
    from catchup_mix import provenance
    from catchup_mix.checkpoint import write_json
    from catchup_mix.evaluate import load_run
    from catchup_mix.robustness import run_suite

    suite = suite_settings(settings)
    measured = []
    for run, _ in results:
        path = cache_path(settings, run)
        official = official_set(settings, run)
        if path.is_file() and json.loads(path.read_text())["corruptions"]["source"] == (
                "official" if official else "generated"):
            measured.append(str(path))
            continue  # measured before, on the same kind of corrupted set
        checkpoint = runner.checkpoint(run, settings.out)
        loaded = load_run(checkpoint, settings.data_root, run.config.get("device", "auto"))
        folder = official or generated_set(settings, loaded)
        print(f"[robustness] {run.name}: measuring ({checkpoint})", flush=True)
        numbers = run_suite(loaded.model, loaded.dataset, loaded.config, SUITE, suite, device=loaded.device,
                            autocast=loaded.autocast, corruptions_dir=folder, data_root=settings.data_root)
        made = {key: loaded.provenance.get(key) for key in ("commit", "dirty", "time_utc", "host", "device")}
        write_json(path, {"labels": run.labels, "seed": run.seed, "run_key": run.key, "epoch": loaded.epoch,
                          "precision": loaded.config.precision, "same_numerics_as_training": loaded.same_numerics,
                          "checkpoint": made, **numbers, "provenance": provenance.collect(loaded.device)})
        measured.append(str(path))
    return {"suite_key": suite.key(), "files": measured}


def _load_measurements(settings, runs_and_results) -> dict:
    """method -> [per-run numbers] of the runs measured with today's suite settings."""
    grouped = defaultdict(list)
    for run, _ in runs_and_results:
        path = cache_path(settings, run)
        if path.is_file():
            grouped[run.labels["method"]].append(json.loads(path.read_text()))
    return grouped


def _cell(values) -> str:
    return report.mean_std([v for v in values if v is not None])


def render(settings, results, measurement) -> list[Path]:
    grouped = _load_measurements(settings, results)
    suite = suite_settings(settings)
    first = next((m for ms in grouped.values() for m in ms), None)
    fgsm = [eps_label(e) for e in suite.fgsm_eps]
    pgd = [eps_label(e) for e in suite.pgd_eps]
    columns = ["Method", "Clean", *[f"FGSM {e}" for e in fgsm], *[f"PGD-{suite.pgd_steps} {e}" for e in pgd],
               "Corruptions", "Deformations", "OOD AUROC", "ECE", "n"]
    rows, corruption_rows, deformation_rows, ood_rows = [], [], [], []
    ood_names = sorted({name for ms in grouped.values() for m in ms for name in m["ood"] if name != "mean"})
    for method in methods.available():
        runs = grouped[method]
        rows.append([method, _cell([m["clean"]["top1"] for m in runs]),
                     *[_cell([m["fgsm"][e] for m in runs]) for e in fgsm],
                     *[_cell([m["pgd"][e] for m in runs]) for e in pgd],
                     _cell([m["corruptions"]["mean"] for m in runs]),
                     _cell([m["deformations"]["mean"] for m in runs]),
                     _cell([m["ood"].get("mean", {}).get("msp", {}).get("auroc") for m in runs]),
                     _cell([m["clean"]["ece"] for m in runs]), str(len(runs))])
        corruption_rows.append([method, *[_cell([m["corruptions"]["per_corruption"][name]["mean"] for m in runs])
                                          for name in suite.corruption_names]])
        deformation_rows.append([method, *[_cell([m["deformations"][name] for m in runs])
                                           for name in suite.deformations]])
        ood_rows.append([method, *[_cell([m["ood"].get(name, {}).get(score, {}).get("auroc") for m in runs])
                                   for name in ood_names for score in ("msp", "energy")],
                         *[_cell([m["ood"].get(name, {}).get("msp", {}).get("fpr95") for m in runs])
                           for name in ood_names]])
    title = report.scaled_title(settings, "Robustness of PreActResNet-18 by method: adversarial attacks, "
                                "corruptions (CIFAR-100-C protocol), deformations, OOD detection, calibration",
                                results)
    notes = _notes(settings, results, suite, first, grouped)
    tables = [
        report.Table(title, notes, columns, [("", rows)]),
        report.Table("Corruption accuracy (%) by corruption, mean over severities 1-5", [],
                     ["Method", *suite.corruption_names], [("", corruption_rows)]),
        report.Table("Accuracy (%) under each deformation", [], ["Method", *suite.deformations],
                     [("", deformation_rows)]),
        report.Table("OOD detection by set: AUROC (%) of the maximum softmax probability and of the energy "
                     "score, and FPR at 95% TPR (%) of the maximum softmax probability", [],
                     ["Method", *[f"{name} AUROC {score}" for name in ood_names for score in ("MSP", "energy")],
                      *[f"{name} FPR95" for name in ood_names]], [("", ood_rows)]),
    ]
    return report.write_table(settings, "robustness", *tables) + _figure(settings, title, grouped, suite)


def _notes(settings, results, suite, first, grouped) -> list[str]:
    # how the runs were trained (the accuracy tables' own "Scale: ... Cells: ..." line does not apply here)
    notes = [note for note in report.provenance_notes(settings, results) if not note.startswith("Scale:")]
    measured = sum(len(ms) for ms in grouped.values())
    trained = sum(result is not None for _, result in results)
    seeds = ", ".join(str(seed) for seed in sorted({run.seed for run, _ in results}))
    notes.append(f"Scale: {settings.scale}. Runs trained: {trained} of {len(results)} (table1's PreActResNet-18 "
                 f"runs, seeds {seeds}); measured: {measured}. Cells: mean ± sample std over seeds of top-1 "
                 "accuracy (%), OOD AUROC (%) and ECE (%); n = seeds measured; — = not measured yet. The Catch-up "
                 "Mix paper's robustness numbers could not be read: none are shown.")
    if first is None:
        return notes + ["Not measured yet."]
    part = first["corruptions"]
    source = ("the official CIFAR-100-C files" if part["source"] == "official" else
              f"a set generated by catchup_mix.corruptions (seed {part['set_info']['seed']}, constants of "
              "hendrycks/robustness make_cifar_c.py; docs/robustness.md lists where it differs from the original)")
    ood = ", ".join(name for name in first["ood"] if name != "mean")
    notes.append(
        f"Settings: {_images(first)}; model in eval mode, attacks in [0, 1] pixel space "
        f"with the normalisation inside the model. FGSM: one signed-gradient step. PGD-{suite.pgd_steps}: "
        f"L-inf ball, step {eps_label(suite.pgd_step_size)}, {suite.pgd_steps} steps, uniform random start "
        f"(seed {suite.seed}). Corruptions: mean over {len(suite.corruption_names)} corruptions x 5 severities "
        f"of {source}. Deformations: mean over {', '.join(suite.deformations)} (degrees; bilinear, outside "
        f"filled black as the training crops pad). OOD AUROC: maximum softmax probability, mean over the sets "
        f"{ood}. ECE: 15 equal-width confidence bins.")
    devices = sorted({m["provenance"]["device"] for ms in grouped.values() for m in ms})
    commits = sorted({m["provenance"]["commit"][:10] + ("+dirty" if m["provenance"]["dirty"] else "")
                      for ms in grouped.values() for m in ms})
    notes.append(f"Measured with commit {', '.join(commits)} on {'; '.join(devices)}; per run in "
                 f"results/robustness/{settings.scale}/. Command: python -m reproduce robustness --scale "
                 f"{settings.scale}")
    return notes


def _images(measured: dict) -> str:
    subset = measured.get("subset")
    if subset is None or subset["selection"] == "all":
        return f"all {measured['n_images']} test images"
    return (f"{subset['images']} of the {subset['of']} test images, class-balanced ({subset['classes']} classes, "
            f"{subset['per_class'][0]}-{subset['per_class'][1]} each, evenly spread, seed {subset['seed']})")


def _figure(settings, title, grouped, suite) -> list[Path]:
    """Top row: accuracy against corruption severity and attack radius, under each deformation, OOD AUROC per
    set. Below: the reliability diagram, one small panel per method (overlaid, ten methods are unreadable)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [method for method in methods.available() if grouped[method]]
    if not measured:
        return []
    per_row = 6
    rows = -(-len(measured) // per_row)
    fig = plt.figure(figsize=(20, 5.2 + 2.9 * rows))
    grid = fig.add_gridspec(1 + rows, per_row * 2, height_ratios=[1.6] + [1] * rows)
    severity_ax, attack_ax, deformation_ax, ood_ax = (fig.add_subplot(grid[0, 3 * i:3 * i + 3]) for i in range(4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ood_names = sorted({name for method in measured for m in grouped[method] for name in m["ood"] if name != "mean"})
    width = 0.8 / len(measured)
    for i, method in enumerate(measured):
        runs = grouped[method]
        colour = colours[i % len(colours)]
        curves = [[m["clean"]["top1"], *m["corruptions"]["per_severity"].values()] for m in runs]
        _mean_band(severity_ax, range(6), curves, colour, method)
        for attack, style in (("fgsm", "-"), ("pgd", "--")):
            epsilons = [0.0, *getattr(suite, f"{attack}_eps")]
            curves = [[m["clean"]["top1"], *m[attack].values()] for m in runs]
            _mean_band(attack_ax, [255 * e for e in epsilons], curves, colour, None, style)
        _mean_band(deformation_ax, range(len(suite.deformations)),
                   [[m["deformations"][name] for name in suite.deformations] for m in runs], colour, None)
        aurocs = [[m["ood"].get(name, {}).get("msp", {}).get("auroc", float("nan")) for name in ood_names] for m in runs]
        ood_ax.bar([j + (i - len(measured) / 2 + 0.5) * width for j in range(len(ood_names))],
                   [statistics.mean(column) for column in zip(*aurocs, strict=True)], width, color=colour)
        reliability_ax = fig.add_subplot(grid[1 + i // per_row, 2 * (i % per_row):2 * (i % per_row) + 2])
        _reliability(reliability_ax, runs, colour, method)
    severity_ax.set(xlabel="corruption severity (0 = clean test images)", ylabel="top-1 accuracy (%)",
                    title=f"mean over the {len(suite.corruption_names)} corruptions")
    attack_ax.set(xlabel="attack radius eps (x 1/255, L-inf, pixel space)", ylabel="top-1 accuracy (%)",
                  title=f"FGSM (solid) and PGD-{suite.pgd_steps} (dashed)")
    deformation_ax.set(ylabel="top-1 accuracy (%)", title="each deformation")
    deformation_ax.set_xticks(range(len(suite.deformations)), suite.deformations, rotation=35, ha="right", fontsize=7)
    ood_ax.set(ylabel="AUROC (%), maximum softmax probability", title="OOD detection per set (50 = chance)",
               ylim=(min(40, ood_ax.get_ylim()[0]), 100))
    ood_ax.set_xticks(range(len(ood_names)), ood_names, rotation=20, ha="right", fontsize=7)
    for ax in (severity_ax, attack_ax, deformation_ax, ood_ax):
        ax.grid(alpha=0.3)
    fig.suptitle(title.replace(" [", "\n["), fontsize=10)
    return report.save_figure(settings, "robustness", fig, dpi=110, legend_from=severity_ax)


def _reliability(ax, runs, colour, method) -> None:
    """One method's reliability diagram over its seeds' bins: accuracy against confidence, dot area ~ count."""
    bins = [list(zip(*[(b["count"], b["confidence"], b["accuracy"]) for b in m["clean"]["reliability"]], strict=True))
            for m in runs]
    counts = [sum(run[0][b] for run in bins) for b in range(len(bins[0][0]))]
    points = [(sum(run[0][b] * run[1][b] for run in bins if run[0][b]) / counts[b],
               sum(run[0][b] * run[2][b] for run in bins if run[0][b]) / counts[b], counts[b])
              for b in range(len(counts)) if counts[b]]
    confidence, accuracy, count = zip(*points, strict=True)
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax.plot(confidence, accuracy, lw=1, color=colour)
    ax.scatter(confidence, accuracy, s=[4 + 60 * c / max(count) for c in count], color=colour)
    ece = statistics.mean(m["clean"]["ece"] for m in runs)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), title=f"{method}: ECE {ece:.1f}%")
    ax.title.set_fontsize(8)
    ax.tick_params(labelsize=7)
    ax.set_xlabel("confidence (15 bins)", fontsize=7)
    ax.set_ylabel("accuracy", fontsize=7)
    ax.grid(alpha=0.3)


def _mean_band(ax, xs, curves, colour, label, style="-") -> None:  # label None: not in the legend
    """Mean over seeds as a line, ± one sample std as a band when there are several seeds."""
    columns = list(zip(*curves, strict=True))
    means = [statistics.mean(c) for c in columns]
    ax.plot(list(xs), means, style, color=colour, marker="o", ms=3, label=label)
    if len(curves) > 1:
        stds = [statistics.stdev(c) for c in columns]
        ax.fill_between(list(xs), [m - s for m, s in zip(means, stds, strict=True)],
                        [m + s for m, s in zip(means, stds, strict=True)], color=colour, alpha=0.15)

