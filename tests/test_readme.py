"""The README's commands and code run as written."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
README = (REPOSITORY / "README.md").read_text()


def fenced_blocks(heading: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced block in the README section under `heading`."""
    section = README.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w*)\n(.*?)```", section, flags=re.S)


def test_quick_start_is_two_commands_and_ci_runs_the_test_command():
    (language, code), = fenced_blocks("Quick start")
    commands = [line for line in code.splitlines() if line.strip()]
    assert language == "bash" and len(commands) == 2
    smoke, tests = commands
    assert "reproduce -- table1 --scale smoke" in smoke
    assert tests == "python3 -m nox -s tests"
    assert tests in (REPOSITORY / ".ci" / "run").read_text()


def test_own_training_loop_example_runs_as_written(capsys):
    (language, code), = fenced_blocks("Use Catch-up Mix in your own training loop")
    assert language == "python"
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and all(line.startswith("step ") for line in printed)
    assert namespace["mixed"].shape == namespace["features"].shape
    assert namespace["resnet"].num_hook_points == 5


def test_add_your_own_method_example_runs_and_joins_the_registry(capsys, monkeypatch):
    from catchup_mix import methods

    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))  # the example registers a method
    (language, code), = fenced_blocks("Add your own method")
    assert language == "python" and len(code.splitlines()) <= 30
    exec(compile(code, "README.md", "exec"), {})
    assert "flip_mix" in methods.available()
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("lam ") and printed.endswith("targets sum to [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]")


@pytest.mark.slow
def test_train_and_evaluate_commands_run_as_written(tmp_path):
    (language, code), = fenced_blocks("Train and evaluate")
    assert language == "bash"
    env = dict(os.environ, PYTHONPATH=str(REPOSITORY))
    outputs = []
    for line in code.splitlines():
        command = shlex.split(line)
        assert command[:3] == ["python", "-m", "catchup_mix"]
        result = subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        outputs.append(result.stdout)
    assert "done: top-1 last" in outputs[0] and "nothing to do" in outputs[1]
    summary = json.loads((tmp_path / "runs" / "readme" / "summary.json").read_text())
    evaluation = json.loads(outputs[2])
    assert summary["epochs"] == 2 and evaluation["top1"] == pytest.approx(summary["last_top1"])


def test_artifact_table_quotes_the_gpu_hours_the_code_computes():
    from reproduce.__main__ import ASSUMED_TFLOPS, paper_cost
    from reproduce.artifacts import ARTIFACTS

    section = README.split("\n## Reproduce the paper\n", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| `python -m reproduce (\w+) --scale \w+` \|[^|]*\| ([^|]*) \|", section, flags=re.M)
    quoted = {name: cost.strip() for name, cost in rows}
    assert set(quoted) == set(ARTIFACTS)
    for name, cost in quoted.items():
        expected = paper_cost(name)
        assert cost == expected if expected is not None else cost.startswith("CPU"), (name, cost, expected)
    assert f"assumed {ASSUMED_TFLOPS} TFLOP/s" in section
