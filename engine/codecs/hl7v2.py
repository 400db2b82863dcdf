"""HL7 v2 codec on a lean, lazy, escape-aware tokenizer (no hl7apy on the hot path).

Fields are addressed as ``SEG-field.component.subcomponent`` with an optional segment occurrence
and field repetition: ``PV1-19.1``, ``FT1[2]-7.1``, ``PID-3[2].1``. Occurrences and repetitions
count from 1. MSH-1 is the field separator and MSH-2 the encoding characters, as in the standard.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from engine.codecs.base import Parsed
from engine.errors import CodecError
from engine.registry import codec
from engine.spec import Bool, ByteSize, Enum, Field, ListOf, Spec, Str, did_you_mean

CONTENT_TYPE = "x-application/hl7-v2+er7"
_PATH = re.compile(
    r"^([A-Z][A-Z0-9]{2})(?:\[(\d+)\])?(?:-(\d+)(?:\[(\d+)\])?(?:\.(\d+))?(?:\.(\d+))?)?$"
)
_CHARSETS = {
    "": "utf-8",
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "ISO-8859-1": "latin-1",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
}
_SEG_SPLIT = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class Separators:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @property
    def encoding_characters(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent


def unescape(text: str, sep: Separators) -> str:
    """Resolve HL7 escape sequences (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\ \\.br\\)."""
    esc = sep.escape
    if not esc or esc not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != esc:
            out.append(ch)
            i += 1
            continue
        end = text.find(esc, i + 1)
        if end == -1:
            out.append(text[i:])
            break
        code = text[i + 1 : end]
        simple = {
            "F": sep.field,
            "S": sep.component,
            "T": sep.subcomponent,
            "R": sep.repetition,
            "E": sep.escape,
            ".br": "\n",
        }
        if code in simple:
            out.append(simple[code])
        elif code.startswith("X") and len(code) > 1:
            try:
                out.append(bytes.fromhex(code[1:]).decode("latin-1"))
            except ValueError:
                out.append(text[i : end + 1])
        else:
            out.append(text[i : end + 1])
        i = end + 1
    return "".join(out)


def escape(text: str, sep: Separators) -> str:
    """Escape separators in a value we write into a message."""
    e = sep.escape
    return (
        text.replace(e, f"{e}E{e}")
        .replace(sep.field, f"{e}F{e}")
        .replace(sep.component, f"{e}S{e}")
        .replace(sep.subcomponent, f"{e}T{e}")
        .replace(sep.repetition, f"{e}R{e}")
    )


class Segment:
    """One segment; fields are split only when first asked for."""

    __slots__ = ("_fields", "name", "sep", "text")

    def __init__(self, text: str, sep: Separators) -> None:
        self.text = text
        self.sep = sep
        self.name = text[:3]
        self._fields: list[str] | None = None

    @property
    def fields(self) -> list[str]:
        if self._fields is None:
            parts = self.text.split(self.sep.field)
            if self.name == "MSH":
                # MSH-1 is the separator itself; MSH-2 the encoding characters.
                parts = [parts[0], self.sep.field, *parts[1:]]
            self._fields = parts
        return self._fields

    def raw(self, number: int) -> str:
        """Field ``number`` as written (escapes kept, all repetitions)."""
        fields = self.fields
        return fields[number] if 0 < number < len(fields) else ""

    def get(
        self, field: int, component: int = 1, sub: int = 1, rep: int = 1, *, whole: bool = False
    ) -> str:
        """A value, unescaped. ``whole`` returns the whole field (first repetition) unsplit."""
        fields = self._fields if self._fields is not None else self.fields
        value = fields[field] if 0 < field < len(fields) else ""
        if not value:
            return ""
        sep = self.sep
        if self.name == "MSH" and field in (1, 2):
            return value
        if component == 1 and sub == 1 and rep == 1 and sep.escape not in value:
            # Fast path: a plain first component (the common case on the ACK path).
            return value.split(sep.repetition, 1)[0] if whole else _first(value, sep)
        reps = value.split(self.sep.repetition)
        if rep > len(reps):
            return ""
        value = reps[rep - 1]
        if whole:
            return unescape(value, self.sep)
        comps = value.split(self.sep.component)
        if component > len(comps):
            return ""
        value = comps[component - 1]
        subs = value.split(self.sep.subcomponent)
        if sub > len(subs):
            return ""
        return unescape(subs[sub - 1], self.sep)

    def repetitions(self, field: int) -> int:
        value = self.raw(field)
        return len(value.split(self.sep.repetition)) if value else 0

    def __repr__(self) -> str:
        return f"<Segment {self.name}>"


def _first(value: str, sep: Separators) -> str:
    for ch in (sep.repetition, sep.component, sep.subcomponent):
        cut = value.find(ch)
        if cut >= 0:
            value = value[:cut]
    return value


class Hl7Message:
    """A tokenized HL7 v2 message."""

    def __init__(self, text: str, sep: Separators) -> None:
        self.text = text
        self.sep = sep
        self.segments = [Segment(s, sep) for s in _SEG_SPLIT.split(text) if s.strip()]

    @cached_property
    def msh(self) -> Segment:
        return self.segments[0]

    @cached_property
    def _by_name(self) -> dict[str, list[Segment]]:
        """Segments by name, built once: a field lookup does not scan the message (a DFT^P03
        with 10,000 FT1 asks for PV1-3 once per line)."""
        index: dict[str, list[Segment]] = {}
        for seg in self.segments:
            index.setdefault(seg.name, []).append(seg)
        return index

    @cached_property
    def positions(self) -> dict[int, int]:
        """Each segment's position in the message, by ``id(segment)``."""
        return {id(seg): i for i, seg in enumerate(self.segments)}

    def all(self, name: str) -> list[Segment]:
        return list(self._by_name.get(name, ()))

    def segment(self, name: str, occurrence: int = 1) -> Segment | None:
        found = self._by_name.get(name, ())
        return found[occurrence - 1] if occurrence <= len(found) else None

    def get(self, path: str) -> str | None:
        """``PV1-19.1``, ``FT1[2]-7``, ``PID-3[2].1``; a bare ``PV1-19`` gives the whole field."""
        m = _PATH.match(path.strip())
        if not m:
            raise ValueError(f"expected a field path like 'PV1-19.1' (got {path!r})")
        name, occ, field, rep, comp, sub = m.groups()
        seg = self.segment(name, int(occ or 1))
        if seg is None:
            return None
        if field is None:
            return seg.text
        if comp is None:
            return seg.get(int(field), rep=int(rep or 1), whole=True) or None
        return seg.get(int(field), int(comp), int(sub or 1), int(rep or 1)) or None

    @cached_property
    def message_type(self) -> str:
        code, event = self.msh.get(9, 1), self.msh.get(9, 2)
        return f"{code}^{event}" if event else code

    @cached_property
    def control_id(self) -> str:
        return self.msh.get(10)

    @cached_property
    def version(self) -> str:
        return self.msh.get(12, 1)

    def encode(self) -> str:
        return "\r".join(s.text for s in self.segments) + "\r"


def _charset(raw: bytes) -> str:
    """The Python codec named by MSH-18 (read from the ASCII-safe header)."""
    head = raw.split(b"\r", 1)[0].split(b"\n", 1)[0]
    if len(head) < 4:
        return "utf-8"
    fs = head[3:4]
    parts = head.split(fs)
    # parts[0] = b"MSH", parts[1] = encoding chars -> MSH-n is parts[n-1]
    enc = parts[1] if len(parts) > 1 else b"^~"
    comp, rep = chr(enc[0]) if enc else "^", chr(enc[1]) if len(enc) > 1 else "~"
    raw18 = parts[17].decode("ascii", "replace") if len(parts) > 17 else ""
    # The first repetition is the default character set (HL7 v2.5.1 §2.15.9.18).
    value = raw18.split(rep)[0].split(comp)[0].strip()
    try:
        return _CHARSETS[value.upper()]
    except KeyError:
        raise CodecError(
            f"MSH-18 character set must be one of ASCII, 8859/1, UNICODE UTF-8 (got {value!r})",
            location="MSH^1^18",
            code="unsupported_charset",
        ) from None


def tokenize(raw: bytes, default_charset: str = "utf-8") -> Hl7Message:
    """Split an HL7 v2 message; separators come from MSH-1 and MSH-2."""
    if not raw.startswith(b"MSH") or len(raw) < 8:
        raise CodecError(
            f"expected a message starting with 'MSH' (got {raw[:12]!r})",
            location="MSH^1",
            code="not_hl7",
        )
    charset = _charset(raw) or default_charset
    try:
        text = raw.decode(charset)
    except UnicodeDecodeError as exc:
        raise CodecError(
            f"bytes are not valid {charset} as MSH-18 declares ({exc.reason} at {exc.start})",
            location="MSH^1^18",
            code="bad_charset",
        ) from exc
    fs = text[3]
    enc = text[4:9].split(fs)[0]
    if len(enc) < 4:
        raise CodecError(
            f"MSH-2 must hold 4 encoding characters (got {enc!r})",
            location="MSH^1^2",
            code="bad_msh",
        )
    sep = Separators(fs, enc[0], enc[1], enc[2], enc[3])
    return Hl7Message(text, sep)


#: Every HL7 v2 version published (MSH-12 values).
KNOWN_VERSIONS = (
    "2.1",
    "2.2",
    "2.3",
    "2.3.1",
    "2.4",
    "2.5",
    "2.5.1",
    "2.6",
    "2.7",
    "2.7.1",
    "2.8",
    "2.8.1",
    "2.8.2",
    "2.9",
    "2.9.1",
)


def _check_hl7(config: Any, ctx: Any, node: Any, path: str) -> None:
    items = _list_items(node, "versions")
    for i, version in enumerate(config.versions):
        if version not in KNOWN_VERSIONS:
            ctx.error(
                items[i] if i < len(items) else node,
                f"{path}.versions[{i}]",
                f"expected an HL7 v2 version ({', '.join(KNOWN_VERSIONS)}) "
                f"(got {version!r}){did_you_mean(version, KNOWN_VERSIONS)}",
            )
    if config.validation != "strict" or "versions" not in config.positions:
        return  # the default list includes 2.7.1; a 2.7.1 message then fails strict clearly
    from hl7apy import SUPPORTED_LIBRARIES

    missing = [v for v in config.versions if v not in SUPPORTED_LIBRARIES]
    if missing:
        ctx.error(
            node,
            f"{path}.versions",
            f"strict validation needs hl7apy definitions; it has none for {', '.join(missing)} "
            f"(it has {', '.join(sorted(SUPPORTED_LIBRARIES))})",
        )


def _list_items(node: Any, key: str) -> list[Any]:
    """The item nodes of the list (or the lone scalar) under ``key`` of a mapping node."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if k.value == key:
                return list(v.value) if isinstance(v, yaml.SequenceNode) else [v]
    return []


HL7_SPEC = Spec(
    "hl7v2",
    [
        Field(
            "versions",
            ListOf(Str(), scalar_ok=True),
            ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2"),
            "HL7 versions (MSH-12) this channel accepts.",
        ),
        Field(
            "validation",
            Enum("tolerant", "strict"),
            "tolerant",
            "tolerant: structure and required MSH fields; strict adds hl7apy structure checks.",
        ),
        Field(
            "strict_on_ack",
            Bool(),
            False,
            "With strict validation: validate before answering (AE and nothing stored on a "
            "failure; costs ~5-20 ms per message), instead of in the pipeline after the ACK.",
        ),
        Field("max_size", ByteSize(), 10 * 1024 * 1024, "Larger messages are refused."),
        Field(
            "processing_ids",
            ListOf(Str(), scalar_ok=True),
            ("P", "T", "D"),
            "MSH-11 processing ids accepted.",
        ),
    ],
    description=(
        "HL7 v2 (ER7). Separators come from MSH-1/MSH-2, the character set from MSH-18; "
        "`\\r`, `\\n` and `\\r\\n` segment ends are accepted. The dedup key is MSH-3|MSH-4|MSH-10."
    ),
    example="codec:\n  hl7v2:\n    versions: ['2.5.1', '2.8.2']",
    check=_check_hl7,
)


class Hl7Codec:
    content_type = CONTENT_TYPE

    @staticmethod
    def count_lines(parsed: Parsed) -> int:
        """The message's lines for a channel's ``limits.max_lines``: its segments."""
        return len(parsed.value.segments)

    def __init__(self, options: Any) -> None:
        self.options = options
        self.strict = options.validation == "strict"
        self.strict_on_ack = self.strict and options.strict_on_ack
        if self.strict:
            _load_hl7apy(options.versions)

    def validate_strict(self, raw: bytes) -> None:
        """hl7apy's strict structure validation for the message's version (tens of ms: run it
        off the reactor). Raises CodecError naming what the standard's structure rejects."""
        from hl7apy import SUPPORTED_LIBRARIES
        from hl7apy.consts import VALIDATION_LEVEL
        from hl7apy.exceptions import HL7apyException
        from hl7apy.parser import parse_message

        msg = tokenize(raw)
        if msg.version not in SUPPORTED_LIBRARIES:
            raise CodecError(
                f"strict validation has no hl7apy definitions for version {msg.version}",
                location="MSH^1^12",
                code="structure",
            )
        text = "\r".join(seg.text for seg in msg.segments)
        try:
            parsed = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
            parsed.validate()
        except (HL7apyException, ValueError) as exc:
            raise CodecError(
                f"HL7 v{msg.version} structure: {exc}", location="", code="structure"
            ) from exc

    def decode(self, raw: bytes) -> Parsed:
        if len(raw) > self.options.max_size:
            raise CodecError(
                f"message is {len(raw)} bytes; the limit is {self.options.max_size}",
                code="too_large",
            )
        msg = tokenize(raw)
        msh = msg.msh
        if msh.name != "MSH":
            raise CodecError("expected MSH as the first segment", location="MSH", code="bad_msh")
        for number, label in ((9, "message type"), (10, "message control id"), (12, "version")):
            if not msh.get(number):
                raise CodecError(
                    f"MSH-{number} ({label}) is required but empty",
                    location=f"MSH^1^{number}",
                    code="required_field_missing",
                )
        if msg.version not in self.options.versions:
            raise CodecError(
                f"MSH-12 version must be one of {', '.join(self.options.versions)} "
                f"(got {msg.version!r})",
                location="MSH^1^12",
                code="unsupported_version",
            )
        pid = msh.get(11)
        if pid and pid not in self.options.processing_ids:
            raise CodecError(
                f"MSH-11 processing id must be one of {', '.join(self.options.processing_ids)} "
                f"(got {pid!r})",
                location="MSH^1^11",
                code="unsupported_processing_id",
            )
        key = f"{msh.get(3)}|{msh.get(4)}|{msg.control_id}"
        return Parsed(msg, CONTENT_TYPE, msg.message_type, msg.control_id, key)


_LOADED: set[str] = set()


def _load_hl7apy(versions: tuple[str, ...]) -> None:
    """Load hl7apy's definitions once per version at start, not on the first message."""
    from hl7apy import SUPPORTED_LIBRARIES, load_library

    from engine.errors import ConfigError

    for version in versions:
        if version in _LOADED or version not in SUPPORTED_LIBRARIES:
            continue
        try:
            load_library(version)
        except Exception as exc:  # hl7apy raises its own types for unknown versions
            raise ConfigError(f"hl7apy has no definitions for version {version} ({exc})") from exc
        _LOADED.add(version)


@codec("hl7v2", HL7_SPEC)
def make_hl7(options: Any) -> Hl7Codec:
    return Hl7Codec(options)


_BATCH_SEGMENTS = (b"FHS", b"BHS", b"BTS", b"FTS")


def with_msh(raw: bytes, **fields: bytes) -> bytes:
    """``raw`` with MSH fields replaced (``with_msh(raw, f11=b"T")`` sets MSH-11, the
    processing id), segments ended by CR; the rest byte for byte."""
    segments = raw.lstrip().replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r")
    sep = segments[0][3:4]
    msh = segments[0].split(sep)  # msh[n - 1] is MSH-n (MSH-1 is the separator itself)
    for name, value in fields.items():
        n = int(name.removeprefix("f"))
        msh += [b""] * (n - len(msh))
        msh[n - 1] = value
    segments[0] = sep.join(msh)
    return b"\r".join(s for s in segments if s) + b"\r"


def is_batch(raw: bytes) -> bool:
    """An HL7 batch file or batch (FHS/BHS envelope) rather than a single message."""
    return raw[:3] in (b"FHS", b"BHS")


def split_batch(raw: bytes) -> tuple[list[bytes], list[bytes]]:
    """Split a batch into (envelope segments, messages); each message keeps its own bytes.

    FHS/BHS/BTS/FTS are envelope; each MSH starts a message (HL7 v2.5.1 §2.10.3). The split is
    on segment ends only, so any character set with ASCII separators is kept byte for byte.
    """
    envelope: list[bytes] = []
    messages: list[list[bytes]] = []
    for seg in re.split(rb"\r\n|\r|\n", raw):
        if not seg.strip():
            continue
        if seg[:3] in _BATCH_SEGMENTS:
            envelope.append(seg)
        elif seg[:3] == b"MSH":
            messages.append([seg])
        elif messages:
            messages[-1].append(seg)
        else:
            raise CodecError(
                f"expected MSH after the batch header (got {seg[:3]!r})",
                location="BHS",
                code="bad_msh",
            )
    return envelope, [b"\r".join(m) + b"\r" for m in messages]


def batch_ack(envelope: list[bytes], acks: list[bytes]) -> bytes:
    """Wrap per-message ACKs in BHS/BTS (and FHS/FTS when the batch had a file header)."""
    header = next((e for e in envelope if e[:3] == b"BHS"), None) or next(
        (e for e in envelope if e[:3] == b"FHS"), b"BHS|^~\\&"
    )
    fs = header[3:4] or b"|"
    parts = header.split(fs)
    enc = parts[1] if len(parts) > 1 else b"^~\\&"

    def part(n: int) -> bytes:  # BHS-n (BHS-1 is the separator)
        return parts[n - 1] if 1 < n <= len(parts) else b""

    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime()).encode()
    bhs = fs.join([b"BHS", enc, part(5), part(6), part(3), part(4), stamp])
    body = b"".join(a if a.endswith(b"\r") else a + b"\r" for a in acks)
    out = bhs + b"\r" + body + fs.join([b"BTS", str(len(acks)).encode()]) + b"\r"
    if any(e[:3] == b"FHS" for e in envelope):
        fhs = fs.join([b"FHS", enc, part(5), part(6), part(3), part(4), stamp])
        out = fhs + b"\r" + out + fs.join([b"FTS", b"1"]) + b"\r"
    return out
