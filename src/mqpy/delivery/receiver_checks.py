"""The checks a receiver passes before it is activated: an address the broker may
reach, and, with --verify-receivers, a confirmed subscription."""

from __future__ import annotations

import secrets

from aiohttp.abc import AbstractResolver

from mqpy.delivery.guard import AddressPolicy, check_receiver_url
from mqpy.delivery.sender import Sender


class ReceiverChecks:
    """The broker's `ReceiverGate`: answers its `refusal(url)` before a receiver is connected."""

    def __init__(
        self,
        policy: AddressPolicy,
        resolver: AbstractResolver,
        sender: Sender,
        *,
        verify: bool,
    ) -> None:
        self._policy = policy
        self._resolver = resolver
        self._sender = sender
        self._verify = verify

    async def refusal(self, url: str) -> str | None:
        reason = await check_receiver_url(url, self._policy, self._resolver)
        if reason is not None or not self._verify:
            return reason
        return await self._sender.confirm(url, secrets.token_urlsafe(24))
