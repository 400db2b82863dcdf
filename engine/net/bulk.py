"""Bulk calls as destinations declare them: :func:`bulk_spec` makes the ``bulk:`` option of a
destination whose API takes several items in one call (``max_items``, ``max_wait`` and the
destination's own fields), :func:`bulk_of` the :class:`~engine.model.Bulk` the delivery worker
reads from it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from engine.model import Bulk
from engine.spec import Duration, Field, Int, Spec

__all__ = ["bulk_of", "bulk_spec"]


def bulk_spec(
    name: str,
    extra: Iterable[Field] = (),
    *,
    most: int,
    description: str,
    example: str = "",
) -> Spec:
    """The ``bulk:`` spec of destination ``name``; ``most`` is the API's own item cap."""
    return Spec(
        f"{name}_bulk",
        [
            Field(
                "max_items",
                Int(1, most),
                min(50, most),
                f"Items in one call at most (the API takes up to {most}).",
                20,
            ),
            Field(
                "max_wait",
                Duration(),
                0.2,
                "How long the first item waits for others before a call goes with what it has.",
                "500ms",
            ),
            *extra,
        ],
        description=description,
        example=example,
    )


def bulk_of(config: Any) -> Bulk | None:
    """The worker's view of a parsed ``bulk:`` config (None when not configured)."""
    if config is None:
        return None
    return Bulk(max_items=int(config.max_items), max_wait=float(config.max_wait))
