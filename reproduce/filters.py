"""The paper's argument about filters as artifacts: `catchup_mix.analysis` applied to every registered
method's PreActResNet-18, under one protocol.

- figure_filters: per hook point, the channel-norm distribution, its Gini coefficient, the share of the top
  10% of channels and the fraction of lagging channels, over the test set.
- figure_lagging: the lagging fraction and Gini per hook point over the epochs, from the trainer's filter
  probe (runs of their own, with `filter_probe` on).
- figure_reliance: test top-1 with the top / lowest / random p% channels (by mean norm) zeroed at each hook
  point, p = 0..50%.
- figure_landscape: 1-D and 2-D filter-normalised loss landscapes, the top Hessian eigenvalue and the
  Hessian trace, on a fixed subset of the clean training images.
- figure_gradcam: Grad-CAM at the last stage for the first test image of each of the first classes.

All but figure_lagging measure table 1's PreActResNet-18 runs (the same configs, so trained once). A
`measure_*` step loads each run's last checkpoint and stores what it measured (results/<artifact>/<scale>/
measurement-*.json); `render_*` draws it and writes the figure (PNG, PDF), the numbers behind it
(figures/[smoke/]<artifact>.json) and, for reliance and flatness, a table of mean ± std over seeds.
"""

import math
import statistics
import textwrap

import torch
import torch.nn.functional as F

from catchup_mix import analysis, data, evaluate, methods, provenance
from catchup_mix.checkpoint import write_json
from catchup_mix.config import Config

from . import report, runner

LAGGING_THRESHOLD = Config.lagging_threshold  # the trainer's default: one definition of "lagging"
TOP_FRACTION = 0.1


def _grid(points: int, span: float = 1.0) -> tuple[float, ...]:
    """`points` (odd) values from -span to span, the middle one exactly 0 (the checkpoint itself)."""
    half = points // 2
    return tuple(span * (i - half) / half for i in range(points))


# What each measurement looks at, per scale. Smoke: few images, few fractions and coarse landscapes, so each
# artifact takes a minute or two on 2 CPU cores. Paper: PyHessian-like iteration counts, Li et al.-like
# grids (their scripts use 51 x 51 over the whole training set) on a 5,000-image training subset.
SETUP = {
    "smoke": dict(reliance_fractions=(0.0, 0.25, 0.5), landscape_images=100, landscape_batch=100,
                  alphas_1d=_grid(9), grid_2d=_grid(5), hessian_iters=10, trace_samples=5, gradcam_images=5),
    "paper": dict(reliance_fractions=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5), landscape_images=5000, landscape_batch=500,
                  alphas_1d=_grid(41), grid_2d=_grid(21), hessian_iters=50, trace_samples=50, gradcam_images=8),
}
# figure_lagging's runs: the probe on this many fixed test images (at most 2% of an epoch, see README).
PROBE_IMAGES = {"smoke": 25, "paper": 500}
# ---------------------------------------------------------------------------------------------------
# Shared pieces


def _models(settings, results):
    """(run, LoadedRun) for each run: its last checkpoint in eval mode (trained again if only its result
    is here)."""
    for run, _ in results:
        path = runner.checkpoint(run, settings.out)
        yield run, evaluate.load_run(path, data_root=run.config.get("data_root"))


def _record(run, loaded, **values) -> dict:
    """One run's measurement, with how its checkpoint was made: a run retrained because only its result was
    here says so (runner.checkpoint prints it; on a GPU the retrained model is not bitwise the table's)."""
    made = {key: loaded.provenance.get(key) for key in ("commit", "dirty", "time_utc", "host", "device")}
    return {"method": run.labels["method"], "seed": run.seed, "key": run.key, "epoch": loaded.epoch,
            "checkpoint": made, **values}


def _measurement(settings, records: list, loaded, **extra) -> dict:
    return {"setup": SETUP[settings.scale], "runs": records, **extra,
            "provenance": provenance.collect(loaded.device)}


def _by_method(records: list) -> dict[str, list]:
    """method -> its records (one per seed), in registry order."""
    return {m: [r for r in records if r["method"] == m] for m in methods.available()
            if any(r["method"] == m for r in records)}


def _mean_std(rows: list[list[float]]) -> tuple[list[float], list[float]]:
    """Per position, mean and sample std over the rows (seeds); std 0 for one seed."""
    columns = list(zip(*rows, strict=True))
    return ([statistics.mean(c) for c in columns],
            [statistics.stdev(c) if len(c) > 1 else 0.0 for c in columns])


def _hook_name(k) -> str:
    return "stem" if int(k) == 1 else f"stage {int(k) - 1}"


def _scope(settings, config: dict) -> str:
    """What was trained: scale, network, data, protocol; for every figure title and table."""
    model = report.MODEL_TITLES.get(config["model"], config["model"])
    if settings.scale == "smoke":
        return (f"smoke scale, not paper numbers: {model} at width {config['width']} on {report.data_title(config)} "
                f"({config['num_classes']} classes), {config['epochs']} epochs")
    dataset = report.DATASET_TITLES.get(config["dataset"], config["dataset"])
    return f"paper scale: {model} on {dataset}, {config['epochs']} epochs"


def _suptitle(fig, settings, what: str, config: dict, seeds) -> None:
    seeds = sorted(set(seeds))
    text = f"{what}\n{_scope(settings, config)}; seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
    width = int(fig.get_figwidth() * 11)  # about 11 characters of 10 pt text per inch
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in text.split("\n")), fontsize=10)


def _colours(names) -> dict:
    import matplotlib.pyplot as plt

    return {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(names)}


def _save_numbers(settings, artifact: str, numbers: dict) -> list:
    path = report.output_path(settings, "figures", artifact, ".json")
    write_json(path, numbers)
    return [path]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _notes(settings, results, cells: str, *lines: str) -> list[str]:
    return report.provenance_notes(settings, results, cells=cells) + list(lines)


# ---------------------------------------------------------------------------------------------------
# figure_filters: how unequal the channels are, per layer


def measure_filters(settings, results) -> dict:
    records = []
    for run, loaded in _models(settings, results):
        norms = analysis.channel_norms(loaded.model, loaded.test_loader())
        statistics_ = analysis.filter_statistics(norms, LAGGING_THRESHOLD, TOP_FRACTION)
        records.append(_record(run, loaded, norms={str(k): v.tolist() for k, v in norms.items()},
                               **{name: {str(k): v for k, v in values.items()} for name, values in statistics_.items()}))
    return _measurement(settings, records, loaded, lagging_threshold=LAGGING_THRESHOLD, top_fraction=TOP_FRACTION)


FILTER_STATISTICS = (("gini", "Gini coefficient of the channel norms", 1, 3),
                     ("top_share", "share of the top 10% channels (%)", 100, 1),
                     ("lagging", "lagging channels (%)", 100, 1))


def render_filters(settings, results, measurement):
    if measurement is None:
        return []
    plt = _pyplot()
    groups = _by_method(measurement["runs"])
    hook_points = list(measurement["runs"][0]["norms"])
    colours = _colours(groups)
    threshold = measurement["lagging_threshold"]
    numbers = {"lagging_threshold": threshold, "top_fraction": measurement["top_fraction"], "methods": {}}

    fig = plt.figure(figsize=(16, 7.6))
    grid = fig.add_gridspec(2, 3 * len(hook_points))
    for i, k in enumerate(hook_points):
        ax = fig.add_subplot(grid[0, 3 * i:3 * i + 3])
        for method, records in groups.items():
            # each channel's norm over its layer's mean, strongest first; mean over seeds at each rank
            curves = [sorted((torch.tensor(r["norms"][k]) / torch.tensor(r["norms"][k]).mean()).tolist(), reverse=True)
                      for r in records]
            mean, _ = _mean_std(curves)
            ranks = [100 * (j + 0.5) / len(mean) for j in range(len(mean))]
            ax.plot(ranks, mean, color=colours[method], lw=1.2, label=method)
            numbers["methods"].setdefault(method, {}).setdefault("sorted_relative_norm", {})[k] = mean
        ax.axhline(threshold, color="grey", ls="--", lw=0.8, label=f"lagging: < {threshold:g} x mean")
        ax.set_yscale("log")
        ax.set_title(f"k={k}: {_hook_name(k)}, {len(records[0]['norms'][k])} channels", fontsize=9)
        ax.set_xlabel("channel rank (% of channels, strongest first)", fontsize=8)
        if i == 0:
            ax.set_ylabel("channel norm / layer mean (log)", fontsize=8)
        ax.grid(alpha=0.3)
    width = len(hook_points)
    for i, (name, label, scale, _) in enumerate(FILTER_STATISTICS):
        ax = fig.add_subplot(grid[1, width * i:width * (i + 1)])
        for method, records in groups.items():
            mean, std = _mean_std([[scale * r[name][k] for k in hook_points] for r in records])
            ax.errorbar(range(len(hook_points)), mean, yerr=std, color=colours[method], marker="o", ms=4, lw=1.2,
                        capsize=3, label=method)
            numbers["methods"][method][name] = {"mean": dict(zip(hook_points, mean, strict=True)),
                                                "std": dict(zip(hook_points, std, strict=True))}
        ax.set_xticks(range(len(hook_points)), [f"k={k}\n{_hook_name(k)}" for k in hook_points], fontsize=8)
        ax.set_xlabel("hook point", fontsize=8)
        ax.set_ylabel(label, fontsize=8)
        if name == "lagging":  # often 0 everywhere: 0 near the bottom, not mid-axis, lines visible
            top = max(ax.get_ylim()[1], 5.0)
            ax.set_ylim(-0.03 * top, top)
            report.say_if_all_zero(ax, [r[name][k] for records in groups.values() for r in records for k in hook_points],
                                   f"no channel under {threshold:g} x its layer's mean\nin any run, at any hook point")
        ax.grid(alpha=0.3)
    seeds = [r["seed"] for r in measurement["runs"]]
    _suptitle(fig, settings, "Channel norms per layer (mean l2 norm of each channel's map over the test set; "
              "top: sorted, bottom: their inequality; error bars: std over seeds)", results[0][0].config, seeds)
    numbers["provenance"] = measurement["provenance"]

    sections = []
    for name, label, scale, digits in FILTER_STATISTICS:
        rows = [[method, *[report.mean_std([scale * r[name][k] for r in records], digits) for k in hook_points],
                 str(len(records))] for method, records in groups.items()]
        sections.append((label[0].upper() + label[1:], rows))
    table = report.Table(
        f"Channel-norm statistics per hook point, {_scope(settings, results[0][0].config)}",
        _notes(settings, results, "Cells: mean ± sample std over seeds; n = seeds.",
               "Channel norm: the l2 norm of a channel's map over H x W, averaged over the test set; "
               f"last-epoch checkpoint, eval mode. Gini: population Gini coefficient over a layer's channels "
               f"(0 = all equal). Top share: the norm share of the strongest {100 * TOP_FRACTION:g}% of the channels. "
               f"Lagging: channels whose norm is under {threshold:g} x the layer's mean (catchup_mix.analysis).",
               f"Command: python -m reproduce figure_filters --scale {settings.scale}"),
        ["Method", *[f"k={k} ({_hook_name(k)})" for k in hook_points], "n"], sections)
    return (report.write_table(settings, "figure_filters", table) + _save_numbers(settings, "figure_filters", numbers)
            + report.save_figure(settings, "figure_filters", fig, dpi=130, legend_from=fig.axes[0]))


# ---------------------------------------------------------------------------------------------------
# figure_lagging: the probe during training


def render_lagging(settings, results, measurement):
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    done = [(run, result) for run, result in results if result is not None]
    if not done:
        return []
    records = [{"method": run.labels["method"], "seed": run.seed, "history": result["history"]}
               for run, result in done]
    groups = _by_method(records)
    hook_points = list(done[0][1]["history"][0]["filter_lagging"])
    colours = _colours(groups)
    config = done[0][0].config
    numbers = {"probe_images": config["filter_probe"], "lagging_threshold": config.get("lagging_threshold",
                                                                                        LAGGING_THRESHOLD),
               "methods": {}}
    rows = (("filter_lagging", "lagging channels (%)", 100), ("filter_gini", "Gini of the channel norms", 1),
            ("filter_top_share", "share of the top 10% channels (%)", 100))
    fig, axes = plt.subplots(len(rows), len(hook_points), figsize=(3.3 * len(hook_points), 9.0), squeeze=False)
    for row, (key, label, scale) in zip(axes, rows, strict=True):
        for ax, k in zip(row, hook_points, strict=True):
            for method, group in groups.items():
                epochs = [line["epoch"] for line in group[0]["history"]]
                mean, std = _mean_std([[scale * line[key][k] for line in r["history"]] for r in group])
                ax.plot(epochs, mean, color=colours[method], lw=1.2, label=method)
                low, high = [m - s for m, s in zip(mean, std, strict=True)], [m + s for m, s in zip(mean, std, strict=True)]
                ax.fill_between(epochs, low, high, color=colours[method], alpha=0.15, lw=0)
                entry = numbers["methods"].setdefault(method, {}).setdefault(key, {})
                entry[k] = {"epochs": epochs, "mean": mean, "std": std}
            ax.set_title(f"k={k}: {_hook_name(k)}", fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if key == "filter_lagging":  # often 0 throughout: 0 near the bottom, not mid-axis, lines visible
                top = max(ax.get_ylim()[1], 5.0)
                ax.set_ylim(-0.03 * top, top)
                report.say_if_all_zero(ax, [line[key][k] for r in records for line in r["history"]],
                                       f"no channel under {numbers['lagging_threshold']:g} x\nthe layer mean at any epoch")
        row[0].set_ylabel(label, fontsize=8)
    # the probe's own cost, logged by every probed epoch, against the epoch's training time (test pass excluded)
    costs = [line["filter_probe_s"] / line["epoch_time_s"] for _, result in done for line in result["history"]]
    _suptitle(fig, settings, f"Lagging channels over training: channel-norm statistics of {numbers['probe_images']} "
              f"fixed test images after each epoch (lagging: norm under {numbers['lagging_threshold']:g} x the layer "
              f"mean; band: std over seeds; probe cost: median {100 * statistics.median(costs):.1f}% of an epoch's "
              "training time)", config, [run.seed for run, _ in done])
    numbers["probe_cost_fraction_of_epoch"] = {"median": statistics.median(costs), "max": max(costs)}
    numbers["config"] = config
    numbers["commits"] = sorted({result["summary"]["provenance"]["commit"] for _, result in done})
    return _save_numbers(settings, "figure_lagging", numbers) + report.save_figure(settings, "figure_lagging", fig,
                                                                                   dpi=130, legend_from=axes[0, 0])


# ---------------------------------------------------------------------------------------------------
# figure_reliance: accuracy with the strongest channels zeroed


def measure_reliance(settings, results) -> dict:
    fractions = SETUP[settings.scale]["reliance_fractions"]
    records = []
    for run, loaded in _models(settings, results):
        batches = list(loaded.test_loader())
        norms = analysis.channel_norms(loaded.model, batches)
        curves = {str(k): analysis.reliance(loaded.model, batches, k, fractions, seed=0, norms=norms[k])
                  for k in norms}
        records.append(_record(run, loaded, reliance=curves))
    return _measurement(settings, records, loaded)


MODES = (("top", "strongest p% zeroed"), ("lowest", "weakest p% zeroed (control)"),
         ("random", "random p% zeroed (control)"))


COLUMN_NAMES = {"top": "strongest", "lowest": "weakest", "random": "random"}


def render_reliance(settings, results, measurement):
    if measurement is None:
        return []
    plt = _pyplot()
    groups = _by_method(measurement["runs"])
    hook_points = list(measurement["runs"][0]["reliance"])
    colours = _colours(groups)
    # one row per choice of channels, one column per layer, a thin last row for the legend
    fig = plt.figure(figsize=(3.2 * len(hook_points), 8.6))
    grid = fig.add_gridspec(len(MODES) + 1, len(hook_points), height_ratios=[1] * len(MODES) + [0.12])
    numbers = {"methods": {}}
    first_row = []
    for i, (mode, label) in enumerate(MODES):
        # one y scale per layer: the three choices of channels compare down a column
        row = [fig.add_subplot(grid[i, j], sharey=first_row[j] if first_row else None) for j in range(len(hook_points))]
        first_row = first_row or row
        for ax, k in zip(row, hook_points, strict=True):
            for method, records in groups.items():
                fractions = records[0]["reliance"][k]["fractions"]
                mean, std = _mean_std([r["reliance"][k][mode] for r in records])
                ax.errorbar([100 * p for p in fractions], mean, yerr=std, color=colours[method], lw=1.2, marker=".",
                            capsize=2, label=method)
                numbers["methods"].setdefault(method, {}).setdefault(k, {"fractions": fractions})[mode] = {
                    "mean": mean, "std": std}
            if mode == MODES[0][0]:
                ax.set_title(f"k={k}: {_hook_name(k)}", fontsize=9)
            ax.set_xlabel("channels zeroed at this layer (%)", fontsize=8)
            ax.grid(alpha=0.3)
        row[0].set_ylabel(f"{label}:\ntest top-1 (%)", fontsize=8)
    legend = fig.add_subplot(grid[-1, :])
    legend.axis("off")
    legend.legend(*fig.axes[0].get_legend_handles_labels(), loc="center", ncol=len(groups), fontsize=8, frameon=False)
    config = results[0][0].config
    _suptitle(fig, settings, "Reliance on the strongest channels: test top-1 with p% of one layer's channels "
              "(ranked by mean norm on the test set) set to zero; error bars: std over seeds", config,
              [r["seed"] for r in measurement["runs"]])
    numbers["provenance"] = measurement["provenance"]

    # columns: the strongest p% zeroed at every measured p, then both controls at the largest p
    fractions = measurement["runs"][0]["reliance"][hook_points[0]]["fractions"]
    columns = [("top", i) for i in range(len(fractions))] + [("lowest", -1), ("random", -1)]
    sections = []
    for k in hook_points:
        rows = [[method, *[report.mean_std([r["reliance"][k][mode][i] for r in records]) for mode, i in columns],
                 str(len(records))] for method, records in groups.items()]
        sections.append((f"k={k}: {_hook_name(k)}", rows))
    table = report.Table(
        f"Reliance on the strongest channels: test top-1 (%) with channels zeroed, {_scope(settings, config)}",
        _notes(settings, results, "Cells: mean ± sample std over seeds of the test top-1 (%); n = seeds.",
               "At each hook point, round(p C) of its C channels are set to zero through the feature hook: the "
               "strongest by mean l2 norm over the test set, the weakest, or random ones (the mean over 5 seeded "
               "draws; the figure's JSON keeps each draw). Last-epoch checkpoint, eval mode, fp32 "
               "(catchup_mix.analysis.reliance). A network that leans on a few channels loses more when its strongest "
               "ones go. Zeroing a channel before a BatchNorm does not remove it: the BatchNorm's shift still passes "
               "on, so \"zeroed\" means \"set to what an all-zero map gives\".",
               f"Command: python -m reproduce figure_reliance --scale {settings.scale}"),
        ["Method", *[f"{COLUMN_NAMES[mode]} {100 * fractions[i]:g}%" if fractions[i] else "none zeroed"
                     for mode, i in columns], "n"], sections)
    return (report.write_table(settings, "figure_reliance", table) + _save_numbers(settings, "figure_reliance", numbers)
            + report.save_figure(settings, "figure_reliance", fig, dpi=130))


# ---------------------------------------------------------------------------------------------------
# figure_landscape: flatness


def measure_landscape(settings, results) -> dict:
    setup = SETUP[settings.scale]
    records = []
    for run, loaded in _models(settings, results):
        images, labels = analysis.fixed_batch(loaded.dataset, "train", setup["landscape_images"], loaded.device)
        batches = list(zip(images.split(setup["landscape_batch"]), labels.split(setup["landscape_batch"]),
                           strict=True))
        model, loss = loaded.model, F.cross_entropy
        records.append(_record(
            run, loaded, images=len(images),
            landscape_1d=analysis.loss_landscape_1d(model, loss, batches, setup["alphas_1d"], seed=0),
            landscape_2d=analysis.loss_landscape_2d(model, loss, batches, setup["grid_2d"], seed=0),
            **_hessian(model, loss, batches, setup), subset=data.describe_subset(
                loaded.dataset.train.labels, data.balanced_indices(loaded.dataset.train.labels,
                                                                   setup["landscape_images"]), 0)))
    return _measurement(settings, records, loaded)


def _hessian(model, loss, batches, setup) -> dict:
    """The top eigenvalue and the trace, each with how far to trust it (analysis's return_info)."""
    eigenvalue, eigen_info = analysis.hessian_top_eigenvalue(model, loss, batches, setup["hessian_iters"], seed=0,
                                                             return_info=True)
    trace, trace_info = analysis.hessian_trace(model, loss, batches, setup["trace_samples"], seed=0, return_info=True)
    return {"top_eigenvalue": eigenvalue, "eigenvalue_info": eigen_info, "trace": trace, "trace_info": trace_info}


def _eigenvalue_cell(records) -> str:
    """Mean ± std of the eigenvalue, the products used and the worst residual; * where one hit the cap unconverged."""
    cell = report.mean_std([r["top_eigenvalue"] for r in records])
    infos = [r.get("eigenvalue_info") for r in records]
    if not all(infos):
        return cell  # measured before the estimates carried their error
    capped = "*" if not all(info["converged"] for info in infos) else ""
    return (f"{cell}{capped} ({max(info['iterations'] for info in infos)} products, residual "
            f"{max(info['residual'] for info in infos):.2g})")


def _trace_cell(records) -> str:
    cell = report.mean_std([r["trace"] for r in records])
    errors = [r["trace_info"]["stderr"] for r in records if r.get("trace_info") and r["trace_info"]["stderr"]]
    return f"{cell} (s.e. {max(errors):.2g})" if errors else cell


def render_landscape(settings, results, measurement):
    if measurement is None:
        return []
    plt = _pyplot()
    setup = measurement["setup"]
    groups = _by_method(measurement["runs"])
    colours = _colours(groups)
    config = results[0][0].config
    images = measurement["runs"][0]["images"]
    numbers = {"setup": setup, "methods": {}}

    # top: the 1-D curves, the eigenvalues, the traces; below: one 2-D panel per method, at most 5 to a row,
    # and a colour bar
    n = len(groups)
    per_row = max(min(n, 5), 4)
    rows_2d = math.ceil(n / per_row)
    fig = plt.figure(figsize=(3.4 * per_row + 1, 4.4 * (1 + rows_2d)))
    grid = fig.add_gridspec(1 + rows_2d, 4 * per_row + 1, width_ratios=[1] * 4 * per_row + [0.3])
    ax = fig.add_subplot(grid[0, :2 * per_row - 1])
    for method, records in groups.items():
        mean, std = _mean_std([r["landscape_1d"] for r in records])
        ax.plot(setup["alphas_1d"], mean, color=colours[method], lw=1.2, marker=".", label=method)
        numbers["methods"][method] = {"landscape_1d": {"alphas": setup["alphas_1d"], "mean": mean, "std": std}}
    ax.set_xlabel("step along a filter-normalised random direction (alpha, x filter norm)", fontsize=8)
    ax.set_ylabel(f"training loss (cross-entropy, {images} clean images)", fontsize=8)
    ax.set_title("1-D landscape (alpha = 0: the checkpoint)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    for columns, (key, label) in ((slice(2 * per_row, 3 * per_row), ("top_eigenvalue", "top Hessian eigenvalue")),
                                  (slice(3 * per_row + 1, 4 * per_row + 1), ("trace", "Hessian trace (Hutchinson)"))):
        ax = fig.add_subplot(grid[0, columns])
        for i, (method, records) in enumerate(groups.items()):
            values = [r[key] for r in records]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            ax.bar(i, statistics.mean(values), yerr=std, color=colours[method], alpha=0.85, capsize=3)
            ax.scatter([i] * len(values), values, color="black", s=8, zorder=3)
            numbers["methods"][method][key] = {"values": values, "mean": statistics.mean(values), "std": std}
        ax.set_xticks(range(len(groups)), list(groups), rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(f"{label} (loss units)", fontsize=8)
        ax.set_title(f"{label}: lower magnitude = flatter", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    # 2-D: the first seed of each method, on shared contour levels so the panels compare
    surfaces = {m: torch.tensor(records[0]["landscape_2d"]) for m, records in groups.items()}
    low = min(float(s.min()) for s in surfaces.values())
    high = max(float(s.quantile(0.9)) for s in surfaces.values())
    # geometric levels: fine near the minimum, coarse up the walls (losses are positive)
    levels = torch.logspace(torch.tensor(low).log10(), torch.tensor(max(high, 1.01 * low)).log10(), 13).tolist()
    steps = setup["grid_2d"]
    for i, (method, surface) in enumerate(surfaces.items()):
        row, column = 1 + i // per_row, 4 * (i % per_row)
        ax = fig.add_subplot(grid[row, column:column + 4])
        filled = ax.contourf(steps, steps, surface.numpy(), levels=levels, cmap="viridis", extend="max")
        ax.contour(steps, steps, surface.numpy(), levels=levels, colors="white", linewidths=0.4)
        ax.plot(0, 0, marker="+", color="red", ms=8)
        ax.set_title(f"{method} (seed {groups[method][0]['seed']})", fontsize=9)
        ax.set_xlabel("alpha (direction 1)", fontsize=8)
        if i % per_row == 0:
            ax.set_ylabel("beta (direction 2)", fontsize=8)
        else:
            ax.tick_params(labelleft=False)
        ax.set_aspect("equal")
        ax.set_xticks([-0.5 * steps[-1], 0, 0.5 * steps[-1]])  # none at the edges, where neighbours meet
        ax.set_yticks([-0.5 * steps[-1], 0, 0.5 * steps[-1]])
        numbers["methods"][method]["landscape_2d"] = {"alphas": steps, "betas": steps, "loss": surface.tolist()}
    # the colour bar in the grid's narrow last column, beside the 2-D panels
    fig.colorbar(filled, cax=fig.add_subplot(grid[1:, -1]), label="training loss", format="%.2f")
    _suptitle(fig, settings, f"Flatness around the last-epoch checkpoint: filter-normalised loss landscapes (Li et "
              f"al. 2018; directions from seed 0, biases and BN parameters not moved; {len(steps)}x{len(steps)} grid) "
              f"and Hessian spectrum ({setup['hessian_iters']} power iterations at most, {setup['trace_samples']} "
              f"Hutchinson samples) on {images} fixed clean training images; the Hessian measures are not invariant to "
              "reparametrisation (Dinh et al. 2017), the filter-normalised landscapes are", config,
              [r["seed"] for r in measurement["runs"]])
    numbers["provenance"] = measurement["provenance"]

    rows = [[method, report.mean_std([r["landscape_1d"][len(setup["alphas_1d"]) // 2] for r in records], 3),
             _eigenvalue_cell(records), _trace_cell(records), str(len(records))] for method, records in groups.items()]
    table = report.Table(
        f"Flatness: training loss, top Hessian eigenvalue and Hessian trace, {_scope(settings, config)}",
        _notes(settings, results, "Cells: mean ± sample std over seeds; n = seeds.",
               f"On {images} fixed clean training images (evenly spaced indices, centre crop, no flip), "
               "cross-entropy with the hard labels, last-epoch checkpoint in eval mode, fp32, w.r.t. all trainable "
               f"parameters. Top eigenvalue: power iteration on Hessian-vector products ({setup['hessian_iters']} at "
               f"most, stop at a relative change under 1e-3, start from seed 0); in brackets the most products any "
               "seed used and the largest residual ||Hv - lambda v|| / |lambda| (0 for an exact eigenpair); * = a seed "
               f"hit the cap unconverged. Trace: Hutchinson's estimator, {setup['trace_samples']} Rademacher vectors "
               "(seed 0), with the largest standard error of a seed. Lower magnitude = flatter. Neither Hessian measure "
               "is invariant to reparametrisation (Dinh et al. 2017: rescaling a ReLU network's layers changes its "
               "Hessian, not its function); the filter-normalised landscapes are, by construction "
               "(catchup_mix.analysis; PyHessian's method).",
               f"Command: python -m reproduce figure_landscape --scale {settings.scale}"),
        ["Method", "Training loss", "Top eigenvalue", "Trace", "n"], [("", rows)])
    return (report.write_table(settings, "figure_landscape", table)
            + _save_numbers(settings, "figure_landscape", numbers)
            + report.save_figure(settings, "figure_landscape", fig, dpi=130))


# ---------------------------------------------------------------------------------------------------
# figure_gradcam: where each network looks


def measure_gradcam(settings, results) -> dict:
    first_seed = [(run, result) for run, result in results if run.seed == settings.seeds[0]]
    records = []
    for run, loaded in _models(settings, first_seed):
        dataset = loaded.dataset
        classes = range(min(SETUP[settings.scale]["gradcam_images"], dataset.num_classes))
        index = [int((dataset.test.labels == c).nonzero()[0]) for c in classes]  # first test image of each
        subset = data.ImageSplit(dataset.test.images[index], dataset.test.labels[index])
        loader = data.BatchLoader(subset, len(index), mean=dataset.mean, std=dataset.std, train=False,
                                  crop_size=dataset.crop_size, device=loaded.device)
        images, labels = next(iter(loader))
        with torch.no_grad():
            predicted = loaded.model(images).argmax(1)
        cams = analysis.grad_cam(loaded.model, images, labels)
        records.append(_record(run, loaded, cams=[[[round(v, 5) for v in row] for row in cam] for cam in cams.tolist()],
                               predicted=predicted.tolist()))
    mean = torch.tensor(dataset.mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(dataset.std, device=images.device).view(1, 3, 1, 1)
    pixels = torch.round((images * std + mean).clamp(0, 1), decimals=3).tolist()
    return _measurement(settings, records, loaded, test_index=index, labels=labels.tolist(), classes=dataset.classes,
                        pixels=pixels)


def render_gradcam(settings, results, measurement):
    if measurement is None:
        return []
    plt = _pyplot()
    groups = _by_method(measurement["runs"])
    classes, labels = measurement["classes"], measurement["labels"]
    images = torch.tensor(measurement["pixels"])
    size = images.shape[-1]
    fig, axes = plt.subplots(len(labels), len(groups) + 1, figsize=(1.9 * (len(groups) + 1), 2.0 * len(labels) + 1.2),
                             squeeze=False)
    numbers = {"test_index": measurement["test_index"], "labels": labels, "classes": classes, "methods": {}}
    for row, label in enumerate(labels):
        axes[row, 0].imshow(images[row].permute(1, 2, 0).numpy())
        axes[row, 0].set_title(f"test #{measurement['test_index'][row]}: {classes[label]}", fontsize=8)
        for column, (method, records) in enumerate(groups.items(), start=1):
            record = records[0]
            cam = torch.tensor(record["cams"][row])
            # upsampled for display only, each map scaled to its own maximum
            shown = F.interpolate(cam[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
            ax = axes[row, column]
            ax.imshow(images[row].permute(1, 2, 0).numpy())
            ax.imshow(shown.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=max(float(shown.max()), 1e-12))
            guess = record["predicted"][row]
            ax.set_title(f"{method}\npredicts {classes[guess]}", fontsize=7,
                         color="black" if guess == label else "red")
            numbers["methods"].setdefault(method, {"seed": record["seed"], "cams": record["cams"],
                                                   "predicted": record["predicted"]})
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    runs = measurement["runs"]
    cam_size = len(runs[0]["cams"][0])
    _suptitle(fig, settings, f"Grad-CAM at the last stage ({cam_size}x{cam_size} maps, upsampled; red title: wrong "
              "prediction) for the true class of the first test image of each class; each map scaled to its own "
              "maximum (blue 0, red max)", results[0][0].config, [r["seed"] for r in runs])
    numbers["provenance"] = measurement["provenance"]
    return _save_numbers(settings, "figure_gradcam", numbers) + report.save_figure(settings, "figure_gradcam", fig,
                                                                                   dpi=130)
