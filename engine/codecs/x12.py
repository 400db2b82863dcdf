"""The ``x12`` codec: an X12 file (one or more interchanges) taken as it came.

Decoding only checks that the bytes are X12 (an ``ISA`` first) and within the size limit: an
interchange with a broken envelope must still be stored, because it is answered with a TA1
(``x12_inbound`` does the validation and the answers). With ``not_x12: store`` even bytes that
are no X12 at all are stored, for a channel whose domain answers them (a partner's inbound
folder: a clear refusal in its outbound/ folder and a work item).

The dedup key is the content's SHA-256 scoped to the arrival (``dedup_per_arrival``): the same
file taken twice (a crash between the commit and the move) is a duplicate and changes nothing,
while the same bytes uploaded again are a new message, answered again with a TA1/997/999; the
procurement book recognises the resent interchange by its sender and ISA13 and applies nothing.
"""

from __future__ import annotations

from typing import Any

from engine.codecs.base import Parsed, sha256_key
from engine.errors import CodecError
from engine.registry import codec
from engine.spec import ByteSize, Enum, Field, Spec

CONTENT_TYPE = "application/edi-x12"

X12_SPEC = Spec(
    "x12",
    [
        Field("max_size", ByteSize(), 64 * 1024 * 1024, "Larger files are refused."),
        Field(
            "not_x12",
            Enum("refuse", "store"),
            "refuse",
            "Bytes that do not start with `ISA`: refused by the source (`error/` with a "
            "reason), or stored for the `x12_inbound` transform to answer (a partner's inbound "
            "folder: a refusal in its outbound/ and a work item).",
        ),
    ],
    description=(
        "ASC X12 (004010/005010): one or more interchanges per file. Bytes that do not start "
        "with `ISA` are refused (unless `not_x12: store`); everything else is stored and "
        "validated by the `x12_inbound` transform, which answers with TA1 and 997/999. The "
        "dedup key is the content's SHA-256 per arrival: a file taken twice is a duplicate, "
        "the same bytes uploaded again are answered again (and applied once)."
    ),
    example="codec:\n  x12: {}",
)


class X12Codec:
    @staticmethod
    def count_lines(parsed: Parsed) -> int:
        """The file's lines for a channel's ``limits.max_lines``: its segments (ISA16 ends
        them)."""
        raw = parsed.value
        head = raw.lstrip(b"\xef\xbb\xbf \t\r\n")
        return raw.count(head[105:106]) if len(head) > 105 else 0

    content_type = CONTENT_TYPE
    # a resend of the same bytes is a new message (answered again); only the same arrival taken
    # twice is a duplicate (engine.runtime.ingest scopes the dedup key to the arrival)
    dedup_per_arrival = True

    def __init__(self, options: Any) -> None:
        self.options = options

    def decode(self, raw: bytes) -> Parsed:
        if len(raw) > self.options.max_size:
            raise CodecError(
                f"file is {len(raw)} bytes; the limit is {self.options.max_size}", code="too_large"
            )
        head = raw.lstrip(b"\xef\xbb\xbf \t\r\n")[:106]
        if not head.startswith(b"ISA"):
            if self.options.not_x12 == "store":
                return Parsed(raw, CONTENT_TYPE, "not_x12", None, sha256_key(raw))
            raise CodecError(
                f"expected an X12 interchange starting with ISA (got {head[:12]!r})",
                location="ISA",
                code="not_x12",
            )
        control = None
        if len(head) >= 106:
            sep = head[3:4]
            fields = head.split(sep)
            if len(fields) > 13 and fields[13].strip().isdigit():
                control = fields[13].decode("ascii", "replace").strip()
        st = raw.find(b"ST" + head[3:4])
        mtype = raw[st + 3 : st + 6].decode("ascii", "replace") if st > 0 else "ISA"
        return Parsed(raw, CONTENT_TYPE, mtype, control, sha256_key(raw))


@codec("x12", X12_SPEC)
def make_x12(options: Any) -> X12Codec:
    return X12Codec(options)
