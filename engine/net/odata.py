"""OData V2 pieces a destination needs: ``/Date(ms)/`` values, IMF-fixdates for the OASIS
repeatable-requests headers, and ``$batch`` bodies (multipart/mixed, one changeset per request,
so each request succeeds or fails on its own) with their answers read back in order.

References: OData Version 2.0 Batch Processing (odata.org, "Batch Processing" of the V2
documentation); OASIS OData Extension for Repeatable Requests Version 1.0.
"""

from __future__ import annotations

import datetime
import email.utils
import re
import uuid
from dataclasses import dataclass

__all__ = ["BatchAnswer", "batch_body", "imf_fixdate", "odata_date", "read_batch"]


def odata_date(day: datetime.date) -> str:
    """``/Date(1768521600000)/``: midnight UTC of ``day`` in milliseconds."""
    midnight = datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC)
    return f"/Date({int(midnight.timestamp()) * 1000})/"


def imf_fixdate(when: float) -> str:
    """``Sun, 06 Nov 1994 08:49:37 GMT`` (RFC 7231 section 7.1.1.1)."""
    return email.utils.formatdate(when, usegmt=True)


@dataclass(frozen=True)
class Request:
    """One request of a batch: a POST of ``body`` (JSON) to ``path`` with extra headers."""

    path: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def batch_body(requests: list[Request]) -> tuple[str, bytes]:
    """(Content-Type, body) of a ``$batch`` with one changeset per request."""
    boundary = f"batch_{uuid.uuid4().hex}"
    out = bytearray()
    for n, req in enumerate(requests, start=1):
        changeset = f"changeset_{uuid.uuid4().hex}"
        out += (
            f"--{boundary}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n".encode()
        )
        out += (
            f"--{changeset}\r\nContent-Type: application/http\r\n"
            f"Content-Transfer-Encoding: binary\r\nContent-ID: {n}\r\n\r\n"
            f"POST {req.path} HTTP/1.1\r\nContent-Type: application/json\r\n"
            "Accept: application/json\r\n"
        ).encode()
        for name, value in req.headers:
            out += f"{name}: {value}\r\n".encode("latin-1")
        out += f"Content-Length: {len(req.body)}\r\n\r\n".encode() + req.body
        out += f"\r\n--{changeset}--\r\n".encode()
    out += f"--{boundary}--\r\n".encode()
    return f"multipart/mixed; boundary={boundary}", bytes(out)


@dataclass(frozen=True)
class BatchAnswer:
    """One changeset's answer: its HTTP status, headers (lower-case names) and body."""

    status: int
    headers: dict[str, str]
    body: bytes


_BOUNDARY = re.compile(r'boundary="?([^";]+)"?')


def _parts(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    delimiter = b"--" + boundary.encode("latin-1")
    out = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk[2:] if chunk.startswith(b"\r\n") else chunk
        head, _, rest = chunk.partition(b"\r\n\r\n")
        headers = _headers(head)
        out.append((headers, rest[:-2] if rest.endswith(b"\r\n") else rest))
    return out


def _headers(head: bytes) -> dict[str, str]:
    headers = {}
    for line in head.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


def _response(raw: bytes) -> BatchAnswer:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, _, rest = head.partition(b"\r\n")
    parts = status_line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ValueError(f"not an HTTP status line: {status_line[:40]!r}")
    return BatchAnswer(int(parts[1]), _headers(rest), body)


def read_batch(content_type: str, body: bytes) -> list[BatchAnswer]:
    """The answers of a ``$batch``, one per changeset in order (a failed changeset is one
    error answer in its place); ValueError when the body is not such a batch."""
    m = _BOUNDARY.search(content_type)
    if not content_type.startswith("multipart/mixed") or m is None:
        raise ValueError(f"expected multipart/mixed with a boundary (got {content_type!r})")
    answers = []
    for headers, part in _parts(body, m.group(1)):
        inner = _BOUNDARY.search(headers.get("content-type", ""))
        if inner is not None:
            responses = _parts(part, inner.group(1))
            if len(responses) != 1:
                raise ValueError(f"expected one answer per changeset (got {len(responses)})")
            answers.append(_response(responses[0][1]))
        else:
            answers.append(_response(part))
    return answers
