"""HL7 v2 acknowledgements: original (AA/AE/AR) and enhanced (CA/CE/CR) mode, with ERR.

The ACK answers in the inbound message's own terms: its encoding characters, version and
character set; sending and receiving application/facility swapped; MSA-2 echoing MSH-10.
ERR follows the version: v2.5 and later use ERR-2 (location), ERR-3 (code, table 0357),
ERR-4 (severity) and ERR-8 (user message); before v2.5 a single ERR-1 (segment^sequence^
field^code&text&HL70357) and the text in MSA-3.
"""

from __future__ import annotations

import functools
import itertools
import time
import uuid
from dataclasses import dataclass

from engine.codecs.hl7v2 import _CHARSETS, Hl7Message, Separators, escape

#: HL7 table 0357 (message error condition codes).
TABLE_0357 = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "104": "Value too long",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}

#: CodecError.code → (original-mode ACK code, table 0357 code). AR: do not resend unchanged.
CODEC_ERRORS = {
    "not_hl7": ("AR", "100"),
    "bad_msh": ("AR", "100"),
    "bad_charset": ("AR", "102"),
    "unsupported_charset": ("AR", "102"),
    "required_field_missing": ("AR", "101"),
    "unsupported_version": ("AR", "203"),
    "unsupported_processing_id": ("AR", "202"),
    "unsupported_message_type": ("AR", "200"),
    "too_large": ("AR", "207"),
    "structure": ("AE", "100"),
    "invalid": ("AE", "102"),
}

_ENHANCED = {"AA": "CA", "AE": "CE", "AR": "CR"}


_ID_PREFIX = "A" + uuid.uuid4().hex[:7]
_ID_COUNTER = itertools.count(1)


def next_control_id() -> str:
    """A control id for an ACK we send: unique in this process, and across restarts through
    a random prefix (20 characters at most, the v2.5 length of MSH-10)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012d}"


@dataclass(frozen=True)
class AckError:
    """What went wrong, for the ERR segment."""

    text: str
    code: str = "207"  # table 0357
    location: str = ""  # SEG^seq^field^rep^comp
    severity: str = "E"


@functools.lru_cache(maxsize=64)
def version_tuple(version: str) -> tuple[int, ...]:
    out = []
    for part in version.split("."):
        out.append(int(part) if part.isdigit() else 0)
    return tuple(out)


def accept_ack_mode(msg: Hl7Message) -> tuple[str, str]:
    """MSH-15 (accept ack type) and MSH-16 (application ack type); both empty = original mode."""
    return msg.msh.get(15).upper(), msg.msh.get(16).upper()


def is_enhanced(msg: Hl7Message) -> bool:
    accept, application = accept_ack_mode(msg)
    return bool(accept or application)


def wanted(condition: str, code: str) -> bool:
    """Table 0155: AL always, NE never, ER on error/reject only, SU on success only."""
    ok = code in ("AA", "CA")
    if condition in ("", "AL"):
        return True
    if condition == "NE":
        return False
    if condition == "ER":
        return not ok
    if condition == "SU":
        return ok
    return True


def make_ack(
    msg: Hl7Message,
    code: str,
    error: AckError | None = None,
    *,
    commit: bool = False,
    control_id: str | None = None,
    now: float | None = None,
) -> bytes:
    """Build the ACK for ``msg``. ``code`` is AA/AE/AR; ``commit`` turns it into CA/CE/CR."""
    if commit:
        code = _ENHANCED.get(code, code)
    sep, msh = msg.sep, msg.msh
    fs, cs = sep.field, sep.component
    version = msg.version
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now if now is not None else time.time()))
    trigger = msh.get(9, 2)
    if trigger:
        msg_type = f"ACK{cs}{trigger}" + (f"{cs}ACK" if version_tuple(version) >= (2, 4) else "")
    else:
        msg_type = "ACK"
    fields = [
        "MSH",
        sep.encoding_characters,
        msh.raw(5),
        msh.raw(6),
        msh.raw(3),
        msh.raw(4),
        stamp,
        "",
        msg_type,
        control_id or next_control_id(),
        msh.raw(11) or "P",
        msh.raw(12),
    ]
    charset = msh.raw(18)
    if charset:
        fields += [""] * 5 + [charset]
    segments = [fs.join(fields)]
    pre25 = version_tuple(version) < (2, 5)
    msa = ["MSA", code, msh.raw(10)]
    if error is not None and pre25:
        msa.append(escape(error.text, sep))
    segments.append(fs.join(msa))
    if error is not None:
        segments.append(err_segment(error, sep, pre25))
    return ("\r".join(segments) + "\r").encode(_CHARSETS.get(msh.get(18).upper(), "utf-8"))


def err_segment(error: AckError, sep: Separators, pre25: bool) -> str:
    fs, cs, ss = sep.field, sep.component, sep.subcomponent
    label = TABLE_0357.get(error.code, "")
    if pre25:
        loc = error.location.split("^") if error.location else []
        parts = [*loc, "", "", ""][:3]
        code = ss.join([error.code, escape(label, sep), "HL70357"])
        return fs.join(["ERR", cs.join([parts[0], parts[1], parts[2], code])])
    location = cs.join(error.location.split("^")) if error.location else ""
    code = cs.join([error.code, escape(label, sep), "HL70357"])
    return fs.join(["ERR", "", location, code, error.severity, "", "", "", escape(error.text, sep)])


def nak_without_message(raw: bytes, error: AckError) -> bytes:
    """An AR for bytes that could not be tokenized: default separators, what MSH we can salvage."""
    sep = Separators()
    head = raw.split(b"\r", 1)[0].split(b"\n", 1)[0]
    fields: list[str] = []
    if head.startswith(b"MSH") and len(head) > 8:
        fs = chr(head[3])
        fields = head.decode("latin-1").split(fs)

    def f(n: int) -> str:  # MSH-n of the salvaged header (MSH-1 is the separator)
        return fields[n - 1] if 1 < n <= len(fields) and fields else ""

    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    version = f(12).split("^")[0] if f(12) else "2.5.1"
    msh = [
        "MSH",
        sep.encoding_characters,
        f(5),
        f(6),
        f(3),
        f(4),
        stamp,
        "",
        "ACK",
        "A" + uuid.uuid4().hex[:19],
        "P",
        version,
    ]
    pre25 = version_tuple(version) < (2, 5)
    msa = ["MSA", "AR", f(10)]
    if pre25:
        msa.append(escape(error.text, sep))
    segments = ["|".join(_clean(x) for x in msh), "|".join(msa), err_segment(error, sep, pre25)]
    return ("\r".join(segments) + "\r").encode("ascii", "replace")


def _clean(value: str) -> str:
    return "".join(ch for ch in value if ch.isprintable())
