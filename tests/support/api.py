"""The native /v1 API from a client's side, as blocking HTTP calls (see raw_http)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from tests.support import raw_http
from tests.support.problems import check_problem


def call(
    base_url: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    key: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> raw_http.RawResponse:
    """One request; `body` is sent as JSON, `key` as a bearer token."""
    sent = dict(headers or {})
    if body is not None:
        sent.setdefault("Content-Type", "application/json")
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    data = None if body is None else json.dumps(body).encode()
    return raw_http.request(base_url, method, path, data, sent)


def ok(response: raw_http.RawResponse, status: int = 200) -> Any:
    """The JSON answer, which must have `status`."""
    assert response.status == status, (response.status, response.body[:500])
    if not response.body:
        return None
    assert response.content_type == "application/json", response.headers
    return response.json()


def problem(response: raw_http.RawResponse, status: int, field: str | None = None) -> Any:
    return check_problem(response.status, response.content_type, response.body, status, field)


def subscription_body(url: str, **fields: Any) -> dict[str, Any]:
    return {"url": url, **fields}


async def wait_for(
    probe: Callable[[], Any], accept: Callable[[Any], bool], timeout: float, what: str
) -> Any:
    """Call `probe` (blocking, so in a thread) until `accept` holds for its answer."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(probe)
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}: {value}")
        await asyncio.sleep(0.05)
