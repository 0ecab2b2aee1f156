"""Regenerate a table or figure of the paper with one command.

    python -m reproduce list
    python -m reproduce table1 --scale smoke                 # minutes on a CPU, built-in data
    python -m reproduce table1 --scale paper --data-root data/ --seeds 0 1 2
    python -m reproduce all --scale smoke --tables-only      # tables and figures from stored results

Finished runs are cached and interrupted ones resume; several processes (one per GPU, e.g. with
CUDA_VISIBLE_DEVICES) can work through the same artifact side by side.
"""

import argparse
import hashlib
import json
import sys
from pathlib import Path

from catchup_mix.checkpoint import write_json

from .artifacts import ARTIFACTS, Settings
from .runner import execute, find_result

# Rough cost model for `list`: FLOPs of the training (3x forward per image) and the per-epoch test
# pass, at an assumed sustained 60 TFLOP/s in bf16 on one H100. Not measured: a planning figure only.
ASSUMED_TFLOPS = 60
DATASET_SIZES = {  # train images, test images, image size the model sees
    "cifar100": (50_000, 10_000, 32), "cifar10": (50_000, 10_000, 32), "tiny_imagenet": (100_000, 10_000, 64),
    "cub200": (5_994, 5_794, 224), "stanford_cars": (8_144, 8_041, 224), "fgvc_aircraft": (6_667, 3_333, 224),
}


def gpu_hours(artifact, settings: Settings) -> float:
    import torch

    from catchup_mix import models

    flops = {}
    total = 0.0
    for run in artifact.plan(settings):
        config = run.config
        train_images, test_images, size = DATASET_SIZES[config["dataset"]]
        key = (config["model"], size)
        if key not in flops:
            with torch.device("meta"):  # shapes only: no memory, no arithmetic
                model = models.build(config["model"], 100, image_size=size, width=config.get("width"))
            flops[key] = models.count_flops(model, size)
        total += config["epochs"] * (3 * train_images + test_images) * flops[key]
    extra = artifact.paper_gpu_hours(settings) if artifact.paper_gpu_hours else 0.0
    return total / (ASSUMED_TFLOPS * 1e12) / 3600 + extra


def list_artifacts(names_only: bool) -> None:
    if names_only:
        print("\n".join(ARTIFACTS))
        return
    paper = Settings("paper", [0, 1, 2], Path("."))
    width = max(len("artifact"), *map(len, ARTIFACTS))
    print(f"{'artifact':<{width}} {'runs (3 seeds)':>14} {'H100 hours':>10}  what it reproduces (scales: smoke, paper)")
    for name, artifact in ARTIFACTS.items():
        runs = len(artifact.plan(paper))
        print(f"{name:<{width}} {runs:>14} {gpu_hours(artifact, paper):>10.1f}  {artifact.reproduces}")
    print(f"\nH100 hours: a rough estimate from the networks' FLOPs at an assumed {ASSUMED_TFLOPS} TFLOP/s "
          "sustained (bf16), not a measurement; shared runs (e.g. figure_mixing reuses table1's) count in each.")


def reproduce(name: str, settings: Settings, dry_run: bool, tables_only: bool) -> None:
    artifact = ARTIFACTS[name]
    runs = artifact.plan(settings)
    if dry_run:
        print(f"# {name} at {settings.scale} scale: {len(runs)} runs")
        for run in runs:
            state = "done" if run.result_path(settings.out).exists() else "to run"
            print(f"# {run.name} [{run.key}, {state}]\n{run.command(settings.out)}")
        if artifact.measure:
            print(f"# then: {artifact.measure.__name__} (a measurement after the runs)")
        return
    fetch = find_result if tables_only else execute
    results = [(run, fetch(run, settings.out)) for run in runs]
    measurement_key = hashlib.sha256(json.dumps(sorted(r.key for r in runs)).encode()).hexdigest()[:12]
    measurement_path = settings.out / "results" / name / settings.scale / f"measurement-{measurement_key}.json"
    measurement = json.loads(measurement_path.read_text()) if measurement_path.exists() else None
    if artifact.measure and measurement is None and not tables_only and all(r for _, r in results):
        measurement = artifact.measure(settings, results)
        write_json(measurement_path, measurement)
    done = sum(result is not None for _, result in results)
    for path in artifact.render(settings, results, measurement):
        print(f"[{name}] wrote {path}")
    print(f"[{name}] {done} of {len(runs)} runs done at {settings.scale} scale")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reproduce", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", choices=["list", "all", *ARTIFACTS], help="what to reproduce")
    parser.add_argument("--scale", choices=["smoke", "paper"], default="smoke")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: 0 at smoke scale (minutes), 0 1 2 at paper scale")
    parser.add_argument("--data-root", help="dataset folder (paper: e.g. the folder holding cifar-100-python; "
                                            "smoke: a real dataset to use instead of the built-in synthetic data)")
    parser.add_argument("--out", type=Path, default=Path("."), help="where runs/, results/, tables/, figures/ go")
    parser.add_argument("--download", action="store_true", help="let torchvision download CIFAR-100")
    parser.add_argument("--dry-run", action="store_true", help="print the runs and their commands, do nothing")
    parser.add_argument("--tables-only", action="store_true", help="tables and figures from stored results only")
    parser.add_argument("--allow-cpu", action="store_true", help="run paper scale without a GPU (very slow)")
    parser.add_argument("--names", action="store_true", help="with list: only the artifact names")
    args = parser.parse_args(argv)

    if args.artifact == "list":
        list_artifacts(args.names)
        return 0
    seeds = args.seeds or ([0] if args.scale == "smoke" else [0, 1, 2])
    settings = Settings(args.scale, seeds, args.out, args.data_root, args.download)
    if args.scale == "paper" and not (args.dry_run or args.tables_only or args.allow_cpu):
        import torch

        if not torch.cuda.is_available():
            print("error: paper scale trains for GPU-days and no GPU is visible; use --scale smoke, or "
                  "--allow-cpu if you really mean it", file=sys.stderr)
            return 2
    for name in ARTIFACTS if args.artifact == "all" else [args.artifact]:
        reproduce(name, settings, args.dry_run, args.tables_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
