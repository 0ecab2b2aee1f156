"""Where a number came from: code version, software, hardware."""

import functools
import os
import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

REPOSITORY = Path(__file__).resolve().parent.parent


@functools.cache  # asked once per process: the code a long process runs is what it loaded at its start
def git_state() -> dict:
    """The commit of the checkout that holds this package and whether it has uncommitted changes. Without a
    checkout (the Docker image leaves .git out), the commit the image was built from, which its build records
    in CATCHUP_MIX_COMMIT (`docker build --build-arg CATCHUP_MIX_COMMIT=$(git rev-parse HEAD) ...`)."""

    def git(*args):
        return subprocess.run(
            ["git", "-C", str(REPOSITORY), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        built_from = os.environ.get("CATCHUP_MIX_COMMIT", "").strip()
        return {"commit": built_from or "unknown", "dirty": None}
    return {"commit": commit, "dirty": dirty}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU {cpu_model()} ({platform.machine()}), {torch.get_num_threads()} threads"


@functools.cache
def cpu_model() -> str:
    """The CPU's model name where the system says it (Linux), else the architecture: CPU results repeat bit
    for bit only on the same kind of CPU (docs/evidence.md)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def collect(device: torch.device, world_size: int = 1) -> dict:
    import numpy
    import torchvision

    from . import __version__

    return {
        **git_state(),
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "device": device_name(device),
        "world_size": world_size,
        "command": " ".join(sys.argv),
        "versions": {
            "catchup_mix": __version__,
            "python": platform.python_version(),
            "torch": str(torch.__version__),
            "torchvision": torchvision.__version__,
            "numpy": numpy.__version__,
        },
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def describe(info: dict) -> str:
    """One line for printed results: commit, dirty flag and device."""
    commit = info.get("commit", "unknown")[:10]
    dirty = "+dirty" if info.get("dirty") else ""
    return f"commit {commit}{dirty}, {info.get('device', '?')}"
