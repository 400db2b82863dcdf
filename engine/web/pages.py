"""The console's pages (server-rendered HTML, Jinja2 templates in ``templates/``): login and
setup, integration, messages (browser, detail, trace), work items, supply chain, finance,
revenue cycle, utilization, audit, users. A form posts to the page's own action path and is
answered with a redirect back (a flash text in the query); a refusal is shown with its status."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

from engine.web import actions, charts, paging, views
from engine.web.actions import Refused
from engine.web.auth import COOKIE, AuthError, principal_of
from engine.web.console import Console, Ctx, Response, age_text, redirect


def register(console: Console) -> None:
    r = console.route
    r("GET", "/login", "public")(login_form)
    r("POST", "/login", "public")(login)
    r("POST", "/logout", None)(logout)
    r("GET", "/setup", "public")(setup_form)
    r("POST", "/setup", "public")(setup)
    r("GET", "/", None)(home)
    r("GET", "/integration", "integration")(integration)
    r("POST", "/channels/{channel}/{destination}/pause", "pause")(pause)
    r("POST", "/channels/{channel}/{destination}/resume", "pause")(resume)
    r("GET", "/messages", "messages")(messages)
    r("GET", "/messages/{mid}", "messages")(message)
    r("POST", "/messages/{mid}/replay", "replay")(replay)
    r("POST", "/messages/{mid}/edit", "edit_replay")(edit)
    r("GET", "/trace", "messages")(trace)
    r("GET", "/work-items", "work_items")(work_items)
    r("POST", "/work-items/{item}/resolve", "resolve")(resolve)
    r("POST", "/work-items/{item}/assign", "resolve")(assign)
    r("GET", "/supply", "supply")(supply)
    r("GET", "/finance", "finance")(finance)
    r("POST", "/invoices/{invoice}/{decision}", "release")(decide_invoice)
    r("GET", "/revenue", "revenue")(revenue)
    r("POST", "/credits/{credit}/{decision}", "credits")(decide_credit)
    r("GET", "/utilization", "utilization")(utilization)
    r("GET", "/mappings", "mappings")(mappings)
    r("GET", "/mappings/{table}", "mappings")(mapping_table)
    r("GET", "/audit", "audit")(audit)
    r("GET", "/users", "users")(users)
    r("POST", "/users", "users")(add_user)
    r("POST", "/users/{name}/{change}", "users")(change_user)


def _back(to: str, flash: str) -> Response:
    sep = "&" if "?" in to else "?"
    return redirect(f"{to}{sep}{urlencode({'flash': flash})}")


def _refused(ctx: Ctx, exc: Refused) -> Response:
    return ctx.page("refused.html", exc.code, text=str(exc))


# -- login -------------------------------------------------------------------------------------
#: The longest password bcrypt checks (in UTF-8 bytes).
MAX_PASSWORD_BYTES = 72


async def login_form(ctx: Ctx) -> Response:
    return ctx.page("login.html", next=ctx.args.get("next", "/"), error=None)


async def log_in(ctx: Ctx, name: str, password: str) -> tuple[int, str, Any]:
    """Check a login (lockout by account and address first), audit it, and on success open a
    session and set its cookie: (status, error text, the session or None)."""
    from engine.web import accounts

    console, store = ctx.console, ctx.console.store
    address = ctx.address
    size = len(password.encode("utf-8", "surrogatepass"))
    if size > MAX_PASSWORD_BYTES:  # bcrypt takes no more: no account has such a password
        return 400, f"password: expected at most {MAX_PASSWORD_BYTES} bytes (got {size})", None
    if await console.read(console.sessions.locked, name, address):
        detail = {"address": address}
        await console.write(store.audit, name, "login.locked", name, detail, time.time())
        return 429, "too many failed logins for this account from your address: try later", None
    user = await console.read(accounts.verify, store, name, password)
    if user is None:
        locked = await console.write(console.sessions.failed, name, address)
        detail = {"address": address, "locked": locked}
        await console.write(store.audit, name, "login.failed", name, detail, time.time())
        return 401, "wrong account name or password", None
    await console.write(console.sessions.succeeded, name, address)
    await console.write(store.audit, name, "login", name, {"address": address}, time.time())
    token, session = await console.write(console.sessions.open, principal_of(user), address)
    ctx.request.addCookie(
        COOKIE.encode(),
        token.encode(),
        path=b"/",
        httpOnly=True,
        sameSite="strict",
        secure=ctx.request.isSecure(),
    )
    return 200, "", session


async def login(ctx: Ctx) -> Response:
    nxt = ctx.form.get("next", "/")
    nxt = nxt if nxt.startswith("/") and not nxt.startswith("//") else "/"
    code, error, _session = await log_in(
        ctx, ctx.form.get("name", "").strip(), ctx.form.get("password", "")
    )
    if code != 200:
        return ctx.page("login.html", code, next=nxt, error=error)
    return redirect(nxt)


async def logout(ctx: Ctx) -> Response:
    from engine.web.console import _cookie

    await ctx.console.write(ctx.console.sessions.close, _cookie(ctx.request))
    await ctx.console.write(
        ctx.console.store.audit, ctx.principal.name, "logout", ctx.principal.name, {}, time.time()
    )
    ctx.request.addCookie(
        COOKIE.encode(), b"", path=b"/", httpOnly=True, sameSite="strict", max_age=b"0"
    )
    return redirect("/login")


async def setup_form(ctx: Ctx) -> Response:
    return ctx.page("setup.html", token=ctx.args.get("token", ""), error=None)


async def setup(ctx: Ctx) -> Response:
    from engine.web import accounts

    token = ctx.form.get("token", "")
    password = ctx.form.get("password", "")
    if password != ctx.form.get("again", ""):
        return ctx.page("setup.html", 400, token=token, error="the two passwords differ")
    try:
        name = await ctx.console.write(accounts.complete_setup, ctx.console.store, token, password)
    except (AuthError, ValueError) as exc:
        return ctx.page("setup.html", 400, token=token, error=str(exc))
    await ctx.console.write(ctx.console.sessions.end_all, name)
    return redirect("/login?" + urlencode({"flash": f"password set for {name}: log in"}))


async def home(ctx: Ctx) -> Response:
    nav = ctx.console.nav(ctx.principal)
    return redirect(nav[0][0] if nav else "/login")


# -- integration -------------------------------------------------------------------------------
async def integration_data(ctx: Ctx) -> dict[str, Any]:
    engine = ctx.console.engine
    live = views.live_state(engine)
    names = sorted(engine.channels)
    return await ctx.console.read(
        views.integration, ctx.console.store, names, live, ctx.principal, time.time()
    )


async def integration(ctx: Ctx) -> Response:
    data = await integration_data(ctx)
    t = data["throughput"]
    svg_throughput = charts.line(
        "messages received per 5 minutes (24h)", t["points"], t["since"], t["until"]
    )
    deepest = [(name, n) for name, n in data["queue_depth"] if n][:12]
    svg_depth = charts.bars("queue depth by destination (deepest 12)", deepest)
    return ctx.page("integration.html", data=data, throughput=svg_throughput, depth=svg_depth)


async def _pause(ctx: Ctx, channel: str, destination: str, paused: bool) -> Response:
    try:
        await actions.pause(
            ctx.console, ctx.principal, channel, destination, paused, ctx.form.get("note", "")
        )
    except Refused as exc:
        return _refused(ctx, exc)
    what = "paused" if paused else "resumed"
    return _back("/integration", f"{channel}/{destination} {what}")


async def pause(ctx: Ctx, channel: str, destination: str) -> Response:
    return await _pause(ctx, channel, destination, True)


async def resume(ctx: Ctx, channel: str, destination: str) -> Response:
    return await _pause(ctx, channel, destination, False)


# -- messages ----------------------------------------------------------------------------------
SEARCH_FIELDS = ("channel", "status", "since", "until", "key", "correlation_id", "control_id")


def search_filters(args: dict[str, str]) -> dict[str, Any]:
    """The browser's filters from query arguments (ValueError naming a bad one)."""
    from engine import model

    f: dict[str, Any] = {}
    for name in ("channel", "correlation_id", "control_id"):
        if args.get(name):
            f[name] = args[name].strip()
    status = args.get("status")
    if status:
        if status not in model.MESSAGE_STATUSES:
            raise ValueError(
                f"status: expected one of {', '.join(model.MESSAGE_STATUSES)} (got {status!r})"
            )
        f["status"] = status
    for name in ("since", "until"):
        if args.get(name):
            f[name] = _when(name, args[name])
    if args.get("key"):
        k, sep, v = args["key"].partition("=")
        if not sep or not k or not v:
            raise ValueError(
                f"key: expected NAME=VALUE, e.g. encounter=ENC-998877 (got {args['key']!r})"
            )
        f["key"], f["value"] = k.strip(), v.strip()
    return f


def _when(name: str, text: str) -> float:
    """A time as ISO 8601 (``2026-01-17T10:00``) or an age (``2h``: that long ago)."""
    from datetime import datetime

    from engine.spec import _DURATION, _DURATION_UNITS

    m = _DURATION.match(text.strip())
    if m:
        return time.time() - float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise ValueError(
            f"{name}: expected a time such as 2026-01-17T10:00 or an age such as 2h (got {text!r})"
        ) from None


async def browse(ctx: Ctx) -> tuple[Any, dict[str, Any]]:
    filters = search_filters(ctx.args)
    page = await ctx.console.read(
        ctx.console.store.browse,
        **filters,
        channels=ctx.principal.channel_scope,
        after=ctx.args.get("after") or None,
        limit=min(max(int(ctx.args.get("limit", "50") or 50), 1), 500),
    )
    return page, filters


async def messages(ctx: Ctx) -> Response:
    from engine import model

    try:
        page, _filters = await browse(ctx)
    except ValueError as exc:
        return ctx.page(
            "messages.html",
            400,
            rows=[],
            next=None,
            error=str(exc),
            statuses=model.MESSAGE_STATUSES,
        )
    nxt = None
    if page.next:
        keep = {k: v for k, v in ctx.args.items() if k in SEARCH_FIELDS and v}
        nxt = "/messages?" + urlencode({**keep, "after": page.next})
    return ctx.page(
        "messages.html", rows=page.rows, next=nxt, error=None, statuses=model.MESSAGE_STATUSES
    )


async def message_data(ctx: Ctx, mid: str, bodies: bool) -> dict[str, Any]:
    """The message view (the CLI's), audited as a view (``view_message``) or, with the
    bodies, a body view (``view_body``)."""
    from engine.message_view import message_view

    console, who = ctx.console, ctx.principal
    await actions.message_in_scope(console, who, mid)
    if bodies and not who.may("body"):
        raise Refused(403, f"your roles ({', '.join(who.roles)}) may not view message bodies")
    view = await console.read(
        message_view, console.store, mid, bodies=bodies, project=console.engine.project
    )
    if view is None:
        raise Refused(404, f"no message {mid!r} in the store")
    stages = view.pop("stages")
    action, detail = ("view_body", {"stages": stages}) if bodies else ("view_message", {})
    await console.write(console.store.audit, who.name, action, mid, detail, time.time())
    return view


async def message(ctx: Ctx, mid: str) -> Response:
    bodies = ctx.args.get("body") == "1"
    try:
        view = await message_data(ctx, mid, bodies)
    except Refused as exc:
        return _refused(ctx, exc)
    return ctx.page("message.html", view=view, bodies=bodies, mid=mid)


async def replay(ctx: Ctx, mid: str) -> Response:
    try:
        out = await actions.replay(ctx.console, ctx.principal, mid, ctx.form.get("destination"))
    except Refused as exc:
        return _refused(ctx, exc)
    what = "sent back to processing" if out["reprocess"] else f"{out['requeued']} requeued"
    return _back(f"/messages/{mid}", f"replayed: {what}")


async def edit(ctx: Ctx, mid: str) -> Response:
    try:
        out = await actions.edit_and_replay(
            ctx.console, ctx.principal, mid, ctx.form.get("raw", "")
        )
    except Refused as exc:
        return _refused(ctx, exc)
    lines = out["diff"].count("\n")
    return _back(f"/messages/{mid}", f"edited ({lines} diff line(s)) and sent to processing")


async def trace(ctx: Ctx) -> Response:
    key, _, value = ctx.args.get("key", "").partition("=")
    data = await ctx.console.read(
        views.trace,
        ctx.console.store,
        ctx.principal,
        key or None,
        value or None,
        ctx.args.get("correlation_id") or None,
    )
    return ctx.page("trace.html", data=data)


# -- work items --------------------------------------------------------------------------------
async def work_item_data(ctx: Ctx) -> dict[str, Any]:
    """A page of work items after the ``after`` argument (ValueError naming a bad one)."""
    after = paging.id_key("after", ctx.args.get("after"), "a work item id")
    status = ctx.args.get("status", "open")
    return await ctx.console.read(
        views.work_items,
        ctx.console.store,
        ctx.principal,
        ctx.args.get("kind") or None,
        None if status == "all" else status,
        after,
        time.time(),
    )


async def work_items(ctx: Ctx) -> Response:
    try:
        data = await work_item_data(ctx)
    except ValueError as exc:
        return _refused(ctx, Refused(400, str(exc)))
    ages = [(k["kind"], round((k["oldest_age"] or 0) / 86400, 1)) for k in data["kinds"]]
    svg_open = charts.bars(
        "open work items by kind", [(k["kind"], k["open"]) for k in data["kinds"]]
    )
    svg_age = charts.bars("oldest open item by kind (days)", ages, " d")
    nxt = None
    if data["next"]:
        keep = {k: v for k, v in ctx.args.items() if k in ("kind", "status") and v}
        nxt = "/work-items?" + urlencode({**keep, "after": data["next"]})
    return ctx.page("work_items.html", data=data, open_chart=svg_open, age_chart=svg_age, next=nxt)


async def resolve(ctx: Ctx, item: str) -> Response:
    try:
        await actions.resolve(ctx.console, ctx.principal, _int(item), ctx.form.get("note", ""))
    except Refused as exc:
        return _refused(ctx, exc)
    return _back("/work-items", f"work item {item} closed")


async def assign(ctx: Ctx, item: str) -> Response:
    try:
        out = await actions.assign(ctx.console, ctx.principal, _int(item), ctx.form.get("to", ""))
    except Refused as exc:
        return _refused(ctx, exc)
    return _back("/work-items", f"work item {item} assigned to {out['assignee']}")


def _int(text: str) -> int:
    if not text.isdigit():
        raise Refused(404, f"expected a number (got {text!r})")
    return int(text)


# -- business pages ----------------------------------------------------------------------------
def _supply(store: Any, now: float, channels: list[str] | None = None) -> dict[str, Any]:
    from engine.domains.ledger import reports as ledger
    from engine.domains.procurement import changes, desk, reports
    from engine.domains.procurement.domain import repository

    with store.reading() as rd:
        repo = repository(rd)
        unmatched = desk.unmatched_receipts(repo, older_than=0.0, now=now, channels=channels)
        return {
            "requisitions": ledger.open_requisitions(rd, channels=channels),
            "orders": reports.purchase_orders(rd, channels=channels),
            "changes": changes.changes(repo, "proposed", None, channels),
            "unmatched": unmatched,
            "unmatched_ages": views.age_buckets([r["age_days"] for r in unmatched]),
            "asn": store.work_item_page(kind="ASN_UNMATCHED", channels=channels).rows,
        }


async def supply_data(ctx: Ctx) -> dict[str, Any]:
    scope = ctx.principal.channel_scope
    return await ctx.console.read(_supply, ctx.console.store, time.time(), scope)


async def supply(ctx: Ctx) -> Response:
    data = await supply_data(ctx)
    chart = charts.bars("unmatched receipt lines by age", data["unmatched_ages"])
    return ctx.page("supply.html", data=data, chart=chart)


def _reconciliation_columns() -> list[str]:
    from engine.domains.ledger.reports import RECONCILIATION_FIGURES

    return ["period", "location", "item", "uom", *RECONCILIATION_FIGURES, "reason"]


def _reconciliation(store: Any, mappings: Any, since: float) -> dict[str, Any]:
    """The ledger's issues and returns against the ERP's postings, and (``receipts``)
    procurement's goods receipts against the ERP's receipt postings."""
    from engine.domains.ledger import reports as ledger
    from engine.domains.ledger.domain import item_cost
    from engine.domains.procurement import reports as procurement

    with store.reading() as rd:
        issues = ledger.reconciliation(rd, since, lambda item: item_cost(mappings, item))
        issues["receipts"] = procurement.receipt_reconciliation(rd, since)
        return issues


def _days(ctx: Ctx, default: int) -> float:
    """``since`` from the ``days`` argument: the start of the UTC day ``days - 1`` before
    today (the reports' running totals are by UTC day); ValueError naming a bad one."""
    days = ctx.args.get("days", str(default)) or str(default)
    if not days.isascii() or not days.isdigit() or not 1 <= int(days) <= 3660:
        raise ValueError(f"days: expected a whole number of days from 1 to 3660 (got {days!r})")
    today = int(time.time() // 86400)
    return (today - int(days) + 1) * 86400.0


#: The reconciliation's name in a refusal (see :func:`actions.sees_every_channel`).
RECONCILIATION = "inventory-to-finance reconciliation"


async def reconciliation_data(ctx: Ctx) -> dict[str, Any]:
    """Inventory-to-finance reconciliation over the last ``days`` (90) of booked usage; for
    people who see every channel (Refused 403 otherwise; ValueError naming a bad argument)."""
    actions.sees_every_channel(ctx.principal, RECONCILIATION)
    since = _days(ctx, 90)
    mappings = ctx.console.engine.project.mappings
    return await ctx.console.read(_reconciliation, ctx.console.store, mappings, since)


def _finance(store: Any, now: float, channels: list[str] | None = None) -> dict[str, Any]:
    """Held invoices, GR/IR and invoice counts of the person's channels (``channels``; None:
    every one): the vendor's inbound channel of each invoice and receipt."""
    from engine.domains.procurement import desk, reports
    from engine.domains.procurement.domain import repository

    with store.reading() as rd:
        repo = repository(rd)
        held = desk.invoices(repo, "held", channels)
        unmatched = desk.unmatched_receipts(repo, older_than=0.0, now=now, channels=channels)
        reasons: dict[str, int] = {}
        for inv in held:
            for r in inv["reasons"]:
                reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        return {
            "held": held,
            "reasons": sorted(reasons.items()),
            "counts": reports.invoice_counts(rd, channels),
            "grir": unmatched,
            "grir_ages": views.age_buckets([r["age_days"] for r in unmatched]),
            "waiting": [
                i
                for i in held
                if any(
                    r["reason"].startswith("NO_RECEIPT") or "RECEIPT" in r["reason"]
                    for r in i["reasons"]
                )
            ],
        }


async def finance_data(ctx: Ctx) -> dict[str, Any]:
    scope = ctx.principal.channel_scope
    return await ctx.console.read(_finance, ctx.console.store, time.time(), scope)


async def finance(ctx: Ctx) -> Response:
    recon: dict[str, Any] = {"rows": [], "periods": []}
    recon_note = None
    try:
        recon = await reconciliation_data(ctx)
    except ValueError as exc:
        return ctx.page("refused.html", 400, text=str(exc))
    except Refused as exc:  # a person limited to some channels: the page, without it
        if ctx.args.get("format") == "csv":
            return _refused(ctx, exc)
        recon_note = str(exc)
    if ctx.args.get("format") == "csv":
        return Response(
            200,
            views.to_csv(recon["rows"], _reconciliation_columns()),
            "text/csv; charset=utf-8",
            {"Content-Disposition": 'attachment; filename="reconciliation.csv"'},
        )
    data = await finance_data(ctx)
    chart = charts.bars("GR/IR: received, not invoiced, by age", data["grir_ages"])
    held = charts.bars("held invoices by reason", data["reasons"])
    return ctx.page(
        "finance.html",
        data=data,
        chart=chart,
        held_chart=held,
        recon=recon,
        recon_note=recon_note,
        days=ctx.args.get("days", "90"),
    )


async def decide_invoice(ctx: Ctx, invoice: str, decision: str) -> Response:
    return await _decide(ctx, actions.decide_invoice, "invoice", invoice, decision, "/finance")


async def decide_credit(ctx: Ctx, credit: str, decision: str) -> Response:
    return await _decide(ctx, actions.decide_credit, "credit", credit, decision, "/revenue")


async def _decide(ctx: Ctx, act: Any, noun: str, ident: str, decision: str, back: str) -> Response:
    """A release or reject form (``act``: its action), answered with a redirect to ``back``."""
    if decision not in ("release", "reject"):
        return _refused(ctx, Refused(404, f"expected release or reject (got {decision!r})"))
    try:
        out = await act(ctx.console, ctx.principal, _int(ident), decision, ctx.form.get("note", ""))
    except Refused as exc:
        return _refused(ctx, exc)
    return _back(back, f"{noun} {out.get(noun, ident)}: {out.get('status')}")


def _revenue(store: Any, now: float, channels: list[str] | None = None) -> dict[str, Any]:
    """Unbilled usage is what the ledger's job found chargeable and not charged in time: its
    open UNBILLED_USAGE work items (found by index, paged), not a scan of every event; work
    items, rejected charges and held credits of the person's channels only."""
    from engine.domains.ledger import reports as ledger

    unbilled = store.work_item_page(kind="UNBILLED_USAGE", limit=200, channels=channels).rows
    ages = store.work_item_ages(now, channels).get("UNBILLED_USAGE", {"open": 0})
    with store.reading() as rd:
        return {
            "unbilled": unbilled,
            "unbilled_count": ages["open"],
            "unbilled_ages": views.age_buckets([(now - u["created_at"]) / 86400 for u in unbilled]),
            "rejected": ledger.charges_in(rd, "rejected", channels=channels),
            "credits": ledger.held_credits(rd, channels=channels),
            "lot_serial": store.work_item_page(kind="MISSING_LOT_SERIAL", channels=channels).rows,
        }


async def revenue_data(ctx: Ctx) -> dict[str, Any]:
    scope = ctx.principal.channel_scope
    return await ctx.console.read(_revenue, ctx.console.store, time.time(), scope)


async def revenue(ctx: Ctx) -> Response:
    data = await revenue_data(ctx)
    chart = charts.bars("unbilled usage by age (oldest 200)", data["unbilled_ages"])
    return ctx.page("revenue.html", data=data, chart=chart)


#: The mapping table that names physicians by id (``id``, ``name``), when a project has one:
#: names are shown only from it (the ledger keeps ids; a name is PHI-adjacent, never logged).
PHYSICIANS_TABLE = "physicians"


def utilization_columns(by: str) -> list[str]:
    from engine.domains.ledger.reports import UTILIZATION_FIGURES, UTILIZATION_GROUPS

    named = ["name"] if by in ("physician", "ordering_physician") else []
    return [*UTILIZATION_GROUPS[by], *named, *UTILIZATION_FIGURES]


def _utilization(
    store: Any,
    since: float,
    by: str = "item",
    mappings: Any = None,
    billable: bool | None = None,
) -> list[dict[str, Any]]:
    from engine.domains.ledger import reports as ledger
    from engine.domains.ledger.domain import item_cost

    with store.reading() as rd:
        rows = ledger.utilization(
            rd, since, by=by, cost=lambda item: item_cost(mappings, item), billable=billable
        )
    if by in ("physician", "ordering_physician"):
        names = (
            mappings.table(PHYSICIANS_TABLE).rows if PHYSICIANS_TABLE in (mappings or ()) else {}
        )
        for r in rows:
            row = names.get(r[by])
            r["name"] = (row.get("name") if isinstance(row, dict) else row) or ""
    return rows


#: The ``billable`` argument of the utilization page and API: which usage it keeps.
BILLABLE = {"": None, "all": None, "billable": True, "non_billable": False}


def billable_filter(ctx: Ctx) -> bool | None:
    """The ``billable`` argument (ValueError naming a bad one)."""
    given = ctx.args.get("billable", "")
    if given not in BILLABLE:
        raise ValueError(f"billable: expected all, billable or non_billable (got {given!r})")
    return BILLABLE[given]


async def utilization_rows(ctx: Ctx) -> list[dict[str, Any]]:
    """Utilization rows for the page's and the API's filters (ValueError naming a bad one);
    for people who see every channel (Refused 403 otherwise)."""
    actions.sees_every_channel(ctx.principal, "utilization")
    since = _days(ctx, 30)
    by = ctx.args.get("by", "item") or "item"
    billable = billable_filter(ctx)
    mappings = ctx.console.engine.project.mappings
    return await ctx.console.read(_utilization, ctx.console.store, since, by, mappings, billable)


async def utilization(ctx: Ctx) -> Response:
    from engine.domains.ledger.reports import UTILIZATION_GROUPS

    note = None
    try:
        rows = await utilization_rows(ctx)
    except ValueError as exc:
        return ctx.page("refused.html", 400, text=str(exc))
    except Refused as exc:  # a person limited to some channels: the page, without rows
        if ctx.args.get("format") == "csv":
            return _refused(ctx, exc)
        rows, note = [], str(exc)
    by = ctx.args.get("by", "item") or "item"
    by = by if by in UTILIZATION_GROUPS or note is None else "item"
    columns = utilization_columns(by)
    if ctx.args.get("format") == "csv":
        return Response(
            200,
            views.to_csv(rows, columns),
            "text/csv; charset=utf-8",
            {"Content-Disposition": f'attachment; filename="utilization-by-{by}.csv"'},
        )
    return ctx.page(
        "utilization.html",
        rows=rows,
        columns=columns,
        by=by,
        groupings=list(UTILIZATION_GROUPS),
        days=ctx.args.get("days") or "30",
        billable=ctx.args.get("billable") or "all",
        note=note,
    )


# -- mapping tables (read-only: edits stay in git) -------------------------------------------
MISSING_MAPPING = "MISSING_MAPPING"


def _open_misses(store: Any, channels: list[str] | None) -> dict[str, int]:
    """Open MISSING_MAPPING work items by table (their subject is ``table:key``)."""
    out: dict[str, int] = {}
    for item in store.work_items_about(
        MISSING_MAPPING, status="open", limit=5000, channels=channels
    ):
        table = item["subject"].partition(":")[0]
        out[table] = out.get(table, 0) + 1
    return out


async def mappings(ctx: Ctx) -> Response:
    console = ctx.console
    misses = await console.read(_open_misses, console.store, ctx.principal.channel_scope)
    tables = views.mapping_tables(console.engine.root, console.engine.project.mappings, misses)
    return ctx.page("mappings.html", tables=tables)


async def mapping_table(ctx: Ctx, table: str) -> Response:
    console = ctx.console
    found = console.engine.project.mappings.tables.get(table)
    if found is None:
        return _refused(ctx, Refused(404, f"expected a mapping table's name (got {table!r})"))
    search = ctx.args.get("q", "")
    columns, rows, total = views.mapping_rows(found, search, 500)
    misses = await console.read(
        console.store.work_items_about,
        MISSING_MAPPING,
        f"{table}:",
        limit=50,
        channels=ctx.principal.channel_scope,
    )
    (info,) = views.mapping_tables(
        console.engine.root, type(console.engine.project.mappings)({table: found}), {}
    )
    return ctx.page(
        "mapping.html",
        table=info,
        columns=columns,
        rows=rows,
        total=total,
        search=search,
        misses=misses,
    )


# -- audit and users ---------------------------------------------------------------------------
async def audit(ctx: Ctx) -> Response:
    store = ctx.console.store
    try:
        before = paging.id_key("before", ctx.args.get("before"), "an audit row id")
    except ValueError as exc:
        return _refused(ctx, Refused(400, str(exc)))
    page = await ctx.console.read(store.audit_page, before=before)
    verified = None
    if ctx.args.get("verify") == "1":
        broken = await ctx.console.read(store.audit_break)
        count = await ctx.console.read(store.audit_count)
        verified = (
            f"{count} row(s), hash chain intact"
            if broken is None
            else f"row {broken} of {count} breaks the hash chain"
        )
    nxt = f"/audit?before={page.next}" if page.next else None
    return ctx.page("audit.html", rows=page.rows, next=nxt, verified=verified)


async def users(
    ctx: Ctx, link: str | None = None, error: str | None = None, code: int = 200
) -> Response:
    from engine.web.auth import ROLES

    rows = await ctx.console.read(ctx.console.store.users)
    return ctx.page("users.html", code, rows=rows, roles=ROLES, link=link, error=error)


async def add_user(ctx: Ctx) -> Response:
    from engine.web import accounts

    name = ctx.form.get("name", "").strip()
    roles = [r for r in ctx.form.get("roles", "").replace(",", " ").split() if r]
    channels = [c for c in ctx.form.get("channels", "*").replace(",", " ").split() if c]
    if not name:
        return await users(ctx, error="expected an account name", code=400)
    try:
        token = await ctx.console.write(
            accounts.issue_setup,
            ctx.console.store,
            name,
            actor=ctx.principal.name,
            ttl=ctx.console.config.setup_link_ttl,
            roles=roles,
            channels=channels,
            create=True,
        )
    except (AuthError, ValueError) as exc:
        return await users(ctx, error=str(exc), code=400)
    return await users(ctx, link=_setup_link(ctx, token))


def _setup_link(ctx: Ctx, token: str) -> str:
    base = ctx.console.config.public_url
    if not base:
        host = ctx.request.getHeader(b"host") or "127.0.0.1"
        scheme = "https" if ctx.request.isSecure() else "http"
        base = f"{scheme}://{host}"
    return f"{base.rstrip('/')}/setup?token={token}"


async def change_user(ctx: Ctx, name: str, change: str) -> Response:
    from engine.web import accounts

    console, actor = ctx.console, ctx.principal.name
    try:
        if change in ("disable", "enable"):
            await console.write(
                accounts.set_disabled, console.store, name, change == "disable", actor=actor
            )
            await console.write(console.sessions.end_all, name)
            return _back("/users", f"{name}: {change}d")
        if change == "reset":
            token = await console.write(
                accounts.issue_setup,
                console.store,
                name,
                actor=actor,
                ttl=console.config.setup_link_ttl,
            )
            await console.write(console.sessions.end_all, name)
            return await users(ctx, link=_setup_link(ctx, token))
    except AuthError as exc:
        return await users(ctx, error=str(exc), code=404)
    return await users(ctx, error=f"expected disable, enable or reset (got {change!r})", code=404)


__all__ = ["age_text", "register"]
