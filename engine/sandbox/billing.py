"""The sandbox billing system: DFT^P03 charges over MLLP, FHIR ChargeItem over HTTP.

MLLP: each FT1 of an accepted DFT^P03/P11 becomes one charge (encounter PV1-19.1, line id
FT1-2, charge code FT1-7.1, quantity FT1-10 (1 when empty), type FT1-6 CG/CD). A message is
all or nothing. Answers (original mode, built by :func:`make_ack`):

- AA, MSA-2 echoing MSH-10. An accepted message is remembered under (MSH-3, MSH-4, MSH-10):
  a resend gets the very same ACK bytes and adds no charge (counted as ``billing_duplicates``).
- AE + ERR when the content is wrong: PV1-19 empty (101), no FT1 (100), FT1-7 empty (101),
  FT1-6 not CG/CD (103), FT1-10 not a number (102), or a charge code in ``reject_codes``
  (103, "not in the chargemaster"). Nothing is stored and the answer is not remembered, so a
  corrected resend (even with the same MSH-10) is processed. Counted as ``billing_rejects``.
- AR for what is not a DFT message or cannot be parsed.

Frame contents are never logged.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

from twisted.logger import Logger

from engine.codecs.hl7ack import AckError, make_ack
from engine.codecs.hl7v2 import Hl7Message, tokenize
from engine.errors import CodecError
from engine.net.mllp import MLLPServerFactory
from engine.responder import oversize_nak
from engine.sandbox.api_error import ApiError, invalid
from engine.sandbox.state import SandboxState, decimal_text, sha256

log = Logger()

ACCEPTED_TYPES = {("DFT", "P03"), ("DFT", "P11")}
MAX_FRAME = 1024 * 1024


class Reject(Exception):
    def __init__(self, code: str, error: AckError) -> None:
        super().__init__(error.text)
        self.code = code
        self.error = error


class BillingReceiver:
    """The MLLP side of the sandbox billing system (and the reject list the FHIR side shares)."""

    def __init__(self, state: SandboxState, reject_codes: Iterable[str] = ()) -> None:
        self.state = state
        self.initial_reject_codes = frozenset(reject_codes)
        self.reject_codes: set[str] = set(reject_codes)

    def factory(self, reactor: Any, *, idle_timeout: float = 300.0) -> MLLPServerFactory:
        return MLLPServerFactory(
            self.handle,
            oversize_reply=lambda prefix: oversize_nak(prefix, MAX_FRAME),
            max_frame=MAX_FRAME,
            idle_timeout=idle_timeout,
            clock=reactor,
        )

    def handle(self, frame: bytes, peer: str) -> bytes:
        try:
            msg = tokenize(frame)
        except CodecError as exc:
            from engine import responder

            log.info("sandbox billing from {peer}: AR (not HL7)", peer=peer)
            return responder.rejected(frame, exc)
        msh = msg.msh
        if str(msh.get(11) or "").split("^")[0] == "T":  # test data: checked, never recorded
            try:
                with self.state.dry_run():
                    self._store(msg, f"MLLP-TEST:{msg.control_id}")
            except Reject as exc:
                return make_ack(msg, exc.code, exc.error)
            log.info("sandbox billing from {peer}: AA (test message, not recorded)", peer=peer)
            return make_ack(msg, "AA")
        key = f"MLLP:{msh.get(3)}|{msh.get(4)}|{msg.control_id}"
        seen = self.state.remembered(key) if msg.control_id else None
        if seen is not None:
            self.state.bump("billing_duplicates")
            log.info("sandbox billing from {peer}: duplicate, same ACK again", peer=peer)
            return seen["response"]
        try:
            with self.state.transaction():
                ids = self._store(msg, key)
                ack = make_ack(msg, "AA")
                self.state.remember(key, "MLLP", "billing", sha256(frame), 0, ack)
        except Reject as exc:
            if exc.code == "AE":
                self.state.bump("billing_rejects")
            log.info(
                "sandbox billing from {peer}: {code} ({text})",
                peer=peer,
                code=exc.code,
                text=exc.error.text if exc.code == "AR" else f"ERR {exc.error.code}",
            )
            return make_ack(msg, exc.code, exc.error)
        log.info("sandbox billing from {peer}: AA, {n} charge(s)", peer=peer, n=len(ids))
        return ack

    def _store(self, msg: Hl7Message, key: str) -> list[str]:
        msh = msg.msh
        if not msg.control_id:
            raise Reject(
                "AR", AckError("MSH-10 (message control id) is required", "101", "MSH^1^10")
            )
        kind = (msh.get(9, 1), msh.get(9, 2))
        if kind not in ACCEPTED_TYPES:
            raise Reject(
                "AR",
                AckError(
                    f"billing accepts DFT^P03 and DFT^P11 (got {msg.message_type})",
                    "200",
                    "MSH^1^9",
                ),
            )
        encounter = msg.get("PV1-19.1") or ""
        if not encounter:
            raise Reject(
                "AE",
                AckError("PV1-19 (visit number) is required to post charges", "101", "PV1^1^19"),
            )
        ft1s = msg.all("FT1")
        if not ft1s:
            raise Reject("AE", AckError("a DFT needs at least one FT1 segment", "100", "FT1"))
        lines = []
        for n, ft1 in enumerate(ft1s, start=1):
            code = ft1.get(7, 1)
            if not code:
                raise Reject(
                    "AE",
                    AckError(
                        f"FT1 #{n}: FT1-7 (transaction code) is required", "101", f"FT1^{n}^7"
                    ),
                )
            if code in self.reject_codes:
                raise Reject(
                    "AE",
                    AckError(
                        f"FT1 #{n}: charge code {code} is not in the chargemaster",
                        "103",
                        f"FT1^{n}^7",
                    ),
                )
            kind = ft1.get(6)
            if kind not in ("CG", "CD"):
                raise Reject(
                    "AE",
                    AckError(
                        f"FT1 #{n}: FT1-6 (transaction type) must be CG or CD (got {kind!r})",
                        "101" if not kind else "103",
                        f"FT1^{n}^6",
                    ),
                )
            qty_text = ft1.get(10) or "1"
            try:
                qty = Decimal(qty_text)
                if not qty.is_finite():
                    raise InvalidOperation
            except InvalidOperation:
                raise Reject(
                    "AE",
                    AckError(f"FT1 #{n}: FT1-10 (quantity) must be a number", "102", f"FT1^{n}^10"),
                ) from None
            # FT1-11 (extended amount, currency), as the billing system books it
            price = {"amount": ft1.get(11, 1), "currency": ft1.get(11, 2)} if ft1.get(11) else None
            lines.append((ft1.get(2), code, ft1.get(7, 2), decimal_text(qty), kind, price))
        return [
            self.state.add_charge(
                source="mllp",
                message_key=key.removeprefix("MLLP:"),
                encounter=encounter,
                line_id=line_id,
                code=code,
                description=description,
                quantity=qty,
                type=kind,
                doc=price,
            )
            for line_id, code, description, qty, kind, price in lines
        ]


# ---------------------------------------------------------------------------- FHIR ChargeItem

CHARGE_ITEM_STATUS = {
    "planned",
    "billable",
    "not-billable",
    "aborted",
    "billed",
    "entered-in-error",
    "unknown",
}


def _reference_id(ref: Any, name: str) -> str:
    if (
        not isinstance(ref, dict)
        or not isinstance(ref.get("reference"), str)
        or not ref["reference"]
    ):
        raise invalid(name, "expected a Reference with a 'reference'")
    return ref["reference"].rsplit("/", 1)[-1]


def charge_item(
    state: SandboxState, doc: dict, if_none_exist: str, reject_codes: set[str]
) -> tuple[int, dict, dict[str, str]]:
    """FHIR ChargeItem create (R4 ``context`` or R5 ``encounter``), with If-None-Exist on
    ``identifier``. Returns (status, resource, headers); raises ApiError (422) on bad input."""
    if doc.get("resourceType") != "ChargeItem":
        raise invalid(
            "ChargeItem.resourceType", f"expected 'ChargeItem' (got {doc.get('resourceType')!r})"
        )
    status = doc.get("status")
    if status not in CHARGE_ITEM_STATUS:
        raise invalid(
            "ChargeItem.status", f"expected one of {', '.join(sorted(CHARGE_ITEM_STATUS))}"
        )
    codings = (doc.get("code") or {}).get("coding") if isinstance(doc.get("code"), dict) else None
    if not isinstance(codings, list) or not codings or not isinstance(codings[0], dict):
        raise invalid("ChargeItem.code.coding", "is required")
    code = codings[0].get("code")
    if not isinstance(code, str) or not code:
        raise invalid("ChargeItem.code.coding[0].code", "is required")
    _reference_id(doc.get("subject"), "ChargeItem.subject")
    if "encounter" in doc:
        encounter = _reference_id(doc["encounter"], "ChargeItem.encounter")
    else:
        encounter = _reference_id(doc.get("context"), "ChargeItem.context")
    quantity = doc.get("quantity", {"value": 1})
    value = quantity.get("value") if isinstance(quantity, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise invalid("ChargeItem.quantity.value", "expected a number")
    identifiers = doc.get("identifier") or []
    if not isinstance(identifiers, list) or not all(isinstance(i, dict) for i in identifiers):
        raise invalid("ChargeItem.identifier", "expected a list of Identifiers")
    ident = str(identifiers[0].get("value") or "") if identifiers else ""
    if if_none_exist:
        wanted = _identifier_search(if_none_exist)
        existing = state.find_fhir_charge(wanted) if wanted else None
        if existing is not None:
            return 200, state.charge_doc(existing), {"location": f"ChargeItem/{existing}"}
    if code in reject_codes:
        raise ApiError(422, f"ChargeItem.code: charge code {code} is not in the chargemaster")
    qty = Decimal(value)
    charge_id = state.add_charge(
        source="fhir",
        message_key=ident,
        encounter=encounter,
        line_id=ident,
        code=code,
        description=str(codings[0].get("display") or ""),
        quantity=decimal_text(qty),
        type="CD" if qty < 0 else "CG",
    )
    stored = {**doc, "id": charge_id}
    state.set_charge_doc(charge_id, stored)
    return 201, stored, {"location": f"ChargeItem/{charge_id}"}


def _identifier_search(text: str) -> str:
    """``identifier=system|value`` (or ``identifier=value``) → value."""
    from urllib.parse import parse_qs

    values = parse_qs(text.lstrip("?")).get("identifier")
    if not values:
        raise invalid("If-None-Exist", "only identifier=[system|]value is supported")
    return values[0].rsplit("|", 1)[-1]
