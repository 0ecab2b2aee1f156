"""Atomic writes and checked reads: an interrupted run never leaves a half-written file behind; measurements
merged part by part, so none overwrites another."""

import hashlib
import json
import os
import secrets
import zipfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; nothing was overwritten."""


def atomic_write(path: str | Path, write) -> None:
    """Call write(file_object) on a temporary file beside `path`, then rename it over `path`.

    The rename is atomic on POSIX and Windows, so readers see the old file or the new one, never a
    partial one, even if the process dies mid-write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name, created exclusively with mode 0666 so the process umask gives it a normal file's
    # permissions (mkstemp would make it private, 0600).
    temporary = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, value: Any) -> None:
    atomic_write(path, lambda file: file.write((json.dumps(value, indent=2) + "\n").encode()))


def check_writable(folder: str | Path) -> None:
    """Fail now, not after hours of work, when `folder` cannot be created or written to: an OSError whose
    message names the folder and the fix. Nothing is created: a folder that does not exist yet is checked
    through the nearest one that does, so a start refused later (a missing dataset) leaves nothing behind."""
    folder = Path(folder)
    existing = next(path for path in (folder.absolute(), *folder.absolute().parents) if path.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, f"{existing} is a file")
        probe = existing / f".write-test.{secrets.token_hex(4)}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        why = error.strerror or error
        if folder.is_dir():  # it exists: say so, or "No such file or directory" would point the wrong way
            why = f"the folder exists, but no file can be created in it: {why}"
        raise OSError(f"cannot write to {folder} ({why}): choose another output folder (--out) or make this one "
                      "writable") from None


def weights_fingerprint(model_state: dict) -> str:
    """A short hash of a model's state (weights and buffers, names, dtypes, shapes): the identity of what a
    measurement measured. Equal states give equal fingerprints on any machine; one changed bit changes it."""
    digest = hashlib.sha256()
    for name in sorted(model_state):
        tensor = model_state[name].detach().cpu().contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def checkpoint_identity(path: str | Path) -> dict:
    """{"epoch", "weights"} of a checkpoint: the weights' fingerprint, with the epoch that made them."""
    state = load_checkpoint(path)
    return {"epoch": state["epoch"], "weights": weights_fingerprint(state["model"])}


class MeasurementFile:
    """Measurements of one model in a JSON file, merged part by part: data[field][part][settings key] holds
    one entry. Measuring a part again with the same settings replaces only that entry; other parts, and the
    same part measured with other settings, stay. `put` rewrites the file atomically, so a measurement that
    is interrupted keeps every part that finished before.

    A measurement belongs to the weights it measured: an entry's "checkpoint" holds their identity
    (`checkpoint_identity`), `get(..., weights=)` finds only an entry of those weights, and an entry of other
    weights that `put` replaces is kept apart, under "replaced", never shown as the new weights' numbers."""

    def __init__(self, path: str | Path, field: str = "parts"):
        self.path, self.field = Path(path), field
        self.data = {}
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
            except json.JSONDecodeError as error:
                raise CheckpointError(f"{self.path} is not valid JSON ({error}); it was left untouched: move it "
                                      "away, or write elsewhere (--out)") from None

    def get(self, part: str, key: str, weights: str | None = None) -> dict | None:
        """The entry of (part, settings key); with `weights`, only if it measured those weights."""
        entry = self.data.get(self.field, {}).get(part, {}).get(key)
        return None if entry is None or (weights is not None and measured_weights(entry) != weights) else entry

    def put(self, part: str, key: str, entry: dict, **header) -> None:
        """Store `entry` for (part, key), update the file's top-level `header` fields, and write."""
        old = self.get(part, key)
        if old is not None and measured_weights(old) != measured_weights(entry):
            self.data.setdefault("replaced", []).append({"part": part, "settings_key": key, **old})
        self.data.update(header)
        self.data.setdefault(self.field, {}).setdefault(part, {})[key] = entry
        write_json(self.path, self.data)


def measured_weights(entry: dict) -> str | None:
    """The fingerprint of the weights a stored entry measured; None for an entry stored before they were recorded."""
    return entry.get("checkpoint", {}).get("weights")


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    atomic_write(path, lambda file: file.write("".join(json.dumps(row) + "\n" for row in rows).encode()))


def save_checkpoint(path: str | Path, state: dict) -> None:
    atomic_write(path, lambda file: torch.save(state, file))


def load_checkpoint(path: str | Path, map_location="cpu",
                    fix: str = "point at a run's checkpoints/last.pt or best.pt") -> dict:
    """Load a checkpoint written by `save_checkpoint`, with a clear error when it is unusable; `fix` is what
    the error tells the user to do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        # weights_only: a checkpoint holds tensors, numbers, strings and containers, nothing to execute.
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        # torch's own text runs to paragraphs (about weights_only); say what the file is instead
        what = ("not a checkpoint, or a truncated one (not a complete file written by torch.save)"
                if not zipfile.is_zipfile(path) else
                f"a corrupt or foreign checkpoint ({type(error).__name__}: {str(error).strip()[:100]})")
        raise CheckpointError(f"{path} is {what}; it was left untouched: {fix}") from None
    missing = {"model", "config", "epoch"} - set(state) if isinstance(state, dict) else {"model"}
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {sorted(missing)}: it was not written by catchup_mix")
    return state
