"""Alert rules decide on what the engine reads, driven through simulated time: a ten-minute
outage fires once and clears once, a storm over 50 channels is one notification, a notifier
that fails sends what it missed with the next one, and a bad ``alerts:`` block names
file:line:column and the field."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet import defer, task

from engine.config.project import load_project
from engine.errors import LintFailed
from engine.runtime.alerts import Alerts, Readings, Rules
from engine.runtime.services import JobService


def rule(name: str, when: str, **kw: Any) -> Any:
    base = dict(older_than=None, rate=None, window=300.0, min_events=10, channels=None, kinds=None)
    return SimpleNamespace(name=name, when=when, **(base | kw))


class FakeNotifier:
    def __init__(self, fail: int = 0) -> None:
        self.name = "fake"
        self.sent: list[list[Any]] = []
        self.fail = fail

    def send(self, events: Any) -> defer.Deferred:
        if self.fail:
            self.fail -= 1
            return defer.fail(RuntimeError("down"))
        self.sent.append(list(events))
        return defer.succeed(None)


class Outage:
    """An ERP that is down from t=60s to t=660s: the oldest waiting delivery is as old as
    the outage; the engine reads it every evaluation."""

    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock
        self.down_from, self.down_until = 60.0, 660.0

    def read(self) -> Readings:
        now = self.clock.seconds()
        queues = {}
        if self.down_from <= now < self.down_until:
            queues[("usage", "erp")] = {"pending": 3, "inflight": 0, "oldest_at": self.down_from}
        listeners = {"usage": not (self.down_from <= now < self.down_until)}
        return Readings(now=now, queues=queues, listeners=listeners)


def test_a_ten_minute_outage_fires_once_and_clears_once() -> None:
    """Evaluated every 30 s for 20 simulated minutes by the same one-at-a-time job the engine
    runs: the queue-age rule fires when the oldest delivery passes 2 minutes and clears when
    the queue empties; the listener rule likewise; two notifications in all, one per change."""
    clock = task.Clock()
    outage = Outage(clock)
    config = SimpleNamespace(
        rules=[
            rule("erp_backlog", "queue_age", older_than=120.0),
            rule("listeners", "listener_down"),
        ],
        notify=[],
    )
    notifier = FakeNotifier()
    alerts = Alerts(config, outage.read, clock, notifiers=[notifier])
    job = JobService("alerts", 30.0, alerts.evaluate, clock)
    job.startService()
    try:
        clock.pump([30.0] * 40)
    finally:
        job.stopService()
    assert alerts.evaluations == 40
    flat = [(e.rule, e.subject, e.state, e.at) for batch in notifier.sent for e in batch]
    assert flat == [
        ("listeners", "usage", "firing", 60.0),
        ("erp_backlog", "usage/erp", "firing", 210.0),
        ("erp_backlog", "usage/erp", "cleared", 660.0),
        ("listeners", "usage", "cleared", 660.0),
    ]
    assert len(notifier.sent) == 3  # the listener at once, the backlog later, both clears together
    assert alerts.state()["firing"] == []


def test_a_storm_over_fifty_channels_is_one_notification() -> None:
    readings = Readings(
        now=1000.0,
        queues={
            (f"ch{i:02}", "erp"): {"pending": 1, "inflight": 0, "oldest_at": 0.0} for i in range(50)
        },
    )
    notifier = FakeNotifier()
    config = SimpleNamespace(rules=[rule("backlog", "queue_age", older_than=60.0)], notify=[])
    alerts = Alerts(config, lambda: readings, task.Clock(), notifiers=[notifier])
    events = alerts.evaluate()
    result = []
    defer.ensureDeferred(events).addCallback(result.append)
    assert len(result[0]) == 50
    assert len(notifier.sent) == 1 and len(notifier.sent[0]) == 50
    # the same readings again: nothing new, nothing sent
    defer.ensureDeferred(alerts.evaluate())
    assert len(notifier.sent) == 1


def test_a_failed_notification_goes_out_with_the_next_one() -> None:
    state = {"now": 0.0, "up": False}

    def read() -> Readings:
        return Readings(now=state["now"], listeners={"usage": state["up"]})

    notifier = FakeNotifier(fail=1)
    config = SimpleNamespace(rules=[rule("listeners", "listener_down")], notify=[])
    alerts = Alerts(config, read, task.Clock(), notifiers=[notifier])
    defer.ensureDeferred(alerts.evaluate())  # fires; the notifier fails
    assert notifier.sent == []
    state.update(now=30.0, up=True)
    defer.ensureDeferred(alerts.evaluate())  # clears; both go out together
    assert [[(e.state, e.at) for e in batch] for batch in notifier.sent] == [
        [("firing", 0.0), ("cleared", 30.0)]
    ]


def test_error_rate_and_dead_letters_look_back_over_their_window() -> None:
    rules = Rules(
        [
            rule("errors", "error_rate", rate=0.2, window=60.0, min_events=5),
            rule("dead", "dead_letters", window=60.0),
        ]
    )
    totals: dict[tuple[str, ...], int] = {}

    def at(now: float, **add: int) -> list[Any]:
        for key, n in add.items():
            kind, *rest = key.split("__")
            k = (kind, *rest)
            totals[k] = totals.get(k, 0) + n
        return [(e.rule, e.subject, e.state) for e in rules.step(Readings(now, dict(totals)))]

    assert at(0.0, in__a=10) == []
    assert at(30.0, in__a=10, error__a=1) == []  # 1 of 20
    assert at(60.0, in__a=5, error__a=4, dead__a__erp=1) == [
        ("errors", "a", "firing"),  # 5 of 25 in the last minute > 20 %
        ("dead", "a/erp", "firing"),
    ]
    assert at(90.0, in__a=10) == []  # 5 of 25 since t=30 (the newest reading a minute old)
    assert at(150.0, in__a=10) == [("errors", "a", "cleared"), ("dead", "a/erp", "cleared")]


ALERTS_BAD = """\
store: var/wharf.db
alerts:
  interval: 30s
  rules:
    - {name: backlog, when: queue_age}
    - {name: errors, when: eror_rate, rate: 0.1}
  notify:
    - webhook: {url: 'https://ops.example/hook'}
      email: {host: smtp.example, sender: a@example, to: b@example}
"""


def test_a_bad_alerts_block_names_file_line_column_and_field(tmp_path: Path) -> None:
    (tmp_path / "routes.yaml").write_text(ALERTS_BAD)
    with pytest.raises(LintFailed) as caught:
        load_project(tmp_path, env={})
    text = str(caught.value)
    assert (
        "routes.yaml:5:7: alerts.rules[0].older_than: `when: queue_age` needs `older_than`" in text
    )
    assert "routes.yaml:6:28: alerts.rules[1].when:" in text
    assert "did you mean 'error_rate'?" in text
    assert (
        "routes.yaml:8:7: alerts.notify[0]: expected exactly one of webhook, email "
        "(got webhook, email)" in text
    )


def test_slo_burn_and_work_item_sla_and_ack_overdue() -> None:
    rules = Rules(
        [
            rule("burn", "slo_burn"),
            rule("sla", "work_item_sla", older_than=3600.0, kinds=["UNBILLED_USAGE"]),
            rule("acks", "ack_overdue"),
        ]
    )
    slo = {"name": "delivery", "burn_rate": 20.0, "fast_burn": 14.4}
    items = {
        "UNBILLED_USAGE": {"open": 3, "oldest_at": 0.0},
        "INVOICE_HELD": {"open": 9, "oldest_at": 0.0},
        "ACK_OVERDUE": {"open": 1, "oldest_at": 5000.0},
    }
    fired = rules.step(Readings(now=7200.0, work_items=items, slos=[slo]))
    assert [(e.rule, e.subject, e.state) for e in fired] == [
        ("burn", "delivery", "firing"),
        ("sla", "UNBILLED_USAGE", "firing"),
        ("acks", "ACK_OVERDUE", "firing"),
    ]
    cleared = rules.step(Readings(now=7260.0, work_items={}, slos=[slo | {"burn_rate": 1.0}]))
    assert [(e.rule, e.state) for e in cleared] == [
        ("burn", "cleared"),
        ("sla", "cleared"),
        ("acks", "cleared"),
    ]


def test_lint_checks_the_channels_rules_name_and_each_canary_sample(tmp_path: Path) -> None:
    (tmp_path / "channels").mkdir()
    (tmp_path / "channels/usage.yaml").write_text(
        "codec: {hl7v2: {}}\ncanary:\n  every: 5m\n  input: samples/nowhere.hl7\n"
    )
    (tmp_path / "routes.yaml").write_text(
        "alerts:\n  rules:\n    - {name: errs, when: error_rate, rate: 0.1, channels: [usaeg]}\n"
        "slos:\n  - {name: s, measure: event_latency, objective: 0.99, within: 5m, "
        "channels: [nope]}\n"
    )
    with pytest.raises(LintFailed) as caught:
        load_project(tmp_path, env={})
    text = str(caught.value)
    assert (
        "routes.yaml:3:59: alerts.rules[0].channels[0]: no channel 'usaeg' in channels/ "
        "(have: usage) (did you mean 'usage'?)" in text
    )
    assert "slos[0].channels[0]: no channel 'nope'" in text
    assert (
        "channels/usage.yaml:4:10: canary.input: expected a sample file relative to the "
        "project root (got 'samples/nowhere.hl7': no such file) in channel 'usage'" in text
    )
