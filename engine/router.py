"""Content-based routing for shared listeners (``listeners:`` in ``routes.yaml``)."""

from __future__ import annotations

from typing import Any

from engine.codecs.base import Parsed
from engine.registry import REGISTRY, Registry


class Listener:
    """A shared source's codec and ordered routes; ``pick`` returns the first matching channel."""

    def __init__(self, config: Any, registry: Registry = REGISTRY) -> None:
        self.config = config
        self.name = config.name
        if config.codec is None:
            reg = registry.get("codec", "raw")
            self.codec = reg.factory(reg.spec.defaults())
        else:
            self.codec = registry.get("codec", config.codec.name).factory(config.codec.options)
        self.routes = [
            ([registry.get("filter", f.name).factory(f.options) for f in route.when], route.channel)
            for route in config.routes
        ]

    def decode(self, raw: bytes) -> Parsed:
        return self.codec.decode(raw)

    def pick(self, parsed: Parsed) -> str | None:
        for predicates, channel in self.routes:
            if all(p(parsed) for p in predicates):
                return channel
        return None
