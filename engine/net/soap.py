"""SOAP 1.1 and 1.2 on lxml: envelopes (:func:`envelope`), the WS-Security UsernameToken with
a timestamp (:func:`ws_security`), and answers read into a body or a :class:`Fault`
(:func:`read_answer`) whose outcome (:meth:`Fault.error`) is permanent for the sender's fault
and transient for the receiver's:

=====================  ===========================  ==========================
SOAP version           permanent (fix the request)  transient (send again)
=====================  ===========================  ==========================
1.1 ``faultcode``      ``Client`` (``Client.*``),   ``Server`` (``Server.*``)
                       ``VersionMismatch``,
                       ``MustUnderstand``
1.2 ``Code/Value``     ``Sender``,                  ``Receiver``
                       ``VersionMismatch``,
                       ``MustUnderstand``,
                       ``DataEncodingUnknown``
=====================  ===========================  ==========================

References: SOAP 1.1 (W3C Note, 8 May 2000) section 4.4 Fault; SOAP 1.2 Part 1 (W3C
Recommendation, 27 April 2007) section 5.4 Fault; OASIS Web Services Security UsernameToken
Profile 1.0/1.1 (Timestamp from WSS SOAP Message Security 1.0 section 10).

A fault's text is kept with the delivery; logs get only its code (a fault string may quote the
request's data).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
from dataclasses import dataclass
from typing import Any

from lxml import etree

from engine.errors import DeliveryError
from engine.net.xml import hardened_parser

__all__ = [
    "SOAP11",
    "SOAP12",
    "WSSE",
    "WSU",
    "Fault",
    "content_type",
    "envelope",
    "read_answer",
    "ws_security",
]

SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
_TOKEN_PROFILE = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
)
PASSWORD_TEXT = _TOKEN_PROFILE + "#PasswordText"
PASSWORD_DIGEST = _TOKEN_PROFILE + "#PasswordDigest"
BASE64 = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary"
)

_NS = {"1.1": SOAP11, "1.2": SOAP12}
_PERMANENT_11 = ("Client", "VersionMismatch", "MustUnderstand")
_PERMANENT_12 = ("Sender", "VersionMismatch", "MustUnderstand", "DataEncodingUnknown")


def content_type(version: str, action: str | None) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The Content-Type (and for 1.1 the SOAPAction header) of a request."""
    if version == "1.1":
        return b"text/xml; charset=utf-8", [(b"SOAPAction", f'"{action or ""}"'.encode())]
    value = "application/soap+xml; charset=utf-8"
    if action:
        value += f'; action="{action}"'
    return value.encode(), []


def _utc(when: float) -> str:
    stamp = datetime.datetime.fromtimestamp(when, datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def ws_security(
    version: str,
    *,
    username: str,
    password: str,
    now: float,
    ttl: float = 300.0,
    digest: bool = False,
    nonce: bytes | None = None,
) -> etree._Element:
    """A ``wsse:Security`` header (mustUnderstand) holding a ``wsu:Timestamp`` (Created, and
    Expires ``ttl`` seconds later) and a ``wsse:UsernameToken`` with the password as text or
    as a digest (Base64(SHA-1(nonce + created + password))), a nonce and its creation time."""
    env = _NS[version]
    security = etree.Element(f"{{{WSSE}}}Security", nsmap={"wsse": WSSE, "wsu": WSU})
    security.set(f"{{{env}}}mustUnderstand", "1" if version == "1.1" else "true")
    created = _utc(now)
    stamp = etree.SubElement(security, f"{{{WSU}}}Timestamp")
    stamp.set(f"{{{WSU}}}Id", "TS-1")
    etree.SubElement(stamp, f"{{{WSU}}}Created").text = created
    etree.SubElement(stamp, f"{{{WSU}}}Expires").text = _utc(now + ttl)
    token = etree.SubElement(security, f"{{{WSSE}}}UsernameToken")
    token.set(f"{{{WSU}}}Id", "UT-1")
    etree.SubElement(token, f"{{{WSSE}}}Username").text = username
    raw_nonce = nonce if nonce is not None else os.urandom(16)
    secret = etree.SubElement(token, f"{{{WSSE}}}Password")
    if digest:
        value = hashlib.sha1(raw_nonce + created.encode() + password.encode()).digest()
        secret.set("Type", PASSWORD_DIGEST)
        secret.text = base64.b64encode(value).decode()
    else:
        secret.set("Type", PASSWORD_TEXT)
        secret.text = password
    element = etree.SubElement(token, f"{{{WSSE}}}Nonce")
    element.set("EncodingType", BASE64)
    element.text = base64.b64encode(raw_nonce).decode()
    etree.SubElement(token, f"{{{WSU}}}Created").text = created
    return security


def envelope(
    version: str,
    body: etree._Element,
    headers: list[etree._Element] = (),  # type: ignore[assignment]
) -> bytes:
    """A SOAP envelope of ``version`` ('1.1' or '1.2') around ``body`` (the operation's
    element), with ``headers`` in its Header; UTF-8 bytes with an XML declaration."""
    ns = _NS[version]
    root = etree.Element(f"{{{ns}}}Envelope", nsmap={"soapenv": ns})
    if headers:
        header = etree.SubElement(root, f"{{{ns}}}Header")
        for h in headers:
            header.append(h)
    etree.SubElement(root, f"{{{ns}}}Body").append(body)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


@dataclass(frozen=True)
class Fault:
    """A SOAP fault: ``code`` the local name of the 1.1 faultcode or the 1.2 Code/Value
    (``Client.validationError`` keeps its dotted suffix), ``subcodes`` the 1.2 Subcode values,
    ``reason`` the faultstring / Reason/Text, ``detail`` the detail element (or None)."""

    version: str
    code: str
    subcodes: tuple[str, ...]
    reason: str
    detail: etree._Element | None

    @property
    def permanent(self) -> bool:
        head = self.code.split(".", 1)[0]
        return head in (_PERMANENT_11 if self.version == "1.1" else _PERMANENT_12)

    def error(self, where: str, body: bytes, status: int) -> DeliveryError:
        """The delivery outcome: permanent for the sender's fault, transient for the
        receiver's. The reason goes to the stored text, only the code to the log."""
        kind = "permanent" if self.permanent else "transient"
        codes = "/".join((self.code, *self.subcodes))
        shown = f"SOAP {self.version} fault {codes} ({kind}) from {where} (HTTP {status})"
        return DeliveryError(
            f"{shown}: {self.reason}",
            retryable=not self.permanent,
            response=body,
            log_text=shown,
        )


def _local(qname: str | None) -> str:
    text = (qname or "").strip()
    return text.rpartition(":")[2] if ":" in text else text


def read_answer(raw: bytes, version: str) -> tuple[etree._Element | None, Fault | None]:
    """The Body's first child, or the Fault it holds. A DeliveryError (retryable, ambiguous:
    the request may have been applied) when ``raw`` is not a SOAP envelope of ``version``."""
    ns = _NS[version]
    try:
        root = etree.fromstring(raw, parser=hardened_parser())
    except etree.XMLSyntaxError as e:
        raise _not_soap(f"not XML ({e.msg})") from None
    if root.tag != f"{{{ns}}}Envelope":
        other = SOAP12 if version == "1.1" else SOAP11
        if root.tag == f"{{{other}}}Envelope":
            raise _not_soap(f"a SOAP {'1.2' if version == '1.1' else '1.1'} envelope")
        raise _not_soap(f"root element {root.tag!r}")
    body = root.find(f"{{{ns}}}Body")
    if body is None:
        raise _not_soap("an envelope without a Body")
    first = next(iter(body), None)
    if first is None or first.tag != f"{{{ns}}}Fault":
        return first, None
    if version == "1.1":
        code = _local(first.findtext("faultcode"))
        reason = (first.findtext("faultstring") or "").strip()
        return None, Fault("1.1", code, (), reason, first.find("detail"))
    code = _local(first.findtext(f"{{{ns}}}Code/{{{ns}}}Value"))
    subcodes: list[str] = []
    node = first.find(f"{{{ns}}}Code/{{{ns}}}Subcode")
    while node is not None:
        subcodes.append(_local(node.findtext(f"{{{ns}}}Value")))
        node = node.find(f"{{{ns}}}Subcode")
    reason = (first.findtext(f"{{{ns}}}Reason/{{{ns}}}Text") or "").strip()
    return None, Fault("1.2", code, tuple(subcodes), reason, first.find(f"{{{ns}}}Detail"))


def _not_soap(what: str) -> DeliveryError:
    return DeliveryError(
        f"the answer is not a SOAP envelope: {what}", retryable=True, ambiguous=True
    )


def child_text(element: Any, *path: str) -> str | None:
    """The text of the first descendant reached by local names ``path`` (namespaces
    ignored), or None."""
    node = element
    for name in path:
        node = next((c for c in node.iterchildren() if etree.QName(c).localname == name), None)
        if node is None:
            return None
    return (node.text or "").strip()
