"""The ``soap`` destination: each delivery as a SOAP 1.1 or 1.2 call, built with lxml.

The Body's element comes from ``body_template`` (an XML file whose ``{name}`` placeholders are
filled, XML-escaped, from the delivery's JSON payload's top-level fields, its meta and the core
placeholders) or, without one, is the delivery's payload itself (an XML element). The Header
carries a WS-Security UsernameToken with a timestamp when ``ws_security`` is set
(:mod:`engine.net.soap`); HTTP-level ``auth`` and mutual TLS work as for ``http``.

Outcomes: a Body without a fault is success, and the whole answer is kept with the delivery; a
fault is permanent for the sender's fault (1.1 ``Client``, 1.2 ``Sender``...) and transient for
the receiver's (``Server``/``Receiver``), its text kept with the delivery and only its code
logged. Without an envelope, HTTP statuses read as for ``http`` (429 holds the queue).
"""

from __future__ import annotations

import json
import os
import pathlib
import urllib.parse
from collections.abc import Mapping
from typing import Any
from xml.sax.saxutils import escape

from lxml import etree
from twisted.internet.defer import Deferred

from engine.errors import DeliveryError
from engine.model import Delivery
from engine.net import soap
from engine.net.auth import AUTH_SPEC, call_with_auth, make_authenticator
from engine.net.http import HttpCaller, origin, status_error
from engine.net.secrets import SECRET_SPEC, Secrets
from engine.net.tls import tls_policy
from engine.net.xml import hardened_parser
from engine.registry import destination
from engine.spec import Bool, ByteSize, Context, Duration, Enum, Field, Spec, Str, join
from engine.templating import check_template, render_template, template_values

WS_SECURITY_SPEC = Spec(
    "ws_security",
    [
        Field("username", Str(), description="UsernameToken user name.", example="ISU_WHARF@acme"),
        Field("password", SECRET_SPEC, description="Where the password is read from."),
        Field(
            "digest",
            Bool(),
            False,
            "Send the password as a digest (PasswordDigest) instead of text (PasswordText).",
        ),
        Field("ttl", Duration(lo=1), 300.0, "The timestamp's lifetime (Created to Expires).", "5m"),
    ],
    description=(
        "An OASIS WS-Security header: a Timestamp (Created, Expires) and a UsernameToken with "
        "a nonce and its creation time."
    ),
    example="ws_security: {username: ISU_WHARF@acme, password: {env: WD_PASSWORD}}",
)


def _check(config: Any, ctx: Context, node: Any, path: str) -> None:
    if urllib.parse.urlsplit(config.url).scheme not in ("http", "https"):
        ctx.error(
            node, join(path, "url"), f"must start with http:// or https:// (got {config.url!r})"
        )
    if config.ca_file and not config.tls_verify:
        ctx.error(node, join(path, "ca_file"), "ca_file needs tls_verify: true (got false)")
    if config.body_template is not None and ctx.base_dir is not None:
        file = pathlib.Path(ctx.base_dir) / config.body_template
        if not file.is_file():
            ctx.error(node, join(path, "body_template"), f"no such file: {config.body_template}")
            return
        problem = check_template(file.read_text(encoding="utf-8"))
        if problem:
            ctx.error(node, join(path, "body_template"), f"{config.body_template} {problem}")


SOAP_SPEC = Spec(
    "soap",
    [
        Field("url", Str(), description="The service endpoint.", example="https://erp/ws/Orders"),
        Field("version", Enum("1.1", "1.2"), "1.1", "SOAP version."),
        Field(
            "action",
            Str(),
            None,
            "The operation's action: SOAPAction header (1.1) or the action parameter (1.2).",
            "urn:example:SubmitOrder",
        ),
        Field(
            "body_template",
            Str(),
            None,
            "XML file (relative to the project root) holding the Body's element, with {name} "
            "placeholders filled from the delivery's JSON payload, its meta and the core "
            "placeholders (XML-escaped). Without it the payload is that element.",
            "templates/submit_order.xml",
        ),
        Field("ws_security", WS_SECURITY_SPEC, None, "WS-Security UsernameToken header."),
        Field("auth", AUTH_SPEC, None, "HTTP-level authentication (as for `http`)."),
        Field("timeout", Duration(lo=0.001), 60.0, "Total time for one call.", "30s"),
        Field("connect_timeout", Duration(lo=0.001), 10.0, "Time to open the connection.", "5s"),
        Field("tls_verify", Bool(), True, "Verify the server certificate and host name.", True),
        Field("ca_file", Str(), None, "PEM bundle of trusted CAs.", "certs/erp-ca.pem"),
        Field(
            "client_certificate",
            Str(),
            None,
            "PEM file with this client's certificate and key (mutual TLS).",
            "certs/wharf-client.pem",
        ),
        Field("max_response", ByteSize(), 1024 * 1024, "Longer answers are truncated.", "1MiB"),
    ],
    description=(
        "Send each delivery as a SOAP 1.1 or 1.2 call (lxml), its Body from a template or the "
        "payload, with an optional WS-Security UsernameToken and timestamp. A fault is "
        "permanent when it is the sender's (Client, Sender) and retried when it is the "
        "receiver's (Server, Receiver); the answer is kept with the delivery."
    ),
    example="""
soap:
  url: https://erp.example.org/ws/Orders
  version: '1.2'
  action: urn:example:SubmitOrder
  body_template: templates/submit_order.xml
  ws_security: {username: wharf, password: {env: ERP_WS_PASSWORD}}
""",
    check=_check,
)


class SoapDestination:
    """See the module docstring."""

    def __init__(
        self,
        options: Any,
        *,
        reactor: Any,
        channel: str,
        name: str,
        base_dir: pathlib.Path,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.options = options
        self.reactor = reactor
        self.channel = channel
        self.name = name
        self.environ = os.environ if environ is None else environ
        self.secrets = Secrets(self.environ, base_dir)
        self.caller = HttpCaller(
            reactor,
            tls=tls_policy(options, base_dir),
            connect_timeout=options.connect_timeout,
            timeout=options.timeout,
            max_response=options.max_response,
        )
        self.auth = make_authenticator(
            options.auth, caller=self.caller, clock=reactor, environ=self.environ, base_dir=base_dir
        )
        self.template: str | None = None
        if options.body_template is not None:
            self.template = (base_dir / options.body_template).read_text(encoding="utf-8")

    def close(self) -> Deferred[None]:
        return self.caller.close()

    def _body(self, delivery: Delivery) -> etree._Element:
        if self.template is None:
            source = delivery.payload
        else:
            values = template_values(delivery)
            try:
                doc = json.loads(delivery.payload)
            except ValueError:
                doc = None
            if isinstance(doc, dict):
                values = {**{k: v for k, v in doc.items() if _scalar(v)}, **values}
            text = render_template(self.template, values, what="body_template", quote=_xml_escape)
            source = text.encode("utf-8")
        try:
            return etree.fromstring(source, parser=hardened_parser())
        except etree.XMLSyntaxError as e:
            what = "the payload" if self.template is None else "the rendered body_template"
            raise DeliveryError(
                f"{what} is not one well-formed XML element ({e.msg})", retryable=False
            ) from None

    async def send(self, delivery: Delivery) -> bytes:
        opts = self.options
        headers_: list[etree._Element] = []
        if opts.ws_security is not None:
            ws = opts.ws_security
            headers_.append(
                soap.ws_security(
                    opts.version,
                    username=ws.username,
                    password=self.secrets.read(ws.password, "ws_security.password"),
                    now=self.reactor.seconds(),
                    ttl=ws.ttl,
                    digest=ws.digest,
                )
            )
        body = soap.envelope(opts.version, self._body(delivery), headers_)
        ctype, extra = soap.content_type(opts.version, opts.action)
        headers = {
            b"Content-Type": [ctype],
            b"Idempotency-Key": [delivery.idempotency_key.encode("ascii", "replace")],
            b"X-Correlation-ID": [delivery.correlation_id.encode("ascii", "replace")],
            **{k: [v] for k, v in extra},
        }
        answer = await call_with_auth(self.caller, self.auth, "POST", opts.url, headers, body)
        return read_soap(answer, opts.version, opts.url, self.reactor.seconds())


def read_soap(answer: Any, version: str, url: str, now: float) -> bytes:
    """The answer of a SOAP call: its bytes on success, else the DeliveryError it means."""
    where = origin(url)
    looks_xml = answer.body.lstrip()[:1] == b"<"
    if not answer.ok and not looks_xml:
        raise status_error("POST", where, answer, now)
    try:
        _, fault = soap.read_answer(answer.body, version)
    except DeliveryError as e:
        if not answer.ok:
            raise status_error("POST", where, answer, now) from None
        raise DeliveryError(
            f"POST {where}: HTTP {answer.code}, but {e.message}",
            retryable=True,
            ambiguous=True,
            response=answer.body,
        ) from None
    if fault is not None:
        raise fault.error(where, answer.body, answer.code)
    if not answer.ok:
        raise status_error("POST", where, answer, now)
    return answer.body


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def _xml_escape(text: str) -> str:
    return escape(text, {'"': "&quot;", "'": "&apos;"})


@destination("soap", SOAP_SPEC)
def make_soap(
    options: Any, *, reactor: Any, channel: str, name: str, base_dir: pathlib.Path
) -> SoapDestination:
    """Build the ``soap`` destination of channel ``channel`` named ``name``."""
    return SoapDestination(options, reactor=reactor, channel=channel, name=name, base_dir=base_dir)
