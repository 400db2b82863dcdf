"""One message in one place, as ``wharf messages --show`` and the console show it: its row,
business keys, the answer it got, its content stages, and every delivery with attempts, URL and
the destination's answer (bodies only when asked; the caller audits the view)."""

from __future__ import annotations

from typing import Any

from engine.errors import WharfError
from engine.listing import iso


def text_of(data: bytes | None) -> str | None:
    """Stored bytes as text with the segment terminators as line ends (None stays None)."""
    if data is None:
        return None
    return data.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")


def message_dict(row: Any) -> dict[str, Any]:
    out = dict(row.__dict__)
    out["received_at"] = iso(row.received_at)
    out["updated_at"] = iso(row.updated_at)
    return out


def delivery_urls(project: Any, channel: str) -> dict[str, str]:
    """The URL template of each HTTP destination of ``channel`` in ``project`` (empty when the
    channel is gone or there is no project: the view shows what the store holds regardless)."""
    defn = project.channels.get(channel) if project is not None else None
    if defn is None:
        return {}
    urls = {}
    for dest in defn.config.destinations:
        comp = dest.component
        if getattr(comp, "name", None) == "http":
            urls[dest.name] = comp.options.url
    return urls


def delivery_url(template: str, row: dict[str, Any], message: Any) -> str:
    from engine.model import Delivery
    from engine.templating import render_template, template_values, url_quote

    delivery = Delivery(
        row["id"],
        message.id,
        message.channel,
        row["destination"],
        row["payload"],
        row["content_type"],
        row["idempotency_key"],
        message.correlation_id or message.id,
        row["order_key"],
        row["attempts"],
        row["created_at"],
        row["meta"],
    )
    try:
        return render_template(template, template_values(delivery), what="url", quote=url_quote)
    except WharfError as exc:
        return f"{template} ({exc})"


def message_view(
    store: Any, message_id: str, *, bodies: bool = False, project: Any = None
) -> dict[str, Any] | None:
    """The view of one stored message, or None when the store has no such message. With
    ``bodies`` the raw and transformed contents and every payload are included as text
    (``stages`` lists what was shown: the caller audits a ``view_body``)."""
    row = store.get_message(message_id)
    if row is None:
        return None
    keys: dict[str, list[str]] = {}
    for name, value in store.business_keys(row.id):
        keys.setdefault(name, []).append(value)
    sizes = store.content_sizes(row.id)
    deliveries = store.deliveries_for(row.id)
    urls = delivery_urls(project, row.channel) if deliveries else {}
    view: dict[str, Any] = {
        "message": message_dict(row),
        "business_keys": keys,
        "answer_to_sender": text_of(store.get_content(row.id, "response")),
        "contents": {stage: {"bytes": n} for stage, n in sizes.items()},
        # the configuration version that produced its outputs (None: processed before
        # versions were kept, or not processed yet)
        "configuration": store.config_version(row.id),
        "deliveries": [],
    }
    for d in deliveries:
        item = {
            "id": d["id"],
            "destination": d["destination"],
            "output": d["idx"],
            "status": d["status"],
            "attempts": d["attempts"],
            "next_attempt_at": iso(d["next_attempt_at"]),
            "last_error": d["last_error"],
            "idempotency_key": d["idempotency_key"],
            "order_key": d["order_key"],
            "content_type": d["content_type"],
            "payload_bytes": len(d["payload"]),
            "answer": text_of(d["response"]),
            "created_at": iso(d["created_at"]),
            "updated_at": iso(d["updated_at"]),
        }
        if d["destination"] in urls:
            item["url"] = delivery_url(urls[d["destination"]], d, row)
        if bodies:
            item["payload"] = text_of(d["payload"])
        view["deliveries"].append(item)
    view["stages"] = []
    if bodies:
        for stage in sizes:
            view["contents"][stage]["text"] = text_of(store.get_content(row.id, stage))
        view["stages"] = [*sizes, *(f"payload:{d['destination']}" for d in deliveries)]
    return view
