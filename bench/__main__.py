"""`python -m bench`: run the benchmarks against the real daemon; `make bench` calls this.

    python -m bench                  # every scenario, full sizes (about 15 minutes)
    python -m bench --quick          # scaled down, for dry runs on a busy machine
    python -m bench --only precision,burst
    python -m bench --only profile   # py-spy on the daemon near the ceiling (needs py-spy)

Each scenario prints one table row and writes `results/<scenario>.json`; at the end
`results.md` and `lateness.png` are written from every scenario's latest JSON. Full runs write
to bench/, quick runs to bench/quick/ (so a dry run never overwrites the real figures).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import harness, report
from bench.scenarios import DEFAULT, FULL, QUICK, SCENARIOS, Ctx

HERE = Path(__file__).resolve().parent
# On ext4 without a journal (this VM's disk) files created within minutes of a mass deletion
# cost several times their normal kernel CPU (docs/PERFORMANCE.md, section 7): a run right
# after the previous run's clean-up measures that, not the daemon. Its moment is kept here.
CLEANED = ".cleaned"
SETTLE_S = 300.0


def _filesystem(path: Path) -> str:
    """The filesystem type holding `path` (from /proc/mounts: the longest mount prefix)."""
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                device, mount, fstype = line.split()[:3]
                if str(path).startswith(mount) and len(mount) > len(best):
                    best, kind = mount, f"{fstype} ({device} on {mount})"
    except OSError:
        pass
    return kind


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="scaled-down sizes and durations")
    parser.add_argument(
        "--only", default="", help=f"comma-separated scenarios: {', '.join(SCENARIOS)}"
    )
    parser.add_argument(
        "--target",
        choices=("auto", "nginx", "python"),
        default="auto",
        help="the target for pure-load scenarios (auto: nginx when installed)",
    )
    parser.add_argument(
        "--out", type=Path, help="where results go (default bench/ or bench/quick/)"
    )
    parser.add_argument(
        "--workdir", type=Path, help="scratch state directories (default bench/.work, on disk)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directories")
    parser.add_argument(
        "--settle",
        type=float,
        default=SETTLE_S,
        help="seconds to leave between the previous run's clean-up and this run (0: none)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="run each scenario N times")
    parser.add_argument(
        "--profile-windows", type=int, help="windows (1 s interval) of the profile scenario"
    )
    parser.add_argument(
        "--requests-per-tick",
        type=int,
        choices=(1, 3),
        default=3,
        help="3: /health, /status and /queue, as the seed probed (default); 1: /health only",
    )
    parser.add_argument(
        "--pythonpath",
        help="PYTHONPATH for the daemon: run a patched copy of postdeploy to compare a change",
    )
    args = parser.parse_args(argv)

    names = [n.strip() for n in args.only.split(",") if n.strip()] or DEFAULT
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    if args.target == "nginx" and not harness.nginx_path():
        parser.error("--target nginx: nginx is not installed (apt-get install nginx-light)")
    out = args.out or (HERE / "quick" if args.quick else HERE)
    workdir = (args.workdir or HERE / ".work").absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    sizes = QUICK if args.quick else FULL
    if args.profile_windows:
        sizes = replace(sizes, profile_windows=args.profile_windows)
    ctx = Ctx(sizes, args.quick, args.target, workdir, out, args.keep)
    ctx.paths = ctx.paths[: args.requests_per_tick]
    mode = "quick" if args.quick else "full"
    if args.pythonpath:
        harness.DAEMON_ENV["PYTHONPATH"] = str(Path(args.pythonpath).absolute())
    machine = harness.machine()
    machine["state_fs"] = _filesystem(workdir)
    machine["daemon_pythonpath"] = args.pythonpath
    machine["requests_per_tick"] = args.requests_per_tick
    machine["load_target"] = (
        "nginx" if args.target != "python" and harness.nginx_path() else ("python")
    )
    command = "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    harness.pin_self(harness.HARNESS_CORE)  # the daemon gets core 0 to itself (as far as we can)

    print(
        f"postdeploy benchmarks ({mode}); machine: {machine['nproc']} cores, "
        f"{machine['cpu_model']}, load {machine['loadavg_at_start']}; load target "
        f"{machine['load_target']}; scratch on {machine['state_fs']}",
        flush=True,
    )
    if "tmpfs" in machine["state_fs"]:
        print("  warning: the scratch directory is on tmpfs, not the normal disk", flush=True)
    print(report.HEADER, flush=True)
    _settle(workdir / CLEANED, args.settle)
    failed = False
    try:
        failed = _run(names, args, ctx, mode, machine, command, out)
    finally:
        removed = bool(ctx.made) and not args.keep
        ctx.cleanup()
        if removed:
            (workdir / CLEANED).touch()
    path = report.write_outputs(out, list(SCENARIOS), args.quick)
    print(f"\nwrote {path} and {out / 'lateness.png'}", flush=True)
    return 1 if failed else 0


def _settle(marker: Path, settle_s: float) -> None:
    """Wait until `settle_s` have passed since the previous run removed its files."""
    try:
        wait = marker.stat().st_mtime + settle_s - time.time()
    except FileNotFoundError:
        return
    if wait > 0:
        print(
            f"waiting {wait:.0f} s: the previous run removed its scratch files "
            f"{settle_s - wait:.0f} s ago (ext4 without a journal; --settle 0 skips this)",
            flush=True,
        )
        time.sleep(wait)


def _run(
    names: list[str],
    args: argparse.Namespace,
    ctx: Ctx,
    mode: str,
    machine: dict[str, Any],
    command: str,
    out: Path,
) -> bool:
    """Run each scenario (`--repeat` times); True if any failed to run."""
    failed = False
    for name in names:
        for attempt in range(max(1, args.repeat)):
            started = time.time()
            try:
                result = SCENARIOS[name](ctx)
                doc = report.to_doc(
                    result, mode=mode, started=started, machine=machine, command=command
                )
            except Exception as exc:
                traceback.print_exc()
                doc = report.error_doc(
                    name,
                    f"{type(exc).__name__}: {exc}",
                    mode=mode,
                    started=started,
                    machine=machine,
                    command=command,
                )
                failed = True
            if args.repeat > 1:
                doc["scenario"] = f"{name} #{attempt + 1}"
            report.save(doc, out)
            print(report.row(doc), flush=True)
    return failed


if __name__ == "__main__":
    sys.exit(main())
