"""engine.sftp.jail: every traversal form is refused; nothing resolves outside the root.

Pure: no sockets, only a temporary folder with planted symlinks and hard links.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from engine.sftp import jail
from engine.sftp.jail import JailError


@pytest.fixture
def root() -> Path:
    base = Path(tempfile.mkdtemp(prefix="wharf-jail-"))
    try:
        r = base / "acme"
        for area in ("inbound", "outbound", "archive"):
            (r / area).mkdir(parents=True)
        (base / "acme-evil").mkdir()  # a sibling sharing the root's prefix (CVE-2023-28465)
        (base / "outside.txt").write_text("secret")
        yield r
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize(
    "path",
    [
        "..",
        "../",
        "../etc/passwd",
        "/..",
        "/../etc/passwd",
        "inbound/../..",
        "inbound/../../outside.txt",
        "./../acme-evil/x",
        "inbound/./../../acme-evil",
        "a/b/../../../x",
        b"../x",
        "//..//x",
    ],
)
def test_climbing_above_the_root_is_refused(root: Path, path: str | bytes) -> None:
    with pytest.raises(JailError, match="climbs above"):
        jail.resolve(root, path)


@pytest.mark.parametrize(
    "path, expected",
    [
        ("", ()),
        ("/", ()),
        (".", ()),
        ("inbound", ("inbound",)),
        ("/inbound/a.hl7", ("inbound", "a.hl7")),
        ("//inbound///./a.hl7", ("inbound", "a.hl7")),
        ("inbound/../outbound/b", ("outbound", "b")),
        ("/etc/passwd", ("etc", "passwd")),  # absolute paths name things *inside* the root
        ("..foo", ("..foo",)),
        ("inbound/...", ("inbound", "...")),
    ],
)
def test_normalization_stays_inside(root: Path, path: str, expected: tuple[str, ...]) -> None:
    assert jail.split(path) == expected
    resolved = jail.resolve(root, path)
    assert resolved == Path(os.path.realpath(root), *expected)
    real_root = os.path.realpath(root)
    assert os.path.commonpath([real_root, str(resolved)]) == real_root


def test_absolute_path_of_the_real_file_does_not_reach_it(root: Path) -> None:
    outside = root.parent / "outside.txt"
    resolved = jail.resolve(root, str(outside))
    assert resolved != outside
    assert str(resolved).startswith(os.path.realpath(root) + os.sep)
    assert not resolved.exists()


@pytest.mark.parametrize(
    "path, reason",
    [
        ("inbound/a\x00b", "control character"),
        ("inbound/a\nb", "control character"),
        ("inbound/a\rb", "control character"),
        ("inbound/\x1b[31mred", "control character"),
        ("inbound/del\x7f", "control character"),
        ("inbound/c1\x85", "control character"),
        ("inbound\\..\\..\\x", "backslash"),
        ("inbound/" + "a" * 256, "longer than 255"),
        ("inbound/" + "é" * 128, "longer than 255"),  # 256 bytes in UTF-8
        ("/".join(["d"] * 600), "longer than 1024"),
        (b"inbound/\xff\xfe", "UTF-8"),
        (b"inbound/\xc0\xae\xc0\xae/x", "UTF-8"),  # overlong '..'
        ("inbound/\udcff", "UTF-8"),
    ],
)
def test_malformed_names_are_refused(root: Path, path: str | bytes, reason: str) -> None:
    with pytest.raises(JailError, match=reason):
        jail.resolve(root, path)


def test_a_name_of_255_bytes_is_fine(root: Path) -> None:
    assert jail.split("inbound/" + "a" * 255)[1] == "a" * 255


def test_symlink_pointing_outside_is_not_followed(root: Path) -> None:
    (root / "inbound" / "out").symlink_to(root.parent / "outside.txt")
    (root / "inbound" / "updir").symlink_to(root.parent)
    (root / "escape").symlink_to("/etc")
    for path in ("inbound/out", "inbound/updir", "inbound/updir/outside.txt", "escape/passwd"):
        with pytest.raises(JailError, match="symbolic link"):
            jail.resolve(root, path)


def test_symlink_pointing_inside_is_refused_too(root: Path) -> None:
    (root / "inbound" / "alias").symlink_to(root / "outbound")
    with pytest.raises(JailError, match="symbolic link"):
        jail.resolve(root, "inbound/alias/x")


def test_open_dir_refuses_a_symlinked_component(root: Path) -> None:
    (root / "inbound" / "up").symlink_to(root.parent)
    with pytest.raises(JailError, match="symbolic link"):
        jail.open_dir(root, ["inbound", "up"])
    fd = jail.open_dir(root, ["inbound"])
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(root / "inbound"))
    finally:
        os.close(fd)


def test_open_dir_refuses_dotdot_components(root: Path) -> None:
    with pytest.raises(JailError):
        jail.open_dir(root, ["inbound", ".."])


def test_file_as_directory_is_refused(root: Path) -> None:
    (root / "inbound" / "f").write_text("x")
    with pytest.raises(JailError, match="not a directory"):
        jail.resolve(root, "inbound/f/g")
    with pytest.raises(JailError, match="not a directory"):
        jail.open_dir(root, ["inbound", "f"])


def test_symlinked_root_is_resolved_once(root: Path) -> None:
    link = root.parent / "root-link"
    link.symlink_to(root)
    assert jail.resolve(link, "inbound/a") == Path(os.path.realpath(root), "inbound", "a")


def test_virtual_paths() -> None:
    assert jail.virtual(()) == "/"
    assert jail.virtual(("inbound", "a")) == "/inbound/a"
