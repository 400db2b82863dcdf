"""The layering of docs/architecture.md, read from the source itself (ast over engine/ and
transforms/; every import counts, the ones inside functions too).

- no import cycle between our modules;
- the kernel (errors, model, spec, interfaces, registry, resources, uploads, sqldialect) imports nothing of
  ours but the kernel;
- the store, the pipeline and the runtime import no domain;
- the X12 standard (engine/x12) imports no domain, config, channel, component, store or runtime;
- no component (a module or package right under engine/sources or engine/destinations)
  imports another component, and nothing below the components (net, codecs, sandbox, the SFTP
  server, the runner) imports one;
- a domain imports no runtime, store module, channel or component;
- transforms are plain Python: no Twisted, no runtime, no store.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
KERNEL = {
    "engine.errors",
    "engine.model",
    "engine.spec",
    "engine.interfaces",
    "engine.registry",
    "engine.resources",
    "engine.uploads",
    "engine.coordination",  # leases and the upload registry nodes share
    "engine.sqldialect",  # SQLite's SQL as PostgreSQL's: the store's and the domains' schemas
    "engine._version",
    "engine",
}
PIPELINE = {
    "engine.channel",
    "engine.router",
    "engine.filters",
    "engine.transforming",
    "engine.responder",
    "engine.delivery",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def our_modules() -> dict[str, Path]:
    files = [*(ROOT / "engine").rglob("*.py"), *(ROOT / "transforms").rglob("*.py")]
    return {module_name(p): p for p in files}


def imported(path: Path, modules: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """Our modules that ``path`` imports (the longest known prefix of each name), with lines."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = (
        module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    )
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")
                base = ".".join(up[: len(up) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                yield name, node.lineno


def graph() -> dict[str, dict[str, int]]:
    modules = our_modules()
    out: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        for target, line in imported(path, modules):
            if target != name and not name.startswith(target + "."):  # a package's own init
                edges.setdefault(target, line)
        out[name] = edges
    return out


GRAPH = graph()


def within(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def offences(sources: Iterator[str] | list[str], forbidden: Any) -> list[str]:
    found = []
    for name in sources:
        for target, line in GRAPH[name].items():
            if forbidden(name, target):
                found.append(f"{GRAPH_FILES[name]}:{line}: {name} imports {target}")
    return sorted(found)


GRAPH_FILES = {name: path.relative_to(ROOT) for name, path in our_modules().items()}


def component_of(name: str) -> str | None:
    """``engine.sources.fhir_http.rest`` -> ``engine.sources.fhir_http``; None if not one."""
    parts = name.split(".")
    if len(parts) >= 3 and parts[:2] in (["engine", "sources"], ["engine", "destinations"]):
        return ".".join(parts[:3])
    return None


def cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read_from_the_whole_tree() -> None:
    """The checks below look at every module (a guard against a reader that finds nothing)."""
    assert len(GRAPH) > 80
    assert "engine.store.sqlite" in GRAPH["engine.runtime.engine"] or any(
        within(t, "engine.store") for t in GRAPH["engine.runtime.engine"]
    )


def test_no_import_cycle() -> None:
    assert cycles() == []


def test_the_kernel_imports_only_the_kernel() -> None:
    kernel = [n for n in GRAPH if n in KERNEL]
    assert offences(kernel, lambda _n, t: t not in KERNEL) == []


# What the spine may stand on: nothing that knows a business domain, the X12 business or a
# component (``engine.sources`` itself holds the sources' shared contracts).
SPINE_MAY_IMPORT = (
    "engine.store",
    "engine.runtime",
    "engine.codecs",
    "engine.config",
    "engine.net",
    "engine.sftp",
    "engine.mappings",
    "engine.templating",
    "engine.uom",
    "engine.udi",
)


def test_the_store_the_pipeline_and_the_runtime_import_no_domain() -> None:
    """Nor anything else outside the spine's own floor: a domain plugs in through the registry
    (``engine.service`` is where the runtime lived before ``engine.runtime``)."""
    spine = [
        n
        for n in GRAPH
        if within(n, "engine.store", "engine.runtime", "engine.service") or n in PIPELINE
    ]
    store = [n for n in spine if within(n, "engine.store")]

    def outside(_name: str, target: str) -> bool:
        return not (
            target in KERNEL
            or target in PIPELINE
            or target in ("engine.router", "engine.sources")
            or within(target, *SPINE_MAY_IMPORT)
        )

    assert offences(spine, outside) == []
    assert offences(store, lambda _n, t: not (t in KERNEL or within(t, "engine.store"))) == []
    assert offences(spine, lambda _n, t: within(t, "engine.domains", "transforms")) == []


@pytest.mark.parametrize(
    "layer",
    [
        "engine.domains",
        "engine.config",
        "engine.channel",
        "engine.sources",
        "engine.destinations",
        "engine.store",
        "engine.runtime",
        "transforms",
    ],
)
def test_the_x12_standard_imports_no(layer: str) -> None:
    x12 = [n for n in GRAPH if within(n, "engine.x12")]
    assert offences(x12, lambda _n, t: within(t, layer)) == []


def test_no_component_imports_another_component() -> None:
    def crosses(name: str, target: str) -> bool:
        mine, theirs = component_of(name), component_of(target)
        return theirs is not None and mine is not None and mine != theirs

    assert offences(list(GRAPH), crosses) == []


def test_nothing_below_the_components_imports_one() -> None:
    below = [
        n
        for n in GRAPH
        if within(n, "engine.net", "engine.codecs", "engine.sandbox", "engine.sftp", "engine.x12")
        or n in KERNEL
        or n in ("engine.runner", "engine.mappings", "engine.uom", "engine.udi")
    ]
    assert offences(below, lambda _n, t: component_of(t) is not None) == []


def test_a_domain_imports_no_runtime_store_channel_or_component() -> None:
    domains = [n for n in GRAPH if within(n, "engine.domains")]
    assert (
        offences(
            domains,
            lambda _n, t: (
                within(t, "engine.runtime", "engine.store", "engine.channel")
                or component_of(t) is not None
            ),
        )
        == []
    )


def test_transforms_are_plain_python() -> None:
    shipped = [n for n in GRAPH if within(n, "transforms")]
    assert offences(shipped, lambda _n, t: within(t, "engine.runtime", "engine.store")) == []
    twisted = []
    for name in shipped:
        tree = ast.parse(Path(ROOT / GRAPH_FILES[name]).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            mods = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            twisted += [f"{name} imports {m}" for m in mods if m.split(".")[0] == "twisted"]
    assert twisted == []
