"""Short-lived tokens that open one pull subscription's event stream without an
`Authorization` header, which a browser's `EventSource` cannot send.

An authenticated caller asks `POST /v1/subscriptions/{id}/events-token` for one; it is
then accepted as `?token=` on `GET /v1/subscriptions/{id}/events` alone, for that
subscription alone, until it expires, and with the rights of the key that asked.

A token is `mqst_<payload>.<mac>` (base64url), the payload naming the subscription, the
key and the expiry. The MAC's secret is derived from what every broker sharing a store
already holds about that key (the stored hash of its secret, or MQPY_ADMIN_KEY), so a
token made by one node is good on every other, and revoking the key ends its tokens at
once. Someone who can read the store's key table could mint tokens; they can read the
messages in that store directly anyway.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

PREFIX = "mqst_"
DEFAULT_TTL_SECONDS = 300
MIN_TTL_SECONDS = 1
MAX_TTL_SECONDS = 3600
_CONTEXT = b"mq-py stream token v1:"  # so no other MAC made from the same secret matches


@dataclass(frozen=True, slots=True)
class StreamToken:
    subscription_id: int
    key_id: str
    expires_at: int  # Unix seconds
    payload: bytes
    mac: bytes


def mac_secret_for(secret: str) -> bytes:
    """The MAC secret for one API key's tokens, from what the brokers know of it."""
    return hashlib.sha256(_CONTEXT + secret.encode()).digest()


def make_token(mac_secret: bytes, key_id: str, subscription_id: int, expires_at: int) -> str:
    payload = f"{subscription_id}.{key_id}.{expires_at}".encode()
    return f"{PREFIX}{_encode(payload)}.{_encode(_mac(mac_secret, payload))}"


def read_token(text: str) -> StreamToken | None:
    """The token's claims, not yet checked; None if it is not shaped like one."""
    if not text.startswith(PREFIX):
        return None
    encoded_payload, _, encoded_mac = text.removeprefix(PREFIX).partition(".")
    try:
        payload, mac = _decode(encoded_payload), _decode(encoded_mac)
        subscription, key_id, expires = payload.decode("ascii").split(".")
        return StreamToken(int(subscription), key_id, int(expires), payload, mac)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None


def holds(token: StreamToken, mac_secret: bytes, subscription_id: int, now: float) -> bool:
    """The token was made with `mac_secret`, for this subscription, and has not expired."""
    genuine = hmac.compare_digest(token.mac, _mac(mac_secret, token.payload))
    return genuine and token.subscription_id == subscription_id and now < token.expires_at


def _mac(mac_secret: bytes, payload: bytes) -> bytes:
    return hmac.new(mac_secret, payload, hashlib.sha256).digest()


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
