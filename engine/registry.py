"""Named components (sources, codecs, filters, transforms, destinations, domains) and their
specs.

Built-ins register on import of their modules; third-party plugins come in through the
``engine.<kind>s`` entry-point groups of ``setup.cfg`` (``engine.transforms``, ...), each entry
pointing at a module whose import registers its components. Every registration is checked
against its kind's contract in :mod:`engine.interfaces`: a factory must take the keywords the
runtime passes; a domain must have what :class:`~engine.interfaces.Domain` names.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.interfaces import COMPONENT_KEYWORDS, Domain
from engine.spec import Spec

KINDS = ("source", "codec", "filter", "transform", "destination", "domain")


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
        check_contract(kind, name, factory)
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

    def domains(self) -> list[Domain]:
        """The registered domains, by name."""
        self.load()
        return [r.factory() for r in sorted(self._items["domain"].values(), key=lambda r: r.name)]

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
    "engine.destinations.soap",
    "engine.destinations.oracle_fusion",
    "engine.destinations.sap_s4hana",
    "engine.destinations.workday",
    "engine.domains.ledger.domain",
    "engine.domains.procurement.domain",
    "transforms",
)

REGISTRY = Registry()


def check_contract(kind: str, name: str, factory: Any) -> None:
    """Refuse a registration that breaks its kind's contract (:mod:`engine.interfaces`)."""
    if not callable(factory):
        raise TypeError(f"{kind} '{name}': expected a callable factory (got {factory!r})")
    if kind == "domain":
        made = factory()
        if not isinstance(made, Domain):
            wanted = [n for n in ("name", "spec", "bind", "roles", "jobs") if not hasattr(made, n)]
            raise TypeError(
                f"domain '{name}': expected an engine.interfaces.Domain (missing: "
                f"{', '.join(wanted) or 'a method of the protocol'})"
            )
        if made.name != name:
            raise TypeError(f"domain '{name}': its name attribute is {made.name!r}")
        return
    wanted = COMPONENT_KEYWORDS[kind]
    if not wanted:
        return
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return  # a builtin or C callable: nothing to read
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    missing = [k for k in wanted if k not in params]
    if missing:
        raise TypeError(
            f"{kind} '{name}': the factory must take the keywords "
            f"{', '.join(wanted)} (missing: {', '.join(missing)})"
        )


def register_domain(domain: Any) -> Any:
    """Register a business domain object (see :class:`engine.interfaces.Domain`)."""
    REGISTRY.register("domain", domain.name, domain.spec, lambda: domain)
    return domain


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
