"""Every request the broker refuses, as one class each, carrying what the API answers.

Each class names its HTTP status and its problem type (the slug after
`https://mq-py.dev/problems/`), so the API maps an error to its problem+json answer by
the class alone, as Starlette's exception handlers do, and a new error is one class
here, not a new branch somewhere else. Nothing here imports HTTP code: these are
numbers and words the broker core and the store raise with.
"""

from __future__ import annotations

from typing import Any, ClassVar


class BrokerError(Exception):
    """A request the broker refuses; the API answers `status` with `problem_type`."""

    status: ClassVar[int] = 400
    problem_type: ClassVar[str] = "refused"
    # The caller's detail hides the cause (a store failure): the operator's log shows it.
    log_cause: ClassVar[bool] = False
    # Seconds the caller should wait before trying again (the Retry-After header), or None.
    retry_after: float | None = None

    @property
    def detail(self) -> str:
        """The sentence the caller reads: what was wrong, and what to do."""
        return str(self)

    @property
    def extensions(self) -> dict[str, Any]:
        """Members of the problem document beside type, title, status and detail."""
        return {}


class UnknownConnection(BrokerError):
    """No connected client has this id (never issued, or disconnected)."""

    status = 404
    problem_type = "unknown-connection"

    def __init__(self, connection_id: int) -> None:
        super().__init__(f"no client is connected with id {connection_id}")
        self.connection_id = connection_id

    @property
    def extensions(self) -> dict[str, Any]:
        return {"id": self.connection_id}


class UnknownSubscription(BrokerError):
    """No subscription has this id (never made, or deleted)."""

    status = 404
    problem_type = "unknown-subscription"

    def __init__(self, subscription_id: int) -> None:
        super().__init__(f"there is no subscription with id {subscription_id}")
        self.subscription_id = subscription_id

    @property
    def extensions(self) -> dict[str, Any]:
        return {"id": self.subscription_id}


class NotPullable(BrokerError):
    """Pull, ack and stream need a pull subscription; this one is pushed."""

    status = 409
    problem_type = "not-pullable"

    def __init__(self, subscription_id: int) -> None:
        super().__init__(
            f"subscription {subscription_id} is a push subscription: the broker POSTs its "
            'messages to its url. Create one with "kind": "pull" to pull messages'
        )
        self.subscription_id = subscription_id

    @property
    def extensions(self) -> dict[str, Any]:
        return {"id": self.subscription_id}


class UnknownMessage(BrokerError):
    """No message with this id is kept (never published, or past its retention)."""

    status = 404
    problem_type = "unknown-message"

    def __init__(self, message_id: str) -> None:
        super().__init__(
            f"no message with id {message_id!r} is kept; delivered messages are kept "
            "for --message-retention"
        )
        self.message_id = message_id

    @property
    def extensions(self) -> dict[str, Any]:
        return {"id": self.message_id}


class UnknownDeadLetter(BrokerError):
    """A subscription has no dead letter of this message (never, or no longer)."""

    status = 404
    problem_type = "unknown-dead-letter"

    def __init__(self, subscription_id: int, message_id: str) -> None:
        super().__init__(
            f"subscription {subscription_id} has no dead letter of message {message_id!r} "
            f"(GET /v1/subscriptions/{subscription_id}/dead-letters lists those it has)"
        )
        self.subscription_id = subscription_id
        self.message_id = message_id

    @property
    def extensions(self) -> dict[str, Any]:
        return {"id": self.message_id, "subscription_id": self.subscription_id}


class UnknownTopic(BrokerError):
    """No message was ever published to this topic and no subscription names it."""

    status = 404
    problem_type = "unknown-topic"

    def __init__(self, topic: str) -> None:
        super().__init__(f"there is no topic {topic!r}: nothing was published to it yet")
        self.topic = topic

    @property
    def extensions(self) -> dict[str, Any]:
        return {"topic": self.topic}


class Conflict(BrokerError):
    """The request contradicts what is stored (a group member with another filter)."""

    status = 409
    problem_type = "conflict"


class BadCursor(BrokerError):
    """A pagination cursor that this list did not hand out."""

    problem_type = "bad-cursor"

    @property
    def detail(self) -> str:
        return f"{self}; pass a next_cursor from the previous page, or none"


class NotASender(BrokerError):
    """The id belongs to a receiver, which may not publish."""

    status = 403
    problem_type = "not-a-sender"


class Forbidden(BrokerError):
    """The caller's key does not allow this."""

    status = 403
    problem_type = "forbidden"


class RateLimited(BrokerError):
    """The caller's key is publishing faster than --publish-rate allows."""

    status = 429
    problem_type = "rate-limited"

    def __init__(self, retry_after: float, rate: float) -> None:
        super().__init__(
            f"this key may publish {rate:g} messages per second (--publish-rate); "
            f"retry in {retry_after:.1f} s"
        )
        self.retry_after = retry_after


class BacklogFull(BrokerError):
    """The store holds as many undelivered messages as it may; try again later."""

    status = 503
    problem_type = "backlog-full"
    retry_after = 5.0  # deliveries drain the backlog

    @property
    def detail(self) -> str:
        return f"{self}; nothing was accepted, try again once receivers catch up"


class ReceiverRefused(BrokerError):
    """The receiver's URL may not be delivered to (an address the broker must not reach,
    or a receiver that did not confirm the subscription)."""

    problem_type = "receiver-refused"

    @property
    def detail(self) -> str:
        return f"ClientURL refused: {self}"

    @property
    def extensions(self) -> dict[str, Any]:
        return {"field": "ClientURL"}


class StoreError(BrokerError):
    """Anything the store reports about itself rather than about a request: every
    backend raises these, so callers never catch a driver's or a backend's own class."""


class StoreUnavailable(StoreError):
    """The store could not commit (disk full, I/O error, database unreachable);
    nothing was accepted."""

    status = 503
    problem_type = "store-unavailable"
    log_cause = True
    retry_after = 1.0

    @property
    def detail(self) -> str:
        return "the broker could not store the request; nothing was accepted, try again"


class StoreCannotOpen(StoreError):
    """The store cannot be opened as configured; the message says why and what to do."""


class StoreLocked(StoreCannotOpen):
    """Another mq-py process holds an embedded store that only one process may use."""


class SchemaTooNew(StoreCannotOpen):
    """The store was written by a newer mq-py."""
