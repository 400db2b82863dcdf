"""Confinement of an SFTP partner to its root: one place that turns a client path into a path.

The partner sees a virtual tree whose ``/`` is its root. A client path (bytes off the wire or a
string) is decoded as strict UTF-8 and normalized *once*, here, lexically:

* empty components and ``.`` are dropped, a leading ``/`` means the partner root (so the absolute
  path ``/etc/passwd`` names ``<root>/etc/passwd``, which does not exist and cannot be created);
* ``..`` pops one component; a ``..`` that would climb above the root is refused (never clamped);
* NUL, control characters (C0, DEL, C1), backslashes, names longer than 255 bytes and paths
  longer than 1024 bytes are refused.

:func:`resolve` then checks the existing components on disk with ``lstat``: any symlink on the
way is refused (never followed), and the result must lie under the real root by
``os.path.commonpath`` (never a string prefix test). The server does not trust that check alone:
it opens directories one component at a time with ``O_NOFOLLOW | O_DIRECTORY`` relative to the
parent's descriptor (:func:`open_dir`) and files with ``O_NOFOLLOW`` relative to that descriptor,
so a symlink planted between the check and the use is not followed either.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 1024


class JailError(PermissionError):
    """The client path is refused: it escapes the root, crosses a symlink or is malformed."""

    def __init__(self, reason: str) -> None:
        super().__init__(errno.EACCES, reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


def _bad_char(text: str) -> str | None:
    for ch in text:
        code = ord(ch)
        if code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0:
            return f"control character U+{code:04X} in path"
        if ch == "\\":
            return "backslash in path"
    return None


def split(client_path: str | bytes) -> tuple[str, ...]:
    """The path's components below the root, normalized; :class:`JailError` on anything else."""
    if isinstance(client_path, bytes | bytearray | memoryview):
        raw = bytes(client_path)
        if len(raw) > MAX_PATH_BYTES:
            raise JailError(f"path longer than {MAX_PATH_BYTES} bytes")
        try:
            text = raw.decode("utf-8", errors="strict")
        except UnicodeDecodeError:
            raise JailError("path is not valid UTF-8") from None
    else:
        text = str(client_path)
        if len(text.encode("utf-8", errors="surrogatepass")) > MAX_PATH_BYTES:
            raise JailError(f"path longer than {MAX_PATH_BYTES} bytes")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise JailError("path is not valid UTF-8") from None
    problem = _bad_char(text)
    if problem:
        raise JailError(problem)
    parts: list[str] = []
    for comp in text.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not parts:
                raise JailError("path climbs above the partner root")
            parts.pop()
            continue
        if len(comp.encode("utf-8")) > MAX_NAME_BYTES:
            raise JailError(f"name longer than {MAX_NAME_BYTES} bytes")
        parts.append(comp)
    return tuple(parts)


def virtual(parts: tuple[str, ...] | list[str]) -> str:
    """The partner-visible absolute path of ``parts`` (``/`` for the root)."""
    return "/" + "/".join(parts)


def resolve(root: str | Path, client_path: str | bytes) -> Path:
    """The real path under ``root`` that ``client_path`` names; :class:`JailError` on escape.

    Existing components are checked with ``lstat``: a symlink anywhere (even one pointing inside
    the root) is refused. Components that do not exist yet are allowed (a file about to be made).
    """
    real_root = os.path.realpath(root)
    parts = split(client_path)
    current = real_root
    for i, comp in enumerate(parts):
        current = os.path.join(current, comp)
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            break
        except NotADirectoryError:
            raise JailError("a component of the path is not a directory") from None
        if stat.S_ISLNK(st.st_mode):
            raise JailError("symbolic links are not followed")
        if i < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
            raise JailError("a component of the path is not a directory")
    result = os.path.join(real_root, *parts)
    if os.path.commonpath([real_root, os.path.realpath(result)]) != real_root:
        raise JailError("path leaves the partner root")
    return Path(result)


def open_dir(root: str | Path, parts: tuple[str, ...] | list[str]) -> int:
    """A descriptor of the directory ``root/parts...``, opened one component at a time relative
    to its parent with ``O_NOFOLLOW``: a symlink anywhere is refused. The caller closes it."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    fd = os.open(os.path.realpath(root), flags)
    try:
        for comp in parts:
            if comp in ("", ".", "..") or "/" in comp or "\0" in comp:
                raise JailError("bad path component")
            try:
                nfd = os.open(comp, flags | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as e:
                if e.errno == errno.ELOOP or (
                    e.errno == errno.ENOTDIR
                    and stat.S_ISLNK(os.stat(comp, dir_fd=fd, follow_symlinks=False).st_mode)
                ):
                    raise JailError("symbolic links are not followed") from None
                if e.errno == errno.ENOTDIR:
                    raise JailError("a component of the path is not a directory") from None
                raise
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd
