"""Who may speak for a trading partner, and how a file that may not is refused.

A message is stored with the credential it came with (its origin: ``sftp:ACCOUNT``,
``token:NAME``, ``tls:CN``); ``mappings/trading_partners.yaml`` binds each credential to one
partner (:meth:`~engine.domains.procurement.partners.TradingPartners.by_origin`). An
interchange that came with a partner's credential must carry that partner's ISA05/06 and GS02:
:func:`identity_problem` says what is wrong otherwise (TA105 ``006`` invalid interchange sender
ID, ``024`` invalid interchange content: the GS), :func:`refusal_ta1` writes the TA1 R that
answers it, addressed to the partner the credential speaks for (whatever ids the file
carried), and :func:`refusal_text` the plain-words refusal of a file whose envelope cannot be
read at all (no ISA13 for a TA1 to name). The book books nothing of either.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from engine.domains.procurement.partners import Partner
from engine.domains.procurement.records import InboundInterchange
from engine.x12 import ack as x12ack


def identity_problem(partner: Partner, ic: InboundInterchange) -> tuple[str, str] | None:
    """(TA105 code, why) when ``ic`` does not carry the ids of ``partner``, the partner its
    credential speaks for: ISA05/06 another partner's or nobody's (006), or a GS02 that is not
    the partner's application code (024); None when it does."""
    sender = f"{ic.sender[0]}/{ic.sender[1].strip()}"
    if ic.claimed != partner.id:
        whose = f"partner {ic.claimed}'s" if ic.claimed else "no trading partner's"
        return (
            "006",
            f"ISA sender {sender} is {whose} id, but the interchange came with {ic.origin}, "
            f"which speaks for {partner.id} (ISA {partner.isa.qualifier}/{partner.isa.id})",
        )
    for group in getattr(ic.result, "groups", ()) or ():
        if group.sender.strip() != partner.gs_id:
            return (
                "024",
                f"GS02 {group.sender.strip()!r} of group {group.control_number} is not "
                f"{partner.id}'s application code {partner.gs_id!r} (the interchange came "
                f"with {ic.origin})",
            )
    return None


def refusal_ta1(
    partner: Partner, ic: InboundInterchange, code: str, isa13: int, when: datetime
) -> bytes:
    """The TA1 R ``code`` answering ``ic`` (TA101 its ISA13), in an interchange from us to
    ``partner``'s own ISA id."""
    answer = dataclasses.replace(
        ic.result,
        ta1_code=code,
        ta1_sent=True,
        groups=(),
        sender=(partner.isa.qualifier, partner.isa.id),
        receiver=(partner.our_isa.qualifier, partner.our_isa.id),
    )
    return x12ack.ta1_interchange(answer, isa13, when)


def refusal_text(partner: Partner, ic: InboundInterchange, when: datetime) -> bytes:
    """A refusal a person at the partner can read: what came (its SHA-256), why it is refused
    and that nothing of it was applied."""
    text = (
        f"Wharf refused a file received from {partner.id} ({partner.name or partner.id}) "
        f"on {when.strftime('%Y-%m-%d %H:%M')}.\n"
        f"SHA-256 of the file: {ic.sha256 or 'unknown'}\n"
        f"Why: {ic.unreadable}.\n"
        "No interchange header (ISA) could be read, so no TA1 can answer it, and nothing "
        "of the file was applied.\n"
        "Send it again as an X12 interchange (ISA ... IEA).\n"
    )
    return text.encode("utf-8")


__all__ = ["identity_problem", "refusal_ta1", "refusal_text"]
