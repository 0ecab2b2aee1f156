"""requirements-lock.txt is the one set of versions; environment.yml, the Dockerfile and .ci/run repeat
or use it and must agree with it, and it must pin everything pyproject.toml asks for.

`problems(root)` collects every disagreement in a checkout; the real repository must have none, and
each check is shown to fire on a copy with one deliberate mistake (so none of them can pass vacuously).
Plain-text parsing throughout: no PyYAML, no Dockerfile parser.
"""

import importlib.metadata
import re
import shutil
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ (the lock is for 3.11)")

ROOT = Path(__file__).resolve().parents[1]
FILES = ("requirements-lock.txt", "environment.yml", "Dockerfile", "pyproject.toml", ".ci/run")
PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.+!_-]*)")
BASE_IMAGE = re.compile(r"^FROM\s+pytorch/pytorch:(?P<torch>[0-9.]+)-cuda[0-9.]+-cudnn\d+-runtime\s*$", re.M)


def code_lines(text: str) -> list[str]:
    """Lines without comments (whole-line and trailing ` # ...`) or surrounding blanks; empty ones dropped."""
    lines = (re.sub(r"(^|\s)#.*", "", line).strip() for line in text.splitlines())
    return [line for line in lines if line]


def lock_pins(text: str, problems: list[str]) -> dict[str, str]:
    pins = {}
    for line in code_lines(text):
        match = PIN.fullmatch(line)
        if not match:
            problems.append(f"requirements-lock.txt: {line!r} is not an exact `name==version` pin")
            continue
        name = canonicalize_name(match[1])
        if name in pins:
            problems.append(f"requirements-lock.txt: {name} pinned twice")
        pins[name] = match[2]
    return pins


def conda_pip_entries(text: str) -> list[str]:
    """The entries of the `- pip:` list in environment.yml."""
    entries, indent = [], None
    for line in text.splitlines():
        stripped = re.sub(r"(^|\s)#.*", "", line).rstrip()
        if indent is None:
            if re.fullmatch(r"\s*-\s*pip:", stripped):
                indent = len(line) - len(line.lstrip())
        elif stripped:
            if len(line) - len(line.lstrip()) <= indent:
                break
            entries.append(stripped.strip().removeprefix("-").strip())
    return entries


def pins_in(entries: list[str]) -> dict[str, str]:
    return {canonicalize_name(m[1]): m[2] for entry in entries for m in PIN.finditer(entry)}


def direct_dependencies(pyproject: dict) -> list[Requirement]:
    project = pyproject["project"]
    extras = project.get("optional-dependencies", {}).values()
    return [Requirement(r) for r in [*project["dependencies"], *(r for extra in extras for r in extra)]]


def unpinned_dependencies(pins: dict[str, str], roots: list[Requirement]) -> list[str]:
    """Packages that `roots` need, directly or through what is installed here, and the lock lacks.

    Walks the installed distributions' metadata; what is not installed (another platform's wheels) ends
    the walk there."""
    missing, seen, todo = [], set(), [(r, r.extras) for r in roots]
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        if name not in pins:
            missing.append(name)
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for dependency in map(Requirement, requires):
            marker = dependency.marker
            if marker is None or any(marker.evaluate({"extra": e}) for e in ["", *extras]):
                todo.append((dependency, dependency.extras))
    return sorted(missing)


def problems(root: Path) -> list[str]:
    found: list[str] = []
    lock = lock_pins((root / "requirements-lock.txt").read_text(), found)
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())

    # The lock pins every dependency of pyproject.toml, within pyproject's ranges, and their dependencies.
    direct = direct_dependencies(pyproject)
    for req in direct:
        version = lock.get(canonicalize_name(req.name))
        if version is None:
            found.append(f"requirements-lock.txt: {req.name} (from pyproject.toml) is not pinned")
        elif not req.specifier.contains(version, prereleases=True):
            found.append(f"requirements-lock.txt: {req.name}=={version} is outside pyproject's {req}")
    found += [f"requirements-lock.txt: {name} is installed as a dependency but not pinned"
              for name in unpinned_dependencies(lock, direct) if name not in {r.name for r in direct}]

    # environment.yml: python within requires-python, the lock as constraints, same pins, all direct deps.
    conda_text = (root / "environment.yml").read_text()
    python = re.search(r"^\s*-\s*python\s*=\s*([0-9.]+)\s*$", conda_text, re.M)
    if not python or not SpecifierSet(pyproject["project"]["requires-python"]).contains(python[1] + ".0"):
        found.append("environment.yml: no `- python=X.Y` within pyproject's requires-python")
    entries = conda_pip_entries(conda_text)
    for needed in ("-c requirements-lock.txt", "-e ."):
        if needed not in entries:
            found.append(f"environment.yml: `{needed}` missing from the pip: list")
    conda = pins_in(entries)
    found += [f"environment.yml: {r.name} is not pinned" for r in direct if canonicalize_name(r.name) not in conda]

    # Dockerfile: base image with the lock's torch, the lock as constraints, same pins.
    docker_text = "\n".join(code_lines((root / "Dockerfile").read_text()))
    base = BASE_IMAGE.search(docker_text)
    if base is None:
        found.append("Dockerfile: base image is not pytorch/pytorch:<torch>-cuda<X.Y>-cudnn<N>-runtime")
    elif base["torch"] != lock.get("torch"):
        found.append(f"Dockerfile: base image has torch {base['torch']}, the lock {lock.get('torch')}")
    if "requirements-lock.txt" not in docker_text:
        found.append("Dockerfile: does not install with requirements-lock.txt")
    docker = pins_in(docker_text.splitlines())

    # .ci/run installs nox with the lock as constraints (so at the locked version).
    ci_text = "\n".join(code_lines((root / ".ci/run").read_text()))
    if not re.search(r"pip install .*-c requirements-lock\.txt.* nox\b", ci_text):
        found.append(".ci/run: nox is not installed with `-c requirements-lock.txt`")

    for source, pins in (("environment.yml", conda), ("Dockerfile", docker)):
        for name in ("torch", "torchvision"):
            if name not in pins:
                found.append(f"{source}: {name} is not pinned")
        for name, version in sorted(pins.items()):
            if lock.get(name) != version:
                found.append(f"{source}: {name}=={version}, the lock has {name}=={lock.get(name)}")
    return found


def test_pins_agree_everywhere():
    assert problems(ROOT) == []


MISTAKES = [  # (file, text to replace, replacement, what the report must say)
    ("requirements-lock.txt", "torch==2.14.1", "torch==2.14.0", "environment.yml: torch==2.14.1, the lock"),
    ("requirements-lock.txt", "torch==2.14.1", "torch==2.14.0", "base image has torch 2.14.1, the lock 2.14.0"),
    ("requirements-lock.txt", "scipy==1.17.1", "scipy==1.9.0", "scipy==1.9.0 is outside pyproject's"),
    ("requirements-lock.txt", "tqdm==4.70.1", "tqdm>=4.70", "is not an exact `name==version` pin"),
    ("requirements-lock.txt", "tqdm==4.70.1\n", "", "tqdm (from pyproject.toml) is not pinned"),
    ("requirements-lock.txt", "filelock==4.3.1\n", "", "filelock is installed as a dependency but not pinned"),
    ("requirements-lock.txt", "numpy==2.4.6\n", "numpy==2.4.6\nnumpy==2.4.5\n", "numpy pinned twice"),
    ("pyproject.toml", '"tqdm>=4.60",', '"tqdm>=4.60", "pandas>=2",', "pandas (from pyproject.toml) is not pinned"),
    ("environment.yml", "numpy==2.4.6", "numpy==2.4.5", "environment.yml: numpy==2.4.5, the lock has numpy==2.4.6"),
    ("environment.yml", "      - torchvision==0.29.1\n", "", "environment.yml: torchvision is not pinned"),
    ("environment.yml", "      - -c requirements-lock.txt\n", "", "`-c requirements-lock.txt` missing"),
    ("environment.yml", "  - python=3.11", "  - python=3.9", "within pyproject's requires-python"),
    ("Dockerfile", "pytorch/pytorch:2.14.1-", "pytorch/pytorch:2.13.0-", "base image has torch 2.13.0"),
    ("Dockerfile", "'torchvision==0.29.1'", "'torchvision==0.28.0'", "Dockerfile: torchvision==0.28.0, the lock"),
    ("Dockerfile", "'torchvision==0.29.1'", "torchvision", "Dockerfile: torchvision is not pinned"),
    ("Dockerfile", "requirements-lock.txt", "requirements.txt", "Dockerfile: does not install with requirements-lock"),
    (".ci/run", "-c requirements-lock.txt nox", "nox", ".ci/run: nox is not installed with"),
]


@pytest.mark.parametrize(("file", "old", "new", "expected"), MISTAKES)
def test_each_check_catches_a_mistake(tmp_path, file, old, new, expected):
    for name in FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    text = (tmp_path / file).read_text()
    assert old in text, f"the mistake to plant is no longer in {file}: update MISTAKES"
    (tmp_path / file).write_text(text.replace(old, new))
    found = problems(tmp_path)
    assert any(expected in problem for problem in found), found
