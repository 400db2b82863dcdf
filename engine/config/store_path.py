"""Where a project is and where its store is, without loading the project.

The commands that only read the store (``wharf messages``, ``status``, ``work-items``,
``audit``) take the store file from ``routes.yaml``'s ``store`` key alone (``${VAR}`` and
``${VAR:-default}`` expanded as everywhere), so that they start without importing and
checking every channel and component.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import yaml

from engine.config.yamlnodes import compose_file, mapping_get
from engine.errors import ConfigError, LintFailed
from engine.spec import Context, Str

#: The store file when routes.yaml names none (the ``store`` field's default).
STORE_DEFAULT = "var/wharf.db"
#: The environment variable that names the store instead of routes.yaml (a SQLite file, or a
#: ``postgresql://`` URL: several nodes sharing one database).
STORE_ENV = "WHARF_DB"


def is_store_url(value: str) -> bool:
    """True when a store setting is a PostgreSQL URL rather than a file."""
    return value.startswith(("postgresql://", "postgres://"))


def resolve_store(root: Path, value: str, env: Mapping[str, str] | None = None) -> Path | str:
    """Where the store is: ``WHARF_DB`` when set, else ``value`` (routes.yaml's ``store``);
    a ``postgresql://`` URL as it is, a file relative to ``root``."""
    env = os.environ if env is None else env
    chosen = env.get(STORE_ENV) or value
    return chosen if is_store_url(chosen) else root / chosen


def is_project(root: Path) -> bool:
    """True when ``root`` holds a Wharf project: a ``routes.yaml`` or a ``channels/`` folder."""
    return (root / "routes.yaml").is_file() or (root / "channels").is_dir()


def not_a_project(root: Path) -> str:
    """What to tell a person who pointed a command at a folder that is not a project."""
    return (
        f"{root} is not a Wharf project (expected a routes.yaml or a channels/ folder there); "
        "run the command in the project folder or give --root DIR"
    )


def store_path(root: Path, env: Mapping[str, str] | None = None) -> Path | str:
    """The store of the project at ``root``: ``WHARF_DB`` when set, else routes.yaml's
    ``store``; a file relative to the root (``var/wharf.db`` when routes.yaml names none) or a
    ``postgresql://`` URL. A ``store`` value that does not parse is a :class:`LintFailed` at
    its file:line:column."""
    env = os.environ if env is None else env
    if env.get(STORE_ENV):
        return resolve_store(root, env[STORE_ENV], env)
    routes = root / "routes.yaml"
    if not routes.is_file():
        return root / STORE_DEFAULT
    node = compose_file(routes, "routes.yaml")
    if node is None:
        return root / STORE_DEFAULT
    if not isinstance(node, yaml.MappingNode):
        raise LintFailed([ConfigError("expected a mapping of settings", file="routes.yaml")])
    value_node = mapping_get(node, "store")
    if value_node is None:
        return root / STORE_DEFAULT
    ctx = Context("routes.yaml", env)
    value = Str().parse(value_node, ctx, "store")
    if ctx.errors:
        raise LintFailed(ctx.errors)
    return resolve_store(root, value, env)
