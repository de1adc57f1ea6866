"""A window's timeline as one self-contained SVG picture (pure: no I/O, no clock).

`render(Timeline)` draws what a person needs to see at a glance: the health latency of every
tick (log scale), a strip of passed/failed/inconclusive/skipped ticks, the 5xx paths and each
feature check as strips of their own, the probe timeout and the baseline band as horizontal
lines, the verdict's moment as a vertical line, the rollback and the probes that verified it.

The picture is made once, when a window ends, and must stay small for any window: when there
are more ticks than pixel columns, ticks are folded per column (a failed tick wins the
column, latency becomes a min..max bar) and neighbouring cells of the same state merge into
one rectangle, so 10,000 ticks never become 10,000 shapes. The same input always gives the
same bytes (no "now", fixed number formatting), so golden files can pin it.

Stable hooks for tests and browsers: `#verdict` (the status text), `#reason`, `.tick.ok`,
`.tick.failed`, `.tick.inconclusive`, `.tick.skipped` (the tick strip), `.lat.*` (latency
marks), `.check.*`, `.fivexx.*`, `.verify.*`, `.rollback`, `.verdict-line`, `.band`,
`.timeout-line`. Ids take `id_prefix` so one page can hold the picture and its own `#verdict`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from postdeploy.series import ProbeRow
from postdeploy.window import Schedule

if TYPE_CHECKING:
    from postdeploy.config import WindowSettings
    from postdeploy.report import Outcome

WIDTH = 960
LEFT = 104  # room for the strips' labels
RIGHT = 24
PLOT_W = WIDTH - LEFT - RIGHT
COLUMN_PX = 2  # below this many pixels a tick, ticks are folded per column
DOTS_MAX = PLOT_W // 4  # more latency points than this: min..max bars per column
PANEL_H = 160
STRIP_H = 14
STRIP_GAP = 4
REASON_CHARS = 128  # a reason line's length at 12 px (no font metrics: an estimate)
REASON_LINES = 3
MAX_CHECK_STRIPS = 12
# Steps of the time axis, in seconds: round ones for people (at most 8 labels).
AXIS_STEPS: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60)
AXIS_STEPS += (120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800)
META_SHOWN = ("commit", "branch", "deployed_by", "image")

COLOUR = {
    "ok": "#1e8e3e",
    "failed": "#d93025",
    "inconclusive": "#9aa0a6",
    "skipped": "#f9ab00",
    "unknown": "#dadce0",
}
STATUS_COLOUR = {"HEALTHY": COLOUR["ok"], "DEGRADED": COLOUR["failed"], "ERROR": COLOUR["failed"]}
STATUS_COLOUR |= {"INCONCLUSIVE": "#80868b", "OPEN": "#1a73e8"}
OTHER_STATUS_COLOUR = "#5f6368"
# When ticks share a column, the worst state is drawn: a failed tick is never hidden.
RANK = {"failed": 4, "skipped": 3, "unknown": 2, "inconclusive": 1, "ok": 0}


@dataclass(frozen=True)
class Band:
    """The baseline's health latency before the deploy (from the baseline comparison)."""

    median_ms: float
    low_ms: float  # e.g. the baseline's 10th percentile
    high_ms: float  # e.g. its 90th percentile
    limit_ms: float | None = None  # above it a tick counts against the deploy
    label: str = "baseline p10-p90"


@dataclass(frozen=True)
class Limits:
    """The thresholds the window was judged with (None: not known, not drawn)."""

    probe_timeout_s: float | None = None
    fail_threshold: int | None = None
    fivexx_threshold: float | None = None
    min_samples: int | None = None


@dataclass(frozen=True)
class Rollback:
    """The rollback command's run: its action (ROLLBACK_OK, ...) and when it ran."""

    action: str
    duration_s: float
    started_at: float | None = None  # None: right after the verdict
    detail: str = ""


@dataclass(frozen=True)
class Timeline:
    """Everything the picture shows; `status` "" means the window is still open."""

    repo: str
    work_item: str
    span: Schedule
    rows: Sequence[ProbeRow]
    status: str = ""
    action: str = ""
    reason: str = ""
    verdict_at: float | None = None  # the verdict's moment (None: not drawn)
    verdict_tick: int | None = None
    limits: Limits = field(default_factory=Limits)
    rollback: Rollback | None = None
    verification: Sequence[ProbeRow] = ()
    band: Band | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


# -- text and numbers ----------------------------------------------------------------------

# Characters XML 1.0 does not allow at all (an escape cannot carry them either).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def esc(text: object) -> str:
    """`text` safe inside an XML/HTML element or a double-quoted attribute."""
    clean = _NOT_XML.sub("\ufffd", str(text))
    return (
        clean.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&#39;")
    )


def num(value: float) -> str:
    """A coordinate with one decimal at most, always the same text for the same value."""
    text = f"{value:.1f}".removesuffix(".0")
    return "0" if text == "-0" else text


def offset(seconds: float) -> str:
    """Seconds after the deploy, compactly: +0.5s, +45s, +1.5m, +12m, +2h."""
    for unit, size in (("h", 3600.0), ("m", 60.0)):
        if seconds >= size:
            return f"+{seconds / size:.1f}".removesuffix(".0") + unit
    return f"+{seconds:.1f}".removesuffix(".0") + "s"


def _ms(value: float) -> str:
    return f"{value / 1000:g} s" if value >= 1000 else f"{value:g} ms"


def _utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# -- geometry ------------------------------------------------------------------------------


class _Frame:
    """The time axis: `t0` at the plot's left edge, `t1` at its right edge."""

    __slots__ = ("_scale", "t0", "t1")

    def __init__(self, t0: float, t1: float) -> None:
        self.t0, self.t1 = t0, t1
        self._scale = PLOT_W / (t1 - t0)

    def x(self, t: float) -> float:
        return LEFT + min(float(PLOT_W), max(0.0, (t - self.t0) * self._scale))

    def slot(self, start: float, seconds: float) -> tuple[float, float]:
        """The pixels of `seconds` from `start`, at least one pixel wide."""
        x0 = self.x(start)
        return x0, max(self.x(start + seconds), x0 + 1)


class _Cell(NamedTuple):
    x0: float
    x1: float
    state: str


def _frame(tl: Timeline) -> tuple[_Frame, str]:
    """The axis, and a note when the window was planned longer than what is drawn."""
    span = tl.span
    planned = span.tick_time(span.max_ticks)
    if not tl.status:  # open: the whole planned window, the rest still to come
        return _Frame(span.armed_at, max(planned, _last_slot_end(tl)) or 1.0), ""
    end = max(
        [_last_slot_end(tl), tl.verdict_at or span.armed_at, *(_rollback_times(tl) or ())],
    )
    end = max(end, span.tick_time(0) + span.interval_s)
    note = ""
    if end < planned - 1e-9:
        note = f"window planned to {offset(planned - span.armed_at)}; no probes after the verdict"
    else:
        end = max(end, planned)
    if end <= span.armed_at:
        end = span.armed_at + 1.0
    return _Frame(span.armed_at, end), note


def _last_slot_end(tl: Timeline) -> float:
    ends = [r.scheduled_ts + tl.span.interval_s for r in tl.rows[-1:]]
    ends += [r.ts + tl.span.interval_s for r in tl.verification[-1:]]
    return max(ends, default=tl.span.armed_at)


def _rollback_times(tl: Timeline) -> tuple[float, float] | None:
    rb = tl.rollback
    if rb is None:
        return None
    start = rb.started_at if rb.started_at is not None else tl.verdict_at
    if start is None:
        start = _last_slot_end(tl)
    return start, start + max(0.0, rb.duration_s)


def fold_cells(cells: Iterable[_Cell]) -> list[_Cell]:
    """Cells in x order, folded per pixel column when they are too narrow, then neighbours of
    the same state merged: at most PLOT_W / COLUMN_PX cells, however many ticks."""
    ordered = sorted(cells, key=lambda c: (c.x0, c.x1))
    if len(ordered) > PLOT_W // COLUMN_PX:
        columns: dict[int, str] = {}
        for cell in ordered:
            col = min(int((cell.x0 - LEFT) // COLUMN_PX), PLOT_W // COLUMN_PX - 1)
            seen = columns.get(col)
            if seen is None or RANK[cell.state] > RANK[seen]:
                columns[col] = cell.state
        ordered = [
            _Cell(LEFT + c * COLUMN_PX, LEFT + (c + 1) * COLUMN_PX, s)
            for c, s in sorted(columns.items())
        ]
    merged: list[_Cell] = []
    for cell in ordered:
        last = merged[-1] if merged else None
        if last is not None and last.state == cell.state and cell.x0 <= last.x1 + 0.5:
            merged[-1] = _Cell(last.x0, max(last.x1, cell.x1), last.state)
        else:
            merged.append(cell)
    return merged


# -- states --------------------------------------------------------------------------------


def tick_state(row: ProbeRow) -> str:
    """ok, failed (counts in checks_failed) or inconclusive (the control probe failed too)."""
    if row.inconclusive:
        return "inconclusive"
    return "failed" if row.failed else "ok"


def skipped_ticks(rows: Sequence[ProbeRow], max_ticks: int) -> list[int]:
    """Due tick numbers without a row: skipped (too late) or missed while the daemon was down.
    After a catch-up probe every tick of the window was due."""
    if not rows:
        return []
    seen = {r.tick for r in rows}
    due = max_ticks if any(r.catch_up for r in rows) else max(seen) + 1
    return [k for k in range(min(due, max_ticks)) if k not in seen]


def _check_state(result: Mapping[str, object]) -> str:
    ok = result.get("ok")
    return "ok" if ok is True else "failed" if ok is False else "unknown"


# -- drawing -------------------------------------------------------------------------------


class _Svg:
    """The picture's elements, in drawing order."""

    def __init__(self, prefix: str) -> None:
        self.parts: list[str] = []
        self.prefix = esc(prefix)

    def add(self, element: str) -> None:
        self.parts.append(element)

    def text(self, x: float, y: float, content: str, cls: str, **attrs: str) -> None:
        extra = "".join(f' {k.replace("_", "-")}="{esc(v)}"' for k, v in attrs.items())
        self.add(f'<text x="{num(x)}" y="{num(y)}" class="{cls}"{extra}>{esc(content)}</text>')

    def rects(self, cells: Iterable[_Cell], y: float, h: float, kind: str) -> None:
        for c in fold_cells(cells):
            w = max(c.x1 - c.x0, 1.0)
            self.add(
                f'<rect class="{kind} {c.state}" x="{num(c.x0)}" y="{num(y)}" width="{num(w)}" '
                f'height="{num(h)}" fill="{COLOUR[c.state]}"/>'
            )


@dataclass(frozen=True)
class _YAxis:
    """Latency on a log scale, whole decades from `lo` to `hi` milliseconds."""

    lo: float
    hi: float
    top: float

    def y(self, ms: float) -> float:
        value = min(max(ms, self.lo), self.hi)
        fraction = (math.log10(value) - math.log10(self.lo)) / (
            math.log10(self.hi) - math.log10(self.lo)
        )
        return self.top + PANEL_H - fraction * PANEL_H


def _y_axis(tl: Timeline, top: float) -> _YAxis:
    values = [r.latency_ms for r in (*tl.rows, *tl.verification) if r.latency_ms > 0]
    if tl.limits.probe_timeout_s:
        values.append(tl.limits.probe_timeout_s * 1000)
    if tl.band is not None:
        values += [v for v in (tl.band.low_ms, tl.band.high_ms, tl.band.limit_ms) if v and v > 0]
    lo = 10 ** math.floor(math.log10(max(min(values, default=1.0), 0.1)))
    hi = 10 ** math.ceil(math.log10(max(values, default=10.0)))
    return _YAxis(lo, hi if hi > lo else lo * 10, top)


def _latency_panel(svg: _Svg, tl: Timeline, states: list[str], frame: _Frame, top: float) -> None:
    axis = _y_axis(tl, top)
    bottom = top + PANEL_H
    svg.add(
        f'<rect class="panel" x="{LEFT}" y="{num(top)}" width="{PLOT_W}" height="{PANEL_H}" '
        'fill="#fafafa" stroke="#dadce0"/>'
    )
    decade = axis.lo
    while decade <= axis.hi * 1.0001:
        y = axis.y(decade)
        svg.add(
            f'<line class="grid" x1="{LEFT}" y1="{num(y)}" x2="{LEFT + PLOT_W}" y2="{num(y)}" '
            'stroke="#e8eaed"/>'
        )
        svg.text(LEFT - 6, y + 4, _ms(decade), "axis", text_anchor="end")
        decade *= 10
    svg.text(LEFT - 6, top - 6, "health latency", "label", text_anchor="end")
    if tl.band is not None:
        _band(svg, tl.band, axis)
    if tl.limits.probe_timeout_s:
        y = axis.y(tl.limits.probe_timeout_s * 1000)
        svg.add(
            f'<line class="timeout-line" x1="{LEFT}" y1="{num(y)}" x2="{LEFT + PLOT_W}" '
            f'y2="{num(y)}" stroke="{OTHER_STATUS_COLOUR}" stroke-dasharray="6 4"/>'
        )
        label = f"probe timeout {_ms(tl.limits.probe_timeout_s * 1000)}"
        svg.text(LEFT + 4, y - 4, label, "note")
    points = [(frame.x(r.ts), r, state) for r, state in zip(tl.rows, states, strict=True)]
    _latency_marks(svg, points, axis, "lat")
    checked = [(frame.x(r.ts), r, tick_state(r)) for r in tl.verification]
    _latency_marks(svg, checked, axis, "lat verify")
    svg.add(
        f'<line x1="{LEFT}" y1="{num(bottom)}" x2="{LEFT + PLOT_W}" y2="{num(bottom)}" '
        'stroke="#bdc1c6"/>'
    )


def _band(svg: _Svg, band: Band, axis: _YAxis) -> None:
    y_hi, y_lo = axis.y(band.high_ms), axis.y(band.low_ms)
    svg.add(
        f'<rect class="band" x="{LEFT}" y="{num(y_hi)}" width="{PLOT_W}" '
        f'height="{num(max(y_lo - y_hi, 1.0))}" fill="#4285f4" fill-opacity="0.15"/>'
    )
    y = axis.y(band.median_ms)
    svg.add(
        f'<line class="band-median" x1="{LEFT}" y1="{num(y)}" x2="{LEFT + PLOT_W}" '
        f'y2="{num(y)}" stroke="#4285f4" stroke-dasharray="2 3"/>'
    )
    label = f"{band.label}, median {_ms(band.median_ms)}"
    svg.text(LEFT + PLOT_W - 4, y_lo + 12, label, "note", text_anchor="end")
    if band.limit_ms:
        y = axis.y(band.limit_ms)
        svg.add(
            f'<line class="band-limit" x1="{LEFT}" y1="{num(y)}" x2="{LEFT + PLOT_W}" '
            f'y2="{num(y)}" stroke="#e8710a" stroke-dasharray="6 3"/>'
        )
        svg.text(LEFT + 4, y - 4, f"baseline limit {_ms(band.limit_ms)}", "note")


def _latency_marks(
    svg: _Svg, points: list[tuple[float, ProbeRow, str]], axis: _YAxis, kind: str
) -> None:
    """A dot per probe, joined by a line; past DOTS_MAX, one min..max bar per pixel column
    drawn in the column's worst state (one path per state)."""
    if not points:
        return
    hollow = "verify" in kind
    if len(points) <= DOTS_MAX:
        if len(points) > 1 and not hollow:
            line = " ".join(f"{num(x)},{num(axis.y(r.latency_ms))}" for x, r, _ in points)
            svg.add(f'<polyline class="lat-line" points="{line}" fill="none" stroke="#9aa0a6"/>')
        for x, r, state in points:
            paint = f'fill="#fff" stroke="{COLOUR[state]}" stroke-width="2"'
            if not hollow:
                paint = f'fill="{COLOUR[state]}"'
            svg.add(
                f'<circle class="{kind} {state}" cx="{num(x)}" cy="{num(axis.y(r.latency_ms))}" '
                f'r="3" {paint}><title>tick {r.tick}: {esc(_ms(round(r.latency_ms, 1)))} '
                f"{esc(r.detail[:200])}</title></circle>"
            )
        return
    columns: dict[int, tuple[float, float, str]] = {}
    for x, r, state in points:
        col = min(int((x - LEFT) // COLUMN_PX), PLOT_W // COLUMN_PX - 1)
        low, high, worst = columns.get(col, (r.latency_ms, r.latency_ms, state))
        if RANK[state] > RANK[worst]:
            worst = state
        columns[col] = (min(low, r.latency_ms), max(high, r.latency_ms), worst)
    by_state: dict[str, list[str]] = {}
    for col, (low, high, state) in sorted(columns.items()):
        x = LEFT + col * COLUMN_PX + COLUMN_PX / 2
        y_low, y_high = axis.y(low), axis.y(high)
        y_high = min(y_high, y_low - 1.5)  # a single value still shows
        by_state.setdefault(state, []).append(f"M{num(x)} {num(y_low)}V{num(y_high)}")
    for state, segments in sorted(by_state.items()):
        svg.add(
            f'<path class="{kind} {state}" d="{"".join(segments)}" stroke="{COLOUR[state]}" '
            f'stroke-width="{COLUMN_PX}" fill="none"/>'
        )


def _strips(svg: _Svg, tl: Timeline, states: list[str], frame: _Frame, top: float) -> float:
    """The tick strip, the 5xx strip, a strip per feature check, the rollback and the
    verification probes; returns the y below them."""
    interval = tl.span.interval_s
    y = top
    # Each row's pixels and state, worked out once for every strip (10,000 rows are common).
    slots = [frame.slot(r.scheduled_ts, interval) for r in tl.rows]
    ticks = [_Cell(x0, x1, state) for (x0, x1), state in zip(slots, states, strict=True)]
    for k in skipped_ticks(tl.rows, tl.span.max_ticks):
        ticks.append(_Cell(*frame.slot(tl.span.tick_time(k), interval), "skipped"))
    rows_shown: list[tuple[str, list[_Cell], str]] = [("ticks", ticks, "tick")]
    if any(r.total for r in tl.rows):
        fivexx = [
            _Cell(x0, x1, "failed" if r.fivexx else "ok")
            for (x0, x1), r in zip(slots, tl.rows, strict=True)
            if r.total
        ]
        rows_shown.append(("5xx paths", fivexx, "fivexx"))
    names = sorted({name for r in tl.rows for name in r.checks})
    for name in names[:MAX_CHECK_STRIPS]:
        checks = [
            _Cell(x0, x1, _check_state(r.checks[name]))
            for (x0, x1), r in zip(slots, tl.rows, strict=True)
            if name in r.checks
        ]
        rows_shown.append((f"check {name}", checks, "check"))
    if tl.verification:
        verify = [_Cell(*frame.slot(r.ts, interval), tick_state(r)) for r in tl.verification]
        rows_shown.append(("verification", verify, "verify"))
    for label, cells, kind in rows_shown:
        svg.text(LEFT - 6, y + STRIP_H - 3, _clip(label, 16), "label", text_anchor="end")
        svg.rects(cells, y, STRIP_H, kind)
        y += STRIP_H + STRIP_GAP
    if len(names) > MAX_CHECK_STRIPS:
        svg.text(LEFT, y + 10, f"and {len(names) - MAX_CHECK_STRIPS} more checks", "note")
        y += 16
    times = _rollback_times(tl)
    if tl.rollback is not None and times is not None:
        state = "ok" if tl.rollback.action == "ROLLBACK_OK" else "failed"
        x0, x1 = frame.x(times[0]), frame.x(times[1])
        svg.text(LEFT - 6, y + STRIP_H - 3, "rollback", "label", text_anchor="end")
        svg.add(
            f'<rect class="rollback {state}" x="{num(x0)}" y="{num(y)}" '
            f'width="{num(max(x1 - x0, 3.0))}" height="{STRIP_H}" fill="{COLOUR[state]}" '
            'fill-opacity="0.6"/>'
        )
        text = f"{tl.rollback.action} in {tl.rollback.duration_s:.1f} s"
        anchor = "end" if x0 > LEFT + PLOT_W / 2 else "start"
        tx = x0 - 4 if anchor == "end" else max(x1, x0 + 3) + 4
        svg.text(tx, y + STRIP_H - 3, text, "note", text_anchor=anchor)
        y += STRIP_H + STRIP_GAP
    return y


def _clip(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "…"


def _x_axis(svg: _Svg, frame: _Frame, y: float, note: str) -> None:
    span = frame.t1 - frame.t0
    step = next((s for s in AXIS_STEPS if span / s <= 8), span / 8)
    k = 0
    while k * step <= span + 1e-9:
        x = frame.x(frame.t0 + k * step)
        svg.add(
            f'<line x1="{num(x)}" y1="{num(y)}" x2="{num(x)}" y2="{num(y + 4)}" stroke="#80868b"/>'
        )
        svg.text(x, y + 16, offset(k * step), "axis", text_anchor="middle")
        k += 1
    if note:
        svg.text(LEFT + PLOT_W, y + 32, note, "note", text_anchor="end")


def _verdict_line(svg: _Svg, tl: Timeline, frame: _Frame, top: float, bottom: float) -> None:
    if tl.verdict_at is None or not tl.status:
        return
    x = frame.x(tl.verdict_at)
    colour = STATUS_COLOUR.get(tl.status, OTHER_STATUS_COLOUR)
    svg.add(
        f'<line class="verdict-line" x1="{num(x)}" y1="{num(top - 14)}" x2="{num(x)}" '
        f'y2="{num(bottom)}" stroke="{colour}" stroke-width="2"/>'
    )
    at = f" at tick {tl.verdict_tick}" if tl.verdict_tick is not None else ""
    anchor = "end" if x > LEFT + PLOT_W * 0.7 else "start"
    svg.text(
        x + (-4 if anchor == "end" else 4),
        top - 4,
        f"{tl.status}{at}",
        "mark",
        text_anchor=anchor,
        fill=colour,
    )


def _header(svg: _Svg, tl: Timeline, states: list[str]) -> float:
    status = tl.status or "OPEN"
    colour = STATUS_COLOUR.get(status, OTHER_STATUS_COLOUR)
    action = f" · {tl.action}" if tl.action else ""
    svg.add(
        f'<text x="16" y="28" class="title">{esc(tl.repo)} / {esc(tl.work_item)}: '
        f'<tspan id="{svg.prefix}verdict" class="verdict {esc(status)}" fill="{colour}">'
        f"{esc(status)}</tspan>{esc(action)}</text>"
    )
    lines = textwrap.wrap(tl.reason, REASON_CHARS) or [""]
    if len(lines) > REASON_LINES:
        lines = lines[:REASON_LINES]
        lines[-1] = _clip(lines[-1] + " …", REASON_CHARS)
    spans = "".join(
        f'<tspan x="16" dy="{0 if i == 0 else 16}">{esc(line)}</tspan>'
        for i, line in enumerate(lines)
    )
    svg.add(
        f'<text id="{svg.prefix}reason" x="16" y="50" class="reason">'
        f"<title>{esc(tl.reason)}</title>{spans}</text>"
    )
    y = 50 + 16 * len(lines)
    span = tl.span
    facts = [
        f"deployed {_utc(span.armed_at)}",
        f"{span.max_ticks} ticks every {span.interval_s:g} s",
        f"{len(tl.rows)} probed, {states.count('failed')} failed",
    ]
    facts += [f"{k} {_clip(tl.metadata[k], 40)}" for k in META_SHOWN if tl.metadata.get(k)]
    svg.text(16, y, _clip(" · ".join(facts), 150), "meta")
    return y + 34


def _legend(svg: _Svg, tl: Timeline, y: float) -> float:
    x = float(LEFT)
    for state, label in (
        ("ok", "passed"),
        ("failed", "failed"),
        ("inconclusive", "inconclusive"),
        ("skipped", "skipped / missed"),
        ("unknown", "check not judged"),
    ):
        svg.add(
            f'<rect x="{num(x)}" y="{num(y - 9)}" width="10" height="10" fill="{COLOUR[state]}"/>'
        )
        svg.text(x + 14, y, label, "note")
        x += 24 + 6.5 * len(label)
    lim = tl.limits
    rules = []
    if lim.fail_threshold is not None:
        rules.append(f"DEGRADED at {lim.fail_threshold} failed health probes")
    if lim.fivexx_threshold is not None:
        samples = f" once {lim.min_samples} requests were made" if lim.min_samples else ""
        rules.append(f"or a 5xx ratio above {lim.fivexx_threshold:g}{samples}")
    if rules:
        svg.text(LEFT, y + 18, ", ".join(rules), "note")
        return y + 26
    return y + 8


_STYLE = (
    "text{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;fill:#202124}"
    ".title{font-size:17px;font-weight:600}.reason{font-size:12px}"
    ".meta,.axis,.note{font-size:11px;fill:#5f6368}.label{font-size:11px}"
    ".mark{font-size:12px;font-weight:600}"
)


def render(tl: Timeline, *, id_prefix: str = "") -> str:
    """The window's timeline as an SVG document (deterministic for the same input)."""
    svg = _Svg(id_prefix)
    frame, note = _frame(tl)
    top = _header(svg, tl, states := [tick_state(r) for r in tl.rows])
    _latency_panel(svg, tl, states, frame, top)
    strips_top = top + PANEL_H + 10
    bottom = _strips(svg, tl, states, frame, strips_top)
    _verdict_line(svg, tl, frame, top, bottom)
    _x_axis(svg, frame, bottom, note)
    height = _legend(svg, tl, bottom + (50 if note else 36)) + 8
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{num(height)}" '
        f'viewBox="0 0 {WIDTH} {num(height)}" role="img">'
        f"<title>{esc(tl.repo)}/{esc(tl.work_item)}: {esc(tl.status or 'OPEN')}</title>"
        f'<style>{_STYLE}</style><rect width="100%" height="100%" fill="#fff"/>'
    )
    return head + "\n" + "\n".join(svg.parts) + "\n</svg>\n"


# -- from a finished window ----------------------------------------------------------------

JUDGED = ("HEALTHY", "DEGRADED", "INCONCLUSIVE")  # verdicts reached at the last probe


def verdict_moment(
    status: str, rows: Sequence[ProbeRow], finished_at: float | None
) -> tuple[float | None, int | None]:
    """When the verdict was reached, and at which tick: a judged verdict at the end of its
    last probe (probing stops there); any other (cancelled, superseded, ...) when it ended."""
    if status in JUDGED and rows:
        last = rows[-1]
        return last.ts + last.latency_ms / 1000, last.tick
    return finished_at, None


def limits_of(settings: WindowSettings | None) -> Limits:
    if settings is None:
        return Limits()
    return Limits(
        probe_timeout_s=settings.probe_timeout_s,
        fail_threshold=settings.fail_threshold,
        fivexx_threshold=settings.fivexx_threshold,
        min_samples=settings.min_samples,
    )


def rollback_of(
    action: str, result: Mapping[str, Any] | None, started_at: float | None = None
) -> Rollback | None:
    """The rollback as drawn, from `done.action_taken` and the recorded result."""
    if not action.startswith("ROLLBACK") or result is None:
        return None
    duration = result.get("duration_s")
    return Rollback(
        action=action,
        duration_s=float(duration) if isinstance(duration, int | float) else 0.0,
        started_at=started_at,
        detail=str(result.get("detail", "")),
    )


def of_outcome(
    outcome: Outcome,
    rows: Sequence[ProbeRow],
    schedule: Schedule,
    settings: WindowSettings | None,
    band: Band | None = None,
) -> Timeline:
    """The picture's input for a window that just ended (what the runner holds in memory)."""
    status = str(outcome.status)
    at, tick = verdict_moment(status, rows, outcome.finished_at)
    return Timeline(
        repo=outcome.key.repo,
        work_item=outcome.key.work_item,
        span=schedule,
        rows=rows,
        status=status,
        action=str(outcome.action_taken),
        reason=outcome.reason,
        verdict_at=at,
        verdict_tick=tick,
        limits=limits_of(settings),
        rollback=rollback_of(str(outcome.action_taken), outcome.rollback),
        verification=outcome.verification,
        band=band,
        metadata=outcome.metadata,
    )


def band_of(figures: Any, latency_increase: float | None = None) -> Band | None:
    """The baseline band of a window compared with a baseline (`done.baseline`'s figures),
    or None; `latency_increase` draws the limit above which the shift counts."""
    ref = figures.get("reference") if isinstance(figures, dict) else None
    if not isinstance(ref, dict):
        return None
    values = [ref.get(k) for k in ("median_ms", "p10_ms", "p90_ms")]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return None
    mid, low, high = (float(v) for v in values)  # type: ignore[arg-type]
    limit = mid * (1 + latency_increase) if latency_increase else None
    return Band(median_ms=mid, low_ms=low, high_ms=high, limit_ms=limit)


def attach(
    outcome: Outcome,
    rows: Sequence[ProbeRow],
    schedule: Schedule,
    settings: WindowSettings | None,
) -> Outcome:
    """`outcome` with its picture in `timeline`, drawn once when the window ends. A picture
    that cannot be drawn (a bug) is logged and left out: it never holds up the verdict."""
    try:
        increase = settings.latency_increase if settings is not None else None
        band = band_of(outcome.evidence.get("baseline"), increase)
        svg = render(of_outcome(outcome, rows, schedule, settings, band))
    except Exception as exc:  # the verdict matters more than its picture
        import structlog

        structlog.get_logger("postdeploy.timeline").error(
            "timeline.failed",
            error=repr(exc),
            repo=outcome.key.repo,
            work_item=outcome.key.work_item,
        )
        svg = UNDRAWN
    return dataclasses.replace(outcome, timeline=svg)


# What `timeline.svg` holds when the picture could not be drawn (the log says why).
UNDRAWN = (
    f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="40" role="img">'
    '<text x="16" y="24">the timeline could not be drawn: see timeline.failed in the log</text>'
    "</svg>\n"
)
