"""The `postdeploy` command line; thin: each command calls into the package.

Exit codes: 0 success, 1 failure, 2 invalid config or usage; `wait`, `arm --wait` and
`rollback` also use 3 (no verdict, or refused) and 124 (timed out): see `postdeploy.wait`.
`cancel` exits 3 when the window already finished (or was rejected): nothing is written.
"""

# Each command imports only what it uses, inside its function. `arm`, `wait`, `cancel` and
# `rollback` need only the state directory and the repo names: they read the config with
# `configfile.read_essentials` (tomllib alone, no pydantic models: a config broken in other
# keys is the daemon's and `check-config`'s to report); `run`, `check-config`, `status` and
# `show` validate the whole file with `config`. Only `run` loads the daemon.
# tests/unit/test_cli_imports.py pins it; docs/PERFORMANCE.md has the figures.

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from postdeploy import DEFAULT_CONFIG_PATH, __version__, layout
from postdeploy.configfile import ConfigError, Essentials, config_path, read_essentials
from postdeploy.layout import ItemKey, valid_name
from postdeploy.store import ItemStore

if TYPE_CHECKING:
    from postdeploy.config import Config

EXIT_OK, EXIT_FAIL, EXIT_CONFIG, EXIT_NO_EFFECT = 0, 1, 2, 3


class UsageError(Exception):
    """A bad argument: the message is printed and the command exits 2, having written nothing."""


def _config_path(args: argparse.Namespace) -> str:
    return config_path(args.config)


def _load(args: argparse.Namespace) -> Config:
    """The whole config, every key validated (pydantic)."""
    from postdeploy.config import load_config

    return load_config(_config_path(args))


def _essentials(args: argparse.Namespace) -> Essentials:
    """The config's state directory, kill switch and repo names only (see `configfile`)."""
    return read_essentials(_config_path(args))


def _state_root(args: argparse.Namespace, config: Essentials | None = None) -> Path:
    """`--state-dir` if given, else the config's `state_dir`."""
    if getattr(args, "state_dir", None):
        return Path(args.state_dir).absolute()
    return (config or _essentials(args)).state_path


def _existing_root(args: argparse.Namespace, config: Essentials | None = None) -> Path:
    """The state directory, which must exist: a command never creates it (the daemon does,
    and a typo in `--state-dir` must not quietly start a state directory nobody watches)."""
    root = _state_root(args, config)
    if not root.is_dir():
        raise UsageError(f"the state directory {root} does not exist (is the daemon installed?)")
    return root


def cmd_run(args: argparse.Namespace) -> int:
    from postdeploy import logs
    from postdeploy.config import load_config

    path = _config_path(args)
    config = load_config(path)
    if not sys.stdout.isatty():
        logs.keep_rich_out()  # JSON lines (see `logs.configure`): rich would go unused

    import anyio

    from postdeploy.daemon import Daemon

    logs.configure(config.daemon.log_level)
    logs.register_config_secrets(config)
    # Everything loaded so far (modules, config, logging) lives as long as the process: keep
    # it out of the cyclic collector's sight. Otherwise each full collection walks those
    # ~50,000 objects again, and under load one comes every few seconds and stalls every
    # window's timer for 20-90 ms.
    gc.freeze()
    return anyio.run(Daemon(config, path).serve)


def cmd_check_config(args: argparse.Namespace) -> int:
    from postdeploy.config import check_config_file

    path = args.path or _config_path(args)
    config, errors, warnings = check_config_file(path)
    for line in errors + warnings:  # every problem of the file in one run
        print(line, file=sys.stderr)
    if config is None:
        return EXIT_CONFIG
    print(f"{path}: ok ({len(config.repos)} repos, state_dir {config.state_path})")
    return EXIT_OK


def _item(args: argparse.Namespace) -> ItemKey:
    for name in (args.repo, args.work_item):
        if not valid_name(name):
            raise UsageError(f"invalid name {name!r}: must match {layout.NAME_RE.pattern}")
    return ItemKey(args.repo, args.work_item)


def _known_repo(config: Essentials, repo: str) -> None:
    if repo not in config.repos:
        raise UsageError(
            f"no [repos.{repo}] table in the config: nothing would watch this window "
            f"(the daemon would reject it)"
        )


def _finished(root: Path, key: ItemKey) -> tuple[dict[str, object] | None, str | None]:
    """The item's `done` object and `rejected` reason, where they exist (read, never written)."""
    from postdeploy import wait

    try:
        seen = wait.look(root, key)
    except (OSError, layout.UnsafePath):
        return None, None
    return seen.done, seen.rejected


def cmd_arm(args: argparse.Namespace) -> int:
    """Write `armed`; with `--wait`, then wait as `wait` does. Every check comes before the
    first write: a bad name, a bad --meta, an unknown repo or a missing state directory
    writes nothing at all (exit 2)."""
    key = _item(args)
    if not args.wait and (args.timeout is not None or args.json):
        raise UsageError("--timeout and --json go with --wait")
    metadata: dict[str, str] = {}
    for pair in args.meta:
        name, sep, value = pair.partition("=")
        if not sep or not layout.META_KEY_RE.fullmatch(name):
            print(
                f"postdeploy: --meta {pair!r}: expected KEY=VALUE, KEY matching "
                f"{layout.META_KEY_RE.pattern}",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        metadata[name] = value
    data = json.dumps(metadata, ensure_ascii=False).encode() + b"\n" if metadata else b""
    try:
        layout.parse_armed(data)
    except layout.ArmedError as exc:
        print(f"postdeploy: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    config = _essentials(args)
    _known_repo(config, key.repo)
    root = _existing_root(args, config)
    store = ItemStore(root, key)
    done, rejected = _finished(root, key)
    if not config.enabled:
        _warn(
            f"the kill switch is thrown (enabled = false in {_config_path(args)}): "
            f"this window will finish DISABLED, unjudged"
        )
    if done is not None:
        _warn(
            f"{key} already finished ({done.get('status')} / {done.get('action_taken')}): "
            f"arming it again changes nothing; nothing written"
        )
    elif rejected is not None:
        _warn(f"{key} was rejected: {rejected}; fix `armed`, then delete `rejected`")
    try:
        if done is not None:
            pass  # finished for good: nothing to write
        elif store.path.is_dir() and store.exists_sync(layout.ARMED):
            _warn(f"{key} is already armed; left unchanged")
        else:
            store.write_atomic_sync(layout.ARMED, data, create_dirs=True)
    except (OSError, layout.UnsafePath) as exc:
        print(f"postdeploy: cannot arm {key}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    # With --json, stdout is the verdict's one JSON object alone (`| jq` must parse it): the
    # path goes to stderr with the progress lines.
    print(store.path / layout.ARMED, flush=True, file=sys.stderr if args.json else sys.stdout)
    if not args.wait:
        return EXIT_OK
    return _wait_for_verdict(args, root, key)


def _warn(text: str) -> None:
    print(f"postdeploy: warning: {text}", file=sys.stderr, flush=True)


def cmd_wait(args: argparse.Namespace) -> int:
    """Wait for the item's verdict (read-only). With `--state-dir`, no config is read at all,
    so a user who may only read the state directory can wait."""
    key = _item(args)
    config = None if args.state_dir else _essentials(args)
    root = _existing_root(args, config)
    if config is not None and key.repo not in config.repos and _finished(root, key) == (None, None):
        _known_repo(config, key.repo)  # nothing will ever finish it: say so now
    return _wait_for_verdict(args, root, key)


def _wait_for_verdict(args: argparse.Namespace, root: Path, key: ItemKey) -> int:
    """`wait`'s answer. Ticks are shown out of the window's `max_ticks`, which the daemon
    writes in `window.json` before the window's first tick."""
    from postdeploy import wait

    return wait.wait_for_verdict(root, key, timeout=args.timeout, as_json=args.json)


def cmd_rollback(args: argparse.Namespace) -> int:
    """A person's rollback: write `rollback.request`, then wait for the daemon's answer."""
    from postdeploy import wait

    key = _item(args)
    config = _essentials(args)
    _known_repo(config, key.repo)
    root = _existing_root(args, config)
    return wait.request_rollback(root, key, reason=args.reason, timeout=args.timeout)


def cmd_cancel(args: argparse.Namespace) -> int:
    key = _item(args)
    root = _state_root(args)
    store = ItemStore(root, key)
    done, rejected = _finished(root, key)
    if done is not None:
        print(
            f"postdeploy: {key} already finished ({done.get('status')} / "
            f"{done.get('action_taken')}): cancel changes nothing; nothing written",
            file=sys.stderr,
        )
        return EXIT_NO_EFFECT
    if rejected is not None:
        print(
            f"postdeploy: {key} was rejected ({rejected}): there is no window to cancel; "
            f"nothing written",
            file=sys.stderr,
        )
        return EXIT_NO_EFFECT
    try:
        if not store.exists_sync(layout.ARMED):
            print(f"postdeploy: {key} is not armed", file=sys.stderr)
            return EXIT_FAIL
        store.write_atomic_sync(layout.CANCEL, b"")
    except FileNotFoundError:
        print(f"postdeploy: {key} is not armed", file=sys.stderr)
        return EXIT_FAIL
    except (OSError, layout.UnsafePath) as exc:
        print(f"postdeploy: cannot cancel {key}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    print(store.path / layout.CANCEL)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from postdeploy import status, view

    snapshot = status.collect(_load(args))
    if args.json:
        print(json.dumps(snapshot, indent=2))
    else:
        view.print_status(snapshot)
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from postdeploy import view

    key = _item(args)
    config = _load(args)
    if args.html:
        from postdeploy.windowpage import window_page

        state, page = window_page(config.state_path, key, config)
        print(page, end="")
        return EXIT_OK if state not in ("missing", "unreadable") else EXIT_FAIL
    if args.json:
        from postdeploy import status

        shown = status.item_json(config.state_path, key, config)
        print(json.dumps(shown, indent=2, ensure_ascii=False))
        return EXIT_OK if shown.get("state") not in ("missing", "unreadable") else EXIT_FAIL
    return view.print_show(config.state_path, key, config)


def cmd_demo(args: argparse.Namespace) -> int:
    from postdeploy import demo

    return demo.run(keep=args.keep)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a finite number >= 0")
    return value


def _wait_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout", type=_seconds, metavar="S", help="give up after S seconds (exit 124)"
    )
    parser.add_argument(
        "--json", action="store_true", help="the outcome as the `done` object, with repo and item"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="postdeploy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"postdeploy {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        help=f"config file (default: $POSTDEPLOY_CONFIG, then {DEFAULT_CONFIG_PATH})",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", parents=[common], help="run the daemon in the foreground")
    run.set_defaults(func=cmd_run)

    arm = sub.add_parser("arm", parents=[common], help="arm a window (writes `armed` atomically)")
    arm.add_argument("repo")
    arm.add_argument("work_item")
    arm.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    arm.add_argument("--state-dir", help="the state directory (default: from the config)")
    arm.add_argument("--wait", action="store_true", help="then wait for the verdict, as `wait`")
    _wait_options(arm)
    arm.set_defaults(func=cmd_arm)

    wait = sub.add_parser(
        "wait",
        parents=[common],
        help="wait for a window's verdict (exit 0 healthy, 1 degraded, 3 no verdict, 124 timeout)",
    )
    wait.add_argument("repo")
    wait.add_argument("work_item")
    wait.add_argument(
        "--state-dir", help="the state directory (default: from the config, which is then not read)"
    )
    _wait_options(wait)
    wait.set_defaults(func=cmd_wait)

    rollback = sub.add_parser(
        "rollback", parents=[common], help="a person's rollback: ask the daemon, wait for it"
    )
    rollback.add_argument("repo")
    rollback.add_argument("work_item")
    rollback.add_argument("--reason", default="a person asked for the rollback", metavar="TEXT")
    rollback.add_argument(
        "--timeout", type=_seconds, metavar="S", help="give up after S seconds (exit 124)"
    )
    rollback.set_defaults(func=cmd_rollback)

    cancel = sub.add_parser("cancel", parents=[common], help="cancel a window (writes `cancel`)")
    cancel.add_argument("repo")
    cancel.add_argument("work_item")
    cancel.add_argument("--state-dir", help="the state directory (default: from the config)")
    cancel.set_defaults(func=cmd_cancel)

    stat = sub.add_parser("status", parents=[common], help="open windows and recent outcomes")
    stat.add_argument("--json", action="store_true", help="machine-readable output")
    stat.set_defaults(func=cmd_status)

    show = sub.add_parser("show", parents=[common], help="one window's timeline and report")
    show.add_argument("repo")
    show.add_argument("work_item")
    form = show.add_mutually_exclusive_group()
    form.add_argument(
        "--json", action="store_true", help="the window as JSON: done, window.json, series summary"
    )
    form.add_argument(
        "--html", action="store_true", help="a self-contained HTML page: verdict, timeline, probes"
    )
    show.set_defaults(func=cmd_show)

    check = sub.add_parser("check-config", parents=[common], help="validate a config file")
    check.add_argument("path", nargs="?", help="the file (default: --config)")
    check.set_defaults(func=cmd_check_config)

    demo = sub.add_parser(
        "demo", parents=[common], help="the whole story on this machine, in a minute"
    )
    demo.add_argument("--keep", action="store_true", help="keep the temporary state directory")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except UsageError as exc:
        print(f"postdeploy: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ConfigError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
