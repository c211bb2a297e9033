"""What a push delivery's HTTP request is: its body and headers, in the subscription's
format, signed per Standard Webhooks.

The sender builds every delivery here, and `mqpy listen --forward-to` builds the
requests it forwards here too, so a receiver cannot tell a forwarded message from one
the broker pushed. The default format (mq, the seed's `{"body": ...}`) costs one
comparison more than building it inline; CloudEvents are built only for the
subscriptions that ask for them.

CloudEvents 1.0 (https://github.com/cloudevents/spec), over the HTTP binding:
- `id` the message id, `subject` its topic, `time` its publish time;
- `source` and `type` from the message's attributes `ce-source` and `ce-type`, else
  `/mq-py/topics/<topic>` and `mq-py.message`;
- `datacontenttype` from the attribute `ce-datacontenttype`, else `application/json`
  for a body that is a JSON object or array, else `text/plain; charset=utf-8`;
- the ordering key as the partitioning extension's `partitionkey`, and each other
  attribute whose name is a valid extension name (a to z and 0 to 9, at most 20
  characters) as an extension attribute of that name. Other attribute names cannot be
  CloudEvents attributes and are left out (the mq format carries every attribute).
Binary mode sends the attributes as `ce-*` headers and the body as it is; structured
mode sends one `application/cloudevents+json` document.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

import msgspec

from mqpy.model.domain import ClaimedDelivery, DeliveryFormat
from mqpy.wire.signing import signature_header

Headers = list[tuple[str, str]]

_encode = msgspec.json.Encoder().encode

SPEC_VERSION: Final = "1.0"
DEFAULT_TYPE: Final = "mq-py.message"
STRUCTURED_CONTENT_TYPE: Final = "application/cloudevents+json"
_JSON: Final = "application/json"
_TEXT: Final = "text/plain; charset=utf-8"
_ATTRIBUTE_PREFIX: Final = "ce-"
# Attributes the message's `ce-*` attributes may set; the rest the broker sets.
_CHOSEN_BY_PUBLISHER: Final = frozenset({"source", "type", "datacontenttype", "dataschema"})
_SET_BY_BROKER: Final = frozenset({"specversion", "id", "time", "subject", "data"})
_RESERVED: Final = _CHOSEN_BY_PUBLISHER | _SET_BY_BROKER
_EXTENSION_NAME: Final = re.compile(r"[a-z0-9]{1,20}")
# Per the HTTP binding, header values percent-encode space, '"', '%' and anything
# outside printable ASCII.
_HEADER_SAFE: Final = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in ' "%')


class _Payload(msgspec.Struct, omit_defaults=True):
    """What a receiver gets: the seed's `{"body": ...}`, plus attributes and an
    ordering key only when the message has them (a seed receiver never sees them)."""

    body: str
    attributes: dict[str, str] = {}
    ordering_key: str | None = None


def delivery_request(delivery: ClaimedDelivery, timestamp: int) -> tuple[bytes, Headers]:
    """The body and headers that deliver `delivery` in its format, signed with its
    secrets (if any) at `timestamp` (Unix seconds)."""
    if delivery.format is DeliveryFormat.MQ:
        body = _encode(_Payload(delivery.body, dict(delivery.attributes), delivery.ordering_key))
        content_type, event_headers = "application/json", None
    else:
        body, content_type, event_headers = _cloudevent(delivery)
    headers = [
        ("Content-Type", content_type),
        ("webhook-id", delivery.message_id),
        ("webhook-timestamp", str(timestamp)),
        ("mq-attempt", str(delivery.attempt)),
        ("mq-topic", delivery.topic),
        ("mq-subscription-id", str(delivery.subscription_id)),
    ]
    if event_headers:
        headers += event_headers
    if delivery.secrets:
        signature = signature_header(delivery.secrets, delivery.message_id, timestamp, body)
        headers.append(("webhook-signature", signature))
    return body, headers


def _cloudevent(delivery: ClaimedDelivery) -> tuple[bytes, str, Headers | None]:
    """The event's body, content type, and (in binary mode) its `ce-*` headers."""
    context = cloudevent_attributes(delivery)
    if delivery.format is DeliveryFormat.CLOUDEVENTS_BINARY:
        content_type = context.pop("datacontenttype")
        headers = [
            (f"ce-{name}", quote(value, safe=_HEADER_SAFE)) for name, value in context.items()
        ]
        return delivery.body.encode(), content_type, headers
    document: dict[str, Any] = dict(context)
    if context["datacontenttype"] == _JSON and _is_json(delivery.body):
        document["data"] = msgspec.Raw(delivery.body.encode())  # as published, not re-encoded
    else:
        document["data"] = delivery.body
    return _encode(document), STRUCTURED_CONTENT_TYPE, None


def cloudevent_attributes(delivery: ClaimedDelivery) -> dict[str, str]:
    """The CloudEvents context attributes (and extensions) of a delivery, as strings."""
    attributes = delivery.attributes
    context = {
        "specversion": SPEC_VERSION,
        "id": delivery.message_id,
        "source": f"/mq-py/topics/{delivery.topic}",
        "type": DEFAULT_TYPE,
        "subject": delivery.topic,
        "time": _time(delivery.published_at),
    }
    extensions: dict[str, str] = {}
    if delivery.ordering_key is not None:
        extensions["partitionkey"] = delivery.ordering_key
    for name, value in attributes.items():
        if name.startswith(_ATTRIBUTE_PREFIX):
            chosen = name[len(_ATTRIBUTE_PREFIX) :]
            if chosen in _CHOSEN_BY_PUBLISHER:
                context[chosen] = value
        elif _EXTENSION_NAME.fullmatch(name) and name not in _RESERVED:
            extensions.setdefault(name, value)
    if "datacontenttype" not in context:
        context["datacontenttype"] = _JSON if _is_json(delivery.body) else _TEXT
    return {**context, **extensions}


def _is_json(body: str) -> bool:
    """A JSON object or array: a bare number or word reads as text, as a person means it."""
    if body.lstrip()[:1] not in ("{", "["):
        return False
    try:
        msgspec.json.decode(body)
    except msgspec.DecodeError:
        return False
    return True


def _time(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    return moment.replace("+00:00", "Z")
