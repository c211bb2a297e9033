"""Who is calling, and what they may do.

`Access` recognises API keys (the bootstrap admin key from the environment, and the
stored ones, cached here so a request costs no store read; `KeyRegistry.reload` brings
them in line with the store when another node created or revoked one) and answers
the broker's questions about a caller. With no key configured at all, access
is open: every caller is an anonymous admin (and the server stays on loopback).
"""

from __future__ import annotations

import hmac
from collections.abc import Collection
from dataclasses import dataclass

from mqpy.auth.keys import secret_matches, split_key
from mqpy.auth.stream_tokens import holds, mac_secret_for, make_token, read_token
from mqpy.model.domain import ApiKey, Role
from mqpy.model.topics import covers, is_reserved

BOOTSTRAP_KEY_ID = "bootstrap-admin"
ANONYMOUS_KEY_ID = "anonymous"


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller a request speaks for."""

    key_id: str
    role: Role
    topics: tuple[str, ...] = ()

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def may_use_topic(self, topic: str) -> bool:
        """Whether this key may publish to `topic`, or subscribe to it (a name or a
        pattern, which its own patterns must cover). The broker's own topics
        (`mq.events`) tell of every subscription: an admin key may use them, and a key
        whose topics name them; a key allowed every topic is not enough."""
        if is_reserved(topic) and not self.is_admin:
            return any(covers(allowed, topic) for allowed in self.topics)
        return not self.topics or any(covers(allowed, topic) for allowed in self.topics)


ANONYMOUS = Principal(ANONYMOUS_KEY_ID, Role.ADMIN)


class Access:
    """The keys this broker knows."""

    def __init__(self, admin_key: str | None = None) -> None:
        self._admin_key = admin_key or None
        self._keys: dict[str, ApiKey] = {}
        # Once keys are required they stay required: revoking the last key must not
        # turn a server into an open one (it may be listening beyond loopback).
        self._required = self._admin_key is not None

    def load(self, keys: list[ApiKey], *, keep: Collection[str] = ()) -> None:
        """Know exactly `keys`, except those named in `keep`, which stay as they are
        here (created or revoked by this process while `keys` was being read)."""
        fresh = {key.id: key for key in keys if key.id not in keep}
        fresh.update((key_id, self._keys[key_id]) for key_id in keep if key_id in self._keys)
        self._keys = fresh
        self._required = self._required or bool(self._keys)

    def key_ids(self) -> set[str]:
        """The stored keys known (the bootstrap admin key is not one)."""
        return set(self._keys)

    def added(self, key: ApiKey) -> None:
        self._keys[key.id] = key
        self._required = True

    def require(self) -> None:
        """Require keys from now on: another process made one (it may be gone)."""
        self._required = True

    def revoked(self, key_id: str) -> None:
        self._keys.pop(key_id, None)

    def describe(self) -> str:
        """Which keys are configured, for the log: never a key itself."""
        sources = ["MQPY_ADMIN_KEY"] if self._admin_key else []
        if self._keys:
            sources.append(f"{len(self._keys)} stored keys")
        return " and ".join(sources) or "none"

    @property
    def enabled(self) -> bool:
        """Keys are required once any key is configured, until the process ends."""
        return self._required

    def authenticate(self, token: str | None) -> Principal | None:
        """The principal a bearer token stands for; None if it is not a valid key.

        With access open, every caller (with or without a token) is ANONYMOUS."""
        if not self.enabled:
            return ANONYMOUS
        if token is None:
            return None
        if self._admin_key is not None and hmac.compare_digest(
            token.encode(), self._admin_key.encode()
        ):
            return Principal(BOOTSTRAP_KEY_ID, Role.ADMIN)
        parts = split_key(token)
        if parts is None:
            return None
        key = self._keys.get(parts[0])
        if key is None or not secret_matches(key, parts[1]):
            return None
        return Principal(key.id, key.role, key.topics)

    def stream_token(self, principal: Principal, subscription_id: int, expires_at: int) -> str:
        """A token that opens `subscription_id`'s event stream as `principal` until
        `expires_at` (stream_tokens.py)."""
        mac_secret = self._token_mac_secret(principal.key_id)
        if mac_secret is None:  # open access: anyone may read the stream; the token is a formality
            mac_secret = mac_secret_for(ANONYMOUS_KEY_ID)
        return make_token(mac_secret, principal.key_id, subscription_id, expires_at)

    def stream_principal(self, text: str, subscription_id: int, now: float) -> Principal | None:
        """Whom a `?token=` on `subscription_id`'s event stream speaks for; None if it
        is not a live token for that subscription of a key still known."""
        token = read_token(text)
        if token is None:
            return None
        mac_secret = self._token_mac_secret(token.key_id)
        if mac_secret is None or not holds(token, mac_secret, subscription_id, now):
            return None
        if token.key_id == BOOTSTRAP_KEY_ID:
            return Principal(BOOTSTRAP_KEY_ID, Role.ADMIN)
        record = self._keys[token.key_id]
        return Principal(record.id, record.role, record.topics)

    def _token_mac_secret(self, key_id: str) -> bytes | None:
        if key_id == BOOTSTRAP_KEY_ID:
            return None if self._admin_key is None else mac_secret_for(self._admin_key)
        record = self._keys.get(key_id)
        return None if record is None else mac_secret_for(record.secret_hash)
