"""``raw`` and ``json`` codecs.

The ``json`` codec refuses a document nested deeper than ``max_depth`` with a CodecError that
says so (the sender gets a 400 naming the limit), before anything deeper than that is walked:
Python's parser would otherwise raise RecursionError on a few thousand brackets."""

from __future__ import annotations

import json
import re
from typing import Any

from engine.codecs.base import Parsed, sha256_key
from engine.errors import CodecError
from engine.registry import codec
from engine.spec import ByteSize, Field, Int, Spec, Str

RAW_SPEC = Spec(
    "raw",
    [
        Field(
            "content_type", Str(), "application/octet-stream", "Content type recorded in the store."
        ),
        Field("max_size", ByteSize(), 10 * 1024 * 1024, "Larger inputs are refused."),
    ],
    description="Bytes as they came. The dedup key is the SHA-256 of the content.",
    example="codec:\n  raw: {content_type: text/plain}",
)


class RawCodec:
    def __init__(self, options: Any) -> None:
        self.options = options
        self.content_type = options.content_type

    def decode(self, raw: bytes) -> Parsed:
        _check_size(raw, self.options.max_size)
        return Parsed(raw, self.content_type, dedup_key=sha256_key(raw))


@codec("raw", RAW_SPEC)
def make_raw(options: Any) -> RawCodec:
    return RawCodec(options)


JSON_SPEC = Spec(
    "json",
    [
        Field("id_field", Str(), None, "Top-level field used as the control id and dedup key."),
        Field("type_field", Str(), None, "Top-level field used as the message type for filters."),
        Field("max_size", ByteSize(), 10 * 1024 * 1024, "Larger inputs are refused."),
        Field(
            "max_depth",
            Int(1, 500),
            64,
            "Arrays and objects nested deeper than this are refused (400 on the `http` "
            "source), naming the limit.",
        ),
    ],
    description="A JSON document (UTF-8). Transforms receive a `JsonMessage` (a dict with `get`).",
    example="codec:\n  json: {id_field: id, type_field: resourceType}",
)


class JsonMessage(dict):
    def get(self, path: str, default: Any = None) -> Any:  # type: ignore[override]
        node: Any = self
        for part in path.removeprefix("$.").split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            else:
                return default
        return node


class JsonCodec:
    content_type = "application/json"

    def __init__(self, options: Any) -> None:
        self.options = options

    def decode(self, raw: bytes) -> Parsed:
        _check_size(raw, self.options.max_size)
        limit = self.options.max_depth
        try:
            text = raw.decode("utf-8")
            if raw.count(b"[") + raw.count(b"{") > limit:  # else it cannot be too deep
                check_depth(text, limit)
            value = json.loads(text)
        except (UnicodeDecodeError, ValueError) as exc:
            raise CodecError(f"expected a UTF-8 JSON document ({exc})", code="not_json") from exc
        except RecursionError as exc:  # not reached with max_depth <= 500; kept as a guard
            raise CodecError(f"JSON nested deeper than {limit} levels", code="too_deep") from exc
        if not isinstance(value, dict):
            raise CodecError(
                f"expected a JSON object (got {type(value).__name__})", code="not_object"
            )
        msg = JsonMessage(value)
        ident = msg.get(self.options.id_field) if self.options.id_field else None
        mtype = msg.get(self.options.type_field) if self.options.type_field else None
        key = f"id:{ident}" if ident is not None else sha256_key(raw)
        return Parsed(
            msg,
            self.content_type,
            message_type=None if mtype is None else str(mtype),
            control_id=None if ident is None else str(ident),
            dedup_key=key,
        )


@codec("json", JSON_SPEC)
def make_json(options: Any) -> JsonCodec:
    return JsonCodec(options)


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_BRACKETS = str.maketrans("{}", "[]")


def check_depth(text: str, limit: int) -> None:
    """CodecError ``too_deep`` when arrays/objects in ``text`` nest deeper than ``limit``
    (brackets inside strings do not count). No recursion and no loop per character: the
    brackets alone are kept, then innermost pairs are removed ``limit`` times; a pair still
    left (or more than ``limit`` brackets never closed) was deeper."""
    brackets = _NOT_BRACKETS.sub("", _STRINGS.sub("", text)).translate(_BRACKETS)
    for _ in range(limit):
        if "[]" not in brackets:
            break
        brackets = brackets.replace("[]", "")
    if "[]" in brackets or brackets.count("[") > limit:
        raise CodecError(
            f"JSON nested deeper than {limit} levels; expected a document of at most that "
            "depth (the codec's max_depth)",
            code="too_deep",
        )


def _check_size(raw: bytes, limit: int) -> None:
    if len(raw) > limit:
        raise CodecError(f"message is {len(raw)} bytes; the limit is {limit}", code="too_large")
