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


def section(heading: str, page: str = "README.md") -> str:
    """The text of a page's `## heading` section (README.md, or a docs/ page)."""
    return (REPOSITORY / page).read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def fenced_blocks(heading: str, page: str = "README.md") -> list[tuple[str, str]]:
    """(language, code) of each fenced block in a page's section under `heading`."""
    return re.findall(r"```(\w*)\n(.*?)```", section(heading, page), flags=re.S)


def test_quick_start_is_two_commands_and_ci_runs_the_test_command():
    (language, code), = fenced_blocks("Quick start")
    commands = [line for line in code.splitlines() if line.strip()]
    assert language == "bash" and len(commands) == 2
    smoke, tests = commands
    assert "reproduce -- table1 --scale smoke" in smoke
    assert tests == "python3 -m nox -s tests"
    assert tests in (REPOSITORY / ".ci" / "run").read_text()


def test_own_training_loop_examples_run_as_written(capsys):
    (language, code), = fenced_blocks("Use it in your own code")  # the README's shortest snippet
    assert language == "python"
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and all(line.startswith("step ") for line in printed)
    (language, code), = fenced_blocks("Use Catch-up Mix in your own training loop", "docs/api.md")  # the full one
    namespace = {}
    exec(compile(code, "docs/api.md", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and all(line.startswith("step ") for line in printed)
    assert namespace["mixed"].shape == namespace["features"].shape
    assert namespace["resnet"].num_hook_points == 5


def test_add_your_own_method_example_runs_and_joins_the_registry(capsys, monkeypatch):
    from catchup_mix import methods

    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))  # the example registers a method
    (language, code), = fenced_blocks("Add your own method", "docs/api.md")
    assert language == "python" and len(code.splitlines()) <= 30
    exec(compile(code, "docs/api.md", "exec"), {})
    assert "flip_mix" in methods.available()
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("lam ") and printed.endswith("targets sum to [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]")


@pytest.mark.slow
def test_train_and_evaluate_commands_run_as_written(tmp_path):
    (language, code), = fenced_blocks("Train and evaluate", "docs/training.md")
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


def test_artifact_table_quotes_the_hours_the_code_computes():
    from reproduce.__main__ import ASSUMED_TFLOPS, cpu_cost, paper_cost
    from reproduce.artifacts import ARTIFACTS, CPU_SCALES

    text = section("Reproduce the paper")
    rows = re.findall(r"^\| `python -m reproduce (\w+) --scale (\w+)` \|[^|]*\| ([^|]*) \|", text, flags=re.M)
    quoted = {(name, scale): cost.strip() for name, scale, cost in rows}
    expected = {(name, "paper"): paper_cost(name) for name, artifact in ARTIFACTS.items() if "paper" in artifact.scales}
    expected |= {(name, scale): cpu_cost(name, scale) for name, artifact in ARTIFACTS.items()
                 for scale in artifact.scales if scale in CPU_SCALES}
    assert quoted == expected
    assert f"assumed {ASSUMED_TFLOPS} TFLOP/s" in text


def test_readme_is_short_and_every_relative_link_resolves():
    """Issue 29: a README a researcher reads in five minutes, the rest one click away in docs/, no dead link."""
    assert len(README.splitlines()) <= 250
    pages = [REPOSITORY / "README.md", *sorted((REPOSITORY / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code is not linked
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):  # https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            destination = page if not file else (page.parent / file).resolve()
            if not destination.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and destination.suffix == ".md" and anchor not in heading_anchors(destination):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken
    assert {page.name for page in pages} >= {"api.md", "training.md", "baselines.md", "robustness.md", "analysis.md",
                                             "cluster.md", "benchmarks.md", "development.md", "evidence.md"}


def heading_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation but - and _ dropped, spaces as -."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    headings = re.findall(r"^#{1,6} (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def test_every_number_in_the_evidence_findings_is_in_a_table_made_from_the_committed_results():
    """The README's findings are written by hand: each number in them must be one the evidence tables, which a
    script makes from results/ (tests/test_evidence.py regenerates them and compares), print."""
    tables = "".join((REPOSITORY / "tables" / name).read_text() for name in ("evidence.md", "medium_wd/evidence.md")
                     if (REPOSITORY / "tables" / name).exists())
    text = section("What the evidence shows")
    numbers = re.findall(r"[+-]?\d+\.\d+", re.sub(r"\]\([^)]*\)", "]", text))
    assert numbers and [number for number in numbers if number not in tables] == []


def test_citation_names_the_paper_everywhere_alike():
    citation = (REPOSITORY / "CITATION.cff").read_text()
    bibtex = section("Citation")
    for fact in ("10.1609/aaai.v38i3.28049", "Catch-Up Mix: Catch-Up Class for Struggling Filters in CNN", "2705"):
        assert fact in citation and fact in bibtex
    assert "license: MIT" in citation and "MIT License" in (REPOSITORY / "LICENSE").read_text()
    assert 'license = { text = "MIT" }' in (REPOSITORY / "pyproject.toml").read_text()
