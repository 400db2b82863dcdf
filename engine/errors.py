"""The one exception tree of Wharf.

::

    WharfError
     +-- ConfigError            a channel, route or mapping file is wrong (file:line:col, path)
     |    +-- LintFailed        several ConfigErrors found by one lint pass
     +-- CodecError             inbound bytes are not a valid message of the channel's codec
     |    +-- X12Error          X12 bytes are wrong (carries the TA1 note code when one applies)
     |         +-- X12EnvelopeError  ISA/GS/ST envelope broken: answer with a TA1 (ta1_code)
     |         +-- X12DocumentError  a transaction set's content is wrong (segment, element)
     +-- TransformError         a transform step failed on a stored message
     |    +-- MappingMiss       a lookup key is missing from a mapping table
     |    +-- MissingField      a required field of the message is empty
     |    +-- MissingLotSerial  an implant without the lot/serial its item requires
     |    +-- UomConversionMissing  no conversion between two units of an item
     |    +-- UnmappedUnit      a unit has no code in a trading partner's UoM map
     |    +-- X12WriteError     an outbound X12 document cannot be written as asked
     +-- ListenFailed           a listener could not listen (port in use, bad address or PEM)
 +-- StoreError             the store could not do what was asked
     |    +-- Overloaded        too many ingests waiting: refuse now, the sender retries later
     +-- DeliveryError          a destination call failed (carries retryable / ambiguous flags)

Error text says what was expected and what came: ``'port' must be in 1..65535 (got 70000)``.
"""

from __future__ import annotations


class WharfError(Exception):
    """Base of every error Wharf raises on purpose."""


class ConfigError(WharfError):
    """A configuration problem at a known place in a file."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
        path: str = "",
        code: str = "config",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        self.path = path
        self.code = code

    @property
    def where(self) -> str:
        if self.file is None:
            return "<config>"
        if self.line is None:
            return self.file
        return f"{self.file}:{self.line}:{self.column or 1}"

    def __str__(self) -> str:
        field = f" {self.path}:" if self.path else ""
        return f"{self.where}:{field} {self.message}"


class LintFailed(ConfigError):
    """Several configuration errors, all reported at once."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = list(errors)
        first = self.errors[0] if self.errors else None
        super().__init__(
            f"{len(self.errors)} configuration error(s)",
            file=first.file if first else None,
            line=first.line if first else None,
            column=first.column if first else None,
        )

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class CodecError(WharfError):
    """Inbound bytes could not be decoded or failed validation.

    ``location`` is codec specific (HL7: ``MSH^1^9``); ``code`` is a short machine code.
    """

    def __init__(self, message: str, *, location: str = "", code: str = "invalid") -> None:
        super().__init__(message)
        self.message = message
        self.location = location
        self.code = code


class X12Error(CodecError):
    """X12 input that cannot be used.

    ``ta1_code``: the TA105 note code that applies (``"022"`` invalid control structure…), or
    None when the problem is inside a transaction set (then a 997/999 reports it).
    ``offset``: character offset in the decoded text; ``segment``: segment id; ``position``:
    segment position in its transaction set (ST = 1); ``element``: element position (1-based).
    """

    def __init__(
        self,
        message: str,
        *,
        ta1_code: str | None = None,
        offset: int | None = None,
        segment: str = "",
        position: int | None = None,
        element: int | None = None,
        code: str = "x12",
    ) -> None:
        where = segment
        if position is not None:
            where = f"{segment}@{position}"
        if element is not None:
            where = f"{where}-{element:02d}"
        super().__init__(message, location=where, code=code)
        self.ta1_code = ta1_code
        self.offset = offset
        self.segment = segment
        self.position = position
        self.element = element


class X12EnvelopeError(X12Error):
    """The interchange envelope (ISA/IEA, GS/GE, ST/SE nesting) is broken: reply with a TA1."""


class X12DocumentError(X12Error):
    """A transaction set lacks a segment it needs or carries a value that is not valid."""


class TransformError(WharfError):
    """A transform step could not produce its output for this message."""

    where: str = ""


class MappingMiss(TransformError):
    """``key`` is not in mapping table ``table``."""

    def __init__(self, table: str, key: object) -> None:
        super().__init__(f"MappingMiss: no row for {key!r} in mapping table '{table}'")
        self.table = table
        self.key = key


class MissingField(TransformError):
    """A field the transform needs is empty."""

    def __init__(self, field: str, detail: str = "") -> None:
        text = f"MissingField: {field} is required but empty"
        super().__init__(f"{text} ({detail})" if detail else text)
        self.field = field


class MissingLotSerial(TransformError):
    """An implant whose item demands lot or serial tracking came without them."""

    def __init__(
        self, item: str, line: str, missing: list[str], carriers: str = "PRT, ZUD or UDI"
    ) -> None:
        super().__init__(
            f"MissingLotSerial: item {item} (line {line}) requires {' and '.join(missing)} "
            f"but the message carries none ({carriers})"
        )
        self.item = item
        self.line = line
        self.missing = missing


class UomConversionMissing(MappingMiss):
    """No conversion from ``from_unit`` to ``to_unit`` for ``item``."""

    def __init__(self, item: str, from_unit: str, to_unit: str) -> None:
        super().__init__("uom_conversions", f"{item or '*'}:{from_unit}->{to_unit}")
        self.item = item
        self.from_unit = from_unit
        self.to_unit = to_unit


class UnmappedUnit(MappingMiss):
    """Unit ``unit`` has no code in trading partner ``partner``'s UoM map (``direction``:
    ``out`` ours → theirs, ``in`` theirs → ours)."""

    def __init__(self, partner: str, unit: str, direction: str, known: list[str]) -> None:
        TransformError.__init__(
            self,
            f"MappingMiss: unit {unit!r} has no {'X12' if direction == 'out' else 'own'} code "
            f"for trading partner '{partner}' (expected one of: {', '.join(known) or 'none'}; "
            "add it to the partner's uom map in mappings/trading_partners.yaml)",
        )
        self.table = f"trading_partners.{partner}.uom"
        self.key = unit
        self.partner = partner
        self.unit = unit
        self.direction = direction


class X12WriteError(TransformError):
    """An outbound X12 document cannot be written: a value holds a separator or is too long,
    a required field is missing, a control number is out of range. ``field`` names the value
    (``lines[1].description (PID05)``); nothing is emitted."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"X12WriteError: {field}: {message}")
        self.field = field
        self.reason = message


class ListenFailed(WharfError):
    """Listeners that could not listen, one line each naming the channel (or listener), the
    ``file:line:column`` of its ``listen`` and the cause; ``wharf run`` exits non-zero on it,
    a hot reload is refused with it."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class StoreError(WharfError):
    """The store failed; nothing was acknowledged."""


class StoreConflict(StoreError):
    """Another node's transaction stood in the way (PostgreSQL: a deadlock or a serialization
    failure): nothing of this one was written, and the same work again may well succeed."""


class Overloaded(StoreError):
    """The ingest queue is full; the source must refuse (NAK / 503) and let the sender retry."""


class DeliveryError(WharfError):
    """A destination call failed.

    ``retryable``: worth another attempt. ``ambiguous``: the request may have had its effect
    (sent, then timeout or reset), so a non-idempotent destination must not retry blindly.
    ``retry_after``: seconds the peer asked us to wait (HTTP ``Retry-After``).
    ``throttled``: the peer refused for its rate limit (HTTP 429): nothing took effect, the
    destination's queue is held for ``retry_after`` and the attempt is not counted.
    ``log_text``: what the log may say when ``message`` quotes the peer's own free text (an
    MLLP MSA-3 or ERR-8 can hold patient data): the message is kept with the delivery in the
    store, the log gets this instead.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = True,
        ambiguous: bool = False,
        retry_after: float | None = None,
        response: bytes | None = None,
        log_text: str | None = None,
        throttled: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.log_text = log_text
        self.throttled = throttled
        self.retryable = retryable
        self.ambiguous = ambiguous
        self.retry_after = retry_after
        self.response = response
