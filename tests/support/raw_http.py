"""Blocking HTTP requests with exact control over the bytes sent.

`http.client` sends what it is given and nothing more: no Content-Type unless asked
for, no JSON encoding, and never a proxy (so nothing leaves 127.0.0.1). It needs no
event loop, which lets sync tests (hypothesis among them) talk to the server directly.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @property
    def content_type(self) -> str:
        """The media type without parameters, e.g. `application/json`."""
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    base_url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> RawResponse:
    """One request on a fresh connection; the body is sent byte for byte."""
    parts = urlsplit(base_url)
    assert parts.hostname is not None and parts.port is not None, base_url
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=dict(headers or {}))
        response = connection.getresponse()
        return RawResponse(
            status=response.status,
            headers={name.lower(): value for name, value in response.getheaders()},
            body=response.read(),
        )
    finally:
        connection.close()


def post_json(base_url: str, path: str, value: Any) -> RawResponse:
    return request(
        base_url,
        "POST",
        path,
        json.dumps(value).encode(),
        {"Content-Type": "application/json"},
    )
