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


def is_project(root: Path) -> bool:
    """True when ``root`` holds a Wharf project: a ``routes.yaml`` or a ``channels/`` folder."""
    return (root / "routes.yaml").is_file() or (root / "channels").is_dir()


def not_a_project(root: Path) -> str:
    """What to tell a person who pointed a command at a folder that is not a project."""
    return (
        f"{root} is not a Wharf project (expected a routes.yaml or a channels/ folder there); "
        "run the command in the project folder or give --root DIR"
    )


def store_path(root: Path, env: Mapping[str, str] | None = None) -> Path:
    """The store file of the project at ``root``: routes.yaml's ``store``, relative to the
    root; ``var/wharf.db`` when routes.yaml names none. A ``store`` value that does not
    parse is a :class:`LintFailed` at its file:line:column."""
    env = os.environ if env is None else env
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
    return root / value
