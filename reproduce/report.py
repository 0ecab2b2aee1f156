"""Tables (Markdown + LaTeX) and figures (PNG + PDF) from stored results, with their provenance.

Every table says how its numbers were obtained: scale, protocol, seeds, commit, hardware, and which
runs are still missing. Published numbers come from ONE reference file, `published.json`, that
names the source and protocol of each number; the Catch-up Mix paper's own cells stay "n/a" until
someone fills them from the paper.
"""

import json
import statistics
import textwrap
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from catchup_mix import methods

PUBLISHED_FILE = Path(__file__).with_name("published.json")

MODEL_TITLES = {
    "preactresnet18": "PreActResNet-18",
    "wrn16_8": "WRN16-8",
    "resnext29_4_24": "ResNeXt29-4-24",
    "torchvision_resnet18": "ResNet-18 (torchvision)",
    "torchvision_resnet50": "ResNet-50 (torchvision)",
}
DATASET_TITLES = {"cifar100": "CIFAR-100", "cifar10": "CIFAR-10", "tiny_imagenet": "Tiny-ImageNet",
                  "cub200": "CUB-200-2011", "stanford_cars": "Stanford Cars", "fgvc_aircraft": "FGVC-Aircraft",
                  "synthetic": "synthetic"}

SMOKE_WARNING = (
    "**Smoke scale, not paper numbers.** Small networks, few images, few epochs (the config below): this shows "
    "that the whole path works, not how the methods rank. Mixing methods regularise, and regularisation "
    "pays off over long schedules; on short ones it mostly slows fitting, so smoke tables can rank the "
    "methods differently from the paper. Read no verdict on the method here: this project's longer, "
    "multi-seed comparison on real data is `tables/evidence.md` (`python -m reproduce evidence --scale medium`)."
)


def data_title(config: dict) -> str:
    """The data a run used, as a reader knows it: the dataset's name, or the image folder's own name (a smoke
    run with --data-root reads any folder of class subfolders)."""
    if config["dataset"] == "imagefolder":
        return f"the images in {Path(config['data_root']).name}"
    return f"{DATASET_TITLES.get(config['dataset'], config['dataset'])} data"


def fgvc_title(section: str) -> str:
    dataset, model = section.split("/")
    return f"{DATASET_TITLES.get(dataset, dataset)}, {MODEL_TITLES.get(model, model)}"


@dataclass
class Table:
    title: str
    notes: list[str]
    columns: list[str]
    sections: list[tuple[str, list[list[str]]]]  # (heading, rows of cells)
    footnotes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# Numbers


def mean_std(values: list[float], digits: int = 2) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def accuracy_cells(summaries: list[dict]) -> list[str]:
    """Last, best and median-of-last-10 top-1 as mean ± std over seeds, and n."""
    return [mean_std([s[key] for s in summaries]) for key in ("last_top1", "best_top1", "median10_top1")] + [
        str(len(summaries))
    ]


def load_published() -> dict:
    return json.loads(PUBLISHED_FILE.read_text())


class Published:
    """Published numbers of one artifact, with footnotes numbered in order of first use."""

    def __init__(self, artifact: str):
        reference = load_published()
        self.sources = reference["sources"]
        self.entries = [entry for entry in reference["numbers"] if entry["artifact"] == artifact]
        self.footnotes: list[str] = []

    def methods(self, section: str) -> list[str]:
        return list(dict.fromkeys(e["method"] for e in self.entries if e["section"] == section))

    def paper_cell(self, section: str, method: str) -> str:
        values = [e for e in self.entries if (e["section"], e["method"], e["source"]) ==
                  (section, method, "catchup_mix_paper") and e["top1"] is not None]
        return " / ".join(self._cite(e) for e in values) or "n/a"

    def other_cell(self, section: str, method: str) -> str:
        values = [e for e in self.entries if (e["section"], e["method"]) == (section, method)
                  and e["source"] != "catchup_mix_paper" and e["top1"] is not None]
        return "; ".join(self._cite(e) for e in values) or ""

    def _cite(self, entry: dict) -> str:
        note = f"{self.sources[entry['source']]['cite']}: {entry['protocol']}"
        if note not in self.footnotes:
            self.footnotes.append(note)
        return f"{entry['top1']:.2f} [{self.footnotes.index(note) + 1}]"


# ---------------------------------------------------------------------------------------------------
# Provenance


def scaled_title(settings, title: str, runs_and_results: list) -> str:
    """At smoke scale the title says which data was really used: the paper's dataset was not."""
    if settings.scale != "smoke" or not runs_and_results:
        return title
    config = runs_and_results[0][0].config
    return f"{title} [smoke scale on {data_title(config)}, {config['num_classes']} classes: not paper numbers]"


def chance_level(runs_and_results: list) -> float | None:
    classes = runs_and_results[0][0].config.get("num_classes") if runs_and_results else None
    return 100.0 / classes if classes else None


ACCURACY_CELLS = ("Cells: mean ± sample std over seeds of the last-epoch, best-epoch and median-of-last-10-epochs "
                  "test top-1 (%); n = seeds done; — = not run yet.")


def provenance_notes(settings, runs_and_results: list, cells: str = ACCURACY_CELLS) -> list[str]:
    done = [result for _, result in runs_and_results if result is not None]
    notes = [SMOKE_WARNING] if settings.scale == "smoke" else []
    total = len(runs_and_results)
    planned = sorted({run.seed for run, _ in runs_and_results})
    seeds = sorted({run.seed for run, result in runs_and_results if result is not None}) or planned
    # an unfinished artifact names the seeds its numbers come from, and those still to run
    planned_note = f" (planned: {', '.join(map(str, planned))})" if seeds != planned else ""
    notes.append(f"Scale: {settings.scale}. Runs done: {len(done)} of {total}; seeds {', '.join(map(str, seeds))}"
                 f"{planned_note}. " + cells)
    if runs_and_results:
        run = runs_and_results[0][0]
        shared = {k: v for k, v in run.config.items() if k not in ("model", "width", "method", "method_options",
                                                                   "data_root", "log_every", "download")}
        notes.append("Config shared by the runs: " + ", ".join(f"{k}={v}" for k, v in shared.items()) +
                     f"; per run in results/{run.artifact}/{settings.scale}/*.json.")
        options = {run.labels["method"]: run.config["method_options"] for run, _ in runs_and_results
                   if "method" in run.labels and run.config.get("method_options")}
        if options:
            why = " (cheaper smoke settings, SMOKE_METHOD_OPTIONS in reproduce/artifacts.py)" if \
                settings.scale == "smoke" else ""
            notes.append(f"Method options other than the method's defaults{why}: " + "; ".join(
                f"{method} " + ", ".join(f"{k}={v}" for k, v in values.items()) for method, values in options.items())
                + ".")
    if done:
        commits = sorted({r["summary"]["provenance"]["commit"][:10] + ("+dirty" if r["summary"]["provenance"]["dirty"]
                                                                       else "") for r in done})
        devices = sorted({r["summary"]["provenance"]["device"] for r in done})
        notes.append(f"Code: commit {', '.join(commits)}. Hardware: {'; '.join(devices)}.")
    return notes


# ---------------------------------------------------------------------------------------------------
# Tables of the artifacts


def method_table(settings, artifact: str, title: str, runs_and_results: list, section_title) -> list[Path]:
    """One section per network (or dataset), one row per registered method, then published-only rows."""
    grouped = defaultdict(list)
    sections = list(dict.fromkeys(run.labels["section"] for run, _ in runs_and_results))
    for run, result in runs_and_results:
        if result is not None:
            grouped[run.labels["section"], run.labels["method"]].append(result["summary"])
    published = Published(artifact)
    table_sections, chart = [], {}
    for section in sections:
        rows = []
        for method in methods.available():
            summaries = grouped[section, method]
            rows.append([method, *accuracy_cells(summaries), published.paper_cell(section, method),
                         published.other_cell(section, method)])
            chart[section, method] = [s["last_top1"] for s in summaries]
        for method in published.methods(section):
            if method not in methods.available():  # published only: not implemented here
                rows.append([method, "—", "—", "—", "0", published.paper_cell(section, method),
                             published.other_cell(section, method)])
        table_sections.append((section_title(section) or section, rows))
    title = scaled_title(settings, title, runs_and_results)
    notes = provenance_notes(settings, runs_and_results) + [
        "Rows with n = 0 are methods not implemented here, listed for their published numbers."]
    table = Table(title, notes, ["Method", "Last", "Best", "Median-10", "n", "Catch-up Mix paper",
                                 "Published elsewhere"], table_sections, published.footnotes)
    return write_table(settings, artifact, table) + bar_chart(
        settings, artifact, title, sections, section_title, chart, chance=chance_level(runs_and_results))


def variant_table(settings, artifact: str, title: str, runs_and_results: list) -> list[Path]:
    grouped = defaultdict(list)
    variants = list(dict.fromkeys(run.labels["variant"] for run, _ in runs_and_results))
    for run, result in runs_and_results:
        if result is not None:
            grouped[run.labels["variant"]].append(result["summary"])
    published = Published(artifact)
    rows = [[variant, *accuracy_cells(grouped[variant]), published.paper_cell("preactresnet18", variant)]
            for variant in variants]
    title = scaled_title(settings, title, runs_and_results)
    table = Table(title, provenance_notes(settings, runs_and_results),
                  ["Variant", "Last", "Best", "Median-10", "n", "Catch-up Mix paper"], [("", rows)],
                  published.footnotes)
    chart = {("", variant): [s["last_top1"] for s in grouped[variant]] for variant in variants}
    return write_table(settings, artifact, table) + bar_chart(settings, artifact, title, [""], lambda s: "", chart,
                                                              horizontal=True, chance=chance_level(runs_and_results))


def overhead_table(settings, artifact: str, measurement: dict | None) -> list[Path]:
    if measurement is None:
        rows, notes = [], ["Not measured yet."]
    else:
        setup, info = measurement["setup"], measurement["provenance"]
        rows = [[row["method"], f"{1000 * row['median_s']:.1f}", f"{row['epoch_s']:.1f}", f"{row['ratio']:.3f}",
                 str(row["steps"])] for row in measurement["rows"]]
        notes = [f"Scale: {settings.scale}. {setup['model_name']} (width {setup['width'] or 'as in the paper'}), "
                 f"batch {setup['batch_size']}, 32x32, on {info['device']}; median over {setup['rounds']} interleaved "
                 f"rounds of one training step (forward, backward, SGD) per method, after 2 warm-up rounds; time per "
                 f"epoch = median step x {setup['steps_per_epoch']} steps. Commit {info['commit'][:10]}"
                 f"{'+dirty' if info['dirty'] else ''}. Command: python -m reproduce overhead --scale {settings.scale}"]
        if settings.scale == "smoke":
            notes.insert(0, "**Smoke scale, not paper numbers**: a narrow network on the CPU.")
    table = Table("Training cost of each method relative to vanilla", notes,
                  ["Method", "Step (ms)", "Epoch (s)", "Ratio to vanilla", "Steps timed"], [("", rows)])
    return write_table(settings, artifact, table)


# ---------------------------------------------------------------------------------------------------
# Writers


def output_path(settings, kind: str, artifact: str, suffix: str) -> Path:
    # medium and paper at the top; any other scale in a folder of its own (tables/smoke/, tables/medium_wd/)
    folder = settings.out / kind / ("" if settings.scale in ("medium", "paper") else settings.scale)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{artifact}{suffix}"


def write_table(settings, artifact: str, table: Table, *more: Table) -> list[Path]:
    """tables/[smoke/]<artifact>.md and .tex: `table`, then any further tables of the artifact below it."""
    from catchup_mix.checkpoint import atomic_write

    paths = [output_path(settings, "tables", artifact, ".md"), output_path(settings, "tables", artifact, ".tex")]
    for path, render in zip(paths, (to_markdown, to_latex), strict=True):
        text = "\n".join(render(each) for each in (table, *more))
        atomic_write(path, lambda file, text=text: file.write(text.encode()))
    return paths


def to_markdown(table: Table) -> str:
    lines = [f"# {table.title}", ""]
    lines += [f"{note}\n" for note in table.notes]
    for heading, rows in table.sections:
        if heading:
            lines += [f"## {heading}", ""]
        lines.append("| " + " | ".join(table.columns) + " |")
        lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(table.columns))) + "|")
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
        lines.append("")
    if table.footnotes:
        lines += ["Sources of the published numbers:", ""]
        lines += [f"[{i}] {note}  " for i, note in enumerate(table.footnotes, 1)]
    return "\n".join(lines).rstrip() + "\n"


def to_latex(table: Table) -> str:
    def tex(text: str) -> str:
        for a, b in [("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                     ("±", r"$\pm$"), ("—", "--"), ("**", "")]:
            text = text.replace(a, b)
        return text

    lines = [f"% {table.title}"] + [f"% {note}" for note in table.notes]
    lines += [r"\begin{table}[t]", r"\centering", r"\caption{" + tex(table.title) + "}",
              r"\begin{tabular}{l" + "r" * (len(table.columns) - 1) + "}", r"\toprule",
              " & ".join(tex(c) for c in table.columns) + r" \\"]
    for heading, rows in table.sections:
        lines.append(r"\midrule")
        if heading:
            lines.append(r"\multicolumn{" + str(len(table.columns)) + "}{l}{" + tex(heading) + r"} \\")
        lines += [" & ".join(tex(cell) for cell in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if table.footnotes:
        lines.append(r"\\[2pt]{\footnotesize " + "; ".join(f"[{i}] {tex(n)}" for i, n in
                                                          enumerate(table.footnotes, 1)) + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def bar_chart(settings, artifact, title, sections, section_title, values: dict, horizontal=False,
              chance: float | None = None) -> list[Path]:
    """Last-epoch top-1 per method (mean, with the sample std as error bar and each seed as a dot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if horizontal:
        labels = [label for _, label in values]
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(labels) + 1.5))
        axes = [ax]
    else:
        labels = list(methods.available())
        fig, axes = plt.subplots(1, len(sections), figsize=(3.6 * len(sections) + 0.6, 3.6), squeeze=False)
        axes = axes[0]
    for ax, section in zip(axes, sections, strict=True):
        for position, label in enumerate(labels):
            seeds = values.get((section, label), [])
            if not seeds:
                continue
            mean = statistics.mean(seeds)
            std = statistics.stdev(seeds) if len(seeds) > 1 else 0.0
            bar = ax.barh if horizontal else ax.bar
            bar(position, mean, **({"xerr": std} if horizontal else {"yerr": std}), color="#4c72b0",
                alpha=0.8, capsize=3)
            dots = ([(s, position) for s in seeds] if horizontal else [(position, s) for s in seeds])
            ax.scatter(*zip(*dots, strict=True), color="black", s=8, zorder=3)
        if chance is not None:
            (ax.axvline if horizontal else ax.axhline)(chance, color="grey", ls="--", lw=0.8, label="chance")
            ax.legend(fontsize=7, loc="lower right")
        ticks = range(len(labels))
        if horizontal:
            ax.set_yticks(ticks, labels, fontsize=8)
            ax.invert_yaxis()
            ax.set_xlabel("test top-1 (%), last epoch")
        else:
            ax.set_xticks(ticks, labels, rotation=35, ha="right", fontsize=8)
            ax.set_ylabel("test top-1 (%), last epoch")
            ax.set_title(section_title(section) or section, fontsize=9)
        ax.grid(axis="x" if horizontal else "y", alpha=0.3)
    fig.suptitle(wrap_title(title, fig), fontsize=10)
    return save_figure(settings, artifact, fig, dpi=150)


def say_if_all_zero(ax, values, why: str) -> None:
    """An empty-looking panel says why it is empty, rather than looking like a drawing failure."""
    if values and not any(values):
        ax.text(0.5, 0.5, why, transform=ax.transAxes, ha="center", va="center", fontsize=7, color="dimgrey")


def wrap_title(title: str, fig) -> str:
    """A figure title broken into lines that fit the figure's width (a "[...]" remark on its own line)."""
    width_chars = int(fig.get_figwidth() * 11)  # about 11 characters of 10 pt text per inch
    return "\n".join(textwrap.fill(part, width_chars) for part in title.replace(" [", "\n[").split("\n"))


def save_figure(settings, artifact: str, fig, dpi: int, legend_from=None) -> list[Path]:
    """Write `fig` as figures/[smoke/]<artifact>.png and .pdf, then close it.

    legend_from: an axes whose labelled lines get one legend for the whole figure, in a band of its own below
    the panels, where it hides no data (many methods make a legend too big for any panel)."""
    import matplotlib.pyplot as plt

    if legend_from is None:
        fig.tight_layout()
    else:
        handles, labels = legend_from.get_legend_handles_labels()
        columns = min(len(labels), 6)
        rows = -(-len(labels) // columns)
        fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=7, frameon=False)
        fig.tight_layout(rect=(0, (0.22 * rows + 0.1) / fig.get_figheight(), 1, 1))  # ~0.22 inch per 7 pt row
    paths = [output_path(settings, "figures", artifact, ext) for ext in (".png", ".pdf")]
    for path in paths:  # no creation date in the PDF: regenerating unchanged results changes no file
        fig.savefig(path, dpi=dpi, metadata={"CreationDate": None} if path.suffix == ".pdf" else None)
    plt.close(fig)
    return paths
