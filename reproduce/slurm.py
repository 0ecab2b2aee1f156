"""The Slurm launcher: an artifact's missing runs as one job array, one run per task, through submitit.

    python -m reproduce table1 --scale paper --data-root /shared/data --launcher slurm --slurm-partition gpu
    python -m reproduce table1 --scale paper --data-root /shared/data --tables-only    # once the array is done

Every task trains its run through `runner.execute`, as the local launcher does, so the cache, the resume
from the last checkpoint, the result JSON and the run folder's lock hold on the cluster too:
- a run that has a result is never submitted, nor one that a live process is training (its folder is
  locked), nor one queued in an earlier submission's array that is still in the queue;
- a task whose run is done when it starts (another submission finished it) exits at once, and one whose
  run another process is training leaves it to that process: no run is ever trained twice;
- a task that reaches its time limit or is preempted gets submitit's signal, is requeued by it (the
  `checkpoint` method below) and resumes its run from the run's last checkpoint.
A run that two artifacts share (`all`) is one task, which writes the result of each. Artifacts that measure
trained models or time the methods (robustness, figure_*, overhead) get one more job, after the array and
on the same resources: it measures and writes their tables. Logs go to OUT/slurm/<job id>/.

submitit is optional (`pip install -e '.[slurm]'`); nothing here imports it until a job is submitted.
"""

import argparse
import contextlib
import dataclasses
import io
import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from catchup_mix.checkpoint import write_json
from catchup_mix.config import ConfigError

from .artifacts import ARTIFACTS, Settings
from .local import reproduce
from .runner import Run, execute, find_result, held_by_another_process, missing_extras

INSTALL_HINT = "pip install -e '.[slurm]' -c requirements-lock.txt"
CLUSTER = "slurm"  # submitit's executor; tests use its "local" one, which runs tasks as local processes
MAX_REQUEUES = 100  # time limits a run may reach and still resume (preemptions do not count)
PROGRESS_EVERY_S = 60
LOCK_TRIES = 3


@dataclass
class SlurmOptions:
    partition: str | None = None
    time_minutes: int = 60
    gpus: int = 0  # per run
    cpus: int = 2
    mem_gb: float | None = None
    parallelism: int | None = None  # tasks running at once; None: submitit's default (256)
    extra: dict = field(default_factory=dict)  # sbatch options, as submitit's slurm_additional_parameters
    wait: bool = False


# Per scale: (time limit in minutes, GPUs, CPUs) of a task. Paper scale: one GPU per run and CPUs for the
# CPU-side mixing of PuzzleMix and Co-Mixup; a day per task, and a run that needs longer is requeued.
DEFAULTS = {"smoke": (60, 0, 2), "medium": (240, 0, 2), "paper": (1440, 1, 8)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("with --launcher slurm (defaults per scale: smoke / medium / paper)")
    group.add_argument("--slurm-partition", help="partition to submit to (default: the cluster's default)")
    group.add_argument("--slurm-time", type=int, metavar="MINUTES",
                       help="time limit per task (60 / 240 / 1440); a run that needs longer is requeued and resumes")
    group.add_argument("--slurm-gpus", type=int, metavar="N", help="GPUs per run (0 / 0 / 1)")
    group.add_argument("--slurm-cpus", type=int, metavar="N", help="CPUs per run (2 / 2 / 8)")
    group.add_argument("--slurm-mem", type=float, metavar="GB", help="memory per run (default: the partition's)")
    group.add_argument("--slurm-parallelism", type=int, metavar="K", help="at most K tasks of the array at once")
    group.add_argument("--slurm-extra", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                       help="more sbatch options, e.g. account=ABC qos=normal constraint=a100")
    group.add_argument("--wait", action="store_true",
                       help="wait until the jobs finish, then write the tables here (as the local launcher does)")


def options_from(args: argparse.Namespace) -> SlurmOptions:
    """The --slurm-* options with the scale's defaults; a ConfigError for a bad value."""
    time_minutes, gpus, cpus = DEFAULTS[args.scale]
    extra = {}
    for item in args.slurm_extra:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--slurm-extra {item!r}: expected KEY=VALUE, an sbatch option without its "
                              "dashes, e.g. account=ABC or mail-type=END")
        extra[key] = value
    options = SlurmOptions(args.slurm_partition, _default(args.slurm_time, time_minutes), _default(args.slurm_gpus, gpus),
                           _default(args.slurm_cpus, cpus), args.slurm_mem, args.slurm_parallelism, extra, args.wait)
    for name, value, least in (("--slurm-time", options.time_minutes, 1), ("--slurm-gpus", options.gpus, 0),
                               ("--slurm-cpus", options.cpus, 1), ("--slurm-parallelism", options.parallelism, 1),
                               ("--slurm-mem", options.mem_gb, 0.001)):
        if value is not None and value < least:
            raise ConfigError(f"{name} {value}: must be at least {least:g}")
    if args.scale == "paper" and options.gpus == 0 and not args.allow_cpu:
        raise ConfigError("--slurm-gpus 0 at paper scale trains for GPU-days on CPUs; give the runs a GPU, or "
                          "pass --allow-cpu if you really mean it")
    if args.budget_minutes is not None:
        raise ConfigError("--budget-minutes is for the local launcher; on Slurm, --slurm-time limits each task")
    return options


def _default(value, default):
    return default if value is None else value


def tables_command(args: argparse.Namespace, settings: Settings) -> str:
    """The command that writes the tables from what the jobs stored, to print for later."""
    words = ["python", "-m", "reproduce", args.artifact, "--scale", settings.scale,
             "--seeds", *map(str, settings.seeds), "--out", str(settings.out)]
    if settings.data_root:
        words += ["--data-root", settings.data_root]
    if args.set:
        words += ["--set", *args.set]
    return shlex.join([*words, "--tables-only"])


# ---------------------------------------------------------------------------------------------------
# What to submit


def pending_tasks(names: list[str], settings: Settings,
                  queued: dict[str, str]) -> tuple[list[list[Run]], dict, list[Run]]:
    """The runs to submit, one list per task (the runs of one key: a run two artifacts share is one task), how
    many runs were left out and why, and those left out because another job or process has them (which
    --wait waits for). `queued` maps run keys to the array task that has them queued."""
    groups: dict[str, list[Run]] = {}
    skipped = {"done": 0, "being trained now": 0, "queued": 0}
    runs = {run.result_path(settings.out): run for name in names for run in ARTIFACTS[name].runs(settings)}
    for run in runs.values():  # each result once: the figures' artifacts plan table 1's runs as they are
        result = find_result(run, settings.out)
        measurement = measurement_of(run, settings.out)
        if result is not None and not (measurement and measurement.missing(result)):
            skipped["done"] += 1
        else:
            groups.setdefault(run.key, []).append(run)
    tasks, elsewhere = [], []
    for key, runs in groups.items():
        if key in queued:
            skipped["queued"] += len(runs)
            elsewhere += runs
        elif held_by_another_process(runs[0], settings.out):
            skipped["being trained now"] += len(runs)
            elsewhere += runs
        else:
            tasks.append(runs)
    return tasks, skipped, elsewhere


# Array task states in which a task will still run its run (squeue's %T); a cancelled, failed, timed-out or
# completing one will not, and one that has left the queue neither.
LIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING",
               "SUSPENDED"}


def queued_elsewhere(out: Path) -> dict[str, str]:
    """Run key -> array task ("<job id>_<task>"), for the runs of earlier submissions (under OUT/slurm/) whose
    own task is still queued or running, as squeue reports each task. A task that was cancelled (scancel
    JOB_5, or JOB_[18-29]), failed or timed out has left the queue or is in another state: its run is not
    queued, whatever the rest of its array does."""
    records = sorted((out / "slurm").glob("*/submission.json"))
    if not records:
        return {}
    try:
        listed = subprocess.run(["squeue", "--noheader", "--array", "--format=%i %T"], capture_output=True,
                                text=True, timeout=60)
    except FileNotFoundError:
        raise ConfigError("--launcher slurm: no squeue here; submit from a machine of the cluster (a login node)") from None
    if listed.returncode != 0:
        raise ConfigError(f"squeue failed ({listed.stderr.strip()}): cannot tell which runs are queued already")
    live = {task for task, state in (line.split()[:2] for line in listed.stdout.splitlines() if line.strip())
            if state in LIVE_STATES}
    queued = {}
    for record in records:
        submission = json.loads(record.read_text())
        for index, key in enumerate(submission["keys"]):  # task i of the array holds the i-th key
            if f"{submission['job_id']}_{index}" in live:
                queued[key] = f"{submission['job_id']}_{index}"
    return queued


def check_partition(partition: str | None) -> None:
    """A ConfigError naming the partitions that exist when `partition` is not one of them (sinfo)."""
    if partition is None:
        return
    listed = subprocess.run(["sinfo", "--noheader", "--format=%P"], capture_output=True, text=True, timeout=60)
    partitions = [name.rstrip("*") for name in listed.stdout.split()]  # the default one is marked with a *
    if listed.returncode == 0 and partition not in partitions:
        raise ConfigError(f"--slurm-partition {partition}: no such partition on this cluster; its partitions: "
                          f"{', '.join(partitions) or 'none'}")


# ---------------------------------------------------------------------------------------------------
# What a task does


class TrainRuns:
    """One task of the array: execute the runs of one key (the first trains it, any other artifact's run of
    the same key finds it trained and only writes its result). Requeued by submitit on a time limit or a
    preemption; `execute` then resumes the run from its last checkpoint."""

    def __call__(self, runs: list[Run], out: Path) -> list[str]:
        job = _job_provenance()
        states = []
        for run in runs:
            measurement = measurement_of(run, out)  # the evidence's runs measure themselves too
            for attempt in range(LOCK_TRIES):  # a submission checking the run's lock holds it for an instant
                result = execute(run, out, measurement, provenance={"job": job})
                if result is not None or attempt == LOCK_TRIES - 1:
                    break
                time.sleep(2)
            states.append("done" if result is not None else "being trained by another process")
        return states

    def checkpoint(self, runs: list[Run], out: Path):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, runs, out)  # the same runs again: they resume from the run folder


def measurement_of(run: Run, out: Path):
    """The per-run measurement of the run's artifact (the evidence's), or None."""
    artifact = ARTIFACTS[run.artifact]
    return None if artifact.measure_each_run is None else artifact.measure_each_run(Settings(run.scale, [run.seed], out))


def measure_and_render(names: list[str], settings: Settings) -> None:
    """The job after the array: for each artifact whose runs are all done, its measurement and tables, as
    the local launcher makes them; for the others, the tables with the missing runs shown as pending."""

    for name in names:
        complete = all(find_result(run, settings.out) is not None for run in ARTIFACTS[name].runs(settings))
        reproduce(name, settings, dry_run=False, tables_only=not complete)


def _job_provenance() -> dict:
    import submitit

    env = submitit.JobEnvironment()
    return {"cluster": env.cluster, "job_id": env.job_id, "array_job_id": env.array_job_id,
            "array_task_id": env.array_task_id, "host": env.hostname}


# ---------------------------------------------------------------------------------------------------
# Submission


def make_executor(folder: Path, options: SlurmOptions, name: str):
    try:
        import submitit
    except ImportError:
        raise ConfigError(f"--launcher slurm needs submitit: {INSTALL_HINT}") from None
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=CLUSTER, slurm_max_num_timeout=MAX_REQUEUES)
    except RuntimeError as error:  # submitit's "Could not detect srun"
        raise ConfigError(f"--launcher slurm: {error} Submit from a machine of the cluster (a login node).") from None
    executor.update_parameters(
        name=name, timeout_min=options.time_minutes, cpus_per_task=options.cpus, tasks_per_node=1, nodes=1,
        mem_gb=options.mem_gb, gpus_per_node=options.gpus or None, slurm_partition=options.partition,
        slurm_array_parallelism=options.parallelism, slurm_additional_parameters=dict(options.extra),
        # torch's threads as many as the task's CPUs, where the cluster does not pin the task to them
        slurm_setup=["export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$SLURM_CPUS_PER_TASK}"],
    )
    return executor


def launch(names: list[str], settings: Settings, options: SlurmOptions, later: str, render, dry_run=False) -> int:
    """Submit what `names` still need; with options.wait, wait for it and `render` each artifact's tables.
    `later` is the command that writes the tables once the jobs are done."""
    settings = dataclasses.replace(settings, out=settings.out.resolve())  # the jobs may start elsewhere
    label = names[0] if len(names) == 1 else "all"
    queued = queued_elsewhere(settings.out) if CLUSTER == "slurm" and not dry_run else {}
    tasks, skipped, elsewhere = pending_tasks(names, settings, queued)
    if not dry_run and (lacking := missing_extras([run for runs in tasks for run in runs])):
        raise ConfigError(f"{'; '.join(lacking)}. Nothing was submitted: install it where the jobs run")
    measured = [name for name in names if ARTIFACTS[name].measure]
    resources = (f"{options.gpus} GPU(s), {options.cpus} CPU(s), "
                 f"{f'{options.mem_gb:g} GB' if options.mem_gb else 'the default memory'}, "
                 f"{options.time_minutes} min per task, partition {options.partition or '(default)'}"
                 + "".join(f", {k}={v}" for k, v in options.extra.items()))
    left_out = ", ".join(f"{count} {why}" for why, count in skipped.items() if count)
    print(f"[slurm] {label} at {settings.scale} scale: {len(tasks)} run(s) to submit"
          + (f" (not submitted: {left_out})" if left_out else "") + f"; {resources}", flush=True)
    earlier = sorted({queued[run.key].split("_")[0] for run in elsewhere if run.key in queued})
    if earlier:
        print(f"[slurm] queued already in job(s) {', '.join(earlier)}", flush=True)
    if dry_run:
        for runs in tasks:
            print(f"# task: {' + '.join(f'{run.artifact}/{run.name}' for run in runs)} [{runs[0].key}]")
        if measured:
            print(f"# then one job for the measurements of {', '.join(measured)}")
        return 0
    if not tasks and not measured:
        print(f"[slurm] nothing to submit; the tables: {later}", flush=True)
        if not options.wait:
            return 0
        return wait_for_runs(elsewhere, settings) or render_all(names, render)

    if CLUSTER == "slurm":
        check_partition(options.partition)
    folder = settings.out / "slurm" / "%A"
    executor = make_executor(folder, options, f"reproduce-{label}-{settings.scale}")
    with refused_submissions_left_nothing(settings.out / "slurm"):
        jobs = executor.map_array(TrainRuns(), tasks, [settings.out] * len(tasks)) if tasks else []
    array_id = jobs[0].job_id.split("_")[0] if jobs else None
    if jobs:
        write_json(settings.out / "slurm" / array_id / "submission.json",
                   {"job_id": array_id, "artifacts": names, "scale": settings.scale,
                    "keys": [runs[0].key for runs in tasks],
                    "tasks": [[f"{run.artifact}/{run.name}" for run in runs] for runs in tasks]})
        print(f"[slurm] submitted job {array_id}: {len(jobs)} task(s), one run each; logs in "
              f"{settings.out / 'slurm' / array_id}/", flush=True)
    finish = None
    if measured:
        after = [job for job in (array_id, *earlier) if job]  # the measurements need the runs queued before too
        if after and CLUSTER == "slurm":
            executor.update_parameters(slurm_additional_parameters={**options.extra,
                                                                    "dependency": f"afterany:{':'.join(after)}"})
        elif jobs:
            wait(jobs)  # submitit's local executor has no dependencies: the array first, then the rest
        with refused_submissions_left_nothing(settings.out / "slurm"):
            finish = executor.submit(measure_and_render, measured, settings)
        print(f"[slurm] submitted job {finish.job_id}: the measurements and tables of {', '.join(measured)}, "
              "after the array", flush=True)
    print(f"[slurm] follow: squeue -j {','.join(j for j in (array_id, finish and finish.job_id) if j)}; "
          f"cancel: scancel <job id>; resume: the same command again (finished runs are kept)", flush=True)
    if not options.wait:
        print(f"[slurm] when the jobs are done, the tables: {later}", flush=True)
        return 0
    try:
        wait(jobs + ([finish] if finish else []))
        failed = max(report(jobs, tasks), report([finish], [[]]) if finish else 0, wait_for_runs(elsewhere, settings))
    except KeyboardInterrupt:
        print(f"\n[slurm] stopped waiting; the jobs go on. The tables when they are done: {later}", flush=True)
        return 130
    render_all(names, render)
    return failed


def wait_for_runs(runs: list[Run], settings: Settings) -> int:
    """--wait for runs that earlier submissions (or other processes) hold: until each has its result, or its
    task has left the queue without one. Returns 1 if any ended without its result."""
    last, lost = 0.0, []
    while runs:
        queued = queued_elsewhere(settings.out) if CLUSTER == "slurm" else {}
        waiting = []
        for run in runs:
            if find_result(run, settings.out) is not None:
                continue
            if run.key in queued or held_by_another_process(run, settings.out):
                waiting.append(run)
            else:
                lost.append(run)
        runs = waiting
        if runs and time.monotonic() - last > PROGRESS_EVERY_S:
            print(f"[slurm] waiting for {len(runs)} run(s) that earlier submissions hold", flush=True)
            last = time.monotonic()
        if runs:
            time.sleep(2)
    for run in lost:
        print(f"[slurm] {run.artifact}/{run.name} ended without its result (its task was cancelled, failed or timed "
              "out): run the same command again to submit it", file=sys.stderr, flush=True)
    return 1 if lost else 0


@contextlib.contextmanager
def refused_submissions_left_nothing(folder: Path):
    """A submission that sbatch refuses (a bad partition, account or time limit) is a ConfigError with sbatch's
    own words, in one line, and what submitit wrote for it under `folder` is removed: nothing is left behind."""
    existed = folder.exists()
    before = set(folder.iterdir()) if existed else set()
    said = io.StringIO()  # sbatch's own lines, which submitit relays: shown on success, summed up on refusal
    try:
        with contextlib.redirect_stderr(said):
            yield
    except Exception as error:
        from submitit.core.utils import FailedJobError

        if not isinstance(error, FailedJobError):
            raise
        for path in (set(folder.iterdir()) - before) if folder.exists() else ():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        if not existed and folder.exists() and not any(folder.iterdir()):
            folder.rmdir()
        lines = [line.strip() for line in (said.getvalue() + str(error)).splitlines() if "error" in line.lower()]
        reason = lines[0].removeprefix("sbatch: error: ") if lines else str(error).strip()
        raise ConfigError(f"sbatch refused the job: {reason}") from None
    sys.stderr.write(said.getvalue())


def wait(jobs) -> None:
    """Until every job has finished, with a line of progress now and then."""
    last = 0.0
    while True:
        finished = sum(finished_jobs(jobs))
        if finished == len(jobs):
            return
        if time.monotonic() - last > PROGRESS_EVERY_S:
            print(f"[slurm] {finished} of {len(jobs)} job(s) finished", flush=True)
            last = time.monotonic()
        time.sleep(2)


def finished_jobs(jobs) -> list[bool]:
    """Whether each job has finished: it left its result (success or error), or it has left the queue
    without one (cancelled, or ended by Slurm). From squeue, not from submitit's sacct calls: a cluster
    without accounting (as the test's) has no sacct, and submitit would then wait forever for a job that
    was cancelled."""
    if CLUSTER != "slurm":
        return [job.done() for job in jobs]
    listed = subprocess.run(["squeue", "--noheader", "--array", "--format=%i"], capture_output=True, text=True,
                            timeout=60)
    if listed.returncode != 0:  # the controller is busy or restarting: nothing has finished that we know of
        return [job.paths.result_pickle.exists() for job in jobs]
    queued = set(listed.stdout.split())
    return [job.paths.result_pickle.exists() or job.job_id not in queued for job in jobs]


def report(jobs, tasks) -> int:
    """Print each job that failed or left its run to another process; 1 if any failed."""
    failed = 0
    for job, runs in zip(jobs, tasks, strict=True):
        what = " + ".join(f"{run.artifact}/{run.name}" for run in runs) or "measurements and tables"
        if not job.paths.result_pickle.exists():
            failed = 1
            print(f"[slurm] job {job.job_id} ({what}) ended without a result: cancelled, or ended by Slurm "
                  f"(memory?); log: {job.paths.stderr}", file=sys.stderr, flush=True)
        elif (error := job.exception()) is not None:
            failed = 1
            lines = str(error).strip().splitlines()
            cause = next((line for line in reversed(lines) if line.strip() and not set(line) <= {"-"}), "")
            print(f"[slurm] job {job.job_id} ({what}) failed: {cause.strip()}\n        log: {job.paths.stderr}",
                  file=sys.stderr, flush=True)
        elif runs and "done" not in job.result():
            print(f"[slurm] job {job.job_id} ({what}): being trained by another process; its cells fill when "
                  "that one finishes", flush=True)
    return failed


def render_all(names, render) -> int:
    for name in names:
        render(name)
    return 0
