"""The evidence's figures: accuracy over training, robustness against attack radius and corruption
severity, the filter probe's statistics over the epochs, and the reliance curves. Lines are means over
seeds, bands the min-max over seeds; the run types that answer the paper's question are drawn thicker."""

from catchup_mix.robustness import eps_label

from . import report

HIGHLIGHT = ("vanilla", "cutmix", "catchup_mix", "catchup_mix random", "catchup_mix high")
HOOK_NAMES = {"1": "stem", "2": "stage 1", "3": "stage 2", "4": "stage 3", "5": "stage 4"}


def draw(settings, title, types, numbers, stored, plan, hook_points, forest) -> list:
    import matplotlib

    matplotlib.use("Agg")
    done = [label for label in types if numbers.get(label)]
    if not done:
        return []
    return (summary_forest(settings, title, forest) + accuracy_curves(settings, title, done, stored) + robustness_curves(settings, title, done, numbers, plan)
            + probe_curves(settings, title, done, stored, hook_points) + reliance_curves(settings, title, done, stored,
                                                                                          hook_points)
            + block_curves(settings, title, done, stored, plan))


def summary_forest(settings, title, forest: dict) -> list:
    """The evidence in one picture: per headline measure, Catch-up Mix minus each other run type, paired by seed,
    mean and 95% t interval over the seeds; filled where the interval excludes 0 (resolved), hollow where not."""
    import matplotlib.pyplot as plt

    panels, rows, cells = forest["panels"], forest["rows"], forest["cells"]
    if not rows:
        return []
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels) + 1.2, 0.42 * len(rows) + 2.2),
                             sharey=True, squeeze=False)
    positions = list(range(len(rows)))[::-1]  # the first run type at the top
    # A row's usual number of paired seeds goes into its label; a cell says its own only where it has fewer or more.
    row_n = {}
    for label in rows:
        counts = [cell[3] for key, *_ in panels if (cell := cells.get((label, key))) is not None]
        row_n[label] = max(set(counts), key=counts.count) if counts else None
    for ax, (key, what, sign, _) in zip(axes[0], panels, strict=True):
        for label, y in zip(rows, positions, strict=True):
            cell = cells.get((label, key))
            if cell is None:
                continue
            mean, low, high, n = cell
            resolved = n > 1 and (low > 0 or high < 0)
            colour = ("tab:green" if sign * mean > 0 else "tab:red") if resolved else "0.35"
            ax.plot([low, high], [y, y], color=colour, lw=2.2 if resolved else 1.2, solid_capstyle="butt")
            ax.plot([mean], [y], "o", ms=6, color=colour, mfc=colour if resolved else "white", mew=1.4)
            if n != row_n[label]:
                ax.annotate(f"n={n}", (high, y), xytext=(4, 0), textcoords="offset points", va="center",
                            fontsize=6.5, color="0.35")
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title(what, fontsize=9)
        arrow = "better for Catch-up Mix →" if sign > 0 else "← better for Catch-up Mix"
        ax.set_xlabel(f"Catch-up Mix minus the run type\n{arrow}", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
        ax.margins(x=0.18)
    axes[0][0].set_yticks(positions, [label if row_n[label] is None else f"{label}\n(n={row_n[label]} seeds)"
                                      for label in rows], fontsize=8)
    fig.suptitle(report.wrap_title(
        f"{title}: {forest['reference']} minus each other run type, paired by seed (mean and 95% t interval over the "
        "seeds both have; filled and coloured where the interval excludes 0: green for Catch-up Mix, red against "
        "it; hollow grey: not resolved)", fig), fontsize=9.5)
    return report.save_figure(settings, "evidence_summary", fig, dpi=150)


def _style(types: list[str]) -> dict:
    import matplotlib.pyplot as plt

    colours = plt.get_cmap("tab20")
    return {label: dict(color=colours((2 * i) % 20 + (i >= 10)), lw=2.0 if label in HIGHLIGHT else 1.0,
                        ls="-" if label in HIGHLIGHT else "--") for i, label in enumerate(types)}


def _line(ax, xs, rows, style, label, marker="o"):
    """Mean over seeds as a line, min to max as a band; markers where the points are few."""
    import numpy as np

    values = np.array(rows, dtype=float)
    ax.plot(xs, values.mean(0), marker=marker, ms=3, label=f"{label} (n={len(rows)})", **style)
    if len(rows) > 1:
        ax.fill_between(xs, values.min(0), values.max(0), color=style["color"], alpha=0.12, lw=0)


def _hook_titles(hook_points) -> list[str]:
    return [f"k={k}: {HOOK_NAMES.get(k, k)}" for k in hook_points]


def _label_grid(axes, row_names, column_titles, xlabel):
    """A grid of one row per quantity and one column per layer: row names, column titles, grid lines."""
    for name, row_axes in zip(row_names, axes, strict=True):
        row_axes[0].set_ylabel(name, fontsize=9)
        for ax in row_axes:
            ax.grid(alpha=0.3)
    for ax, title in zip(axes[0], column_titles, strict=True):
        ax.set_title(title, fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel(xlabel)


def accuracy_curves(settings, title, types, stored) -> list:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    style = _style(types)
    for label in types:
        histories = [[row for row in result["history"] if "test_top1" in row] for result in stored[label].values()]
        length = min(len(history) for history in histories)
        epochs = [row["epoch"] for row in histories[0][:length]]
        for ax, key in zip(axes, ("test_top1", "test_nll"), strict=True):
            _line(ax, epochs, [[row[key] for row in history[:length]] for history in histories], style[label], label,
                  marker=None)
    axes[0].set_ylabel("test top-1 (%)")
    axes[1].set_ylabel("test NLL (nats per image)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle(report.wrap_title(f"{title}: accuracy during training (10,000 test images; lines: mean over "
                                   "seeds, bands: min to max)", fig), fontsize=10)
    return report.save_figure(settings, "evidence", fig, dpi=150, legend_from=axes[0])


def robustness_curves(settings, title, types, numbers, plan) -> list:
    """Top-1 against the FGSM and PGD radius (0: the same images clean), and against corruption severity."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 5.4))
    style = _style(types)
    panels = [(axes[0], "fgsm", plan["fgsm"]["eps"], "FGSM"),
              (axes[1], "pgd", plan["pgd"]["eps"], f"PGD-{plan['pgd']['steps']} (step eps x "
                                                    f"{plan['pgd']['step_fraction']:g})")]
    for label in types:
        runs = list(numbers[label].values())
        for ax, attack, radii, _ in panels:
            keys = [f"{attack} clean", *(f"{attack} {eps_label(e)}" for e in radii)]
            rows = [[run[key] for key in keys] for run in runs if all(key in run for key in keys)]
            if rows:
                _line(ax, [0, *(255 * e for e in radii)], rows, style[label], label)
        keys = ["corruptions clean", *(f"corruptions severity {s}" for s in plan["corruptions"]["severities"])]
        rows = [[run[key] for key in keys] for run in runs if all(key in run for key in keys)]
        if rows:
            _line(axes[2], [0, *plan["corruptions"]["severities"]], rows, style[label], label)
    for ax, attack, radii, name in panels:
        ax.set(xlabel="radius eps (x 1/255, L-inf, pixel space; 0 = clean)", ylabel="top-1 (%)",
               title=f"{name} on {plan[attack]['images']} test images")
        ax.set_xticks([0, *(255 * e for e in radii)])
    axes[2].set(xlabel="corruption severity (0 = clean)", ylabel="top-1 (%)",
                title=f"mean over {len(plan['corruptions']['corruptions'])} corruptions, "
                      f"{plan['corruptions']['images']} images")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(report.wrap_title(f"{title}: robustness (lines: mean over seeds, bands: min to max)", fig),
                 fontsize=10)
    return report.save_figure(settings, "evidence_robustness", fig, dpi=140, legend_from=axes[0])


PROBE_ROWS = (("filter_gini", "Gini of the channel norms", 1), ("filter_lagging_0.5", "channels < 0.5 x mean (%)", 100),
              ("filter_bottom_share", "weakest 10% share (%)", 100))


def probe_curves(settings, title, types, stored, hook_points) -> list:
    """The filter probe over the epochs: Gini, lagging under half the mean, the weakest 10%'s share."""
    import matplotlib.pyplot as plt

    probed = [label for label in types if all("filter_gini" in r["history"][0] for r in stored[label].values())]
    if not probed:
        return []
    fig, axes = plt.subplots(len(PROBE_ROWS), len(hook_points), figsize=(3.4 * len(hook_points), 9.5),
                             squeeze=False, sharex=True)
    style = _style(types)
    for label in probed:
        histories = [result["history"] for result in stored[label].values()]
        epochs = [row["epoch"] for row in histories[0]]
        for (key, _, scale), row_axes in zip(PROBE_ROWS, axes, strict=True):
            for ax, k in zip(row_axes, hook_points, strict=True):
                _line(ax, epochs, [[scale * row[key][k] for row in history] for history in histories], style[label],
                      label, marker=None)
    lagging_row = axes[[key for key, _, _ in PROBE_ROWS].index("filter_lagging_0.5")]
    for ax, k in zip(lagging_row, hook_points, strict=True):
        values = [row["filter_lagging_0.5"][k] for label in probed for result in stored[label].values()
                  for row in result["history"]]
        report.say_if_all_zero(ax, values, "no channel under 0.5 x its layer's mean\nin any run at any epoch")
    _label_grid(axes, [name for _, name, _ in PROBE_ROWS], _hook_titles(hook_points), "epoch")
    probe = stored[probed[0]][next(iter(stored[probed[0]]))]["summary"]["config"]["filter_probe"]
    fig.suptitle(report.wrap_title(f"{title}: the filter probe after every epoch ({probe} fixed test images; "
                                   "lines: mean over seeds, bands: min to max)", fig), fontsize=10)
    return report.save_figure(settings, "evidence_probe", fig, dpi=120, legend_from=axes[0][0])


BLOCK_ROWS = (("conv_input_dead", "dead conv-input\nchannels (%)"),
              ("conv_input_lagging_0.25", "conv-input channels\n< 0.25 x mean (%)"),
              ("bn_scale_lagging", "BN scales |gamma|\n< 0.1 x mean (%)"))


def block_curves(settings, title, types, stored, plan) -> list:
    """Inside the blocks over the epochs, from the probe: per stage, the share of its conv-input channels that
    are dead or under a quarter of their conv's mean norm, and of its BN scales under a tenth of their mean."""
    import matplotlib.pyplot as plt

    from .evidence import Measurement, stage_of

    if "blocks" not in plan:
        return []
    key = Measurement(settings).key("blocks")
    measured = {label: [r for r in stored[label].values() if key in r.get("measurements", {}).get("blocks", {})
                        and "conv_input_dead" in r["history"][0]] for label in types}
    measured = {label: runs for label, runs in measured.items() if runs}
    if not measured:
        return []
    blocks = next(iter(measured.values()))[0]["measurements"]["blocks"][key]["numbers"]
    sizes = {name: len(values) for name, values in [*blocks["conv_input_norms"].items(), *blocks["bn_scales"].items()]}
    stages = list(dict.fromkeys(stage_of(name) for name in blocks["conv_input_dead"]))
    fig, axes = plt.subplots(len(BLOCK_ROWS), len(stages), figsize=(3.4 * len(stages), 8.5), squeeze=False,
                             sharex=True)
    style = _style(types)

    def share(row: dict, stage: str) -> float:  # % of the stage's channels, each layer weighted by its channels
        members = [name for name in row if stage_of(name) == stage]
        return 100 * sum(row[name] * sizes[name] for name in members) / sum(sizes[name] for name in members)

    for label, runs in measured.items():
        epochs = [row["epoch"] for row in runs[0]["history"]]
        for (statistic, _), row_axes in zip(BLOCK_ROWS, axes, strict=True):
            for ax, stage in zip(row_axes, stages, strict=True):
                _line(ax, epochs, [[share(row[statistic], stage) for row in run["history"]] for run in runs],
                      style[label], label, marker=None)
    _label_grid(axes, [name for _, name in BLOCK_ROWS], stages, "epoch")
    probe = next(iter(measured.values()))[0]["summary"]["config"]["filter_probe"]
    fig.suptitle(report.wrap_title(f"{title}: inside the blocks, where filters lag (the probe after every epoch, "
                                   f"{probe} fixed test images; a conv's input is the BN+ReLU output before it; "
                                   "lines: mean over seeds, bands: min to max)", fig), fontsize=10)
    return report.save_figure(settings, "evidence_blocks", fig, dpi=120, legend_from=axes[0][0])


def reliance_curves(settings, title, types, stored, hook_points) -> list:
    """Top-1 with the strongest, the weakest or random channels of one layer zeroed, against the fraction."""
    import matplotlib.pyplot as plt

    from .evidence import Measurement

    measurement = Measurement(settings)
    key = measurement.key("reliance")
    modes = (("top", "strongest zeroed"), ("lowest", "weakest zeroed"), ("random", "random zeroed (mean of draws)"))
    curves = {label: [r["measurements"]["reliance"][key]["numbers"] for r in stored[label].values()
                      if key in r.get("measurements", {}).get("reliance", {})] for label in types}
    curves = {label: runs for label, runs in curves.items() if runs}
    if not curves:
        return []
    fig, axes = plt.subplots(len(modes), len(hook_points), figsize=(3.4 * len(hook_points), 9.5), squeeze=False,
                             sharey="col")
    style = _style(types)
    for label, runs in curves.items():
        for (mode, _), row_axes in zip(modes, axes, strict=True):
            for ax, k in zip(row_axes, hook_points, strict=True):
                fractions = runs[0][k]["fractions"]
                _line(ax, [100 * f for f in fractions], [run[k][mode] for run in runs], style[label], label)
    _label_grid(axes, [f"{name}:\ntest top-1 (%)" for _, name in modes], _hook_titles(hook_points),
                "channels zeroed at this layer (%)")
    images = measurement.plan["reliance"]["images"]
    fig.suptitle(report.wrap_title(f"{title}: reliance on the strongest channels ({images} fixed test images; "
                                   "channels ranked by mean norm; lines: mean over seeds, bands: min to max)", fig),
                 fontsize=10)
    return report.save_figure(settings, "evidence_reliance", fig, dpi=120, legend_from=axes[0][0])
