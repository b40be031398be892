"""Files a run writes, each replaced whole: a kill at any instant leaves the old one or the new one.

A file is written under a staging name beside its destination (the same
folder, so the same filesystem), flushed to disk with its folder, and moved
over the destination with `os.replace`, which POSIX makes atomic. Staging
names start with `PARTIAL`; a killed writer leaves one behind, which
`remove_partials` deletes when the next run starts. The output folder must
be on a local (POSIX) filesystem: object stores (`gs://`) cannot rename
atomically.
"""

from __future__ import annotations

import contextlib
import os
import shutil

PARTIAL = ".partial-"


def fsync(path: str) -> None:
    """Flush the file or folder `path` to disk (a folder's fsync persists its entries)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str) -> None:
    """`fsync` every file and folder under `path`, `path` itself last."""
    for folder, _, names in os.walk(path, topdown=False):
        for name in names:
            fsync(os.path.join(folder, name))
        fsync(folder)


@contextlib.contextmanager
def replacing(path: str):
    """Yield a staging path to write; when the block succeeds it replaces `path` atomically.

    The staging path ends with `path`'s own name (Keras checks suffixes such
    as `.keras` and `.weights.h5`). If the block raises, the staging file is
    removed and `path` is left as it was.
    """
    folder, name = os.path.split(os.path.abspath(path))
    staging = os.path.join(folder, f"{PARTIAL}{os.getpid()}-{name}")
    try:
        yield staging
        fsync(staging)
        os.replace(staging, path)
        fsync(folder)
    finally:
        if os.path.lexists(staging):
            os.remove(staging)


def remove_partials(folder: str) -> None:
    """Delete what killed writers left in `folder` (entries named `PARTIAL...`)."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        if name.startswith(PARTIAL):
            remove(os.path.join(folder, name))


def remove(path: str) -> None:
    """Delete the file or folder `path`, if there is one."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)
