"""The ``mllp`` source: an MLLP listener (framing per MLLP release 2, TLS and mutual TLS).

The framing (:mod:`engine.net.mllp`) and the listen strings (:mod:`engine.net.endpoints`) live
in :mod:`engine.net`; this module is the channel component: its spec, its lifecycle (listen,
stop with a grace period) and the wiring of the AR sent for an oversize frame
(:func:`engine.responder.oversize_nak`). Frame contents are never logged (PHI): only the peer,
sizes and counts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from engine.net.admission import admission_fields, check_admission
from engine.net.endpoints import check_listen, server_endpoint
from engine.net.mllp import MLLPServerFactory
from engine.registry import source
from engine.responder import oversize_nak
from engine.sources import Ingest, IngestOutcome
from engine.spec import ByteSize, Duration, Field, Spec, Str

log = Logger()


def _check(config: Any, ctx: Any, node: Any, path: str) -> None:
    check_listen(config, ctx, node, path)
    check_admission(config, ctx, node, path)


MLLP_SPEC = Spec(
    "mllp",
    [
        Field(
            "listen",
            Str(),
            description="Twisted server endpoint: `tcp:2575`, `tcp:2575:interface=127.0.0.1`, "
            "`ssl:2576:privateKey=key.pem:certKey=cert.pem` (PEM paths relative to the project; "
            "`certKey` may hold the chain after the certificate; TLS 1.2 at least).",
        ),
        Field(
            "client_ca",
            Str(),
            None,
            "PEM file of CAs; when set, clients must present a certificate signed by one "
            "(mutual TLS). Needs an ssl: listen string. Relative to the project.",
        ),
        Field("max_frame", ByteSize(), 10 * 1024 * 1024, "Larger frames get AR and a close."),
        Field(
            "idle_timeout",
            Duration(lo=0.01),
            300.0,
            "Close a connection that sent no whole frame for this long (bytes outside a frame, "
            "or a frame still arriving, do not count).",
        ),
        Field(
            "frame_timeout",
            Duration(lo=0.01),
            30.0,
            "A frame must end within this of its first byte, plus one second per `min_rate` "
            "bytes it brought; else the connection is closed without an answer (nothing was "
            "stored; the sender resends).",
        ),
        Field(
            "min_rate",
            ByteSize(),
            1024,
            "Bytes per second that earn a frame one more second past `frame_timeout`: a large "
            "frame sent at least this fast is never cut, a trickle is.",
        ),
        *admission_fields(200, 50),
    ],
    description=(
        "HL7 v2 over MLLP (release 2 framing: 0x0B, message, 0x1C 0x0D). Each frame is "
        "ingested (stored with one group commit) and answered per the channel's `respond_from` "
        "and the message's MSH-15/16; when nothing could be stored the connection is closed "
        "without an answer and the sender resends. Frames split across reads, several frames "
        "per read and pipelined senders all work (answers go back in order); bytes outside a "
        "frame are dropped and counted. A frame over `max_frame` gets an AR and the connection "
        "is closed. With `client_ca` the listener requires mutual TLS, and each frame is stored "
        "with the origin `tls:<CN>` of the client certificate. One address cannot take every "
        "connection: `max_connections_per_peer` caps each peer, and when `max_connections` are "
        "open a peer holding fewer than the heaviest still gets in (the heaviest peer's "
        "quietest connection is closed for it); `allow` limits the senders."
    ),
    example=(
        "source:\n"
        "  mllp:\n"
        "    listen: ssl:2576:privateKey=tls/server.key:certKey=tls/server.pem\n"
        "    client_ca: tls/clients-ca.pem\n"
        "    max_frame: 2MiB\n"
        "    idle_timeout: 10m\n"
        "    frame_timeout: 30s\n"
        "    max_connections: 50\n"
        "    max_connections_per_peer: 10\n"
        "    allow: [10.20.0.0/16, 192.168.1.20]"
    ),
    check=_check,
)


class MLLPSource:
    """The ``mllp`` source: one listening port; each frame goes to ``ingest``."""

    answers = True  # the engine builds HL7 answers for this source (see engine.responder)

    def __init__(
        self,
        options: Any,
        *,
        reactor: Any,
        channel: str,
        base_dir: Path,
        ingest: Ingest,
        oversize_reply: Callable[[bytes], bytes | None] | None = None,
    ) -> None:
        self.options = options
        self.reactor = reactor
        self.channel = channel
        self.base_dir = Path(base_dir)
        self.ingest = ingest
        limit = options.max_frame
        self.factory = MLLPServerFactory(
            self._handle,
            oversize_reply=oversize_reply or (lambda prefix: oversize_nak(prefix, limit)),
            max_frame=options.max_frame,
            idle_timeout=options.idle_timeout,
            max_connections=options.max_connections,
            max_connections_per_peer=options.max_connections_per_peer,
            allow=tuple(options.allow),
            frame_timeout=options.frame_timeout,
            min_rate=float(options.min_rate),
            clock=reactor,
            identify=bool(options.client_ca),
        )
        self.port: Any = None  # IListeningPort once listening
        self.listening: defer.Deferred | None = None  # fires with the port (or None on failure)
        self.listen_error: BaseException | None = None  # why it could not listen

    @property
    def stats(self) -> dict[str, int]:
        return self.factory.stats

    def endpoint(self) -> Any:
        """The server endpoint of ``listen`` (TLS 1.2+; mutual TLS with ``client_ca``)."""
        o = self.options
        return server_endpoint(self.reactor, o.listen, o.client_ca, self.base_dir)

    def start(self) -> None:
        try:
            self.listening = self.endpoint().listen(self.factory)
        except Exception as exc:  # bad PEM files, bad endpoint string
            self.listening = defer.fail(exc)

        def listening(port: Any) -> Any:
            self.port = port
            log.info(
                "MLLP {channel} listening on {addr}", channel=self.channel, addr=port.getHost()
            )
            return port

        def failed(f: Any) -> None:
            self.listen_error = f.value
            log.error(
                "MLLP {channel} cannot listen on {listen}: {error}",
                channel=self.channel,
                listen=self.options.listen,
                error=f.getErrorMessage(),
            )

        self.listening.addCallbacks(listening, failed)

    async def ready(self) -> None:
        """Returns once listening; raises why it could not listen."""
        if self.listening is not None:
            await self.listening
        if self.listen_error is not None:
            raise self.listen_error

    async def stop(self, grace: float = 5.0) -> None:
        """Stop listening and close open connections (aborted if not closed within grace)."""
        if self.listening is not None:
            await self.listening
        if self.port is not None:
            port, self.port = self.port, None
            await port.stopListening()
        protocols = list(self.factory.protocols)
        for p in protocols:
            p.closing = True
            p.transport.loseConnection()
        if not protocols:
            return

        def abort() -> None:
            for p in protocols:
                if not p.lost:
                    p.transport.abortConnection()

        timer = self.reactor.callLater(grace, abort)
        try:
            await defer.DeferredList([p.on_lost for p in protocols])
        finally:
            if timer.active():
                timer.cancel()

    def _handle(self, frame: bytes, peer: str, origin: str | None = None) -> defer.Deferred:
        d = self.ingest(frame, peer) if origin is None else self.ingest(frame, peer, origin=origin)
        if not isinstance(d, defer.Deferred):  # a coroutine
            d = defer.ensureDeferred(d)
        return d.addCallback(_response)


def _response(outcome: IngestOutcome) -> bytes | None:
    return outcome.response


@source("mllp", MLLP_SPEC)
def make_mllp(
    options: Any,
    *,
    reactor: Any,
    channel: str,
    base_dir: Path,
    ingest: Ingest,
    oversize_reply: Callable[[bytes], bytes | None] | None = None,
) -> MLLPSource:
    return MLLPSource(
        options,
        reactor=reactor,
        channel=channel,
        base_dir=base_dir,
        ingest=ingest,
        oversize_reply=oversize_reply,
    )
