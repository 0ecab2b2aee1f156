"""The output folder checked before any work: a command that cannot write its results says so at once, in
one line with the fix, instead of a traceback at its first write (in Docker, before or after minutes of work).
"""

import os
from pathlib import Path

# What reproduce writes under --out, each with its scale and artifact folders below it.
OUTPUT_FOLDERS = ("runs", "results", "tables", "figures")


def output_folder_error(out: Path) -> str | None:
    """One line saying why reproduce cannot write under `out`, and what to do; None when it can."""
    if out.exists() and not out.is_dir():
        return f"error: --out {out} is a file, not a folder: pass a folder (it is made if missing)"
    folder = unwritable_folder(out)
    if folder is None:
        return None
    if folder == out.absolute():
        where = f"{folder} (--out)"
    elif out.absolute() in folder.parents:
        where = f"{folder} (in --out {out})"
    else:
        where = f"{folder} (where --out {out} would be made)"
    if in_container():
        fix = ('run the container as yourself: add --user "$(id -u):$(id -g)" to docker run (the image\'s user '
               'cannot write into a host folder it does not own)')
    else:
        fix = "make it writable, or pass --out a folder you can write to"
    return (f"error: cannot write to {where}: it belongs to uid {folder.stat().st_uid} and this process runs as "
            f"uid {os.getuid()}; {fix}")


def unwritable_folder(out: Path) -> Path | None:
    """The first folder reproduce would write into under `out` that this process may not write, or None:
    `out` itself (or, if missing, the nearest folder above it, where it would be made), then the existing
    folders of OUTPUT_FOLDERS down to two levels below them (results/<artifact>/<scale>)."""
    nearest = out.absolute()
    while not nearest.exists():
        nearest = nearest.parent
    folders = [nearest]
    for name in OUTPUT_FOLDERS:
        top = out / name
        if top.is_dir():
            children = [child for child in top.iterdir() if child.is_dir()]
            folders += [top, *children, *(grandchild for child in children for grandchild in child.iterdir()
                                           if grandchild.is_dir())]
    return next((folder for folder in folders if not os.access(folder, os.W_OK | os.X_OK)), None)


def in_container() -> bool:
    """Whether this process runs in the project's Docker image (its Dockerfile sets CATCHUP_MIX_IMAGE), where
    the fix is docker run's --user. Not any container: the machine running Docker may be one itself."""
    return os.environ.get("CATCHUP_MIX_IMAGE") == "1"
