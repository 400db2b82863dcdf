"""Local files: :func:`write_atomically` (readers see the old file or the whole new one),
:func:`extension_for` (the file extension of a content type) and :func:`private_dirs`
(folders only their owner may enter, whatever the umask)."""

from __future__ import annotations

import contextlib
import glob
import os
import pathlib
import tempfile

EXTENSIONS = {
    "application/json": ".json",
    "x-application/hl7-v2+er7": ".hl7",
    "application/hl7-v2": ".hl7",
    "application/edi-x12": ".x12",
    "application/xml": ".xml",
    "text/xml": ".xml",
}


def extension_for(content_type: str) -> str:
    """File extension for a content type: ``.json``, ``.hl7``, ``.x12``, ``.xml`` or ``.bin``."""
    base = content_type.split(";", 1)[0].strip().lower()
    if base in EXTENSIONS:
        return EXTENSIONS[base]
    if base.endswith("+xml") or base.endswith("/xml"):
        return ".xml"
    if base.endswith("+json"):
        return ".json"
    return ".bin"


def private_dirs(path: pathlib.Path) -> None:
    """Create ``path`` and its missing parents owner-only (0700), whatever the umask; a
    folder that exists already is tightened to 0700 when ours and open to others."""
    missing = []
    p = pathlib.Path(path)
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            pass
        os.chmod(d, 0o700)
    if not missing:
        st = os.stat(path)
        if st.st_uid == os.getuid() and st.st_mode & 0o077:
            os.chmod(path, 0o700)


def write_atomically(directory: pathlib.Path, filename: str, data: bytes, fsync: bool) -> None:
    """Write ``data`` to ``directory/filename`` so that readers see the old file or the whole
    new one, never a part. Blocking: call it off the reactor thread."""
    directory.mkdir(parents=True, exist_ok=True)
    # A crash between mkstemp and rename leaves a temp file; this delivery is held by one
    # worker under its lease, so an earlier attempt's leftovers are safe to remove now.
    for stale in directory.glob(f".{glob.escape(filename)}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
    fd, tmp = tempfile.mkstemp(prefix=f".{filename}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, directory / filename)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if fsync:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
