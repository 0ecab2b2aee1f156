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
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    config_path = run_dir / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    label = f"{run_dir.name}: {config.get('method', '?')}, seed {config.get('seed', '?')}, {config.get('loss', '?')} loss"
    return label, rows


def plot_curves(run_dirs: list[Path], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [read_run(Path(run_dir)) for run_dir in run_dirs]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.6))
    for label, rows in runs:
        for ax, (key, _) in zip(axes, PANELS, strict=True):
            points = [(row["epoch"], row[key]) for row in rows if key in row]  # test keys only where tested
            if points:
                ax.plot(*zip(*points, strict=True), marker="." if len(points) < 30 else None, label=label)
    for ax, (_, title) in zip(axes, PANELS, strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(", ".join(str(Path(run_dir)) for run_dir in run_dirs)[:150], fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out
