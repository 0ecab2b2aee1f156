"""Regenerate a table or figure of the paper with one command.

    python -m reproduce list
    python -m reproduce table1 --scale smoke                 # minutes on a CPU, built-in data
    python -m reproduce table1 --scale paper --data-root data/ --seeds 0 1 2
    python -m reproduce evidence --scale medium --data-root DIR/cifar10-jpeg --budget-minutes 60 --log ev.log
    python -m reproduce all --scale smoke --tables-only      # tables and figures from stored results
    python -m reproduce table1 --scale paper --data-root /shared/data --launcher slurm --slurm-partition gpu

Finished runs are cached and interrupted ones resume; several processes (one per GPU, e.g. with
CUDA_VISIBLE_DEVICES) can work through the same artifact side by side, and the last one to finish
renders the complete table. `--workers N` starts N such processes itself (at smoke scale on a CPU, one
per core by default) and renders once all have finished.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from catchup_mix.config import ConfigError, parse_overrides

from . import slurm
from .artifacts import ARTIFACTS, CPU_SCALES, SCALES, Settings, default_seeds
from .local import default_workers, reproduce, train_in_workers
from .output import output_folder_error
from .runner import find_result

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


def paper_cost(name: str) -> str | None:
    """An artifact's paper-scale GPU cost as README's artifact table quotes it (tests/test_readme.py holds
    the README to it): the estimated hours of its runs for 3 seeds, or, where every run it needs is one of
    table1's, that it shares them and the hours of its own measurement. None without a paper scale."""
    artifact = ARTIFACTS[name]
    if "paper" not in artifact.scales:
        return None
    settings = Settings("paper", [0, 1, 2], Path("."))
    runs = artifact.plan(settings)
    if name == "table1" or not runs or not _identities(runs) <= _identities(ARTIFACTS["table1"].plan(settings)):
        return _hours(gpu_hours(artifact, settings))
    shared = "shares `table1`'s " + ("run" if len(runs) == 1 else "runs")
    measured = artifact.paper_gpu_hours(settings) if artifact.paper_gpu_hours else 0.0
    return f"{shared} + {_hours(measured)}" if measured else shared


def cpu_cost(name: str, scale: str) -> str:
    """An artifact's cost at a CPU scale, as `list` prints it and the README quotes it: its planned runs (every
    seed of the schedule) and the hours they take on a 2-core machine (evidence.MINUTES_PER_RUN)."""
    from .evidence import MINUTES_PER_RUN, RUNS_AT_ONCE

    runs = len(ARTIFACTS[name].plan(Settings(scale, default_seeds(scale), Path("."))))
    hours = runs * MINUTES_PER_RUN / 60 / RUNS_AT_ONCE
    return (f"CPU: {runs} runs, about {MINUTES_PER_RUN} min each, {RUNS_AT_ONCE} at a time on 2 idle cores: "
            f"about {hours:.0f} h")


def _identities(runs) -> set[str]:
    """What makes runs the same run (the same key), without resolving their keys: config and seed."""
    return {json.dumps([run.config, run.seed], sort_keys=True) for run in runs}


def _hours(hours: float) -> str:
    """Rounded as rough estimates deserve: whole hours from 10 h, tenths below, "minutes" under 0.1 h."""
    if hours >= 9.95:
        return f"{hours:.0f} h"
    return f"{hours:.1f} h" if hours >= 0.095 else "minutes"


def list_artifacts(names_only: bool) -> None:
    if names_only:
        print("\n".join(ARTIFACTS))
        return
    width = max(len("artifact"), *map(len, ARTIFACTS))
    print(f"{'artifact':<{width}} {'scales':<26} {'runs':>5} {'H100 hours':>10}  what it reproduces")
    for name, artifact in ARTIFACTS.items():
        if "paper" in artifact.scales:
            settings = Settings("paper", [0, 1, 2], Path("."))
            print(f"{name:<{width}} {'/'.join(artifact.scales):<26} {len(artifact.plan(settings)):>5} "
                  f"{gpu_hours(artifact, settings):>10.1f}  {artifact.reproduces}")
        for scale in (scale for scale in artifact.scales if scale in CPU_SCALES):
            runs = len(artifact.plan(Settings(scale, default_seeds(scale), Path("."))))
            print(f"{name:<{width}} {scale:<26} {runs:>5} {'CPU':>10}  {artifact.reproduces}; {cpu_cost(name, scale)}")
    print(f"\nRuns: at paper scale for 3 seeds. H100 hours: a rough estimate from the networks' FLOPs at an assumed "
          f"{ASSUMED_TFLOPS} TFLOP/s sustained (bf16), not a measurement; shared runs (e.g. figure_mixing reuses "
          "table1's) count in each. CPU scales: the evidence's runs at every seed of its schedule (docs/evidence.md).")


class _Tee:
    """Writes to the terminal and to a log file, each line stamped with the time in the file."""

    def __init__(self, stream, log):
        self.stream, self.log, self.at_line_start = stream, log, True

    def write(self, text: str) -> int:
        self.stream.write(text)
        for piece in text.splitlines(keepends=True):
            if self.at_line_start:
                self.log.write(time.strftime("%Y-%m-%d %H:%M:%S "))
            self.log.write(piece)
            self.at_line_start = piece.endswith("\n")
        self.log.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def isatty(self) -> bool:  # progress bars only on a real terminal: the log would fill with them
        return False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["gpucheck"]:  # not an artifact: a check of the machine, with options of its own
        from . import gpucheck

        try:
            return gpucheck.main(argv[1:])
        except KeyboardInterrupt:
            print("\ninterrupted: no report was written; run the same command again", file=sys.stderr)
            return 130
    parser = argparse.ArgumentParser(prog="python -m reproduce", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", choices=["list", "all", "gpucheck", *ARTIFACTS],
                        help="what to reproduce (gpucheck: the GPU path, tested and timed; see its --help)")
    parser.add_argument("--scale", choices=SCALES, default="smoke",
                        help="smoke: minutes on a CPU; medium: CPU hours on real data (evidence); medium_wd: the "
                             "same with the paper's cumulative weight decay, where filters lag (evidence); paper: "
                             "GPU days")
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="default: 0 at smoke scale, 0-9 at medium scale (each run type to its own number of "
                             "seeds, docs/evidence.md), 0 1 2 at paper scale")
    parser.add_argument("--run-types", nargs="+", metavar="NAME",
                        help="evidence only: train and tabulate only these run types (e.g. vanilla, catchup_mix, "
                             "'catchup_mix random', or a method you registered); stored runs of the others are "
                             "still compared against")
    parser.add_argument("--data-root", help="dataset folder (paper: e.g. the folder holding cifar-100-python; "
                                            "smoke: a real dataset to use instead of the built-in synthetic data)")
    parser.add_argument("--out", type=Path, default=Path("."), help="where runs/, results/, tables/, figures/ go")
    parser.add_argument("--download", action="store_true", help="let torchvision download CIFAR-100")
    parser.add_argument("--dry-run", action="store_true", help="print the runs and their commands, do nothing")
    parser.add_argument("--tables-only", action="store_true", help="tables and figures from stored results only")
    parser.add_argument("--allow-cpu", action="store_true", help="run paper scale without a GPU (very slow)")
    parser.add_argument("--names", action="store_true", help="with list: only the artifact names")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override config keys of every run, e.g. --set device=cuda (a new run key: results "
                             "of other settings are not reused)")
    parser.add_argument("--budget-minutes", type=float,
                        help="start no run after this many minutes, nor one that would not finish in them "
                             "(judged by the median time of the runs already done); run again to continue")
    parser.add_argument("--log", type=Path, help="also append everything printed to this file, time-stamped")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local",
                        help="local: train the runs here, one after another; slurm: submit each missing run as a "
                             "task of a Slurm job array (submitit, `pip install -e '.[slurm]'`)")
    slurm.add_arguments(parser)
    parser.add_argument("--workers", type=int, metavar="N",
                        help="processes that share the runs on this machine, each training one run at a time "
                             "(default: one per CPU core, at most 8, at smoke scale on a CPU; else 1)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # set by --workers in the processes it starts
    args = parser.parse_args(argv)

    if args.artifact == "list":
        list_artifacts(args.names)
        return 0
    if args.workers is not None and args.workers < 1:
        print(f"error: --workers must be at least 1, got {args.workers}", file=sys.stderr)
        return 2
    if not args.dry_run and (error := output_folder_error(args.out)):
        print(error, file=sys.stderr)
        return 2
    if args.log and args.worker is None:  # a worker's output reaches the log through the first worker
        args.log.parent.mkdir(parents=True, exist_ok=True)
        log = open(args.log, "a")  # open for the life of the process
        sys.stdout, sys.stderr = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
    seeds = args.seeds or default_seeds(args.scale)
    try:
        overrides = parse_overrides(args.set)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.run_types and args.artifact != "evidence":
        print("error: --run-types is an option of the evidence artifact", file=sys.stderr)
        return 2
    settings = Settings(args.scale, seeds, args.out, args.data_root, args.download, overrides, args.run_types)
    names = list(ARTIFACTS) if args.artifact == "all" else [args.artifact]
    unsupported = [name for name in names if args.scale not in ARTIFACTS[name].scales]
    if args.artifact == "all":
        names = [name for name in names if name not in unsupported]
    elif unsupported:
        print(f"error: {args.artifact} has no {args.scale} scale; its scales: "
              f"{', '.join(ARTIFACTS[args.artifact].scales)}", file=sys.stderr)
        return 2
    if args.launcher == "slurm" and not args.tables_only:
        try:
            return slurm.launch(names, settings, slurm.options_from(args), slurm.tables_command(args, settings),
                                render=lambda name: reproduce(name, settings, dry_run=False, tables_only=True),
                                dry_run=args.dry_run)
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    if args.scale == "paper" and not (args.dry_run or args.tables_only or args.allow_cpu):
        import torch

        if not torch.cuda.is_available():
            print("error: paper scale trains for GPU-days and no GPU is visible; use --scale smoke, or "
                  "--allow-cpu if you really mean it", file=sys.stderr)
            return 2
    started = time.monotonic()
    try:
        workers = 1 if args.dry_run or args.tables_only else args.workers or default_workers(args.scale, overrides)
        if args.worker is not None:  # started by the first worker: train a share of the runs, render nothing
            for name in names:
                reproduce(name, settings, False, False, args.budget_minutes, started, (args.worker - 1, workers),
                          render=False)
            return 0
        to_do = len({run.key for name in names for run in ARTIFACTS[name].runs_to_train(settings)  # shared: once
                     if find_result(run, settings.out) is None})
        workers = min(workers, to_do)
        if workers > 1:
            print(f"[{args.artifact}] {to_do} runs to train, shared by {workers} worker processes (--workers)",
                  flush=True)
            train_in_workers(names, settings, args.budget_minutes, started, workers, argv)
        wrote = [reproduce(name, settings, args.dry_run, args.tables_only, args.budget_minutes, started)
                 for name in names]  # trains what no worker finished, then measures and renders
        if args.tables_only and not any(wrote):
            return 1
    except KeyboardInterrupt:
        if args.worker is None:  # the first process speaks for its workers, which stop with it
            print("\ninterrupted: finished runs and measured parts are kept, and a run stopped mid-way continues "
                  "from its last epoch; run the same command again to continue", file=sys.stderr)
        return 130
    except (ConfigError, OSError) as error:  # bad input, or a disk that fills up or stops being writable
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
