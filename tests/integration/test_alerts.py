"""Alerts of a running engine through real sockets: the ERP (a real HTTP server) answers 503
for a while, then 201 again; the alert job (every 50 ms) sees the ERP's queue age pass its
limit and, later, the queue empty. The webhook receiver (a real HTTP server) and a real
Twisted SMTP server on loopback each get exactly one firing and one cleared notification,
and /api/alerts shows the rule firing while it does."""

from __future__ import annotations

import email
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, reactor
from twisted.mail import smtp
from twisted.trial import unittest
from zope.interface import implementer

from engine.runtime import Engine
from tests.integration.observe_helpers import (
    CHANNEL,
    SAMPLE,
    Recorder,
    get_json,
    listen,
    make_project,
    send_mllp,
    serve_observability,
    url,
    wait_for,
)


@implementer(smtp.IMessage)
class _Message:
    def __init__(self, box: list[bytes]) -> None:
        self.box = box
        self.lines: list[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)

    def eomReceived(self) -> defer.Deferred:
        self.box.append(b"\n".join(self.lines))
        return defer.succeed(None)

    def connectionLost(self) -> None:
        self.lines = []


@implementer(smtp.IMessageDelivery)
class _Delivery:
    def __init__(self, box: list[bytes]) -> None:
        self.box = box

    def receivedHeader(self, helo: Any, origin: Any, recipients: Any) -> bytes:
        return b"Received: by the test's SMTP server"

    def validateFrom(self, helo: Any, origin: Any) -> Any:
        return origin

    def validateTo(self, user: Any) -> Any:
        return lambda: _Message(self.box)


class _SmtpFactory(smtp.SMTPFactory):
    protocol = smtp.ESMTP

    def __init__(self, box: list[bytes]) -> None:
        super().__init__()
        self.delivery = _Delivery(box)

    def buildProtocol(self, addr: Any) -> Any:
        p = super().buildProtocol(addr)
        p.delivery = self.delivery
        return p


ROUTES = """\
alerts:
  interval: 50ms
  notify:
    - webhook: {{url: '{hook}', headers: {{X-Token: t0k}}}}
    - email: {{host: 127.0.0.1, port: {smtp}, sender: wharf@test.example, to: ops@test.example}}
  rules:
    - {{name: erp_backlog, when: queue_age, older_than: 300ms}}
"""


@pytest.mark.integration
class AlertOutageTests(unittest.TestCase):
    def setUp(self) -> Any:
        base = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, base, True)
        self.erp = Recorder(503)
        self.hook = Recorder(200)
        self.mails: list[bytes] = []
        ports = [listen(self.erp), listen(self.hook)]
        ports.append(reactor.listenTCP(0, _SmtpFactory(self.mails), interface="127.0.0.1"))
        for port in ports:
            self.addCleanup(port.stopListening)
        erp_port, hook_port, smtp_port = ports
        routes = ROUTES.format(hook=url(hook_port, "hook"), smtp=smtp_port.getHost().port)
        channel = CHANNEL.format(erp=url(erp_port).rstrip("/"), extra="")
        self.engine = Engine(make_project(base, routes, {"usage": channel}), reactor)
        self.addCleanup(lambda: defer.ensureDeferred(self.engine.stop()))
        return defer.ensureDeferred(self.engine.start())

    @defer.inlineCallbacks
    def test_an_outage_fires_once_and_clears_once_by_webhook_and_email(self) -> Any:
        admin = serve_observability(self.engine)
        self.addCleanup(admin.stopListening)
        port = self.engine.sources["usage"].port.getHost().port
        yield defer.ensureDeferred(send_mllp(port, SAMPLE))
        yield defer.ensureDeferred(wait_for(lambda: self.hook.posts, "the firing webhook"))
        _, state = yield defer.ensureDeferred(get_json(admin, "api/alerts"))
        self.assertEqual(
            [(f["rule"], f["subject"], f["state"]) for f in state["firing"]],
            [("erp_backlog", "usage/erp", "firing")],
        )
        # the outage goes on for many more evaluations and ERP attempts: nothing more is sent
        evaluations = self.engine.alerts.evaluations
        yield defer.ensureDeferred(
            wait_for(
                lambda: (
                    self.engine.alerts.evaluations >= evaluations + 10 and len(self.erp.posts) >= 10
                ),
                "ten more evaluations and ERP attempts during the outage",
            )
        )
        self.assertEqual(len(self.hook.posts), 1)
        self.erp.code = 201  # the ERP is back
        yield defer.ensureDeferred(wait_for(lambda: len(self.hook.posts) >= 2, "the clear"))
        # and stays back for a while: still exactly two
        evaluations = self.engine.alerts.evaluations
        yield defer.ensureDeferred(
            wait_for(lambda: self.engine.alerts.evaluations >= evaluations + 5, "5 evaluations")
        )
        yield defer.ensureDeferred(wait_for(lambda: len(self.mails) >= 2, "two e-mails"))
        bodies = [json.loads(p["body"]) for p in self.hook.posts]
        self.assertEqual(
            [[(a["rule"], a["subject"], a["state"]) for a in b["alerts"]] for b in bodies],
            [
                [("erp_backlog", "usage/erp", "firing")],
                [("erp_backlog", "usage/erp", "cleared")],
            ],
        )
        self.assertEqual({p["headers"]["x-token"] for p in self.hook.posts}, {"t0k"})
        self.assertEqual(len(self.mails), 2)
        subjects = [email.message_from_bytes(m)["Subject"] for m in self.mails]
        self.assertEqual(
            subjects,
            ["wharf: 1 alert(s) firing (erp_backlog)", "wharf: 1 cleared (erp_backlog)"],
        )
        self.assertIn(b"usage/erp", self.mails[0])
        _, state = yield defer.ensureDeferred(get_json(admin, "api/alerts"))
        self.assertEqual(state["firing"], [])
        self.assertEqual(len(state["recent"]), 2)


@pytest.mark.integration
class AlertRestartTests(unittest.TestCase):
    """What fires is kept in the store: an engine restarted in the middle of an outage does
    not fire it again, and clears it once when it ends."""

    def setUp(self) -> Any:
        base = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, base, True)
        self.erp = Recorder(503)
        self.hook = Recorder(200)
        ports = [listen(self.erp), listen(self.hook)]
        for port in ports:
            self.addCleanup(port.stopListening)
        routes = (
            "alerts:\n  interval: 50ms\n  notify:\n"
            f"    - webhook: {{url: '{url(ports[1], 'hook')}'}}\n"
            "  rules:\n    - {name: erp_backlog, when: queue_age, older_than: 300ms}\n"
        )
        channel = CHANNEL.format(erp=url(ports[0]).rstrip("/"), extra="")
        self.root = make_project(base, routes, {"usage": channel})

    async def engine(self) -> Engine:
        engine = Engine(self.root, reactor)
        self.addCleanup(lambda: defer.ensureDeferred(engine.stop()))
        await engine.start()
        return engine

    def hook_states(self) -> list[list[tuple[str, str, str]]]:
        bodies = [json.loads(p["body"]) for p in self.hook.posts]
        return [[(a["rule"], a["subject"], a["state"]) for a in b["alerts"]] for b in bodies]

    @defer.inlineCallbacks
    def test_a_restart_during_an_outage_neither_fires_again_nor_forgets_to_clear(self) -> Any:
        first = yield defer.ensureDeferred(self.engine())
        port = first.sources["usage"].port.getHost().port
        yield defer.ensureDeferred(send_mllp(port, SAMPLE))
        yield defer.ensureDeferred(wait_for(lambda: self.hook.posts, "the firing webhook"))
        (kept,) = first.store.alert_states()
        self.assertEqual((kept["rule"], kept["subject"]), ("erp_backlog", "usage/erp"))
        self.assertIsNotNone(kept["fired_sent_at"])
        yield defer.ensureDeferred(first.stop())

        second = yield defer.ensureDeferred(self.engine())
        attempts = len(self.erp.posts)
        yield defer.ensureDeferred(
            wait_for(
                lambda: second.alerts.evaluations >= 10 and len(self.erp.posts) >= attempts + 2,
                "ten evaluations and more ERP attempts after the restart, the outage still on",
            )
        )
        self.assertEqual(self.hook_states(), [[("erp_backlog", "usage/erp", "firing")]])
        firing = [(e.rule, e.subject) for e in second.alerts.rules.firing.values()]
        self.assertEqual(firing, [("erp_backlog", "usage/erp")])
        self.erp.code = 201  # the ERP is back
        yield defer.ensureDeferred(wait_for(lambda: len(self.hook.posts) >= 2, "the clear"))
        evaluations = second.alerts.evaluations
        yield defer.ensureDeferred(
            wait_for(lambda: second.alerts.evaluations >= evaluations + 5, "5 evaluations")
        )
        self.assertEqual(
            self.hook_states(),
            [
                [("erp_backlog", "usage/erp", "firing")],
                [("erp_backlog", "usage/erp", "cleared")],
            ],
        )
        (kept,) = second.store.alert_states(None)
        self.assertEqual(kept["state"], "cleared")
        self.assertIsNotNone(kept["cleared_sent_at"])

    @defer.inlineCallbacks
    def test_a_fire_not_sent_before_a_restart_is_sent_after_it(self) -> Any:
        """The webhook refuses the fire; the engine stops before sending it again. The store
        says it was decided and not sent: the restarted engine sends it once, then the clear."""
        self.hook.code = 500
        first = yield defer.ensureDeferred(self.engine())
        port = first.sources["usage"].port.getHost().port
        yield defer.ensureDeferred(send_mllp(port, SAMPLE))
        yield defer.ensureDeferred(wait_for(lambda: self.hook.posts, "the refused fire"))
        (kept,) = first.store.alert_states()
        self.assertIsNone(kept["fired_sent_at"])
        yield defer.ensureDeferred(first.stop())

        self.hook.code = 200
        second = yield defer.ensureDeferred(self.engine())
        yield defer.ensureDeferred(wait_for(lambda: len(self.hook.posts) >= 2, "the fire sent"))
        # the webhook's 200 is recorded after the hook has seen the POST: wait for the store
        yield defer.ensureDeferred(
            wait_for(
                lambda: second.store.alert_states()[0]["fired_sent_at"] is not None,
                "the fire recorded as sent",
            )
        )
        self.erp.code = 201
        yield defer.ensureDeferred(wait_for(lambda: len(self.hook.posts) >= 3, "the clear"))
        evaluations = second.alerts.evaluations
        yield defer.ensureDeferred(
            wait_for(lambda: second.alerts.evaluations >= evaluations + 5, "5 evaluations")
        )
        firing, cleared = (
            ("erp_backlog", "usage/erp", "firing"),
            ("erp_backlog", "usage/erp", "cleared"),
        )
        self.assertEqual(self.hook_states(), [[firing], [firing], [cleared]])


@pytest.mark.integration
class AlertReloadTests(unittest.TestCase):
    def setUp(self) -> Any:
        base = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, base, True)
        self.root = make_project(
            base,
            "alerts:\n  rules:\n    - {name: listeners, when: listener_down}\n",
            {},
        )
        self.engine = Engine(self.root, reactor)
        self.addCleanup(lambda: defer.ensureDeferred(self.engine.stop()))
        return defer.ensureDeferred(self.engine.start())

    @defer.inlineCallbacks
    def test_a_reload_replaces_the_rules_and_their_job(self) -> Any:
        first = self.engine.alerts
        self.assertEqual([r.name for r in first.rules.rules], ["listeners"])
        routes = self.root / "routes.yaml"
        routes.write_text(
            routes.read_text().replace(
                "    - {name: listeners, when: listener_down}\n",
                "    - {name: acks, when: ack_overdue}\n"
                "slos:\n  - {name: d, measure: event_latency, objective: 0.9, within: 1m}\n",
            )
        )
        changed = yield defer.ensureDeferred(self.engine.reload_if_changed())
        self.assertTrue(changed)
        self.assertIsNot(self.engine.alerts, first)
        self.assertEqual([r.name for r in self.engine.alerts.rules.rules], ["acks"])
        self.assertEqual([o.config.name for o in self.engine.slos.objectives], ["d"])
        jobs = [s.name for s in self.engine if s.name in ("job:alerts", "job:slos")]
        self.assertEqual(sorted(jobs), ["job:alerts", "job:slos"])
