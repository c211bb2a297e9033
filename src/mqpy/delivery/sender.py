"""POSTs one delivery to its receiver and says what happened.

Connections to receivers are kept alive and reused (`connections.py`). Redirects are
never followed: a receiver answers for its own URL, and a redirect would let it point
the broker somewhere else.
"""

from __future__ import annotations

import json
import ssl
import time
from dataclasses import dataclass
from typing import Protocol

from mqpy import __version__
from mqpy.delivery.connections import Answer, DeliveryFailed, ReceiverConnections
from mqpy.delivery.formats import delivery_request
from mqpy.delivery.guard import AddressPolicy
from mqpy.model.domain import ClaimedDelivery
from mqpy.wire.retry_after import parse_retry_after


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one attempt: acknowledged, or failed with a reason."""

    ok: bool
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None

    @property
    def receiver_unavailable(self) -> bool:
        """The failure is the receiver's as a whole (down, overloaded, broken), not
        this message's: no connection or answer, a 5xx, or a 429."""
        return not self.ok and (self.status is None or self.status >= 500 or self.status == 429)


class DeliverySender(Protocol):
    """What the dispatcher needs of a sender: one attempt and its outcome. `Sender` is
    the real one; in-process tests record what they were asked to send."""

    async def send(self, delivery: ClaimedDelivery) -> Outcome: ...


class Sender:
    """Delivers messages over HTTP/1.1, keeping connections to receivers alive."""

    def __init__(
        self,
        timeout: float,
        policy: AddressPolicy | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._timeout = timeout
        self._policy = policy or AddressPolicy()
        self._ssl = ssl_context
        self._connections: ReceiverConnections | None = None

    async def start(self) -> None:
        # Inside the event loop: the resolver's worker threads belong to it.
        self._connections = ReceiverConnections(
            self._policy, ssl_context=self._ssl, user_agent=f"mq-py/{__version__}"
        )

    async def close(self) -> None:
        if self._connections is not None:
            await self._connections.close()
            self._connections = None

    async def send(self, delivery: ClaimedDelivery) -> Outcome:
        """POST the delivery in its subscription's format; any 2xx acknowledges."""
        body, headers = delivery_request(delivery, int(time.time()))
        answer = await self._post(delivery.url, body, headers)
        if isinstance(answer, str):
            return Outcome(ok=False, error=answer)
        if 200 <= answer.status < 300:
            return Outcome(ok=True, status=answer.status)
        retry_after = None
        if answer.status in (429, 503):
            retry_after = parse_retry_after(answer.retry_after, time.time())
        return Outcome(
            ok=False,
            status=answer.status,
            error=f"receiver answered HTTP {answer.status}",
            retry_after=retry_after,
        )

    async def confirm(self, url: str, challenge: str) -> str | None:
        """Ask a would-be receiver to echo `challenge` (as WebSub and SNS confirm a
        subscription); None if it did, else why not."""
        payload = {"type": "mqpy.subscription.confirm", "challenge": challenge}
        headers = [("Content-Type", "application/json"), ("mq-challenge", challenge)]
        answer = await self._post(url, json.dumps(payload).encode(), headers, keep_body=4096)
        if isinstance(answer, str):
            return f"the confirmation request failed: {answer}"
        if not 200 <= answer.status < 300:
            return f"the receiver answered the confirmation with HTTP {answer.status}"
        if _echoed(answer.body.decode("utf-8", "replace"), challenge):
            return None
        return "the receiver did not echo the challenge it was sent"

    async def _post(
        self, url: str, body: bytes, headers: list[tuple[str, str]], keep_body: int = 0
    ) -> Answer | str:
        """The receiver's answer, or why there was none, in `last_error`'s words."""
        assert self._connections is not None, "Sender.start() was not called"
        try:
            return await self._connections.post(
                url, body, headers, timeout=self._timeout, keep_body=keep_body
            )
        except TimeoutError:
            return f"no answer within {self._timeout:g} s"
        except DeliveryFailed as failed:
            return failed.reason


def _echoed(text: str, challenge: str) -> bool:
    """The answer is the challenge itself, or a JSON object carrying it."""
    if text.strip() == challenge:
        return True
    try:
        data = json.loads(text)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("challenge") == challenge
