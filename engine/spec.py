"""One spec per component: validates YAML nodes into frozen configs and generates reference docs.

A :class:`Spec` lists :class:`Field` s, each with a :class:`Type`. ``Spec.parse`` walks a YAML
node tree loaded with marks (``yaml.compose``) and returns a frozen dataclass; every problem is
recorded in the :class:`Context` as a :class:`~engine.errors.ConfigError` naming
``file:line:column``, the dotted field path, what was expected and what came, with a
"did you mean" for near-misses. The same spec renders Markdown (``wharf docs``) and JSON Schema.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import yaml

from engine.errors import ConfigError

REQUIRED: Any = object()
INVALID: Any = object()

_INTERP = re.compile(r"\$(\$)|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "KiB": 1024,
    "MB": 1000**2,
    "MiB": 1024**2,
    "GB": 1000**3,
    "GiB": 1024**3,
}
_constructor = yaml.constructor.SafeConstructor()


class Context:
    """Carries the file name, the environment and the errors of one parse."""

    def __init__(
        self,
        file: str,
        env: Mapping[str, str] | None = None,
        registry: Any = None,
        base_dir: str | None = None,
    ) -> None:
        self.file = file
        self.env = os.environ if env is None else env
        self.errors: list[ConfigError] = []
        self.registry = registry
        self.base_dir = base_dir
        self.mappings: Any = None

    def error(self, node: yaml.Node | None, path: str, message: str, code: str = "invalid") -> Any:
        line = col = None
        if node is not None and node.start_mark is not None:
            line, col = node.start_mark.line + 1, node.start_mark.column + 1
        self.errors.append(
            ConfigError(message, file=self.file, line=line, column=col, path=path, code=code)
        )
        return INVALID

    def where(self, node: yaml.Node | None) -> str:
        if node is None or node.start_mark is None:
            return self.file
        return f"{self.file}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def duration_text(seconds: float) -> str:
    """Seconds written back as a duration: the largest whole unit (``8640000`` -> ``100d``,
    ``5400`` -> ``90m``), milliseconds below a second; what :class:`Duration` reads."""
    if 0 < seconds < 1:
        return f"{seconds * 1000:g}ms"
    for unit in ("d", "h", "m", "s"):
        size = _DURATION_UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _shown(node: yaml.Node) -> str:
    if isinstance(node, yaml.ScalarNode):
        if node.tag.endswith(":null"):
            return "null"
        text = node.value if len(node.value) <= 40 else node.value[:37] + "..."
        return repr(text) if node.tag.endswith(":str") else text
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    return "a list"


def interpolate(text: str, node: yaml.Node, ctx: Context, path: str) -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}``; ``$$`` is a literal dollar."""
    if "$" not in text:
        return text
    missing: list[str] = []

    def sub(m: re.Match[str]) -> str:
        if m.group(1):
            return "$"
        name, default = m.group(2), m.group(3)
        value = ctx.env.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                missing.append(name)
                return ""
            return default
        return value

    out = _INTERP.sub(sub, text)
    for name in missing:
        ctx.error(
            node,
            path,
            f"environment variable '{name}' is not set "
            f"(expected it set, or a default as '${{{name}:-value}}')",
            code="unset_variable",
        )
    return INVALID if missing else out


def scalar_value(node: yaml.Node, ctx: Context, path: str) -> Any:
    """The Python value of a scalar node after interpolation."""
    if node.tag.endswith(":str") and "$" in node.value:
        return interpolate(node.value, node, ctx, path)
    return _constructor.construct_object(node, deep=True)


class Type:
    """A field type: parses a node, describes itself for docs and JSON Schema."""

    label = "any"

    def parse(self, node: yaml.Node, ctx: Context, path: str) -> Any:
        raise NotImplementedError

    def schema(self) -> dict[str, Any]:
        return {}

    def expected(self) -> str:
        return self.label

    def mismatch(self, node: yaml.Node, ctx: Context, path: str) -> Any:
        return ctx.error(
            node, path, f"expected {self.expected()} (got {_shown(node)})", code="wrong_type"
        )


class Any_(Type):
    label = "any value"

    def parse(self, node: yaml.Node, ctx: Context, path: str) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return scalar_value(node, ctx, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.parse(n, ctx, join(path, i)) for i, n in enumerate(node.value)]
        return {
            str(scalar_value(k, ctx, path)): self.parse(v, ctx, join(path, str(k.value)))
            for k, v in node.value
        }


class Str(Type):
    label = "a string"

    def __init__(self, pattern: str | None = None, hint: str = "", nonempty: bool = True) -> None:
        self.pattern = re.compile(pattern) if pattern else None
        self.hint = hint
        self.nonempty = nonempty

    def expected(self) -> str:
        return self.hint or self.label

    def parse(self, node: yaml.Node, ctx: Context, path: str) -> Any:
        if not isinstance(node, yaml.ScalarNode) or node.tag.endswith(":null"):
            return self.mismatch(node, ctx, path)
        value = interpolate(node.value, node, ctx, path) if "$" in node.value else node.value
        if value is INVALID:
            return INVALID
        if self.nonempty and value == "":
            return ctx.error(node, path, f"expected {self.expected()} (got an empty string)")
        if self.pattern and not self.pattern.fullmatch(value):
            return ctx.error(node, path, f"expected {self.expected()} (got {value!r})")
        return value

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "string"}
        if self.pattern:
            out["pattern"] = self.pattern.pattern
        return out


class Number(Type):
    def __init__(self, kind: type, lo: float | None = None, hi: float | None = None) -> None:
        self.kind = kind
        self.lo, self.hi = lo, hi
        self.label = "an integer" if kind is int else "a number"

    def expected(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"{self.label} in {self.lo}..{self.hi}"
        if self.lo is not None:
            return f"{self.label} >= {self.lo}"
        return self.label

    def parse(self, node: yaml.Node, ctx: Context, path: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return self.mismatch(node, ctx, path)
        raw = scalar_value(node, ctx, path)
        if raw is INVALID:
            return INVALID
        if isinstance(raw, bool):
            return self.mismatch(node, ctx, path)
        try:
            value = self.kind(raw) if isinstance(raw, str) else raw
        except ValueError:
            return self.mismatch(node, ctx, path)
        if not isinstance(value, int | float) or (self.kind is int and not isinstance(value, int)):
            return self.mismatch(node, ctx, path)
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            return ctx.error(node, path, f"must be {self.expected()} (got {value})")
        return self.kind(value)

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "integer" if self.kind is int else "number"}
        if self.lo is not None:
            out["minimum"] = self.lo
        if self.hi is not None:
            out["maximum"] = self.hi
        return out


def Int(lo: int | None = None, hi: int | None = None) -> Number:
    return Number(int, lo, hi)


def Float(lo: float | None = None, hi: float | None = None) -> Number:
    return Number(float, lo, hi)


class Bool(Type):
    label = "true or false"

    def parse(self, node: yaml.Node, ctx: Context, path: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return self.mismatch(node, ctx, path)
        value = scalar_value(node, ctx, path)
        if isinstance(value, str):
            value = {"true": True, "false": False}.get(value.lower(), value)
        if not isinstance(value, bool):
            return self.mismatch(node, ctx, path)
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


class Duration(Type):
    """Seconds as a float; accepts ``500ms``, ``30s``, ``5m``, ``2h``, ``7d`` or a number."""

    label = "a duration such as 500ms, 30s, 5m, 2h or 7d"

    def __init__(self, lo: float = 0.0) -> None:
        self.lo = lo

    def parse(self, node: yaml.Node, ctx: Context, path: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return self.mismatch(node, ctx, path)
        value = scalar_value(node, ctx, path)
        if value is INVALID:
            return INVALID
        if isinstance(value, bool):
            return self.mismatch(node, ctx, path)
        if isinstance(value, int | float):
            seconds = float(value)
        else:
            m = _DURATION.match(str(value))
            if not m:
                return self.mismatch(node, ctx, path)
            seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        if seconds < self.lo:
            return ctx.error(node, path, f"must be at least {self.lo}s (got {seconds}s)")
        return seconds

    def schema(self) -> dict[str, Any]:
        return {"type": ["string", "number"], "pattern": _DURATION.pattern}


class ByteSize(Type):
    label = "a size such as 512KiB or 10MiB"

    def parse(self, node: yaml.Node, ctx: Context, path: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return self.mismatch(node, ctx, path)
        value = scalar_value(node, ctx, path)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        m = _SIZE.match(str(value))
        if not m:
            return self.mismatch(node, ctx, path)
        return int(m.group(1)) * _SIZE_UNITS[m.group(2)]

    def schema(self) -> dict[str, Any]:
        return {"type": ["string", "integer"]}


class Enum(Type):
    def __init__(self, *choices: str) -> None:
        self.choices = choices
        self.label = "one of " + ", ".join(choices)

    def parse(self, node: yaml.Node, ctx: Context, path: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return self.mismatch(node, ctx, path)
        value = scalar_value(node, ctx, path)
        if value is INVALID:
            return INVALID
        if str(value) not in self.choices:
            return ctx.error(
                node,
                path,
                f"expected {self.label} (got {value!r}){did_you_mean(str(value), self.choices)}",
                code="bad_enum",
            )
        return str(value)

    def schema(self) -> dict[str, Any]:
        return {"enum": list(self.choices)}


class ListOf(Type):
    def __init__(self, item: Type, min_items: int = 0, scalar_ok: bool = False) -> None:
        self.item = item
        self.min_items = min_items
        self.scalar_ok = scalar_ok  # a single item may be written without the list
        self.label = f"a list of {item.expected()}"

    def parse(self, node: yaml.Node, ctx: Context, path: str) -> Any:
        if self.scalar_ok and not isinstance(node, yaml.SequenceNode):
            item = self.item.parse(node, ctx, path)
            return INVALID if item is INVALID else (item,)
        if not isinstance(node, yaml.SequenceNode):
            return self.mismatch(node, ctx, path)
        if len(node.value) < self.min_items:
            return ctx.error(
                node, path, f"expected at least {self.min_items} item(s) (got {len(node.value)})"
            )
        items = tuple(self.item.parse(n, ctx, join(path, i)) for i, n in enumerate(node.value))
        return INVALID if any(i is INVALID for i in items) else items

    def schema(self) -> dict[str, Any]:
        return {"type": "array", "items": self.item.schema(), "minItems": self.min_items}


class MapOf(Type):
    def __init__(self, value: Type) -> None:
        self.value = value
        self.label = f"a mapping of names to {value.expected()}"

    def parse(self, node: yaml.Node, ctx: Context, path: str) -> Any:
        if not isinstance(node, yaml.MappingNode):
            return self.mismatch(node, ctx, path)
        out = {}
        for k, v in node.value:
            key = str(k.value)
            out[key] = self.value.parse(v, ctx, join(path, key))
        return INVALID if any(v is INVALID for v in out.values()) else out

    def schema(self) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": self.value.schema()}


class Component(Type):
    """A single-key mapping naming a registered component: ``http: {url: ...}``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.label = f"a {kind} written as a mapping with one key naming its type"

    def parse(self, node: yaml.Node, ctx: Context, path: str) -> Any:
        if not isinstance(node, yaml.MappingNode) or len(node.value) != 1:
            names = ", ".join(ctx.registry.names(self.kind))
            return ctx.error(
                node, path, f"expected a {self.kind} as one key of: {names} (got {_shown(node)})"
            )
        key_node, value_node = node.value[0]
        return parse_component(self.kind, key_node, value_node, ctx, path)

    def schema(self) -> dict[str, Any]:
        return {"type": "object", "minProperties": 1, "maxProperties": 1}


@dataclasses.dataclass(frozen=True)
class Chosen:
    """A component picked by name, with its parsed options."""

    kind: str
    name: str
    options: Any
    where: str


def parse_component(
    kind: str, key_node: yaml.Node, value_node: yaml.Node, ctx: Context, path: str
) -> Any:
    name = str(key_node.value)
    names = ctx.registry.names(kind)
    if name not in names:
        return ctx.error(
            key_node,
            join(path, name),
            f"unknown {kind} '{name}' (expected one of: {', '.join(names)})"
            f"{did_you_mean(name, names)}",
            code=f"unknown_{kind}",
        )
    spec = ctx.registry.get(kind, name).spec
    if isinstance(value_node, yaml.ScalarNode) and value_node.tag.endswith(":null"):
        value_node = yaml.MappingNode("tag:yaml.org,2002:map", [], value_node.start_mark)
    options = spec.parse(value_node, ctx, join(path, name))
    if options is INVALID:
        return INVALID
    return Chosen(kind, name, options, ctx.where(key_node))


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    type: Type
    default: Any = REQUIRED
    description: str = ""
    example: Any = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


class Spec(Type):
    """A mapping with named fields; unknown keys are errors.

    ``component_kind``: besides its fields, the mapping holds exactly one key naming a registered
    component of that kind (``http:``, ``file:``...); it is parsed into the ``component`` attribute.
    ``dispatch``: a field whose value names a registered component of that kind, whose spec
    validates the remaining keys (``transform: dft_usage`` plus the transform's own options);
    the parsed options land in the ``options`` attribute.
    """

    def __init__(
        self,
        name: str,
        fields: Iterable[Field],
        *,
        description: str = "",
        example: str = "",
        component_kind: str | None = None,
        dispatch: tuple[str, str] | None = None,
        check: Callable[[Any, Context, yaml.Node, str], None] | None = None,
    ) -> None:
        self.name = name
        self.fields = tuple(fields)
        self.by_name = {f.name: f for f in self.fields}
        self.description = description
        self.example = example
        self.component_kind = component_kind
        self.dispatch = dispatch
        self.check = check
        self.label = f"a mapping ({name})"
        extra = []
        if component_kind:
            extra.append(("component", None))
        if dispatch:
            extra.append(("options", None))
        self.config_class = dataclasses.make_dataclass(
            "".join(p.capitalize() for p in re.split(r"[^A-Za-z0-9]", name) if p) + "Config",
            [(f.name, Any) for f in self.fields]
            + [(n, Any) for n, _ in extra]
            + [("where", str), ("positions", Any)],
            frozen=True,
        )

    def defaults(self) -> Any:
        """A config with every default (only valid when no field is required)."""
        node = yaml.MappingNode("tag:yaml.org,2002:map", [])
        ctx = Context("<defaults>")
        return self.parse(node, ctx, "")

    def parse(self, node: yaml.Node, ctx: Context, path: str) -> Any:
        if not isinstance(node, yaml.MappingNode):
            return self.mismatch(node, ctx, path)
        values: dict[str, Any] = {}
        positions: dict[str, str] = {}
        seen: dict[str, yaml.Node] = {}
        component_nodes: list[tuple[yaml.Node, yaml.Node]] = []
        rest: list[tuple[yaml.Node, yaml.Node]] = []
        comp_names = ctx.registry.names(self.component_kind) if self.component_kind else []
        dispatch_name = None
        if self.dispatch:
            for k, v in node.value:
                if k.value == self.dispatch[0] and isinstance(v, yaml.ScalarNode):
                    dispatch_name = v.value
        ok = True
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                ctx.error(key_node, join(path, key), "key appears twice in this mapping")
                ok = False
                continue
            seen[key] = key_node
            positions[key] = ctx.where(value_node)
            field = self.by_name.get(key)
            if field is not None:
                value = field.type.parse(value_node, ctx, join(path, key))
                ok = ok and value is not INVALID
                values[key] = value
            elif self.component_kind and key in comp_names:
                component_nodes.append((key_node, value_node))
            elif self.dispatch and dispatch_name is not None:
                rest.append((key_node, value_node))
            else:
                known = [*self.by_name, *comp_names]
                ctx.error(
                    key_node,
                    join(path, key),
                    f"field not recognised{did_you_mean(key, known)}"
                    f" (expected one of: {', '.join(known)})",
                    code="unknown_key",
                )
                ok = False
        for field in self.fields:
            if field.name in values:
                continue
            if field.required:
                ctx.error(
                    node,
                    join(path, field.name),
                    f"required field is missing (expected {field.type.expected()})",
                    code="missing_field",
                )
                ok = False
            else:
                values[field.name] = field.default
        if self.component_kind:
            if len(component_nodes) != 1:
                found = ", ".join(str(k.value) for k, _ in component_nodes) or "none"
                ctx.error(
                    node,
                    path,
                    f"expected exactly one {self.component_kind} type key, one of: "
                    f"{', '.join(comp_names)} (got {found})",
                    code="missing_field",
                )
                ok = False
                values["component"] = INVALID
            else:
                k, v = component_nodes[0]
                values["component"] = parse_component(self.component_kind, k, v, ctx, path)
                ok = ok and values["component"] is not INVALID
        if self.dispatch:
            kind = self.dispatch[1]
            if dispatch_name is None or values.get(self.dispatch[0]) is INVALID:
                values["options"] = INVALID
                ok = False
            else:
                val_node = next(v for k, v in node.value if k.value == self.dispatch[0])
                sub = yaml.MappingNode("tag:yaml.org,2002:map", rest, node.start_mark)
                names = ctx.registry.names(kind)
                if dispatch_name not in names:
                    ctx.error(
                        val_node,
                        join(path, self.dispatch[0]),
                        f"unknown {kind} '{dispatch_name}' (expected one of: {', '.join(names)})"
                        f"{did_you_mean(dispatch_name, names)}",
                        code=f"unknown_{kind}",
                    )
                    values["options"] = INVALID
                    ok = False
                else:
                    values["options"] = ctx.registry.get(kind, dispatch_name).spec.parse(
                        sub, ctx, path
                    )
                    ok = ok and values["options"] is not INVALID
        if not ok:
            return INVALID
        config = self.config_class(**values, where=ctx.where(node), positions=positions)
        if self.check is not None:
            before = len(ctx.errors)
            self.check(config, ctx, node, path)
            if len(ctx.errors) > before:
                return INVALID
        return config

    def schema(self) -> dict[str, Any]:
        props = {f.name: {**f.type.schema(), "description": f.description} for f in self.fields}
        return {
            "type": "object",
            "title": self.name,
            "description": self.description,
            "properties": props,
            "required": [f.name for f in self.fields if f.required],
            "additionalProperties": bool(self.component_kind or self.dispatch),
        }

    def to_markdown(self, heading: str = "##") -> str:
        lines = [f"{heading} `{self.name}`", "", self.description.strip(), ""]
        if self.fields:
            lines += ["| field | type | default | description |", "|---|---|---|---|"]
            for f in self.fields:
                default = "**required**" if f.required else f"`{_render_default(f.default)}`"
                desc = f.description.replace("\n", " ").replace("|", "\\|")
                typ = f.type.expected().replace("|", "\\|")
                lines.append(f"| `{f.name}` | {typ} | {default} | {desc} |")
            lines.append("")
        if self.example:
            lines += ["Example:", "", "```yaml", self.example.strip(), "```", ""]
        for f in self.fields:
            nested = _nested_spec(f.type)
            if nested is not None:
                lines.append(
                    nested.to_markdown(heading + "#").replace(
                        f"{heading}# `{nested.name}`", f"{heading}# `{self.name}.{f.name}`", 1
                    )
                )
        return "\n".join(lines)


def _nested_spec(type_: Type) -> Spec | None:
    while isinstance(type_, ListOf | MapOf):
        type_ = type_.item if isinstance(type_, ListOf) else type_.value
    return type_ if isinstance(type_, Spec) and type_.fields else None


def _render_default(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = (
            f"{f.name}: {_render_default(getattr(value, f.name))}"
            for f in dataclasses.fields(value)
            if f.name not in ("where", "positions")
        )
        return "{" + ", ".join(items) + "}"
    return str(value)


class TableName(Str):
    """The name of a mapping table in ``mappings/``; lint checks that it exists."""

    def __init__(self) -> None:
        super().__init__(hint="the name of a table in mappings/")

    def parse(self, node: yaml.Node, ctx: Context, path: str) -> Any:
        value = super().parse(node, ctx, path)
        tables = getattr(ctx, "mappings", None)
        unreadable = getattr(tables, "unreadable", ())  # their own error says why
        if (
            value is not INVALID
            and tables is not None
            and value not in tables
            and value not in unreadable
        ):
            names = sorted(tables.tables)
            return ctx.error(
                node,
                path,
                f"no mapping table '{value}' in mappings/ (tables: {', '.join(names) or 'none'})"
                f"{did_you_mean(value, names)}",
                code="unknown_table",
            )
        return value


class ValueSpec(Type):
    """A documented component whose whole value is one type (not a mapping of fields)."""

    def __init__(self, name: str, type_: Type, *, description: str = "", example: str = "") -> None:
        self.name = name
        self.type = type_
        self.description = description
        self.example = example
        self.fields: tuple[Field, ...] = ()
        self.label = type_.expected()

    def parse(self, node: yaml.Node, ctx: Context, path: str) -> Any:
        return self.type.parse(node, ctx, path)

    def schema(self) -> dict[str, Any]:
        return self.type.schema()

    def to_markdown(self, heading: str = "##") -> str:
        lines = [f"{heading} `{self.name}`", "", self.description.strip(), ""]
        lines += [f"Value: {self.type.expected()}", ""]
        if self.example:
            lines += ["Example:", "", "```yaml", self.example.strip(), "```", ""]
        return "\n".join(lines)
