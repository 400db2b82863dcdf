"""Named components (sources, codecs, filters, transforms, destinations) and their specs.

Built-ins register on import of their modules; third-party plugins come in through the
``engine.<kind>s`` entry-point groups of ``setup.cfg`` (``engine.transforms``, ...), each entry
pointing at a module whose import registers its components.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.spec import Spec

KINDS = ("source", "codec", "filter", "transform", "destination")


@dataclass(frozen=True)
class Registration:
    kind: str
    name: str
    spec: Spec
    factory: Callable[..., Any]
    module: str


class Registry:
    def __init__(self) -> None:
        self._items: dict[str, dict[str, Registration]] = {k: {} for k in KINDS}
        self._loaded = False

    def register(self, kind: str, name: str, spec: Spec, factory: Callable[..., Any]) -> None:
        if kind not in self._items:
            raise ValueError(f"'kind' must be one of {', '.join(KINDS)} (got {kind!r})")
        module = getattr(factory, "__module__", "?")
        old = self._items[kind].get(name)
        if old is not None and old.module != module:
            raise ValueError(f"{kind} '{name}' is registered twice ({old.module} and {module})")
        self._items[kind][name] = Registration(kind, name, spec, factory, module)

    def get(self, kind: str, name: str) -> Registration:
        self.load()
        return self._items[kind][name]

    def names(self, kind: str) -> list[str]:
        self.load()
        return sorted(self._items[kind])

    def all(self) -> list[Registration]:
        self.load()
        return [r for k in KINDS for r in sorted(self._items[k].values(), key=lambda r: r.name)]

    def load(self) -> None:
        """Import the built-in components, the shipped transforms and entry-point plugins."""
        if self._loaded:
            return
        self._loaded = True
        for module in BUILTINS:
            importlib.import_module(module)
        for kind in KINDS:
            for ep in importlib.metadata.entry_points(group=f"engine.{kind}s"):
                importlib.import_module(ep.value.split(":")[0])


BUILTINS = (
    "engine.codecs.raw",
    "engine.codecs.hl7v2",
    "engine.codecs.fhir",
    "engine.codecs.x12",
    "engine.filters",
    "engine.sources.dropfolder",
    "engine.sources.mllp",
    "engine.sources.sftp_poll",
    "engine.sources.http_post",
    "engine.sources.fhir_http",
    "engine.destinations.http",
    "engine.destinations.file",
    "engine.destinations.mllp",
    "engine.destinations.sftp",
    "engine.destinations.x12_partner",
    "transforms",
)

REGISTRY = Registry()


def _decorator(kind: str, name: str, spec: Spec) -> Callable[[Any], Any]:
    def wrap(factory: Any) -> Any:
        REGISTRY.register(kind, name, spec, factory)
        return factory

    return wrap


def source(name: str, spec: Spec) -> Callable[[Any], Any]:
    return _decorator("source", name, spec)


def codec(name: str, spec: Spec) -> Callable[[Any], Any]:
    return _decorator("codec", name, spec)


def filter_(name: str, spec: Spec) -> Callable[[Any], Any]:
    return _decorator("filter", name, spec)


def transform(name: str, spec: Spec) -> Callable[[Any], Any]:
    """Register a transform: ``fn(message, ctx) -> body``; see :mod:`engine.transforming`."""
    return _decorator("transform", name, spec)


def destination(name: str, spec: Spec) -> Callable[[Any], Any]:
    return _decorator("destination", name, spec)
