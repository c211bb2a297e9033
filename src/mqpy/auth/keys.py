"""API keys: how they are made, written and recognised.

A key reads `mqpy_<id>_<secret>`: the id (12 hex digits) finds the stored record, the
secret proves possession. Only a SHA-256 of the secret is stored; with 256 random bits
there is nothing for a slow password hash to protect against.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from mqpy.model.domain import ApiKey, Role

PREFIX = "mqpy_"
_ID_LENGTH = 12


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key(role: Role, topics: tuple[str, ...], now: float) -> tuple[ApiKey, str]:
    """A new key record and the key itself, which is shown once and never stored."""
    key_id = secrets.token_hex(_ID_LENGTH // 2)
    secret = secrets.token_urlsafe(32)
    record = ApiKey(key_id, role, topics, hash_secret(secret), now)
    return record, f"{PREFIX}{key_id}_{secret}"


def split_key(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    if not token.startswith(PREFIX) or len(token) < len(PREFIX) + _ID_LENGTH + 2:
        return None
    key_id = token[len(PREFIX) : len(PREFIX) + _ID_LENGTH]
    if token[len(PREFIX) + _ID_LENGTH] != "_":
        return None
    return key_id, token[len(PREFIX) + _ID_LENGTH + 1 :]


def secret_matches(record: ApiKey, secret: str) -> bool:
    return hmac.compare_digest(record.secret_hash, hash_secret(secret))
