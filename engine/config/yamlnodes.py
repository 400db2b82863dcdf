"""YAML loaded as a node tree that keeps every node's line and column."""

from __future__ import annotations

from pathlib import Path

import yaml

from engine.config.text import decode
from engine.errors import ConfigError


def compose_file(path: Path, shown: str) -> yaml.Node | None:
    """Compose ``path`` with the safe loader; a syntax error becomes a ConfigError at its mark."""
    try:
        text = decode(path.read_bytes(), shown, "utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror}", file=shown) from exc
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        col = mark.column + 1 if mark else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(
            f"YAML syntax error: {problem}", file=shown, line=line, column=col, code="syntax"
        ) from exc


def empty_mapping(mark: yaml.Mark | None = None) -> yaml.MappingNode:
    return yaml.MappingNode("tag:yaml.org,2002:map", [], mark)


def mapping_get(node: yaml.Node, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if k.value == key:
                return v
    return None
