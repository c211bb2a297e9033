"""For receivers: check that a delivery came from the broker, and read it.

`Delivery.from_request` works in any web framework: give it the raw body, the headers
and the secret `/connect` returned. `serve_receiver` is a ready aiohttp receiver that
does this for every request and hands each checked delivery to your coroutine; it is
what `mqpy listen` runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from mqpy.wire.signing import (
    DEFAULT_TOLERANCE,
    ID_HEADER,
    TIMESTAMP_HEADER,
    InvalidSignature,
    verify,
)

if TYPE_CHECKING:
    from aiohttp import web

__all__ = [
    "ATTEMPT_HEADER",
    "Delivery",
    "InvalidDelivery",
    "InvalidSignature",
    "ReceiverServer",
    "serve_receiver",
]

ATTEMPT_HEADER = "mq-attempt"
TOPIC_HEADER = "mq-topic"
CHALLENGE_HEADER = "mq-challenge"
Secret = str | Sequence[str]
Handler = Callable[["Delivery"], Awaitable[object]]

log = logging.getLogger("mqpy.receiver")  # its name before it moved into client/

# A delivery may reach the receiver before the /connect answer with its secret reaches
# whoever started it (messages waiting for a first receiver go out at once). Such a
# delivery waits this long for the secret before it is refused, to be retried later.
_SECRET_WAIT_SECONDS = 5.0


class InvalidDelivery(ValueError):
    """The request is signed correctly but is not a delivery this module can read."""


@dataclass(frozen=True)
class Delivery:
    """One delivery, checked: `message_id` is stable across attempts (deduplicate on it),
    `attempt` counts from 1 (again from 1 after a redrive), `timestamp` is when this
    attempt was signed (Unix seconds), `body` is the message as published."""

    message_id: str
    attempt: int
    timestamp: int
    body: str
    topic: str = "default"
    attributes: Mapping[str, str] = field(default_factory=dict)
    ordering_key: str | None = None

    @classmethod
    def from_request(
        cls,
        body: bytes,
        headers: Mapping[str, str],
        secret: Secret,
        *,
        tolerance: float = DEFAULT_TOLERANCE,
    ) -> Delivery:
        """Verify the signature, then read the payload.

        `body` must be the raw bytes as received, before any JSON parsing. `secret` is
        yours from /connect, or a list of secrets while you rotate. Raises
        `InvalidSignature` (not from the broker, altered, or too old) or
        `InvalidDelivery` (signed, but not a `{"body": "..."}` delivery).
        """
        verify(body, headers, secret, tolerance=tolerance)
        found = {name.lower(): value for name, value in headers.items()}
        payload = _payload(body)
        return cls(
            message_id=found[ID_HEADER],  # verify() checked both are present
            attempt=_attempt(found.get(ATTEMPT_HEADER)),
            timestamp=int(found[TIMESTAMP_HEADER]),
            body=payload["body"],
            topic=found.get(TOPIC_HEADER, "default"),
            attributes=payload.get("attributes", {}),
            ordering_key=payload.get("ordering_key"),
        )


def _attempt(value: str | None) -> int:
    if value is None or not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise InvalidDelivery(f"the {ATTEMPT_HEADER} header {value!r} is not an attempt number")
    return int(value)


def _payload(raw: bytes) -> dict[str, Any]:
    """The delivery's JSON: `body`, and `attributes`/`ordering_key` when the message
    has them."""
    try:
        payload = json.loads(raw)
    except ValueError as error:
        raise InvalidDelivery(f"the delivery is not JSON: {error}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("body"), str):
        raise InvalidDelivery('the delivery is not a JSON object {"body": "..."}')
    attributes = payload.get("attributes", {})
    if not isinstance(attributes, dict) or not all(isinstance(v, str) for v in attributes.values()):
        raise InvalidDelivery("the delivery's attributes are not an object of strings")
    if not isinstance(payload.get("ordering_key", ""), str):
        raise InvalidDelivery("the delivery's ordering_key is not a string")
    return payload


class ReceiverServer:
    """An HTTP server that checks each delivery and awaits `handler(delivery)`.

    Answers: 204 once the handler returns (the broker counts it delivered); 401 for a bad
    signature and 400 for an unreadable payload (the broker retries, then dead-letters);
    500 if the handler raises, so the message comes again later.

    `secret` may be set after start: connect the receiver once the server listens, then
    assign the secret from the answer. Until a secret is set the server also answers the
    broker's `--verify-receivers` challenge, which arrives during that /connect.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/",
        secret: Secret | None = None,
        max_body_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.path = path
        self.max_body_bytes = max_body_bytes
        self._secret: Secret | None = None
        self._has_secret = asyncio.Event()
        self._runner: web.AppRunner | None = None
        if secret is not None:
            self.secret = secret

    @property
    def secret(self) -> Secret | None:
        return self._secret

    @secret.setter
    def secret(self, value: Secret) -> None:
        self._secret = value
        self._has_secret.set()

    @property
    def url(self) -> str:
        """Where this server listens, for the ClientURL of /connect."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.path}"

    async def start(self) -> ReceiverServer:
        from aiohttp import web

        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_post(self.path, self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        """Stop listening; deliveries being handled finish first."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ReceiverServer:
        return await self.start()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _receive(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        raw = await request.read()
        if CHALLENGE_HEADER in request.headers and self._secret is None:
            return web.json_response({"challenge": request.headers[CHALLENGE_HEADER]})
        secret = await self._wait_for_secret()
        if secret is None:
            return web.Response(status=503, headers={"Retry-After": "1"}, text="not ready")
        try:
            delivery = Delivery.from_request(raw, request.headers, secret)
        except InvalidSignature as error:
            log.warning("refused a delivery: %s", error)
            return web.Response(status=401, text=str(error))
        except InvalidDelivery as error:
            log.warning("refused a delivery: %s", error)
            return web.Response(status=400, text=str(error))
        await self.handler(delivery)
        return web.Response(status=204)

    async def _wait_for_secret(self) -> Secret | None:
        try:
            async with asyncio.timeout(_SECRET_WAIT_SECONDS):
                await self._has_secret.wait()
        except TimeoutError:
            return None
        return self._secret


async def serve_receiver(
    handler: Handler,
    host: str = "127.0.0.1",
    port: int = 0,
    path: str = "/",
    secret: Secret | None = None,
) -> ReceiverServer:
    """Start a `ReceiverServer` (port 0 picks a free one); close it when done."""
    return await ReceiverServer(handler, host=host, port=port, path=path, secret=secret).start()
