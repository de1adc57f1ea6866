"""Looking at pages the way a person does: raw HTTP requests, and a real headless Chromium.

- `fetch(address, path)`: one HTTP request with the path sent exactly as given (no client
  normalises `..` away), for the listener's routing and headers.
- `Chromium`: Debian's `/usr/bin/chromium` run as a subprocess, `--headless`, with a profile
  directory of its own: `dump_dom(url)` is the DOM after the page loaded (scripts, had any
  run, have changed it), `screenshot(url)` the pixels a person would see, decoded.
- `decode_png(data)`: the screenshot's pixels, with zlib and struct only (8-bit RGB or RGBA,
  not interlaced: what Chromium writes).

`chromium_missing()` says why the browser tests must skip (None when Chromium runs here).
`.ci/run` installs Debian's `chromium`; elsewhere the tests skip with that reason.
"""

from __future__ import annotations

import functools
import http.client
import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from support.env import child_env

CHROMIUM_TIMEOUT_S = 120.0  # one page load on a loaded 2-core machine; only reached on failure
Rgb = tuple[int, int, int]


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def fetch(address: str, path: str, method: str = "GET", timeout: float = 30.0) -> Response:
    """`method path` to `address` ("HOST:PORT"), the path sent byte for byte as given."""
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        conn.endheaders()
        answer = conn.getresponse()
        body = answer.read()
        headers = {k.lower(): v for k, v in answer.getheaders()}
        return Response(answer.status, headers, body)
    finally:
        conn.close()


def chromium_path() -> str | None:
    """Debian's Chromium (the package `chromium`), or another `chromium` on PATH."""
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@functools.cache
def chromium_missing() -> str | None:
    """Why no headless Chromium can run here (None: it can)."""
    path = chromium_path()
    if path is None:
        return "chromium is not installed (Debian: apt-get install chromium; .ci/run does)"
    try:
        done = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{path} does not run: {exc}"
    if done.returncode != 0 or "Chromium" not in done.stdout:
        return f"{path} --version failed: {(done.stdout + done.stderr)[-300:]}"
    return None


class Chromium:
    """Headless Chromium runs, each with a fresh profile below `workdir`."""

    def __init__(self, workdir: Path, width: int = 1280, height: int = 900) -> None:
        path = chromium_path()
        assert path is not None, chromium_missing()
        self.path = path
        self.workdir = workdir
        self.size = (width, height)

    def run(self, url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        """One headless run on `url` with `args`; fails the test if Chromium fails."""
        profile = tempfile.mkdtemp(prefix="chromium-", dir=self.workdir)
        argv = [
            self.path,
            "--headless",
            "--no-sandbox",  # as root in a container; the page is ours and local
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--user-data-dir={profile}",
            f"--window-size={self.size[0]},{self.size[1]}",
            *args,
            url,
        ]
        done = subprocess.run(
            argv,
            capture_output=True,
            timeout=CHROMIUM_TIMEOUT_S,
            env=child_env({"HOME": profile}),
            cwd=self.workdir,
            check=False,
        )
        shutil.rmtree(profile, ignore_errors=True)
        assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
        return done

    def dump_dom(self, url: str) -> str:
        """The DOM as Chromium holds it once the page loaded, serialised."""
        return self.run(url, "--dump-dom").stdout.decode("utf-8", errors="replace")

    def screenshot(self, url: str, name: str = "page.png") -> Png:
        """The page as a person sees it (the window's size), decoded; the PNG is kept at
        `workdir/name` for a look after a failure."""
        target = self.workdir / name
        self.run(url, f"--screenshot={target}")
        return decode_png(target.read_bytes())


@dataclass
class Png:
    width: int
    height: int
    rows: list[bytes]  # RGB, 3 bytes a pixel

    def pixel(self, x: int, y: int) -> Rgb:
        row = self.rows[y]
        return row[3 * x], row[3 * x + 1], row[3 * x + 2]

    def colours(self) -> Counter[Rgb]:
        """How many pixels of each colour."""
        counts: Counter[Rgb] = Counter()
        for row in self.rows:
            counts.update(zip(row[0::3], row[1::3], row[2::3], strict=True))
        return counts

    def count_near(self, target: Rgb, tolerance: int = 10) -> int:
        """Pixels within `tolerance` of `target` on each channel."""
        return sum(n for c, n in self.colours().items() if near(c, target, tolerance))


def near(colour: Rgb, target: Rgb, tolerance: int = 10) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(colour, target, strict=True))


def hex_rgb(value: str) -> Rgb:
    """`#2e7d32` -> (46, 125, 50)."""
    value = value.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def decode_png(data: bytes) -> Png:
    """An 8-bit RGB or RGBA, non-interlaced PNG's pixels as RGB rows (alpha dropped)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, header = 8, bytearray(), b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, chunk = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = chunk
        elif kind == b"IDAT":
            idat += chunk
        elif kind == b"IEND":
            break
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if depth != 8 or colour_type not in (2, 6) or interlace:
        raise ValueError(f"unsupported PNG: depth {depth}, colour type {colour_type}")
    bpp = 3 if colour_type == 2 else 4
    raw = zlib.decompress(bytes(idat))
    stride = width * bpp
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        _unfilter(kind, line, previous, bpp)
        rows.append(bytes(line) if bpp == 3 else bytes(b for i, b in enumerate(line) if i % 4 < 3))
        previous = line
    return Png(width, height, rows)


def _unfilter(kind: int, line: bytearray, up: bytearray, bpp: int) -> None:
    """Undo one scanline's PNG filter in place (None, Sub, Up, Average, Paeth)."""
    if kind == 0:
        return
    for i in range(len(line)):
        left = line[i - bpp] if i >= bpp else 0
        above = up[i]
        if kind == 1:
            predictor = left
        elif kind == 2:
            predictor = above
        elif kind == 3:
            predictor = (left + above) // 2
        elif kind == 4:
            corner = up[i - bpp] if i >= bpp else 0
            p = left + above - corner
            pa, pb, pc = abs(p - left), abs(p - above), abs(p - corner)
            predictor = left if pa <= pb and pa <= pc else above if pb <= pc else corner
        else:
            raise ValueError(f"unknown PNG filter {kind}")
        line[i] = (line[i] + predictor) & 0xFF
