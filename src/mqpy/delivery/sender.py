"""POSTs one delivery to its receiver and says what happened.

One `aiohttp.ClientSession` is shared by every delivery, so connections to receivers
are kept alive and reused. Redirects are never followed: a receiver answers for its own
URL, and a redirect would let it point the broker somewhere else.
"""

from __future__ import annotations

import json
import ssl
import time
from dataclasses import dataclass

import aiohttp
import msgspec

from mqpy import __version__
from mqpy.delivery.guard import AddressPolicy, guarded_connector
from mqpy.domain import Delivery
from mqpy.retry_after import parse_retry_after
from mqpy.signing import signature_header

# A receiver's answer body is read (so the connection can be reused) but not kept;
# past this many bytes we stop reading and drop the connection instead.
MAX_RESPONSE_BYTES = 1 << 20

_encode = msgspec.json.Encoder().encode


class _Payload(msgspec.Struct, omit_defaults=True):
    """What a receiver gets: the seed's `{"body": ...}`, plus attributes and an
    ordering key only when the message has them (a seed receiver never sees them)."""

    body: str
    attributes: dict[str, str] = {}
    ordering_key: str | None = None


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


class Sender:
    """Delivers messages over HTTP with a shared keep-alive connection pool."""

    def __init__(
        self,
        timeout: float,
        policy: AddressPolicy | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._policy = policy or AddressPolicy()
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # Every address a receiver's name resolves to is checked at each connection
        # (DNS rebinding); the connector has no limit of its own, since the
        # dispatcher's worker count already bounds what is in flight.
        connector = guarded_connector(self._policy, ssl=self._ssl)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            # Answers are drained, never decoded, so ask for them uncompressed.
            headers={"User-Agent": f"mq-py/{__version__}", "Accept-Encoding": "identity"},
            auto_decompress=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, delivery: Delivery) -> Outcome:
        """POST `{"body": ...}` to the receiver; any 2xx acknowledges."""
        assert self._session is not None, "Sender.start() was not called"
        body = _encode(_Payload(delivery.body, dict(delivery.attributes), delivery.ordering_key))
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": delivery.message_id,
            "webhook-timestamp": str(timestamp),
            "mq-attempt": str(delivery.attempt),
            "mq-topic": delivery.topic,
            "mq-subscription-id": str(delivery.subscription_id),
        }
        if delivery.secrets:
            headers["webhook-signature"] = signature_header(
                delivery.secrets, delivery.message_id, timestamp, body
            )
        try:
            async with self._session.post(
                delivery.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                await _drain(response)
                if 200 <= response.status < 300:
                    return Outcome(ok=True, status=response.status)
                retry_after = None
                if response.status in (429, 503):
                    retry_after = parse_retry_after(
                        response.headers.get("Retry-After"), time.time()
                    )
                return Outcome(
                    ok=False,
                    status=response.status,
                    error=f"receiver answered HTTP {response.status}",
                    retry_after=retry_after,
                )
        except TimeoutError:
            return Outcome(ok=False, error=f"no answer within {self._timeout.total:g} s")
        except aiohttp.ClientError as exc:
            return Outcome(ok=False, error=_describe(exc))

    async def confirm(self, url: str, challenge: str) -> str | None:
        """Ask a would-be receiver to echo `challenge` (as WebSub and SNS confirm a
        subscription); None if it did, else why not."""
        assert self._session is not None, "Sender.start() was not called"
        payload = {"type": "mqpy.subscription.confirm", "challenge": challenge}
        try:
            async with self._session.post(
                url,
                json=payload,
                headers={"mq-challenge": challenge},
                allow_redirects=False,
            ) as response:
                text = (await response.content.read(4096)).decode("utf-8", "replace")
                status = response.status
        except TimeoutError:
            return f"the receiver did not answer the confirmation within {self._timeout.total:g} s"
        except aiohttp.ClientError as exc:
            return f"the confirmation request failed: {_describe(exc)}"
        if not 200 <= status < 300:
            return f"the receiver answered the confirmation with HTTP {status}"
        if _echoed(text, challenge):
            return None
        return "the receiver did not echo the challenge it was sent"


def _echoed(text: str, challenge: str) -> bool:
    """The answer is the challenge itself, or a JSON object carrying it."""
    if text.strip() == challenge:
        return True
    try:
        data = json.loads(text)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("challenge") == challenge


async def _drain(response: aiohttp.ClientResponse) -> None:
    read = 0
    async for chunk in response.content.iter_chunked(65536):
        read += len(chunk)
        if read > MAX_RESPONSE_BYTES:
            response.close()
            return


def _describe(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port}: {exc.os_error.strerror or exc}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
