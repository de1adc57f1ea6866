"""A PNG chart of tick lateness distributions, in pure Python (zlib + struct).

matplotlib is not a dependency of the project, and one chart does not justify one: this draws
empirical CDF curves on a log-scale lateness axis with a 5x7 bitmap font, and writes the PNG
by hand (8-bit RGB, one zlib-compressed IDAT). Each curve: what share of ticks were at most
that late. Dashed lines mark the targets (20, 100, 150 ms).
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Mapping, Sequence

# 5x7 glyphs, rows top to bottom; text is drawn upper-case.
_FONT_ROWS = {
    "A": "01110 10001 10001 11111 10001 10001 10001",
    "B": "11110 10001 10001 11110 10001 10001 11110",
    "C": "01110 10001 10000 10000 10000 10001 01110",
    "D": "11110 10001 10001 10001 10001 10001 11110",
    "E": "11111 10000 10000 11110 10000 10000 11111",
    "F": "11111 10000 10000 11110 10000 10000 10000",
    "G": "01110 10001 10000 10111 10001 10001 01111",
    "H": "10001 10001 10001 11111 10001 10001 10001",
    "I": "01110 00100 00100 00100 00100 00100 01110",
    "J": "00111 00010 00010 00010 00010 10010 01100",
    "K": "10001 10010 10100 11000 10100 10010 10001",
    "L": "10000 10000 10000 10000 10000 10000 11111",
    "M": "10001 11011 10101 10101 10001 10001 10001",
    "N": "10001 10001 11001 10101 10011 10001 10001",
    "O": "01110 10001 10001 10001 10001 10001 01110",
    "P": "11110 10001 10001 11110 10000 10000 10000",
    "Q": "01110 10001 10001 10001 10101 10010 01101",
    "R": "11110 10001 10001 11110 10100 10010 10001",
    "S": "01111 10000 10000 01110 00001 00001 11110",
    "T": "11111 00100 00100 00100 00100 00100 00100",
    "U": "10001 10001 10001 10001 10001 10001 01110",
    "V": "10001 10001 10001 10001 10001 01010 00100",
    "W": "10001 10001 10001 10101 10101 10101 01010",
    "X": "10001 10001 01010 00100 01010 10001 10001",
    "Y": "10001 10001 01010 00100 00100 00100 00100",
    "Z": "11111 00001 00010 00100 01000 10000 11111",
    "0": "01110 10001 10011 10101 11001 10001 01110",
    "1": "00100 01100 00100 00100 00100 00100 01110",
    "2": "01110 10001 00001 00010 00100 01000 11111",
    "3": "11111 00010 00100 00010 00001 10001 01110",
    "4": "00010 00110 01010 10010 11111 00010 00010",
    "5": "11111 10000 11110 00001 00001 10001 01110",
    "6": "00110 01000 10000 11110 10001 10001 01110",
    "7": "11111 00001 00010 00100 01000 01000 01000",
    "8": "01110 10001 10001 01110 10001 10001 01110",
    "9": "01110 10001 10001 01111 00001 00010 01100",
    " ": "00000 00000 00000 00000 00000 00000 00000",
    ".": "00000 00000 00000 00000 00000 01100 01100",
    ",": "00000 00000 00000 00000 01100 00100 01000",
    "-": "00000 00000 00000 11111 00000 00000 00000",
    "%": "11000 11001 00010 00100 01000 10011 00011",
    "(": "00010 00100 01000 01000 01000 00100 00010",
    ")": "01000 00100 00010 00010 00010 00100 01000",
    "/": "00000 00001 00010 00100 01000 10000 00000",
    ":": "00000 01100 01100 00000 01100 01100 00000",
    "<": "00010 00100 01000 10000 01000 00100 00010",
    ">": "01000 00100 00010 00001 00010 00100 01000",
    "=": "00000 00000 11111 00000 11111 00000 00000",
    "+": "00000 00100 00100 11111 00100 00100 00000",
    "_": "00000 00000 00000 00000 00000 00000 11111",
    "'": "00100 00100 01000 00000 00000 00000 00000",
    "?": "01110 10001 00001 00010 00100 00000 00100",
}
FONT = {ch: [int(row, 2) for row in rows.split()] for ch, rows in _FONT_ROWS.items()}

Color = tuple[int, int, int]
WHITE: Color = (255, 255, 255)
BLACK: Color = (0, 0, 0)
GREY: Color = (200, 200, 200)
DARK: Color = (110, 110, 110)
PALETTE: list[Color] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


class Canvas:
    """An RGB image in memory."""

    def __init__(self, width: int, height: int, background: Color = WHITE) -> None:
        self.w, self.h = width, height
        self.px = bytearray(bytes(background) * (width * height))

    def dot(self, x: int, y: int, c: Color) -> None:
        if 0 <= x < self.w and 0 <= y < self.h:
            i = 3 * (y * self.w + x)
            self.px[i : i + 3] = bytes(c)

    def line(self, x0: int, y0: int, x1: int, y1: int, c: Color, width: int = 1) -> None:
        """Bresenham's line, `width` pixels thick."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            for ox in range(width):
                for oy in range(width):
                    self.dot(x0 + ox, y0 + oy, c)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def dashed_vline(self, x: int, y0: int, y1: int, c: Color) -> None:
        for y in range(min(y0, y1), max(y0, y1)):
            if (y // 4) % 2 == 0:
                self.dot(x, y, c)

    def rect(self, x0: int, y0: int, x1: int, y1: int, c: Color) -> None:
        for y in range(y0, y1):
            for x in range(x0, x1):
                self.dot(x, y, c)

    def text(self, x: int, y: int, s: str, c: Color = BLACK, scale: int = 2) -> int:
        """Draw `s` with its top-left at (x, y); returns the x after it."""
        for ch in s.upper():
            glyph = FONT.get(ch, FONT["?"])
            for row, bits in enumerate(glyph):
                for col in range(5):
                    if bits & (1 << (4 - col)):
                        self.rect(
                            x + col * scale,
                            y + row * scale,
                            x + (col + 1) * scale,
                            y + (row + 1) * scale,
                            c,
                        )
            x += 6 * scale
        return x

    def png(self) -> bytes:
        raw = b"".join(
            b"\x00" + bytes(self.px[3 * y * self.w : 3 * (y + 1) * self.w]) for y in range(self.h)
        )

        def chunk(tag: bytes, data: bytes) -> bytes:
            crc = zlib.crc32(tag + data) & 0xFFFFFFFF
            return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

        header = struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b"")
        )


def text_width(s: str, scale: int = 2) -> int:
    return 6 * scale * len(s)


def ecdf_chart(
    series: Mapping[str, Sequence[float]],
    title: str,
    *,
    lo_ms: float = 0.1,
    hi_ms: float = 100_000.0,
    marks_ms: Sequence[float] = (20, 100, 150),
    width: int = 1200,
    height: int = 720,
) -> bytes:
    """Empirical CDFs of lateness (ms) on a log axis; returns the PNG's bytes."""
    legend_h = 22 * len(series) + 20
    c = Canvas(width, height + legend_h)
    left, right, top, bottom = 90, width - 30, 60, height - 80
    c.text(left, 20, title, scale=2)
    lo, hi = math.log10(lo_ms), math.log10(hi_ms)

    def x_of(ms: float) -> int:
        v = min(max(math.log10(max(ms, lo_ms)), lo), hi)
        return round(left + (right - left) * (v - lo) / (hi - lo))

    def y_of(share: float) -> int:
        return round(bottom - (bottom - top) * share)

    # Grid, axes and labels.
    for decade in range(math.floor(lo), math.ceil(hi) + 1):
        ms = 10.0**decade
        x = x_of(ms)
        c.line(x, top, x, bottom, GREY)
        label = f"{ms:g}"
        c.text(x - text_width(label) // 2, bottom + 10, label)
    for q in (0, 0.25, 0.5, 0.75, 0.9, 1.0):
        y = y_of(q)
        c.line(left, y, right, y, GREY)
        label = f"{q * 100:g}%"
        c.text(left - 10 - text_width(label), y - 7, label)
    c.line(left, top, left, bottom, BLACK)
    c.line(left, bottom, right, bottom, BLACK)
    axis = "TICK LATENESS AT THE TARGET (MS, LOG SCALE)"
    c.text((left + right - text_width(axis)) // 2, bottom + 40, axis)
    for ms in marks_ms:
        c.dashed_vline(x_of(ms), top, bottom, DARK)
        c.text(x_of(ms) + 4, top + 4, f"{ms:g}", DARK, scale=1)
    # Curves, then the legend below the axis.
    for i, values in enumerate(series.values()):
        color = PALETTE[i % len(PALETTE)]
        vals = sorted(values)
        n = len(vals)
        if not n:
            continue
        step = max(1, n // 1500)
        prev = (x_of(vals[0]), y_of(0.0))
        for j in [*range(0, n, step), n - 1]:
            point = (x_of(vals[j]), y_of((j + 1) / n))
            c.line(prev[0], prev[1], point[0], prev[1], color, 2)  # the CDF's step
            c.line(point[0], prev[1], point[0], point[1], color, 2)
            prev = point
    for i, (name, values) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        y = height + 22 * i
        c.rect(left + 12, y + 5, left + 44, y + 9, color)
        c.text(left + 54, y, f"{name} (N={len(values)})", scale=2)
    return c.png()
