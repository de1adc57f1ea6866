"""Hostile input at the daemon level: what lands in the state directory and the config file.

One long-lived daemon per test (started inside the test); hypothesis feeds it sentinel names,
sentinel contents and config files. Whatever it gets, the daemon never lets an exception
escape (no `intake.failed` or `window.error` line, nothing on stderr), stays alive, and always
answers with a window, a `rejected` file with a clear reason, a logged refusal, or a config
error in `PATH: key: message` form. Symlinks and special files never lead it outside the
state directory: the directory outside is compared byte for byte before and after.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

if TYPE_CHECKING:
    from collections.abc import Callable

    from chaos.conftest import Target
    from support.daemon import DaemonPool


NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # the contract's name rule
META_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
DEADLINE_S = 30.0

# One example = one sentinel the daemon must answer; a few dozen keep a test to seconds.
EXAMPLES = settings(
    max_examples=20,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _config(kit: Any, tmp: Path, url: str, **repo: Any) -> Path:
    """A config with one watched repo `shop` (alert only) and short windows."""
    path = tmp / "config.toml"
    path.write_text(
        kit.render_toml(
            {
                "state_dir": "state",
                "defaults": {
                    "window_s": 0.4,
                    "interval_s": 0.1,
                    "initial_delay_s": 0.05,
                    "probe_timeout_s": 0.08,
                },
                "daemon": {"rescan_interval_s": 0.2},
                "repos": {"shop": {"base_url": url, "fivexx_paths": ["/status"], **repo}},
            }
        )
    )
    return path


def _wait(what: str, check: Any, run: Any, timeout: float = DEADLINE_S) -> None:
    """Poll `check` (a file appearing) until it holds; fails with the daemon's log tail."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline or not run.alive:
            raise AssertionError(f"timed out waiting for {what}\n{run.tail(8)}")
        time.sleep(0.01)


def _assert_sane(run: Any) -> None:
    assert run.alive, run.tail()
    assert not run.unhandled(), "\n".join(run.unhandled())


# -- sentinel names -------------------------------------------------------------------------

TRICKY_NAMES = [
    "..a",
    "a..",
    "a..b",
    "...",
    ".x",
    "-x",
    "_x",
    "x-",
    "x y",
    " x",
    "x ",
    "x\n",
    "x\t",
    "\u00e4",
    "\uff21",
    "a\u202eb",
    "x" * 128,
    "x" * 129,
    "$(id)",
    "`id`",
    "x;y",
    "x|y",
    "*",
    "~",
    "%2e%2e",
    "x:y",
    "\\",
    "a\\..\\b",
    "CON",
    "NUL.txt",
    "\u2024\u2024",
    "x\x7f",
    "\x01",
]
fs_name = st.one_of(
    st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,20}\Z"),
    st.sampled_from(TRICKY_NAMES),
    st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=["Cs"]), max_size=30),
).filter(lambda n: n not in ("", ".", "..") and len(n.encode()) <= 255)


def test_sentinel_names_start_a_window_or_are_rejected_or_ignored(
    tmp_path: Path, kit: Any, daemons: DaemonPool, targets: Callable[[], Target]
) -> None:
    """Every directory name is either a window (valid names, configured repo), a `rejected`
    file (valid names, unknown repo), or refused and logged (anything else), with nothing
    written inside a refused directory."""
    target = targets()
    run = daemons.start(_config(kit, tmp_path, target.url))
    state = tmp_path / "state"
    refused: dict[Path, list[Any]] = {}

    @EXAMPLES
    @given(repo=st.one_of(st.just("shop"), st.just("nowhere"), fs_name), item=fs_name)
    def example(repo: str, item: str) -> None:
        # Idempotent: hypothesis replays an example when it shrinks a failure.
        directory = state / repo / item
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            assume(False)  # not a name this file system takes
        if not (directory / "armed").exists():
            (directory / "armed").touch()
        valid = bool(NAME_RE.match(repo) and NAME_RE.match(item)) and "\n" not in repo + item
        if valid and repo == "shop":
            run.wait_for("window.armed", repo=repo, work_item=item)
        elif valid:
            _wait(f"rejected in {directory}", (directory / "rejected").exists, run)
            reason = (directory / "rejected").read_text()
            assert reason.endswith("\n") and reason.count("\n") == 1, reason
            assert f"no [repos.{repo}] section" in reason
        else:
            refused.setdefault(directory, kit.listing(directory))
            if not repo.startswith(".") and not (NAME_RE.match(repo) and item.startswith(".")):
                # Logged as ignored, at the first level that is wrong.
                paths = {str(state / repo), str(directory)}
                deadline = time.monotonic() + DEADLINE_S
                while not any(line.get("path") in paths for line in run.find("sentinel.ignored")):
                    assert time.monotonic() < deadline, f"{directory} not logged\n{run.tail()}"
                    time.sleep(0.02)

    example()
    # A window armed now is taken in after every refused directory was scanned at least once.
    (state / "shop" / "zz-last").mkdir(parents=True)
    (state / "shop" / "zz-last" / "armed").touch()
    run.wait_for("window.armed", work_item="zz-last")
    run.wait_for("window.finished", work_item="zz-last")
    for directory, before in refused.items():
        assert kit.listing(directory) == before, f"something was written in {directory}"
    _assert_sane(run)


# -- sentinel contents ----------------------------------------------------------------------


def oracle(data: bytes) -> dict[str, str] | None:
    """The contract's rule for `armed`: its metadata, or None when it must be rejected."""
    if len(data) > 64 * 1024:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    for key, item in value.items():
        if not META_KEY_RE.match(key) or "\n" in key or not isinstance(item, str):
            return None
    if value.get("mode", "act") not in ("act", "shadow"):
        return None
    return value


json_scalar = st.one_of(st.text(max_size=20), st.integers(), st.floats(), st.booleans(), st.none())
meta_key = st.one_of(
    st.sampled_from(["branch", "commit", "image", "deployed_by", "url", "mode"]),
    st.from_regex(r"\A[A-Za-z][A-Za-z0-9_]{0,8}\Z"),
    st.text(max_size=10),
    st.just("k" * 65),
)
metadata = st.dictionaries(
    meta_key,
    st.one_of(st.text(max_size=40), json_scalar, st.lists(json_scalar, max_size=3)),
    max_size=6,
)
armed_bytes = st.one_of(
    st.binary(max_size=64),
    metadata.map(lambda d: json.dumps(d).encode()),
    metadata.map(lambda d: json.dumps(d, ensure_ascii=False, indent=2).encode()),
    st.sampled_from(
        [
            b"",
            b" \n\t",
            b"null",
            b"[]",
            b'"text"',
            b"{}",
            b"\xef\xbb\xbf{}",
            b'{"a": NaN}',
            b'{"a": "1", "a": 2}',
            b'{"mode": "weird"}',
            b'{"mode": "shadow", "commit": "$(touch pwned)"}',
            b'{"a": "' + b"x" * (64 * 1024) + b'"}',
            b"x" * (64 * 1024 + 1),
            b'{"v": "\\u0000"}',
            b"{" * 1000,
        ]
    ),
)


def test_armed_contents_start_a_window_or_are_rejected_with_a_reason(
    tmp_path: Path, kit: Any, daemons: DaemonPool, targets: Callable[[], Target]
) -> None:
    """Any bytes in `armed`: a window with exactly that metadata, or a one-line `rejected`."""
    target = targets()
    run = daemons.start(_config(kit, tmp_path, target.url))
    shop = tmp_path / "state" / "shop"
    counter = iter(range(10**6))

    @EXAMPLES
    @given(data=armed_bytes)
    def example(data: bytes) -> None:
        item = f"a{next(counter):05d}"
        directory = shop / item
        directory.mkdir(parents=True)
        (directory / "armed").write_bytes(data)
        expected = oracle(data)
        if expected is not None and any("\x00" in v for v in expected.values()):
            # NUL is a string character to JSON but no environment value can hold it:
            # rejecting it at the door is as good as accepting it.
            _wait(
                f"{item} taken in or rejected",
                lambda: (
                    (directory / "rejected").exists()
                    or bool(run.find("window.armed", work_item=item))
                ),
                run,
            )
        elif expected is None:
            _wait(f"rejected in {directory}", (directory / "rejected").exists, run)
            reason = (directory / "rejected").read_text()
            assert reason.endswith("\n") and reason.count("\n") == 1 and reason.strip(), reason
            assert not (directory / "window.json").exists()
            run.wait_for("sentinel.rejected", work_item=item)
        else:
            line = run.wait_for("window.armed", work_item=item)
            assert line is not None and line["metadata"] == expected
            assert not (directory / "rejected").exists()

    example()
    _assert_sane(run)


@pytest.mark.parametrize(
    "armed",
    [
        # Inside the 64 KiB limit, but it exhausts the JSON parser's recursion.
        pytest.param(b"[" * 50_000, id="deeply-nested"),
        # Parses, but cannot be written back as UTF-8 (`window.json`, the environment).
        pytest.param(b'{"branch": "\\ud800"}', id="lone-surrogate"),
    ],
)
def test_armed_that_breaks_the_parser_or_encoder_is_rejected_not_an_intake_failure(
    tmp_path: Path, kit: Any, daemons: DaemonPool, targets: Callable[[], Target], armed: bytes
) -> None:
    """`rejected`, not `intake.failed` on every rescan."""
    run = daemons.start(_config(kit, tmp_path, targets().url))
    directory = tmp_path / "state" / "shop" / "w1"
    directory.mkdir(parents=True)
    (directory / "armed").write_bytes(armed)
    _wait(
        "rejected or intake.failed",
        lambda: (directory / "rejected").exists() or bool(run.find("intake.failed")),
        run,
    )
    _assert_sane(run)
    assert (directory / "rejected").exists()


# -- config files ---------------------------------------------------------------------------

toml_value = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats().map(
        lambda f: (
            "nan"
            if f != f
            else ("inf" if f == float("inf") else "-inf" if f == float("-inf") else repr(f))
        )
    ),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.text(max_size=20).map(json.dumps),
    st.sampled_from(
        [
            "[]",
            '["/bin/true"]',
            "{}",
            '""',
            '"relative/dir"',
            "[1, 2]",
            "0",
            "-1",
            "1e-9",
            "1979-05-27T07:32:00Z",
        ]
    ),
)
CONFIG_KEYS = [
    ("", "state_dir"),
    ("", "enabled"),
    ("", "nonsense"),
    ("defaults", "window_s"),
    ("defaults", "interval_s"),
    ("defaults", "initial_delay_s"),
    ("defaults", "fail_threshold"),
    ("defaults", "fivexx_threshold"),
    ("defaults", "min_samples"),
    ("defaults", "probe_timeout_s"),
    ("defaults", "auto_rollback"),
    ("defaults", "mode"),
    ("defaults", "typo_s"),
    ("repos.shop", "base_url"),
    ("repos.shop", "health_path"),
    ("repos.shop", "fivexx_paths"),
    ("repos.shop", "rollback_command"),
    ("repos.shop", "self_hosting"),
    ("repos.shop", "rollback_env"),
    ("daemon", "log_level"),
    ("daemon", "rescan_interval_s"),
    ("daemon", "max_inflight_requests"),
    ("outbox", "max_age_s"),
    ('repos."bad name"', "base_url"),
    ("repos.x", "base_url"),
    ("metrics", "listen"),
]


def _base_lines(url: str) -> dict[str, dict[str, str]]:
    return {
        "": {"state_dir": '"state"'},
        "defaults": {
            "window_s": "0.4",
            "interval_s": "0.1",
            "initial_delay_s": "0.05",
            "probe_timeout_s": "0.08",
        },
        "daemon": {"rescan_interval_s": "0.2"},
        "repos.shop": {"base_url": json.dumps(url), "fivexx_paths": '["/status"]'},
    }


def _render(tables: dict[str, dict[str, str]]) -> str:
    out = "".join(f"{k} = {v}\n" for k, v in tables.get("", {}).items())
    for name, table in tables.items():
        if name:
            out += f"\n[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in table.items())
    return out


def test_config_reloads_apply_or_report_every_problem(
    tmp_path: Path, kit: Any, daemons: DaemonPool, targets: Callable[[], Target]
) -> None:
    """SIGHUP with any config file on disk: `config.reloaded`, or `config.reload_failed` with
    `PATH: key: message` problems and the old config in force; the daemon stays alive."""
    from postdeploy.config import ConfigError, load_config

    target = targets()
    path = _config(kit, tmp_path, target.url)
    good = path.read_text()
    run = daemons.start(path)

    def reload(text: bytes) -> dict[str, Any]:
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(text)
        tmp.replace(path)  # atomically: the daemon never reads half a file
        mark = run.count()
        run.send(signal.SIGHUP)
        line = run.wait_for(("config.reloaded", "config.reload_failed"), after=mark)
        assert line is not None
        return line

    edits = st.lists(
        st.tuples(st.sampled_from(CONFIG_KEYS), st.one_of(st.none(), toml_value)), max_size=4
    )

    @EXAMPLES
    @given(
        raw=st.one_of(
            edits.map(lambda e: ("edits", e)),
            st.text(max_size=200).map(lambda t: ("text", t)),
            st.binary(max_size=100).map(lambda b: ("bytes", b)),
        )
    )
    def example(raw: tuple[str, Any]) -> None:
        kind, value = raw
        if kind == "edits":
            tables = _base_lines(target.url)
            for (table, key), new in value:
                if new is None:
                    tables.get(table, {}).pop(key, None)
                else:
                    tables.setdefault(table, {})[key] = new
            data = _render(tables).encode()
        elif kind == "text":
            data = value.encode("utf-8", "surrogatepass")
        else:
            data = value
        probe = path.with_name("probe.toml")  # the same file, judged in this process
        probe.write_bytes(data)
        try:
            load_config(probe)
            expected_ok = True
        except ConfigError:
            expected_ok = False
        line = reload(data)
        if line["event"] == "config.reload_failed":
            problems = line["problems"]
            assert problems, line
            for problem in problems:
                assert re.match(rf"^{re.escape(str(path))}: \S[^\n]*: \S", problem), problem
        else:
            assert expected_ok, f"the daemon took a config that check-config refuses: {line}"
        _assert_sane(run)

    example()
    # The good config again, and the daemon still watches windows.
    assert reload(good.encode())["event"] == "config.reloaded"
    (tmp_path / "state" / "shop" / "after").mkdir(parents=True)
    (tmp_path / "state" / "shop" / "after" / "armed").touch()
    run.wait_for("window.finished", work_item="after", status="HEALTHY")
    _assert_sane(run)


@pytest.mark.parametrize("how", ["check-config", "reload"])
def test_deeply_nested_config_is_a_config_error(
    tmp_path: Path, kit: Any, daemons: DaemonPool, targets: Callable[[], Target], how: str
) -> None:
    """`x = [[[[...]]]]` exhausts tomllib's recursion: still a config error (exit 2 from
    `check-config`, `config.reload_failed` on SIGHUP). (Regression: a traceback and exit 1,
    and a reload that killed the daemon.)"""
    import subprocess
    import sys

    path = _config(kit, tmp_path, targets().url)
    deep = path.read_text().replace("[daemon]", "x = " + "[" * 1500 + "]" * 1500 + "\n[daemon]")
    if how == "check-config":
        bad = tmp_path / "deep.toml"
        bad.write_text(deep)
        result = subprocess.run(
            [sys.executable, "-m", "postdeploy", "check-config", str(bad)],
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
        )
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-500:]
        return
    run = daemons.start(path)
    path.write_text(deep)
    mark = run.count()
    run.send(signal.SIGHUP)
    run.wait_for(("config.reloaded", "config.reload_failed"), after=mark, timeout=10)
    _assert_sane(run)


# -- path traversal -------------------------------------------------------------------------


def test_symlinks_and_special_files_never_lead_outside(
    tmp_path: Path, kit: Any, daemons: DaemonPool, targets: Callable[[], Target]
) -> None:
    """Symlinked repo and item directories, a symlinked `armed`, special files where files or
    directories belong: refused, logged, and nothing outside the state directory changes."""
    outside = tmp_path / "outside"
    (outside / "repo" / "item").mkdir(parents=True)
    (outside / "repo" / "item" / "armed").touch()
    (outside / "item").mkdir()
    (outside / "item" / "armed").touch()
    (outside / "armed").write_text("{}")
    (outside / "series.jsonl").write_text("")
    before = kit.listing(outside)

    state = tmp_path / "state"
    (state / "shop").mkdir(parents=True)
    (state / "evil").symlink_to(outside / "repo")  # a configured repo name, symlinked
    (state / "shop" / "linked-item").symlink_to(outside / "item")
    (state / "shop" / "linked-armed").mkdir()
    (state / "shop" / "linked-armed" / "armed").symlink_to(outside / "armed")
    (state / "shop" / "dangling").mkdir()
    (state / "shop" / "dangling" / "armed").symlink_to(outside / "nothing-here")
    (state / "shop" / "dir-armed" / "armed").mkdir(parents=True)
    (state / "shop" / "fifo-armed").mkdir()
    os.mkfifo(state / "shop" / "fifo-armed" / "armed")
    (state / "shop" / "file-item").write_text("not a directory")
    (state / "shop" / "relative").mkdir()
    (state / "shop" / "relative" / "armed").symlink_to("../../../outside/armed")

    target = targets()
    path = _config(kit, tmp_path, target.url)
    text = path.read_text() + f'\n[repos.evil]\nbase_url = "{target.url}"\n'
    path.write_text(text)
    run = daemons.start(path)
    for item in ("linked-armed", "dangling", "dir-armed", "fifo-armed", "relative"):
        _wait(f"rejected in {item}", (state / "shop" / item / "rejected").exists, run)
        reason = (state / "shop" / item / "rejected").read_text()
        assert "not a regular file" in reason, reason
    for bad in (state / "evil", state / "shop" / "linked-item", state / "shop" / "file-item"):
        deadline = time.monotonic() + DEADLINE_S
        while not any(line.get("path") == str(bad) for line in run.find("sentinel.ignored")):
            assert time.monotonic() < deadline, f"{bad} not logged\n{run.tail()}"
            time.sleep(0.02)
    # A real window afterwards proves the scan went past all of them.
    (state / "shop" / "real").mkdir()
    (state / "shop" / "real" / "armed").touch()
    run.wait_for("window.finished", work_item="real", status="HEALTHY")
    assert not run.find("window.armed", repo="evil")
    assert kit.listing(outside) == before
    _assert_sane(run)


def _victim(tmp: Path) -> tuple[Path, Path]:
    """A file outside the state directory that looks like something worth writing to."""
    outside = tmp / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_text(
        '{"armed_at": 1, "initial_delay_s": 0, "interval_s": 1, "max_ticks": 1, '
        '"first_seen_at": 1}\n'
    )
    return outside, victim


def _rolling_back_config(
    kit: Any, tmp: Path, targets: Callable[[], Target], rollback_command: list[str], **repo: Any
) -> Path:
    """`_config` against a new target whose health fails: `shop` degrades at its first probe
    and rolls back with `rollback_command`."""
    target = targets()
    target.set(health="fail")
    return _config(
        kit,
        tmp,
        target.url,
        auto_rollback=True,
        fail_threshold=1,
        rollback_command=rollback_command,
        **repo,
    )


def _hook_script(path: Path, text: str) -> Path:
    """An executable script at `path`."""
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _degrading_config(kit: Any, tmp: Path, targets: Callable[[], Target]) -> Path:
    """`shop` degrades at once and rolls back, so every work file gets written."""
    hook = _hook_script(tmp / "hook.sh", "#!/bin/sh\necho rolled back\n")
    return _rolling_back_config(kit, tmp, targets, [str(hook)])


def _finished_or_refused(directory: Path) -> bool:
    """`done` or `rejected` exists as a regular file (not the symlink a test planted)."""
    return any(
        (directory / name).exists() and not (directory / name).is_symlink()
        for name in ("done", "rejected")
    )


def test_precreated_symlinked_work_files_are_never_written_through(
    tmp_path: Path, kit: Any, daemons: DaemonPool, targets: Callable[[], Target]
) -> None:
    """A deploy user pre-creates the daemon's own files as symlinks to a file outside
    (`report.md -> /etc/passwd`): the outside file never changes, the link is replaced or
    left alone, and the window ends; a symlinked `done` keeps the item from ever starting."""
    outside, victim = _victim(tmp_path)
    before = kit.listing(outside)
    path = _degrading_config(kit, tmp_path, targets)
    shop = tmp_path / "state" / "shop"
    for name in ("report.md", "rollback.log", "done"):
        (shop / name).mkdir(parents=True)
        (shop / name / name).symlink_to(victim)
    run = daemons.start(path)
    for name in ("report.md", "rollback.log", "done"):  # one after another: none supersedes
        (shop / name / "armed").touch()
        if name != "done":
            _wait(f"{name}: done", lambda n=name: _finished_or_refused(shop / n), run)
            if (shop / name / "rejected").exists():  # refusing the planted link is fine too
                assert "symlink" in (shop / name / "rejected").read_text()
            else:
                done = json.loads((shop / name / "done").read_text())
                assert done["action_taken"] == "ROLLBACK_OK", done
    # A symlinked `done` means "finished": the item is never taken in, and never written to.
    (shop / "later").mkdir()
    (shop / "later" / "armed").touch()
    run.wait_for("window.finished", work_item="later")
    assert not run.find("window.armed", work_item="done")
    assert (shop / "done" / "done").is_symlink() and not (shop / "done" / "window.json").exists()
    assert kit.listing(outside) == before
    _assert_sane(run)


@pytest.mark.parametrize("name", ["series.jsonl", "window.json"])
def test_precreated_symlinked_state_file_is_rejected(
    tmp_path: Path, kit: Any, daemons: DaemonPool, targets: Callable[[], Target], name: str
) -> None:
    """`series.jsonl` or `window.json` -> outside: never followed, and the item is `rejected`
    with a reason. (Regressions: for `series.jsonl` the ELOOP escaped the window's task as
    `window.error`, ending it as ERROR; for `window.json` it escaped as `intake.failed` on
    every rescan, for ever.)"""
    outside, victim = _victim(tmp_path)
    before = kit.listing(outside)
    path = _degrading_config(kit, tmp_path, targets)
    directory = tmp_path / "state" / "shop" / "w1"
    directory.mkdir(parents=True)
    (directory / name).symlink_to(victim)
    run = daemons.start(path)
    (directory / "armed").touch()
    _wait("done or rejected", lambda: _finished_or_refused(directory), run)
    assert kit.listing(outside) == before  # never written through, bug or not
    _assert_sane(run)


def test_fifo_as_series_file_is_never_opened(
    tmp_path: Path, kit: Any, daemons: DaemonPool, targets: Callable[[], Target]
) -> None:
    """A FIFO where `series.jsonl` belongs is never opened: O_NOFOLLOW does not stop a FIFO,
    and opening one blocks, in a worker thread that cannot be cancelled, until the other end
    is opened (the window would never end and SIGTERM could not stop the daemon). The test
    would see the daemon waiting on it: a non-blocking open for writing succeeds only while a
    reader waits. (Regression: that is what happened.)"""
    path = _config(kit, tmp_path, targets().url)
    directory = tmp_path / "state" / "shop" / "w1"
    directory.mkdir(parents=True)
    fifo = directory / "series.jsonl"
    os.mkfifo(fifo)
    run = daemons.start(path)
    (directory / "armed").touch()

    def blocked_on_fifo() -> bool:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return False  # ENXIO: nobody has it open for reading
        os.close(fd)  # the daemon reads EOF and goes on, only to block again later
        return True

    deadline = time.monotonic() + DEADLINE_S
    while not _finished_or_refused(directory):
        assert not blocked_on_fifo(), "the daemon opened a FIFO in the item directory"
        assert time.monotonic() < deadline, run.tail(8)
        time.sleep(0.01)
    assert run.stop(signal.SIGTERM) == 0


# -- metadata never becomes code ------------------------------------------------------------

SHELL_HOOK = """\
#!/bin/sh
# Records its argv and the POSTDEPLOY_ environment exactly, as NUL-separated records.
out="$1"; shift
{{ printf 'argc=%s\\0' "$#"; for a in "$@"; do printf 'arg=%s\\0' "$a"; done
   env -0 | grep -z '^POSTDEPLOY_'; }} > "$out.tmp"
mv "$out.tmp" "$out"
"""

meta_value = st.one_of(
    st.sampled_from(
        [
            "$(touch {canary})",
            "`touch {canary}`",
            "; touch {canary}",
            "| touch {canary}",
            "&& touch {canary}",
            "\n touch {canary}",
            "' ; touch {canary} ; '",
            '" ; touch {canary} ; "',
            "${IFS}touch${IFS}{canary}",
            "$((1+1))",
            "-rf /",
            "--help",
            "*",
            "\\",
            "%s%n",
            "\u00e9\u2028\u202e",
        ]
    ),
    st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=30),
)


def test_metadata_reaches_the_rollback_only_as_environment_values(
    tmp_path: Path, kit: Any, daemons: DaemonPool, targets: Callable[[], Target]
) -> None:
    """Shell metacharacters in metadata arrive byte for byte in POSTDEPLOY_META_* and never
    run: the argv is exactly the configured one and no canary file ever appears."""
    canary = tmp_path / "pwned"
    hook = _hook_script(tmp_path / "hook.sh", SHELL_HOOK.format())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    path = _rolling_back_config(
        kit,
        tmp_path,
        targets,
        ["/bin/sh", str(hook), str(out_dir / "record"), "fixed arg"],
        rollback_env={"TARGET": "shop"},
        verify_ticks=0,
    )
    run = daemons.start(path)
    shop = tmp_path / "state" / "shop"
    counter = iter(range(10**6))

    @settings(
        max_examples=12,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(
        meta=st.dictionaries(
            st.sampled_from(["commit", "branch", "deployed_by", "image", "url", "extra_Key1"]),
            meta_value.map(lambda v: v.replace("{canary}", str(canary))),
            min_size=1,
            max_size=4,
        )
    )
    def example(meta: dict[str, str]) -> None:
        item = f"m{next(counter):04d}"
        record = out_dir / "record"
        record.unlink(missing_ok=True)
        (shop / item).mkdir(parents=True)
        (shop / item / "armed").write_text(json.dumps(meta))
        run.wait_for("window.finished", work_item=item)
        done = json.loads((shop / item / "done").read_text())
        assert done["action_taken"] == "ROLLBACK_OK", done
        fields = record.read_bytes().split(b"\0")[:-1]
        args = [f for f in fields if f.startswith((b"argc=", b"arg="))]
        assert args == [b"argc=1", b"arg=fixed arg"], args
        env = dict(f.split(b"=", 1) for f in fields if f.startswith(b"POSTDEPLOY_"))
        for key, value in meta.items():
            assert env[f"POSTDEPLOY_META_{key.upper()}".encode()] == value.encode(), key
        assert env[b"POSTDEPLOY_WORK_ITEM"] == item.encode()
        assert not canary.exists(), "metadata was run as code"

    example()
    assert not canary.exists()
    _assert_sane(run)


def test_nul_in_metadata_is_rejected_or_a_failed_rollback(
    tmp_path: Path, kit: Any, daemons: DaemonPool, targets: Callable[[], Target]
) -> None:
    """`{"commit": "a\\u0000b"}` is valid JSON, but no environment value can hold NUL: the
    sentinel is rejected, or the rollback fails to start (ROLLBACK_FAILED). (Regression:
    starting the rollback raised ValueError, so the window ended as ERROR.)"""
    path = _rolling_back_config(kit, tmp_path, targets, ["/bin/true"], verify_ticks=0)
    run = daemons.start(path)
    directory = tmp_path / "state" / "shop" / "nul"
    directory.mkdir(parents=True)
    (directory / "armed").write_bytes(b'{"commit": "a\\u0000b"}')
    _wait(
        "done or rejected",
        lambda: (directory / "done").exists() or (directory / "rejected").exists(),
        run,
    )
    _assert_sane(run)
    if (directory / "done").exists():
        assert json.loads((directory / "done").read_text())["action_taken"] == "ROLLBACK_FAILED"
