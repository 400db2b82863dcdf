"""MLLP destination: send HL7 v2 to a peer and wait for its ACK, reusing connections.

AA/CA counts as sent (the ACK is stored as the response). AE/CE is an application error,
not retried unless ``retry_on_ae``. AR/CR, timeouts and connection failures are retried with the
delivery policy's backoff. An ACK timeout or a lost connection after the message went out is
ambiguous (the peer may have it); an ACK whose MSA-2 is not our MSH-10 is ambiguous too, and the
connection is dropped. Payloads and ACKs are never logged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import defer, endpoints, error, protocol, ssl, task
from twisted.logger import Logger

from engine.codecs.hl7v2 import tokenize
from engine.errors import CodecError, DeliveryError
from engine.model import Delivery
from engine.registry import destination
from engine.spec import Bool, ByteSize, Duration, Field, Int, Spec, Str

log = Logger()
SB, EB = b"\x0b", b"\x1c\x0d"

MLLP_DEST_SPEC = Spec(
    "mllp",
    [
        Field("host", Str(), description="Peer host name or address."),
        Field("port", Int(1, 65535), description="Peer port."),
        Field("connect_timeout", Duration(lo=0.01), 10.0, "Time to open a connection."),
        Field("ack_timeout", Duration(lo=0.01), 30.0, "Time to wait for the ACK."),
        Field("tls", Bool(), False, "Use TLS."),
        Field("ca_file", Str(), None, "PEM of CAs trusted for the peer instead of the system's."),
        Field(
            "client_certificate",
            Str(),
            None,
            "PEM holding our certificate and key, for mutual TLS.",
        ),
        Field("retry_on_ae", Bool(), False, "Retry AE/CE answers (normally a content error)."),
        Field(
            "keep_alive",
            Bool(),
            True,
            "Reuse connections between messages; false for peers that close after each ACK.",
        ),
        Field("max_ack", ByteSize(), 1024 * 1024, "Larger ACKs are a protocol error."),
    ],
    description=(
        "Send each delivery as one MLLP frame and wait for the ACK on the same connection; "
        "idle connections are reused. AA/CA: sent. AE/CE: error (retried only with "
        "`retry_on_ae`). AR/CR, timeouts, refused connections: retried with backoff. With "
        "`ordered: true` on the destination, a billing system sees one key's messages in order."
    ),
    example="destinations:\n  - name: billing\n    mllp: {host: billing.local, port: 2575}\n"
    "    ordered: true",
)


class MLLPClientProtocol(protocol.Protocol):
    """Frames what we send, unframes what comes back; one outstanding ACK at a time."""

    def __init__(self, max_ack: int) -> None:
        self.max_ack = max_ack
        self.buf = bytearray()
        self.waiting: defer.Deferred | None = None
        self.lost = False

    def send(self, payload: bytes) -> defer.Deferred:
        self.buf.clear()
        self.waiting = defer.Deferred()
        self.transport.write(SB + payload + EB)
        return self.waiting

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        start = self.buf.find(SB)
        if start < 0:
            self.buf.clear()  # junk before a start block
            return
        end = self.buf.find(EB, start)
        if end < 0:
            if len(self.buf) > self.max_ack:
                self._fail(DeliveryError("ACK larger than max_ack", ambiguous=True))
                self.transport.loseConnection()
            return
        frame = bytes(self.buf[start + 1 : end])
        del self.buf[: end + 2]
        d, self.waiting = self.waiting, None
        if d is not None:
            d.callback(frame)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True
        self._fail(
            DeliveryError("connection lost before the ACK came", retryable=True, ambiguous=True)
        )

    def _fail(self, exc: DeliveryError) -> None:
        d, self.waiting = self.waiting, None
        if d is not None:
            d.errback(exc)


class MLLPDestination:
    def __init__(self, options: Any, *, reactor: Any, name: str, base_dir: Path) -> None:
        self.options = options
        self.reactor = reactor
        self.name = name
        self.base_dir = base_dir
        self.idle: list[MLLPClientProtocol] = []
        self.busy: set[MLLPClientProtocol] = set()
        self.peer = f"{options.host}:{options.port}"

    def _path(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else self.base_dir / p

    def _endpoint(self) -> Any:
        o = self.options
        tcp = endpoints.HostnameEndpoint(self.reactor, o.host, o.port, timeout=o.connect_timeout)
        if not o.tls:
            return tcp
        trust = None
        if o.ca_file:
            pem = self._path(o.ca_file).read_bytes()
            trust = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(pem)])
        client_cert = None
        if o.client_certificate:
            client_cert = ssl.PrivateCertificate.loadPEM(
                self._path(o.client_certificate).read_bytes()
            )
        tls = ssl.optionsForClientTLS(o.host, trustRoot=trust, clientCertificate=client_cert)
        return endpoints.wrapClientTLS(tls, tcp)

    async def _connection(self) -> MLLPClientProtocol:
        if self.idle:
            # Let a close the peer already sent be processed before reusing the connection.
            await task.deferLater(self.reactor, 0, lambda: None)
        while self.idle:
            conn = self.idle.pop()
            if not conn.lost:
                return conn
        try:
            return await endpoints.connectProtocol(
                self._endpoint(), MLLPClientProtocol(self.options.max_ack)
            )
        except (error.ConnectError, error.DNSLookupError, error.TimeoutError, OSError) as exc:
            raise DeliveryError(
                f"cannot connect to {self.peer}: {exc.__class__.__name__}", retryable=True
            ) from exc

    async def send(self, delivery: Delivery) -> bytes | None:
        payload = delivery.payload
        try:
            msg = tokenize(payload)
            control_id = msg.control_id
        except CodecError as exc:
            raise DeliveryError(f"payload is not HL7 v2: {exc.message}", retryable=False) from exc
        if not control_id:
            raise DeliveryError("payload has no MSH-10 to match the ACK with", retryable=False)
        conn = await self._connection()
        self.busy.add(conn)
        keep = False
        try:
            d = conn.send(payload)
            d.addTimeout(self.options.ack_timeout, self.reactor)
            try:
                frame = await d
            except defer.TimeoutError as exc:
                raise DeliveryError(
                    f"no ACK from {self.peer} within {self.options.ack_timeout:g}s",
                    retryable=True,
                    ambiguous=True,
                ) from exc
            ack = _parse_ack(frame, self.peer)
            code, echoed = ack.get("MSA-1") or "", ack.get("MSA-2") or ""
            if echoed != control_id:
                raise DeliveryError(
                    f"ACK from {self.peer} answers MSH-10 {echoed!r}, not {control_id!r}",
                    retryable=True,
                    ambiguous=True,
                    response=frame,
                )
            keep = True
            log.info(
                "mllp {dest}: delivery {id} answered {code}",
                dest=self.name,
                id=delivery.id,
                code=code,
            )
            if code in ("AA", "CA"):
                return frame
            text = ack.get("ERR-8") or ack.get("MSA-3") or ack.get("ERR-1") or ""
            if code in ("AE", "CE"):
                raise DeliveryError(
                    f"{self.peer} answered {code}: {text}".rstrip(": "),
                    retryable=self.options.retry_on_ae,
                    response=frame,
                )
            raise DeliveryError(
                f"{self.peer} answered {code or 'no MSA-1'}: {text}".rstrip(": "),
                retryable=True,
                response=frame,
            )
        finally:
            self.busy.discard(conn)
            if keep and not conn.lost and self.options.keep_alive:
                self.idle.append(conn)
            elif not conn.lost:
                conn.transport.loseConnection()

    def close(self) -> defer.Deferred | None:
        for conn in [*self.idle, *self.busy]:
            conn.transport.loseConnection()
        self.idle.clear()
        return None


def _parse_ack(frame: bytes, peer: str) -> Any:
    try:
        return tokenize(frame)
    except CodecError as exc:
        raise DeliveryError(
            f"{peer} answered something that is not an HL7 ACK ({exc.message})",
            retryable=True,
            ambiguous=True,
        ) from exc


@destination("mllp", MLLP_DEST_SPEC)
def make_mllp_destination(
    options: Any, *, reactor: Any, channel: str, name: str, base_dir: Path
) -> MLLPDestination:
    return MLLPDestination(options, reactor=reactor, name=name, base_dir=base_dir)
