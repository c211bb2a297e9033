"""Decoding and validating request bodies.

Seed requests are matched as Go's encoding/json matched them: keys case-insensitively
(`ClientURL`, `clienturl`), so any MQ Go client works unchanged. Bodies are read
whatever their Content-Type (`curl -d` sends a form type).
"""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

import msgspec
from aiohttp import web

from mqpy.api.encodings import content_coding, decode
from mqpy.api.fields import (
    Attributes,
    DelaySeconds,
    IdempotencyKey,
    OrderingKey,
    RawFilter,
    StartAtText,
    Timestamp,
)
from mqpy.api.problems import Problem, invalid_body, invalid_field
from mqpy.api.state import BODY_TIMEOUT, MAX_MESSAGE_BYTES
from mqpy.api.validation import json_error, validation_problem
from mqpy.model.domain import Mode
from mqpy.model.ids import MAX_CONNECTION_ID

S = TypeVar("S", bound=msgspec.Struct)

_decode_any = msgspec.json.Decoder().decode
# A DNS name (letters of any script, digits, dots, hyphens, underscores) or an IP
# literal (urlsplit strips an IPv6 literal's brackets).
_HOST = re.compile(r"[\w.\-]+|[0-9A-Fa-f:.]+(%[\w.\-]+)?")
# Read in pieces this size, so a body over its route's limit is refused as soon as it
# is, without holding more than that in memory.
_CHUNK_BYTES = 64 * 1024


class ConnectRequest(msgspec.Struct):
    mode: str
    clienturl: str = ""
    # Issue 4: where a receiver subscribes (a name or pattern) or a sender publishes.
    topic: str | None = None
    group: str | None = None
    filter: RawFilter = None
    # Issue 11: where a receiver starts ("new", the default, "earliest" or a time).
    start_at: StartAtText | None = None


class MessageFields(msgspec.Struct, kw_only=True):
    """What a publisher may say about a message besides its body (seed /send and the
    native publish share these)."""

    attributes: Attributes = {}
    ordering_key: OrderingKey | None = None
    delay_seconds: DelaySeconds | None = None
    deliver_at: Timestamp | None = None
    idempotency_key: IdempotencyKey | None = None


class SendRequest(MessageFields, kw_only=True):
    id: int
    body: str
    topic: str | None = None  # the sender's own topic when absent


class DisconnectRequest(msgspec.Struct):
    id: int


ConnectionId = Annotated[int, msgspec.Meta(ge=1, le=MAX_CONNECTION_ID)]


class RedriveRequest(msgspec.Struct):
    receiver_id: ConnectionId | None = None


async def read_object(
    request: web.Request,
    *,
    allow_empty: bool = False,
    fold_case: bool = True,
    max_bytes: int | None = None,
    limit_flag: str = "--max-message-bytes",
) -> dict[str, Any]:
    """The body as a JSON object, or a 400 saying what is wrong; a 413 above `max_bytes`
    (default --max-message-bytes). Keys are lower-cased as Go matched them
    (`fold_case`, for the seed protocol); the native API takes them as written."""
    limit = request.app[MAX_MESSAGE_BYTES] if max_bytes is None else max_bytes
    coding = content_coding(request)  # before reading: a 415 need not wait for it
    try:
        if request.content.is_eof():
            # The whole body came with the headers (the usual case): no timer needed.
            raw = await _read_limited(request, limit, limit_flag)
        else:
            async with asyncio.timeout(request.app[BODY_TIMEOUT]):
                raw = await _read_limited(request, limit, limit_flag)
    except TimeoutError:
        # The rest of the body may still trickle in; closing stops waiting for it.
        raise Problem(
            408,
            "body-timeout",
            "the request body did not arrive in time; send it at once",
            close=True,
        ) from None
    except ConnectionResetError:
        # The client went away mid-body; nobody is left to read an answer.
        raise Problem(
            400, "incomplete-body", "the connection closed before the whole body arrived"
        ) from None
    except web.RequestPayloadError as exc:
        # A body that cannot be read as sent (a broken chunked encoding). What follows
        # it on the connection cannot be framed either: answer, then close.
        raise Problem(
            400,
            "invalid-request",
            f"the body could not be read: {exc}",
            close=True,
        ) from None
    if coding is not None:
        raw = decode(raw, coding, limit, lambda: body_too_large(limit, limit_flag))
    return parse_object(raw, allow_empty=allow_empty, fold_case=fold_case)


def parse_object(
    raw: bytes, *, allow_empty: bool = False, fold_case: bool = True
) -> dict[str, Any]:
    """A whole request body as a JSON object, or a 400 saying what is wrong (see
    `read_object`)."""
    if allow_empty and not raw.strip():
        return {}
    try:
        data = _decode_any(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise json_error(str(exc), raw) from None
    except RecursionError:
        raise invalid_body("the body is nested too deeply; send a flat JSON object") from None
    if not isinstance(data, dict):
        raise invalid_body(
            f"the body is a JSON {_json_kind(data)}; send a JSON object such as "
            '{"id": 123, "body": "hello"}'
        )
    if not fold_case:
        return data
    # Go matches keys case-insensitively; where two keys differ only in case, the last
    # one wins, as it did in MQ Go.
    return {key.lower(): value for key, value in data.items()}


async def _read_limited(request: web.Request, limit: int, flag: str) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise body_too_large(limit, flag)
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(_CHUNK_BYTES):
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit, flag)
        chunks.append(chunk)
    return b"".join(chunks)


def body_too_large(limit: int, flag: str, what: str = "the request body") -> Problem:
    return Problem(
        413,
        "body-too-large",
        f"{what} is larger than the {limit} bytes this server accepts ({flag})",
    )


def convert(data: Any, kind: type[S]) -> S:
    """`data` as a `kind`, or a 400 naming the field that is missing or mistyped."""
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        raise validation_problem(str(exc), data) from None


def parse_mode(value: str) -> Mode:
    try:
        return Mode(value.lower())
    except ValueError:
        raise invalid_field("mode", f"mode must be 'send' or 'receive', not {value!r}") from None


def parse_client_url(value: str, mode: Mode, field: str = "ClientURL") -> str:
    """A receiver's URL, with `http://` added when it has no scheme (as in the seed's
    `svc.domain.tld/mqg`). A sender's URL is kept as given and may be empty. `field` is
    the name the caller wrote (a subscription's `url`)."""
    value = value.strip()
    if mode is Mode.SEND:
        return value
    if not value:
        raise invalid_field(field, f"a receiver needs a {field} to deliver messages to")
    if "://" not in value:
        value = "http://" + value
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise invalid_field(field, _bad_url(field, value, str(exc))) from None
    if parts.scheme.lower() not in ("http", "https"):
        raise invalid_field(
            field, f"{field} must be an http:// or https:// URL, not {parts.scheme}://"
        )
    if not parts.hostname:
        raise invalid_field(field, f"{field} {value!r} has no host name")
    if not _HOST.fullmatch(parts.hostname) or any(_forbidden(c) for c in value):
        raise invalid_field(field, f"{field} {value!r} has characters no URL may contain unencoded")
    return value


def _bad_url(field: str, value: str, reason: str) -> str:
    """urlsplit's complaint about `value`, as a sentence about the field."""
    if "Port" in reason:
        port = urlsplit(value).netloc.rpartition(":")[2]
        return (
            f"{field} {value!r} has the port {port!r}, which is not a number from 0 to "
            "65535; write host:port, such as http://127.0.0.1:9000/hook"
        )
    if "IPv6" in reason:
        return (
            f"{field} {value!r} has an unclosed [ in its host; write an IPv6 address "
            "in brackets, such as http://[::1]:9000/hook"
        )
    return f"{field} {value!r} is not a URL; send one such as http://127.0.0.1:9000/hook"


def _forbidden(char: str) -> bool:
    return char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F


def parse_connection_id(value: int) -> int:
    if not 1 <= value <= MAX_CONNECTION_ID:
        raise Problem(
            404, "unknown-connection", f"no client is connected with id {value}", id=value
        )
    return value


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"
