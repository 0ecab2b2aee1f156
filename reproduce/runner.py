"""Run each training run of an artifact once: cached by a hash of its config, resumable, and safe to
run from several processes side by side (one per GPU), each taking the runs no other process holds.

Layout under the output folder (the repository by default):
    runs/<scale>/<key>/              the trainer's run folder (checkpoints, logs); never committed
    results/<artifact>/<scale>/<name>-<key>.json   what the tables are made from, with provenance
The key hashes everything that changes the numbers, the device type and precision included (not where
data lies), so an artifact that asks for a run another artifact already made finds it done, and a CPU fp32
result is never taken for a GPU bf16 one. A result stored before a config key was added is still found:
its stored config, read with today's defaults, gives today's key (`find_result`).
"""

import contextlib
import fcntl
import functools
import hashlib
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from catchup_mix.checkpoint import checkpoint_identity, write_json
from catchup_mix.config import ConfigError, make_config, resolve_runtime, to_dict

# Config keys that say where or how a run executes, not what it computes: left out of the key.
NOT_IN_KEY = ("output_dir", "data_root", "download", "compile", "log_every")
# Keys that only add observations to the logs, never change the weights: in the key only when set, so a run
# without them keeps the key (and run folder) it had before they existed, and one with them is its own run.
OBSERVATIONS = {"filter_probe": 0, "lagging_threshold": 0.1}


def run_key(values: dict) -> str:
    """Hash of the fully resolved config (defaults, device type and precision included), so a changed
    default or another precision is a new run."""
    resolved = to_dict(resolve_runtime(make_config(values)))
    identity = {k: v for k, v in resolved.items()
                if k not in NOT_IN_KEY and not (k in OBSERVATIONS and v == OBSERVATIONS[k])}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Run:
    artifact: str
    scale: str  # "smoke" or "paper"
    labels: dict  # what the run stands for in the artifact, e.g. {"model": ..., "method": ...}
    config: dict  # config values (see catchup_mix.config.Config), without seed and output_dir
    seed: int

    @functools.cached_property  # resolving the config builds a meta-device model: once per run is enough
    def key(self) -> str:
        return run_key({**self.config, "seed": self.seed})

    @property
    def name(self) -> str:
        """Readable and safe as a file name on any system: labels joined, odd characters made '_'."""
        labels = "-".join(str(v) for v in self.labels.values())
        return re.sub(r"[^A-Za-z0-9._-]+", "_", labels).strip("_") + f"-seed{self.seed}"

    def command(self, out: Path) -> str:
        """The equivalent plain training command, for --dry-run and for the record."""
        values = {**self.config, "seed": self.seed, "output_dir": str(self.run_dir(out))}
        pairs = " ".join(f"{k}={_shell_value(v)}" for k, v in values.items())
        return f"python -m catchup_mix train --resume --set {pairs}"

    def run_dir(self, out: Path) -> Path:
        return out / "runs" / self.scale / self.key

    def result_path(self, out: Path) -> Path:
        return out / "results" / self.artifact / self.scale / f"{self.name}-{self.key}.json"


def execute(run: Run, out: Path, measurement=None, provenance: dict | None = None) -> dict | None:
    """The run's result, training it first if needed; None if another process is training or measuring it.

    measurement: an artifact's per-run measurement (e.g. evidence.Measurement): `measurement.missing(result)`
    names the parts the result lacks, `measurement(run, result_path, checkpoint)` measures and stores them in
    the result file. It runs right after training, under the same lock, in the same process; a result whose
    run folder is gone (results are committed, runs/ is not) is trained again first, and says so.
    provenance: what the launcher adds to a new result's provenance (a Slurm task: its job).
    """
    result = find_result(run, out)
    if result is not None and not (measurement and measurement.missing(result)):
        return result
    run_dir = run.run_dir(out)
    with _exclusive(run_dir) as mine:
        if not mine:
            print(f"[{run.artifact}] {run.name}: being trained or measured by another process, skipped here",
                  flush=True)
            return None
        result_path = result_file(run, out)  # again under the lock: another process may have just written it
        if result_path is None:
            result_path = run.result_path(out)
            summary_path = run_dir / "summary.json"
            if summary_path.exists():
                summary = json.loads(summary_path.read_text())
            else:
                print(f"[{run.artifact}] {run.name}: training ({run_dir})", flush=True)
                summary = _train(run, run_dir)
            history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            if provenance:
                summary["provenance"] = {**summary["provenance"], **provenance}
            write_json(result_path, {"artifact": run.artifact, "scale": run.scale, "labels": run.labels,
                                     "seed": run.seed, "key": run.key, "summary": summary, "history": history})
        if measurement is not None and measurement.missing(json.loads(result_path.read_text())):
            _one_thread_if_repeatable(run)  # measured on as many threads as trained: the same numbers anywhere
            measurement(run, result_path, _trained_checkpoint(run, run_dir))
        return json.loads(result_path.read_text())


def missing_extras(runs: list[Run]) -> list[str]:
    """The optional packages the runs' methods need and this machine lacks, each with its install command."""
    from catchup_mix import methods

    return sorted({need for run in runs
                   for need in methods.missing_extras(run.config["method"], run.config.get("method_options", {}))})


def held_by_another_process(run: Run, out: Path) -> bool:
    """Whether a live process holds the run's folder now (is training it)."""
    if not run.run_dir(out).exists():
        return False
    with _exclusive(run.run_dir(out)) as mine:
        return not mine


def checkpoint(run: Run, out: Path) -> Path:
    """The finished run's last checkpoint, for artifacts that measure trained models. A run whose result
    was found without its run folder (results are committed, runs/ is not) is trained again into it; where
    its weights are not those the result recorded, the output says so."""
    run_dir = run.run_dir(out)
    if not (run_dir / "summary.json").exists():
        with _exclusive(run_dir) as mine:
            if not mine:
                raise RuntimeError(f"{run.name} is being trained by another process in {run_dir}: run this "
                                   "again when it has finished")
            _trained_checkpoint(run, run_dir)
    path = run_dir / "checkpoints" / "last.pt"
    recorded = (find_result(run, out) or {}).get("summary", {}).get("weights")
    if recorded and (here := checkpoint_identity(path)["weights"]) != recorded:
        print(f"[{run.artifact}] {run.name}: the checkpoint's weights ({here}) are not those of the stored result "
              f"({recorded}): what is measured now belongs to these weights, not to the result's training numbers",
              flush=True)
    return path


def _trained_checkpoint(run: Run, run_dir: Path) -> Path:
    """The run's last checkpoint, training the run again (the caller holds its lock) if its folder is gone."""
    if not (run_dir / "summary.json").exists():
        print(f"[{run.artifact}] {run.name}: result found but no checkpoint, training it again to measure it "
              f"({run_dir}); the measurement records this checkpoint's own provenance (on a GPU the retrained "
              "model is not bitwise the one the result was made with)", flush=True)
        _train(run, run_dir)
    return run_dir / "checkpoints" / "last.pt"


# The committed CPU results (smoke and the medium scales) are made on one torch thread: with several, how a reduction
# is split over threads sets its summation order, so the last bits, and after many steps the weights, depend
# on the machine's core count (docs/evidence.md, "Repeatability").
ONE_THREAD_SCALES = ("smoke", "medium", "medium_wd")


def _one_thread_if_repeatable(run: Run) -> None:
    import torch

    if run.scale in ONE_THREAD_SCALES and resolve_runtime(make_config(run.config)).device == "cpu":
        torch.set_num_threads(1)


def _train(run: Run, run_dir: Path) -> dict:
    from catchup_mix.train import train

    _one_thread_if_repeatable(run)
    return train(make_config({**run.config, "seed": run.seed, "output_dir": str(run_dir)}), resume=True)


def find_result(run: Run, out: Path) -> dict | None:
    """The run's stored result (see `result_file`), or None."""
    path = result_file(run, out)
    return None if path is None else json.loads(path.read_text())


def result_file(run: Run, out: Path) -> Path | None:
    """The file of the run's stored result, or None: the file of its key, or a file of the same run name whose
    stored config gives the same key today (written before a config key with a neutral default was added)."""
    path = run.result_path(out)
    if path.exists():
        return path
    for candidate in sorted(path.parent.glob(f"{run.name}-*.json")):
        result = json.loads(candidate.read_text())
        try:
            if run_key(result["summary"]["config"]) == run.key:
                return candidate
        except (ConfigError, KeyError):  # a key that no longer exists, or not a run result
            continue
    return None


@contextlib.contextmanager
def _exclusive(folder: Path):
    """Yield True while this process holds the folder's lock, False if another process holds it.

    flock is released by the kernel when a process dies, so a crashed run never leaves a stale lock. A folder
    made here for a run whose start is refused (a missing dataset) is removed again: nothing is left behind.
    """
    created = [path for path in (folder, *folder.parents) if not path.exists()]  # deepest first
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        except BaseException:
            if created and [path.name for path in folder.iterdir()] == [".lock"]:
                (folder / ".lock").unlink()
                for path in created:  # the run's folder, and the folders above it made for it, if left empty
                    if any(path.iterdir()):
                        break
                    path.rmdir()
            raise
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _shell_value(value) -> str:
    """How --set reads it back: JSON where it parses, else a plain string."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except json.JSONDecodeError:
            return shlex.quote(value)
    return shlex.quote(json.dumps(value, separators=(",", ":")))
