"""Training curves of one or more runs, from their metrics.jsonl: `python -m catchup_mix curves RUN...`.

TensorBoard shows the same numbers live (`tensorboard --logdir runs/`); this writes a figure to keep.
"""

import json
from pathlib import Path

PANELS = (("train_loss", "training loss"), ("test_top1", "test top-1 (%)"), ("test_nll", "test NLL (nats)"))


def read_run(run_dir: Path) -> tuple[str, list[dict]]:
    """(a label from the run's config, its rows) of a run folder."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{run_dir} holds no metrics.jsonl: pass run folders (a run's output_dir)")
    rows = [_parse(metrics, number, line) for number, line in enumerate(metrics.read_text().splitlines(), 1)
            if line.strip()]
    config_path = run_dir / "config.json"
    config = _parse(config_path, None, config_path.read_text()) if config_path.is_file() else {}
    label = f"{run_dir.name}: {config.get('method', '?')}, seed {config.get('seed', '?')}, {config.get('loss', '?')} loss"
    return label, rows


def _parse(path: Path, line_number: int | None, text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        where = f"{path}, line {line_number}" if line_number else str(path)
        raise ValueError(f"{where} is not valid JSON ({error.msg}): is it a run folder written by catchup_mix "
                         "train, and was the file cut short?") from None


def plot_curves(run_dirs: list[Path], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    runs = [read_run(Path(run_dir)) for run_dir in run_dirs]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.6))
    for label, rows in runs:
        for ax, (key, _) in zip(axes, PANELS, strict=True):
            points = [(row["epoch"], row[key]) for row in rows if key in row]  # test keys only where tested
            if points:
                ax.plot(*zip(*points, strict=True), marker="." if len(points) < 30 else None, label=label)
    for ax, (_, title) in zip(axes, PANELS, strict=True):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(", ".join(str(Path(run_dir)) for run_dir in run_dirs)[:150], fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out
