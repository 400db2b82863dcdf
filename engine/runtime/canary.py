"""Synthetic transactions: a channel's ``canary:`` sends a test-marked copy of its sample on a
schedule through the channel's whole path, and measures how long until every delivery
settled.

A message is test-marked when its sender says so: HL7 MSH-11 = ``T``, a FHIR resource with the
``HTEST`` tag in ``meta.tag``, X12 ISA15 = ``T`` (:func:`is_test`, read from the bytes, whatever
the codec). The runtime books a test message in no domain (the ledger and procurement never
see it) and marks each of its deliveries ``test`` (an HTTP destination sends
``X-Wharf-Test: true``; the sandbox answers such a request after checking it, and records
nothing).

A canary goes in over the channel's own MLLP port when it has one (plain TCP), else through
the front door its source would call; its latency (sent until the message is ``sent``) is the
``wharf_canary_latency_seconds`` metric, and a canary that has not come through within
``expect_within`` is missing (``canary_missing`` alert rules).
"""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger

from engine.codecs.hl7v2 import with_msh

log = Logger(namespace="wharf.canary")

#: The FHIR tag of a test message (HL7 v3 ActReason HTEST: test health data).
TEST_TAG = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HTEST"}
#: Statuses after which a canary has come through (or will not).
FINAL = ("sent", "filtered", "error", "conflict")


def is_test(raw: bytes) -> bool:
    """Whether the sender marked ``raw`` as test data (see the module docstring)."""
    head = raw.lstrip()[:4096]
    if head.startswith(b"MSH") and len(head) > 3:
        sep = head[3:4]
        msh = head.split(b"\r")[0].split(b"\n")[0]
        fields = msh.split(sep)
        return len(fields) > 10 and fields[10].split(b"^")[0].strip() == b"T"
    if head.startswith(b"ISA") and len(head) > 3:
        fields = head.split(head[3:4])
        return len(fields) > 15 and fields[15].strip() == b"T"
    if head.startswith(b"{") and b"HTEST" in raw:
        try:
            doc = json.loads(raw)
        except ValueError:
            return False
        tags = (doc.get("meta") or {}).get("tag") or [] if isinstance(doc, dict) else []
        return any(isinstance(t, dict) and t.get("code") == "HTEST" for t in tags)
    return False


def mark_test(raw: bytes, n: int) -> bytes:
    """``raw`` marked as test data, with control numbers of its own (``n``) so that it is
    never a duplicate of an earlier canary: HL7 MSH-10 ``CANARY-n`` and MSH-11 ``T``; X12
    ISA13/IEA02 ``n`` and ISA15 ``T``; FHIR the HTEST tag and an identifier."""
    text = raw.lstrip()
    if text.startswith(b"MSH"):
        return with_msh(text, f10=f"CANARY-{n}".encode(), f11=b"T")
    if text.startswith(b"ISA"):
        sep = text[3:4]
        fields = text.split(sep, 16)
        fields[13] = f"{n % 1_000_000_000:09d}".encode()
        fields[15] = b"T"
        out = sep.join(fields)
        terminator = text[105:106] or b"~"
        segments = out.split(terminator)
        for i, seg in enumerate(segments):
            if seg.strip().startswith(b"IEA"):
                parts = seg.split(sep)
                parts[2] = fields[13]
                segments[i] = sep.join(parts)
        return terminator.join(segments)
    doc = json.loads(raw)
    meta = doc.setdefault("meta", {})
    meta["tag"] = [t for t in meta.get("tag", []) if t.get("code") != "HTEST"] + [TEST_TAG]
    doc.setdefault("identifier", [])
    if isinstance(doc["identifier"], list):
        doc["identifier"].append({"system": "urn:wharf:canary", "value": str(n)})
    return json.dumps(doc).encode()


def sample_of(root: Any, canary: Any) -> bytes:
    if canary.input is not None:
        return (root / canary.input).read_bytes()
    text = canary.input_text
    if text.lstrip().startswith("MSH"):
        text = "\r".join(line for line in text.splitlines() if line.strip()) + "\r"
    return text.encode()


class Canaries:
    """Every running channel's canary (the engine's ``canaries``)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.seen: dict[str, dict[str, Any]] = {}
        self._n = int(time.time() * 1000) % 10**9

    def configured(self) -> dict[str, Any]:
        return {
            name: ch.config.canary
            for name, ch in self.engine.channels.items()
            if ch.config.canary is not None and ch.config.canary.enabled
        }

    async def send(self, channel: str) -> str | None:
        """One canary of ``channel``: in, then waited for; returns its final status (None when
        it did not come through within ``expect_within``)."""
        canary = self.configured().get(channel)
        if canary is None:
            return None
        self._n += 1
        raw = mark_test(sample_of(self.engine.root, canary), self._n)
        seen = self.seen.setdefault(channel, {"last_arrival": None, "latency": None})
        sent = time.time()
        seen.update(last_sent=sent, status="in_flight")
        try:
            message_id = await self._send(channel, raw)
        except Exception as exc:
            seen.update(status="refused", error=f"{type(exc).__name__}: {exc}", last_failure=sent)
            log.warn("canary {channel}: {error}", channel=channel, error=seen["error"])
            return "refused"
        status = await self._settled(message_id, sent + canary.expect_within)
        now = time.time()
        seen["status"] = status or "missing"
        if status == "stopped":
            return status
        if status == "sent":
            seen.update(last_arrival=now, latency=now - sent, error=None)
            self.engine.metrics.canary(channel, now - sent, now)
        else:
            seen["last_failure"] = now
            seen["error"] = f"ended {status}" if status else "did not come through in time"
            log.warn(
                "canary {channel}: {error}",
                channel=channel,
                error=seen["error"],
                message_id=message_id,
            )
        return status

    async def _send(self, channel: str, raw: bytes) -> str:
        source = self.engine.sources.get(channel)
        listen = getattr(getattr(source, "options", None), "listen", "") or ""
        port = getattr(source, "port", None)
        if (
            port is not None
            and getattr(source, "answers", False)
            and listen.startswith("tcp:")
            and getattr(source.options, "client_ca", None) is None
        ):
            return await self._over_mllp(channel, port.getHost().port, raw)
        outcome = await self.engine.receive(channel, raw, "canary", origin="canary")
        if outcome.kind != "stored" or outcome.message_id is None:
            raise RuntimeError(f"expected the canary stored (got {outcome.kind}: {outcome.reason})")
        return outcome.message_id

    async def _over_mllp(self, channel: str, port: int, raw: bytes) -> str:
        from twisted.internet import endpoints

        from engine.net.mllp import MLLPClientProtocol

        reactor = self.engine.reactor
        client = await endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10),
            MLLPClientProtocol(),
        )
        try:
            ack = await client.send(raw)
        finally:
            client.transport.loseConnection()
        if b"MSA|AA" not in ack and b"MSA|CA" not in ack:
            raise RuntimeError(f"expected an AA or CA ACK (got {ack[:120]!r})")
        key = self.engine.channels[channel].decode(raw).dedup_key
        found = await self.engine.executor.submit(
            self.engine.store.message_by_dedup_key, channel, key
        )
        if found is None:
            raise RuntimeError("the canary was acknowledged but is not in the store")
        return found

    async def _settled(self, message_id: str, deadline: float) -> str | None:
        delay = 0.01
        while time.time() < deadline:
            if not self.engine.running:  # stopping: the job's stop must not wait for it
                return "stopped"
            row = await self.engine.executor.submit(self.engine.store.get_message, message_id)
            if row is not None and row.status in FINAL:
                return row.status
            await task.deferLater(self.engine.reactor, delay, lambda: None)
            delay = min(delay * 2, 0.5)
        return None

    def state(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """Per channel with a canary: the last one's status, latency and whether it is
        ``missing`` (for the alert rules and the pages)."""
        now = time.time() if now is None else now
        out = {}
        for channel, canary in self.configured().items():
            seen = self.seen.get(channel, {})
            sent, arrived = seen.get("last_sent"), seen.get("last_arrival")
            failed = seen.get("last_failure")
            # missing from a canary that failed (or is overdue) until one comes through
            late = (failed is not None and (arrived is None or arrived < failed)) or (
                sent is not None
                and (arrived is None or arrived < sent)
                and now - sent > canary.expect_within
            )
            out[channel] = {
                "every": canary.every,
                "last_sent": sent,
                "last_arrival": arrived,
                "latency": seen.get("latency"),
                "status": seen.get("status"),
                "missing": bool(late),
                "summary": seen.get("error") or "",
            }
        return out

    def jobs(self) -> list[Any]:
        from engine.runtime.services import JobService

        out = []
        for channel, canary in self.configured().items():

            def run(channel: str = channel) -> defer.Deferred:
                return defer.ensureDeferred(self.send(channel))

            out.append(JobService(f"canary-{channel}", canary.every, run, self.engine.reactor))
        return out
