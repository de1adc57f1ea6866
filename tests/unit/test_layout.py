"""Name rules, parsing of `armed`, and the no-follow opening of item directories (`layout.py`)."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postdeploy.layout import (
    MAX_ARMED_BYTES,
    META_KEY_RE,
    ArmedError,
    ItemKey,
    UnsafePath,
    open_item_dir,
    parse_armed,
    valid_name,
)

FAST = settings(max_examples=100, deadline=None)
# The contract's rule, written out again here so that a change to NAME_RE shows up as a failure.
CONTRACT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

# -- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["a", "Z", "0", "shop", "ORCH-021", "v1.2.3", "a_b", "a-", "a.", "a..b", "9" * 128],
)
def test_valid_names(name: str) -> None:
    assert valid_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "/",
        "a/b",
        "/abs",
        ".hidden",
        "-flag",
        "_a",
        "a b",
        "a\n",  # `$` in a regex also matches before a final newline: fullmatch must be used
        "a\x00",
        "é",
        "a" * 129,
        "a\\b",
    ],
)
def test_invalid_names(name: str) -> None:
    assert not valid_name(name)


@FAST
@given(st.text(max_size=140) | st.text(alphabet="aZ09._-/\n ", max_size=140))
def test_anything_accepted_matches_the_contract_regex(name: str) -> None:
    assert valid_name(name) == (CONTRACT_NAME.fullmatch(name) is not None)


@FAST
@given(st.from_regex(CONTRACT_NAME, fullmatch=True))
def test_everything_the_contract_allows_is_accepted(name: str) -> None:
    assert valid_name(name)


def test_an_item_key_reads_as_repo_slash_work_item() -> None:
    assert str(ItemKey("shop", "w1")) == "shop/w1"


# -- armed ------------------------------------------------------------------------------------


def padded(obj: dict[str, str], size: int) -> bytes:
    """`obj` as JSON, padded with trailing spaces to exactly `size` bytes."""
    data = json.dumps(obj).encode()
    return data + b" " * (size - len(data))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", {}),
        (b"   \n\t\r\n", {}),
        (b"{}", {}),
        (b'{"branch": "main", "commit": "abc123"}\n', {"branch": "main", "commit": "abc123"}),
        (b'{"custom_key": "kept", "X9": ""}', {"custom_key": "kept", "X9": ""}),
        (b'{"mode": "act"}', {"mode": "act"}),
        (b'{"mode": "shadow"}', {"mode": "shadow"}),
        ('{"deployed_by": "Zoë ✓"}'.encode(), {"deployed_by": "Zoë ✓"}),
        (json.dumps({"k" * 64: "v"}).encode(), {"k" * 64: "v"}),
        (padded({"url": "x"}, MAX_ARMED_BYTES), {"url": "x"}),  # exactly 64 KiB
        (b"armed", {}),  # what the seed's own writer puts there
        (b"armed\n", {}),
        (b"armed\r\n", {}),
    ],
    ids=lambda v: repr(v)[:40] if isinstance(v, bytes) else None,
)
def test_parse_armed_accepts(data: bytes, expected: dict[str, str]) -> None:
    assert parse_armed(data) == expected


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"{", "not valid JSON"),
        (b"branch=main", "not valid JSON"),
        (b"[]", "JSON object, not list"),
        (b'["branch", "main"]', "JSON object, not list"),
        (b'"main"', "not str"),
        (b"null", "not NoneType"),
        (b"42", "not int"),
        (b'{"branch": 1}', "must be a string, not int"),
        (b'{"branch": null}', "must be a string"),
        (b'{"branch": ["a"]}', "must be a string"),
        (b'{"branch": {"a": "b"}}', "must be a string"),
        (b'{"branch": true}', "must be a string"),
        (b'{"1bad": "x"}', "metadata key '1bad'"),
        (b'{"bad-key": "x"}', "metadata key"),
        (b'{"": "x"}', "metadata key"),
        (b'{"_x": "x"}', "metadata key"),
        (b'{"a\\n": "x"}', "metadata key"),
        (json.dumps({"k" * 65: "v"}).encode(), "metadata key"),
        (padded({"url": "x"}, MAX_ARMED_BYTES + 1), "more than 65536"),
        (b'{"branch": "\xff"}', "not UTF-8"),
        (b"\xef\xbb\xbf{}", "not valid JSON"),  # a UTF-8 byte order mark
        (b'{"mode": "prod"}', "must be 'act' or 'shadow'"),
        (b'{"mode": ""}', "must be 'act' or 'shadow'"),
        (b'{"mode": "ACT"}', "must be 'act' or 'shadow'"),
        (b"armed!", "not valid JSON"),  # only the seed's exact text means nothing
        (b"ARMED", "not valid JSON"),
        (b"armed armed", "not valid JSON"),
    ],
    ids=lambda v: repr(v)[:40] if isinstance(v, bytes) else None,
)
def test_parse_armed_rejects(data: bytes, fragment: str) -> None:
    with pytest.raises(ArmedError, match=re.escape(fragment)):
        parse_armed(data)


@pytest.mark.parametrize("data", [b"[" * 50_000, b'{"a":' * 10_000])
def test_parse_armed_rejects_deep_nesting(data: bytes) -> None:
    """Inside the 64 KiB limit, nesting deep enough to exhaust the parser is still invalid."""
    with pytest.raises(ArmedError):
        parse_armed(data)


def test_parse_armed_rejects_values_that_are_not_unicode_text() -> None:
    """Every accepted value must survive being written out (window.json, env, reports)."""
    with pytest.raises(ArmedError):
        parse_armed(b'{"branch": "\\ud800"}')


def check_armed(data: bytes) -> None:
    """parse_armed returns a dict[str, str] of valid keys, or raises ArmedError: nothing else."""
    try:
        result = parse_armed(data)
    except ArmedError as exc:
        assert str(exc)
        return
    assert isinstance(result, dict)
    for key, value in result.items():
        assert isinstance(key, str) and META_KEY_RE.fullmatch(key)
        assert isinstance(value, str)
    assert result.get("mode", "act") in ("act", "shadow")


@FAST
@given(st.binary(max_size=200))
def test_arbitrary_bytes(data: bytes) -> None:
    check_armed(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
meta_keys = st.from_regex(META_KEY_RE, fullmatch=True)


@FAST
@given(json_values | st.dictionaries(meta_keys | st.text(max_size=4), json_values, max_size=4))
def test_arbitrary_json_values(value: Any) -> None:
    check_armed(json.dumps(value).encode())


@FAST
@given(
    st.dictionaries(
        meta_keys,
        st.text(st.characters(exclude_characters="\0", exclude_categories=["Cs"]), max_size=20),
        max_size=6,
    ),
    st.booleans(),
)
def test_valid_metadata_round_trips(metadata: dict[str, str], pretty: bool) -> None:
    metadata.pop("mode", None)
    data = json.dumps(metadata, indent=2 if pretty else None, ensure_ascii=pretty).encode()
    assert parse_armed(data) == metadata


# -- open_item_dir ----------------------------------------------------------------------------


def test_open_item_dir_yields_the_item_directory(state_root: Path) -> None:
    item = state_root / "shop" / "w1"
    item.mkdir(parents=True)
    (item / "marker").write_text("here")
    with open_item_dir(state_root, ItemKey("shop", "w1")) as dfd:
        assert "marker" in os.listdir(dfd)


def test_missing_item_dir_without_create(state_root: Path) -> None:
    with pytest.raises(FileNotFoundError), open_item_dir(state_root, ItemKey("shop", "w1")):
        pass
    assert list(state_root.iterdir()) == []


def test_create_makes_both_levels(state_root: Path) -> None:
    with open_item_dir(state_root, ItemKey("shop", "w1"), create=True) as dfd:
        assert os.listdir(dfd) == []
    for path in (state_root / "shop", state_root / "shop" / "w1"):
        mode = path.lstat().st_mode
        assert stat.S_ISDIR(mode)
        # Group-writable whatever the umask, so the deploy side can arm and cancel.
        assert stat.S_IMODE(mode) & 0o775 == 0o775
    # Opening again (with or without create) finds the same, existing directory.
    with open_item_dir(state_root, ItemKey("shop", "w1"), create=True):
        pass


@pytest.mark.parametrize("create", [False, True])
def test_symlinked_repo_dir_is_refused(state_root: Path, outside: Path, create: bool) -> None:
    (outside / "w1").mkdir()
    (state_root / "shop").symlink_to(outside)
    with pytest.raises(UnsafePath), open_item_dir(state_root, ItemKey("shop", "w1"), create=create):
        pass
    assert sorted(p.name for p in outside.iterdir()) == ["w1"]
    assert list((outside / "w1").iterdir()) == []


@pytest.mark.parametrize("create", [False, True])
def test_symlinked_item_dir_is_refused(state_root: Path, outside: Path, create: bool) -> None:
    (state_root / "shop").mkdir()
    (state_root / "shop" / "w1").symlink_to(outside)
    with pytest.raises(UnsafePath), open_item_dir(state_root, ItemKey("shop", "w1"), create=create):
        pass
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("create", [False, True])
def test_dangling_symlink_is_refused_and_not_created(
    state_root: Path, outside: Path, create: bool
) -> None:
    (state_root / "shop").symlink_to(outside / "nowhere")
    with pytest.raises(UnsafePath), open_item_dir(state_root, ItemKey("shop", "w1"), create=create):
        pass
    assert not (outside / "nowhere").exists()


@pytest.mark.parametrize("level", ["repo", "item"])
@pytest.mark.parametrize("create", [False, True])
def test_a_file_where_a_directory_should_be(state_root: Path, level: str, create: bool) -> None:
    if level == "repo":
        (state_root / "shop").write_text("not a dir")
    else:
        (state_root / "shop").mkdir()
        (state_root / "shop" / "w1").write_text("not a dir")
    with pytest.raises(UnsafePath), open_item_dir(state_root, ItemKey("shop", "w1"), create=create):
        pass


@pytest.mark.parametrize(
    "key",
    [
        ItemKey("..", "w1"),
        ItemKey("shop", ".."),
        ItemKey(".", "w1"),
        ItemKey("/etc", "w1"),
        ItemKey("shop", "/tmp"),
        ItemKey("shop/x", "w1"),
        ItemKey("", "w1"),
    ],
    ids=str,
)
def test_invalid_names_are_refused_before_touching_the_disk(state_root: Path, key: ItemKey) -> None:
    with pytest.raises(UnsafePath), open_item_dir(state_root, key, create=True):
        pass
    assert list(state_root.iterdir()) == []
    assert not (state_root.parent / "w1").exists()
