"""The local launcher: an artifact's runs trained on this machine, one after another, by this process and any
worker processes it starts (`--workers`), then its measurement and its tables; also the step that the Slurm
launcher's last job runs (slurm.measure_and_render)."""

import hashlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from catchup_mix.checkpoint import write_json
from catchup_mix.config import ConfigError

from .artifacts import ARTIFACTS, Settings
from .runner import execute, find_result, missing_extras


def reproduce(name: str, settings: Settings, dry_run: bool, tables_only: bool, budget_minutes: float | None = None,
              started: float | None = None, worker: tuple[int, int] = (0, 1), render: bool = True) -> bool:
    """Train the artifact's runs not yet done, then measure and render it (render=False: only train).
    worker: (index, count) of the processes sharing the runs (`--workers`), which sets this one's order.
    Returns whether it wrote the tables (with --tables-only and no stored result, it writes nothing)."""
    artifact = ARTIFACTS[name]
    runs, to_train = artifact.runs(settings), artifact.runs_to_train(settings)
    if dry_run:
        print(f"# {name} at {settings.scale} scale: {len(to_train)} runs")
        for run in to_train:
            state = "done" if find_result(run, settings.out) else "to run"
            print(f"# {run.name} [{run.key}, {state}]\n{run.command(settings.out)}")
            for need in missing_extras([run]) if state == "to run" else []:
                print(f"#   needs an optional package not installed here: {need}")
        if others := [run for run in runs if run not in to_train]:
            stored = sum(find_result(run, settings.out) is not None for run in others)
            print(f"# not trained here (--run-types): {len(others)} runs of the other run types, {stored} of them "
                  "stored, which the tables compare with")
        if artifact.measure:
            print(f"# then: {artifact.measure.__name__} (a measurement after the runs)")
        return False
    if not tables_only:
        if lacking := missing_extras([run for run in to_train if find_result(run, settings.out) is None]):
            raise ConfigError(f"{name}: {'; '.join(lacking)}. Nothing was trained; --dry-run lists the runs that "
                              "need it")
        started = time.monotonic() if started is None else started
        measurement = artifact.measure_each_run(settings) if artifact.measure_each_run else None
        for index, run in worker_order(list(enumerate(to_train, 1)), *worker):
            result = find_result(run, settings.out)
            missing = measurement.missing(result) if measurement and result is not None else []
            if result is not None and not missing:
                continue
            if budget_minutes is not None and not _fits(budget_minutes, started, runs, settings.out):
                print(f"[{name}] time budget of {budget_minutes:g} min reached: stopping before run {index} of "
                      f"{len(to_train)}; run the same command again to continue", flush=True)
                break
            doing = f"measuring {', '.join(missing)}" if result is not None else "training"
            print(f"[{name}] run {index} of {len(to_train)}: {run.name} ({doing})", flush=True)
            if measurement is None:
                execute(run, settings.out)
            else:
                execute(run, settings.out, measurement)
    if not render:
        return False
    # Read every result from disk now, not from what this process trained: where several processes share
    # an artifact, the last one to finish renders every run that any of them finished.
    results = [(run, find_result(run, settings.out)) for run in runs]
    # a measurement belongs to the weights it measured: keyed by the runs and, where their results record them
    # (every result trained since they are), their weights, so the measurement of earlier weights is not reused
    measured = sorted(run.key if not result or "weights" not in result["summary"] else
                      f"{run.key}:{result['summary']['weights']}" for run, result in results)
    measurement_key = hashlib.sha256(json.dumps(measured).encode()).hexdigest()[:12]
    measurement_path = settings.out / "results" / name / settings.scale / f"measurement-{measurement_key}.json"
    measurement = json.loads(measurement_path.read_text()) if measurement_path.exists() else None
    if artifact.measure and measurement is None and not tables_only and all(r for _, r in results):
        measurement = artifact.measure(settings, results)
        write_json(measurement_path, measurement)
    done = sum(result is not None for _, result in results)
    if tables_only and runs and not done:  # a table of dashes would look like a result: write nothing, say why
        print(f"[{name}] warning: no stored result of its {len(runs)} runs at {settings.scale} scale under "
              f"{settings.out.absolute() / 'results' / name / settings.scale}: nothing written. The committed results "
              "are in the repository's results/ folder: run from the repository's root, or pass --out a folder "
              "that holds results/", file=sys.stderr, flush=True)
        return False
    for path in artifact.render(settings, results, measurement):
        print(f"[{name}] wrote {path}")
    print(f"[{name}] {done} of {len(runs)} runs done at {settings.scale} scale", flush=True)
    return True


def worker_order(runs: list, index: int, count: int) -> list:
    """The order in which worker `index` of `count` takes the runs: its own contiguous share first, then
    the others' shares from their ends backwards, so that two workers meet once on a share instead of
    leapfrogging along it (each would skip, with a message, every run the other holds)."""
    bounds = [len(runs) * k // count for k in range(count + 1)]
    shares = [runs[bounds[k]:bounds[k + 1]] for k in range(count)]
    order = list(shares[index])
    for step in range(1, count):
        order += reversed(shares[(index + step) % count])
    return order


def default_workers(scale: str, overrides: dict) -> int:
    """Worker processes when --workers is not given: at smoke scale on a CPU one per core (each trains with
    one torch thread, which small networks use better than one process with several), at most 8 (each holds
    its own torch: up to about 1.3 GB); else one."""
    if scale != "smoke" or overrides.get("device", "cpu") != "cpu":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cores, 8)


def start_workers(argv: list[str], count: int) -> list[tuple[subprocess.Popen, threading.Thread]]:
    """Workers 2..count: the same command in processes of their own (`--worker K`), their output relayed
    here line by line under a [worker K] prefix, so it reaches the terminal and the --log file."""
    workers = []
    for number in range(2, count + 1):
        process = subprocess.Popen([sys.executable, "-m", "reproduce", *argv, "--worker", str(number)],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        relay = threading.Thread(target=_relay, args=(process.stdout, f"[worker {number}] "), daemon=True)
        relay.start()
        workers.append((process, relay))
    return workers


def train_in_workers(names, settings, budget_minutes, started, workers: int, argv: list[str]) -> None:
    """Train the artifacts' runs in this process and workers - 1 others; return when all have finished."""
    others = start_workers(argv, workers)
    try:
        for name in names:
            reproduce(name, settings, False, False, budget_minutes, started, (0, workers), render=False)
    except BaseException:
        for process, _ in others:
            process.terminate()
            process.wait()
        raise
    for number, (process, relay) in enumerate(others, 2):
        process.wait()
        relay.join()
        if process.returncode != 0:
            print(f"[worker {number}] stopped with exit code {process.returncode}: the runs it left are trained "
                  "here", flush=True)


def _relay(stream, prefix: str) -> None:
    for line in stream:
        sys.stdout.write(prefix + line)
        sys.stdout.flush()


def _fits(budget_minutes: float, started: float, runs, out: Path) -> bool:
    """Whether another run fits in the budget: the time left must cover the median wall time of the runs
    finished so far (any run fits while none has finished)."""
    left = budget_minutes * 60 - (time.monotonic() - started)
    times = [result["summary"].get("wall_time_s", result["summary"]["train_time_s"])
             for result in (find_result(run, out) for run in runs) if result is not None]
    return left > (statistics.median(times) if times else 0.0)
