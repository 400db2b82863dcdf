"""What a person may change from the console, shared by its pages and its API: replay and
edit-and-replay (the CLI's replay), pause and resume, work items, held invoices (the same desk
as ``wharf invoices``), held credits (the same desk as ``wharf credits``). Each is audited by
the store in the commit that makes the change, under the person's account name; each raises
:class:`Refused` with a status and a reason. And what a person limited to some channels may
not read: the ledger's reports over every channel (:func:`sees_every_channel`)."""

from __future__ import annotations

import difflib
import time
from typing import Any

from engine.errors import StoreError, WharfError
from engine.web.auth import Principal


class Refused(WharfError):
    """An action the console refuses: ``code`` is the HTTP status."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


async def message_in_scope(console: Any, who: Principal, message_id: str) -> Any:
    row = await console.read(console.store.get_message, message_id)
    if row is None:
        raise Refused(404, f"no message {message_id!r} in the store")
    if not who.sees_channel(row.channel):
        raise Refused(403, f"channel {row.channel!r} is outside your channels")
    return row


async def replay(
    console: Any, who: Principal, message_id: str, destination: str | None
) -> dict[str, Any]:
    await message_in_scope(console, who, message_id)
    store = console.store
    try:
        out = await console.write(
            store.replay,
            message_id,
            destination=destination or None,
            actor=who.name,
            now=time.time(),
        )
    except StoreError as exc:
        raise Refused(409, str(exc)) from exc
    if not (out["requeued"] or out["reprocess"]):
        raise Refused(409, "nothing to replay: no dead or quarantined delivery, no failed step")
    return out


async def edit_and_replay(
    console: Any, who: Principal, message_id: str, raw: str
) -> dict[str, Any]:
    """Process a message that failed before delivery again from an edited body; the diff of
    the edit goes into the audit."""
    row = await message_in_scope(console, who, message_id)
    store = console.store
    old = await console.read(store.get_content, message_id, "raw")
    if old is None:
        raise Refused(409, "the message's raw body was pruned")
    old_text = old.decode("utf-8", "replace")
    new_text = raw.replace("\r\n", "\n").replace("\n", "\r") if "\r" in old_text else raw
    if new_text == old_text:
        raise Refused(400, "expected an edited body (it is the same as the stored one)")
    diff = "".join(
        difflib.unified_diff(
            old_text.replace("\r", "\n").splitlines(True),
            new_text.replace("\r", "\n").splitlines(True),
            "stored",
            "edited",
        )
    )
    try:
        await console.write(
            store.edit_and_replay,
            row.id,
            new_text.encode("utf-8"),
            diff=diff,
            actor=who.name,
            now=time.time(),
        )
    except StoreError as exc:
        raise Refused(409, str(exc)) from exc
    return {"reprocess": True, "diff": diff}


async def pause(
    console: Any, who: Principal, channel: str, destination: str, paused: bool, note: str
) -> bool:
    if not who.sees_channel(channel):
        raise Refused(403, f"channel {channel!r} is outside your channels")
    engine = console.engine
    if channel not in engine.channels:
        raise Refused(404, f"no running channel {channel!r}")
    if destination != "*" and destination not in engine._workers_of(channel):
        raise Refused(404, f"channel {channel!r} has no destination {destination!r}")
    return bool(await engine.set_paused(channel, destination, paused, actor=who.name, note=note))


async def resolve(console: Any, who: Principal, item_id: int, note: str) -> dict[str, Any]:
    item = await _work_item(console, who, item_id)
    if not note.strip():
        raise Refused(400, "expected a note saying why (it goes into the audit log)")
    try:
        await console.write(
            console.store.close_work_item, item_id, actor=who.name, note=note, now=time.time()
        )
    except StoreError as exc:
        raise Refused(409, str(exc)) from exc
    return {"id": item_id, "kind": item["kind"], "status": "closed"}


async def assign(console: Any, who: Principal, item_id: int, to: str) -> dict[str, Any]:
    await _work_item(console, who, item_id)
    to = to.strip() or who.name
    await console.write(
        console.store.assign_work_item, item_id, to, actor=who.name, now=time.time()
    )
    return {"id": item_id, "assignee": to}


async def _work_item(console: Any, who: Principal, item_id: int) -> dict[str, Any]:
    item = await console.read(console.store.work_item, item_id)
    if item is None:
        raise Refused(404, f"no work item {item_id}")
    if who.kinds is not None and item["kind"] not in who.kinds:
        raise Refused(403, f"work items of kind {item['kind']} are not your roles'")
    if who.channel_scope is not None and item.get("channel") not in who.channel_scope:
        raise Refused(403, f"work item {item_id} is outside your channels")
    return dict(item)


async def decide_invoice(
    console: Any, who: Principal, invoice_id: int, decision: str, note: str
) -> dict[str, Any]:
    """Release or reject a held invoice through the AP desk (``wharf invoices``)."""
    from engine.domains.procurement import desk

    await invoice_in_scope(console, who, invoice_id)
    return await _decide(
        console, who, (desk.release_invoice, desk.reject_invoice), invoice_id, decision, note
    )


async def _decide(
    console: Any, who: Principal, desk: tuple[Any, Any], ident: int, decision: str, note: str
) -> dict[str, Any]:
    """``desk``'s release (store, project, id) or reject (store, id), audited under the
    person's name; Refused 409 when the object's state does not allow it."""
    release, reject = desk
    store, now = console.store, time.time()
    try:
        if decision == "release":
            project = console.engine.project
            return await console.write(
                release, store, project, ident, actor=who.name, note=note, now=now
            )
        return await console.write(reject, store, ident, actor=who.name, note=note, now=now)
    except StoreError as exc:
        raise Refused(409, str(exc)) from exc


async def invoice_in_scope(console: Any, who: Principal, invoice_id: int) -> None:
    """Refused 404 when there is no such invoice, or when it came in on a channel outside the
    person's scope (its number is not confirmed to them either)."""
    from engine.domains.procurement import desk
    from engine.domains.procurement.domain import repository

    def look() -> tuple[bool, str | None]:
        with console.store.reading() as rd:
            return desk.invoice_channel(repository(rd), invoice_id)

    found, channel = await console.read(look)
    scope = who.channel_scope
    if not found or (scope is not None and channel not in scope):
        raise Refused(404, f"no invoice {invoice_id} in your channels")


async def decide_credit(
    console: Any, who: Principal, credit_id: int, decision: str, note: str
) -> dict[str, Any]:
    """Release or reject a held (orphan) credit through the credits desk (``wharf credits``)."""
    from engine.domains.ledger import credits

    await credit_in_scope(console, who, credit_id)
    return await _decide(console, who, (credits.release, credits.reject), credit_id, decision, note)


async def credit_in_scope(console: Any, who: Principal, credit_id: int) -> None:
    """Refused 404 when there is no such held credit, or when it came in on a channel outside
    the person's scope (its number is not confirmed to them either)."""
    from engine.domains.ledger.domain import repository

    def look() -> str | None:
        with console.store.reading() as rd:
            credit = repository(rd).held_credit(credit_id)
            return None if credit is None else credit.channel

    channel = await console.read(look)
    if channel is None or not who.sees_channel(channel):
        raise Refused(404, f"no held credit {credit_id} in your channels")


def sees_every_channel(who: Principal, report: str) -> None:
    """The ledger's aggregate reports (utilization, inventory-to-finance reconciliation) sum
    its running totals by day, which carry no channel (and stock and the ERP's postings are by
    location and item, shared by every channel): they are for people who see every channel.
    Refused 403, saying so, for a person limited to some."""
    scope = who.channel_scope
    if scope is not None:
        raise Refused(
            403,
            f"{report} covers every channel and your account sees only "
            f"{', '.join(scope) or 'no channel'}: ask an admin",
        )
