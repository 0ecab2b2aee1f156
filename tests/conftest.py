"""Data fixtures: the real image data that ships beside the project on some machines."""

import subprocess
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
UNPACKED = Path("/tmp/catchup-mix-shared-data")


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real data (CIFAR-10 JPEG copy, Tiny-ImageNet part 1), unpacked once outside the repository.

    Skips when <repo>/../shared/data is absent. The unpack script checks checksums and is idempotent.
    """
    if not (SHARED_DATA / "unpack").is_file():
        pytest.skip(f"no real data at {SHARED_DATA}")
    subprocess.run([str(SHARED_DATA / "unpack"), str(UNPACKED)], check=True, capture_output=True)
    return UNPACKED


@pytest.fixture(autouse=True)
def one_reproduce_worker(monkeypatch):
    """`python -m reproduce` called in-process trains in this process only: tests patch the smoke settings,
    which the worker processes --workers starts would not see. A test of --workers passes it explicitly."""
    import reproduce.__main__

    monkeypatch.setattr(reproduce.__main__, "default_workers", lambda scale, overrides: 1)
