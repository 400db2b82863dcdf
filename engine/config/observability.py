"""What ``routes.yaml`` says about watching Wharf: the ``alerts:`` block (rules and where their
notifications go), ``slos:`` (service level objectives), ``destination_failing_limit`` (for
/readyz), and a channel's ``canary:`` (a synthetic test message on a schedule).

Parsed like every other block (file:line:column and the field in each error); the runtime's
alert job (``engine.runtime.alerts``), SLOs (``engine.runtime.slos``) and canaries
(``engine.runtime.canary``) run from them.
"""

from __future__ import annotations

from typing import Any

import yaml

from engine.spec import (
    Bool,
    Context,
    Duration,
    Enum,
    Field,
    Float,
    Int,
    ListOf,
    MapOf,
    Spec,
    Str,
    join,
)

NAME = Str(pattern=r"[a-z][a-z0-9_]*", hint="a name of lowercase letters, digits and _")

#: What a rule watches (see ALERT_RULE_SPEC's ``when``).
ALERT_CONDITIONS = (
    "queue_age",
    "error_rate",
    "listener_down",
    "dead_letters",
    "work_item_sla",
    "ack_overdue",
    "canary_missing",
    "slo_burn",
)
#: Fields a condition cannot do without.
_NEEDS = {"queue_age": ("older_than",), "work_item_sla": ("older_than",), "error_rate": ("rate",)}


def _check_rule(config: Any, ctx: Context, node: yaml.Node, path: str) -> None:
    for name in _NEEDS.get(config.when, ()):
        if getattr(config, name) is None:
            ctx.error(node, join(path, name), f"`when: {config.when}` needs `{name}`")


ALERT_RULE_SPEC = Spec(
    "alert_rule",
    [
        Field("name", NAME, description="Shown in every notification of this rule."),
        Field(
            "when",
            Enum(*ALERT_CONDITIONS),
            description="The condition: `queue_age` (a destination's oldest waiting delivery "
            "older than `older_than`), `error_rate` (a channel's errors, refusals and failed "
            "delivery attempts over its messages and attempts in `window` above `rate`), "
            "`listener_down` (a listening source not bound), `dead_letters` (a destination "
            "dead-lettered or quarantined a delivery in `window`), `work_item_sla` (a work item "
            "of `kinds` open longer than `older_than`), `ack_overdue` (an interchange without "
            "its 997/999 in time: open ACK_OVERDUE work items), `canary_missing` (a channel's "
            "canary did not come through within its `expect_within`), `slo_burn` (an objective "
            "burning its error budget faster than its `fast_burn`).",
        ),
        Field("older_than", Duration(lo=0.001), None, "queue_age, work_item_sla: the limit."),
        Field("rate", Float(0.0, 1.0), None, "error_rate: the share of errors that fires."),
        Field(
            "window",
            Duration(lo=0.001),
            300.0,
            "error_rate, dead_letters: how far back the rule looks.",
        ),
        Field(
            "min_events",
            Int(1),
            10,
            "error_rate: fewer messages and attempts than this in the window never fire.",
        ),
        Field("channels", ListOf(NAME), None, "Only these channels (default: all)."),
        Field(
            "kinds",
            ListOf(Str()),
            None,
            "work_item_sla: the work item kinds (default: all kinds).",
        ),
    ],
    description="One alert rule: it fires once when its condition starts for a subject (a "
    "channel, a destination, a listener, a work item kind) and clears once when it ends.",
    example="rules:\n  - {name: erp_backlog, when: queue_age, older_than: 10m}\n"
    "  - {name: errors, when: error_rate, rate: 0.05, window: 5m}",
    check=_check_rule,
)

WEBHOOK_SPEC = Spec(
    "webhook",
    [
        Field("url", Str(r"https?://.+", "an http(s) URL"), description="Where to POST."),
        Field("headers", MapOf(Str()), {}, "Extra request headers (a token)."),
        Field("timeout", Duration(lo=0.1), 10.0, "How long one POST may take."),
    ],
    description='A JSON POST of each notification (`{"alerts": [...]}`).',
)

EMAIL_SPEC = Spec(
    "email",
    [
        Field("host", Str(), description="SMTP server."),
        Field("port", Int(1, 65535), 25, "SMTP port."),
        Field("sender", Str(), description="The From address."),
        Field("to", ListOf(Str(), min_items=1, scalar_ok=True), description="Recipients."),
        Field("timeout", Duration(lo=0.1), 30.0, "How long one message may take to send."),
    ],
    description="An e-mail of each notification over SMTP (twisted.mail).",
)


def _check_notifier(config: Any, ctx: Context, node: yaml.Node, path: str) -> None:
    given = [n for n in ("webhook", "email") if getattr(config, n) is not None]
    if len(given) != 1:
        ctx.error(
            node,
            path,
            f"expected exactly one of webhook, email (got {', '.join(given) or 'neither'})",
        )


NOTIFIER_SPEC = Spec(
    "notifier",
    [
        Field("webhook", WEBHOOK_SPEC, None, "POST the notification as JSON."),
        Field("email", EMAIL_SPEC, None, "Mail the notification."),
    ],
    description="Where notifications go: one `webhook:` or one `email:`.",
    check=_check_notifier,
)


def _check_alerts(config: Any, ctx: Context, node: yaml.Node, path: str) -> None:
    names = [r.name for r in config.rules]
    for i, name in enumerate(names):
        if name in names[:i]:
            ctx.error(node, join(join(path, "rules"), i), f"alert rule '{name}' twice")


ALERTS_SPEC = Spec(
    "alerts",
    [
        Field("interval", Duration(lo=0.01), 30.0, "How often the rules are evaluated."),
        Field("notify", ListOf(NOTIFIER_SPEC), (), "Where notifications go (none: logged only)."),
        Field("rules", ListOf(ALERT_RULE_SPEC), (), "The rules."),
    ],
    description="Alert rules, evaluated by one job at a time. Each evaluation sends at most one "
    "notification holding every alert that started or ended since the last one: a storm over "
    "50 channels is one message, and an outage is one fire and one clear.",
    example="alerts:\n  interval: 30s\n  notify:\n    - webhook: {url: 'https://ops.example/hook'}\n"
    "    - email: {host: smtp.example, sender: wharf@example, to: [ops@example]}\n"
    "  rules:\n    - {name: erp_backlog, when: queue_age, older_than: 10m}\n"
    "    - {name: listeners, when: listener_down}",
    check=_check_alerts,
)

SLO_MEASURES = ("event_latency", "reconciliation", "receipts_invoiced", "work_item_resolution")

SLO_SPEC = Spec(
    "slo",
    [
        Field("name", NAME, description="Shown on the pages and in burn alerts."),
        Field(
            "measure",
            Enum(*SLO_MEASURES),
            description="`event_latency`: messages whose every delivery settled within `within` "
            "of ingest; `reconciliation`: chargeable usage whose charge was accepted within "
            "`within`; `receipts_invoiced`: receipts whose PO line was invoiced (matched or "
            "released) within `within`; `work_item_resolution`: work items (of `kinds`) "
            "closed within `within`.",
        ),
        Field("objective", Float(0.0, 1.0), description="The good share aimed at (0.99)."),
        Field("within", Duration(lo=0.001), description="What counts as good."),
        Field("window", Duration(lo=1.0), 30 * 86400.0, "The period measured."),
        Field("channels", ListOf(NAME), None, "event_latency: only these channels."),
        Field("kinds", ListOf(Str()), None, "work_item_resolution: only these kinds."),
        Field(
            "fast_burn",
            Float(lo=1.0),
            14.4,
            "A burn rate (error share over the last `burn_window` divided by the budget "
            "1 - objective) at or above this fires `slo_burn` rules.",
        ),
        Field("burn_window", Duration(lo=1.0), 3600.0, "The window of the burn rate."),
    ],
    description="A service level objective: measured over `window`, with the error budget "
    "left and a fast-burn alert.",
    example="slos:\n  - {name: delivery, measure: event_latency, objective: 0.99, within: 5m}",
)

CANARY_SPEC = Spec(
    "canary",
    [
        Field("every", Duration(lo=0.01), description="How often a canary is sent."),
        Field("input", Str(), None, "Sample file relative to the project root."),
        Field("input_text", Str(), None, "Inline sample (HL7 segments may be on separate lines)."),
        Field(
            "expect_within",
            Duration(lo=0.01),
            300.0,
            "A canary that has not come through this long after it was sent is missing "
            "(`canary_missing` rules fire).",
        ),
        Field("enabled", Bool(), True, "A disabled canary is linted but not sent."),
    ],
    description="A synthetic transaction: a test-marked copy of the sample (HL7 MSH-11 = T, "
    "FHIR meta.tag HTEST, X12 ISA15 = T) sent on a schedule through the channel's whole path. "
    "It books nothing in the ledger or procurement, and its deliveries carry the test flag "
    "(`X-Wharf-Test: true` over HTTP) that the sandbox honours by answering without recording; "
    "its end-to-end latency is the `wharf_canary_latency_seconds` metric.",
    example="canary:\n  every: 5m\n  input: samples/hl7/dft_p03_screw.hl7\n  expect_within: 2m",
    check=lambda config, ctx, node, path: (
        ctx.error(node, path, "expected exactly one of input, input_text")
        if (config.input is None) == (config.input_text is None)
        else None
    ),
)

ROUTES_FIELDS = [
    Field(
        "alerts",
        ALERTS_SPEC,
        None,
        "Alert rules and where notifications go (see `alerts`).",
    ),
    Field("slos", ListOf(SLO_SPEC), (), "Service level objectives."),
    Field(
        "destination_failing_limit",
        Duration(lo=0.01),
        300.0,
        "/readyz answers 503 while a destination has failed every attempt for longer.",
    ),
]

CHANNEL_FIELDS = [
    Field("canary", CANARY_SPEC, None, "A synthetic test message on a schedule."),
]


def check_project(settings: Any, channels: Any, root: Any, error_at: Any) -> list[Any]:
    """Checks across files: the channels the alert rules and SLOs name exist, and each
    canary's sample file is there. ``error_at(where, path, message)`` makes the error."""
    from engine.spec import did_you_mean

    errors = []
    named: list[tuple[Any, str]] = []
    if settings.alerts is not None:
        named += [(r, f"alerts.rules[{i}]") for i, r in enumerate(settings.alerts.rules)]
    named += [(s, f"slos[{i}]") for i, s in enumerate(settings.slos)]
    for config, path in named:
        for j, name in enumerate(config.channels or ()):
            if name not in channels:
                errors.append(
                    error_at(
                        config.positions["channels"],
                        f"{path}.channels[{j}]",
                        f"no channel '{name}' in channels/ (have: {', '.join(channels)})"
                        f"{did_you_mean(name, channels)}",
                    )
                )
    for name, defn in channels.items():
        canary = defn.config.canary
        if canary is not None and canary.input is not None:
            if not (root / canary.input).is_file():
                errors.append(
                    error_at(
                        canary.positions["input"],
                        "canary.input",
                        f"expected a sample file relative to the project root "
                        f"(got {canary.input!r}: no such file) in channel '{name}'",
                    )
                )
    return errors
