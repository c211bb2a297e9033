"""A data directory on a tiny tmpfs of its own, and a way to fill it to the last byte.

Mounting needs root. Elsewhere the tests that use it are skipped, saying so, except
under CI=true, where they run as root and a missing mount is a failure. The torture
suite (torture/) mounts the same way through `tmpfs_mounted`, without pytest.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

FILLER = "filler"
NOT_ROOT = "a full disk is simulated with a tmpfs, which only root can mount"


def cannot_mount_reason() -> str | None:
    """None if a tmpfs can be mounted here, else why not."""
    return NOT_ROOT if os.geteuid() != 0 else None


@contextlib.contextmanager
def tmpfs_mounted(path: Path, size: str = "8m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` for the duration (root only); unmounted
    afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        check=True,
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str = "8m") -> Iterator[Path]:
    """`tmpfs_mounted` for a test: skipped (failed under CI) where it cannot mount."""
    reason = cannot_mount_reason()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true runs these tests as root)")
        pytest.skip(reason)
    with tmpfs_mounted(path, size) as mounted:
        yield mounted


def fill(mount: Path) -> None:
    """Write a filler file until the file system has not one byte left."""
    with open(mount / FILLER, "ab", buffering=0) as filler:
        for size in (1 << 20, 1 << 12, 1):
            chunk = b"\0" * size
            while True:
                try:
                    filler.write(chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break


def free(mount: Path) -> None:
    """Give back what `fill` took."""
    (mount / FILLER).unlink(missing_ok=True)
