"""What an answering source (MLLP) says, and when: the HL7 side of ``respond_from``.

Original mode (MSH-15 and MSH-16 empty): one ACK. With ``respond_from: after_store`` it is AA,
built before the commit and stored with the message, so a resend gets the very same bytes.
With ``after_transform`` or ``destinations_completed`` the engine waits (up to
``respond_timeout``) for the pipeline, answers AA or AE with an ERR, and stores that answer.

Enhanced mode (MSH-15 or MSH-16 set): a commit ACK (CA) after the commit, when MSH-15 asks
for it; the application ACK, when MSH-16 asks, goes out later through the channel's
``application_ack`` destination (see :meth:`engine.channel.Channel.process`).

Refusals that are not the message's fault (store unavailable, over capacity, not finished in
time) are AR/CR with ERR 207: nothing was acknowledged and the sender resends later.
"""

from __future__ import annotations

from engine.codecs.base import Parsed
from engine.codecs.hl7ack import (
    CODEC_ERRORS,
    AckError,
    accept_ack_mode,
    is_enhanced,
    make_ack,
    nak_without_message,
    wanted,
)
from engine.codecs.hl7v2 import Hl7Message, tokenize
from engine.errors import CodecError
from engine.net.mllp import minimal_nak

#: A reply that says nothing: the source keeps the connection and sends no ACK (MSH-15 NE/SU/ER).
NO_REPLY = b""


def _msg(parsed: Parsed | None) -> Hl7Message | None:
    value = parsed.value if parsed is not None else None
    return value if isinstance(value, Hl7Message) else None


def commit_reply(parsed: Parsed) -> bytes | None:
    """The answer known at commit time: CA (enhanced) or AA (original). None if not HL7."""
    msg = _msg(parsed)
    if msg is None:
        return None
    if is_enhanced(msg):
        accept, _ = accept_ack_mode(msg)
        return make_ack(msg, "AA", commit=True) if wanted(accept, "CA") else NO_REPLY
    return make_ack(msg, "AA")


def waits_for_pipeline(parsed: Parsed, respond_from: str) -> bool:
    """Original mode with after_transform/destinations_completed waits; enhanced never does."""
    msg = _msg(parsed)
    if msg is None or is_enhanced(msg):
        return False
    return respond_from != "after_store"


def rejected(raw: bytes, exc: CodecError) -> bytes:
    """AR (or AE) for bytes the codec refused; nothing was stored."""
    code, err = CODEC_ERRORS.get(exc.code, ("AR", "102"))
    error = AckError(exc.message, err, exc.location)
    try:
        msg = tokenize(raw)
        if not msg.segments or msg.msh.name != "MSH":
            raise CodecError("no MSH")
    except CodecError:
        return nak_without_message(raw, error)
    return make_ack(msg, code, error, commit=is_enhanced(msg))


def oversize_nak(prefix: bytes, limit: int) -> bytes:
    """AR (ERR) for a frame over ``limit`` bytes, from the start of the frame (its MSH); the
    ``oversize_reply`` an MLLP listener (:class:`engine.net.mllp.MLLPServerFactory`) is given."""
    text = f"frame is larger than the {limit}-byte limit; not stored"
    try:
        return rejected(prefix, CodecError(text, code="too_large"))
    except Exception:
        return minimal_nak(prefix, text)


def refused(raw: bytes, parsed: Parsed | None, reason: str) -> bytes:
    """AR/CR 207: a transient refusal; nothing was acknowledged."""
    error = AckError(f"{reason}; not stored, send again later", "207")
    msg = _msg(parsed)
    if msg is None:
        try:
            msg = tokenize(raw)
        except CodecError:
            return nak_without_message(raw, error)
    return make_ack(msg, "AR", error, commit=is_enhanced(msg))


def pending(raw: bytes, parsed: Parsed | None, timeout: float) -> bytes:
    """AR 207: stored, but the pipeline did not finish in time; a resend gets the final ACK."""
    error = AckError(
        f"stored, but not processed within {timeout:g}s; send again later for the final answer",
        "207",
    )
    msg = _msg(parsed)
    if msg is None:
        return nak_without_message(raw, error)
    return make_ack(msg, "AR", error)


def conflict(parsed: Parsed) -> bytes:
    """AE 205: the control id was used before for a different message."""
    msg = _msg(parsed)
    assert msg is not None
    error = AckError(
        f"MSH-10 {msg.control_id} was already received with different content; "
        "kept for review, not processed",
        "205",
        "MSH^1^10",
    )
    return make_ack(msg, "AE", error, commit=is_enhanced(msg))


def final(parsed: Parsed, status: str, error_text: str | None, location: str | None) -> bytes:
    """The original-mode ACK after the pipeline: AA, or AE with the failure."""
    msg = _msg(parsed)
    assert msg is not None
    if status == "error":
        return make_ack(msg, "AE", AckError(error_text or "processing failed", "207"))
    return make_ack(msg, "AA")


def application_ack(msg: Hl7Message, error_text: str | None) -> bytes | None:
    """The enhanced-mode application ACK (AA/AE), or None when MSH-16 does not ask for it."""
    _, application = accept_ack_mode(msg)
    code = "AE" if error_text else "AA"
    if not application or not wanted(application, code):
        return None
    error = AckError(error_text, "207") if error_text else None
    return make_ack(msg, code, error)
