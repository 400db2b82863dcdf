"""A sample ERP/billing receiver for the demo and the tests: it records what it receives.

Every POST/PUT is answered 201 with a JSON document, and appended to an NDJSON file with its
path, ``Idempotency-Key`` and ``X-Correlation-ID``. A resend with a known key gets the first
answer again (how a well-behaved ERP API treats an idempotency key).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from twisted.web import resource, server


class Receiver(resource.Resource):
    isLeaf = True

    def __init__(self, record: Path) -> None:
        super().__init__()
        self.record = record
        record.parent.mkdir(parents=True, exist_ok=True)
        self.answers: dict[str, bytes] = {}
        self.count = 0
        self._fh = open(record, "a", encoding="utf-8")

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"received": self.count, "distinct_keys": len(self.answers)}).encode()

    def render_POST(self, request: Any) -> bytes:
        key = (request.getHeader(b"idempotency-key") or b"").decode()
        body = request.content.read()
        request.setHeader(b"content-type", b"application/json")
        self.count += 1
        entry = {
            "at": time.time(),
            "path": request.path.decode(),
            "idempotency_key": key,
            "correlation_id": (request.getHeader(b"x-correlation-id") or b"").decode(),
            "size": len(body),
        }
        try:
            entry["body"] = json.loads(body)
        except ValueError:
            entry["body_text"] = body.decode("utf-8", "replace")
        self._fh.write(json.dumps(entry) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        if key and key in self.answers:
            request.setResponseCode(200)
            return self.answers[key]
        answer = json.dumps({"id": f"ERP-{len(self.answers) + 1}", "status": "posted"}).encode()
        if key:
            self.answers[key] = answer
        request.setResponseCode(201)
        return answer

    render_PUT = render_POST


def site(record: Path) -> server.Site:
    return server.Site(Receiver(record))
