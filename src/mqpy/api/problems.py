"""RFC 9457 problem details: every error the API answers is one of these."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import msgspec
from aiohttp import web

from mqpy.core.ratelimit import retry_after_header
from mqpy.model.errors import BrokerError

log = logging.getLogger("mqpy.api")

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://mq-py.dev/problems/"


class Problem(Exception):
    """An error answer: an HTTP status, a slug for `type`, and a sentence for a human."""

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        close: bool = False,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.headers = dict(headers or {})
        self.close = close  # drop the connection after answering
        self.extensions = extensions

    def to_response(self, instance: str | None = None) -> web.Response:
        response = web.Response(
            status=self.status,
            body=self.to_body(instance),
            content_type=PROBLEM_CONTENT_TYPE,
            headers=self.headers,
        )
        if self.close:
            response.force_close()
        return response

    def to_body(self, instance: str | None = None) -> bytes:
        """The problem document, JSON-encoded."""
        return msgspec.json.encode(self.to_dict(instance))

    def to_dict(self, instance: str | None = None) -> dict[str, Any]:
        """The problem document, as an object to answer alone or inside another."""
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE_BASE + self.slug,
            "title": HTTPStatus(self.status).phrase,
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            body["instance"] = instance
        body.update(self.extensions)
        return body


def invalid_field(field: str, detail: str) -> Problem:
    return Problem(400, "invalid-request", detail, field=field)


def invalid_body(detail: str) -> Problem:
    return Problem(400, "invalid-request", detail)


def problem_for(error: BrokerError) -> Problem:
    """The answer to a refused request, from what its class says (mqpy.model.errors)."""
    if error.log_cause:
        log.error("%s", error)
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = retry_after_header(error.retry_after)
    return Problem(
        error.status, error.problem_type, error.detail, headers=headers, **error.extensions
    )
