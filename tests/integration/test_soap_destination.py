"""The ``soap`` destination against a real twisted.web SOAP 1.2 service on 127.0.0.1 (and a
SOAP 1.1 one): envelopes from a template with escaped values, the WS-Security UsernameToken and
timestamp, Sender/Client faults permanent, Receiver/Server faults retried, the answer kept."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from lxml import etree
from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web import resource, server

from engine.destinations.soap import SOAP_SPEC, SoapDestination
from engine.errors import DeliveryError
from engine.model import Delivery
from engine.net.soap import SOAP11, SOAP12, WSSE, WSU
from engine.spec import Context

pytestmark = pytest.mark.integration

TEMPLATE = """<o:SubmitOrder xmlns:o="urn:example:orders">
  <o:Number>{po_number}</o:Number>
  <o:Vendor>{vendor}</o:Vendor>
  <o:Key>{idempotency_key}</o:Key>
</o:SubmitOrder>
"""


def fault12(code: str, reason: str) -> bytes:
    return f"""<env:Envelope xmlns:env="{SOAP12}"><env:Body><env:Fault>
<env:Code><env:Value>env:{code}</env:Value><env:Subcode><env:Value>Busy</env:Value>
</env:Subcode></env:Code><env:Reason><env:Text xml:lang="en">{reason}</env:Text></env:Reason>
</env:Fault></env:Body></env:Envelope>""".encode()


class Service(resource.Resource):
    """Answers by the order number: FAULT-SENDER, FAULT-RECEIVER, else an OrderAccepted."""

    isLeaf = True

    def __init__(self, version: str) -> None:
        super().__init__()
        self.version = version
        self.requests: list[dict[str, Any]] = []

    def render_POST(self, request: server.Request) -> bytes:
        body = request.content.read()
        root = etree.fromstring(body)
        self.requests.append(
            {
                "root": root,
                "content_type": request.getHeader(b"content-type").decode(),
                "action": request.getHeader(b"soapaction"),
            }
        )
        number = root.findtext(".//{urn:example:orders}Number")
        request.setHeader(
            b"content-type", b"application/soap+xml" if self.version == "1.2" else b"text/xml"
        )
        if self.version == "1.1":
            if number == "FAULT-CLIENT":
                request.setResponseCode(500)
                return (
                    f'<s:Envelope xmlns:s="{SOAP11}"><s:Body><s:Fault>'
                    "<faultcode>s:Client</faultcode><faultstring>bad order</faultstring>"
                    "</s:Fault></s:Body></s:Envelope>"
                ).encode()
        elif number == "FAULT-SENDER":
            request.setResponseCode(400)
            return fault12("Sender", "unknown vendor for order FAULT-SENDER")
        elif number == "FAULT-RECEIVER":
            request.setResponseCode(500)
            return fault12("Receiver", "the order system is busy")
        env = SOAP12 if self.version == "1.2" else SOAP11
        return (
            f'<env:Envelope xmlns:env="{env}"><env:Body><o:OrderAccepted '
            f'xmlns:o="urn:example:orders"><o:Id>ORD-1</o:Id></o:OrderAccepted>'
            "</env:Body></env:Envelope>"
        ).encode()


def delivery(number: str, vendor: str = "ACME & Sons <med>") -> Delivery:
    return Delivery(
        id=1,
        message_id="m-1",
        channel="po",
        destination="orders",
        payload=json.dumps({"po_number": number, "vendor": vendor}).encode(),
        content_type="application/json",
        idempotency_key="key-1",
        correlation_id="corr-1",
        order_key=None,
        attempts=0,
        created_at=0.0,
        meta={},
    )


class SoapDestinationTests(unittest.TestCase):
    timeout = 15

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="wharf-soap-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        (self.tmp / "submit_order.xml").write_text(TEMPLATE)

    def serve(self, version: str) -> str:
        self.service = Service(version)
        port = reactor.listenTCP(0, server.Site(self.service), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}/ws/orders"

    def destination(self, version: str, **extra: Any) -> SoapDestination:
        doc = {
            "url": self.serve(version),
            "version": version,
            "action": "urn:example:SubmitOrder",
            "body_template": "submit_order.xml",
            "ws_security": {"username": "wharf", "password": {"env": "WS_PASSWORD"}},
            **extra,
        }
        ctx = Context("<test>", base_dir=str(self.tmp))
        options = SOAP_SPEC.parse(yaml.compose(yaml.safe_dump(doc)), ctx, "")
        self.assertEqual(ctx.errors, [])
        dest = SoapDestination(
            options,
            reactor=reactor,
            channel="po",
            name="orders",
            base_dir=self.tmp,
            environ={"WS_PASSWORD": "ws-pass-123"},
        )
        self.addCleanup(dest.close)
        return dest

    async def failure(self, dest: SoapDestination, d: Delivery) -> DeliveryError:
        try:
            await dest.send(d)
        except DeliveryError as e:
            return e
        raise AssertionError("send did not fail")

    @defer.inlineCallbacks
    def test_a_soap_12_call_with_ws_security_keeps_the_answer(self) -> Any:
        """The envelope is SOAP 1.2 with the action in the Content-Type; the Header holds a
        mustUnderstand wsse:Security with a Timestamp (Created, Expires) and a UsernameToken
        (PasswordText, Nonce, Created); the template's values are XML-escaped; the whole answer
        is returned to be kept with the delivery."""
        dest = self.destination("1.2")
        body = yield defer.ensureDeferred(dest.send(delivery("PO-1")))
        self.assertIn(b"<o:Id>ORD-1</o:Id>", body)
        (req,) = self.service.requests
        self.assertEqual(
            req["content_type"],
            'application/soap+xml; charset=utf-8; action="urn:example:SubmitOrder"',
        )
        root = req["root"]
        security = root.find(f"{{{SOAP12}}}Header/{{{WSSE}}}Security")
        self.assertEqual(security.get(f"{{{SOAP12}}}mustUnderstand"), "true")
        self.assertIsNotNone(security.find(f"{{{WSU}}}Timestamp/{{{WSU}}}Expires"))
        password = security.find(f"{{{WSSE}}}UsernameToken/{{{WSSE}}}Password")
        self.assertTrue(password.get("Type").endswith("#PasswordText"))
        self.assertEqual(password.text, "ws-pass-123")
        self.assertEqual(root.findtext(".//{urn:example:orders}Vendor"), "ACME & Sons <med>")
        self.assertEqual(root.findtext(".//{urn:example:orders}Key"), "key-1")

    @defer.inlineCallbacks
    def test_a_sender_fault_is_permanent_and_a_receiver_fault_is_retried(self) -> Any:
        """SOAP 1.2 Sender: permanent; Receiver: retryable, not ambiguous. The reason is kept
        in the text (and the answer as the response), the log gets only the codes."""
        dest = self.destination("1.2")
        sender = yield defer.ensureDeferred(self.failure(dest, delivery("FAULT-SENDER")))
        self.assertFalse(sender.retryable)
        self.assertIn("Sender/Busy (permanent)", sender.message)
        self.assertIn("unknown vendor for order FAULT-SENDER", sender.message)
        self.assertNotIn("FAULT-SENDER", sender.log_text)
        self.assertIn(b"env:Fault", sender.response)
        receiver = yield defer.ensureDeferred(self.failure(dest, delivery("FAULT-RECEIVER")))
        self.assertTrue(receiver.retryable)
        self.assertFalse(receiver.ambiguous)
        self.assertIn("Receiver/Busy (transient)", receiver.message)

    @defer.inlineCallbacks
    def test_soap_11_client_fault_is_permanent_with_soapaction(self) -> Any:
        dest = self.destination("1.1")
        error = yield defer.ensureDeferred(self.failure(dest, delivery("FAULT-CLIENT")))
        self.assertFalse(error.retryable)
        self.assertIn("SOAP 1.1 fault Client (permanent)", error.message)
        (req,) = self.service.requests
        self.assertEqual(req["action"], b'"urn:example:SubmitOrder"')
        self.assertEqual(req["content_type"], "text/xml; charset=utf-8")

    def test_a_missing_template_is_a_config_error(self) -> None:
        ctx = Context("<test>", base_dir=str(self.tmp))
        SOAP_SPEC.parse(
            yaml.compose(yaml.safe_dump({"url": "http://x/ws", "body_template": "nope.xml"})),
            ctx,
            "soap",
        )
        self.assertIn("soap.body_template: no such file: nope.xml", str(ctx.errors[0]))
