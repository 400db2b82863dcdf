"""Placeholder templating shared by destinations and the SFTP uploader: ``{name}`` templates
(file names, URLs, headers) filled from a delivery (:func:`template_values`,
:func:`render_template`) and checked at lint time (:func:`check_template`)."""

from __future__ import annotations

import re
import string
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from engine.errors import DeliveryError
from engine.model import Delivery

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CORE_PLACEHOLDERS = ("message_id", "correlation_id", "idempotency_key", "channel", "destination")


def template_values(delivery: Delivery, **extra: Any) -> dict[str, Any]:
    """The placeholder values of ``delivery``: its ``meta`` keys, then the core fields
    (``message_id``, ``correlation_id``, ``idempotency_key``, ``channel``, ``destination``),
    then ``extra``. Core fields win over meta keys of the same name."""
    values: dict[str, Any] = dict(delivery.meta)
    values.update(
        message_id=delivery.message_id,
        correlation_id=delivery.correlation_id,
        idempotency_key=delivery.idempotency_key,
        channel=delivery.channel,
        destination=delivery.destination,
    )
    values.update(extra)
    return values


class _TemplateFormatter(string.Formatter):
    """``str.format`` limited to plain names: no attribute or index access, no positionals."""

    def __init__(self, what: str, quote: Callable[[str], str] | None) -> None:
        self.what = what
        self.quote = quote

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        if not _NAME.fullmatch(field_name):
            raise DeliveryError(
                f"{self.what}: placeholder {{{field_name}}} is not allowed "
                f"(expected a plain name such as {{message_id}})",
                retryable=False,
            )
        if field_name not in kwargs:
            known = ", ".join(sorted(kwargs))
            raise DeliveryError(
                f"{self.what}: unknown placeholder {{{field_name}}} (expected one of: {known})",
                retryable=False,
            )
        return kwargs[field_name], field_name

    def format_field(self, value: Any, format_spec: str) -> str:
        text = format(value, format_spec) if format_spec else str(value)
        return self.quote(text) if self.quote is not None else text


def render_template(
    template: str,
    values: Mapping[str, Any],
    *,
    what: str,
    quote: Callable[[str], str] | None = None,
) -> str:
    """Substitute ``{name}`` placeholders of ``template`` from ``values``.

    ``what`` names the template in errors (``"url"``, ``"header 'X-Site'"``). ``quote`` is
    applied to each substituted value (e.g. percent-encoding for URLs). An unknown placeholder
    or a malformed template is a permanent :class:`DeliveryError` naming it.
    """
    formatter = _TemplateFormatter(what, quote)
    try:
        return formatter.vformat(template, (), dict(values))
    except (ValueError, IndexError, KeyError) as e:
        raise DeliveryError(f"{what}: bad template {template!r} ({e})", retryable=False) from e


def check_template(template: str) -> str | None:
    """A config-time check of a template's syntax: ``None`` when fine, else the problem."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        return f"is not a valid template ({e}; write literal braces as '{{{{' and '}}}}')"
    for _, name, _, _ in parsed:
        if name is not None and not _NAME.fullmatch(name):
            return (
                f"placeholder {{{name}}} is not allowed (expected a plain name such as "
                "{message_id})"
            )
    return None


def url_quote(text: str) -> str:
    """Percent-encode one substituted URL value (every reserved character included)."""
    return urllib.parse.quote(text, safe="")
