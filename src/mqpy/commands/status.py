"""`mqpy status`: a running broker's topics, receivers and nodes, from its GET /v1/status
feed.

The feed is decoded into this module's own types rather than the server's
(`mqpy.observability.feed`): they name only the fields shown, and take a receiver's
state as plain text, so a newer server with a new state still prints.
"""

from __future__ import annotations

import argparse
from typing import Any

import msgspec

from mqpy.commands import EXIT_OK, EXIT_REFUSED, CommandFailed
from mqpy.commands.broker_client import ask, client_settings
from mqpy.commands.parsers import command, needs_key, talks_to_broker
from mqpy.commands.terminal import format_table, print_json, rate, shortened, visible

TOPIC_COLUMNS = ("TOPIC", "BACKLOG", "OLDEST", "PUBLISHED/S", "DELIVERED/S", "RECEIVERS")
RECEIVER_COLUMNS = (
    "ID",
    "URL",
    "TOPIC",
    "GROUP",
    "STATE",
    "IN FLIGHT",
    "WINDOW",
    "LAST SUCCESS",
    "FAILURES",
    "LAST FAILURE",
)
NODE_COLUMNS = ("NODE", "ADDRESS", "UPTIME", "HELD", "IN FLIGHT", "LAST SEEN")
# After the name of the node whose feed this is: the others' come from the store.
ANSWERED = " (answered)"
_URL_WIDTH = 50
_GROUP_WIDTH = 30
_REASON_WIDTH = 60


class _Failure(msgspec.Struct):
    reason: str


class _Topic(msgspec.Struct):
    topic: str
    receivers: int
    backlog: int
    oldest_undelivered_age_seconds: float | None
    publish_rate: float
    delivery_rate: float


class _Receiver(msgspec.Struct):
    id: int
    url: str
    topic: str
    state: str
    in_flight: int
    last_success_at: float | None
    consecutive_failures: int
    recent_failures: list[_Failure]  # newest first
    group: str | None = None  # absent from the feeds of servers before consumer groups
    window: int | None = None  # absent before adaptive concurrency; None before an answer


class _Node(msgspec.Struct):
    name: str
    address: str
    uptime_seconds: float
    seen_age_seconds: float
    held: int
    in_flight: int


class _Feed(msgspec.Struct):
    at: float
    readers: int
    writers: int
    queue_length: int
    completed_sends: int
    dead_letters: int
    topics: list[_Topic]
    receivers: list[_Receiver]
    # Absent from the feeds of servers before nodes shared a store: no table then.
    node: str | None = None
    nodes: list[_Node] | None = None


def register(subparsers: Any) -> None:
    """Add `status` to the `mqpy` parser's subparsers."""
    parser = command(
        subparsers,
        "status",
        help="show a running broker's topics, receivers and nodes",
        description="Show a running broker as GET /v1/status reports it: the dashboard's "
        "four figures and the dead-letter count, then a table of topics (backlog, age of "
        "the oldest undelivered message, publish and delivery rates over the last minute, "
        "receivers) and a table of receivers (consumer group; state: healthy, retrying, "
        "failing or paused; deliveries in flight; last success; consecutive failures; the "
        "latest failure's reason), then a table of the live nodes sharing its store (those "
        "heard from in the last 10 s; the one that answered is marked: address, uptime, "
        "deliveries held and in flight, last heartbeat). " + needs_key("an admin key"),
    )
    talks_to_broker(parser, show_status, json_help="print the server's status feed as JSON instead")


def show_status(args: argparse.Namespace) -> int:
    answer = ask(args, lambda client: client.status())
    if args.json:
        print_json(answer)
        return EXIT_OK
    try:
        feed = decode_feed(answer)
    except msgspec.ValidationError as error:
        raise CommandFailed(
            EXIT_REFUSED,
            f"{client_settings(args).url}/v1/status did not answer an mq-py status feed ({error})",
        ) from None
    print(format_status(feed))
    return EXIT_OK


def decode_feed(answer: Any) -> _Feed:
    """The fields shown, from a decoded /v1/status answer; msgspec.ValidationError if
    it is not a status feed."""
    return msgspec.convert(answer, _Feed)


def format_status(feed: _Feed) -> str:
    header = (
        f"readers {feed.readers}  writers {feed.writers}  queue length {feed.queue_length}  "
        f"completed sends {feed.completed_sends}  dead letters {feed.dead_letters}"
    )
    topics = (
        format_table(TOPIC_COLUMNS, [_topic_row(topic) for topic in feed.topics])
        if feed.topics
        else "no topics yet"
    )
    receivers = (
        format_table(RECEIVER_COLUMNS, [_receiver_row(feed.at, r) for r in feed.receivers])
        if feed.receivers
        else "no receivers connected"
    )
    sections = [header, topics, receivers]
    if feed.nodes is not None:
        sections.append(_nodes_table(feed.nodes, feed.node))
    return "\n\n".join(sections)


def _nodes_table(nodes: list[_Node], answered: str | None) -> str:
    if not nodes:
        return "no live nodes: none sent a heartbeat in the last 10s"
    return format_table(NODE_COLUMNS, [_node_row(node, answered) for node in nodes])


def _node_row(node: _Node, answered: str | None) -> tuple[str, ...]:
    return (
        visible(node.name) + (ANSWERED if node.name == answered else ""),
        shortened(node.address, _URL_WIDTH) if node.address else "-",
        format_age(node.uptime_seconds),
        str(node.held),
        str(node.in_flight),
        format_age(node.seen_age_seconds) + " ago",
    )


def _topic_row(topic: _Topic) -> tuple[str, ...]:
    age = topic.oldest_undelivered_age_seconds
    return (
        visible(topic.topic),
        str(topic.backlog),
        "-" if age is None else format_age(age),
        rate(topic.publish_rate),
        rate(topic.delivery_rate),
        str(topic.receivers),
    )


def _receiver_row(now: float, receiver: _Receiver) -> tuple[str, ...]:
    last_success = receiver.last_success_at
    reason = receiver.recent_failures[0].reason if receiver.recent_failures else "-"
    return (
        str(receiver.id),
        shortened(receiver.url, _URL_WIDTH),
        visible(receiver.topic),
        "-" if not receiver.group else shortened(receiver.group, _GROUP_WIDTH),
        visible(receiver.state),
        str(receiver.in_flight),
        "-" if receiver.window is None else str(receiver.window),
        "never" if last_success is None else format_age(now - last_success) + " ago",
        str(receiver.consecutive_failures),
        shortened(reason, _REASON_WIDTH),
    )


def format_age(seconds: float) -> str:
    """`0s`, `42s`, `3m05s`, `2h07m`, `3d04h`: two units at most, rounded down."""
    whole = max(int(seconds), 0)
    for unit, size, smaller, smaller_size in (
        ("d", 86400, "h", 3600),
        ("h", 3600, "m", 60),
        ("m", 60, "s", 1),
    ):
        if whole >= size:
            return f"{whole // size}{unit}{whole % size // smaller_size:02d}{smaller}"
    return f"{whole}s"
