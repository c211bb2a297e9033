"""`Client`: the blocking client, on one keep-alive `http.client` connection.

Why `http.client` and not a private event loop running `AsyncClient`: a blocking caller
makes one request at a time, and one persistent connection serves that fully. It needs
no thread, no loop and nothing beyond the standard library, and its errors surface in
the caller's thread with a plain traceback. Its one known trap, a kept-alive connection
the server closed while idle, is checked before every reuse (see `_KeepAlive`).
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar, overload

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
from mqpy.client.errors import ConnectionFailed, MQError, NotFound, describe_failure
from mqpy.client.retry import DEFAULT_MAX_WAIT, DEFAULT_RETRIES, RetryPolicy
from mqpy.wire.retry_after import parse_retry_after

T = TypeVar("T")


class Client:
    """A blocking client for one broker.

    `timeout` bounds connecting and each read, in seconds. `retries` is how many times a
    call is repeated after a 429 or 503 (waiting the answer's `Retry-After`, at most
    `max_retry_wait` seconds) or after a failed connection; see `mqpy.client.retry` for
    which calls are repeated when an answer is lost.

    Requests share one connection and take turns, so a Client may be used from several
    threads, one request at a time. Close it (or use `with`) to disconnect the sender
    `publish` made.
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
        self._policy = RetryPolicy(retries, max_retry_wait)
        self._http = _KeepAlive(self.endpoint, timeout, ssl_context)
        self._turn = threading.Lock()
        self._publishing = threading.Lock()
        self._sender_id: int | None = None

    @property
    def url(self) -> str:
        return self.endpoint.url

    @property
    def sender_id(self) -> int | None:
        """The id of the sender `publish` connected, once it has."""
        return self._sender_id

    def connect(
        self,
        mode: Mode,
        client_url: str = "",
        *,
        topic: str | None = None,
        group: str | None = None,
        filter: Mapping[str, Any] | None = None,
        start_at: StartAt | None = None,
    ) -> Connection:
        """Connect a sender (`"send"`) or a receiver (`"receive"`, with the URL where
        its messages are POSTed). Keep a receiver's `secret`: it is shown only now.

        `topic` is a sender's topic, or the topic or pattern (`orders.*`, `orders.>`) a
        receiver takes; the default is "default". A receiver may join a `group`, whose
        members share its messages, and take only messages whose attributes pass
        `filter` (such as ``{"region": "eu"}``; see docs/api.md). A receiver gets what
        is published from now on; `start_at` ("earliest", or a time) replays the
        retained messages published since then too."""
        call = calls.connect(
            mode, client_url, topic=topic, group=group, filter=filter, start_at=start_at
        )
        return self._call(call)

    def send(
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
        """Publish `body` from a connected sender, to its topic unless `topic` names
        another; returns the message id. When this returns, the message is on the
        broker's disk. The options are those of `publish`."""
        message = Message(
            body, attributes, ordering_key, delay_seconds, deliver_at, idempotency_key
        )
        return self._call(calls.send(sender_id, message, topic))

    def disconnect(self, connection_id: int) -> None:
        self._call(calls.disconnect(connection_id))

    def dead_letters(self) -> list[DeadLetter]:
        """Deliveries that ran out of attempts, oldest first (needs an admin key)."""
        return self._call(calls.dead_letters())

    def redrive(self, receiver_id: int | None = None) -> int:
        """Queue dead letters again, all or one receiver's; returns how many (admin key)."""
        return self._call(calls.redrive(receiver_id))

    @overload
    def publish(self, body: str, /) -> str: ...

    @overload
    def publish(
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

    def publish(
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
        """`publish(topic, body, ...)` publishes `body` to `topic` and returns a
        `Published` (id, topic, duplicate) once the message is on the broker's disk.

        `attributes` (str to str) are what subscription filters match; messages with one
        `ordering_key` reach each subscription (or group) one at a time, in publish
        order; `delay_seconds` or `deliver_at` hold the message back; a repeat of an
        `idempotency_key` within the broker's --dedup-window stores nothing and answers
        with the first id (`duplicate=True`), so such a publish is retried even after a
        lost answer.

        `publish(body)`, with the body alone, is the seed protocol's way: it sends from
        a sender this client connects on first use and reuses (disconnected by `close`),
        to that sender's topic, and returns the message id. If the sender is gone (an
        admin disconnected it), a new one is connected and the message sent again: a 404
        means the broker stored nothing.
        """
        message = calls.topic_message(
            body, attributes, ordering_key, delay_seconds, deliver_at, idempotency_key
        )
        if message is None:
            return self._publish_from_sender(first)
        return self._call(calls.publish(first, message))

    def publish_batch(self, topic: str, messages: Sequence[str | Message]) -> list[BatchResult]:
        """Publish up to 1,000 messages to `topic` in one request and one transaction.

        Returns one result per message, in order: a `Published`, or the `MQError` (such
        as `InvalidRequest` for a body over --max-message-bytes) saying why that one
        message was refused; the others are stored all the same. A refusal of the whole
        batch (no messages or more than 1,000, a body over --max-batch-bytes, a bad key)
        raises, and then none was stored.
        """
        return self._call(calls.publish_batch(topic, [calls.as_message(m) for m in messages]))

    def create_subscription(
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
        return self._call(
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

    def create_pull_subscription(
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
        return self._call(
            calls.create_pull_subscription(topic, group, filter, ack_deadline_seconds, start_at)
        )

    def seek(self, subscription_id: int, time: datetime | str) -> Sought:
        """Move a subscription (push or pull; a group member moves its group) to
        `time`, an aware datetime or RFC 3339 text: the retained messages published
        from then on are due again, the pending ones before it are acknowledged."""
        return self._call(calls.seek(subscription_id, time))

    def events_token(self, subscription_id: int, *, ttl_seconds: int | None = None) -> EventsToken:
        """A token that opens the pull subscription's event stream with no
        Authorization header, for a browser's EventSource: hand `url` to the page. It
        is good for `ttl_seconds` (1 to 3600, default 300), for this subscription
        only, with this client's key's rights."""
        return self._call(calls.events_token(subscription_id, ttl_seconds, self.endpoint.url))

    def delete_subscription(self, subscription_id: int) -> None:
        """End a subscription; what it had not yet taken is dropped."""
        return self._call(calls.delete_subscription(subscription_id))

    def pull(
        self, subscription_id: int, *, max_messages: int = 100, wait_seconds: float = 0
    ) -> list[PulledMessage]:
        """Up to `max_messages` (1 to 1,000) messages of a pull subscription, leased to
        this consumer for its ack deadline. With none due, waits up to `wait_seconds`
        (at most 30) for one to come, and answers as soon as one does, else with none."""
        return self._call(calls.pull(subscription_id, max_messages, wait_seconds))

    def ack(self, subscription_id: int, messages: Sequence[str | PulledMessage]) -> Settled:
        """Done with these pulled messages (or ack ids): they never come again."""
        return self._call(calls.settle(subscription_id, "ack", messages))

    def nack(
        self,
        subscription_id: int,
        messages: Sequence[str | PulledMessage],
        *,
        delay_seconds: float | None = None,
    ) -> Settled:
        """Could not take these: due again after `delay_seconds` (by default after the
        retry policy's backoff); dead letters once their attempts are spent."""
        return self._call(
            calls.settle(subscription_id, "nack", messages, delay_seconds=delay_seconds)
        )

    def extend(
        self, subscription_id: int, messages: Sequence[str | PulledMessage], seconds: float
    ) -> Settled:
        """Keep these leased for `seconds` (1 to 600) from now, for slow work."""
        return self._call(calls.settle(subscription_id, "extend", messages, seconds=seconds))

    # -- admin routes: answers are the broker's JSON objects (see docs/api.md) --------

    def create_key(self, role: str, topics: Sequence[str] | None = None) -> AdminAnswer:
        """Make an API key (admin key): `role` is "admin", "publisher" or "subscriber",
        `topics` the topics or patterns it may use (all when None). The answer's "key"
        is the secret itself, shown only this once."""
        return self._call(calls.create_key(role, topics))

    def list_keys(self) -> AdminAnswer:
        """Every key as {"keys": [...]}, without the secrets (admin key)."""
        return self._call(calls.list_keys())

    def revoke_key(self, key_id: str) -> None:
        """Revoke a key by its id: requests with it are refused from now on (admin key)."""
        return self._call(calls.revoke_key(key_id))

    def status(self) -> AdminAnswer:
        """The broker's figures, topics, receivers and nodes, as `mqpy status` shows them."""
        return self._call(calls.status())

    def list_topics(self, *, limit: int | None = None, cursor: str | None = None) -> AdminAnswer:
        """One page of topics with their figures: {"topics": [...], "next_cursor": ...};
        pass `next_cursor` back as `cursor` for the next page."""
        return self._call(calls.list_topics(limit, cursor))

    def get_topic(self, topic: str) -> AdminAnswer:
        """One topic's figures and its subscriptions."""
        return self._call(calls.get_topic(topic))

    def get_message(self, message_id: str) -> AdminAnswer:
        """A message and where each of its deliveries stands (admin key)."""
        return self._call(calls.get_message(message_id))

    def list_subscriptions(
        self, *, topic: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> AdminAnswer:
        """One page of subscriptions, those matching `topic` when given, as
        {"subscriptions": [...], "next_cursor": ...} (paged as `list_topics`)."""
        return self._call(calls.list_subscriptions(topic, limit, cursor))

    def subscribe(self, fields: Mapping[str, Any]) -> AdminAnswer:
        """Create a subscription from the request fields docs/api.md lists (all of them,
        such as max_concurrency, max_per_second, retry_policy and paused, which
        `create_subscription` does not take); returns the broker's whole answer."""
        return self._call(calls.subscribe(fields))

    def get_subscription(self, subscription_id: int) -> AdminAnswer:
        """A subscription's settings, state and figures."""
        return self._call(calls.get_subscription(subscription_id))

    def pause_subscription(self, subscription_id: int) -> AdminAnswer:
        """Deliver nothing to it until it is resumed; its messages wait."""
        return self._call(calls.switch_subscription(subscription_id, "pause"))

    def resume_subscription(self, subscription_id: int) -> AdminAnswer:
        """Deliver to it again: a paused one, or one disabled for failing."""
        return self._call(calls.switch_subscription(subscription_id, "resume"))

    def redrive_dead_letter(self, receiver_id: int, message_id: str) -> AdminAnswer | None:
        """Queue one dead letter (a message's, for one receiver) for delivery again."""
        return self._call(calls.one_dead_letter(receiver_id, message_id, "redrive"))

    def drop_dead_letter(self, receiver_id: int, message_id: str) -> AdminAnswer | None:
        """Drop one dead letter (a message's, for one receiver) for good."""
        return self._call(calls.one_dead_letter(receiver_id, message_id, "drop"))

    def _publish_from_sender(self, body: str) -> str:
        sender_id = self._publisher()
        try:
            return self.send(sender_id, body)
        except NotFound:
            self._forget_publisher(sender_id)
            return self.send(self._publisher(), body)

    def close(self) -> None:
        """Disconnect the sender `publish` made, if any, and close the connection."""
        with self._publishing:
            sender_id, self._sender_id = self._sender_id, None
        try:
            if sender_id is not None:
                self.disconnect(sender_id)
        except MQError:
            pass  # the server is gone or dropped the sender already: nothing to undo
        finally:
            with self._turn:
                self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _publisher(self) -> int:
        with self._publishing:
            if self._sender_id is None:
                self._sender_id = self.connect("send").id
            return self._sender_id

    def _forget_publisher(self, sender_id: int) -> None:
        with self._publishing:
            if self._sender_id == sender_id:
                self._sender_id = None

    def _call(self, call: Call[T]) -> T:
        retry = 0
        while True:
            try:
                return self._once(call)
            except MQError as error:
                retry += 1
                delay = self._policy.delay(retry, error, call.idempotent)
                if delay is None:
                    raise
            time.sleep(delay)

    def _once(self, call: Call[T]) -> T:
        payload = call.payload()
        headers = calls.request_headers(self._key, payload is not None)
        with self._turn:
            status, retry_after, body = self._http.exchange(
                call.method, self.endpoint.prefix + call.path, payload, headers, call.wait
            )
        return calls.answer(call, status, body, parse_retry_after(retry_after))


class _KeepAlive:
    """One persistent HTTP/1.1 connection, reopened when needed.

    The broker closes a connection idle longer than its --idle-timeout. Sending on such a
    connection fails in a way that looks like a lost answer, which `/send` must not retry.
    So before reusing the socket it is polled: a socket the peer closed reads as ready
    (at EOF), and is replaced before anything is sent.
    """

    def __init__(self, endpoint: Endpoint, timeout: float, context: ssl.SSLContext | None):
        self._endpoint = endpoint
        self._timeout = timeout
        self._context = context
        self._connection: http.client.HTTPConnection | None = None

    def exchange(
        self,
        method: str,
        target: str,
        body: bytes | None,
        headers: dict[str, str],
        wait: float = 0.0,
    ) -> tuple[int, str | None, bytes]:
        """Status, Retry-After and body of one request; ConnectionFailed if no answer.
        `wait`: seconds the answer may be held back on purpose, beyond the timeout."""
        connection = self._open()
        try:
            if connection.sock is not None:
                connection.sock.settimeout(self._timeout + wait)
            connection.request(method, target, body=body, headers=headers)
            response = connection.getresponse()
            content = response.read()
        except (OSError, http.client.HTTPException) as error:
            self.close()
            raise self._failure(error, request_sent=True) from None
        return response.status, response.getheader("Retry-After"), content

    def _open(self) -> http.client.HTTPConnection:
        if self._connection is not None and _closed_by_peer(self._connection.sock):
            self.close()
        if self._connection is None:
            self._connection = self._new()
        if self._connection.sock is None:
            # Connecting separately tells "never sent" from "sent, answer lost".
            try:
                self._connection.connect()
            except OSError as error:
                self.close()
                raise self._failure(error, request_sent=False) from None
        return self._connection

    def _new(self) -> http.client.HTTPConnection:
        host, port = self._endpoint.host, self._endpoint.port
        if self._endpoint.scheme == "https":
            context = self._context or ssl.create_default_context()
            return http.client.HTTPSConnection(host, port, timeout=self._timeout, context=context)
        return http.client.HTTPConnection(host, port, timeout=self._timeout)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _failure(self, error: BaseException, request_sent: bool) -> ConnectionFailed:
        where = self._endpoint.url
        if request_sent:
            return ConnectionFailed(
                f"no answer from {where}: {describe_failure(error)}; the server may or may "
                "not have acted on the request",
                request_sent=True,
            )
        return ConnectionFailed(
            f"cannot reach the server at {where}: {describe_failure(error)}", request_sent=False
        )


def _closed_by_peer(sock: socket.socket | None) -> bool:
    """An idle keep-alive socket has nothing to read; readable means EOF (or garbage)."""
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):  # closed underneath us
        return True
    return bool(readable)
