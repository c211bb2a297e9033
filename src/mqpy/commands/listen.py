"""`mqpy listen`: print (or forward) a topic's messages on this machine. By default it
pulls, so it works from anywhere the broker's URL reaches (`listen_pull.py`); with
--serve it is a local receiver the broker POSTs to (`listen_serve.py`)."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from mqpy.commands import KEY_ENV, URL_ENV
from mqpy.commands.attributes import FILTER_HELP, filter_of
from mqpy.commands.listen_serve import SECRET_ENV
from mqpy.commands.options import receiving_options
from mqpy.commands.parsers import command, talks_to_broker

_FORMATS = ("mq", "cloudevents-binary", "cloudevents-structured")


def register(subparsers: Any) -> None:
    """Add `listen` to the `mqpy` parser's subparsers."""
    parser = command(
        subparsers,
        "listen",
        help="print (or forward) a topic's messages here as they arrive",
        description="Print each message of a topic on stdout as it arrives, one line each "
        "(line breaks and control characters escaped), from anywhere the broker's URL "
        "reaches: listen makes a pull subscription, streams its messages and acks each once "
        "printed; Ctrl-C or SIGTERM deletes the subscription and exits 0 (--subscription "
        "ID uses one that exists, and keeps it). With --forward-to URL it POSTs each "
        "message to URL instead, with the body, headers and signature a push delivery "
        "has, acks it on a 2xx and otherwise nacks it (again in 1 s, 2 s, 4 s, ...), "
        "printing one line per message. With --serve it is the receiver itself: a local "
        "HTTP server that the broker POSTs to, checking each delivery's signature. "
        "Delivery is at least once: a message can be printed twice (--json shows its id "
        "and attempt). --topic chooses what it receives (a topic, or a pattern of them), "
        "--group shares the messages with the group's other members (each message goes "
        "to one of them), --filter keeps only messages whose attributes match. Exit "
        "codes: 0 stopped, 1 the server refused, 2 usage error, 3 server unreachable.",
        epilog=f"""\
examples:
  mqpy listen
  mqpy listen --topic 'orders.>' --json
  mqpy listen --topic orders.eu --group billing        # run it twice: they share the work
  mqpy listen --topic orders.eu --filter kind=created --filter kind=paid
  mqpy listen --filter region^=eu- --filter '!test'
  mqpy listen --topic orders.eu --forward-to http://localhost:3000/hook
  mqpy listen --subscription 42 --forward-to http://localhost:3000/hook --secret whsec_...
  mqpy listen --serve --port 9000 --path /hook        # the broker POSTs to this machine
  mqpy listen --serve --no-connect --port 9000 --path /hook --secret whsec_...   # you connect it

{FILTER_HELP}

environment: {URL_ENV} (the broker's URL), {KEY_ENV} (the API key; a subscriber or admin key),
{SECRET_ENV} (--secret)""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    receiving_options(parser)
    parser.add_argument(
        "--subscription",
        type=int,
        metavar="ID",
        help="pull from this existing pull subscription instead of making one (kept "
        "when listen stops)",
    )
    parser.add_argument(
        "--forward-to",
        metavar="URL",
        help="POST each message to URL (e.g. http://localhost:3000/hook) as a push delivery "
        "would be, signed with the subscription's secret; ack on 2xx, nack otherwise",
    )
    parser.add_argument(
        "--format",
        choices=_FORMATS,
        default=None,
        help="with --forward-to: lay each message out as a push subscription with this "
        'format would (default: mq, {"body": ...})',
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object per message: {"message_id", "attempt", "topic", "body"}, '
        "and attributes and ordering_key when it has them",
    )
    parser.add_argument(
        "--secret",
        default=os.environ.get(SECRET_ENV),
        metavar="SECRET",
        help=f"the signing secret (whsec_...; or {SECRET_ENV}): for --forward-to, the one "
        "the subscription was made with (the new subscription gets it; without it, the "
        "broker makes one and listen prints it); with --serve --no-connect, the one "
        "/connect answered, to check deliveries with",
    )
    serving = parser.add_argument_group(
        "--serve: a receiver on this machine, which the broker must be able to reach"
    )
    serving.add_argument(
        "--serve",
        action="store_true",
        help="start a local HTTP server, connect it to the broker as a receiver, and "
        "print what the broker POSTs to it (Ctrl-C disconnects it)",
    )
    serving.add_argument(
        "--host",
        default=None,
        help="interface the receiver listens on (default: 127.0.0.1)",
    )
    serving.add_argument(
        "--port", type=int, default=0, help="port the receiver listens on (default: 0, any free)"
    )
    serving.add_argument("--path", default=None, help="path deliveries are POSTed to (default: /)")
    serving.add_argument(
        "--client-url",
        metavar="URL",
        help="the URL the broker should POST to, when it reaches this machine by another "
        "address than --host (default: http://HOST:PORT/PATH)",
    )
    serving.add_argument(
        "--no-connect",
        action="store_true",
        help="only listen: do not connect to the broker (connect the receiver yourself, "
        "with POST /connect, and give --secret from its answer); Ctrl-C just stops",
    )
    talks_to_broker(parser, listen, epilog=False)


def listen(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="mqpy listen: %(message)s")
    args.filter_object = filter_of(args.filter)
    if args.serve:
        from mqpy.commands.listen_serve import serve

        return serve(args)
    from mqpy.commands.listen_pull import pull_listen

    return pull_listen(args)
