"""Complete X12 code lists an installation drops in, and the pyx12 maps that check them.

X12's complete code lists are a licensed product: Wharf ships none (docs/x12-code-lists.md).
Its maps check the codes Wharf acts on, and every other coded element for type, length and
the form of a code only. An installation that licenses the lists (or has them from another
source it may use) puts one CSV file per data element in ``mappings/x12/codelists/``::

    mappings/x12/codelists/355.csv      code,description
                                        CA,Case
                                        ...

The file is named after the data element number; its first row (after ``#`` comment lines,
such as ``# encoding: windows-1252``) is the header ``code,description``; each row is one code
of the element, written as X12 writes it (upper-case letters and digits, the element's length).
A file that breaks these rules is a configuration error naming ``file:line:column``
(``wharf lint`` reports it, and a running engine keeps its previous lists).

From then on the validator checks those elements against the list: a code outside it is an
"invalid code value" (997 AK403 / 999 IK403 = 7) naming the segment, the element and the value.
A list for an element where Wharf keeps its own (the codes it acts on: 668, 248...) does not
widen Wharf's: it is listed in :attr:`CodeLists.kept` and not used. A list for an element that
none of Wharf's maps use is listed in :attr:`CodeLists.unused`.

The maps with the lists are written once per content (:meth:`CodeLists.map_path`, under the
project's ``var/x12/``) by :mod:`engine.x12.mapgen` and read by
:func:`engine.x12.validate.validate` like Wharf's own.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from engine.config.text import read_csv_text
from engine.errors import ConfigError, LintFailed
from engine.x12 import mapgen
from engine.x12.mapdefs import CODE_FORM, DATA_ELEMENTS, SEGMENTS, Composite, DataElement

__all__ = ["CODELISTS_DIR", "CodeList", "CodeLists", "load_codelists"]

#: Where an installation's complete code lists go, relative to the project root.
CODELISTS_DIR = "mappings/x12/codelists"

_HEADER = ["code", "description"]
_FORM = re.compile(CODE_FORM)
_NUMBER = re.compile(r"^[0-9]{1,4}$")


@dataclass(frozen=True)
class CodeList:
    """One element's complete list, as read from its file."""

    element: str
    codes: tuple[str, ...]
    descriptions: Mapping[str, str]
    file: str


@dataclass(frozen=True)
class CodeLists:
    """The lists of one project (possibly none), and which of them the maps use."""

    lists: Mapping[str, CodeList] = field(default_factory=dict)
    root: str = ""  # the project they belong to: their maps are written under its var/x12/

    @property
    def used(self) -> dict[str, tuple[str, ...]]:
        """The lists the maps check, by data element: elements Wharf checks for form only."""
        own = _elements_with_own_list()
        mapped = _elements_in_maps()
        return {ref: cl.codes for ref, cl in self.lists.items() if ref in mapped and ref not in own}

    @property
    def kept(self) -> tuple[str, ...]:
        """Elements with a dropped-in list where Wharf keeps its own (the codes it acts on)."""
        own = _elements_with_own_list()
        return tuple(sorted(ref for ref in self.lists if ref in own))

    @property
    def unused(self) -> tuple[str, ...]:
        """Elements with a dropped-in list that no map of Wharf's uses."""
        mapped = _elements_in_maps()
        return tuple(sorted(ref for ref in self.lists if ref not in mapped))

    @property
    def digest(self) -> str:
        """A short hash of the lists the maps use (names the map folder)."""
        h = hashlib.sha256()
        for ref, codes in sorted(self.used.items()):
            h.update(ref.encode() + b"\0" + "\0".join(codes).encode() + b"\1")
        return h.hexdigest()[:16]

    def map_path(self) -> Path | None:
        """The pyx12 map folder that checks these lists (written under the project's
        ``var/x12/`` the first time); None when no list is used (Wharf's own maps apply)."""
        used = self.used
        if not used:
            return None
        folder = Path(self.root) / "var" / "x12" / f"maps-{self.digest}"
        if (folder / "maps.xml").is_file():
            return folder
        with _WRITE_LOCK:
            if not (folder / "maps.xml").is_file():
                folder.parent.mkdir(parents=True, exist_ok=True)
                work = Path(tempfile.mkdtemp(prefix=".maps-", dir=folder.parent))
                try:
                    mapgen.write(work, used)
                    os.replace(work, folder)
                except OSError:
                    if not (folder / "maps.xml").is_file():
                        raise
                finally:
                    shutil.rmtree(work, ignore_errors=True)
        return folder


_WRITE_LOCK = threading.Lock()


def _elements_with_own_list() -> frozenset[str]:
    refs = set()
    for seg in SEGMENTS.values():
        for item in seg.elements:
            parts = item.parts if isinstance(item, Composite) else (item,)
            refs.update(p.ref for p in parts if p.codes)
    # elements whose list the maps set per transaction (GS01, GS08, ST01, ISA12...)
    refs.update(("479", "480", "143", "I11", "1705"))
    return frozenset(refs)


def _elements_in_maps() -> frozenset[str]:
    refs = set()
    for seg in SEGMENTS.values():
        for item in seg.elements:
            parts = item.parts if isinstance(item, Composite) else (item,)
            refs.update(p.ref for p in parts)
    return frozenset(refs)


def load_codelists(root: Path | str) -> CodeLists:
    """The lists in ``root/mappings/x12/codelists/`` (none when the folder is absent).

    Raises :class:`~engine.errors.LintFailed` with one ConfigError per problem, each at the
    ``file:line:column`` it is about.
    """
    root = Path(root)
    folder = root / CODELISTS_DIR
    if not folder.is_dir():
        return CodeLists(root=str(root))
    errors: list[ConfigError] = []
    lists: dict[str, CodeList] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() != ".csv":
            continue
        shown = f"{CODELISTS_DIR}/{path.name}"
        loaded = _load_file(path, shown, errors)
        if loaded is not None:
            lists[loaded.element] = loaded
    if errors:
        raise LintFailed(errors)
    return CodeLists(lists, str(root))


def _load_file(path: Path, shown: str, errors: list[ConfigError]) -> CodeList | None:
    element = path.stem
    if not _NUMBER.match(element):
        errors.append(
            ConfigError(
                "a code list file is named after its X12 data element number, such as "
                f"355.csv (got {path.name!r})",
                file=shown,
                code="bad_code_list",
            )
        )
        return None
    element = element.lstrip("0") or "0"
    de = DATA_ELEMENTS.get(element)
    if de is not None and de.type != "ID":
        errors.append(
            ConfigError(
                f"data element {element} ({de.name}) is of type {de.type}, not a coded (ID) "
                "element: it has no code list",
                file=shown,
                code="bad_code_list",
            )
        )
        return None
    text = read_csv_text(path, shown, errors, "the code list")
    if text is None:
        return None
    before = len(errors)
    codes: dict[str, str] = {}
    seen_at: dict[str, int] = {}
    header_seen = False
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or (not header_seen and line.lstrip().startswith("#")):
            continue
        row = next(csv.reader(io.StringIO(line)))
        if not header_seen:
            got = [c.strip().lower() for c in row]
            if got[:2] != _HEADER or any(c for c in got[2:]):
                errors.append(
                    ConfigError(
                        f"expected the header row 'code,description' (got {line.strip()!r})",
                        file=shown,
                        line=lineno,
                        column=1,
                        code="bad_code_list",
                    )
                )
                return None
            header_seen = True
            continue
        code = row[0] if row else ""
        problem = _code_problem(code, de)
        if problem:
            errors.append(
                ConfigError(problem, file=shown, line=lineno, column=1, code="bad_code_list")
            )
            continue
        if len(row) > 2 and any(c.strip() for c in row[2:]):
            column = len(",".join(row[:2])) + 2
            errors.append(
                ConfigError(
                    f"expected two columns, code and description (got {len(row)}: quote a "
                    "description that holds a comma)",
                    file=shown,
                    line=lineno,
                    column=column,
                    code="bad_code_list",
                )
            )
            continue
        if code in codes:
            errors.append(
                ConfigError(
                    f"code {code!r} is listed twice (also line {seen_at[code]})",
                    file=shown,
                    line=lineno,
                    column=1,
                    code="bad_code_list",
                )
            )
            continue
        codes[code] = row[1].strip() if len(row) > 1 else ""
        seen_at[code] = lineno
    if not header_seen:
        errors.append(
            ConfigError(
                "expected the header row 'code,description' (got an empty file)",
                file=shown,
                code="bad_code_list",
            )
        )
        return None
    if len(errors) > before:
        return None
    if not codes:
        errors.append(
            ConfigError(
                "expected at least one code under the header (got none)",
                file=shown,
                code="bad_code_list",
            )
        )
        return None
    return CodeList(element, tuple(codes), codes, shown)


def _code_problem(code: str, de: DataElement | None) -> str:
    if not _FORM.match(code):
        return (
            "expected an X12 code of upper-case letters and digits in the first column "
            f"(got {code!r})"
        )
    if de is not None and not de.min <= len(code) <= de.max:
        return (
            f"code {code!r} has {len(code)} character(s); data element {de.number} "
            f"({de.name}) takes {de.min} to {de.max}"
        )
    return ""
