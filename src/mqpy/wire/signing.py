"""Delivery signatures per the Standard Webhooks specification (https://www.standardwebhooks.com).

The broker signs every delivery so a receiver can tell it came from this broker, unaltered
and recently. The scheme is the public standard rather than a home-grown one, so receivers
can check deliveries with any Standard Webhooks library, or with `verify` below.

Signed content: ``{webhook-id}.{webhook-timestamp}.{body}``, HMAC-SHA256, base64, prefixed
with the scheme version ``v1,``. Several signatures may travel in one header, separated by
spaces: while a receiver's secret is being rotated, both the new and the old secret sign, so
a receiver holding either one keeps accepting deliveries.

Only the standard library is used, so receivers can import this without the server's
dependencies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from secrets import token_bytes

__all__ = [
    "ID_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "InvalidSignature",
    "check_secret",
    "generate_secret",
    "sign",
    "signature_header",
    "verify",
    "webhook_headers",
]

SECRET_PREFIX = "whsec_"
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
DEFAULT_TOLERANCE = 300.0  # seconds; the standard's recommended replay window

_VERSION = "v1"
_SECRET_BYTES = 32  # the standard asks for 24 to 64 random bytes
_MIN_SECRET_BYTES = 24
_MAX_SECRET_BYTES = 64


class InvalidSignature(ValueError):
    """A delivery failed verification; the message says which check failed and why."""


def generate_secret() -> str:
    """A fresh signing secret for one receiver, in the standard's ``whsec_<base64>`` form."""
    return SECRET_PREFIX + base64.b64encode(token_bytes(_SECRET_BYTES)).decode("ascii")


def check_secret(secret: str) -> str | None:
    """Why `secret` is not one the broker would have generated (``whsec_`` and the
    base64 of 24 to 64 bytes), or None if it is fine."""
    if not secret.startswith(SECRET_PREFIX):
        return f"it must start with '{SECRET_PREFIX}'"
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        return f"what follows '{SECRET_PREFIX}' must be base64 (A-Z, a-z, 0-9, +, /, =)"
    if not _MIN_SECRET_BYTES <= len(raw) <= _MAX_SECRET_BYTES:
        return (
            f"it must hold {_MIN_SECRET_BYTES} to {_MAX_SECRET_BYTES} random bytes, not {len(raw)}"
        )
    return None


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature of a delivery, made with one secret.

    The body is signed as raw bytes, exactly as sent: re-encoding it would make the
    signature depend on how each side happens to serialise it.
    """
    digest = _mac(_mac_secret(secret), message_id, timestamp, body)
    return f"{_VERSION},{base64.b64encode(digest).decode('ascii')}"


def signature_header(secrets: Sequence[str], message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one signature per active secret, space-separated.

    More than one secret is active only during a rotation's overlap window.
    """
    if isinstance(secrets, str) or not secrets:
        raise ValueError("signature_header needs a non-empty list of secrets")
    return " ".join(sign(secret, message_id, timestamp, body) for secret in secrets)


def webhook_headers(
    secrets: Sequence[str], message_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """All three Standard Webhooks headers for one delivery, ready to send."""
    return {
        ID_HEADER: message_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature_header(secrets, message_id, timestamp, body),
    }


def verify(
    body: bytes,
    headers: Mapping[str, str],
    secret: str | Sequence[str],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> None:
    """Check that a delivery is authentic, unaltered and recent; raise `InvalidSignature` if not.

    For receivers: pass the raw request body (before any JSON parsing), the request headers
    (any casing) and your secret, or several secrets while you rotate yours. The timestamp
    window stops an intercepted delivery from being replayed later.
    """
    if not isinstance(body, bytes | bytearray | memoryview):
        raise TypeError(
            f"verify needs the request body as bytes, exactly as received, not a "
            f"{type(body).__name__}: pass the raw bytes (`await request.read()` in aiohttp, "
            "`request.get_data()` in Flask, `await request.body()` in Starlette), never "
            "text decoded or JSON re-serialised from them"
        )
    found = _lower_keys(headers)
    message_id = _required(found, ID_HEADER)
    timestamp = _check_timestamp(_required(found, TIMESTAMP_HEADER), tolerance, now)
    offered = _required(found, SIGNATURE_HEADER)
    expected = [
        _mac(mac_secret, message_id, timestamp, body) for mac_secret in _mac_secrets(secret)
    ]
    # compare_digest takes the same time wherever two digests differ, so an attacker
    # cannot guess a valid signature byte by byte from response times.
    if any(hmac.compare_digest(o, e) for o in _offered_digests(offered) for e in expected):
        return
    raise InvalidSignature(
        "no signature in the webhook-signature header matches this body with the given "
        "secret: the body was altered, the secret is wrong or was rotated, or the body "
        "was re-serialised before verifying (verify the raw bytes as received)"
    )


def _mac(mac_secret: bytes, message_id: str, timestamp: int, body: bytes) -> bytes:
    """HMAC-SHA256 over ``{id}.{timestamp}.{body}``: binding id and time to the body stops
    a signature from being replayed with another message id or a fresh timestamp."""
    return hmac.new(
        mac_secret, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256
    ).digest()


def _mac_secrets(secret: str | Sequence[str]) -> list[bytes]:
    """One secret, or several while a receiver rotates (a bare str is one secret, not many)."""
    single = isinstance(secret, str | bytes | bytearray)
    decoded = [_mac_secret(secret)] if single else [_mac_secret(s) for s in secret]  # type: ignore[arg-type]
    if not decoded:
        raise ValueError("verify needs at least one secret")
    return decoded


def _mac_secret(secret: str) -> bytes:
    """The HMAC secret: the secret's base64 part, decoded (padding is optional, as in the spec)."""
    if not isinstance(secret, str):
        raise TypeError(
            f"a signing secret is a str such as 'whsec_...', as /connect answered, not a "
            f"{type(secret).__name__}"
        )
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error as error:
        raise ValueError(f"a signing secret must be '{SECRET_PREFIX}' + base64: {error}") from None
    if not raw:
        raise ValueError("a signing secret may not be empty")
    return raw


def _lower_keys(headers: Mapping[str, str]) -> dict[str, str]:
    """HTTP header names are case-insensitive; frameworks hand them over in any casing."""
    return {name.lower(): value for name, value in headers.items()}


def _required(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name, "")
    if not value:
        raise InvalidSignature(f"the {name} header is missing or empty")
    return value


def _check_timestamp(value: str, tolerance: float, now: float | None) -> int:
    """The delivery's timestamp, if it is whole seconds within `tolerance` of `now`."""
    if not (value.isascii() and value.isdigit()):
        raise InvalidSignature(f"the {TIMESTAMP_HEADER} header {value!r} is not Unix seconds")
    timestamp = int(value)
    current = time.time() if now is None else now
    if timestamp < current - tolerance:
        raise InvalidSignature(
            f"the delivery's timestamp is {current - timestamp:.0f}s old, more than the "
            f"{tolerance:g}s tolerance: a replay, or the receiver's clock is wrong"
        )
    if timestamp > current + tolerance:
        raise InvalidSignature(
            f"the delivery's timestamp is {timestamp - current:.0f}s in the future, more than "
            f"the {tolerance:g}s tolerance: the sender's or receiver's clock is wrong"
        )
    return timestamp


def _offered_digests(header: str) -> list[bytes]:
    """The decodable ``v1`` signatures in a header; other versions (e.g. ``v1a``) are skipped."""
    digests = []
    for entry in header.split():
        version, _, encoded = entry.partition(",")
        if version == _VERSION:
            try:
                digests.append(base64.b64decode(encoded, validate=True))
            except binascii.Error:
                continue
    return digests
