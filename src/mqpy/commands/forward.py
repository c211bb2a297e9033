"""`mqpy listen --forward-to URL`: each pulled message POSTed to a local URL exactly as a
push delivery would be (the same body, headers and Standard Webhooks signature, built
by the sender's own `delivery_request`), acked on a 2xx and nacked otherwise."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime

import aiohttp

from mqpy import __version__
from mqpy.client import PulledMessage
from mqpy.delivery.formats import delivery_request
from mqpy.model.domain import ClaimedDelivery, DeliveryFormat

# How long the local receiver may take to answer one message.
FORWARD_TIMEOUT_SECONDS = 30.0
# A nacked message comes again after 1 s, then 2, 4, ... up to this.
MAX_NACK_DELAY_SECONDS = 60.0


class Forwarder:
    """POSTs pulled messages to one URL, signed with the subscription's secret."""

    def __init__(self, url: str, subscription_id: int, secret: str, format: DeliveryFormat) -> None:
        self.url = url
        self._subscription_id = subscription_id
        self._secret = secret
        self._format = format
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Forwarder:
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_SECONDS),
            headers={"User-Agent": f"mq-py/{__version__}"},
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._http is not None:
            await self._http.close()

    async def forward(self, message: PulledMessage) -> Forwarded:
        """POST one message; what the receiver answered, and how long it took."""
        assert self._http is not None, "use Forwarder as an async context manager"
        body, headers = delivery_request(self._delivery(message), int(time.time()))
        started = time.monotonic()
        try:
            async with self._http.post(
                self.url, data=body, headers=dict(headers), allow_redirects=False
            ) as response:
                await response.read()
                status: int | None = response.status
                error = None if 200 <= response.status < 300 else f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError) as failed:
            status, error = None, _reason(failed)
        return Forwarded(message, status, error, time.monotonic() - started)

    def _delivery(self, message: PulledMessage) -> ClaimedDelivery:
        """The pulled message as the sender would have delivered it to this subscription."""
        return ClaimedDelivery(
            delivery_id=0,  # not the broker's: this side settles by ack id
            lease=message.ack_id,
            message_id=message.message_id,
            subscription_id=self._subscription_id,
            url=self.url,
            body=message.body,
            attempt=message.attempt,
            published_at=datetime.fromisoformat(message.published_at).timestamp(),
            secrets=(self._secret,),
            topic=message.topic,
            attributes=message.attributes,
            ordering_key=message.ordering_key,
            format=self._format,
        )


@dataclass(frozen=True, slots=True)
class Forwarded:
    """How one forward went: `status` is the receiver's (None if it gave none)."""

    message: PulledMessage
    status: int | None
    error: str | None  # why it does not count as received; None for a 2xx
    seconds: float

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def nack_delay(self) -> float:
        """When to try again: backing off with each attempt the message has had."""
        return min(2.0 ** (self.message.attempt - 1), MAX_NACK_DELAY_SECONDS)

    def line(self) -> str:
        """One line for stdout: when, the answer, how long, which message."""
        when = datetime.now().strftime("%H:%M:%S")
        answer = str(self.status) if self.status is not None else "---"
        text = (
            f"{when} {answer} {self.seconds * 1000:.0f} ms {self.message.message_id} "
            f"attempt {self.message.attempt} {self.message.topic}"
        )
        if self.ok:
            return text
        return f"{text}: {self.error}; again in {self.nack_delay:g} s"


def _reason(failed: BaseException) -> str:
    if isinstance(failed, TimeoutError):
        return f"no answer within {FORWARD_TIMEOUT_SECONDS:g} s"
    if isinstance(failed, aiohttp.ClientConnectorError):
        cause = failed.os_error
        said = os.strerror(cause.errno) if cause.errno else str(cause)
        return f"cannot connect to {failed.host}:{failed.port}: {said}"
    return str(failed) or type(failed).__name__
