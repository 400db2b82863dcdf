"""FHIR XML in and out, for the ``fhir_http`` source.

In: a hardened lxml parse (no DTD, no entities, no network, no huge trees; a DOCTYPE or ENTITY
declaration, or an encoding other than UTF-8, is refused before lxml sees the bytes), then the
FHIR XML → JSON mapping (FHIR R5 §2.6 "XML Representation": primitive values in ``value``
attributes, ``id``/``url`` attributes, primitive extensions as ``_name``, contained resources
wrapped in their element, the narrative ``div`` as XHTML text) driven by the fhir.resources
models, so that the JSON form is validated like any JSON body and problems are named by their
FHIRPath. Out: the JSON → XML mapping the other way round, driven by the same models (elements in
FHIR order, ``elements_sequence()``), every primitive value written as the JSON holds it (a
decimal keeps its digits: ``2.50`` stays ``2.50``, ``1`` stays ``1``; an instant keeps its form).

Everything else in the project stays JSON: the store keeps the JSON form of what came as XML.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from fhir_core.utils import get_fhir_type_name, is_list_type, is_primitive_type
from lxml import etree

from engine.codecs.fhir import FhirInvalid, Issue, model_class
from engine.errors import CodecError
from engine.net.xml import hardened_parser

FHIR_NS = "http://hl7.org/fhir"
XHTML_NS = "http://www.w3.org/1999/xhtml"

_FORBIDDEN = (b"<!DOCTYPE", b"<!ENTITY", b"<!doctype", b"<!entity")
_DECLARED = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_INTEGER = re.compile(r"-?[0-9]+")
_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_INTEGERS = frozenset({"integer", "positiveInt", "unsignedInt"})  # integer64 is a JSON string
_RESOURCE_TYPES = frozenset({"Resource", "DomainResource"})


def _screen(raw: bytes) -> None:
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff") or raw[:4] in (
        b"\x00\x00\xfe\xff",
        b"\xff\xfe\x00\x00",
    ):
        raise CodecError(
            "expected FHIR XML in UTF-8 (got a UTF-16/32 byte order mark)", code="not_fhir"
        )
    body = raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw
    m = _DECLARED.match(body[:512])
    if m and m.group(1).lower() not in (b"utf-8", b"utf8"):
        raise CodecError(
            f"expected FHIR XML in UTF-8 (got encoding={m.group(1).decode('ascii')!r})",
            code="not_fhir",
        )
    if any(f in raw for f in _FORBIDDEN):
        raise CodecError(
            "a DOCTYPE or ENTITY declaration is not allowed in FHIR XML", code="not_fhir"
        )


def parse_xml(raw: bytes, version: str = "R5") -> dict[str, Any]:
    """FHIR XML → the JSON form (a dict; decimals as ``Decimal``).

    CodecError ``not_fhir`` for bytes that are not XML, carry a DOCTYPE, or whose root is not a
    FHIR resource; FhirInvalid (with FHIRPaths) for elements the resource does not have or
    primitive values of the wrong form.
    """
    _screen(raw)
    try:
        root = etree.fromstring(raw, parser=hardened_parser())
    except etree.XMLSyntaxError as exc:
        raise CodecError(f"expected FHIR XML ({exc})", code="not_fhir") from exc
    if root.getroottree().docinfo.doctype:
        raise CodecError("a DOCTYPE is not allowed in FHIR XML", code="not_fhir")
    qname = etree.QName(root)
    if qname.namespace != FHIR_NS:
        raise CodecError(
            f"expected a FHIR resource in the {FHIR_NS} namespace "
            f"(got <{qname.localname}> in {qname.namespace or 'no namespace'})",
            code="not_fhir",
        )
    issues: list[Issue] = []
    data = _Reader(version, issues).resource(root, qname.localname)
    if issues:
        raise FhirInvalid(issues)
    return data


class _Reader:
    def __init__(self, version: str, issues: list[Issue]) -> None:
        self.version = version
        self.prefix = "R4." if version == "R4B" else ""
        self.issues = issues

    def _class(self, type_name: str, path: str) -> Any:
        try:
            return model_class(self.version, type_name)
        except (ValueError, KeyError, ImportError):
            self.issues.append(
                Issue("not-supported", f"{type_name} is not a FHIR {self.version} type", path)
            )
            return None

    def resource(self, el: Any, path: str) -> dict[str, Any]:
        rtype = etree.QName(el).localname
        out: dict[str, Any] = {"resourceType": rtype}
        klass = self._class(rtype, path)
        if klass is not None:
            self._attributes(el, path, allowed=())
            self._children(el, klass, out, path)
        return out

    def _attributes(self, el: Any, path: str, allowed: tuple[str, ...]) -> dict[str, str]:
        found = {}
        for name, value in el.attrib.items():
            if name in allowed:
                found[name] = value
            else:
                self.issues.append(Issue("structure", f"unexpected attribute {name!r}", path))
        return found

    def _children(self, el: Any, klass: Any, out: dict[str, Any], path: str) -> None:
        aliases = klass.get_alias_mapping()
        extensions: dict[str, Any] = {}
        if el.text and el.text.strip():
            self.issues.append(Issue("structure", "unexpected text content", path))
        for child in el:
            if child.tail and child.tail.strip():
                self.issues.append(Issue("structure", "unexpected text content", path))
            qname = etree.QName(child)
            name = qname.localname
            field_name = aliases.get(name)
            if field_name is None:
                self.issues.append(
                    Issue("structure", f"unknown element '{name}'", f"{path}.{name}")
                )
                continue
            field = klass.model_fields[field_name]
            type_name = get_fhir_type_name(field, prefix=self.prefix)
            expected_ns = XHTML_NS if type_name == "xhtml" else FHIR_NS
            if qname.namespace != expected_ns:
                self.issues.append(
                    Issue(
                        "structure",
                        f"expected <{name}> in {expected_ns} (got {qname.namespace or 'none'})",
                        f"{path}.{name}",
                    )
                )
                continue
            many = is_list_type(field)
            index = len(out.get(name, ())) if many else None
            where = f"{path}.{name}" + (f"[{index}]" if many else "")
            if not many and name in out:
                self.issues.append(Issue("structure", "element repeats; max is 1", where))
                continue
            if type_name == "xhtml":
                value: Any = etree.tostring(child, encoding="unicode", with_tail=False)
                ext = None
            elif is_primitive_type(field):
                value, ext = self._primitive(child, type_name, where)
            elif type_name in _RESOURCE_TYPES:
                value, ext = self._contained(child, where), None
            else:
                value, ext = self._complex(child, type_name, where), None
            if many:
                out.setdefault(name, []).append(value)
                extensions.setdefault(name, []).append(ext)
            else:
                if value is not None:
                    out[name] = value
                if ext is not None:
                    extensions[name] = ext
        for name, ext in extensions.items():
            if isinstance(ext, list):
                if any(e is not None for e in ext):
                    out[f"_{name}"] = ext
                if all(v is None for v in out.get(name, [])):
                    out.pop(name, None)
            else:
                out[f"_{name}"] = ext

    def _primitive(self, el: Any, type_name: str, path: str) -> tuple[Any, Any]:
        attrs = self._attributes(el, path, allowed=("value", "id"))
        text = attrs.get("value")
        value: Any = None
        if text is not None:
            value = self._convert(text, type_name, path)
        ext: dict[str, Any] | None = None
        if "id" in attrs or len(el):
            ext = {}
            if "id" in attrs:
                ext["id"] = attrs["id"]
            klass = self._class("Element", path)
            if klass is not None and len(el):
                self._children(el, klass, ext, f"{path}")
        if text is None and ext is None:
            self.issues.append(Issue("required", "a primitive element needs a value", path))
        return value, ext

    def _convert(self, text: str, type_name: str, path: str) -> Any:
        if type_name == "boolean":
            if text not in ("true", "false"):
                self.issues.append(Issue("value", f"expected true or false (got {text!r})", path))
                return text
            return text == "true"
        if type_name in _INTEGERS:
            if not _INTEGER.fullmatch(text):
                self.issues.append(Issue("value", f"expected an integer (got {text!r})", path))
                return text
            return int(text)
        if type_name == "decimal":
            if not _DECIMAL.fullmatch(text):
                self.issues.append(Issue("value", f"expected a decimal (got {text!r})", path))
                return text
            return Decimal(text)
        return text

    def _complex(self, el: Any, type_name: str, path: str) -> dict[str, Any]:
        allowed = ("id", "url") if type_name == "Extension" else ("id",)
        out: dict[str, Any] = dict(self._attributes(el, path, allowed))
        klass = self._class(type_name, path)
        if klass is not None:
            self._children(el, klass, out, path)
        return out

    def _contained(self, el: Any, path: str) -> dict[str, Any] | None:
        self._attributes(el, path, allowed=())
        inner = list(el)
        if len(inner) != 1 or etree.QName(inner[0]).namespace != FHIR_NS:
            self.issues.append(
                Issue("structure", "expected exactly one FHIR resource inside", path)
            )
            return None
        return self.resource(inner[0], path)


def to_xml(data: dict[str, Any], version: str = "R5") -> bytes:
    """The FHIR XML (UTF-8, with an XML declaration) of a resource in its JSON form.

    Values are written exactly as the JSON holds them (``Decimal`` → its own digits), elements in
    FHIR order whatever the JSON key order. ValueError for what FHIR XML cannot carry: an element
    the resource does not have, a value of the wrong shape, a narrative ``div`` that is not one
    XHTML ``div``.
    """
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise ValueError("expected a FHIR resource: a dict with a resourceType")
    root = _Writer(version).resource(data, None, data["resourceType"])
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _fhir(parent: Any, name: str) -> Any:
    return etree.SubElement(parent, f"{{{FHIR_NS}}}{name}")


class _Writer:
    def __init__(self, version: str) -> None:
        self.version = version
        self.prefix = "R4." if version == "R4B" else ""

    def resource(self, data: Any, parent: Any, path: str) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
            raise ValueError(f"{path}: expected a resource (an object with a resourceType)")
        rtype = data["resourceType"]
        klass = model_class(self.version, rtype)
        tag = f"{{{FHIR_NS}}}{rtype}"
        if parent is None:
            el = etree.Element(tag, nsmap={None: FHIR_NS})
        else:
            el = etree.SubElement(parent, tag)
        self._children(data, klass, el, path, skip=("resourceType",))
        return el

    def _children(
        self, data: dict[str, Any], klass: Any, el: Any, path: str, skip: tuple[str, ...] = ()
    ) -> None:
        aliases = klass.get_alias_mapping()
        sequence = klass.elements_sequence()
        known = set(sequence)
        for key in data:
            if key not in skip and key.removeprefix("_") not in known:
                raise ValueError(f"{path}: unknown element {key!r}")
        for name in sequence:
            if name in skip:
                continue
            value = data.get(name)
            ext = data.get(f"_{name}")
            if value is None and ext is None:
                continue
            where = f"{path}.{name}"
            field = klass.model_fields[aliases[name]]
            type_name = get_fhir_type_name(field, prefix=self.prefix)
            many = is_list_type(field)
            if type_name == "xhtml":
                if ext is not None:
                    raise ValueError(f"{where}: the narrative div cannot carry extensions")
                self._xhtml(value, el, where)
            elif is_primitive_type(field):
                if many:
                    self._primitives(value, ext, name, el, where)
                else:
                    self._primitive(value, ext, name, el, where)
            else:
                if ext is not None:
                    raise ValueError(f"{path}: unknown element '_{name}'")
                items = self._items(value, many, where)
                for i, item in enumerate(items):
                    at = f"{where}[{i}]" if many else where
                    if type_name in _RESOURCE_TYPES:
                        self.resource(item, _fhir(el, name), at)
                    else:
                        self._complex(item, type_name, _fhir(el, name), at)

    @staticmethod
    def _items(value: Any, many: bool, path: str) -> list[Any]:
        if many:
            if not isinstance(value, list):
                raise ValueError(f"{path}: expected an array")
            return value
        if isinstance(value, list):
            raise ValueError(f"{path}: expected a single value, not an array")
        return [value]

    def _complex(self, data: Any, type_name: str, el: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected an object")
        attributes = ("id", "url") if type_name == "Extension" else ("id",)
        for name in attributes:
            if name in data:
                el.set(name, self._text(data[name], path + "." + name))
        self._children(data, model_class(self.version, type_name), el, path, skip=attributes)

    def _primitives(self, values: Any, exts: Any, name: str, el: Any, path: str) -> None:
        if values is not None and not isinstance(values, list):
            raise ValueError(f"{path}: expected an array")
        if exts is not None and not isinstance(exts, list):
            raise ValueError(f"{path}: expected an array in '_{name}'")
        if values is not None and exts is not None and len(values) != len(exts):
            raise ValueError(f"{path}: '{name}' and '_{name}' differ in length")
        count = len(values) if values is not None else len(exts)
        for i in range(count):
            value = values[i] if values is not None else None
            ext = exts[i] if exts is not None else None
            self._primitive(value, ext, name, el, f"{path}[{i}]")

    def _primitive(self, value: Any, ext: Any, name: str, el: Any, path: str) -> None:
        if isinstance(value, list) or isinstance(ext, list):
            raise ValueError(f"{path}: expected a single value, not an array")
        if value is None and ext is None:
            raise ValueError(f"{path}: a primitive element needs a value or extensions")
        child = _fhir(el, name)
        if ext is not None:
            if not isinstance(ext, dict):
                raise ValueError(f"{path}: expected an object in '_{name}'")
            if "id" in ext:
                child.set("id", self._text(ext["id"], path + ".id"))
        if value is not None:
            child.set("value", self._text(value, path))
        if ext is not None:
            self._children(ext, model_class(self.version, "Element"), child, path, skip=("id",))

    @staticmethod
    def _text(value: Any, path: str) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            return value
        if isinstance(value, int):
            return str(value)
        if isinstance(value, Decimal):
            if not value.is_finite():
                raise ValueError(f"{path}: a decimal must be finite (got {value})")
            return str(value)
        if isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError(f"{path}: a decimal must be finite (got {value})")
            return repr(value)
        raise ValueError(f"{path}: expected a primitive value (got {type(value).__name__})")

    @staticmethod
    def _xhtml(value: Any, el: Any, path: str) -> None:
        if not isinstance(value, str):
            raise ValueError(f"{path}: expected the XHTML of the narrative as a string")
        raw = value.encode("utf-8")
        if any(f in raw for f in _FORBIDDEN):
            raise ValueError(f"{path}: a DOCTYPE or ENTITY declaration is not allowed")
        try:
            div = etree.fromstring(raw, parser=hardened_parser())
        except etree.XMLSyntaxError as exc:
            raise ValueError(f"{path}: expected XHTML ({exc})") from exc
        if div.tag != f"{{{XHTML_NS}}}div":
            raise ValueError(f"{path}: expected one <div> in {XHTML_NS}")
        div.tail = None
        el.append(div)
