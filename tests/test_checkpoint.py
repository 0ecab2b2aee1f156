"""Atomic writes: normal file modes, nothing left behind, the process umask untouched."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from catchup_mix.checkpoint import atomic_write, write_json

REPOSITORY = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_atomic_write_gives_the_mode_the_umask_allows_and_leaves_no_temporary(tmp_path, umask):
    previous = os.umask(umask)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})

    def fail(file):
        file.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "a.json", fail)
    assert (tmp_path / "a.json").read_text() == '{\n  "x": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_importing_the_module_leaves_the_process_umask_alone():
    code = "import os; os.umask(0o077); import catchup_mix.checkpoint; print(oct(os.umask(0)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPOSITORY, check=True)
    assert out.stdout.strip() == "0o77"
