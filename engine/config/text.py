"""Text files as people save them: decoding with a clear answer when the bytes are not in the
encoding expected.

:func:`decode` turns bytes into text or raises a :class:`~engine.errors.ConfigError` at the
``file:line:column`` of the first byte that does not decode, naming the byte, what it would be
in Windows-1252 (what Excel on Windows writes by default), and how to fix the file: save it as
UTF-8, or (a CSV mapping table) declare its encoding on a first comment line
``# encoding: windows-1252``. :func:`declared_encoding` reads that line.
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path

from engine.errors import ConfigError
from engine.spec import did_you_mean

#: Encodings offered by name in a did-you-mean (any name Python knows is taken).
COMMON = ("utf-8", "utf-8-sig", "windows-1252", "latin-1", "iso-8859-15", "mac-roman", "cp850")
_DECLARED = re.compile(rb"^#\s*encoding\s*[:=]\s*([A-Za-z0-9_.:-]+)", re.IGNORECASE)


def declared_encoding(data: bytes, shown: str) -> tuple[str | None, int | None]:
    """The encoding a leading ``# encoding: NAME`` comment declares (a spreadsheet may add
    trailing commas), with its line; (None, None) when there is none. A name Python does not
    know is a ConfigError at that line."""
    for lineno, line in enumerate(data.splitlines()[:50], 1):
        stripped = line.lstrip(b"\xef\xbb\xbf").strip()
        if not stripped:
            continue
        if not stripped.startswith(b"#"):
            return None, None
        m = _DECLARED.match(stripped)
        if m is None:
            continue
        name = m.group(1).decode("ascii")
        try:
            codecs.lookup(name)
        except LookupError:
            raise ConfigError(
                f"unknown encoding {name!r} (expected a name such as "
                f"{', '.join(COMMON)}){did_you_mean(name.lower(), COMMON)}",
                file=shown,
                line=lineno,
                column=stripped.find(m.group(1)) + 1,
                code="bad_encoding",
            ) from None
        return name, lineno
    return None, None


def decode(data: bytes, shown: str, encoding: str = "utf-8-sig", *, csv: bool = False) -> str:
    """``data`` as text in ``encoding``; a ConfigError at the first byte that is not."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise bad_bytes(data, exc, shown, encoding, csv=csv) from None


def bad_bytes(
    data: bytes, exc: UnicodeDecodeError, shown: str, encoding: str, *, csv: bool
) -> ConfigError:
    start = exc.start
    line = data.count(b"\n", 0, start) + 1
    line_start = data.rfind(b"\n", 0, start) + 1
    column = len(data[line_start:start].decode(encoding, errors="replace")) + 1
    byte = data[start : start + 1]
    as_1252 = ""
    try:
        char = byte.decode("windows-1252")
        if char.isprintable():
            as_1252 = f" (in Windows-1252, as Excel saves a CSV, it is {char!r})"
    except UnicodeDecodeError:
        pass
    name = codecs.lookup(encoding).name
    name = "UTF-8" if name in ("utf-8", "utf-8-sig") else name
    fix = "save the file as UTF-8 (in Excel: 'CSV UTF-8 (Comma delimited)')"
    if csv:
        fix += ", or declare its encoding on a first line such as `# encoding: windows-1252`"
    return ConfigError(
        f"byte 0x{byte.hex()} is not valid {name}{as_1252}: {exc.reason}; {fix}",
        file=shown,
        line=line,
        column=column,
        code="bad_encoding",
    )


def read_text(path: Path, shown: str, encoding: str = "utf-8-sig") -> str:
    """The file's text; a ConfigError at the first byte that does not decode."""
    return decode(path.read_bytes(), shown, encoding)


def read_csv_text(path: Path, shown: str, errors: list[ConfigError], what: str) -> str | None:
    """A CSV file's text in its declared encoding (``# encoding: NAME``, else UTF-8); None
    with the ConfigError appended to ``errors`` when it cannot be read (``what`` names the
    file in that error: "the table", "the code list")."""
    try:
        data = path.read_bytes()
        encoding, _ = declared_encoding(data, shown)
        return decode(data, shown, encoding or "utf-8-sig", csv=True)
    except ConfigError as exc:
        errors.append(exc)
    except OSError as exc:
        errors.append(ConfigError(f"cannot read {what}: {exc.strerror}", file=shown))
    return None
