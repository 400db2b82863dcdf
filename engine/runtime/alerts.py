"""Alert rules (``routes.yaml`` ``alerts:``), evaluated by one job at a time.

Each evaluation reads what the engine knows now (:class:`Readings`: the running counters,
listeners, the store's queues and open work items, canaries, SLO burn rates), works out for
every rule the subjects whose condition holds (a channel, ``channel/destination``, a
listener, a work item kind) and compares them with the subjects firing before: a subject that
starts fires once, one that ends clears once, and everything that changed in one evaluation
goes out as ONE notification (a storm across 50 channels is one message). A notifier that
fails keeps what it could not send and sends it with its next notification.

With a :class:`StoreAlertState` (the running engine's), what fires lives in the store
(``alert_state``: firing since when, when its fire and its clear were sent) and the rules are
evaluated by one node at a time, the holder of the ``alerts`` job lease: a restart does not
fire again what was firing before it (it clears it once, when it ends), and several nodes on
one database send one fire and one clear for one outage. A node that does not hold the lease
only follows what the store says fires (for /api/alerts and /metrics). The windows of the
``error_rate`` and ``dead_letters`` rules are the evaluating node's own counters.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from typing import Any, Protocol

from twisted.internet import defer, threads
from twisted.logger import Logger

log = Logger(namespace="wharf.alerts")

#: Notifications kept for /api/alerts.
RECENT = 200


@dataclass(frozen=True)
class AlertEvent:
    """One rule's subject that started (``firing``) or ended (``cleared``)."""

    rule: str
    when: str
    subject: str
    state: str  # firing | cleared
    summary: str
    at: float


@dataclass
class Readings:
    """What one evaluation reads (see the module docstring); ``now`` is wall-clock time."""

    now: float
    totals: dict[tuple[str, ...], int] = field(default_factory=dict)
    listeners: dict[str, bool] = field(default_factory=dict)
    queues: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    work_items: dict[str, dict[str, Any]] = field(default_factory=dict)
    canaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    slos: list[dict[str, Any]] = field(default_factory=list)


class Notifier(Protocol):
    name: str

    def send(self, events: Sequence[AlertEvent]) -> defer.Deferred: ...


class Rules:
    """The rules and their firing subjects; :meth:`step` is the whole decision, pure."""

    def __init__(self, rules: Sequence[Any]) -> None:
        self.rules = list(rules)
        self.firing: dict[tuple[str, str], AlertEvent] = {}
        self._history: deque[tuple[float, dict[tuple[str, ...], int]]] = deque()

    def step(self, r: Readings) -> list[AlertEvent]:
        """Fire and clear events for ``r`` against the state so far (the state moves on)."""
        self._remember(r)
        events = []
        for rule in self.rules:
            held = self._conditions(rule, r)
            before = {s for (name, s) in self.firing if name == rule.name}
            for subject in sorted(set(held) - before):
                event = AlertEvent(rule.name, rule.when, subject, "firing", held[subject], r.now)
                self.firing[(rule.name, subject)] = event
                events.append(event)
            for subject in sorted(before - set(held)):
                started = self.firing.pop((rule.name, subject))
                summary = f"cleared after {_ago(r.now - started.at)}"
                events.append(AlertEvent(rule.name, rule.when, subject, "cleared", summary, r.now))
        return events

    # -- the conditions ------------------------------------------------------------------------
    def _conditions(self, rule: Any, r: Readings) -> dict[str, str]:
        """Subject -> summary for each subject whose condition holds now."""
        wanted = set(rule.channels) if rule.channels else None

        def ours(channel: str) -> bool:
            return wanted is None or channel in wanted

        out: dict[str, str] = {}
        if rule.when == "queue_age":
            for (channel, dest), q in sorted(r.queues.items()):
                age = r.now - q["oldest_at"] if q.get("oldest_at") is not None else 0.0
                if ours(channel) and age > rule.older_than:
                    n = q["pending"] + q["inflight"]
                    out[f"{channel}/{dest}"] = f"{n} waiting, oldest {_ago(age)}"
        elif rule.when == "error_rate":
            then = self._then(r.now - rule.window)
            channels = {k[1] for k in r.totals}
            for channel in sorted(c for c in channels if ours(c)):
                bad = _delta(r.totals, then, ("error", channel)) + _sum(
                    r.totals, then, "failed", channel
                )
                total = _delta(r.totals, then, ("in", channel)) + _sum(
                    r.totals, then, "attempt", channel
                )
                if total >= rule.min_events and bad / total > rule.rate:
                    out[channel] = f"{bad} of {total} failed in {_ago(rule.window)}"
        elif rule.when == "listener_down":
            for key, bound in sorted(r.listeners.items()):
                if not bound and ours(key.removeprefix("listener:")):
                    out[key] = "not listening"
        elif rule.when == "dead_letters":
            then = self._then(r.now - rule.window)
            for key in sorted(k for k in r.totals if k[0] == "dead" and ours(k[1])):
                n = _delta(r.totals, then, key)
                if n > 0:
                    out[f"{key[1]}/{key[2]}"] = f"{n} dead-lettered in {_ago(rule.window)}"
        elif rule.when == "work_item_sla":
            for kind, w in sorted(r.work_items.items()):
                if rule.kinds and kind not in rule.kinds:
                    continue
                age = r.now - w["oldest_at"] if w.get("oldest_at") is not None else 0.0
                if age > rule.older_than:
                    out[kind] = f"{w['open']} open, oldest {_ago(age)}"
        elif rule.when == "ack_overdue":
            w = r.work_items.get("ACK_OVERDUE")
            if w and w["open"]:
                out["ACK_OVERDUE"] = f"{w['open']} interchange(s) without their 997/999 in time"
        elif rule.when == "canary_missing":
            for channel, c in sorted(r.canaries.items()):
                if ours(channel) and c.get("missing"):
                    out[channel] = c.get("summary", "canary did not come through")
        elif rule.when == "slo_burn":
            for slo in r.slos:
                if slo.get("burn_rate") is not None and slo["burn_rate"] >= slo["fast_burn"]:
                    out[slo["name"]] = (
                        f"burn rate {slo['burn_rate']:.1f} (fast burn {slo['fast_burn']:g})"
                    )
        return out

    # -- counters over a window ------------------------------------------------------------------
    def _remember(self, r: Readings) -> None:
        self._history.append((r.now, dict(r.totals)))
        longest = max((rule.window for rule in self.rules), default=0.0)
        while len(self._history) > 2 and self._history[1][0] <= r.now - longest:
            self._history.popleft()

    def _then(self, at: float) -> dict[tuple[str, ...], int]:
        """The totals at the newest reading no later than ``at`` (zeros when none is that
        old: the counters started at zero with the engine, after ``at``)."""
        chosen: dict[tuple[str, ...], int] = {}
        for when, totals in self._history:
            if when > at:
                break
            chosen = totals
        return chosen


def _delta(now: dict, then: dict, key: tuple[str, ...]) -> int:
    return int(now.get(key, 0) - then.get(key, 0))


def _sum(now: dict, then: dict, kind: str, channel: str) -> int:
    return sum(_delta(now, then, k) for k in now if k[0] == kind and k[1] == channel)


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


# -- notifications ---------------------------------------------------------------------------


def payload(events: Sequence[AlertEvent]) -> dict[str, Any]:
    """The JSON body of a notification."""
    firing = sum(1 for e in events if e.state == "firing")
    return {
        "summary": headline(events),
        "firing": firing,
        "cleared": len(events) - firing,
        "alerts": [asdict(e) for e in events],
    }


def headline(events: Sequence[AlertEvent]) -> str:
    firing = sum(1 for e in events if e.state == "firing")
    parts = []
    if firing:
        parts.append(f"{firing} alert(s) firing")
    if len(events) - firing:
        parts.append(f"{len(events) - firing} cleared")
    rules = sorted({e.rule for e in events})
    return f"wharf: {', '.join(parts)} ({', '.join(rules)})"


class WebhookNotifier:
    """A JSON POST through the engine's HTTP caller (the one HTTP destinations use)."""

    def __init__(self, options: Any, reactor: Any) -> None:
        from twisted.web.client import BrowserLikePolicyForHTTPS

        from engine.net.http import HttpCaller

        self.name = f"webhook {options.url}"
        self.options = options
        self.caller = HttpCaller(
            reactor,
            tls=BrowserLikePolicyForHTTPS(),
            connect_timeout=min(options.timeout, 10.0),
            timeout=options.timeout,
            max_response=65536,
        )

    def send(self, events: Sequence[AlertEvent]) -> defer.Deferred:
        return defer.ensureDeferred(self._send(events))

    async def _send(self, events: Sequence[AlertEvent]) -> None:
        headers = {k.encode(): [v.encode()] for k, v in self.options.headers.items()}
        headers[b"Content-Type"] = [b"application/json"]
        body = json.dumps(payload(events)).encode()
        answer = await self.caller.call("POST", self.options.url, headers, body)
        if not answer.ok:
            raise RuntimeError(f"expected a 2xx answer from {self.options.url} (got {answer.code})")

    def close(self) -> Any:
        return self.caller.close()


class EmailNotifier:
    """An e-mail over SMTP (``twisted.mail.smtp.sendmail``)."""

    def __init__(self, options: Any, reactor: Any) -> None:
        self.name = f"email {options.host}:{options.port}"
        self.options = options
        self.reactor = reactor

    def message(self, events: Sequence[AlertEvent]) -> bytes:
        msg = EmailMessage()
        msg["Subject"] = headline(events)
        msg["From"] = self.options.sender
        msg["To"] = ", ".join(self.options.to)
        lines = [
            f"{e.state.upper():8} {e.rule} [{e.when}] {e.subject}: {e.summary}" for e in events
        ]
        msg.set_content("\n".join(lines) + "\n")
        return msg.as_bytes()

    def send(self, events: Sequence[AlertEvent]) -> defer.Deferred:
        from twisted.mail.smtp import sendmail

        d = sendmail(
            self.options.host,
            self.options.sender,
            list(self.options.to),
            self.message(events),
            port=self.options.port,
            reactor=self.reactor,
        )
        d.addTimeout(self.options.timeout, self.reactor)
        return d

    def close(self) -> None:
        return None


def notifiers_of(config: Any, reactor: Any) -> list[Any]:
    out: list[Any] = []
    for n in config.notify:
        if n.webhook is not None:
            out.append(WebhookNotifier(n.webhook, reactor))
        else:
            out.append(EmailNotifier(n.email, reactor))
    return out


class Alerts:
    """The rules of one engine, its notifiers and what was sent (the engine's ``alerts``)."""

    def __init__(
        self,
        config: Any,
        read: Callable[[], Any],
        reactor: Any,
        *,
        notifiers: Sequence[Any] | None = None,
        state: StoreAlertState | None = None,
    ) -> None:
        self.config = config
        self.rules = Rules(config.rules)
        self.kept = state  # None: in memory only (a restart forgets what fired)
        self.leading = False  # whether this node evaluated the rules at its last turn
        self.read = read
        self.notifiers = list(notifiers if notifiers is not None else notifiers_of(config, reactor))
        self.backlog: dict[int, list[AlertEvent]] = {i: [] for i in range(len(self.notifiers))}
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.notifications = 0  # notifications handed to the notifiers
        self.evaluations = 0

    async def evaluate(self) -> list[AlertEvent]:
        """One evaluation: read, decide, notify once if anything changed. With a store, by
        the holder of the lease only, from what the store says fires; a node taking the lead
        first sends what its predecessor decided and did not send."""
        if self.kept is not None:
            leading = await self.kept.lead()
            known = {r.name for r in self.rules.rules}
            firing, unsent = await self.kept.load(known)
            self.rules.firing = firing
            if not leading:
                self.leading = False
                return []
            if not self.leading:
                self.leading = True
                for i in self.backlog:
                    self.backlog[i] = unsent + self.backlog[i]
        readings = await defer.maybeDeferred(self.read)
        events = self.rules.step(readings)
        self.evaluations += 1
        if events and self.kept is not None:
            await self.kept.record(events)
        if events:
            for e in events:
                level = log.warn if e.state == "firing" else log.info
                level(
                    "alert {rule} {state}: {subject}: {summary}",
                    rule=e.rule,
                    state=e.state,
                    subject=e.subject,
                    summary=e.summary,
                )
            self.recent.append(payload(events) | {"at": readings.now})
        await self._notify(events)
        return events

    async def _notify(self, events: list[AlertEvent]) -> None:
        sent: list[AlertEvent] = []
        for i, notifier in enumerate(self.notifiers):
            batch = self.backlog[i] + events
            if not batch:
                continue
            self.notifications += 1
            try:
                await notifier.send(batch)
            except Exception as exc:
                self.backlog[i] = batch[-RECENT:]
                log.error(
                    "alert notification by {notifier} failed (sent again with the next): {error}",
                    notifier=notifier.name,
                    error=f"{type(exc).__name__}: {exc}",
                )
            else:
                self.backlog[i] = []
                sent.extend(batch)
        if sent and self.kept is not None:
            await self.kept.sent(sent)

    def state(self) -> dict[str, Any]:
        """For /api/alerts: the rules, what fires now and the recent notifications."""
        return {
            "rules": [{"name": r.name, "when": r.when} for r in self.rules.rules],
            "firing": [asdict(e) for e in sorted(self.rules.firing.values(), key=_order)],
            "recent": list(self.recent)[::-1],
            "evaluations": self.evaluations,
            "leading": self.leading if self.kept is not None else True,
        }

    async def close(self) -> None:
        if self.kept is not None and self.leading:
            await self.kept.step_down()
        for n in self.notifiers:
            closing = getattr(n, "close", None)
            if closing is not None:
                await defer.maybeDeferred(closing)


class StoreAlertState:
    """What fires, kept in the store (``alert_state``), and the ``alerts`` job lease that
    makes one node at a time evaluate the rules (reads on a reactor thread, writes through the
    store's executor)."""

    LEASE = "alerts"

    def __init__(
        self, store: Any, executor: Any, coordination: Any, reactor: Any, interval: float
    ) -> None:
        from engine.coordination import Leases

        self.store = store
        self.executor = executor
        self.reactor = reactor
        # a leader that stopped answering is replaced after a few of its turns (30s at least)
        self.leases = Leases(coordination, max(3 * interval, 30.0), reactor)

    async def lead(self) -> bool:
        return self.LEASE in await self.leases.held([self.LEASE])

    async def step_down(self) -> None:
        await self.leases.release()

    async def load(
        self, rules: set[str]
    ) -> tuple[dict[tuple[str, str], AlertEvent], list[AlertEvent]]:
        """What fires now (of ``rules``), and the fires and clears decided but not sent."""
        rows = await threads.deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), self.store.alert_states, None
        )
        firing: dict[tuple[str, str], AlertEvent] = {}
        unsent: list[AlertEvent] = []
        for r in rows:
            if r["rule"] not in rules:
                continue
            firing_now = r["state"] == "firing"
            at = r["since"] if firing_now else r["changed_at"]
            event = AlertEvent(r["rule"], r["kind"], r["subject"], r["state"], r["summary"], at)
            if firing_now:
                firing[(r["rule"], r["subject"])] = event
            if (r["fired_sent_at"] if firing_now else r["cleared_sent_at"]) is None:
                unsent.append(event)
        return firing, unsent

    async def record(self, events: Sequence[AlertEvent]) -> None:
        await self.executor.submit(self.store.alert_changes, list(events))

    async def sent(self, events: Sequence[AlertEvent]) -> None:
        await self.executor.submit(self.store.alerts_sent, list(events), time.time())


def _order(e: AlertEvent) -> tuple[str, str]:
    return (e.rule, e.subject)


async def readings_of(engine: Any) -> Readings:
    """What the engine knows now: counters and listeners from memory, queues and open work
    items from the store's indexes (on a reactor thread, never the reactor's)."""
    reactor = engine.reactor
    queues, items = await threads.deferToThreadPool(
        reactor, reactor.getThreadPool(), _store_reads, engine.store
    )
    canaries = engine.canaries.state() if getattr(engine, "canaries", None) else {}
    slos = engine.slos.state()["slos"] if getattr(engine, "slos", None) else []
    return Readings(
        now=time.time(),
        totals=engine.metrics.totals(),
        listeners=engine.listener_states(),
        queues=queues,
        work_items=items,
        canaries=canaries,
        slos=slos,
    )


def _store_reads(store: Any) -> tuple[dict, dict]:
    return store.queue_stats(), store.work_item_stats()
