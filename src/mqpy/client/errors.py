"""Typed errors for the client, built from the broker's problem+json answers (RFC 9457).

Catch `MQError` for every failure, or one subclass for the case you can act on:
`RateLimited` and `Unavailable` say "try later" (the client already retried them),
`NotFound` says the connection (or message, topic, subscription) is not there,
`ConnectionFailed` says no answer came.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

__all__ = [
    "Conflict",
    "ConnectionFailed",
    "Forbidden",
    "InvalidRequest",
    "MQError",
    "NotFound",
    "RateLimited",
    "Unauthorized",
    "Unavailable",
]


class MQError(Exception):
    """The broker refused a request, or could not be reached.

    `status` is the HTTP status (None when no answer came), `type` the problem's URI
    (``https://mq-py.dev/problems/<slug>``), `detail` the server's sentence saying what
    was wrong, `problem` the whole problem object as the server sent it.
    """

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        type: str = "about:blank",
        title: str = "",
        problem: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.detail = detail
        self.status = status
        self.type = type
        self.title = title or _phrase(status)
        self.problem: dict[str, Any] = dict(problem or {})
        self.retry_after = retry_after
        super().__init__(f"{status} {self.title}: {detail}" if status else detail)

    @property
    def slug(self) -> str:
        """The last part of `type`, e.g. ``not-a-sender``; tells apart errors of one status."""
        return self.type.rsplit("/", 1)[-1]

    @property
    def field(self) -> str | None:
        """On a 400 about one request field, that field's name (``mode``, ``ClientURL``)."""
        value = self.problem.get("field")
        return value if isinstance(value, str) else None


class InvalidRequest(MQError):
    """400, 413 and other 4xx: the request itself was wrong; sending it again won't help."""


class Unauthorized(MQError):
    """401: the server needs an API key, or the key is unknown, revoked or mistyped."""


class Forbidden(MQError):
    """403: the key is valid but may not do this (role, topic, ownership, not a sender)."""


class NotFound(MQError):
    """404: no such connection (never issued, or disconnected), message, topic or
    subscription; `slug` says which (``unknown-connection``, ``unknown-message``)."""


class Conflict(InvalidRequest):
    """409: the request contradicts what exists, such as joining a group with a filter
    other than the group's."""


class RateLimited(MQError):
    """429: the key publishes faster than the server allows; `retry_after` says when to retry."""


class Unavailable(MQError):
    """503: the store could not commit or the backlog is full; nothing was accepted."""


class ConnectionFailed(MQError):
    """No answer: the server could not be reached, or the connection broke or timed out.

    `request_sent` is False when the request never left (connection refused, DNS failure):
    then the server certainly did nothing. When True, the server may have acted on it.
    """

    def __init__(self, detail: str, *, request_sent: bool) -> None:
        super().__init__(detail)
        self.request_sent = request_sent


_BY_STATUS: dict[int, type[MQError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    429: RateLimited,
    503: Unavailable,
}


def error_from_answer(status: int, body: bytes, retry_after: float | None = None) -> MQError:
    """The typed error for a non-2xx answer; its problem+json when there is one."""
    problem = _problem(body)
    detail = problem.get("detail")
    if not isinstance(detail, str) or not detail:
        text = body.decode(errors="replace").strip()[:200]
        detail = text or f"the server answered {status} {_phrase(status)}"
    return _typed(status, detail, problem, retry_after)


def error_from_problem(problem: Mapping[str, Any]) -> MQError:
    """The typed error for a problem object found inside an answer (one message's
    refusal in a batch publish), as if it had been the whole answer."""
    status = problem.get("status")
    if isinstance(status, bool) or not isinstance(status, int):
        status = 400
    detail = problem.get("detail")
    if not isinstance(detail, str) or not detail:
        detail = f"the server refused it: {status} {_phrase(status)}"
    return _typed(status, detail, dict(problem), None)


def _typed(status: int, detail: str, problem: dict[str, Any], retry_after: float | None) -> MQError:
    kind = _BY_STATUS.get(status)
    if kind is None:
        kind = InvalidRequest if 400 <= status < 500 else MQError
    return kind(
        detail,
        status=status,
        type=_string(problem.get("type")) or "about:blank",
        title=_string(problem.get("title")),
        problem=problem,
        retry_after=retry_after,
    )


def _problem(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _string(value: object) -> str:
    return value if isinstance(value, str) else ""


def _phrase(status: int | None) -> str:
    if status is None:
        return ""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "HTTP status"


def describe_failure(error: BaseException) -> str:
    """Why no answer came, as a sentence: what the socket or TLS layer said, with what
    to do where the cause is a common slip (https:// to a plain HTTP port)."""
    if isinstance(error, TimeoutError):
        return "timed out"
    text = str(error) or type(error).__name__
    if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text:
        return (
            "it does not speak TLS on that port (the TLS handshake got a plain HTTP answer); "
            "use http:// instead of https://, or start the server with --tls-cert and --tls-key"
        )
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return f"its TLS certificate is not trusted here ({text})"
    return text
