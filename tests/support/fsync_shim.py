"""fsync failures on demand: an LD_PRELOAD shim, compiled at run time with the system's C
compiler, that makes a process's `fsync` and `fdatasync` fail with EIO (syncing nothing)
while a flag file exists. Used by tests/test_fsync_failure.py and the torture suite.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SHIM_SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* While the file named by MQPY_TORTURE_FSYNC_FLAG exists, fsync and fdatasync fail
   with EIO without syncing anything; each failure appends a byte to the file named by
   MQPY_TORTURE_FSYNC_COUNT. */
static int failing(void) {
    const char *flag = getenv("MQPY_TORTURE_FSYNC_FLAG");
    if (flag == NULL || access(flag, F_OK) != 0) return 0;
    const char *count = getenv("MQPY_TORTURE_FSYNC_COUNT");
    FILE *tally = count ? fopen(count, "a") : NULL;
    if (tally) { fputc('x', tally); fclose(tally); }
    errno = EIO;
    return 1;
}

int fsync(int fd) {
    static int (*real)(int);
    if (failing()) return -1;
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (failing()) return -1;
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}
"""


def build_shim(workdir: Path) -> Path | str:
    """The shim, built in `workdir`; or, as a string, why it cannot be built here."""
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        return "no C compiler (cc, gcc or clang) to build the LD_PRELOAD shim that fails fsync"
    source = workdir / "fsync_shim.c"
    source.write_text(SHIM_SOURCE)
    shim = workdir / "fsync_shim.so"
    built = subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(shim), str(source), "-ldl"],
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        return f"the LD_PRELOAD shim did not compile: {built.stderr.strip()[-300:]}"
    return shim


@dataclass
class FsyncFailures:
    """The environment that loads the shim into a process, and the switch: fsyncs fail
    while `failing` is on; `count` is how many have failed so far."""

    shim: Path
    workdir: Path

    @property
    def flag(self) -> Path:
        return self.workdir / "fail-fsync"

    @property
    def tally(self) -> Path:
        return self.workdir / "failed-fsyncs"

    @property
    def env(self) -> dict[str, str]:
        return {
            "LD_PRELOAD": str(self.shim),
            "MQPY_TORTURE_FSYNC_FLAG": str(self.flag),
            "MQPY_TORTURE_FSYNC_COUNT": str(self.tally),
        }

    def fail(self, failing: bool) -> None:
        if failing:
            self.flag.touch()
        else:
            self.flag.unlink(missing_ok=True)

    @property
    def count(self) -> int:
        return self.tally.stat().st_size if self.tally.exists() else 0
