"""`AsyncClient`: the asyncio client, on one aiohttp session and its keep-alive pool."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncGenerator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar, overload

import aiohttp

from mqpy.client import calls
from mqpy.client.calls import (
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    AdminAnswer,
    BatchResult,
    Call,
    Connection,
    DeadLetter,
    DeliveryFormat,
    Endpoint,
    EventsToken,
    Message,
    Mode,
    NewSubscription,
    Published,
    PulledMessage,
    Settled,
    Sought,
    StartAt,
    SubscriptionKind,
)
from mqpy.client.errors import (
    ConnectionFailed,
    MQError,
    NotFound,
    describe_failure,
    error_from_answer,
)
from mqpy.client.retry import DEFAULT_MAX_WAIT, DEFAULT_RETRIES, RetryPolicy
from mqpy.wire.retry_after import parse_retry_after

T = TypeVar("T")

# Pooled connections are dropped after this many idle seconds, well before the broker's
# default --idle-timeout (15 s) closes them from its side while a request is on the way.
_KEEPALIVE_SECONDS = 5.0
_POOL_SIZE = 100


class AsyncClient:
    """An asyncio client for one broker; the same calls and errors as `mqpy.Client`.

    Calls may run concurrently: they share one pool of keep-alive connections. Use
    `async with`, or `await close()`, which also disconnects the sender `publish` made.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        max_retry_wait: float = DEFAULT_MAX_WAIT,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.endpoint = Endpoint.parse(url)
        self._key = key
        self._timeout = timeout
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._policy = RetryPolicy(retries, max_retry_wait)
        self._session: aiohttp.ClientSession | None = None
        self._publishing: asyncio.Lock | None = None
        self._sender_id: int | None = None

    @property
    def url(self) -> str:
        return self.endpoint.url

    @property
    def sender_id(self) -> int | None:
        """The id of the sender `publish` connected, once it has."""
        return self._sender_id

    async def connect(
        self,
        mode: Mode,
        client_url: str = "",
        *,
        topic: str | None = None,
        group: str | None = None,
        filter: Mapping[str, Any] | None = None,
        start_at: StartAt | None = None,
    ) -> Connection:
        """Connect a sender or a receiver, as `Client.connect` (topic, group, filter,
        start_at)."""
        call = calls.connect(
            mode, client_url, topic=topic, group=group, filter=filter, start_at=start_at
        )
        return await self._call(call)

    async def send(
        self,
        sender_id: int,
        body: str,
        *,
        topic: str | None = None,
        attributes: Mapping[str, str] | None = None,
        ordering_key: str | None = None,
        delay_seconds: float | None = None,
        deliver_at: datetime | str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Publish `body` from a connected sender, as `Client.send`; returns the message
        id once the message is on the broker's disk."""
        message = Message(
            body, attributes, ordering_key, delay_seconds, deliver_at, idempotency_key
        )
        return await self._call(calls.send(sender_id, message, topic))

    async def disconnect(self, connection_id: int) -> None:
        await self._call(calls.disconnect(connection_id))

    async def dead_letters(self) -> list[DeadLetter]:
        """Deliveries that ran out of attempts, oldest first (needs an admin key)."""
        return await self._call(calls.dead_letters())

    async def redrive(self, receiver_id: int | None = None) -> int:
        """Queue dead letters again, all or one receiver's; returns how many (admin key)."""
        return await self._call(calls.redrive(receiver_id))

    @overload
    async def publish(self, body: str, /) -> str: ...

    @overload
    async def publish(
        self,
        topic: str,
        body: str,
        /,
        *,
        attributes: Mapping[str, str] | None = None,
        ordering_key: str | None = None,
        delay_seconds: float | None = None,
        deliver_at: datetime | str | None = None,
        idempotency_key: str | None = None,
    ) -> Published: ...

    async def publish(
        self,
        first: str,
        body: str | None = None,
        /,
        *,
        attributes: Mapping[str, str] | None = None,
        ordering_key: str | None = None,
        delay_seconds: float | None = None,
        deliver_at: datetime | str | None = None,
        idempotency_key: str | None = None,
    ) -> str | Published:
        """`publish(topic, body, ...)` publishes to a topic and returns a `Published`;
        `publish(body)` sends from a sender connected on first use and then reused
        (concurrent first calls share one connect) and returns the id. As `Client.publish`.
        """
        message = calls.topic_message(
            body, attributes, ordering_key, delay_seconds, deliver_at, idempotency_key
        )
        if message is None:
            return await self._publish_from_sender(first)
        return await self._call(calls.publish(first, message))

    async def publish_batch(
        self, topic: str, messages: Sequence[str | Message]
    ) -> list[BatchResult]:
        """Up to 1,000 messages in one request; one result per message, as
        `Client.publish_batch`."""
        batch = [calls.as_message(m) for m in messages]
        return await self._call(calls.publish_batch(topic, batch))

    async def create_subscription(
        self,
        topic: str = "default",
        url: str | None = None,
        *,
        kind: SubscriptionKind = "push",
        group: str | None = None,
        filter: Mapping[str, Any] | None = None,
        format: DeliveryFormat | None = None,
        ack_deadline_seconds: float | None = None,
        secret: str | None = None,
        start_at: StartAt | None = None,
    ) -> NewSubscription:
        """A subscription to `topic` (a name or pattern): push (the broker POSTs each
        message to `url`, laid out as `format`: "mq", the default, or
        "cloudevents-binary" or "cloudevents-structured") or pull (consumers `pull`;
        messages stay leased for `ack_deadline_seconds`, 1 to 600, default 30). Returns
        its id and signing secret: `secret` (a Standard Webhooks `whsec_...`) if given,
        else one the broker made, which is shown only this once. It gets what is
        published from now on; `start_at` ("earliest", or a time) replays the retained
        messages published since then too."""
        return await self._call(
            calls.create_subscription(
                topic,
                url,
                kind=kind,
                group=group,
                filter=filter,
                format=format,
                ack_deadline_seconds=ack_deadline_seconds,
                secret=secret,
                start_at=start_at,
            )
        )

    async def create_pull_subscription(
        self,
        topic: str = "default",
        *,
        group: str | None = None,
        filter: Mapping[str, Any] | None = None,
        ack_deadline_seconds: float | None = None,
        start_at: StartAt | None = None,
    ) -> int:
        """A pull subscription to `topic` (a name or pattern), in `group` and with
        `filter` as a receiver takes them; returns its id, which `pull` takes. Pulled
        messages stay leased for `ack_deadline_seconds` (1 to 600, default 30). It
        gets what is published from now on; `start_at` ("earliest", or a time)
        replays the retained messages published since then too."""
        return await self._call(
            calls.create_pull_subscription(topic, group, filter, ack_deadline_seconds, start_at)
        )

    async def seek(self, subscription_id: int, time: datetime | str) -> Sought:
        """Move a subscription (push or pull; a group member moves its group) to
        `time`, an aware datetime or RFC 3339 text: the retained messages published
        from then on are due again, the pending ones before it are acknowledged."""
        return await self._call(calls.seek(subscription_id, time))

    async def events_token(
        self, subscription_id: int, *, ttl_seconds: int | None = None
    ) -> EventsToken:
        """A token that opens the pull subscription's event stream with no
        Authorization header, for a browser's EventSource: hand `url` to the page. It
        is good for `ttl_seconds` (1 to 3600, default 300), for this subscription
        only, with this client's key's rights."""
        return await self._call(calls.events_token(subscription_id, ttl_seconds, self.endpoint.url))

    async def delete_subscription(self, subscription_id: int) -> None:
        """End a subscription; what it had not yet taken is dropped."""
        return await self._call(calls.delete_subscription(subscription_id))

    async def pull(
        self, subscription_id: int, *, max_messages: int = 100, wait_seconds: float = 0
    ) -> list[PulledMessage]:
        """Up to `max_messages` messages of a pull subscription, waiting up to
        `wait_seconds` for a first one; as `Client.pull`."""
        return await self._call(calls.pull(subscription_id, max_messages, wait_seconds))

    async def ack(self, subscription_id: int, messages: Sequence[str | PulledMessage]) -> Settled:
        """Done with these pulled messages (or ack ids); as `Client.ack`."""
        return await self._call(calls.settle(subscription_id, "ack", messages))

    async def nack(
        self,
        subscription_id: int,
        messages: Sequence[str | PulledMessage],
        *,
        delay_seconds: float | None = None,
    ) -> Settled:
        """Due again after `delay_seconds` (else the backoff); as `Client.nack`."""
        return await self._call(
            calls.settle(subscription_id, "nack", messages, delay_seconds=delay_seconds)
        )

    async def extend(
        self, subscription_id: int, messages: Sequence[str | PulledMessage], seconds: float
    ) -> Settled:
        """Keep these leased for `seconds` from now; as `Client.extend`."""
        return await self._call(calls.settle(subscription_id, "extend", messages, seconds=seconds))

    # -- admin routes: answers are the broker's JSON objects (see docs/api.md) --------

    async def create_key(self, role: str, topics: Sequence[str] | None = None) -> AdminAnswer:
        """Make an API key (admin key): `role` is "admin", "publisher" or "subscriber",
        `topics` the topics or patterns it may use (all when None). The answer's "key"
        is the secret itself, shown only this once."""
        return await self._call(calls.create_key(role, topics))

    async def list_keys(self) -> AdminAnswer:
        """Every key as {"keys": [...]}, without the secrets (admin key)."""
        return await self._call(calls.list_keys())

    async def revoke_key(self, key_id: str) -> None:
        """Revoke a key by its id: requests with it are refused from now on (admin key)."""
        return await self._call(calls.revoke_key(key_id))

    async def status(self) -> AdminAnswer:
        """The broker's figures, topics, receivers and nodes, as `mqpy status` shows them."""
        return await self._call(calls.status())

    async def list_topics(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> AdminAnswer:
        """One page of topics with their figures: {"topics": [...], "next_cursor": ...};
        pass `next_cursor` back as `cursor` for the next page."""
        return await self._call(calls.list_topics(limit, cursor))

    async def get_topic(self, topic: str) -> AdminAnswer:
        """One topic's figures and its subscriptions."""
        return await self._call(calls.get_topic(topic))

    async def get_message(self, message_id: str) -> AdminAnswer:
        """A message and where each of its deliveries stands (admin key)."""
        return await self._call(calls.get_message(message_id))

    async def list_subscriptions(
        self, *, topic: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> AdminAnswer:
        """One page of subscriptions, those matching `topic` when given, as
        {"subscriptions": [...], "next_cursor": ...} (paged as `list_topics`)."""
        return await self._call(calls.list_subscriptions(topic, limit, cursor))

    async def subscribe(self, fields: Mapping[str, Any]) -> AdminAnswer:
        """Create a subscription from the request fields docs/api.md lists (all of them,
        such as max_concurrency, max_per_second, retry_policy and paused, which
        `create_subscription` does not take); returns the broker's whole answer."""
        return await self._call(calls.subscribe(fields))

    async def get_subscription(self, subscription_id: int) -> AdminAnswer:
        """A subscription's settings, state and figures."""
        return await self._call(calls.get_subscription(subscription_id))

    async def pause_subscription(self, subscription_id: int) -> AdminAnswer:
        """Deliver nothing to it until it is resumed; its messages wait."""
        return await self._call(calls.switch_subscription(subscription_id, "pause"))

    async def resume_subscription(self, subscription_id: int) -> AdminAnswer:
        """Deliver to it again: a paused one, or one disabled for failing."""
        return await self._call(calls.switch_subscription(subscription_id, "resume"))

    async def redrive_dead_letter(self, receiver_id: int, message_id: str) -> AdminAnswer | None:
        """Queue one dead letter (a message's, for one receiver) for delivery again."""
        return await self._call(calls.one_dead_letter(receiver_id, message_id, "redrive"))

    async def drop_dead_letter(self, receiver_id: int, message_id: str) -> AdminAnswer | None:
        """Drop one dead letter (a message's, for one receiver) for good."""
        return await self._call(calls.one_dead_letter(receiver_id, message_id, "drop"))

    async def stream(
        self, subscription_id: int, *, auto_ack: bool = False
    ) -> AsyncGenerator[PulledMessage, None]:
        """A pull subscription's messages as they come, over one Server-Sent Events
        connection, until it ends (the subscription deleted, the broker stopping).
        Ack them with `ack` (what is left unacked comes again after the deadline), or
        pass `auto_ack` to have the broker ack each once sent (at most once)."""
        query = "?ack=auto" if auto_ack else ""
        url = f"{self.endpoint.url}/v1/subscriptions/{int(subscription_id)}/events{query}"
        headers = {**calls.request_headers(self._key, False), "Accept": "text/event-stream"}
        reader = calls.EventReader()
        try:
            async with self._http().get(
                url,
                headers=headers,
                allow_redirects=False,
                timeout=self._timeouts(calls.STREAM_HEARTBEAT_SECONDS),
            ) as response:
                if response.status != 200:
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
                    raise error_from_answer(response.status, await response.read(), retry_after)
                async for line in response.content:
                    message = reader.line(line)
                    if message is not None:
                        yield message
        except (aiohttp.ClientError, TimeoutError) as error:
            raise ConnectionFailed(
                f"the stream from {self.url} broke: {describe_failure(error)}", request_sent=True
            ) from None

    async def _publish_from_sender(self, body: str) -> str:
        sender_id = await self._publisher()
        try:
            return await self.send(sender_id, body)
        except NotFound:
            if self._sender_id == sender_id:
                self._sender_id = None
            return await self.send(await self._publisher(), body)

    async def close(self) -> None:
        """Disconnect the sender `publish` made, if any, and close the connection pool."""
        sender_id, self._sender_id = self._sender_id, None
        try:
            if sender_id is not None:
                await self.disconnect(sender_id)
        except MQError:
            pass  # the server is gone or dropped the sender already: nothing to undo
        finally:
            if self._session is not None:
                await self._session.close()
                self._session = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _publisher(self) -> int:
        if self._publishing is None:  # created here: a Lock belongs to the running loop
            self._publishing = asyncio.Lock()
        async with self._publishing:
            if self._sender_id is None:
                self._sender_id = (await self.connect("send")).id
            return self._sender_id

    async def _call(self, call: Call[T]) -> T:
        retry = 0
        while True:
            try:
                return await self._once(call)
            except MQError as error:
                retry += 1
                delay = self._policy.delay(retry, error, call.idempotent)
                if delay is None:
                    raise
            await asyncio.sleep(delay)

    async def _once(self, call: Call[T]) -> T:
        payload = call.payload()
        headers = calls.request_headers(self._key, payload is not None)
        url = self.endpoint.url + call.path
        try:
            async with self._http().request(
                call.method,
                url,
                data=payload,
                headers=headers,
                allow_redirects=False,
                timeout=self._timeouts(call.wait),
            ) as response:
                body = await response.read()
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as error:
            raise ConnectionFailed(
                f"cannot reach the server at {self.url}: {describe_failure(error)}",
                request_sent=False,
            ) from None
        except (aiohttp.ClientError, TimeoutError) as error:
            raise ConnectionFailed(
                f"no answer from {self.url}: {describe_failure(error)}; the server may or may not "
                "have acted on the request",
                request_sent=True,
            ) from None
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return calls.answer(call, response.status, body, retry_after)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=_POOL_SIZE, keepalive_timeout=_KEEPALIVE_SECONDS, ssl=self._ssl
                ),
                timeout=self._timeouts(0.0),
                # The broker never redirects, and following one would carry the key away;
                # proxies from the environment are not used (trust_env is off).
                trust_env=False,
            )
        return self._session

    def _timeouts(self, wait: float) -> aiohttp.ClientTimeout:
        # Per phase, not in total, so that as in the sync client a timeout while
        # connecting means the request was never sent. A long poll's answer may take
        # `wait` longer on purpose.
        return aiohttp.ClientTimeout(
            total=None, connect=self._timeout, sock_read=self._timeout + wait
        )
