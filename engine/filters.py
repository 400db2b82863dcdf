"""Built-in filters: a message that fails any filter is stored with status ``filtered``."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import yaml

from engine.codecs.base import Parsed
from engine.registry import filter_
from engine.spec import Context, Field, ListOf, Spec, Str

Predicate = Callable[[Parsed], bool]

MESSAGE_TYPE_SPEC = Spec(
    "message_type",
    [Field("any_of", ListOf(Str(), min_items=1, scalar_ok=True), description="Types to keep.")],
    description=(
        "Keep messages whose type is one of `any_of` (HL7: MSH-9 as `DFT^P03`; "
        "JSON: the codec's `type_field`). `DFT` alone matches every DFT event."
    ),
    example="filter:\n  - message_type: {any_of: [DFT^P03, DFT^P11]}",
)


@filter_("message_type", MESSAGE_TYPE_SPEC)
def message_type(options: Any) -> Predicate:
    wanted = set(options.any_of)

    def check(msg: Parsed) -> bool:
        mtype = msg.message_type or ""
        return mtype in wanted or mtype.split("^")[0] in wanted

    return check


def _check_field(config: Any, ctx: Context, node: yaml.Node, path: str) -> None:
    given = [n for n in ("equals", "any_of", "matches", "exists") if getattr(config, n) is not None]
    if len(given) != 1:
        ctx.error(
            node,
            path,
            "expected exactly one of equals, any_of, matches, exists "
            f"(got {', '.join(given) or 'none'})",
            code="missing_field",
        )
    if config.matches is not None:
        try:
            re.compile(config.matches)
        except re.error as exc:
            ctx.error(node, f"{path}.matches", f"expected a regular expression ({exc})")


FIELD_SPEC = Spec(
    "field",
    [
        Field("path", Str(), description="Field path: HL7 `MSH-11`, `PV1-2.1`; JSON `status`."),
        Field("equals", Str(), None, "Keep when the field equals this text."),
        Field("any_of", ListOf(Str(), min_items=1), None, "Keep when the field is one of these."),
        Field("matches", Str(), None, "Keep when the field matches this regular expression."),
        Field("exists", Str(pattern="true|false", hint="true or false"), None, "Keep when set."),
    ],
    description="Keep messages by one field's value. Give exactly one condition.",
    example="filter:\n  - field: {path: MSH-11, equals: P}",
    check=_check_field,
)


@filter_("field", FIELD_SPEC)
def field(options: Any) -> Predicate:
    pattern = re.compile(options.matches) if options.matches is not None else None

    def check(msg: Parsed) -> bool:
        value = msg.get(options.path)
        text = None if value is None else str(value)
        if options.exists is not None:
            return (text not in (None, "")) == (options.exists == "true")
        if text is None:
            return False
        if options.equals is not None:
            return text == options.equals
        if options.any_of is not None:
            return text in options.any_of
        return bool(pattern and pattern.search(text))

    return check
