"""The broker's routes as data: what each call sends, whether it is safe to repeat, and
how its answer reads. Both clients (sync and async) send these; only the I/O differs."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote, urlsplit

from mqpy import __version__
from mqpy.client.errors import MQError, error_from_answer, error_from_problem

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 10.0

Mode = Literal["send", "receive"]
T = TypeVar("T")


@dataclass(frozen=True)
class Connection:
    """A connected sender or receiver. `secret` signs a receiver's deliveries; the server
    shows it only in the /connect answer, so keep it. Senders have none."""

    id: int
    secret: str | None = None


@dataclass(frozen=True)
class DeadLetter:
    """A delivery that ran out of attempts (or of age) and waits for a redrive."""

    message_id: str
    receiver_id: int
    attempts: int
    last_error: str
    dead_at: float  # Unix seconds
    body: str


@dataclass(frozen=True)
class Message:
    """One message of `publish_batch`, with the options `publish` takes as keywords.

    `delay_seconds` and `deliver_at` (an aware `datetime`, or an RFC 3339 string) both
    hold a message back; give at most one. `idempotency_key` makes a repeat within the
    broker's --dedup-window (24 h) answer with the first message's id, storing nothing.
    """

    body: str
    attributes: Mapping[str, str] | None = None
    ordering_key: str | None = None
    delay_seconds: float | None = None
    deliver_at: datetime | str | None = None
    idempotency_key: str | None = None

    def fields(self) -> dict[str, Any]:
        """The JSON object the broker reads, with only the options that were given."""
        fields: dict[str, Any] = {"body": self.body}
        if self.attributes is not None:
            fields["attributes"] = dict(self.attributes)
        if self.ordering_key is not None:
            fields["ordering_key"] = self.ordering_key
        if self.delay_seconds is not None:
            fields["delay_seconds"] = self.delay_seconds
        if self.deliver_at is not None:
            fields["deliver_at"] = rfc3339(self.deliver_at)
        if self.idempotency_key is not None:
            fields["idempotency_key"] = self.idempotency_key
        return fields


@dataclass(frozen=True)
class Published:
    """A message the broker stored: its `id` (receivers deduplicate on it) and `topic`.
    `duplicate` is True when an earlier publish had the same idempotency key: then
    `id` is that message's, and nothing new was stored."""

    id: str
    topic: str
    duplicate: bool = False


@dataclass(frozen=True)
class PulledMessage:
    """A message a pull handed out, leased to this consumer until its subscription's
    ack deadline: settle it with `ack` (done), `nack` (again later) or `extend`, by
    `ack_id`. Unsettled, it comes again after the deadline with `attempt` one higher."""

    ack_id: str
    message_id: str
    topic: str
    body: str
    attributes: dict[str, str]
    ordering_key: str | None
    published_at: str  # RFC 3339
    attempt: int


SubscriptionKind = Literal["push", "pull"]
# How a push subscription's deliveries are laid out (docs/api.md, "Delivery formats").
DeliveryFormat = Literal["mq", "cloudevents-binary", "cloudevents-structured"]


@dataclass(frozen=True)
class NewSubscription:
    """A subscription just made: its `id`, and the `secret` its deliveries are signed
    with (shown only this once: a receiver checks signatures with it)."""

    id: int
    secret: str


@dataclass(frozen=True)
class EventsToken:
    """A short-lived token that opens one pull subscription's event stream without an
    Authorization header (as a browser's EventSource must): `url` is the stream's full
    URL with it, good until `expires_at` (RFC 3339)."""

    token: str
    expires_at: str
    url: str


@dataclass(frozen=True)
class Settled:
    """What an ack, nack or extend did: the ack ids it applied to (`done`), and those
    that had `expired` (the deadline passed, or the message was settled or handed out
    again since): those messages come again, or came already."""

    done: list[str]
    expired: list[str]


@dataclass(frozen=True)
class Sought:
    """What a seek did: `due` retained messages from the time on are due again (from
    attempt 1), `acked` pending ones before it were acknowledged, and `in_flight` ones
    from the time on were out under a live lease and left to finish."""

    due: int
    acked: int
    in_flight: int
    id: int = 0  # the subscription asked to seek
    time: str = ""  # the time it moved to, RFC 3339 in UTC


# Where a new subscription starts: "new" (the default), "earliest", or a time.
StartAt = Literal["new", "earliest"] | datetime | str


def start_at_text(start_at: StartAt) -> str:
    if isinstance(start_at, str) and start_at in ("new", "earliest"):
        return start_at
    return rfc3339(start_at, "start_at")


# What `publish_batch` gives for each message, in order: stored, or refused and why.
BatchResult = Published | MQError


def as_message(item: str | Message) -> Message:
    return Message(item) if isinstance(item, str) else item


def topic_message(
    body: str | None,
    attributes: Mapping[str, str] | None,
    ordering_key: str | None,
    delay_seconds: float | None,
    deliver_at: datetime | str | None,
    idempotency_key: str | None,
) -> Message | None:
    """What `publish(first, body, ...)` sends to the topic `first`; None for the seed
    protocol's `publish(body)`, which takes no options."""
    if body is not None:
        return Message(body, attributes, ordering_key, delay_seconds, deliver_at, idempotency_key)
    if any(
        option is not None
        for option in (attributes, ordering_key, delay_seconds, deliver_at, idempotency_key)
    ):
        raise TypeError("publish(topic, body, ...): options need a topic first")
    return None


def rfc3339(when: datetime | str, field: str = "deliver_at") -> str:
    """`when` as the broker reads times: RFC 3339 with an offset, UTC for a datetime."""
    if isinstance(when, str):
        return when
    if when.tzinfo is None:
        raise ValueError(
            f"{field} needs a timezone-aware datetime (such as datetime.now(UTC)); a naive "
            "one could mean any zone"
        )
    text = when.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.removesuffix("+00:00") + "Z"


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request. `idempotent`: sending it twice leaves the broker as sending it once,
    so it may be retried after its answer was lost."""

    method: str
    path: str
    body: dict[str, Any] | None
    idempotent: bool
    read: Callable[[Any], T]
    # Seconds the broker may hold the answer back on purpose (a long poll), on top of
    # the client's timeout.
    wait: float = 0.0

    def payload(self) -> bytes | None:
        if self.body is None:
            return None
        return json.dumps(self.body, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Endpoint:
    """The broker's base URL, split the way the HTTP libraries want it."""

    url: str  # without a trailing slash
    scheme: str
    host: str
    port: int
    prefix: str  # a path the broker is mounted under, e.g. behind a reverse proxy

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url.strip())
        try:
            port = parts.port
        except ValueError as error:
            raise ValueError(f"{url!r} is not a usable broker URL: {error}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL such as {DEFAULT_URL}")
        if parts.query or parts.fragment:
            raise ValueError(f"{url!r}: give the broker's base URL, with no ? or #")
        default_port = 443 if parts.scheme == "https" else 80
        return cls(
            url=url.strip().rstrip("/"),
            scheme=parts.scheme,
            host=parts.hostname,
            port=port or default_port,
            prefix=parts.path.rstrip("/"),
        )


def request_headers(key: str | None, has_body: bool) -> dict[str, str]:
    headers = {"Accept": "application/json", "User-Agent": f"mqpy-client/{__version__}"}
    if has_body:
        headers["Content-Type"] = "application/json"
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def answer(call: Call[T], status: int, body: bytes, retry_after: float | None) -> T:
    """The call's result from a 2xx answer; any other status raises its typed error."""
    if not 200 <= status < 300:
        raise error_from_answer(status, body, retry_after)
    try:
        value = json.loads(body) if body.strip() else None
    except ValueError:
        raise _unexpected(status, call, body) from None
    try:
        return call.read(value)
    except (KeyError, TypeError, ValueError):
        raise _unexpected(status, call, body) from None


def _unexpected(status: int, call: Call[Any], body: bytes) -> MQError:
    return MQError(
        f"unexpected answer to {call.method} {call.path}: {body[:200]!r}; is this an mq-py "
        "server, and of a version this client knows?",
        status=status,
    )


# -- the routes ---------------------------------------------------------------------------


def connect(
    mode: Mode,
    client_url: str,
    *,
    topic: str | None = None,
    group: str | None = None,
    filter: Mapping[str, Any] | None = None,
    start_at: StartAt | None = None,
) -> Call[Connection]:
    # Not idempotent: after a lost answer the connection may exist; a retry would make a
    # second one (and a second receiver gets a second copy of every message).
    body: dict[str, Any] = {"ClientURL": client_url, "mode": mode}
    if topic is not None:
        body["topic"] = topic
    if group is not None:
        body["group"] = group
    if filter is not None:
        body["filter"] = dict(filter)
    if start_at is not None:
        body["start_at"] = start_at_text(start_at)
    return Call("POST", "/connect", body, False, _connection)


def send(sender_id: int, message: Message, topic: str | None = None) -> Call[str]:
    # Without an idempotency key not idempotent: after a lost answer the message may be
    # stored, and a retry would publish it twice. With one, a repeat is answered with the
    # first message's id and stores nothing.
    body: dict[str, Any] = {"id": sender_id, **message.fields()}
    if topic is not None:
        body["topic"] = topic
    idempotent = message.idempotency_key is not None
    return Call("POST", "/send", body, idempotent, _message_id)


def publish(topic: str, message: Message) -> Call[Published]:
    # Idempotent exactly when the message has an idempotency key (see `send`).
    idempotent = message.idempotency_key is not None
    return Call("POST", _messages_path(topic), message.fields(), idempotent, _published(topic))


def publish_batch(topic: str, messages: Sequence[Message]) -> Call[list[BatchResult]]:
    # A repeat after a lost answer would store every message again, unless each has an
    # idempotency key: then it only finds them.
    idempotent = bool(messages) and all(m.idempotency_key is not None for m in messages)
    body = {"messages": [message.fields() for message in messages]}
    return Call("POST", _messages_path(topic), body, idempotent, _batch_results(topic))


def _messages_path(topic: str) -> str:
    # Topic names need no escaping; one that does is refused by the broker, so quoting
    # keeps a stray `/` or `?` from reaching another route.
    return f"/v1/topics/{quote(topic, safe='')}/messages"


def disconnect(connection_id: int) -> Call[None]:
    # Idempotent in effect: a repeat leaves it disconnected too, though it answers 404.
    return Call("POST", "/disconnect", {"id": connection_id}, True, _nothing)


def dead_letters() -> Call[list[DeadLetter]]:
    return Call("GET", "/v1/dead-letters", None, True, _dead_letters)


def redrive(receiver_id: int | None) -> Call[int]:
    # Idempotent in effect: redriven letters leave the list, a repeat finds none of them.
    return Call("POST", "/v1/dead-letters/redrive", {"receiver_id": receiver_id}, True, _redriven)


def create_subscription(
    topic: str,
    url: str | None,
    *,
    kind: SubscriptionKind,
    group: str | None,
    filter: Mapping[str, Any] | None,
    format: DeliveryFormat | None = None,
    ack_deadline_seconds: float | None = None,
    secret: str | None = None,
    start_at: StartAt | None = None,
) -> Call[NewSubscription]:
    # Not idempotent: after a lost answer the subscription may exist; a retry would
    # make a second one (which gets a second copy of every message).
    given = {
        "url": url,
        "group": group,
        "filter": None if filter is None else dict(filter),
        "format": format,
        "ack_deadline_seconds": ack_deadline_seconds,
        "secret": secret,
        "start_at": None if start_at is None else start_at_text(start_at),
    }
    body = {"kind": kind, "topic": topic, **{k: v for k, v in given.items() if v is not None}}
    return Call("POST", "/v1/subscriptions", body, False, _new_subscription)


def create_pull_subscription(
    topic: str,
    group: str | None,
    filter: Mapping[str, Any] | None,
    ack_deadline_seconds: float | None,
    start_at: StartAt | None = None,
) -> Call[int]:
    made = create_subscription(
        topic,
        None,
        kind="pull",
        group=group,
        filter=filter,
        ack_deadline_seconds=ack_deadline_seconds,
        start_at=start_at,
    )
    return Call(made.method, made.path, made.body, False, _subscription_id)


def events_token(subscription_id: int, ttl_seconds: int | None, base_url: str) -> Call[EventsToken]:
    # Not idempotent in effect, but harmless to repeat: each answer is another token.
    body = None if ttl_seconds is None else {"ttl_seconds": ttl_seconds}
    path = _pull_path(subscription_id, "events-token")

    def read(value: Any) -> EventsToken:
        return EventsToken(str(value["token"]), str(value["expires_at"]), base_url + value["url"])

    return Call("POST", path, body, True, read)


def _new_subscription(value: Any) -> NewSubscription:
    return NewSubscription(id=_integer(value["id"]), secret=str(value["secret"]))


def seek(subscription_id: int, time: datetime | str) -> Call[Sought]:
    # Idempotent: a repeat moves the subscription to the same time again (what was
    # delivered in between comes once more, as it would after the first).
    body = {"time": rfc3339(time, "time")}
    return Call("POST", _pull_path(subscription_id, "seek"), body, True, _sought)


def _sought(value: Any) -> Sought:
    return Sought(
        due=_integer(value["due"]),
        acked=_integer(value["acked"]),
        in_flight=_integer(value["in_flight"]),
        id=_integer(value.get("id", 0)),
        time=str(value.get("time", "")),
    )


def delete_subscription(subscription_id: int) -> Call[None]:
    # Idempotent in effect: a repeat finds it gone (404).
    return Call("DELETE", f"/v1/subscriptions/{int(subscription_id)}", None, True, _nothing)


def pull(subscription_id: int, max_messages: int, wait_seconds: float) -> Call[list[PulledMessage]]:
    # Not idempotent: messages a pull leased before its answer was lost are not handed
    # out again until their deadline, so a retry would come back without them.
    body = {"max_messages": max_messages, "wait_seconds": wait_seconds}
    return Call("POST", _pull_path(subscription_id, "pull"), body, False, _pulled, wait_seconds)


def settle(
    subscription_id: int,
    verb: Literal["ack", "nack", "extend"],
    messages: Sequence[str | PulledMessage],
    **fields: Any,
) -> Call[Settled]:
    """Settle pulled messages, given as such or by their ack ids."""
    # Idempotent in effect: a repeat finds them settled already (and calls them expired).
    body = {"ack_ids": _ack_ids(messages), **{k: v for k, v in fields.items() if v is not None}}
    done = {"ack": "acked", "nack": "nacked", "extend": "extended"}[verb]
    return Call("POST", _pull_path(subscription_id, verb), body, True, _settled(done))


def _subscription_id(value: Any) -> int:
    return _integer(value["id"])


def _pull_path(subscription_id: int, verb: str) -> str:
    return f"/v1/subscriptions/{int(subscription_id)}/{verb}"


def _pulled(value: Any) -> list[PulledMessage]:
    return [pulled_message(m) for m in value["messages"]]


def pulled_message(m: Any) -> PulledMessage:
    """One message as a pull (or an event of a stream) shows it."""
    return PulledMessage(
        ack_id=_text(m["ack_id"]),
        message_id=_text(m["message_id"]),
        topic=_text(m["topic"]),
        body=_text(m["body"]),
        attributes={str(k): str(v) for k, v in m["attributes"].items()},
        ordering_key=m.get("ordering_key"),
        published_at=_text(m["published_at"]),
        attempt=_integer(m["attempt"]),
    )


# -- admin routes: their answers are the broker's JSON objects, as docs/api.md shows them,
# so a caller (the `mqpy` command) can print them whole.

AdminAnswer = dict[str, Any]


def create_key(role: str, topics: Sequence[str] | None) -> Call[AdminAnswer]:
    # Not idempotent: a retry after a lost answer would make a second key.
    body = {"role": role, "topics": None if topics is None else list(topics)}
    return Call("POST", "/v1/keys", body, False, _object_with("key", str))


def list_keys() -> Call[AdminAnswer]:
    return Call("GET", "/v1/keys", None, True, _object_with("keys", list))


def revoke_key(key_id: str) -> Call[None]:
    # Idempotent in effect: a repeat finds it revoked (404).
    return Call("DELETE", f"/v1/keys/{quote(key_id, safe='')}", None, True, _nothing)


def status() -> Call[AdminAnswer]:
    return Call("GET", "/v1/status", None, True, _object)


def list_topics(limit: int | None, cursor: str | None) -> Call[AdminAnswer]:
    path = "/v1/topics" + _page_query(limit, cursor)
    return Call("GET", path, None, True, _object_with("topics", list))


def get_topic(topic: str) -> Call[AdminAnswer]:
    return Call("GET", f"/v1/topics/{quote(topic, safe='')}", None, True, _object)


def get_message(message_id: str) -> Call[AdminAnswer]:
    path = f"/v1/messages/{quote(message_id, safe='')}"
    return Call("GET", path, None, True, _object_with("deliveries", list))


def list_subscriptions(
    topic: str | None, limit: int | None, cursor: str | None
) -> Call[AdminAnswer]:
    query = _page_query(limit, cursor, topic=topic)
    return Call("GET", "/v1/subscriptions" + query, None, True, _object_with("subscriptions", list))


def subscribe(fields: Mapping[str, Any]) -> Call[AdminAnswer]:
    # Not idempotent, as `create_subscription`.
    return Call("POST", "/v1/subscriptions", dict(fields), False, _object)


def get_subscription(subscription_id: int) -> Call[AdminAnswer]:
    return Call("GET", f"/v1/subscriptions/{int(subscription_id)}", None, True, _object)


def switch_subscription(
    subscription_id: int, action: Literal["pause", "resume"]
) -> Call[AdminAnswer]:
    # Idempotent: pausing a paused subscription (or resuming a running one) changes nothing.
    return Call("POST", _pull_path(subscription_id, action), None, True, _object)


def one_dead_letter(
    receiver_id: int, message_id: str, action: Literal["redrive", "drop"]
) -> Call[AdminAnswer | None]:
    # Idempotent in effect: a repeat finds the letter gone (404).
    path = f"/v1/subscriptions/{int(receiver_id)}/dead-letters/{quote(message_id, safe='')}"
    if action == "redrive":
        return Call("POST", path + "/redrive", None, True, _object_or_none)
    return Call("DELETE", path, None, True, _object_or_none)


def _page_query(limit: int | None, cursor: str | None, **filters: str | None) -> str:
    given = {"limit": limit, "cursor": cursor, **filters}
    parts = [f"{name}={quote(str(v), safe='')}" for name, v in given.items() if v is not None]
    return "?" + "&".join(parts) if parts else ""


def _object(value: Any) -> AdminAnswer:
    if not isinstance(value, dict):
        raise TypeError(f"{value!r} is not a JSON object")
    return value


def _object_or_none(value: Any) -> AdminAnswer | None:
    return None if value is None else _object(value)


def _object_with(member: str, kind: type) -> Callable[[Any], AdminAnswer]:
    """An object whose `member` is of `kind`, which its callers read."""

    def read(value: Any) -> AdminAnswer:
        if not isinstance(_object(value).get(member), kind):
            raise TypeError(f"{member!r} is not a {kind.__name__}")
        return value  # type: ignore[no-any-return]

    return read


# The broker writes a comment line to an idle stream this often.
STREAM_HEARTBEAT_SECONDS = 15.0


class EventReader:
    """Server-Sent Events, line by line, as the messages they carry."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def line(self, raw: bytes) -> PulledMessage | None:
        """The message an event ends with at this line, if it ends here."""
        line = raw.decode().rstrip("\r\n")
        if line.startswith("data:"):
            self._data.append(line[5:].removeprefix(" "))
        elif not line and self._data:
            data, self._data = "\n".join(self._data), []
            return pulled_message(json.loads(data))
        return None


def _settled(done: str) -> Callable[[Any], Settled]:
    def read(value: Any) -> Settled:
        return Settled([_text(a) for a in value[done]], [_text(a) for a in value["expired"]])

    return read


def _ack_ids(items: Sequence[str | PulledMessage]) -> list[str]:
    return [item if isinstance(item, str) else item.ack_id for item in items]


def _connection(value: Any) -> Connection:
    secret = value.get("secret")
    return Connection(id=_integer(value["id"]), secret=secret if isinstance(secret, str) else None)


def _message_id(value: Any) -> str:
    return _text(value["message_id"])


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value


def _published(topic: str) -> Callable[[Any], Published]:
    def read(value: Any) -> Published:
        return Published(
            id=_text(value["id"]),
            topic=str(value.get("topic", topic)),
            duplicate=value.get("duplicate") is True,
        )

    return read


def _batch_results(topic: str) -> Callable[[Any], list[BatchResult]]:
    def read(value: Any) -> list[BatchResult]:
        results: list[BatchResult] = []
        for result in value["results"]:
            if "error" in result:
                results.append(error_from_problem(result["error"]))
            else:
                results.append(_published(topic)(result))
        return results

    return read


def _nothing(value: Any) -> None:
    return None


def _dead_letters(value: Any) -> list[DeadLetter]:
    return [
        DeadLetter(
            message_id=str(letter["message_id"]),
            receiver_id=_integer(letter["receiver_id"]),
            attempts=_integer(letter["attempts"]),
            last_error=str(letter["last_error"]),
            dead_at=float(letter["dead_at"]),
            body=str(letter["body"]),
        )
        for letter in value["dead_letters"]
    ]


def _redriven(value: Any) -> int:
    return _integer(value["redriven"])


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{value!r} is not an integer")
    return value
