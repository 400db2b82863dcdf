"""``wharf``: run, lint, test, messages, replay, prune, work-items, audit, invoices, po, receipts,
token, docs, status, sandbox, demo-erp.

Every command works on the project in the current folder (``routes.yaml``, ``channels/``,
``mappings/``) unless ``--root`` says otherwise, and refuses a folder that is not a project.
The commands that only read the store (``messages``, ``status``, ``work-items``, ``audit``)
take the store's path from routes.yaml alone and import nothing of the engine's runtime, so
that they start at once. No command shows a traceback: a mistake is answered with what was
expected and what came (and a did-you-mean for names), with a non-zero exit.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, LintFailed, StoreError, WharfError

#: Message filters of ``wharf messages --status`` beyond the message statuses: messages that
#: have a delivery in that state.
DELIVERY_FILTERS = ("dead", "quarantined")
MAX_LIMIT = 1_000_000


def _project(root: Path) -> Any:
    from engine.config.project import load_project

    return load_project(root)


def _store(root: Path) -> Any:
    """The store with every domain's tables (for the commands that read a domain's tables)."""
    from engine.config.store_path import store_path
    from engine.runtime.store import open_store

    return open_store(store_path(root))


@contextlib.contextmanager
def _opened_store(root: Path) -> Iterator[Any]:
    store = _store(root)
    try:
        yield store
    finally:
        store.close()


@contextlib.contextmanager
def _read_store(root: Path) -> Iterator[Any]:
    """The store's own tables only: no registry, no domain, no Twisted (``wharf messages``,
    ``status``, ``work-items``, ``audit`` start in a fraction of a second)."""
    from engine.config.store_path import store_path
    from engine.store import make_store

    store = make_store(store_path(root)).open()
    try:
        yield store
    finally:
        store.close()


def _default_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in the environment or the password database
        return "unknown"


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    from engine.spec import did_you_mean

    return did_you_mean(word, choices)


def _unknown(what: str, value: str, choices: Iterable[str]) -> str:
    known = sorted(set(choices))
    if not known:
        return f"unknown {what} {value!r} (the store holds none yet)"
    listed = ", ".join(known)
    return f"unknown {what} {value!r} (expected one of: {listed}){_did_you_mean(value, known)}"


def _refuse(command: str, text: str, code: int = 2) -> int:
    print(f"wharf {command}: {text}", file=sys.stderr)
    return code


def _duration(text: str) -> float:
    from engine.spec import _DURATION, _DURATION_UNITS

    m = _DURATION.match(text)
    if not m:
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 30s, 5m, 2h, 7d (got {text!r})"
        )
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def _limit(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(
            f"expected a whole number from 1 to {MAX_LIMIT:,} (got {text!r})"
        )
    return value


def _one_of(what: str, choices: Iterable[str]) -> Callable[[str], str]:
    names = tuple(choices)

    def parse(text: str) -> str:
        if text not in names:
            raise argparse.ArgumentTypeError(_unknown(what, text, names))
        return text

    parse.__name__ = what  # argparse names the type in its own messages
    return parse


def _message_status(text: str) -> str:
    from engine.model import MESSAGE_STATUSES

    return _one_of("status", (*MESSAGE_STATUSES, *DELIVERY_FILTERS))(text)


def _work_item_status(text: str) -> str:
    from engine.model import WORK_ITEM_STATUSES

    return _one_of("status", (*WORK_ITEM_STATUSES, "all"))(text)


def _prune_statuses(text: str) -> str:
    from engine.model import MESSAGE_STATUSES, NON_TERMINAL

    terminal = [s for s in MESSAGE_STATUSES if s not in NON_TERMINAL]
    for name in text.split(","):
        _one_of("status", terminal)(name.strip())
    return ",".join(name.strip() for name in text.split(","))


def _key_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(
            f"expected a business key as NAME=VALUE, e.g. encounter=ENC-998877 (got {text!r})"
        )
    return name, value


def _channel_names(root: Path) -> set[str]:
    """The channels the project's files define (a channel file's ``name:`` or its stem)."""
    import yaml

    names = set()
    for path in sorted((root / "channels").glob("*.yaml")):
        name = path.stem
        with contextlib.suppress(Exception):  # a broken file is lint's business, not ours
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
            if isinstance(doc, dict) and isinstance(doc.get("name"), str):
                name = doc["name"]
        names.add(name)
    return names


def _unknown_channel(store: Any, root: Path, channel: str) -> str | None:
    """Why ``channel`` names no channel (did-you-mean), or None when it is one (in the
    project's files or in the store's history)."""
    known = _channel_names(root) | set(store.known("channel"))
    return None if channel in known else _unknown("channel", channel, known)


def cmd_lint(args: argparse.Namespace) -> int:
    try:
        project = _project(args.root)
    except LintFailed as exc:
        for err in exc.errors:
            print(err, file=sys.stderr)
        print(f"lint: {len(exc.errors)} error(s)", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    tables = len(project.mappings.tables)
    print(f"lint: ok ({len(project.channels)} channel(s), {tables} mapping table(s))")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from engine.testing.channel_tests import run_all

    try:
        project = _project(args.root)
    except LintFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    for name in args.channels:
        if name not in project.channels:
            return _refuse("test", _unknown("channel", name, project.channels))
    if args.record:
        return _record_golden(project, args.channels)
    outcomes = run_all(project, args.channels or None, golden=True)
    if not outcomes:
        which = ", ".join(args.channels) if args.channels else "any channel"
        return _refuse("test", f"no tests to run: {which} has no tests: block", 1)
    failed = 0
    for o in outcomes:
        mark = "PASS" if o.passed else "FAIL"
        print(f"{mark} {o.channel}: {o.name}")
        for f in o.failures:
            print(f"     {o.where}: {f}")
        failed += not o.passed
    print(f"{len(outcomes) - failed} passed, {failed} failed")
    return 1 if failed else 0


def _record_golden(project: Any, names: list[str]) -> int:
    """``wharf test --record``: each test's outputs and effects as its expected file."""
    from engine.testing.golden import record

    written = 0
    for name, defn in project.channels.items():
        if names and name not in names:
            continue
        for i in range(len(defn.config.tests)):
            try:
                path = record(project, defn, i)
            except ValueError as exc:
                print(f"FAIL {name}: {defn.config.tests[i].name}: {exc}")
                return 1
            print(f"recorded {path.relative_to(project.root)}")
            written += 1
    print(f"{written} expected file(s) written: review them (git diff) before committing")
    return 0


_MESSAGE_COLUMNS = (
    ("ID", "id"),
    ("RECEIVED", "received_at"),
    ("CHANNEL", "channel"),
    ("STATUS", "status"),
    ("CONTROL ID", "control_id"),
)


def _iso(ts: float | None) -> str | None:
    from engine.listing import iso

    return iso(ts)


def _message_dict(row: Any) -> dict[str, Any]:
    from engine.message_view import message_dict

    return message_dict(row)


def cmd_messages(args: argparse.Namespace) -> int:
    from engine.listing import table

    if args.show:
        return _show_message(args)
    if args.body:
        return _refuse("messages", "--body goes with --show ID")
    status, delivery_status = args.status, None
    if status in DELIVERY_FILTERS:
        status, delivery_status = None, status
    key, value = args.key if args.key else (None, None)
    with _read_store(args.root) as store:
        now = time.time()
        rows = store.search(
            channel=args.channel,
            status=status,
            delivery_status=delivery_status,
            since=now - args.since if args.since else None,
            until=now - args.until if args.until else None,
            correlation_id=args.correlation_id,
            key=key,
            value=value,
            limit=args.limit,
        )
        if not rows:  # say so when a name is wrong, rather than "0 message(s)"
            if args.channel and (problem := _unknown_channel(store, args.root, args.channel)):
                return _refuse("messages", problem)
            if key is not None and key not in (names := store.known("business_key")):
                return _refuse("messages", _unknown("business key", key, names))
    listed = [_message_dict(r) for r in rows]
    columns = list(_MESSAGE_COLUMNS)
    if args.errors:
        for d in listed:
            d["error_text"] = f"{d['error_location']}: {d['error']}" if d["error"] else ""
        columns.append(("ERROR", "error_text"))
    table(listed, columns, noun="message(s)", as_json=args.json)
    return 0


def _project_or_none(root: Path) -> Any:
    try:
        return _project(root)
    except Exception:  # a project that does not load: the view shows what the store holds
        return None


def _show_message(args: argparse.Namespace) -> int:
    """One message in one place (engine/message_view.py). Audited: ``view_message``, or
    ``view_body`` with ``--body`` (which adds the bodies)."""
    from engine.message_view import message_view

    with _read_store(args.root) as store:
        if store.get_message(args.show) is None:
            return _refuse("messages", f"no message {args.show!r} in the store", 1)
        has_deliveries = bool(store.deliveries_for(args.show))
        project = _project_or_none(args.root) if has_deliveries else None
        view = message_view(store, args.show, bodies=args.body, project=project)
        assert view is not None
        stages = view.pop("stages")
        action = "view_body" if args.body else "view_message"
        store.audit(
            args.user, action, args.show, {"stages": stages} if args.body else {}, time.time()
        )
    print(json.dumps(view, indent=2, ensure_ascii=False, default=str))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    if args.message_id and args.channel:
        return _refuse("replay", "give a message id or --channel with --all-errors, not both")
    if not args.message_id and not (args.channel and args.all_errors):
        return _refuse("replay", "give a message id, or --channel C with --all-errors")
    with _read_store(args.root) as store:
        now = time.time()
        if args.message_id:
            if store.get_message(args.message_id) is None:
                return _refuse("replay", f"no message {args.message_id!r} in the store", 1)
            if args.destination:
                have = {d["destination"] for d in store.deliveries_for(args.message_id)}
                if args.destination not in have:
                    what = f"destination of message {args.message_id}"
                    return _refuse("replay", _unknown(what, args.destination, have))
            result = store.replay(
                args.message_id,
                destination=args.destination,
                actor=args.user,
                now=now,
                original=args.configuration == "original",
            )
            print(f"replay {args.message_id}: {result}")
            print(_replay_says(result, args.configuration))
            return 0 if (result["requeued"] or result["reprocess"]) else 1
        problem = _unknown_channel(store, args.root, args.channel)
        if problem:
            return _refuse("replay", problem)
        if args.destination and args.destination not in (have := store.known("destination")):
            return _refuse("replay", _unknown("destination", args.destination, have))
        # Oldest first, so that a key's deliveries go out again in their original order.
        rows = store.search(channel=args.channel, status="error", limit=MAX_LIMIT)
        ids = [r.id for r in reversed(rows)]
        done = 0
        original = args.configuration == "original"
        for i, mid in enumerate(ids, 1):
            r = store.replay(
                mid, destination=args.destination, actor=args.user, now=now, original=original
            )
            done += bool(r["requeued"] or r["reprocess"])
            if i % 100 == 0 or i == len(ids):
                print(f"\rreplayed {i}/{len(ids)}", end="", file=sys.stderr)
        print(file=sys.stderr)
        print(f"replay: {done} message(s) of channel {args.channel} queued again")
        which = "as originally processed" if original else "with the current configuration"
        print(f"replay: messages run again are processed {which}")
        return 0


def _replay_says(result: dict[str, Any], asked: str) -> str:
    """Which configuration a replay runs with, in words."""
    if result["requeued"]:
        return "replay: its deliveries go out again as they were produced"
    if not result["reprocess"]:
        return "replay: nothing to run again"
    said = result.get("configuration", "current")
    if said.startswith("original"):
        return f"replay: processed again as originally processed (configuration {said[10:-1]})"
    if asked == "original":
        return (
            "replay: no configuration version was recorded for it: processed again with the "
            "current configuration"
        )
    return "replay: processed again with the current configuration"


def cmd_preview(args: argparse.Namespace) -> int:
    """Replay stored messages through a candidate configuration and report what changes."""
    import tempfile

    from engine.config.store_path import store_path
    from engine.preview import report as reporting
    from engine.preview.candidate import load_candidate
    from engine.preview.impact import preview
    from engine.preview.replay import read_stored

    try:
        live = _project(args.root)
    except LintFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.channel and args.channel not in live.channels:
        return _refuse("preview", _unknown("channel", args.channel, live.channels))
    path = store_path(args.root)
    with tempfile.TemporaryDirectory(prefix="wharf-candidate-") as tmp:
        try:
            candidate, label = load_candidate(args.root, args.config, Path(tmp))
        except LintFailed as exc:
            print(f"wharf preview: the candidate configuration does not lint:\n{exc}")
            return 1
        since = time.time() - args.since if args.since else None
        messages = read_stored(path, channel=args.channel, since=since, limit=args.limit)
        impact = preview(live, candidate, messages, candidate_label=label)
    report = reporting.build(impact, show_phi=args.show_phi)
    if args.show_phi:  # patient fields shown: who saw them is on record
        with _read_store(args.root) as store:
            detail = {"candidate": label, "messages": len(messages), "channel": args.channel}
            store.audit(args.user, "preview_show_phi", str(args.root), detail, time.time())
    if args.json == "-":
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(reporting.text(report), end="")
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2, ensure_ascii=False))
    if args.html:
        Path(args.html).write_text(reporting.to_html(report), encoding="utf-8")
    return 0


def _mappings_of(root: Path, spec: str, into: Path) -> Any:
    """The mapping tables of a project folder, a mappings folder or a git ref of ``root``."""
    from engine.mappings import load_mappings
    from engine.preview.candidate import from_git

    folder = Path(spec)
    if (folder / "mappings").is_dir():
        folder = folder / "mappings"
    elif not folder.is_dir():
        from_git(root, spec, into, what=f"mappings diff {spec}")
        folder = into / "mappings"
    mappings, errors = load_mappings(folder, folder.parent)
    if errors:
        raise LintFailed(errors)
    return mappings


def cmd_mappings(args: argparse.Namespace) -> int:
    """``wharf mappings lint``: owners, change notes and the tables' agreement;
    ``wharf mappings diff A B``: row-level changes between two versions."""
    import tempfile

    from engine.config.governance import diff_tables, lint_governance, owner_and_changes

    if args.action == "lint":
        if args.versions:
            return _refuse("mappings", "lint takes no versions (it reads this project's tables)")
        try:
            project = _project(args.root)
        except LintFailed as exc:
            print(exc, file=sys.stderr)
            return 1
        problems = lint_governance(args.root, project.mappings)
        for problem in problems:
            print(problem)
        if problems:
            print(f"mappings lint: {len(problems)} problem(s)", file=sys.stderr)
            return 1
        for table in project.mappings.tables.values():
            owner, changes = owner_and_changes(args.root, table)
            print(f"{table.file}: owner {owner}; last change: {changes[-1]}")
        print(f"mappings lint: ok ({len(project.mappings.tables)} table(s))")
        return 0
    if len(args.versions) != 2:
        return _refuse("mappings", "diff takes two versions: folders or git refs (diff HEAD .)")
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        try:
            before = _mappings_of(args.root, args.versions[0], Path(a))
            after = _mappings_of(args.root, args.versions[1], Path(b))
        except ConfigError as exc:
            return _refuse("mappings", str(exc))
    changes = diff_tables(before, after)
    if args.json:
        rows = [
            {
                "table": c.table,
                "key": c.key,
                "kind": c.kind,
                "columns": [{"column": n, "before": x, "after": y} for n, x, y in c.columns],
            }
            for c in changes
        ]
        print(json.dumps(rows, indent=2, default=str))
        return 0
    for c in changes:
        print(c.text())
    counts = {k: sum(1 for c in changes if c.kind == k) for k in ("added", "removed", "changed")}
    print(", ".join(f"{n} row(s) {k}" for k, n in counts.items()))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    """Retention in short batches: the engine keeps accepting while it runs."""
    from engine.listing import duration_text
    from engine.registry import REGISTRY

    project = _project(args.root)
    settings = project.settings
    store = _store(args.root)
    try:
        rules = [(tuple(r.status), r.older_than) for r in settings.retention]
        if args.older_than:
            rules = [(tuple(args.status.split(",")), args.older_than)]
        total = 0
        for statuses, age in rules:
            n = store.prune(older_than=age, statuses=statuses, now=time.time())
            print(f"pruned {n} message(s) in {','.join(statuses)} older than {duration_text(age)}")
            total += n
        counts: dict[str, int] = {"messages": total}
        if settings.work_item_retention and not args.older_than:
            age = settings.work_item_retention
            n = store.prune_work_items(older_than=age, now=time.time())
            print(f"pruned {n} closed work item(s) older than {duration_text(age)}")
            counts["work_items"] = n
        if not args.older_than:
            for domain in REGISTRY.domains():
                n = store.prune_records(
                    lambda tx, limit, d=domain: d.prune(tx, settings, time.time(), limit)
                )
                if n:
                    print(f"pruned {n} {domain.name} record(s) past its retention")
                counts[domain.name] = n
        if not args.older_than:
            gone = store.prune_registries(time.time())
            if any(gone.values()):
                print(
                    f"pruned {gone['uploads']} SFTP upload row(s) and {gone['nodes']} node(s) "
                    "no longer needed"
                )
            counts |= {"sftp_uploads": gone["uploads"], "nodes": gone["nodes"]}
        if settings.audit_retention and not args.older_than:
            age = settings.audit_retention
            n = store.prune_audit(older_than=age, now=time.time(), actor=args.user)
            print(f"pruned {n} audit row(s) older than {duration_text(age)} (chain anchored)")
            counts["audit"] = n
        store.audit(args.user, "prune", str(args.root), {"deleted": counts}, time.time())
        return 0
    finally:
        store.close()


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply the store's missing schema migrations and every domain's (what ``wharf run`` does
    at start), on the SQLite file or the PostgreSQL database the project names (``WHARF_DB``
    first); print the versions reached."""
    store = _store(args.root)
    try:
        with store.reading() as rd:
            rows = rd.connection.execute(
                "SELECT component, MAX(version) FROM component_versions GROUP BY component "
                "ORDER BY component"
            ).fetchall()
        parts = [f"store v{store.schema_version}", *(f"{c} v{v}" for c, v in rows)]
        print(f"migrated {store.path} ({store.dialect}): {', '.join(parts)}")
        return 0
    finally:
        store.close()


def cmd_migrate_store(args: argparse.Namespace) -> int:
    """Move an installation's SQLite store into an empty PostgreSQL database (every table, the
    audit chain verified after the move); stop the engine first."""
    from engine.registry import REGISTRY
    from engine.runtime.store import open_store
    from engine.store import is_url
    from engine.store.move import move_store

    source_path = Path(args.source)
    if not source_path.is_file():
        return _refuse(
            "migrate-store", f"--from: expected a SQLite store file (got {args.source!r})"
        )
    if not is_url(args.target):
        return _refuse("migrate-store", f"--to: expected a postgresql:// URL (got {args.target!r})")
    source = open_store(source_path)
    try:
        target = open_store(args.target)
        try:
            derived = frozenset(
                t for d in REGISTRY.domains() for t in getattr(d, "derived_tables", ())
            )
            copied = move_store(source, target, derived)
            target.audit(
                args.user, "migrate-store", str(source_path), {"rows": copied}, time.time()
            )
        finally:
            target.close()
    finally:
        source.close()
    total = sum(copied.values())
    print(f"moved {total} row(s) from {source_path} to {target.path}; audit chain verified")
    for table, n in copied.items():
        print(f"  {table}: {n}")
    return 0


def cmd_vacuum(args: argparse.Namespace) -> int:
    """Give a store's free pages back at once: a full VACUUM, which holds writers off while it
    runs (stop the engine first). A store made before incremental auto-vacuum is switched to it
    here, once."""
    store = _store(args.root)
    try:
        before = store.footprint()
        store.reclaim(incremental=True)
        after = store.footprint()
        print(f"vacuumed {store.path}: {before} bytes before, {after} after")
        store.audit(
            args.user, "vacuum", str(store.path), {"before": before, "after": after}, time.time()
        )
        return 0
    finally:
        store.close()


_WORK_ITEM_COLUMNS = (
    ("ID", "id"),
    ("OPENED", "created_at"),
    ("KIND", "kind"),
    ("STATUS", "status"),
    ("MESSAGE", "message_id"),
    ("SUBJECT", "subject"),
)


def _work_item_dict(item: dict[str, Any]) -> dict[str, Any]:
    from engine.listing import iso

    return {**item, "created_at": iso(item["created_at"]), "updated_at": iso(item["updated_at"])}


def cmd_work_items(args: argparse.Namespace) -> int:
    """Work items: a list (open ones by default), one in detail, or closed by a person."""
    from engine.listing import table
    from engine.model import WORK_ITEM_KINDS

    if args.action in ("show", "close") and args.id is None:
        return _refuse("work-items", f"{args.action}: give the work item's id (from the list)")
    if args.action == "list" and args.id is not None:
        return _refuse("work-items", "give an id with show or close (wharf work-items show ID)")
    if args.action == "close" and not args.note.strip():
        return _refuse("work-items", "close: say why with --note (it goes into the audit log)")
    with _read_store(args.root) as store:
        if args.action == "close":
            item = store.close_work_item(args.id, actor=args.user, note=args.note, now=time.time())
            print(f"work item {args.id} ({item['kind']} {item['subject']}): closed")
            return 0
        if args.action == "show":
            found = store.work_item(args.id)
            if found is None:
                return _refuse("work-items", f"no work item {args.id}", 1)
            entries = [
                {**e, "at": _iso(e["at"])}
                for e in store.audit_entries(MAX_LIMIT, action="work_item.close")
                if e["target"] == str(args.id)
            ]
            view = {**_work_item_dict(found), "audit": entries}
            if args.json:
                print(json.dumps(view, indent=2, ensure_ascii=False, default=str))
                return 0
            for name in ("id", "kind", "status", "subject", "message_id", "correlation_id"):
                print(f"{name + ':':<16}{view[name] if view[name] is not None else '-'}")
            print(f"{'opened:':<16}{view['created_at']}")
            print(f"{'updated:':<16}{view['updated_at']}")
            print(f"{'means:':<16}{WORK_ITEM_KINDS.get(found['kind'], '-')}")
            print(f"{'detail:':<16}{view['detail']}")
            for e in entries:
                print(f"{'closed by:':<16}{e['actor']} at {e['at']}: {e['detail'].get('note')}")
            return 0
        kinds = set(WORK_ITEM_KINDS) | set(store.known("work_item_kind"))
        if args.kind and args.kind not in kinds:
            return _refuse("work-items", _unknown("work item kind", args.kind, kinds))
        status = None if args.status == "all" else args.status
        items = [_work_item_dict(w) for w in store.work_items(args.kind, status, args.limit)]
    noun = "work item(s)" if status is None else f"{status} work item(s)"
    table(items, _WORK_ITEM_COLUMNS, noun=noun, as_json=args.json)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """The audit log: its newest rows, or ``verify`` to check its whole hash chain."""
    from engine.listing import table

    with _read_store(args.root) as store:
        if args.action == "verify":
            count = store.audit_count()
            broken = store.audit_break()
            if broken is not None:
                print(
                    f"audit: row {broken} of {count} breaks the hash chain (a row was changed, "
                    "removed or moved at or before it)",
                    file=sys.stderr,
                )
                return 1
            print(f"audit: {count} row(s), hash chain intact")
            return 0
        rows = store.audit_entries(args.limit, action=args.action_name)
    listed = [{**e, "at": _iso(e["at"])} for e in rows]
    for e in listed:
        e["detail_text"] = json.dumps(e["detail"], ensure_ascii=False, sort_keys=True)
    columns = (
        ("ID", "id"),
        ("AT", "at"),
        ("ACTOR", "actor"),
        ("ACTION", "action"),
        ("TARGET", "target"),
        ("DETAIL", "detail_text"),
    )
    if args.json:
        for e in listed:
            del e["detail_text"]
    table(listed, columns, noun="audit row(s)", as_json=args.json)
    return 0


def cmd_invoices(args: argparse.Namespace) -> int:
    from engine.domains.procurement import desk
    from engine.domains.procurement.domain import repository
    from engine.listing import iso, table

    with _opened_store(args.root) as store:
        if args.action in ("release", "reject"):
            if args.id is None:
                print(f"invoices {args.action}: give the invoice id", file=sys.stderr)
                return 2
            now = time.time()
            if args.action == "release":
                project = _project(args.root)
                out = desk.release_invoice(
                    store, project, args.id, actor=args.user, note=args.note, now=now
                )
            else:
                out = desk.reject_invoice(store, args.id, actor=args.user, note=args.note, now=now)
            print(f"invoice {args.id} ({out['invoice']}): {out['status']}")
            return 0
        with store.reading() as rd:
            rows = desk.invoices(repository(rd), args.status)
    for r in rows:
        r["why"] = "; ".join(
            x["reason"] + (f" line {x['line']}" if x["line"] else "") for x in r["reasons"]
        )
        if r["status"] == "held" and r.get("lines_posted"):
            r["why"] += f" ({r['lines_posted']} of {r['lines']} line(s) posted to AP)"
        for when in ("at", "created_at"):
            if isinstance(r.get(when), int | float):
                r[when] = iso(r[when])
    columns = (
        ("ID", "id"),
        ("RECEIVED", "at"),
        ("PARTNER", "partner"),
        ("INVOICE", "invoice_number"),
        ("PO", "po_number"),
        ("STATUS", "status"),
        ("TOTAL", "total"),
        ("WHY", "why"),
    )
    table(rows, columns, noun="invoice(s)", as_json=args.json)
    return 0


def cmd_credits(args: argparse.Namespace) -> int:
    from engine.domains.ledger import credits
    from engine.listing import iso, table

    statuses = ("held", "released", "rejected", "all")
    if args.status not in statuses:
        print(
            f"credits: --status must be one of {', '.join(statuses)} (got {args.status!r})"
            f"{_did_you_mean(args.status, statuses)}",
            file=sys.stderr,
        )
        return 2
    with _opened_store(args.root) as store:
        if args.action in ("release", "reject"):
            if args.id is None:
                print(f"credits {args.action}: give the credit id", file=sys.stderr)
                return 2
            now = time.time()
            if args.action == "release":
                out = credits.release(
                    store, _project(args.root), args.id, actor=args.user, note=args.note, now=now
                )
            else:
                out = credits.reject(store, args.id, actor=args.user, note=args.note, now=now)
            print(f"credit {args.id} ({out['credit']}): {out['status']}")
            return 0
        held = credits.held(store, None if args.status == "all" else args.status)
    rows = [
        {
            "id": c.id,
            "at": iso(c.created_at),
            "status": c.status,
            "channel": c.channel,
            "item": c.event.item_id,
            "quantity": f"{c.event.quantity} {c.event.uom}",
            "location": c.event.location_id,
            "encounter": c.event.encounter,
            "reverses": c.reverses,
        }
        for c in held
    ]
    columns = (
        ("ID", "id"),
        ("HELD", "at"),
        ("STATUS", "status"),
        ("CHANNEL", "channel"),
        ("ITEM", "item"),
        ("QUANTITY", "quantity"),
        ("LOCATION", "location"),
        ("ENCOUNTER", "encounter"),
        ("REVERSES", "reverses"),
    )
    table(rows, columns, noun="credit(s)", as_json=args.json)
    return 0


def cmd_po(args: argparse.Namespace) -> int:
    from engine.domains.procurement import changes
    from engine.domains.procurement.domain import repository

    with _opened_store(args.root) as store:
        if args.action in ("accept", "reject"):
            if args.id is None:
                print(f"po {args.action}: give the change id (wharf po changes)", file=sys.stderr)
                return 2
            try:
                out = changes.decide_change(
                    store,
                    _project(args.root),
                    args.id,
                    args.action,
                    actor=args.user,
                    note=args.note,
                    now=time.time(),
                )
            except StoreError as exc:
                print(f"po {args.action} {args.id}: {exc}", file=sys.stderr)
                return 1
            again = out["invoices_matched_again"]
            print(
                f"change {args.id} (PO {out['po_number']} line {out['line']}): {out['status']}"
                + (f"; {again} held invoice(s) matched again" if again else "")
            )
            return 0
        status = None if args.status == "all" else args.status
        with store.reading() as rd:
            rows = changes.changes(repository(rd), status, args.po)
        for c in rows:
            proposed = (
                f"{c['quantity'] if c['quantity'] is not None else '='} {c['uom'] or ''} at "
                f"{c['unit_price'] if c['unit_price'] is not None else '='}"
            )
            when = f" ship {c['ship_date']}" if c["ship_date"] else ""
            print(
                f"{c['id']:>6}  {c['partner']:<10} PO {c['po_number']:<12} line {c['line']:<4} "
                f"{c['ack_code']:<3} ordered {c['ordered_quantity']} {c['ordered_uom']} at "
                f"{c['ordered_price']} -> {proposed}{when}  {c['status']}"
                + (f" by {c['decided_by']}" if c["decided_by"] else "")
            )
        print(f"{len(rows)} PO change(s)", file=sys.stderr)
        return 0


def cmd_receipts(args: argparse.Namespace) -> int:
    from engine.domains.procurement import desk
    from engine.domains.procurement.domain import repository
    from engine.listing import iso, table

    with _opened_store(args.root) as store:
        with store.reading() as rd:
            rows = desk.unmatched_receipts(
                repository(rd), older_than=args.older_than, now=time.time()
            )
    for r in rows:
        r["oldest"] = iso(r["oldest"])
    columns = (
        ("PO", "po_number"),
        ("LINE", "po_line"),
        ("ITEM", "item_id"),
        ("UNINVOICED", "uninvoiced"),
        ("RECEIVED", "oldest"),
        ("AGE (DAYS)", "age_days"),
    )
    table(rows, columns, noun="unmatched receipt line(s)", as_json=args.json)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Counts of messages and deliveries by status (JSON: it is read by people and scripts)."""
    with _read_store(args.root) as store:
        print(json.dumps(store.counts(), indent=2))
    return 0


def cmd_user(args: argparse.Namespace) -> int:
    """Console accounts: list, add (a one-time setup link, or --password-stdin), disable,
    enable, reset (a new setup link; the old password stops working). Audited."""
    from engine.web import accounts
    from engine.web.auth import AuthError
    from engine.web.config import ADMIN_SPEC, base_url

    if args.action != "list" and not args.name:
        return _refuse("user", f"{args.action}: give the account name")
    settings = _project(args.root).settings
    admin = settings.admin if settings.admin is not None else ADMIN_SPEC.defaults()
    with _read_store(args.root) as store:
        try:
            if args.action == "list":
                rows = [
                    {
                        "name": u["name"],
                        "roles": ",".join(u["roles"]),
                        "channels": ",".join(u["channels"]),
                        "state": "disabled"
                        if u["disabled"]
                        else ("active" if u["password_hash"] else "waiting for setup"),
                    }
                    for u in store.users()
                ]
                from engine.listing import table

                columns = (("NAME", "name"), ("ROLES", "roles"), ("CHANNELS", "channels"))
                table(rows, (*columns, ("STATE", "state")), noun="account(s)", as_json=args.json)
                return 0
            if args.action in ("disable", "enable"):
                accounts.set_disabled(store, args.name, args.action == "disable", actor=args.user)
                print(f"user {args.name}: {args.action}d")
                return 0
            if args.action == "add" and args.password_stdin:
                password = sys.stdin.readline().rstrip("\n")
                accounts.add_with_password(
                    store,
                    args.name,
                    password,
                    roles=args.role,
                    channels=args.channel,
                    actor=args.user,
                )
                print(f"user {args.name}: added ({', '.join(args.role)})")
                return 0
            token = accounts.issue_setup(
                store,
                args.name,
                actor=args.user,
                ttl=admin.setup_link_ttl,
                roles=args.role,
                channels=args.channel,
                create=args.action == "add",
            )
        except (AuthError, ValueError) as exc:
            return _refuse("user", str(exc), 1)
    print(f"user {args.name}: one-time setup link (give it to the person; it works once):")
    print(f"{base_url(admin)}/setup?token={token}")
    return 0


def cmd_docs(args: argparse.Namespace) -> int:
    from engine.docs import write_reference

    paths = write_reference(args.out)
    for p in paths:
        print(p)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """A new random bearer token (256 bits) and the SHA-256 that goes into the channel file."""
    import secrets

    from engine.tokens import token_sha256

    token = secrets.token_urlsafe(32)
    digest = token_sha256(token)
    print(f"token:  {token}")
    print(f"sha256: {digest}")
    print(f"yaml:   - {{name: {args.name}, sha256: {digest}}}")
    print(
        "Give the token to the sender over a safe channel; only its sha256 goes into the "
        "channel file (auth.tokens). Wharf keeps no copy of the token.",
        file=sys.stderr,
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from engine.runner import run

    return run(args)


def cmd_sandbox(args: argparse.Namespace) -> int:
    from engine.sandbox.__main__ import main as sandbox_main

    return sandbox_main(args.args)


def cmd_demo_erp(args: argparse.Namespace) -> int:
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from engine.demo import site

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    port = reactor.listenTCP(args.port, site(args.record), interface=args.host)
    print(f"demo ERP listening on http://{args.host}:{port.getHost().port}", flush=True)
    reactor.run()
    return 0


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON array")


#: Commands that work on a project (the others: token, docs, sandbox, demo-erp).
NEEDS_PROJECT = (
    "run",
    "lint",
    "test",
    "messages",
    "replay",
    "preview",
    "mappings",
    "prune",
    "status",
    "work-items",
    "audit",
    "invoices",
    "receipts",
    "user",
)


def build_parser() -> argparse.ArgumentParser:
    from engine._version import __version__

    p = argparse.ArgumentParser(prog="wharf", description=__doc__)
    p.add_argument("--version", action="version", version=f"wharf {__version__}")
    p.add_argument("--root", type=Path, default=Path.cwd(), help="project folder (default: .)")
    p.add_argument(
        "--user",
        default=_default_user(),
        help="name recorded in the audit log (default: your login name)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the engine")
    r.add_argument("--demo", action="store_true", help="start a sample ERP and drop the samples")
    r.add_argument("--exit-when-done", action="store_true", help="with --demo: stop when done")
    r.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="json: one JSON object per line on stdout, with channel, message_id and "
        "correlation_id on every line (what is printed for a person goes to stderr)",
    )
    r.set_defaults(fn=cmd_run)

    sub.add_parser("lint", help="check routes, channels and mappings").set_defaults(fn=cmd_lint)

    t = sub.add_parser("test", help="run the channels' tests: blocks")
    t.add_argument("channels", nargs="*")
    t.add_argument(
        "--record",
        action="store_true",
        help="write each test's outputs and effects (domains included) to channels/expected/ "
        "for later runs to compare field by field",
    )
    t.set_defaults(fn=cmd_test)

    m = sub.add_parser("messages", help="search stored messages")
    m.add_argument("--channel")
    m.add_argument(
        "--status",
        type=_message_status,
        help="received, filtered, queued, sent, error, conflict; or dead / quarantined: "
        "messages with a delivery in that state",
    )
    m.add_argument("--since", type=_duration, help="received within, e.g. 2h")
    m.add_argument("--until", type=_duration, help="received before this long ago, e.g. 30m")
    m.add_argument("--correlation-id")
    m.add_argument("--key", type=_key_value, help="business key, e.g. encounter=ENC-998877")
    m.add_argument("--limit", type=_limit, default=50, help="at most this many (default 50)")
    m.add_argument("--errors", action="store_true", help="show error text and location")
    m.add_argument(
        "--show",
        metavar="ID",
        help="one message: keys, the answer it got, contents, deliveries (audited)",
    )
    m.add_argument("--body", action="store_true", help="with --show: the bodies too (audited)")
    _json_flag(m)
    m.set_defaults(fn=cmd_messages)

    rp = sub.add_parser("replay", help="deliver or process messages again")
    rp.add_argument("message_id", nargs="?")
    rp.add_argument("--channel")
    rp.add_argument("--all-errors", action="store_true")
    rp.add_argument("--destination")
    rp.add_argument(
        "--configuration",
        choices=("current", "original"),
        default="current",
        help="a message run again through its channel: with the current configuration "
        "(default) or as originally processed (the version it was produced by)",
    )
    rp.set_defaults(fn=cmd_replay)

    mp = sub.add_parser(
        "mappings",
        help="mapping governance: lint (owners, change notes, tables that agree) or diff A B",
    )
    mp.add_argument("action", choices=("lint", "diff"))
    mp.add_argument("versions", nargs="*", help="diff: two folders or git refs (HEAD~1 .)")
    _json_flag(mp)
    mp.set_defaults(fn=cmd_mappings)

    pv = sub.add_parser(
        "preview",
        help="replay stored messages through a candidate configuration and report what changes "
        "(nothing is delivered, the live store is only read)",
    )
    pv.add_argument(
        "--config", required=True, help="the candidate: a project folder or a git ref (HEAD~1)"
    )
    pv.add_argument("--channel", help="only this channel's messages")
    pv.add_argument(
        "--since",
        type=_duration,
        default=7 * 86400.0,
        help="messages received within this long (default 7d: the messages are held in memory)",
    )
    pv.add_argument("--limit", type=_limit, help="at most this many messages, oldest first")
    pv.add_argument("--json", metavar="FILE", help="the report as JSON too ('-': only JSON)")
    pv.add_argument("--html", metavar="FILE", help="the report as an HTML page too")
    pv.add_argument(
        "--show-phi", action="store_true", help="show patient fields unmasked (audited)"
    )
    pv.set_defaults(fn=cmd_preview)

    mig = sub.add_parser(
        "migrate",
        help="apply the store's and the domains' schema migrations (SQLite or PostgreSQL)",
    )
    mig.set_defaults(fn=cmd_migrate)
    ms = sub.add_parser(
        "migrate-store",
        help="move a SQLite store into an empty PostgreSQL database (stop the engine first)",
    )
    ms.add_argument("--from", dest="source", required=True, help="the SQLite store file")
    ms.add_argument("--to", dest="target", required=True, help="a postgresql:// URL")
    ms.set_defaults(fn=cmd_migrate_store)
    vac = sub.add_parser(
        "vacuum", help="give a store's free pages back at once (stop the engine first)"
    )
    vac.set_defaults(fn=cmd_vacuum)
    pr = sub.add_parser("prune", help="apply retention rules in short batches")
    pr.add_argument("--older-than", type=_duration)
    pr.add_argument(
        "--status",
        type=_prune_statuses,
        default="sent,filtered",
        help="with --older-than: the statuses to prune, comma-separated (default sent,filtered)",
    )
    pr.set_defaults(fn=cmd_prune)

    st = sub.add_parser("status", help="message and delivery counts (JSON)")
    st.add_argument("--json", action="store_true", help="(the default: status is JSON)")
    st.set_defaults(fn=cmd_status)

    w = sub.add_parser("work-items", help="work items for a person: list, show ID, close ID --note")
    w.add_argument("action", nargs="?", choices=("list", "show", "close"), default="list")
    w.add_argument("id", nargs="?", type=int, help="work item id (from the list)")
    w.add_argument(
        "--kind",
        help="MISSING_MAPPING, CHARGE_REJECTED, UNBILLED_USAGE, INVOICE_HELD, PO_CHANGED, "
        "SENDER_REFUSED, X12_REFUSED, X12_NOT_APPLIED, ORPHAN_CREDIT, ...",
    )
    w.add_argument(
        "--status",
        type=_work_item_status,
        default="open",
        help="open (default), closed, resolved or all",
    )
    w.add_argument("--limit", type=_limit, default=1000, help="at most this many (default 1000)")
    w.add_argument("--note", default="", help="with close: why (kept in the audit log)")
    _json_flag(w)
    w.set_defaults(fn=cmd_work_items)

    au = sub.add_parser("audit", help="the audit log: list its newest rows, or verify its chain")
    au.add_argument("action", nargs="?", choices=("list", "verify"), default="list")
    au.add_argument("--action", dest="action_name", metavar="NAME", help="only this action")
    au.add_argument("--limit", type=_limit, default=50, help="at most this many (default 50)")
    _json_flag(au)
    au.set_defaults(fn=cmd_audit)

    inv = sub.add_parser("invoices", help="X12 invoices: list, release or reject held ones")
    inv.add_argument("action", nargs="?", choices=("list", "release", "reject"), default="list")
    inv.add_argument("id", nargs="?", type=int, help="invoice id (from the list)")
    inv.add_argument(
        "--status",
        type=_one_of("status", ("matched", "held", "released", "rejected", "duplicate")),
        help="with list: matched, held, released, rejected, duplicate",
    )
    inv.add_argument("--note", default="", help="why (kept in the audit log)")
    _json_flag(inv)
    inv.set_defaults(fn=cmd_invoices)
    cr = sub.add_parser(
        "credits", help="credits held for want of the line they reverse: list, release, reject"
    )
    cr.add_argument("action", nargs="?", choices=("list", "release", "reject"), default="list")
    cr.add_argument("id", nargs="?", type=int, help="credit id (from the list)")
    cr.add_argument("--status", default="held", help="with list: held, released, rejected, all")
    cr.add_argument("--note", default="", help="why (kept in the audit log)")
    cr.add_argument("--json", action="store_true", help="the list as JSON")
    cr.set_defaults(fn=cmd_credits)

    po = sub.add_parser(
        "po", help="PO changes vendors proposed in 855s: list, accept or reject (audited)"
    )
    po.add_argument("action", choices=("changes", "accept", "reject"))
    po.add_argument("id", nargs="?", type=int, help="change id (from `wharf po changes`)")
    po.add_argument(
        "--status",
        default="proposed",
        choices=("proposed", "accepted", "rejected", "superseded", "all"),
        help="with changes: which ones (default proposed)",
    )
    po.add_argument("--po", help="with changes: one PO number")
    po.add_argument("--note", default="", help="why (kept in the audit log)")
    po.set_defaults(fn=cmd_po)

    rc = sub.add_parser("receipts", help="receipts not yet invoiced (GR/IR), oldest first")
    rc.add_argument("--unmatched", action="store_true", help="(the default and only listing)")
    rc.add_argument("--older-than", type=_duration, default=0.0, help="e.g. 30d")
    _json_flag(rc)
    rc.set_defaults(fn=cmd_receipts)

    us = sub.add_parser(
        "user", help="console accounts: list, add, disable, enable, reset (one-time setup links)"
    )
    us.add_argument("action", choices=("list", "add", "disable", "enable", "reset"))
    us.add_argument("name", nargs="?")
    us.add_argument(
        "--role",
        action="append",
        default=[],
        help="with add: viewer, analyst, operator, admin, supply_chain, finance, revenue_cycle "
        "(repeat for several)",
    )
    us.add_argument(
        "--channel",
        action="append",
        default=None,
        help="with add: a channel the account may see (repeat; default every channel)",
    )
    us.add_argument(
        "--password-stdin",
        action="store_true",
        help="with add: read the password from stdin instead of printing a setup link",
    )
    _json_flag(us)
    us.set_defaults(fn=cmd_user)

    tk = sub.add_parser("token", help="make a bearer token and its sha256 for auth.tokens")
    tk.add_argument("--name", default="sender", help="the token's name in the YAML line")
    tk.set_defaults(fn=cmd_token)

    d = sub.add_parser("docs", help="generate the component reference")
    d.add_argument("--out", type=Path, default=Path("docs/reference"))
    d.set_defaults(fn=cmd_docs)

    sb = sub.add_parser(
        "sandbox",
        help="run the ERP and billing sandbox (python -m engine.sandbox --help for options)",
        add_help=False,
    )
    sb.add_argument("args", nargs=argparse.REMAINDER)
    sb.set_defaults(fn=cmd_sandbox)

    e = sub.add_parser("demo-erp", help="run the sample ERP receiver")
    e.add_argument("--host", default="127.0.0.1")
    e.add_argument("--port", type=int, default=8089)
    e.add_argument("--record", type=Path, default=Path("var/demo-erp/received.ndjson"))
    e.set_defaults(fn=cmd_demo_erp)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "sandbox":
        args.args = [*extra, *args.args]  # the sandbox parses its own options
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.root = args.root.resolve()
    if args.command in NEEDS_PROJECT:
        from engine.config.store_path import is_project, not_a_project

        if not is_project(args.root):
            return _refuse(args.command, not_a_project(args.root))
    try:
        return int(args.fn(args) or 0)
    except LintFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    except WharfError as exc:
        return _refuse(args.command, str(exc), 1)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: one line that names it; the traceback only when asked
        if os.environ.get("WHARF_DEBUG"):
            raise
        return _refuse(
            args.command,
            f"internal error: {type(exc).__name__}: {exc} (set WHARF_DEBUG=1 to see where)",
            70,
        )


if __name__ == "__main__":
    sys.exit(main())
