"""The broker's routes as data: what each call sends, whether it is safe to repeat, and
how its answer reads. Both clients (sync and async) send these; only the I/O differs."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import urlsplit

from mqpy import __version__
from mqpy.client.errors import MQError, error_from_answer

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 10.0

Mode = Literal["send", "receive"]
T = TypeVar("T")


@dataclass(frozen=True)
class Connection:
    """A connected sender or receiver. `secret` signs a receiver's deliveries; the server
    shows it only in the /connect answer, so keep it. Senders have none."""

    id: int
    secret: str | None = None


@dataclass(frozen=True)
class DeadLetter:
    """A delivery that ran out of attempts (or of age) and waits for a redrive."""

    message_id: str
    receiver_id: int
    attempts: int
    last_error: str
    dead_at: float  # Unix seconds
    body: str


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request. `idempotent`: sending it twice leaves the broker as sending it once,
    so it may be retried after its answer was lost."""

    method: str
    path: str
    body: dict[str, Any] | None
    idempotent: bool
    read: Callable[[Any], T]

    def payload(self) -> bytes | None:
        if self.body is None:
            return None
        return json.dumps(self.body, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Endpoint:
    """The broker's base URL, split the way the HTTP libraries want it."""

    url: str  # without a trailing slash
    scheme: str
    host: str
    port: int
    prefix: str  # a path the broker is mounted under, e.g. behind a reverse proxy

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url.strip())
        try:
            port = parts.port
        except ValueError as error:
            raise ValueError(f"{url!r} is not a usable broker URL: {error}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL such as {DEFAULT_URL}")
        if parts.query or parts.fragment:
            raise ValueError(f"{url!r}: give the broker's base URL, with no ? or #")
        default_port = 443 if parts.scheme == "https" else 80
        return cls(
            url=url.strip().rstrip("/"),
            scheme=parts.scheme,
            host=parts.hostname,
            port=port or default_port,
            prefix=parts.path.rstrip("/"),
        )


def request_headers(key: str | None, has_body: bool) -> dict[str, str]:
    headers = {"Accept": "application/json", "User-Agent": f"mqpy-client/{__version__}"}
    if has_body:
        headers["Content-Type"] = "application/json"
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def answer(call: Call[T], status: int, body: bytes, retry_after: float | None) -> T:
    """The call's result from a 2xx answer; any other status raises its typed error."""
    if not 200 <= status < 300:
        raise error_from_answer(status, body, retry_after)
    try:
        value = json.loads(body) if body.strip() else None
    except ValueError:
        raise _unexpected(status, call, body) from None
    try:
        return call.read(value)
    except (KeyError, TypeError, ValueError):
        raise _unexpected(status, call, body) from None


def _unexpected(status: int, call: Call[Any], body: bytes) -> MQError:
    return MQError(
        f"unexpected answer to {call.method} {call.path}: {body[:200]!r}; is this an mq-py "
        "server, and of a version this client knows?",
        status=status,
    )


# -- the routes ---------------------------------------------------------------------------


def connect(mode: Mode, client_url: str) -> Call[Connection]:
    # Not idempotent: after a lost answer the connection may exist; a retry would make a
    # second one (and a second receiver gets a second copy of every message).
    return Call("POST", "/connect", {"ClientURL": client_url, "mode": mode}, False, _connection)


def send(sender_id: int, body: str) -> Call[str]:
    # Not idempotent: after a lost answer the message may be stored; a retry would
    # publish it twice.
    return Call("POST", "/send", {"id": sender_id, "body": body}, False, _message_id)


def disconnect(connection_id: int) -> Call[None]:
    # Idempotent in effect: a repeat leaves it disconnected too, though it answers 404.
    return Call("POST", "/disconnect", {"id": connection_id}, True, _nothing)


def dead_letters() -> Call[list[DeadLetter]]:
    return Call("GET", "/v1/dead-letters", None, True, _dead_letters)


def redrive(receiver_id: int | None) -> Call[int]:
    # Idempotent in effect: redriven letters leave the list, a repeat finds none of them.
    return Call("POST", "/v1/dead-letters/redrive", {"receiver_id": receiver_id}, True, _redriven)


def _connection(value: Any) -> Connection:
    secret = value.get("secret")
    return Connection(id=_integer(value["id"]), secret=secret if isinstance(secret, str) else None)


def _message_id(value: Any) -> str:
    message_id = value["message_id"]
    if not isinstance(message_id, str):
        raise TypeError("message_id is not a string")
    return message_id


def _nothing(value: Any) -> None:
    return None


def _dead_letters(value: Any) -> list[DeadLetter]:
    return [
        DeadLetter(
            message_id=str(letter["message_id"]),
            receiver_id=_integer(letter["receiver_id"]),
            attempts=_integer(letter["attempts"]),
            last_error=str(letter["last_error"]),
            dead_at=float(letter["dead_at"]),
            body=str(letter["body"]),
        )
        for letter in value["dead_letters"]
    ]


def _redriven(value: Any) -> int:
    return _integer(value["redriven"])


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{value!r} is not an integer")
    return value
