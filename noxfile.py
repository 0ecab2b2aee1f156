"""Nox sessions: `python3 -m nox` runs lint and tests; `-s smoke`, `-s tables`, `-s reproduce -- ARGS`.

Every session runs in ONE shared virtualenv, .nox/shared, instead of one per session as nox would make:
torch alone is 5.7 GB and a minute or more to install, and all sessions need the same environment. It
is installed from requirements-lock.txt and reinstalled only when the lock, pyproject.toml or the Python
running nox change (a stamp file in the venv holds their hash), so a second `nox` starts in seconds.
The project is installed editable, so changes to the code need no reinstall.
"""

import hashlib
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
LOCK = ROOT / "requirements-lock.txt"
VENV = ROOT / ".nox" / "shared"
STAMP = VENV / "installed-from.sha256"

nox.options.sessions = ["lint", "tests"]


def shared_python(session: nox.Session) -> str:
    """The shared venv's python, after (re)installing the venv if its stamp is stale."""
    python = VENV / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    digest = hashlib.sha256(
        LOCK.read_bytes() + (ROOT / "pyproject.toml").read_bytes() + sys.version.encode()
    ).hexdigest()
    if python.exists() and STAMP.is_file() and STAMP.read_text().strip() == digest:
        session.log(f"reusing {VENV} (requirements-lock.txt and pyproject.toml unchanged)")
        return str(python)
    session.run(sys.executable, "-m", "venv", "--clear", str(VENV), external=True)
    # PIP_CONSTRAINT as well as -c: pip's isolated build env (setuptools) only sees the former.
    # --no-compile: bytecode only for the modules imported, when first imported, instead of for all of torch
    # now (half of pip's CPU time; about 30 s less to README's quick start on 2 cores).
    pip_install = [str(python), "-m", "pip", "install", "--no-compile", "-c", str(LOCK)]
    session.run(*pip_install, "-e", ".[dev]", external=True, env={"PIP_CONSTRAINT": str(LOCK)})
    # The frost photographs (the `frost` extra) without imagecorruptions' dependencies: its opencv-python would
    # share the cv2 module with the dev extra's opencv-contrib, and whichever pip writes last wins.
    session.run(*pip_install, "--no-deps", "imagecorruptions", external=True, env={"PIP_CONSTRAINT": str(LOCK)})
    STAMP.write_text(digest + "\n")
    return str(python)


def run(session: nox.Session, *args: str) -> None:
    """Run `python ARGS` in the shared venv, from the repository root."""
    session.chdir(ROOT)
    session.run(shared_python(session), *args, external=True)


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """The test suite; arguments go to pytest (`nox -s tests -- -m "not slow" -x`)."""
    run(session, "-m", "pytest", *session.posargs)


@nox.session(venv_backend="none")
def lint(session: nox.Session) -> None:
    """ruff over the whole repository."""
    run(session, "-m", "ruff", "check", ".", *session.posargs)


@nox.session(venv_backend="none")
def smoke(session: nox.Session) -> None:
    """Every artifact end to end at smoke scale (`nox -s smoke -- --data-root DIR --out DIR`)."""
    run(session, "-m", "reproduce", "all", "--scale", "smoke", *session.posargs)


@nox.session(venv_backend="none")
def tables(session: nox.Session) -> None:
    """Every table and figure, regenerated from stored results without training."""
    run(session, "-m", "reproduce", "all", "--tables-only", *session.posargs)


@nox.session(venv_backend="none")
def reproduce(session: nox.Session) -> None:
    """`python -m reproduce ARGS`, e.g. `nox -s reproduce -- table1 --scale smoke`; no ARGS: list."""
    run(session, "-m", "reproduce", *(session.posargs or ["list"]))
