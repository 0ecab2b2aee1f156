"""The Slurm launcher (reproduce/slurm.py): table 1 end to end on a real Slurm on localhost, and the rest on
submitit's local executor, which runs each task as a local process with the same pickling and requeueing."""

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from catchup_mix import methods
from reproduce import artifacts, runner, slurm
from reproduce.__main__ import main as reproduce_main
from reproduce.artifacts import Settings

REPOSITORY = Path(__file__).resolve().parent.parent
START_SCRIPT = REPOSITORY / ".ci" / "slurm-localhost"
# Smoke scale made smaller still through --set (which a task receives with its runs, unlike a monkeypatch):
# seconds of training per run, so the test's time goes to what it tests, the jobs.
TINY = ["--set", "epochs=2", "train_per_class=20", "test_per_class=10"]


def cli(*args: str) -> list[str]:
    """The command line of `python -m reproduce ARGS`, run from the repository."""
    return [sys.executable, "-m", "reproduce", *args]


@pytest.fixture
def local_executor(monkeypatch):
    pytest.importorskip("submitit", reason=f"the Slurm launcher's extra is not installed: {slurm.INSTALL_HINT}")
    monkeypatch.setattr(slurm, "CLUSTER", "local")


def tiny_settings(out: Path, **overrides) -> Settings:
    return Settings("smoke", [0], out, overrides={"epochs": 2, "train_per_class": 20, "test_per_class": 10,
                                                   **overrides})


# ---------------------------------------------------------------------------------------------------
# Without a cluster


def test_options_take_the_scale_defaults_and_refuse_bad_values(capsys):
    options = lambda *args: slurm.options_from(parse(*args))  # noqa: E731
    assert (options("table1", "--scale", "paper").gpus, options("table1").gpus) == (1, 0)
    paper = options("table1", "--scale", "paper", "--slurm-time", "90", "--slurm-extra", "account=abc", "qos=high")
    assert (paper.time_minutes, paper.cpus, paper.extra) == (90, 8, {"account": "abc", "qos": "high"})
    for bad, message in [(["--slurm-extra", "exclusive"], "expected KEY=VALUE"),
                         (["--slurm-cpus", "0"], "--slurm-cpus 0: must be at least 1"),
                         (["--scale", "paper", "--slurm-gpus", "0"], "--allow-cpu"),
                         (["--budget-minutes", "5"], "--slurm-time limits each task")]:
        assert reproduce_main(["table1", "--launcher", "slurm", "--dry-run", *bad]) == 2
        assert message in capsys.readouterr().err


def parse(*args: str):
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("artifact")
    parser.add_argument("--scale", default="smoke")
    parser.add_argument("--allow-cpu", action="store_true")
    parser.add_argument("--budget-minutes", type=float)
    slurm.add_arguments(parser)
    return parser.parse_args(args)


def test_all_submits_a_run_that_artifacts_share_as_one_task_and_leaves_out_finished_runs(tmp_path, capsys):
    assert reproduce_main(["all", "--scale", "smoke", "--launcher", "slurm", "--dry-run", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    tasks = [line for line in printed.splitlines() if line.startswith("# task:")]
    settings = Settings("smoke", [0], tmp_path)
    keys = {run.key for name, artifact in artifacts.ARTIFACTS.items() if "smoke" in artifact.scales
            for run in artifact.runs(settings)}
    assert len(tasks) == len(keys) and f"{len(keys)} run(s) to submit" in printed
    vanilla = next(line for line in tasks if "table1/preactresnet18-vanilla-seed0" in line)
    assert "table2/preactresnet18-vanilla-seed0" in vanilla and "ablation/vanilla_reference" in vanilla
    assert "then one job for the measurements of overhead, figure_mixing, robustness" in printed

    # a run with a result is not submitted again, nor one that a live process is training
    table1 = artifacts.ARTIFACTS["table1"].runs(settings)
    runner.write_json(table1[0].result_path(tmp_path), {"key": table1[0].key})
    table1[1].run_dir(tmp_path).mkdir(parents=True)
    with open(table1[1].run_dir(tmp_path) / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert reproduce_main(["table1", "--launcher", "slurm", "--dry-run", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    total = 3 * len(methods.available())
    assert f"{total - 2} run(s) to submit (not submitted: 1 done, 1 being trained now)" in printed


def test_a_missing_submitit_is_a_clear_error_with_the_install_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` raises ImportError
    assert reproduce_main(["table1", "--launcher", "slurm", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --launcher slurm needs submitit: {slurm.INSTALL_HINT}"


def test_submitting_off_the_cluster_is_a_clear_error(tmp_path, monkeypatch, capsys):
    pytest.importorskip("submitit", reason=slurm.INSTALL_HINT)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no srun, squeue, sbatch
    for earlier_submission in (False, True):  # submitit finds no srun; or, first, squeue is missing
        if earlier_submission:
            runner.write_json(tmp_path / "slurm" / "7" / "submission.json", {"job_id": "7", "keys": []})
        assert reproduce_main(["table1", "--launcher", "slurm", "--out", str(tmp_path)]) == 2
        assert "ubmit from a machine of the cluster (a login node)" in capsys.readouterr().err


def test_the_batch_script_asks_for_what_the_options_say(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit", reason=slurm.INSTALL_HINT)
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # srun not needed here
    options = slurm.SlurmOptions(partition="gpu", time_minutes=90, gpus=1, cpus=8, mem_gb=32, parallelism=4,
                                 extra={"account": "abc"})
    executor = slurm.make_executor(tmp_path / "slurm" / "%A", options, "reproduce-table1-paper")
    executor._executor.parameters["map_count"] = 12  # as for an array of 12 tasks
    script = executor._executor._make_submission_file_text("python -m submitit.core._submit", "id")
    for line in ["--partition=gpu", "--time=90", "--gpus-per-node=1", "--cpus-per-task=8", "--mem=32GB",
                 "--array=0-11%4", "--account=abc", "--job-name=reproduce-table1-paper",
                 f"--output={tmp_path}/slurm/%A/%A_%a_0_log.out"]:
        assert f"#SBATCH {line}\n" in script, (line, script)
    assert "OMP_NUM_THREADS" in script


# ---------------------------------------------------------------------------------------------------
# submitit's local executor: tasks as local processes


def test_a_task_trains_its_run_records_its_job_and_the_measurement_job_follows(tmp_path, local_executor, capsys):
    args = ["figure_mixing", "--scale", "smoke", "--launcher", "slurm", "--wait", "--out", str(tmp_path), *TINY]
    assert reproduce_main(args) == 0
    printed = capsys.readouterr().out
    assert "1 run(s) to submit" in printed and "the measurements and tables of figure_mixing" in printed
    result, = (json.loads(path.read_text()) for path in (tmp_path / "results" / "figure_mixing").rglob("*.json")
               if not path.name.startswith("measurement"))
    job = result["summary"]["provenance"]["job"]
    assert job["cluster"] == "local" and (tmp_path / "slurm" / job["job_id"] / "submission.json").exists()
    assert (tmp_path / "figures" / "smoke" / "figure_mixing.png").exists()  # the measurement job's work
    assert len(list((tmp_path / "results" / "figure_mixing" / "smoke").glob("measurement-*.json"))) == 1


@pytest.mark.slow
def test_a_preempted_task_is_requeued_and_resumes_its_run_where_it_stopped(tmp_path, local_executor):
    settings = tiny_settings(tmp_path, epochs=8)
    run = artifacts.ARTIFACTS["table2"].runs(settings)[0]
    executor = slurm.make_executor(tmp_path / "slurm" / "%A", slurm.SlurmOptions(), "preempted")
    reference = executor.submit(slurm.TrainRuns(), [run], tmp_path / "uninterrupted")
    job = executor.submit(slurm.TrainRuns(), [run], tmp_path)
    last = run.run_dir(tmp_path) / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 600
    while not last.exists():  # the first epoch's checkpoint
        assert time.monotonic() < deadline and not job.done(), job.stdout()
        time.sleep(0.2)
    task, = children(job._process.pid)  # the local executor's task process, under its controller
    os.kill(task, slurm_preemption_signal())  # as Slurm signals a job it preempts or that nears its limit
    assert job.result() == ["done"] and reference.result() == ["done"]
    log = job.stdout()
    resumed_after = [int(line.split("after epoch ")[1]) for line in log.splitlines() if line.startswith("resuming ")]
    assert "this job is preempted" in job.stderr() + log and len(resumed_after) == 1, log
    assert 1 <= resumed_after[0] < 8
    # the resumed run is the uninterrupted one, to the last bit of every epoch's numbers
    results = [runner.find_result(run, out) for out in (tmp_path, tmp_path / "uninterrupted")]
    numbers = [[{k: v for k, v in epoch.items() if "time" not in k and "per_s" not in k} for epoch in result["history"]]
               for result in results]
    assert len(numbers[0]) == 8 and numbers[0] == numbers[1]


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def slurm_preemption_signal() -> int:
    from submitit.core.job_environment import JobEnvironment

    return JobEnvironment._usr_sig()


# ---------------------------------------------------------------------------------------------------
# A real Slurm on localhost (.ci/slurm-localhost, which .ci/run starts)


def slurm_unavailable() -> str | None:
    """Why the real-Slurm test cannot run here, or None when the localhost cluster answers."""
    status = subprocess.run(["bash", str(START_SCRIPT), "status"], capture_output=True, text=True, timeout=60)
    return None if status.returncode == 0 else status.stdout.strip()


@pytest.mark.slurm
def test_table1_through_a_real_slurm_matches_the_local_launcher(tmp_path):
    pytest.importorskip("submitit", reason=f"the Slurm launcher's extra is not installed: {slurm.INSTALL_HINT}")
    reason = slurm_unavailable()
    if reason:
        pytest.skip(f"no Slurm on localhost to test with: {reason}")
    env = dict(os.environ, PYTHONPATH=str(REPOSITORY), OMP_NUM_THREADS="1")  # the same threads in both launchers
    on_slurm, here = tmp_path / "slurm-out", tmp_path / "local-out"
    command = ["table1", "--scale", "smoke", "--seeds", "0", *TINY]
    submission = subprocess.Popen(cli(*command, "--launcher", "slurm", "--slurm-cpus", "1", "--wait",
                                      "--out", str(on_slurm)), cwd=REPOSITORY, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
    try:
        # A second submission while the first is queued submits nothing: every run is queued or being trained.
        # With --wait it waits for the runs it needs, queued by the first, and only then writes the table.
        deadline = time.monotonic() + 300
        while not list(on_slurm.glob("slurm/*/submission.json")):
            assert submission.poll() is None and time.monotonic() < deadline, submission.stdout.read()
            time.sleep(1)
        again = subprocess.run(cli(*command, "--launcher", "slurm", "--wait", "--out", str(on_slurm)), cwd=REPOSITORY,
                               env=env, capture_output=True, text=True, timeout=1800)
        assert again.returncode == 0, again.stderr
        total = 3 * len(methods.available())
        assert "0 run(s) to submit (not submitted:" in again.stdout, again.stdout
        assert f"{total} of {total} runs done" in again.stdout, again.stdout
        printed, _ = submission.communicate(timeout=1800)
    finally:
        if submission.poll() is None:
            submission.kill()
    assert submission.returncode == 0, printed
    job_id = json.loads(next(on_slurm.glob("slurm/*/submission.json")).read_text())["job_id"]
    assert f"submitted job {job_id}: {total} task(s)" in printed and f"{total} of {total} runs done" in printed

    results = [json.loads(path.read_text()) for path in (on_slurm / "results" / "table1" / "smoke").glob("*.json")]
    jobs = [result["summary"]["provenance"]["job"] for result in results]
    assert {job["array_job_id"] for job in jobs} == {job_id} and {job["cluster"] for job in jobs} == {"slurm"}
    assert sorted(int(job["array_task_id"]) for job in jobs) == list(range(total))  # one run per task
    assert len(list((on_slurm / "slurm" / job_id).glob("*_log.out"))) == total

    local = subprocess.run(cli(*command, "--out", str(here)), cwd=REPOSITORY, env=env, capture_output=True,
                           text=True, timeout=1800)
    assert local.returncode == 0, local.stderr
    for table in ("table1.md", "table1.tex"):
        assert (on_slurm / "tables" / "smoke" / table).read_text() == (here / "tables" / "smoke" / table).read_text()


@pytest.mark.slurm
def test_a_partly_cancelled_array_resubmits_what_was_cancelled_and_a_refused_job_leaves_nothing(tmp_path):
    """Issue 30: after `scancel JOB_[20-29]` the same command submitted nothing while the rest of the array ran;
    an unknown partition was a 38-line traceback that left a .pkl behind."""
    pytest.importorskip("submitit", reason=f"the Slurm launcher's extra is not installed: {slurm.INSTALL_HINT}")
    reason = slurm_unavailable()
    if reason:
        pytest.skip(f"no Slurm on localhost to test with: {reason}")
    env = dict(os.environ, PYTHONPATH=str(REPOSITORY), OMP_NUM_THREADS="1")
    out = tmp_path / "out"
    command = cli("table1", "--scale", "smoke", "--seeds", "0", *TINY, "--launcher", "slurm", "--slurm-cpus", "1",
                  "--out", str(out))
    run = lambda *more: subprocess.run([*command, *more], cwd=REPOSITORY, env=env, capture_output=True,  # noqa: E731
                                       text=True, timeout=300)
    for more, said in [(["--slurm-partition", "nosuch"], "--slurm-partition nosuch: no such partition on this "
                                                          "cluster; its partitions: debug"),
                       (["--slurm-mem", "100000"], "sbatch refused the job: Memory specification can not be satisfied")]:
        refused = run(*more)
        assert refused.returncode == 2 and refused.stderr.strip() == f"error: {said}", refused.stderr
        assert not (out / "slurm").exists() or not any((out / "slurm").iterdir())  # nothing left behind
    first = run("--slurm-parallelism", "1")  # one task at a time: the last ten are still pending below
    assert first.returncode == 0, first.stderr
    job_id = json.loads(next(out.glob("slurm/*/submission.json")).read_text())["job_id"]
    resubmitted = None
    try:
        subprocess.run(["scancel", f"{job_id}_[20-29]"], check=True, timeout=60)
        time.sleep(2)
        again = run()
        assert again.returncode == 0, again.stderr
        assert "10 run(s) to submit (not submitted: " in again.stdout and " queued)" in again.stdout, again.stdout
        resubmitted = again.stdout.split("submitted job ")[1].split(":")[0]
        keys = json.loads((out / "slurm" / resubmitted / "submission.json").read_text())["keys"]
        cancelled = json.loads((out / "slurm" / job_id / "submission.json").read_text())["keys"][20:]
        assert keys == cancelled  # exactly the cancelled tasks' runs
    finally:
        subprocess.run(["scancel", job_id, *([resubmitted] if resubmitted else [])], timeout=60)
