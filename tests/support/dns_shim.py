"""A getaddrinfo that hangs: an LD_PRELOAD shim for tests of name resolution.

`build_hung_dns_shim(tmp_path)` compiles it (skipping the test where no C compiler can) and
returns the shared object's path; a process started with `LD_PRELOAD=<path>` then waits 120 s
in libc's getaddrinfo for the name "hung.test" (as a DNS server that never answers would
make it) and resolves every other name as usual. `hung_lookups`, an int in the shim, counts
the lookups that hung.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

HUNG_NAME = "hung.test"

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netdb.h>
#include <string.h>
#include <unistd.h>

int hung_lookups = 0; /* read by the test script through ctypes */

typedef int (*gai_fn)(const char *, const char *, const struct addrinfo *, struct addrinfo **);

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res) {
    static gai_fn real = 0;
    if (!real) real = (gai_fn)dlsym(RTLD_NEXT, "getaddrinfo");
    if (node && strcmp(node, "hung.test") == 0
        && !(hints && (hints->ai_flags & AI_NUMERICHOST))) {
        __atomic_fetch_add(&hung_lookups, 1, __ATOMIC_SEQ_CST);
        sleep(120); /* a DNS server that never answers */
        return EAI_AGAIN;
    }
    return real(node, service, hints, res);
}
"""


def build_hung_dns_shim(directory: Path) -> Path:
    compiler = shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler (cc) to build the getaddrinfo shim")
    source, shim = directory / "shim.c", directory / "shim.so"
    source.write_text(SHIM)
    built = subprocess.run(
        [compiler, "-shared", "-fPIC", "-o", str(shim), str(source), "-ldl"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    if built.returncode != 0:
        pytest.skip(f"the getaddrinfo shim does not build here: {built.stderr.strip()}")
    return shim
