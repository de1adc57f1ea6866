"""The `postdeploy` command line; thin: each command calls into the package.

Exit codes: 0 success, 1 failure, 2 invalid config or usage.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path

from postdeploy import __version__, layout
from postdeploy.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config
from postdeploy.layout import ItemKey, valid_name
from postdeploy.store import ItemStore

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2


def _config_path(args: argparse.Namespace) -> str:
    return args.config or os.environ.get("POSTDEPLOY_CONFIG") or DEFAULT_CONFIG_PATH


def _load(args: argparse.Namespace) -> Config:
    return load_config(_config_path(args))


def _state_root(args: argparse.Namespace) -> Path:
    if getattr(args, "state_dir", None):
        return Path(args.state_dir).absolute()
    return _load(args).state_path


def cmd_run(args: argparse.Namespace) -> int:
    import anyio

    from postdeploy import logs
    from postdeploy.daemon import Daemon

    path = _config_path(args)
    config = load_config(path)
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
            raise SystemExit(
                f"postdeploy: invalid name {name!r}: must match {layout.NAME_RE.pattern}"
            )
    return ItemKey(args.repo, args.work_item)


def cmd_arm(args: argparse.Namespace) -> int:
    key = _item(args)
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
    store = ItemStore(_state_root(args), key)
    try:
        store.root.mkdir(parents=True, exist_ok=True)  # like `mkdir -p` in a deploy script
        if store.path.is_dir() and store.exists_sync(layout.ARMED):
            print(f"postdeploy: {key} is already armed; left unchanged", file=sys.stderr)
        else:
            store.write_atomic_sync(layout.ARMED, data, create_dirs=True)
    except (OSError, layout.UnsafePath) as exc:
        print(f"postdeploy: cannot arm {key}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    print(store.path / layout.ARMED)
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    key = _item(args)
    store = ItemStore(_state_root(args), key)
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
    return view.print_show(config.state_path, key, config)


def cmd_demo(args: argparse.Namespace) -> int:
    from postdeploy import demo

    return demo.run(keep=args.keep)


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
    arm.set_defaults(func=cmd_arm)

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
    except ConfigError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
