"""A project on disk: ``routes.yaml``, one channel per file in ``channels/``, and ``mappings/``.

``load_project`` reads all of it, validates every field against the component specs and returns
a :class:`Project`, or raises :class:`~engine.errors.LintFailed` with every error found.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.config import observability
from engine.config.store_path import STORE_DEFAULT
from engine.config.yamlnodes import compose_file, empty_mapping
from engine.errors import ConfigError, LintFailed
from engine.mappings import Mappings, load_mappings
from engine.model import MESSAGE_STATUSES
from engine.registry import REGISTRY, Registry
from engine.sftp.config import SFTP_SERVER_SPEC
from engine.spec import (
    INVALID,
    Any_,
    Bool,
    ByteSize,
    Component,
    Context,
    Duration,
    Enum,
    Field,
    Int,
    ListOf,
    MapOf,
    Spec,
    Str,
    did_you_mean,
    join,
)
from engine.web.config import ADMIN_SPEC

NAME = Str(pattern=r"[a-z][a-z0-9_]*", hint="a name of lowercase letters, digits and _")


def _retry_spec() -> Spec:
    from engine.delivery import RETRY_SPEC

    return RETRY_SPEC


def _rate_limit_spec() -> Spec:
    from engine.delivery import RATE_LIMIT_SPEC

    return RATE_LIMIT_SPEC


DESTINATION_SPEC = Spec(
    "destination",
    [
        Field("name", NAME, description="Name used in logs, `emit`, tests and `wharf replay`."),
        Field("retry", _retry_spec(), _retry_spec().defaults(), "Backoff and give-up limits."),
        Field(
            "concurrency",
            Int(1, 1024),
            4,
            "Calls in flight at once (one delivery each, or one bulk call of several).",
        ),
        Field(
            "rate_limit",
            _rate_limit_spec(),
            None,
            "Calls started a second (or a minute) at most; none: as fast as `concurrency` "
            "allows. An HTTP 429 holds the queue until its Retry-After either way.",
        ),
        Field(
            "idempotent",
            Bool(),
            True,
            "Whether a resend with the same Idempotency-Key is safe. When false, an ambiguous "
            "outcome (timeout or reset after sending) is quarantined for a person, not retried.",
        ),
        Field(
            "ordered",
            Bool(),
            False,
            "Deliver in order per order key: a later delivery for a key waits until the "
            "earlier one is sent (or parked).",
        ),
        Field(
            "order_by",
            Str(),
            None,
            "Field of the inbound message whose value is the order key, e.g. `PV1-19.1` "
            "(visit) or `PID-3.1` (patient); a transform may also set keys with `emit`.",
        ),
        Field(
            "on_poison",
            Enum("park", "block"),
            "park",
            "With `ordered`: a dead-lettered delivery is parked (its key keeps flowing) or blocks "
            "its key until replayed.",
        ),
        Field("lease", Duration(lo=1), 300.0, "How long a claimed delivery stays claimed."),
    ],
    description="A destination: a name, delivery policy, and one destination type key.",
    example="destinations:\n  - name: erp\n    http: {url: 'http://erp.local/issues'}\n"
    "    retry: {max_attempts: 20}",
    component_kind="destination",
)

STEP_SPEC = Spec(
    "step",
    [
        Field("transform", Str(), description="Name of a registered transform."),
        Field("label", Str(), None, "Shown in errors and the message browser."),
    ],
    description="One transformer step: a transform name plus that transform's own options.",
    example="transformer:\n  - transform: hl7_usage_to_issue\n    items: items",
    dispatch=("transform", "transform"),
)

DEDUP_SPEC = Spec(
    "dedup",
    [
        Field(
            "window",
            Duration(),
            7 * 86400.0,
            "A message with the same dedup key within this window is a duplicate (0 = off).",
        )
    ],
    description="Duplicate detection on the codec's dedup key.",
)

LIMITS_SPEC = Spec(
    "limits",
    [
        Field(
            "max_size", ByteSize(), None, "A larger message is refused (HL7: AR naming the limit)."
        ),
        Field(
            "max_lines",
            Int(1),
            None,
            "A message with more lines is refused (HL7: AR naming the limit): HL7 segments, "
            "FHIR Bundle entries, X12 segments. Keeps one huge message from tying the "
            "pipeline and the destinations up; the sender splits it.",
        ),
    ],
    description="What one message of this channel may hold, checked before it is stored.",
    example="limits:\n  max_lines: 5000\n  max_size: 2MiB",
)

DEST_EXPECT_SPEC = Spec(
    "destination_expectation",
    [
        Field("count", Int(0), None, "Number of payloads for this destination."),
        Field("json", Any_(), None, "The payloads, decoded as JSON, equal this list (or a file)."),
        Field("json_subset", Any_(), None, "Each payload contains these keys and values."),
        Field("contains", Str(), None, "Some payload contains this text."),
    ],
    description="What one destination must receive.",
)

EXPECT_SPEC = Spec(
    "expect",
    [
        Field("status", Enum(*MESSAGE_STATUSES), None, "Message status after the pipeline."),
        Field("error_contains", Str(), None, "The error text contains this."),
        Field("response_code", Str(), None, "The source's answer code (HL7 MSA-1, HTTP status)."),
        Field("destinations", MapOf(DEST_EXPECT_SPEC), {}, "Per destination expectations."),
        Field("events", Int(0), None, "Number of ledger events the transforms booked."),
    ],
    description="Expectations of a channel test.",
)

BEFORE_SPEC = Spec(
    "before",
    [
        Field("channel", Str(), description="The channel that takes it first."),
        Field("input", Str(), None, "Sample file, relative to the project root."),
        Field("input_text", Str(), None, "Inline input."),
        Field("origin", Str(), None, "The credential it comes with (as the test's origin)."),
    ],
    description="A message processed, with its domains' bookings, before a golden run's input.",
)

TEST_SPEC = Spec(
    "test",
    [
        Field("name", Str(), description="What the test shows."),
        Field("input", Str(), None, "Sample file, relative to the project root."),
        Field("input_text", Str(), None, "Inline input (HL7 segments may be on separate lines)."),
        Field(
            "origin",
            Str(r"(sftp|token|tls):.+", "sftp:ACCOUNT, token:NAME or tls:CN"),
            None,
            "Run the input as if it came with this credential (`sftp:acmemed`: uploaded to that "
            "SFTP account), the way a source would store it.",
        ),
        Field("expect", EXPECT_SPEC, description="What must happen."),
        Field(
            "before",
            ListOf(BEFORE_SPEC),
            (),
            "Messages booked first in a golden run (`wharf test --record`): the PO an 855 "
            "answers, the charge a credit reverses.",
        ),
    ],
    description="A channel test: an input sample, and expectations on status and outputs.",
)


def _check_channel(config: Any, ctx: Context, node: yaml.Node, path: str) -> None:
    names = [d.name for d in config.destinations]
    for i, name in enumerate(names):
        if name in names[:i]:
            ctx.error(node, join(join(path, "destinations"), i), f"destination '{name}' twice")
    for domain in ctx.registry.domains():
        section = getattr(config, domain.name, None)
        if section is None:
            continue
        for role, dest in domain.roles(section).items():
            if dest is not None and dest not in names:
                ctx.error(
                    node,
                    f"{domain.name}.{role}",
                    f"no destination '{dest}' in this channel (have: {', '.join(names) or 'none'})"
                    f"{did_you_mean(dest, names)}",
                )
    if config.application_ack is not None and config.application_ack not in names:
        ctx.error(
            node,
            "application_ack",
            f"no destination '{config.application_ack}' in this channel "
            f"(have: {', '.join(names) or 'none'}){did_you_mean(config.application_ack, names)}",
        )
    for i, d in enumerate(config.destinations):
        if d.order_by is not None and not d.ordered:
            ctx.error(
                node,
                f"destinations[{i}].order_by",
                "order_by needs `ordered: true` on the same destination",
            )
        options = getattr(d.component, "options", None)
        if d.ordered and getattr(options, "bulk", None) is not None:
            ctx.error(
                node,
                f"destinations[{i}].{d.component.name}.bulk",
                "bulk calls cannot keep an order per key: drop bulk or `ordered: true`",
            )
    for i, t in enumerate(config.tests):
        if (t.input is None) == (t.input_text is None):
            ctx.error(node, f"tests[{i}]", "expected exactly one of input, input_text")
        for dest in t.expect.destinations:
            if dest not in names:
                ctx.error(
                    node,
                    f"tests[{i}].expect.destinations.{dest}",
                    f"no destination '{dest}' in this channel (have: {', '.join(names)})",
                )
        if t.input is not None and ctx.base_dir and not (Path(ctx.base_dir) / t.input).is_file():
            ctx.error(node, f"tests[{i}].input", f"sample file not found: {t.input}")
        for j, b in enumerate(t.before):
            where = f"tests[{i}].before[{j}]"
            if (b.input is None) == (b.input_text is None):
                ctx.error(node, where, "expected exactly one of input, input_text")
            if (
                b.input is not None
                and ctx.base_dir
                and not (Path(ctx.base_dir) / b.input).is_file()
            ):
                ctx.error(node, f"{where}.input", f"sample file not found: {b.input}")


_CHANNEL_HEAD = [
    Field("name", NAME, None, "Channel name (default: the file name without .yaml)."),
    Field("description", Str(nonempty=False), "", "What this channel is for."),
    Field("enabled", Bool(), True, "A disabled channel is linted but not run."),
    Field("source", Component("source"), None, "Where messages come from."),
    Field("codec", Component("codec"), None, "How bytes are parsed (default `raw`)."),
    Field("dedup", DEDUP_SPEC, None, "Duplicate detection."),
    Field("limits", LIMITS_SPEC, None, "How big one message may be."),
]
# (then one section per registered domain: `ledger:`, `procurement:`...)
_CHANNEL_TAIL = [
    Field("filter", ListOf(Component("filter")), (), "Messages failing any filter stop."),
    Field("transformer", ListOf(STEP_SPEC), (), "Transform steps, in order."),
    Field("destinations", ListOf(DESTINATION_SPEC), (), "Where results go."),
    Field(
        "respond_from",
        Enum("after_store", "after_transform", "destinations_completed"),
        "after_store",
        "When a source that answers (MLLP) gives its answer in original mode: after the "
        "commit (AA), after the transform (AA/AE), or when every destination finished.",
    ),
    Field(
        "respond_timeout",
        Duration(lo=0.01),
        30.0,
        "How long after_transform / destinations_completed wait; then AR (send again).",
    ),
    Field(
        "application_ack",
        NAME,
        None,
        "Destination (MLLP) that takes enhanced-mode application ACKs when MSH-16 asks.",
    ),
    Field("tests", ListOf(TEST_SPEC), (), "Channel tests, run by `wharf test` and pytest."),
    *observability.CHANNEL_FIELDS,
]

RETENTION_SPEC = Spec(
    "retention_rule",
    [
        Field("status", ListOf(Enum(*MESSAGE_STATUSES), scalar_ok=True), description="Statuses."),
        Field("older_than", Duration(lo=1), description="Age since the last change."),
    ],
    description="Prune messages in these statuses older than this.",
)

ROUTE_SPEC = Spec(
    "route",
    [
        Field(
            "when", ListOf(Component("filter")), (), "Filters that must all pass (none: always)."
        ),
        Field("channel", NAME, description="The channel that takes a matching message."),
    ],
    description="One routing rule of a listener; the first rule that matches wins.",
)

LISTENER_SPEC = Spec(
    "listener",
    [
        Field("name", NAME, description="Listener name, shown in logs and the store."),
        Field("source", Component("source"), description="Where messages come from."),
        Field("codec", Component("codec"), None, "How bytes are parsed (default `raw`)."),
        Field("routes", ListOf(ROUTE_SPEC, min_items=1), description="Rules, in order."),
    ],
    description=(
        "A source shared by several channels: each message is decoded once and the first route "
        "whose `when` filters all pass picks its channel. A message no route takes is refused "
        "(a drop-folder file goes to `error/` with the reason). Routed channels have no "
        "`source:` of their own and take the listener's codec."
    ),
    example="listeners:\n  - name: pou_inbox\n    source:\n"
    "      dropfolder: {path: var/inbox/pou}\n"
    "    codec: {hl7v2: {}}\n    routes:\n"
    "      - when: [{message_type: {any_of: [DFT^P03]}}]\n        channel: usage_to_erp\n"
    "      - channel: other_hl7",
)

_ROUTES_HEAD = [
    Field("listeners", ListOf(LISTENER_SPEC), (), "Shared sources with content-based routes."),
    Field(
        "store",
        Str(),
        STORE_DEFAULT,
        "SQLite store file, relative to the project root, or a postgresql:// URL (several "
        "nodes sharing one database); the WHARF_DB environment variable overrides it.",
    ),
    Field("retention", ListOf(RETENTION_SPEC), (), "Pruning rules run by `wharf prune`."),
    Field(
        "work_item_retention",
        Duration(),
        365 * 86400.0,
        "`wharf prune` deletes work items closed or resolved this long ago (0 = keep them).",
    ),
    Field(
        "audit_retention",
        Duration(),
        0.0,
        "`wharf prune` deletes audit rows older than this, keeping the chain verifiable from "
        "the last one deleted (0 = keep the audit for ever).",
    ),
    Field(
        "node",
        Str(),
        None,
        "This node's name among several on one PostgreSQL store (the console lists each node); "
        "the WHARF_NODE environment variable overrides it. Default: the host name and the "
        "admin listener's port.",
    ),
    Field(
        "reload_interval",
        Duration(),
        2.0,
        "How often to look for changed files (0 = off; SIGHUP reloads at once either way).",
    ),
    Field("pipeline_threads", Int(1, 64), 2, "Threads that run codecs and transforms."),
]
# (then the settings each registered domain adds: `unbilled_after`...)
_ROUTES_TAIL = [
    Field("channels", ListOf(NAME), None, "Channels to run (default: every file)."),
    Field(
        "sftp_server",
        SFTP_SERVER_SPEC,
        None,
        "Wharf's own SFTP server: a chrooted inbound/outbound/archive folder per trading "
        "partner; channels pick files up with a dropfolder source on a partner's inbound/.",
    ),
    *observability.ROUTES_FIELDS,
    Field(
        "admin",
        ADMIN_SPEC,
        None,
        "The admin listener: the web console, its JSON API, health and metrics (none: off).",
    ),
]

_SPECS: dict[tuple[str, int, tuple[str, ...]], Spec] = {}


def channel_spec(registry: Registry = REGISTRY) -> Spec:
    """The spec of a channel file: the spine's fields and one section per registered domain,
    parsed by that domain's own spec."""
    domains = registry.domains()
    key = ("channel", id(registry), tuple(d.name for d in domains))
    if key not in _SPECS:
        sections = [Field(d.name, d.spec, None, d.description) for d in domains]
        _SPECS[key] = Spec(
            "channel",
            [*_CHANNEL_HEAD, *sections, *_CHANNEL_TAIL],
            description="One channel per file in `channels/`.",
            check=_check_channel,
        )
    return _SPECS[key]


def routes_spec(registry: Registry = REGISTRY) -> Spec:
    """The spec of ``routes.yaml``: the engine's settings and those the domains add."""
    domains = registry.domains()
    key = ("routes", id(registry), tuple(d.name for d in domains))
    if key not in _SPECS:
        added = [f for d in domains for f in d.settings]
        _SPECS[key] = Spec(
            "routes",
            [*_ROUTES_HEAD, *added, *_ROUTES_TAIL],
            description="`routes.yaml`: engine settings and which channels run.",
        )
    return _SPECS[key]


def __getattr__(name: str) -> Any:
    """``CHANNEL_SPEC`` and ``ROUTES_SPEC``: the specs with the registered domains."""
    if name == "CHANNEL_SPEC":
        return channel_spec()
    if name == "ROUTES_SPEC":
        return routes_spec()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class ChannelDef:
    name: str
    file: str
    config: Any


@dataclass
class Project:
    root: Path
    settings: Any
    channels: dict[str, ChannelDef]
    mappings: Mappings
    fingerprint: dict[str, tuple[int, int]] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)  # what domains load, by name
    version: str = ""  # content hash of routes.yaml, channels/ and mappings/


def fingerprint(root: Path) -> dict[str, tuple[int, int]]:
    """Modification time and size of every file whose change triggers a reload."""
    out: dict[str, tuple[int, int]] = {}
    for rel in ("routes.yaml",):
        p = root / rel
        if p.exists():
            st = p.stat()
            out[rel] = (st.st_mtime_ns, st.st_size)
    for folder in ("channels", "mappings", "mappings/x12/codelists"):
        d = root / folder
        if d.is_dir():
            for p in sorted(d.iterdir()):
                if p.is_file():
                    st = p.stat()
                    out[f"{folder}/{p.name}"] = (st.st_mtime_ns, st.st_size)
    return out


def load_project(
    root: Path | str,
    env: Mapping[str, str] | None = None,
    registry: Registry = REGISTRY,
    *,
    samples: Path | None = None,
) -> Project:
    """``samples``: where the channels' ``tests:`` inputs are looked for (default ``root``; a
    configuration version rebuilt from the store has only the configuration's own files)."""
    root = Path(root).resolve()
    env = dict(os.environ) if env is None else env
    # Taken before reading, so an edit made while loading is seen by the next reload check.
    seen = fingerprint(root)
    errors: list[ConfigError] = []
    mappings, map_errors = load_mappings(root / "mappings", root)
    errors += map_errors

    def parse(spec: Spec, path: Path) -> Any:
        shown = str(path.relative_to(root))
        try:
            node = compose_file(path, shown)
        except ConfigError as exc:
            errors.append(exc)
            return INVALID
        ctx = Context(shown, env, registry, base_dir=str(samples or root))
        ctx.mappings = mappings
        value = spec.parse(node if node is not None else empty_mapping(), ctx, "")
        errors.extend(ctx.errors)
        return value

    routes_file = root / "routes.yaml"
    if routes_file.exists():
        settings = parse(routes_spec(registry), routes_file)
    else:
        settings = routes_spec(registry).defaults()
    channels: dict[str, ChannelDef] = {}
    channel_dir = root / "channels"
    files = sorted(channel_dir.glob("*.yaml")) if channel_dir.is_dir() else []
    for path in files:
        config = parse(channel_spec(registry), path)
        if config is INVALID:
            continue
        name = config.name or path.stem
        shown = str(path.relative_to(root))
        if name in channels:
            errors.append(
                ConfigError(
                    f"channel '{name}' is also defined in {channels[name].file}",
                    file=shown,
                    path="name",
                )
            )
            continue
        channels[name] = ChannelDef(name, shown, config)
    if settings is not INVALID and settings.channels is not None:
        for i, name in enumerate(settings.channels):
            if name not in channels:
                errors.append(
                    ConfigError(
                        f"no channel '{name}' in channels/ (have: {', '.join(channels)})",
                        file="routes.yaml",
                        path=f"channels[{i}]",
                    )
                )
        channels = {n: c for n, c in channels.items() if n in settings.channels}
    extras: dict[str, Any] = {}
    if settings is not INVALID:
        channels = _wire_listeners(settings, channels, errors)
        for domain in registry.domains():
            loaded, problems = domain.load(root, env, settings)
            extras.update(loaded)
            errors += problems
    errors += _source_checks(channels, registry)
    if settings is not INVALID:
        errors += observability.check_project(settings, channels, root, error_at)
    if errors:
        raise LintFailed(errors)
    return Project(root, settings, channels, mappings, seen, extras, content_version(root))


def content_version(root: Path) -> str:
    """A short hash of what the configuration says (routes.yaml, channels/, mappings/), the
    same on every node that has the same files."""
    digest = hashlib.sha256()
    for rel in sorted(fingerprint(root)):
        try:
            data = (root / rel).read_bytes()
        except OSError:  # removed while we read: the next reload sees it
            continue
        digest.update(rel.encode() + b"\0" + data + b"\0")
    return digest.hexdigest()[:12]


def error_at(where: str, path: str, message: str) -> ConfigError:
    """A ConfigError at a ``file:line:col`` recorded on a parsed config."""
    file, _, rest = where.partition(":")
    line, _, col = rest.partition(":")
    return ConfigError(
        message,
        file=file,
        line=int(line) if line.isdigit() else None,
        column=int(col) if col.isdigit() else None,
        path=path,
    )


def _source_checks(channels: dict[str, ChannelDef], registry: Registry) -> list[ConfigError]:
    """Checks that span channels, by the source factories that define ``check_project(channels)``
    (several ``fhir_http`` channels sharing one port must not mount the same base)."""
    errors: list[ConfigError] = []
    names = {d.config.source.name for d in channels.values() if d.config.source is not None}
    for name in sorted(names):
        check = getattr(registry.get("source", name).factory, "check_project", None)
        if check is not None:
            errors += check(channels)
    return errors


def _wire_listeners(
    settings: Any, channels: dict[str, ChannelDef], errors: list[ConfigError]
) -> dict[str, ChannelDef]:
    """Check each route's channel; routed channels take the listener's codec."""
    names: dict[str, int] = {}
    fed_by: dict[str, str] = {}
    for i, listener in enumerate(settings.listeners):
        base = f"listeners[{i}]"
        if listener.name in names:
            errors.append(
                error_at(
                    listener.positions["name"], f"{base}.name", f"listener '{listener.name}' twice"
                )
            )
        names[listener.name] = i
        if listener.source.name == "fhir_http":
            errors.append(
                error_at(
                    listener.positions["source"],
                    f"{base}.source",
                    "expected a source that a listener can share (mllp, dropfolder, ...) "
                    "(got fhir_http): each FHIR channel declares `fhir_http` itself, and "
                    "channels with the same `listen` share one port",
                )
            )
        for j, route in enumerate(listener.routes):
            path = f"{base}.routes[{j}].channel"
            defn = channels.get(route.channel)
            if defn is None:
                errors.append(
                    error_at(
                        route.positions["channel"],
                        path,
                        f"no channel '{route.channel}' in channels/ (have: {', '.join(channels)})"
                        f"{did_you_mean(route.channel, channels)}",
                    )
                )
                continue
            cfg = defn.config
            if cfg.source is not None:
                errors.append(
                    error_at(
                        route.positions["channel"],
                        path,
                        f"channel '{route.channel}' has its own source ({defn.file}); "
                        "a routed channel must not declare `source:`",
                    )
                )
                continue
            other = fed_by.get(route.channel)
            if other is not None and other != listener.name:
                errors.append(
                    error_at(
                        route.positions["channel"],
                        path,
                        f"channel '{route.channel}' is also fed by '{other}'",
                    )
                )
                continue
            fed_by[route.channel] = listener.name
            codec = listener.codec
            if cfg.codec is not None and (codec is None or cfg.codec.name != codec.name):
                errors.append(
                    error_at(
                        cfg.codec.where,
                        "codec",
                        f"expected the codec of listener '{listener.name}' "
                        f"({codec.name if codec else 'raw'}) (got {cfg.codec.name})",
                    )
                )
                continue
            if cfg.codec is None and codec is not None:
                channels[route.channel] = dataclasses.replace(
                    defn, config=dataclasses.replace(cfg, codec=codec)
                )
    return channels
