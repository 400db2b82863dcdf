"""The console's JSON API under ``/api/``, described by ``openapi.json`` (served at
``/api/openapi.json``). The same data and the same actions as the pages: a session cookie from
``POST /login`` (or ``POST /api/login``), and the session's CSRF token in ``X-CSRF-Token`` on
every POST. Errors are ``{"error": text}`` with the status."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from engine.web import actions, pages, paging
from engine.web.actions import Refused
from engine.web.console import Console, Ctx, Response, json_response


def register(console: Console) -> None:
    r = console.route
    r("GET", "/api/openapi.json", "public", api=True)(openapi)
    r("POST", "/api/login", "public", api=True)(login)
    r("GET", "/api/me", None, api=True)(me)
    r("GET", "/api/channels", "integration", api=True)(channels)
    r("POST", "/api/channels/{channel}/{destination}/pause", "pause", api=True)(pause)
    r("POST", "/api/channels/{channel}/{destination}/resume", "pause", api=True)(resume)
    r("GET", "/api/messages", "messages", api=True)(messages)
    r("GET", "/api/messages/{mid}", "messages", api=True)(message)
    r("POST", "/api/messages/{mid}/replay", "replay", api=True)(replay)
    r("GET", "/api/work-items", "work_items", api=True)(work_items)
    r("POST", "/api/work-items/{item}/resolve", "resolve", api=True)(resolve)
    r("GET", "/api/invoices", "finance", api=True)(invoices)
    r("GET", "/api/reconciliation", "finance", api=True)(reconciliation)
    r("POST", "/api/invoices/{invoice}/{decision}", "release", api=True)(decide_invoice)
    r("GET", "/api/audit", "audit", api=True)(audit)
    # revenue cycle: rejected charges, orphan credits (release, reject)
    r("GET", "/api/revenue", "revenue", api=True)(revenue)
    r("POST", "/api/credits/{credit}/{decision}", "credits", api=True)(decide_credit)
    # utilization and margin (the page's filters)
    r("GET", "/api/utilization", "utilization", api=True)(utilization)


def openapi_document() -> dict[str, Any]:
    return json.loads(resources.files("engine.web").joinpath("openapi.json").read_text())


async def openapi(ctx: Ctx) -> Response:
    return json_response(openapi_document())


def _body(ctx: Ctx) -> dict[str, Any]:
    """The JSON body of a POST (an empty one: {}); Refused 400 for anything but an object."""
    content = ctx.request.content
    if content is not None:
        content.seek(0)
    raw = content.read() if content is not None else b""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise Refused(400, "expected a JSON object as the body") from None
    if not isinstance(value, dict):
        raise Refused(400, f"expected a JSON object as the body (got {type(value).__name__})")
    return value


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name, "")
    if not isinstance(value, str):
        raise Refused(400, f"{name}: expected a string (got {type(value).__name__})")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate escaped in the JSON (\ud800)
        raise Refused(
            400, f"{name}: expected Unicode text (got a lone surrogate at {exc.start})"
        ) from None
    return value


async def _guard(fn: Any) -> Response:
    try:
        return json_response(await fn())
    except Refused as exc:
        return json_response({"error": str(exc)}, exc.code)
    except ValueError as exc:
        return json_response({"error": str(exc)}, 400)


async def login(ctx: Ctx) -> Response:
    try:
        body = _body(ctx)
        name, password = _text(body, "name"), _text(body, "password")
    except Refused as exc:
        return json_response({"error": str(exc)}, exc.code)
    code, error, session = await pages.log_in(ctx, name, password)
    if session is None:
        return json_response({"error": error}, code)
    p = session.principal
    return json_response({"name": p.name, "roles": p.roles, "csrf": session.csrf})


async def me(ctx: Ctx) -> Response:
    p = ctx.principal
    assert ctx.session is not None
    return json_response(
        {
            "name": p.name,
            "roles": p.roles,
            "channels": p.channels,
            "permissions": sorted(p.permissions),
            "csrf": ctx.session.csrf,
        }
    )


async def channels(ctx: Ctx) -> Response:
    data = await pages.integration_data(ctx)
    data["queue_depth"] = [{"destination": k, "queued": v} for k, v in data["queue_depth"]]
    data["throughput"]["points"] = [
        {"at": t, "messages": n} for t, n in data["throughput"]["points"]
    ]
    return json_response(data)


async def _pause(ctx: Ctx, channel: str, destination: str, paused: bool) -> Response:
    async def run() -> dict[str, Any]:
        note = _text(_body(ctx), "note")
        changed = await actions.pause(
            ctx.console, ctx.principal, channel, destination, paused, note
        )
        return {
            "channel": channel,
            "destination": destination,
            "paused": paused,
            "changed": changed,
        }

    return await _guard(run)


async def pause(ctx: Ctx, channel: str, destination: str) -> Response:
    return await _pause(ctx, channel, destination, True)


async def resume(ctx: Ctx, channel: str, destination: str) -> Response:
    return await _pause(ctx, channel, destination, False)


async def messages(ctx: Ctx) -> Response:
    from engine.message_view import message_dict

    async def run() -> dict[str, Any]:
        limit = ctx.args.get("limit", "50")
        if not limit.isdigit() or not 1 <= int(limit) <= 500:
            raise Refused(400, f"limit: expected a whole number from 1 to 500 (got {limit!r})")
        page, _ = await pages.browse(ctx)
        return {"messages": [message_dict(r) for r in page.rows], "next": page.next}

    return await _guard(run)


async def message(ctx: Ctx, mid: str) -> Response:
    return await _guard(lambda: pages.message_data(ctx, mid, ctx.args.get("body") == "1"))


async def replay(ctx: Ctx, mid: str) -> Response:
    async def run() -> dict[str, Any]:
        dest = _text(_body(ctx), "destination") or None
        return await actions.replay(ctx.console, ctx.principal, mid, dest)

    return await _guard(run)


async def work_items(ctx: Ctx) -> Response:
    status = ctx.args.get("status", "open")
    if status not in ("open", "closed", "resolved", "all"):
        return json_response(
            {"error": f"status: expected open, closed, resolved or all (got {status!r})"}, 400
        )
    return await _guard(lambda: pages.work_item_data(ctx))


async def resolve(ctx: Ctx, item: str) -> Response:
    async def run() -> dict[str, Any]:
        note = _text(_body(ctx), "note")
        return await actions.resolve(ctx.console, ctx.principal, _id(item), note)

    return await _guard(run)


async def invoices(ctx: Ctx) -> Response:
    return json_response(await pages.finance_data(ctx))


async def reconciliation(ctx: Ctx) -> Response:
    return await _guard(lambda: pages.reconciliation_data(ctx))


async def decide_invoice(ctx: Ctx, invoice: str, decision: str) -> Response:
    async def run() -> dict[str, Any]:
        if decision not in ("release", "reject"):
            raise Refused(404, f"expected release or reject (got {decision!r})")
        note = _text(_body(ctx), "note")
        return await actions.decide_invoice(
            ctx.console, ctx.principal, _id(invoice), decision, note
        )

    return await _guard(run)


async def audit(ctx: Ctx) -> Response:
    async def run() -> dict[str, Any]:
        before = paging.id_key("before", ctx.args.get("before"), "an audit row id")
        page = await ctx.console.read(ctx.console.store.audit_page, before=before)
        return {"entries": page.rows, "next": page.next}

    return await _guard(run)


def _id(text: str) -> int:
    if not text.isdigit():
        raise Refused(404, f"expected a number (got {text!r})")
    return int(text)


# -- utilization and margin --------------------------------------------------------------------
async def utilization(ctx: Ctx) -> Response:
    """The utilization page's rows as JSON: the same filters (``days``, ``by``, ``billable``)."""

    async def run() -> dict[str, Any]:
        rows = await pages.utilization_rows(ctx)
        by = ctx.args.get("by", "item") or "item"
        return {
            "by": by,
            "days": int(ctx.args.get("days") or 30),
            "billable": ctx.args.get("billable") or "all",
            "columns": pages.utilization_columns(by),
            "rows": rows,
        }

    return await _guard(run)


# -- revenue cycle -----------------------------------------------------------------------------
async def revenue(ctx: Ctx) -> Response:
    """The revenue-cycle page's data: unbilled usage, rejected charges, implants missing
    lot/serial and held (orphan) credits of the person's channels."""
    return json_response(await pages.revenue_data(ctx))


async def decide_credit(ctx: Ctx, credit: str, decision: str) -> Response:
    async def run() -> dict[str, Any]:
        if decision not in ("release", "reject"):
            raise Refused(404, f"expected release or reject (got {decision!r})")
        note = _text(_body(ctx), "note")
        return await actions.decide_credit(ctx.console, ctx.principal, _id(credit), decision, note)

    return await _guard(run)
